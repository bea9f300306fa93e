"""The real ``movielens-sessions`` flow on MovieLens-100K (baselines): local Prefect API, MLflow on SQLite,
the prepared session cache, the CLI's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client

from flows.cli import main
from flows.sessions import movielens_sessions
from recmodels.errors import InvalidConfig
from recmodels.sequences import SessionConfig, build_sessions
from tasks.prepared import load_prepared, prepared_key
from tasks.sessions import read_session_data, session_params, write_session_data

MODELS = ["session_knn", "item_knn", "popularity"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def first_run(home: Path, mirror: Path, prefect_api: None):
    return movielens_sessions(models=MODELS, home=str(home), mirror=str(mirror), return_state=True)


def test_the_flow_reports_aod_per_model_and_knn_beats_popularity(first_run) -> None:
    rows = {row["model"]: row for row in first_run.result()}
    assert set(rows) == set(MODELS)
    assert all(row["windows"] == 30 for row in rows.values())
    assert rows["item_knn"]["aod_ndcg_at_10"] > rows["popularity"]["aod_ndcg_at_10"] + 0.01
    assert rows["session_knn"]["aod_recall_at_10"] > rows["popularity"]["aod_recall_at_10"] + 0.01


def test_prepared_session_files_are_named_by_window_start(first_run, home: Path) -> None:
    (folder,) = (home / "prepared").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    windows = sorted(name for name in manifest["files"] if name != "items")
    assert len(windows) == 31 and windows[0] == "session_start_date=1997-09-20"
    assert sum(manifest["files"][w]["rows"] for w in windows) == 2275
    assert manifest["files"]["items"]["rows"] == 1349
    first = pd.read_parquet(folder / "session_start_date=1997-09-20.parquet")
    assert {"item_id", "item_index", "timestamp", "session_start", "user_id"} <= set(first.columns)
    assert all(len(s) >= 2 for s in first["item_id"])


def test_mlflow_nested_runs_with_per_window_steps_aod_and_artifacts(first_run, home: Path) -> None:
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("movielens-sessions")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED" and parent.data.params["sessions"] == "2275"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "ndcg_at_10_per_window.png",
        "eval_train_results_dates.csv",
    }
    children = {
        r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == set(MODELS)
    for name, run in children.items():
        history = client.get_metric_history(run.info.run_id, "ndcg_at_10")
        assert sorted(m.step for m in history) == list(range(1, 31))
        mean = sum(m.value for m in history) / len(history)
        assert run.data.metrics["aod_ndcg_at_10"] == pytest.approx(mean)
        assert {"aod_recall_at_10", "aod_recall_at_20", "aod_ndcg_at_20", "aod_mrr_at_20"} <= set(
            run.data.metrics
        )
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"eval_train_results_dates.csv", "model"} <= artifacts, name
        assert run.data.tags["split"] == "sessions" and run.data.tags["model"] == name


def test_prefect_table_artifact_with_aod_per_model(first_run) -> None:
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
        tables = [a for a in artifact if a.key == "movielens-sessions-aod"]
    assert tables
    data = tables[0].data if isinstance(tables[0].data, list) else json.loads(tables[0].data)
    assert {row["model"] for row in data} == set(MODELS)


def test_session_cache_is_reused_and_keyed_by_the_protocol(tmp_path: Path) -> None:
    rows = [(u, i, 1000 * u + 10 * i + day * 86_400) for day in range(3) for u in range(4) for i in range(6)]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    config = SessionConfig(window_days=1)
    params = session_params("toy", config)
    key = prepared_key(params)
    assert key != prepared_key(session_params("toy", SessionConfig(window_days=2)))
    first = write_session_data(str(tmp_path), key, build_sessions(events, config), params)
    again = write_session_data(str(tmp_path), key, build_sessions(events, config), params)
    assert first.manifest == again.manifest
    assert [p.name for p in tmp_path.joinpath("prepared").iterdir()] == [key]  # no temporary folder left
    data = read_session_data(load_prepared(str(tmp_path), key))
    assert data.counts() == {"windows": 3, "sessions": 12, "items": 6}


def test_cli_bad_protocol_input_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sessions", "--session-gap", "0"]) == 2
    assert main(["sessions", "--models", "gpt2,bogus"]) == 2
    out = capsys.readouterr().out  # rich wraps lines at the terminal's width
    assert out.startswith("InvalidConfig: session_gap=0 s: it must be > 0")
    assert "UnknownModel: unknown session model(s) ['bogus']" in out and "Traceback" not in out


def test_a_window_length_that_leaves_one_window_fails_the_flow(home: Path, mirror: Path, first_run) -> None:
    with pytest.raises(InvalidConfig, match="leaves 1 window"):
        movielens_sessions(models=["popularity"], window_days=3650, home=str(home), mirror=str(mirror))
    assert all((p / "manifest.json").exists() for p in (home / "prepared").iterdir())


def test_gpt2_with_two_ddp_workers_through_the_flow(home: Path, mirror: Path, first_run) -> None:
    """``--param gpt2.num_workers=2``: torchrun, 2 gloo ranks, rank 0's per-window table logged on the
    model's run with every window's step, the model and the CSV."""
    pytest.importorskip("transformers", reason="the transformers extra: pip install -e '.[transformers]'")
    small = {"num_workers": 2, "epochs": 1, "d_model": 32, "n_layer": 1, "n_head": 2, "batch_size": 64}
    rows = movielens_sessions(
        models=["gpt2"],
        model_params={"gpt2": small},
        window_days=28,
        home=str(home),
        mirror=str(mirror),
        experiment="sessions-ddp",
    )
    (row,) = rows
    assert row["model"] == "gpt2" and row["windows"] == 7 and 0 < row["aod_recall_at_20"] <= 1
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    run = client.get_run(row["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["num_workers"] == "2"
    history = client.get_metric_history(run.info.run_id, "recall_at_10")
    assert sorted(m.step for m in history) == list(range(1, 8))
    assert {"eval_train_results_dates.csv", "model"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }
