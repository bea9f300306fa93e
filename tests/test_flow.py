"""The real ``movielens-benchmark`` flow on MovieLens-100K: local Prefect API, MLflow on SQLite."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.benchmark import SplitConfig, movielens_benchmark
from flows.cli import main
from recmodels.errors import InvalidConfig, UnknownDataset, UnknownModel
from tasks import storage


def _task_names(flow_run_id) -> set[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0] for run in runs}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def first_run(home: Path, mirror: Path, prefect_api: None):
    state = movielens_benchmark(home=str(home), mirror=str(mirror), return_state=True)
    return state


def test_sar_reproduces_published_figures_and_beats_popularity(first_run) -> None:
    rows = {row["model"]: row for row in first_run.result()}
    sar, pop = rows["sar"], rows["popularity"]
    # Recommenders' sar_movielens notebook: stratified 75/25 (seed 42), jaccard, 30-day half-life, top-10.
    assert sar["precision_at_10"] == pytest.approx(0.3308, abs=0.01)
    assert sar["recall_at_10"] == pytest.approx(0.1764, abs=0.01)
    assert sar["ndcg_at_10"] == pytest.approx(0.3825, abs=0.01)
    assert sar["precision_at_10"] > pop["precision_at_10"] + 0.05
    assert sar["ndcg_at_10"] > pop["ndcg_at_10"] + 0.05
    assert sar["fit_seconds"] > 0 and sar["peak_rss_mb"] > 0


def test_mlflow_holds_parent_and_child_runs(first_run, home: Path) -> None:
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("movielens-benchmark")
    runs = client.search_runs([experiment.experiment_id])
    flow_run_id = str(first_run.state_details.flow_run_id)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    children = {
        r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == {"popularity", "sar"}
    for run in [parent, *children.values()]:
        tags = run.data.tags
        assert tags["size"] == "100k" and tags["dataset"] == "movielens" and tags["split"] == "stratified"
        assert tags["prefect.flow_run_id"] == flow_run_id
        assert tags["git_commit"]
    sar = children["sar"]
    assert sar.data.tags["model"] == "sar"
    assert sar.data.params["similarity"] == "jaccard"
    assert float(sar.data.params["time_decay_days"]) == 30
    assert "checkpoint_every" not in sar.data.params, "SAR is not trained in epochs"
    assert {"precision_at_10", "ndcg_at_10", "fit_seconds", "predict_seconds", "peak_rss_mb"} <= set(
        sar.data.metrics
    )
    assert sar.inputs.dataset_inputs, "the training dataset is logged with mlflow.log_input"
    artifacts = {a.path for a in client.list_artifacts(sar.info.run_id, "recommendations")}
    assert artifacts == {"recommendations/recommendations.parquet"}


def test_flow_runs_data_tasks_then_rerun_hits_the_cache(first_run, home: Path, mirror: Path) -> None:
    assert {"download", "parse", "filter", "split", "write-prepared"} <= _task_names(
        first_run.state_details.flow_run_id
    )
    prepared = next((home / "prepared").iterdir())
    manifest_mtime = (prepared / "manifest.json").stat().st_mtime_ns
    rerun = movielens_benchmark(
        home=str(home),
        mirror=str(mirror),
        models=["sar"],
        model_params={"sar": {"similarity": "lift"}},
        return_state=True,
    )
    assert rerun.is_completed()
    assert _task_names(rerun.state_details.flow_run_id) == {"train-evaluate"}
    assert (prepared / "manifest.json").stat().st_mtime_ns == manifest_mtime
    assert len(list((home / "prepared").iterdir())) == 1


def test_transpose_and_split_runs_gpu_models_in_process_without_a_gpu_pool(
    home: Path, mirror: Path, first_run
) -> None:
    """The seed's "transpose & split" (random 80/20 on items ⇄ users) with implicit MF, no GPU pool."""
    rows = movielens_benchmark(
        home=str(home),
        mirror=str(mirror),
        models=["popularity", "implicit_mf"],
        model_params={"implicit_mf": {"n_iter": 3, "seed": 0}},
        split=SplitConfig(strategy="random", ratios=[0.8, 0.2], seed=1),
        transpose=True,
    )
    by_model = {row["model"]: row for row in rows}
    assert by_model["implicit_mf"]["gpu_model"] and by_model["implicit_mf"]["map_at_10"] > 0
    assert by_model["popularity"]["precision_at_10"] > 0
    assert len([p for p in (home / "prepared").iterdir() if not p.name.startswith(".")]) == 2


