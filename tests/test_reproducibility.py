"""The same command twice gives the same metrics on CPU (issue 15, item 6): the run's seed seeds every
model that is not given its own, and the seed used is logged to MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.benchmark import SplitConfig, movielens_benchmark
from recmodels.errors import MissingExtra
from recmodels.registry import MODELS, create_model, with_run_seed
from tasks.train import model_parameters

# Two epochs in big batches: seconds on a CPU, and enough for an unseeded model to differ between runs.
IMPLICIT_MF = {"n_iter": 2, "batch_size": 4096}


def test_every_model_that_takes_a_seed_gets_the_runs() -> None:
    for name, spec in MODELS.items():
        try:
            takes_seed = "seed" in model_parameters(create_model(name), {})
        except MissingExtra:
            continue
        assert spec.seeded == takes_seed, f"{name}: set ModelSpec.seeded={takes_seed}"
    assert with_run_seed("implicit_mf", {"n_iter": 2}, 7) == {"n_iter": 2, "seed": 7}
    assert with_run_seed("implicit_mf", {"seed": 3}, 7) == {"seed": 3}, "a given seed wins"
    assert with_run_seed("sar", {}, 7) == {}


def test_the_same_run_twice_gives_the_same_metrics(
    tmp_path: Path, mirror: Path, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch", reason="the torch extra: pip install -e '.[torch]'")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = [
        movielens_benchmark(
            home=str(tmp_path),
            mirror=str(mirror),
            models=["implicit_mf"],
            model_params={"implicit_mf": IMPLICIT_MF},
            split=SplitConfig(seed=7),
            top_k=[10, 100],
            gpu="local",
        )[0]
        for _ in range(2)
    ]
    timing = ("seconds", "per_second", "rss_mb", "run_id")
    first, second = ({k: v for k, v in run.items() if not k.endswith(timing)} for run in runs)
    assert first["ndcg_at_10"] > 0
    assert first == second

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run in runs:
        logged = client.get_run(run["run_id"])
        assert logged.data.params["seed"] == "7", "the seed used is logged with the model's parameters"
        parent = client.get_run(logged.data.tags["mlflow.parentRunId"])
        assert parent.data.params["seed"] == "7"
    # Another seed is another model: the seed reaches the model, not only the split.
    other = movielens_benchmark(
        home=str(tmp_path),
        mirror=str(mirror),
        models=["implicit_mf"],
        model_params={"implicit_mf": {**IMPLICIT_MF, "seed": 8}},
        split=SplitConfig(seed=7),
        top_k=[10, 100],
        gpu="local",
    )[0]
    assert other["ndcg_at_10"] != first["ndcg_at_10"]
