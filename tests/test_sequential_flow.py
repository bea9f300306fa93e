"""bert4rec and sasrec in the product (issue 16): the real ``movielens-benchmark`` flow on ML-100K under
``leave_one_out`` with popularity and SAR, a local Prefect API, MLflow on SQLite, real CPU training."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

pytest.importorskip("torchrec", reason="the torchrec extra: bash deployments/install_torchrec_extra.sh")

from flows.benchmark import SplitConfig, movielens_benchmark

SMALL = {"max_len": 20, "emb_dim": 32, "heads": 1, "layers": 1, "batch_size": 256, "lr": 0.005}
EPOCHS = 3
SEQUENTIAL = ("bert4rec", "sasrec")
PROTOCOL = ("hr_at_1", "hr_at_5", "hr_at_10", "ndcg_at_5", "ndcg_at_10", "mrr")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def rows(home: Path, mirror: Path, prefect_api: None) -> dict[str, dict]:
    import torch

    torch.set_num_threads(1)  # 2 shared cores: one thread is faster than two oversubscribed ones
    params = {"epochs": EPOCHS, "patience": EPOCHS, **SMALL}
    state = movielens_benchmark(
        size="100k",
        models=["popularity", "sar", *SEQUENTIAL],
        split=SplitConfig(strategy="leave_one_out"),
        top_k=[10],
        model_params={"bert4rec": params, "sasrec": params},
        home=str(home),
        mirror=str(mirror),
        gpu="auto",  # no GPU pool has a worker here: the torch models run in-process, on the CPU
        return_state=True,
    )
    return {row["model"]: row for row in state.result()}


def test_sequential_models_beat_popularity_and_sar_is_useful(rows: dict[str, dict]) -> None:
    pop, sar, sasrec, bert4rec = (rows[m] for m in ("popularity", "sar", "sasrec", "bert4rec"))
    # Full ranking over every item not in the user's history (train + validation item).
    assert sasrec["ndcg_at_10"] > 1.3 * pop["ndcg_at_10"]
    assert sasrec["hr_at_10"] > pop["hr_at_10"]
    assert bert4rec["ndcg_at_10"] > pop["ndcg_at_10"]
    # SAR's own history items are excluded: it is a real baseline, not the 0.0035 of nothing excluded.
    assert sar["ndcg_at_10"] > pop["ndcg_at_10"]
    for name in SEQUENTIAL:
        row = rows[name]
        for key in PROTOCOL:
            # 100 negatives are a subset of the items ranked in full: the sampled rank is never worse
            assert row[f"sampled_{key}"] >= row[key], (name, key)
            # ranked among all items, its own history included, the target can only fall
            assert row[key] >= row[f"unfiltered_{key}"], (name, key)
        assert row["sampled_ndcg_at_10"] > 2 * row["ndcg_at_10"]
        assert 0 < row["best_epoch"] <= EPOCHS


def test_recommendations_leave_out_the_history(rows: dict[str, dict], home: Path) -> None:
    prepared = next(p.parent for p in (home / "prepared").glob("*/manifest.json"))
    history = pd.concat([pd.read_parquet(prepared / f"{s}.parquet") for s in ("train", "validation")])
    seen = set(zip(history["user_id"], history["item_id"], strict=True))
    for name in ("popularity", "sar", *SEQUENTIAL):
        (path,) = (home / "runs").glob(f"*/{name}/recommendations.parquet")
        recs = pd.read_parquet(path)
        assert recs.groupby("user_id").size().eq(10).all() and recs["user_id"].nunique() == 943
        assert not any(pair in seen for pair in zip(recs["user_id"], recs["item_id"], strict=True)), name
        test = pd.read_parquet(prepared / "test.parquet")
        hits = test.merge(recs, on=["user_id", "item_id"])["user_id"].nunique() / len(test)
        assert hits == pytest.approx(rows[name]["hr_at_10"], abs=1e-9), name  # the two paths agree


def test_mlflow_holds_curves_params_protocols_and_model(rows: dict[str, dict], home: Path) -> None:
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    for name in SEQUENTIAL:
        run = client.get_run(rows[name]["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["model"] == name
        assert run.data.tags["split"] == "leave_one_out"
        params = run.data.params
        assert params["mode"] == "local" and params["nproc"] == "1" and params["precision"] == "fp32"
        assert params["max_len"] == "20" and params["emb_dim"] == "32" and params["epochs"] == str(EPOCHS)
        assert {"heads", "layers", "dropout", "lr", "batch_size", "patience", "seed"} <= set(params)
        if name == "bert4rec":
            assert params["mask_prob"] == "0.2"
        for key in ("loss", "validation_ndcg_at_10", "records_per_second", "epoch_seconds"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), (name, key)
            assert all(m.value > 0 for m in history)
        losses = [
            m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
        ]
        assert losses[-1] < losses[0]
        logged = run.data.metrics
        protocols = {f"{prefix}{k}" for k in PROTOCOL for prefix in ("", "sampled_", "unfiltered_")}
        assert {*protocols, "fit_seconds", "best_epoch"} <= set(logged)
        assert logged["ndcg_at_10"] == pytest.approx(rows[name]["ndcg_at_10"])
        assert "learning_curve.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
        models = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        assert [m.name for m in models] == ["model"]
        files = {a.path for a in client.list_logged_model_artifacts(models[0].model_id)}
        assert "MLmodel" in files and "data" in files