METRICS_AT_K = ("precision", "recall", "f1", "map", "ndcg", "hr", "coverage")


def test_every_metric_is_logged_at_every_cutoff(
    first_run, home: Path, mirror: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Default cutoffs 5, 10, 20, 50, 100 (RecBole's ``topk``): each metric at each one in MLflow, from
    recommendations computed once at 100; a run asked for top-10 alone gives the same values at 10."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    rows = {row["model"]: row for row in first_run.result()}
    expected = {f"{m}_at_{k}" for m in METRICS_AT_K for k in (5, 10, 20, 50, 100)} | {"mrr"}
    for row in rows.values():
        run = client.get_run(row["run_id"])
        assert expected <= set(run.data.metrics), expected - set(run.data.metrics)
        recs = pd.read_parquet(
            home
            / "runs"
            / str(first_run.state_details.flow_run_id)
            / row["model"]
            / "recommendations.parquet"
        )
        assert recs.groupby("user_id").size().max() == 100  # one list, at the largest cutoff
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        assert (parent.data.params["top_k"], parent.data.params["table_k"]) == ("5,10,20,50,100", "5")
    sar = rows["sar"]
    assert sar["ndcg_at_5"] != sar["ndcg_at_10"] != sar["ndcg_at_100"]
    assert (
        sar["recall_at_5"]
        < sar["recall_at_10"]
        < sar["recall_at_20"]
        < sar["recall_at_50"]
        < sar["recall_at_100"]
    )
    assert sar["hr_at_100"] >= sar["hr_at_50"] >= sar["hr_at_10"]

    assert main(["show", "--home", str(home), "--table-k", "20"]) == 0  # the latest run, at 20
    out = capsys.readouterr().out
    assert "top-20" in out and "ndcg_at_20" in out and "mrr" in out and "ndcg_at_10" not in out

    alone = movielens_benchmark(home=str(home), mirror=str(mirror), models=["popularity", "sar"], top_k=10)
    assert main(["show", "--home", str(home)]) == 0  # at the run's table cutoff
    out = capsys.readouterr().out
    assert "top-10" in out and "ndcg_at_10" in out and "ndcg_at_20" not in out
    assert main(["show", "--home", str(home), "--table-k", "20"]) == 2
    assert "logged the cutoffs 10, not 20" in " ".join(capsys.readouterr().out.split())
    for row in alone:
        logged = {name for name in row if name.endswith("_at_10")}
        assert logged == {f"{m}_at_10" for m in METRICS_AT_K}
        assert not any(name.endswith(("_at_5", "_at_100")) for name in row)
        for name in logged:
            assert row[name] == pytest.approx(rows[row["model"]][name], abs=1e-12), (row["model"], name)


def test_table_k_must_be_one_of_the_cutoffs(home: Path, prefect_api: None) -> None:
    with pytest.raises(InvalidConfig, match=r"table_k=7 is not one of the cutoffs top_k=\[10, 20\]"):
        movielens_benchmark(home=str(home), top_k=[10, 20], table_k=7)
    with pytest.raises(InvalidConfig, match="positive integers"):
        movielens_benchmark(home=str(home), top_k=[10, 0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"size": "3m"}, UnknownDataset, "3m"),
        ({"models": ["sar", "deepfm"]}, UnknownModel, "deepfm"),
    ],
)
def test_bad_parameters_fail_the_flow_with_the_fix(
    kwargs, error, match, home: Path, prefect_api: None
) -> None:
    with pytest.raises(error, match=match):
        movielens_benchmark(home=str(home), **kwargs)


