"""bert4rec and sasrec in the movielens-benchmark flow (issue 16): leave-one-out, torchrun from the task."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytest.importorskip("torchrec", reason="the torchrec extra: bash deployments/install_torchrec_extra.sh")

TINY = {"max_len": 8, "emb_dim": 16, "heads": 1, "layers": 1, "batch_size": 64, "epochs": 2, "seed": 0}


def test_leave_one_out_flow_logs_sequence_models_in_process_and_through_torchrun(
    tmp_path: Path, prefect_api: None
) -> None:
    from flows.benchmark import SplitConfig, movielens_benchmark

    home = tmp_path / "home"
    rows = movielens_benchmark(
        size="synthetic-150x300x6000",
        home=str(home),
        models=["popularity", "bert4rec", "sasrec"],
        split=SplitConfig(strategy="leave_one_out"),
        top_k=[10],
        gpu="local",
        model_params={"bert4rec": TINY, "sasrec": {**TINY, "mode": "ddp", "nproc": 2}},
    )
    by_model = {row["model"]: row for row in rows}
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    for name in ("bert4rec", "sasrec"):
        row = by_model[name]
        assert {
            "hr_at_1",
            "ndcg_at_5",
            "mrr",
            "sampled_hr_at_10",
            "sampled_ndcg_at_10",
            "sampled_mrr",
        } <= set(row)
        assert 0 <= row["ndcg_at_10"] <= row["sampled_ndcg_at_10"] <= 1
        run = client.get_run(row["run_id"])
        for param in ("mode", "nproc", "max_len", "emb_dim", "heads", "layers", "dropout", "lr", "precision"):
            assert param in run.data.params, (name, param)
        assert run.data.params["batch_size"] == "64" and run.data.params["patience"] == "5"
        for metric in ("loss", "validation_ndcg_at_10", "records_per_second"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
            assert steps == [1, 2], (name, metric)
        assert client.list_artifacts(run.info.run_id, "model"), name
    assert client.get_run(by_model["bert4rec"]["run_id"]).data.params["mask_prob"] == "0.2"
    sasrec = client.get_run(by_model["sasrec"]["run_id"]).data.params
    assert (sasrec["mode"], sasrec["world_size"]) == ("ddp", "2")  # logged by rank 0 of 2 torchrun ranks
