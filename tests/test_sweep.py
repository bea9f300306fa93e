"""The ``movielens-benchmark-sweep`` flow on MovieLens-100K and ml-latest-small (GitHub issue 5)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
)
from prefect.client.schemas.filters import FlowRunFilterParentFlowRunId as ParentFilter

from flows.sweep import (
    ARTIFACT_KEY,
    FIGURE,
    check_metric,
    movielens_benchmark_sweep,
    run_url,
    sweep_figure,
    sweep_markdown,
)
from recmodels.errors import InvalidConfig, UnknownDataset, UnknownDeployment

SIZES = ["100k", "latest-small"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sweep-home")


@pytest.fixture(scope="module")
def mlflow_client(home: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{home / 'mlflow.db'}")


@pytest.fixture(scope="module")
def sweep(home: Path, mirror: Path, prefect_api: None):
    with pytest.MonkeyPatch.context() as patch:  # mlflow.set_tracking_uri exports it: restore after
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        return movielens_benchmark_sweep(
            sizes=SIZES, models=["popularity"], home=str(home), mirror=str(mirror), return_state=True
        )


@pytest.fixture(scope="module")
def children(sweep) -> dict[str, str]:
    """Size → flow run id of the sweep's child flow runs, as the Prefect API records them."""
    parent = sweep.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=ParentFilter(any_=[parent]))
        )
    assert all(run.state.is_completed() for run in runs)
    return {run.parameters["size"]: str(run.id) for run in runs}


def test_one_completed_child_flow_run_per_size(sweep, children: dict[str, str]) -> None:
    assert sweep.is_completed()
    assert sorted(children) == sorted(SIZES)


def test_rows_are_the_childrens_mlflow_runs(
    sweep, children: dict[str, str], mlflow_client: MlflowClient, home: Path
) -> None:
    rows = sweep.result()
    assert [(r["size"], r["model"]) for r in rows] == [("100k", "popularity"), ("latest-small", "popularity")]
    train_sizes = sorted(len(pd.read_parquet(p)) for p in (home / "prepared").glob("*/train.parquet"))
    assert sorted(r["train_interactions"] for r in rows) == train_sizes
    for row in rows:
        run = mlflow_client.get_run(row["run_id"])
        parent = mlflow_client.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.data.tags["prefect.flow_run_id"] == children[row["size"]]
        assert run.data.tags["size"] == row["size"] and run.data.tags["model"] == "popularity"
        assert row["ndcg_at_10"] == run.data.metrics["ndcg_at_10"] > 0
        assert row["fit_seconds"] == run.data.metrics["fit_seconds"] > 0
        assert row["run_url"] is None, "a SQLite store has no UI to link"