def test_strong_generalization_protocol_reports_vae_cf_metrics(home: Path, mirror: Path, first_run) -> None:
    """VAE-CF's protocol: ratings ≥ 4 as implicit, users ≥ 5, held-out users folded in at 80 %."""
    rows = movielens_benchmark(
        home=str(home),
        mirror=str(mirror),
        models=["popularity", "sar", "vae_cf"],
        implicit_threshold=4.0,
        min_item_interactions=0,
        split=SplitConfig(strategy="strong_generalization", n_heldout_users=100, seed=98765),
        model_params={"vae_cf": {"backend": "torch", "epochs": 20, "seed": 0}},
    )
    by_model = {row["model"]: row for row in rows}
    for row in rows:
        assert {"recall_at_20", "recall_at_50", "ndcg_at_100"} <= set(row)
        assert 0 < row["ndcg_at_100"] < 1
    assert by_model["sar"]["ndcg_at_100"] > by_model["popularity"]["ndcg_at_100"]
    assert by_model["vae_cf"]["ndcg_at_100"] > by_model["popularity"]["ndcg_at_100"]
    # MLflow has the configured parameters and, as fitted.*, what the small data rule trained with:
    # batches of 500 (the floor), and 40 steps, a short run: β held at 0.5, no input dropout.
    params = MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_run(by_model["vae_cf"]["run_id"]).data.params
    assert (params["batch_size"], params["anneal_cap"], params["keep_prob"]) == ("10000", "0.2", "0.5")
    assert (params["fitted.batch_size"], params["fitted.anneal_cap"], params["fitted.keep_prob"]) == (
        "500",
        "0.5",
        "1.0",
    )


def test_sar_on_a_dask_local_cluster_equals_single_node(
    home: Path, mirror: Path, first_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow's SAR on Dask (a real LocalCluster) gives the single-node SAR's metrics, and the train
    task reads train.parquet once (the subflow runs in its process and hands its table back)."""
    read = []
    real_read = storage.read_parquet
    monkeypatch.setattr(storage, "read_parquet", lambda url: read.append(url) or real_read(url))
    single = {row["model"]: row for row in first_run.result()}["sar"]
    rows = movielens_benchmark(home=str(home), mirror=str(mirror), models=["sar"], sar_backend="dask")
    dask = rows[0]
    for metric in ("precision_at_10", "recall_at_10", "ndcg_at_10", "map_at_10", "coverage_at_10"):
        assert dask[metric] == pytest.approx(single[metric], abs=1e-9), metric
    assert any(key.startswith("worker_") and key.endswith("_peak_rss_mb") for key in dask)
    assert len([url for url in read if url.endswith("/train.parquet")]) == 1, read


def test_vae_cf_with_two_horovod_workers_through_the_flow(home: Path, mirror: Path, first_run) -> None:
    """``num_workers=2`` makes the train task launch ``horovodrun -np 2 --gloo`` (TensorFlow backend)."""
    pytest.importorskip("horovod.tensorflow", reason="the [tf] extra: bash deployments/install_tf_extra.sh")
    rows = movielens_benchmark(
        home=str(home),
        mirror=str(mirror),
        models=["popularity", "vae_cf"],
        implicit_threshold=4.0,
        min_item_interactions=0,
        split=SplitConfig(strategy="strong_generalization", n_heldout_users=100, seed=98765),
        model_params={"vae_cf": {"num_workers": 2, "backend": "tf", "epochs": 3, "seed": 0}},
    )
    by_model = {row["model"]: row for row in rows}
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    run = client.get_run(by_model["vae_cf"]["run_id"])
    assert run.data.params["world_size"] == "2"  # logged by Horovod rank 0 into the task's run
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 3
    # rank 0's dense-score NDCG@100 and the task's NDCG@100 of the recommendation lists agree
    worker_value, task_value = (m.value for m in client.get_metric_history(run.info.run_id, "ndcg_at_100"))
    assert worker_value == pytest.approx(task_value, abs=0.01)
    assert 0 < by_model["vae_cf"]["ndcg_at_100"] < 1
