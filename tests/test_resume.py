"""Kill a real ``movielens-benchmark run`` mid-training (SIGKILL), run the same command again: it continues
the same MLflow run from the last checkpoint, logs every epoch's step exactly once, and ends with the
metrics of an uninterrupted run with the same seed (CPU: equal); the killed run's Prefect flow run is marked
CRASHED by the next start. Ctrl-C/SIGTERM mid-epoch: the CLI exits within 10 s, its runs KILLED/CANCELLED,
and the rerun resumes. A killed Horovod worker: Prefect retries the train task, which resumes."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from flows.benchmark import SplitConfig, movielens_benchmark

pytest.importorskip("torch")

EPOCHS = 30
IMPLICIT_MF = {"n_iter": EPOCHS, "seed": 7}
VAE_CF = {"backend": "torch", "epochs": EPOCHS, "seed": 7, "device": "cpu"}
VAE_SPLIT = ["--split", "strong_generalization", "--ratios", "0.8,0.1,0.1", "--heldout-users", "90"]
VAE_FLOW = {
    "split": SplitConfig(strategy="strong_generalization", ratios=[0.8, 0.1, 0.1], n_heldout_users=90),
    "min_item_interactions": 0,
    "implicit_threshold": 4.0,
}


def cli(home: Path, models: str, params: dict[str, dict[str, Any]], *extra: str) -> list[str]:
    """The ``movielens-benchmark run`` command line (the console script's own code, ``flows.cli``)."""
    flags = [f"--param={m}.{k}={v}" for m, p in params.items() for k, v in p.items()]
    return [sys.executable, "-m", "flows.cli", "run", "--home", str(home), "--models", models, *flags, *extra]


@pytest.fixture
def cli_env(tmp_path: Path, mirror: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {
        "MOVIELENS_MIRROR": str(mirror),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",  # a fresh PREFECT_HOME on a busy machine
    }
    return env


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """The command in its own session (so that its temporary Prefect server can be cleaned up after)."""
    return subprocess.Popen(
        command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def kill_group(process: subprocess.Popen) -> None:
    """What the kill left running (the temporary Prefect server the CLI had started)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def wait_for_checkpoint(home: Path, process: subprocess.Popen, log: Path, timeout: float = 900) -> Path:
    """The first checkpoint file written: training has finished at least one epoch and goes on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list((home / "checkpoints").glob("*/state.pkl"))
        if found:
            return found[0]
        if process.poll() is not None:
            pytest.fail(
                f"the run ended (exit {process.returncode}) before a checkpoint:\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.05)
    pytest.fail("no checkpoint within the timeout")


def model_run(client: MlflowClient, model: str) -> list[Run]:
    experiment = client.get_experiment_by_name("movielens-benchmark")
    return [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == model]


def steps(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def prefect_flow_run_states(prefect_home: Path) -> list[str]:
    """The state of every flow run in the database the CLI's temporary Prefect servers share."""
    with contextlib.closing(sqlite3.connect(prefect_home / "prefect.db")) as db:
        return [state for (state,) in db.execute("SELECT state_type FROM flow_run ORDER BY created")]


@pytest.fixture
def killed_then_resumed(
    home: Path, cli_env: dict[str, str], tmp_path: Path, request, prefect_api: None
) -> Iterator[dict]:
    """Parametrised by (models, model, params, extra CLI flags): a reference run in-process, then the CLI
    killed with SIGKILL mid-training, then the same command again."""
    models, model, params, extra, flow_extra = request.param
    reference = movielens_benchmark(
        home=str(home),
        mirror=cli_env["MOVIELENS_MIRROR"],
        models=models.split(","),
        model_params=params,
        experiment="reference",
        **flow_extra,
    )
    command = cli(home, models, params, *extra)
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
    [killed] = model_run(client, model)
    killed_steps = steps(client, killed.info.run_id, "loss")
    killed_flow_runs = prefect_flow_run_states(Path(cli_env["PREFECT_HOME"]))
    rerun = subprocess.run(command, env=cli_env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    yield {
        "client": client,
        "model": model,
        "killed": killed,
        "killed_steps": killed_steps,
        "flow_runs": (killed_flow_runs, prefect_flow_run_states(Path(cli_env["PREFECT_HOME"]))),
        "reference": {row["model"]: row for row in reference},
    }


CASES = [
    pytest.param(("implicit_mf", "implicit_mf", {"implicit_mf": IMPLICIT_MF}, [], {}), id="implicit_mf"),
    pytest.param(
        (
            "popularity,vae_cf",
            "vae_cf",
            {"vae_cf": VAE_CF},
            [*VAE_SPLIT, "--min-item-interactions", "0", "--implicit-threshold", "4"],
            VAE_FLOW,
        ),
        id="vae_cf-torch",
    ),
]


@pytest.mark.parametrize("killed_then_resumed", CASES, indirect=True)
def test_sigkill_mid_training_then_the_same_command_resumes_the_same_run(
    killed_then_resumed: dict, prefect_api: None
) -> None:
    client, model = killed_then_resumed["client"], killed_then_resumed["model"]
    killed = killed_then_resumed["killed"]
    assert killed.info.status == "RUNNING"  # its process died with it
    done = killed_then_resumed["killed_steps"]
    assert 1 <= len(done) < EPOCHS, "the kill came mid-training"
    [resumed] = model_run(client, model)  # no second run of the model: the same one, continued
    assert resumed.info.run_id == killed.info.run_id
    assert resumed.info.status == "FINISHED"
    assert int(resumed.data.tags["benchmark.resumed_from_epoch"]) >= 1
    assert resumed.data.params["checkpoint_every"] == "1"
    losses = steps(client, resumed.info.run_id, "loss")
    assert [s for s, _ in losses] == list(range(1, EPOCHS + 1)), "each epoch's step once, none skipped"
    reference = killed_then_resumed["reference"][model]
    reference_losses = steps(client, reference["run_id"], "loss")
    assert losses == reference_losses  # the same training, bit for bit on the CPU
    metrics = resumed.data.metrics
    for key in ("ndcg_at_10", "precision_at_10", "map_at_10"):
        assert metrics[key] == reference[key]
    parents = [
        r for r in client.search_runs([resumed.info.experiment_id]) if "mlflow.parentRunId" not in r.data.tags
    ]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the parent run resumed too
    assert resumed.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert not list((Path(client.tracking_uri.removeprefix("sqlite:///")).parent / "checkpoints").glob("*/*"))
    # The killed CLI's Prefect flow run was left RUNNING; the rerun's start marked it CRASHED
    # (flows/run_owners.py), in the database the two temporary servers share.
    assert killed_then_resumed["flow_runs"] == (["RUNNING"], ["CRASHED", "COMPLETED"])


SESSION_MODELS = "popularity,gpt2"
SESSION_GPT2 = {"epochs": 1, "d_model": 32, "n_layer": 1, "n_head": 2, "batch_size": 64, "seed": 3}


def wait_for_line(process: subprocess.Popen, log: Path, text: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        if process.poll() is not None:
            pytest.fail(
                f"the run ended (exit {process.returncode}) before {text!r}:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"no {text!r} within the timeout")
        time.sleep(0.05)


def test_sigkill_in_the_session_loop_then_the_same_command_resumes_the_same_run(
    home: Path, cli_env: dict[str, str], tmp_path: Path, prefect_api: None
) -> None:
    """``movielens-benchmark sessions`` killed while GPT-2 trains on its third window: the same command
    keeps the finished popularity run, continues GPT-2's run after its last checkpointed window, logs each
    window's step once and ends with the uninterrupted run's per-window metrics."""
    from flows.sessions import movielens_sessions

    params = {"gpt2": SESSION_GPT2}
    reference = movielens_sessions(
        models=SESSION_MODELS.split(","),
        model_params=params,
        home=str(home),
        mirror=cli_env["MOVIELENS_MIRROR"],
        experiment="reference",
        window_days=28,  # 8 windows (7 evaluated) instead of 31: a shorter test
    )
    flags = [f"--param=gpt2.{k}={v}" for k, v in SESSION_GPT2.items()]
    command = [sys.executable, "-m", "flows.cli", "sessions", "--home", str(home), "--models", SESSION_MODELS]
    command += [*flags, "--window-days", "28"]
    log = tmp_path / "killed.log"
    process = start(command, cli_env, log)
    try:
        wait_for_line(process, log, "gpt2 window 3/")  # windows 1 and 2 are checkpointed by then
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        kill_group(process)
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("movielens-sessions")

    def runs(name: str) -> list[Run]:
        return [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == name]

    [killed] = runs("gpt2")
    [popularity] = runs("popularity")
    assert killed.info.status == "RUNNING" and popularity.info.status == "FINISHED"
    rerun = subprocess.run(command, env=cli_env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]

    [resumed] = runs("gpt2")
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert int(resumed.data.tags["benchmark.resumed_from_window"]) >= 2
    assert [r.info.run_id for r in runs("popularity")] == [popularity.info.run_id], "kept, not run again"
    ndcg = steps(client, resumed.info.run_id, "ndcg_at_10")
    assert [s for s, _ in ndcg] == list(range(1, 8)), "each window's step once, none skipped"
    expected = {row["model"]: row for row in reference}
    reference_run = client.get_run(expected["gpt2"]["run_id"])
    assert ndcg == steps(client, reference_run.info.run_id, "ndcg_at_10")  # equal on the CPU
    assert resumed.data.metrics["aod_ndcg_at_10"] == reference_run.data.metrics["aod_ndcg_at_10"]
    parents = [
        r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags
    ]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "gpt2" in rerun.stdout and "popularity" in rerun.stdout  # the AOD table has both models
    assert not list((home / "checkpoints").glob("*/*"))


SLOW_EPOCHS = 4
# Epochs of seconds (a wide table): the signal comes in the middle of one, and must not wait for its end.
SLOW_MF = {"n_iter": SLOW_EPOCHS, "seed": 7, "embedding_dim": 2048}


@pytest.fixture(scope="module")
def uninterrupted_slow_mf(tmp_path_factory: pytest.TempPathFactory, mirror: Path, prefect_api: None) -> dict:
    """The interrupt test's run, uninterrupted (in-process): its result row and its loss curve."""
    home = tmp_path_factory.mktemp("uninterrupted")
    [row] = movielens_benchmark(
        home=str(home), mirror=str(mirror), models=["implicit_mf"], model_params={"implicit_mf": SLOW_MF}
    )
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    return {"row": row, "losses": steps(client, row["run_id"], "loss")}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_stops_training_within_10_s_and_the_rerun_resumes(
    signum: int, home: Path, cli_env: dict[str, str], tmp_path: Path, uninterrupted_slow_mf: dict
) -> None:
    """The signal comes mid-epoch (the epoch after the first checkpoint) and goes to the CLI's process only,
    as `kill` sends it (the terminal's Ctrl-C goes to its process group, where the temporary Prefect server
    is not: flows/interrupts.py). The CLI exits within 10 s, its runs KILLED/CANCELLED; the same command
    then resumes the same MLflow run from the last checkpoint and ends equal to an uninterrupted run."""
    command = cli(home, "implicit_mf", {"implicit_mf": SLOW_MF})
    log = tmp_path / "interrupted.log"
    process = start(command, cli_env, log)
    try:
        wait_for_checkpoint(home, process, log)
        sent = time.monotonic()
        process.send_signal(signum)
        process.wait(timeout=120)
        seconds = time.monotonic() - sent
    finally:
        kill_group(process)
    assert process.returncode == 128 + signum, log.read_text()[-3000:]
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    [child] = model_run(client, "implicit_mf")
    epochs = steps(client, child.info.run_id, "epoch_seconds")
    print(f"{signal.Signals(signum).name}: stopped {seconds:.1f} s after the signal; epochs {epochs}")
    assert seconds <= 10, f"stopped {seconds:.1f} s after {signal.Signals(signum).name} (epochs: {epochs})"
    assert 1 <= len(epochs) < SLOW_EPOCHS  # it stopped mid-training
    parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    assert child.info.status == parent.info.status == "KILLED"
    assert child.data.tags["benchmark.resumable"] == "true"
    assert prefect_flow_run_states(Path(cli_env["PREFECT_HOME"])) == ["CANCELLED"]

    rerun = subprocess.run(command, env=cli_env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    [resumed] = model_run(client, "implicit_mf")
    assert resumed.info.run_id == child.info.run_id and resumed.info.status == "FINISHED"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    checkpointed = int(resumed.data.tags["benchmark.resumed_from_epoch"])
    assert 1 <= checkpointed <= len(epochs)  # the last checkpoint the interrupted run had written
    losses = steps(client, resumed.info.run_id, "loss")
    assert losses == uninterrupted_slow_mf["losses"]  # every epoch once, the same training bit for bit
    reference = uninterrupted_slow_mf["row"]
    for key in ("ndcg_at_10", "precision_at_10", "map_at_10", "recall_at_100"):
        assert resumed.data.metrics[key] == reference[key]
    assert prefect_flow_run_states(Path(cli_env["PREFECT_HOME"])) == ["CANCELLED", "COMPLETED"]


HOROVOD_EPOCHS = 8
VAE_CF_HOROVOD = {
    "backend": "tf",
    "epochs": HOROVOD_EPOCHS,
    "seed": 7,
    "num_workers": 2,
    "hidden_dims": [100, 20],
}


def kill_a_horovod_worker_after_a_checkpoint(home: Path, killed: list[int]) -> None:
    """SIGKILL Horovod rank 1 of the VAE-CF training once its run has written a checkpoint (mid-training)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not list((home / "checkpoints").glob("*/state.pkl")):
        time.sleep(0.05)
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            command = process.info["cmdline"] or []
            if "tasks.vae_cf_worker" in command and process.environ().get("HOROVOD_RANK") == "1":
                process.send_signal(signal.SIGKILL)
                killed.append(process.pid)
                return


def test_a_killed_horovod_worker_is_retried_by_prefect_and_resumes_the_same_run(
    home: Path, mirror: Path, prefect_api: None
) -> None:
    """VAE-CF (TF) under ``horovodrun -np 2``: one worker SIGKILLed after a checkpoint; the train task fails
    with WorkerDied, Prefect retries it (retries=1, only for that), and the retry's workers resume the same
    MLflow run from the checkpoint (every worker's generator state in it) and end equal to an uninterrupted
    Horovod run."""
    pytest.importorskip(
        "horovod.tensorflow", reason="needs the [tf] extra: bash deployments/install_tf_extra.sh"
    )
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    run = {"home": str(home), "mirror": str(mirror), "models": ["vae_cf"], **VAE_FLOW}
    run["model_params"] = {"vae_cf": VAE_CF_HOROVOD}
    [reference] = movielens_benchmark(**run, experiment="reference")
    killed: list[int] = []
    killer = threading.Thread(target=kill_a_horovod_worker_after_a_checkpoint, args=(home, killed))
    killer.start()
    state = movielens_benchmark(**run, return_state=True)
    killer.join()
    assert killed, "no Horovod worker was found to kill"
    [row] = state.result()
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    [resumed] = [r for r in model_run(client, "vae_cf") if r.info.run_id == row["run_id"]]
    assert resumed.info.status == "FINISHED" and int(resumed.data.tags["benchmark.resumed_from_epoch"]) >= 1
    assert resumed.info.experiment_id == client.get_experiment_by_name("movielens-benchmark").experiment_id
    assert len(model_run(client, "vae_cf")) == 1  # the retry made no other run
    losses = steps(client, resumed.info.run_id, "loss")
    assert losses == steps(client, reference["run_id"], "loss")  # each epoch once, the same training
    assert [s for s, _ in losses] == list(range(1, HOROVOD_EPOCHS + 1))
    for key in ("ndcg_at_100", "recall_at_20", "recall_at_50", "ndcg_at_10"):
        assert row[key] == reference[key]
    with get_client(sync_client=True) as prefect:
        [task_run] = [
            t
            for t in prefect.read_task_runs(
                task_run_filter=TaskRunFilter(
                    flow_run_id=TaskRunFilterFlowRunId(any_=[state.state_details.flow_run_id])
                )
            )
            if t.name.startswith("train-evaluate")
        ]
    assert task_run.run_count == 2 and task_run.state_type.value == "COMPLETED"  # retried once by Prefect


@pytest.mark.parametrize(
    ("returncode", "output", "killed"),
    [
        (1, "Process 1 exit with status code 137.", True),  # horovodrun, a worker SIGKILLed
        (1, "Process name: 0\nExit code: 143\n", True),
        (-9, "", True),
        (1, "Process 0 exit with status code 1.\nValueError: bad input", False),  # would fail again
        (2, "InvalidConfig: vae_cf epochs=0 must be >= 1", False),
    ],
)
def test_only_a_worker_ended_by_a_signal_is_retried(returncode: int, output: str, killed: bool) -> None:
    from tasks.train import _killed

    assert _killed(returncode, output) is killed