def test_sweep_run_holds_the_figure(sweep, mlflow_client: MlflowClient, tmp_path: Path) -> None:
    experiment = mlflow_client.get_experiment_by_name("movielens-benchmark").experiment_id
    flow_run_id = str(sweep.state_details.flow_run_id)
    (run,) = mlflow_client.search_runs([experiment], f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    assert run.info.status == "FINISHED"
    assert run.data.tags["size"] == "100k,latest-small" and run.data.tags["model"] == "popularity"
    assert run.data.params["metric"] == "ndcg_at_10"
    png = Path(mlflow_client.download_artifacts(run.info.run_id, FIGURE, str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_artifact_has_a_row_per_size_and_model(sweep, mlflow_client: MlflowClient) -> None:
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[ARTIFACT_KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[sweep.state_details.flow_run_id]),
            )
        )
    assert artifact.type == "markdown"
    table = [line for line in artifact.data.splitlines() if re.match(r"\| (100k|latest-small) ", line)]
    assert len(table) == 2
    rows = {row["run_id"]: row for row in sweep.result()}
    for line in table:
        size, model, interactions, ndcg, fit, run_id = (c.strip() for c in line.strip("|").split("|"))
        run = mlflow_client.get_run(run_id)
        metrics = run.data.metrics
        assert (size, model) == (run.data.tags["size"], run.data.tags["model"])
        assert int(interactions.replace(",", "")) == rows[run_id]["train_interactions"]
        assert float(ndcg) == pytest.approx(metrics["ndcg_at_10"], abs=5e-5)
        assert float(fit) == pytest.approx(metrics["fit_seconds"], abs=5e-5)


def test_markdown_links_runs_to_an_mlflow_server() -> None:
    row = {"size": "1m", "model": "sar", "train_interactions": 750123, "ndcg_at_10": 0.123456}
    row |= {"fit_seconds": 2.5, "run_id": "abc", "run_url": run_url("http://mlflow:5000/", "3", "abc")}
    lines = sweep_markdown([row], "ndcg_at_10", "sweep-run").splitlines()
    assert lines[2] == "| size | model | train_interactions | ndcg_at_10 | fit_seconds | MLflow run |"
    assert (
        lines[4] == "| 1m | sar | 750,123 | 0.1235 | 2.5000 | "
        "[abc](http://mlflow:5000/#/experiments/3/runs/abc?workflowType=machine_learning) |"
    )
    assert run_url("sqlite:///x/mlflow.db", "3", "abc") is None
    # credentials in the tracking URI never reach a link
    assert run_url("https://bob:hunter2@mlflow:5000/?token=t0k", "3", "abc") == (
        "https://mlflow:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )


def test_figure_plots_metric_and_time_against_training_interactions() -> None:
    rows = [
        {"size": s, "model": m, "train_interactions": n, "mrr": q, "fit_seconds": t}
        for s, m, n, q, t in (
            ("1m", "sar", 750_000, 0.5, 20.0),
            ("1m", "popularity", 750_000, 0.2, 0.3),
            ("100k", "sar", 75_000, 0.4, 2.0),
            ("100k", "popularity", 75_000, 0.1, 0.02),
        )
    ]
    quality, time = sweep_figure(rows, "mrr").axes
    assert [line.get_label() for line in quality.lines] == ["sar", "popularity"]
    assert list(quality.lines[0].get_xdata()) == [75_000, 750_000]
    assert list(quality.lines[0].get_ydata()) == [0.4, 0.5]
    assert list(time.lines[1].get_ydata()) == [0.02, 0.3]
    assert [t.get_text() for t in quality.get_xticklabels()] == ["1m\n750,000", "100k\n75,000"]
    assert (quality.get_xscale(), time.get_yscale(), quality.get_ylabel()) == ("log", "log", "mrr")


def test_metric_must_be_logged_by_every_model() -> None:
    check_metric("recall_at_20", top_k=20)
    check_metric("ndcg_at_50", top_k=[10, 20, 50])  # the plot's cutoff: any of the run's cutoffs
    check_metric("mrr", top_k=[10, 20])
    with pytest.raises(
        InvalidConfig, match=r"'ndcg_at_20' is not logged by every model at the cutoffs top_k=10"
    ):
        check_metric("ndcg_at_20", top_k=10)
    with pytest.raises(InvalidConfig, match=r"'ndcg_at_5' is not logged .* top_k=\[10, 20\]"):
        check_metric("ndcg_at_5", top_k=[10, 20])
    with pytest.raises(InvalidConfig, match="positive integers"):
        check_metric("ndcg_at_10", top_k=[10, 0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sizes": ["100k", "3m"]}, UnknownDataset, "3m"),
        ({"sizes": ["100k", "100k"]}, InvalidConfig, "each one once"),
        ({"deployment": "movielens-benchmark/nowhere"}, UnknownDeployment, "prefect deployment ls"),
    ],
)
def test_bad_parameters_fail_before_any_child_runs(
    kwargs, error, match, tmp_path: Path, prefect_api: None
) -> None:
    with pytest.raises(error, match=match):
        movielens_benchmark_sweep(home=str(tmp_path), **kwargs)
    assert not (tmp_path / "prepared").exists()


def test_show_prints_the_sweep_table(
    sweep, mlflow_client: MlflowClient, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    rows = sweep.result()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "250")
        assert main(["show", "--home", str(home), "--last", "1"]) == 0
    out = capsys.readouterr().out
    assert "sweep-" in out and "ndcg_at_10 and fit time" in out
    for row in rows:
        line = next(line for line in out.splitlines() if f" {row['size']} " in line)
        assert f"{row['ndcg_at_10']:.4f}" in line and row["run_id"] in line
