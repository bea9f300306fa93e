"""The ``movielens-sessions`` flow: the session protocol of issue 17 (Transformers4Rec's incremental
time-window training and evaluation) on a MovieLens release.

download → parse → sessionise + windows (prepared/<key>/session_start_date=….parquet) → per model:
incremental train/eval (nested MLflow run: per-window metrics with ``step`` = window index, ``aod_*``,
``eval_train_results_dates.csv``, the model after the last window) → NDCG@10-per-window plot on the
parent run and a Prefect table artifact of AOD per model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from prefect import flow, runtime
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from recmodels.errors import BenchmarkError, UnknownModel
from recmodels.sequences import SessionConfig, default_window_days
from recmodels.session_eval import METRIC_NAMES
from tasks import data, storage
from tasks.checkpoints import claim_run, end_interrupted, fail_dead_runs, new_run_tags, run_identity
from tasks.sessions import SESSION_MODELS, incremental_train_eval, per_window_plot, prepare_sessions
from tasks.tracking import experiment_id, git_commit, tracking_uri
from tasks.train import Tracking

AOD_COLUMNS = tuple(f"aod_{name}" for name in METRIC_NAMES)


def check_models(models: list[str]) -> None:
    unknown = [m for m in models if m not in SESSION_MODELS]
    if unknown or not models:
        raise UnknownModel(f"unknown session model(s) {unknown}; choose from {list(SESSION_MODELS)}")


@flow(name="movielens-sessions")
def movielens_sessions(
    size: str = "100k",
    models: list[str] = ["gpt2", "xlnet", "session_knn", "item_knn", "popularity"],  # noqa: B006
    session_gap: int = 1_800,
    max_len: int = 20,
    window_days: float | None = None,
    replay_windows: int = 0,
    seed: int = 0,
    model_params: dict[str, dict[str, Any]] = {},  # noqa: B006
    home: str | None = None,
    mirror: str | None = None,
    experiment: str = "movielens-sessions",
) -> list[dict[str, Any]]:
    """Session protocol on ``size``: returns one row of AOD metrics per model.

    ``window_days`` defaults to the issue's (7 for 100k, 365 otherwise); ``replay_windows`` replays that
    many earlier windows with each new one (0: the seed's way, -1: all) for the transformers.
    """
    logger = get_run_logger()
    data.check_size(size)
    check_models(models)
    unknown = set(model_params) - set(models)
    if unknown:
        raise BenchmarkError(f"model_params names {sorted(unknown)} which are not in models={models}")
    config = SessionConfig(
        session_gap=session_gap,
        max_len=max_len,
        window_days=default_window_days(size) if window_days is None else window_days,
    )
    root = storage.resolve_home(home)
    raw = data.download(size, root, mirror)
    parsed = data.parse(size, raw, root)
    prepared = prepare_sessions(parsed, root, size, config)
    files = prepared.manifest["files"]
    counts = {
        "windows": len(files) - 1,
        "sessions": sum(f["rows"] for name, f in files.items() if name != "items"),
        "items": files["items"]["rows"],
    }
    logger.info("session data %s: %s", prepared.key, counts)

    uri = tracking_uri(root)
    client = MlflowClient(uri)
    flow_run_id = str(runtime.flow_run.id or "")
    tags = {
        "dataset": "synthetic" if size.startswith("synthetic") else "movielens",
        "size": size,
        "split": "sessions",
        "prefect.flow_run_id": flow_run_id,
        "git_commit": git_commit(),
    }
    exp_id = experiment_id(uri, root, experiment)
    fail_dead_runs(client, exp_id)
    identity = run_identity(
        prepared=prepared.key, models=models, params=model_params, replay_windows=replay_windows, seed=seed
    )
    claimed = claim_run(client, exp_id, identity, tags)
    per_window: dict[str, pd.DataFrame] = {}
    if claimed is None:
        parent_id = client.create_run(
            exp_id,
            run_name=f"{size}-sessions-{runtime.flow_run.name or 'local'}",
            tags={**tags, "model": ",".join(models), **new_run_tags(identity)},
        ).info.run_id
        for name, value in {
            **{k: v for k, v in prepared.manifest["params"].items() if k != "sessions_code"},
            **counts,
            "models": ",".join(models),
            "replay_windows": replay_windows,
            "seed": seed,
            "prepared_key": prepared.key,
        }.items():
            client.log_param(parent_id, name, value)
        client.log_dict(parent_id, prepared.manifest, "prepared/manifest.json")
    else:  # the same command's run that died or was interrupted: its finished models are kept
        parent_id = claimed.info.run_id
        per_window = finished_models(client, exp_id, parent_id, models)
        logger.info("resuming MLflow parent run %s; finished models kept: %s", parent_id, sorted(per_window))
    logger.info("MLflow parent run %s in experiment %s at %s", parent_id, experiment, uri)

    tracking = Tracking(uri, exp_id, parent_id, tags, home=root)
    failures: list[str] = []
    try:
        for name in [m for m in models if m not in per_window]:
            state = incremental_train_eval(
                name, model_params.get(name, {}), prepared, replay_windows, seed, tracking, return_state=True
            )
            if state.is_completed():
                per_window[name] = state.result()
            else:
                failures.append(f"{name}: {state.message}")
        per_window = {m: per_window[m] for m in models if m in per_window}  # the order of `models`
        rows = aod_rows(per_window)
        if rows:
            with tempfile.TemporaryDirectory() as tmp:
                plot = per_window_plot(per_window, "ndcg_at_10", Path(tmp) / "ndcg_at_10_per_window.png")
                client.log_artifact(parent_id, str(plot))
                csv = Path(tmp) / "eval_train_results_dates.csv"
                pd.concat(per_window.values(), ignore_index=True).to_csv(csv, index=False)
                client.log_artifact(parent_id, str(csv))
            create_table_artifact(
                [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
                key="movielens-sessions-aod",
                description=f"MovieLens {size}, session protocol ({counts['windows']} "
                f"windows of {config.window_days:g} days), AOD per model; MLflow parent run {parent_id}",
            )
        if failures:
            raise BenchmarkError("model(s) failed: " + "; ".join(failures))
    except KeyboardInterrupt:  # Ctrl-C/SIGTERM: KILLED, resumed by the same command
        end_interrupted(client, parent_id, "KILLED", "interrupted")
        raise
    except BaseException:
        client.set_terminated(parent_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(parent_id)
    return rows


def finished_models(
    client: MlflowClient, exp_id: str, parent_id: str, models: list[str]
) -> dict[str, pd.DataFrame]:
    """The per-window tables of the models a resumed parent run has finished (their logged CSV)."""
    import mlflow.artifacts

    children = client.search_runs(
        [exp_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    finished: dict[str, pd.DataFrame] = {}
    for child in children:
        name = child.data.tags.get("model")
        if name in models and name not in finished:
            with tempfile.TemporaryDirectory() as tmp:
                csv = mlflow.artifacts.download_artifacts(
                    run_id=child.info.run_id,
                    artifact_path="eval_train_results_dates.csv",
                    dst_path=tmp,
                    tracking_uri=client.tracking_uri,
                )
                finished[name] = pd.read_csv(csv).assign(model=name, run_id=child.info.run_id)
    return finished


def aod_rows(per_window: dict[str, pd.DataFrame]) -> list[dict[str, Any]]:
    """One row per model: the AOD of each metric, the windows evaluated and the train throughput."""
    rows = []
    for name, frame in per_window.items():
        rows.append(
            {
                "model": name,
                **{f"aod_{m}": float(frame[m].mean()) for m in METRIC_NAMES},
                "windows": len(frame),
                "fit_seconds": float(frame["fit_seconds"].sum()),
                "sessions_per_second": float(
                    frame["train_sessions"].sum() / max(frame["fit_seconds"].sum(), 1e-9)
                ),
                "run_id": str(frame["run_id"].iloc[0]),
            }
        )
    return rows
