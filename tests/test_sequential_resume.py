"""SASRec killed with SIGKILL mid-training in a real ``movielens-benchmark run --split leave_one_out``; the
same command run again continues the same MLflow run from its last checkpoint (recmodels/checkpoint.py's
contract) and ends equal to an uninterrupted run (tests/test_resume.py does the same for implicit_mf and
vae_cf; its helpers are reused)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.benchmark import SplitConfig, movielens_benchmark
from tests.test_resume import cli, cli_env, home, kill_group, model_run, start, steps, wait_for_checkpoint

pytest.importorskip("torchrec", reason="the torchrec extra: bash deployments/install_torchrec_extra.sh")

__all__ = ["cli_env", "home"]  # fixtures
EPOCHS = 6
SASREC = {"max_len": 10, "emb_dim": 16, "heads": 1, "layers": 1, "batch_size": 256, "lr": 0.005}
SASREC |= {"epochs": EPOCHS, "patience": EPOCHS, "seed": 7}


def test_sasrec_killed_mid_training_resumes_the_same_run_and_equals_an_uninterrupted_one(
    home: Path, cli_env: dict[str, str], tmp_path: Path, prefect_api: None
) -> None:
    reference = movielens_benchmark(
        home=str(home),
        mirror=cli_env["MOVIELENS_MIRROR"],
        models=["sasrec"],
        split=SplitConfig(strategy="leave_one_out"),
        model_params={"sasrec": SASREC},
        experiment="reference",
    )[0]
    command = cli(home, "sasrec", {"sasrec": SASREC}, "--split", "leave_one_out")
    log = tmp_path / "killed.log"
    process = start(command, cli_env, log)
    try:
        wait_for_checkpoint(home, process, log)
        time.sleep(0.3)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        kill_group(process)
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    [killed] = model_run(client, "sasrec")
    assert killed.info.status == "RUNNING"  # its process died with it
    assert 1 <= len(steps(client, killed.info.run_id, "loss")) < EPOCHS, "the kill came mid-training"
    rerun = subprocess.run(command, env=cli_env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    [resumed] = model_run(client, "sasrec")
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert int(resumed.data.tags["benchmark.resumed_from_epoch"]) >= 1
    for key in ("loss", "validation_ndcg_at_10"):
        logged = steps(client, resumed.info.run_id, key)
        assert [s for s, _ in logged] == list(range(1, EPOCHS + 1)), "each epoch's step once"
        assert logged == steps(client, reference["run_id"], key)  # the same training, bit for bit
    for key in ("ndcg_at_10", "hr_at_10", "sampled_ndcg_at_10", "unfiltered_ndcg_at_10", "best_epoch"):
        assert resumed.data.metrics[key] == reference[key]
    assert not list((home / "checkpoints").glob("*/*"))
