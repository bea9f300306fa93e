"""Prefect tasks of the session protocol: sessionise → windows (cached) → incremental train/eval per model.

The prepared session data lives in the prepared-data cache (``tasks/prepared.py``: a folder per key,
built under a temporary name, ``manifest.json`` last): one Parquet file of session sequences per window,
``session_start_date=YYYY-MM-DD.parquet`` (list columns ``item_id``, ``item_index``, ``timestamp``), and
``items.parquet`` (the vocabulary: ``item_index`` → raw ``item_id``).
"""

from __future__ import annotations

import hashlib
import inspect
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from recmodels import sequences
from recmodels.errors import InvalidConfig, UnknownModel
from recmodels.sequences import SessionConfig, SessionData
from recmodels.session_eval import (
    WindowResult,
    average_over_windows,
    incremental_evaluation,
    loop_state,
    supports_loop_state,
)
from tasks import storage
from tasks.prepared import PreparedData, load_prepared, prepared_key, write_prepared_frames

ITEMS = "items"
SESSION_MODELS = ("gpt2", "xlnet", "session_knn", "item_knn", "popularity")


def session_params(size: str, config: SessionConfig) -> dict[str, Any]:
    """Everything that determines the prepared session data (with the source of the session functions)."""
    code = hashlib.sha256(inspect.getsource(sequences).encode()).hexdigest()[:12]
    return {"protocol": "sessions", "size": size, **asdict(config), "sessions_code": code}


def write_session_data(home: str, key: str, data: SessionData, params: dict[str, Any]) -> PreparedData:
    """One Parquet file per window plus the vocabulary, atomically under ``prepared/<key>``."""
    items = pd.DataFrame({"item_index": np.arange(data.n_items), "item_id": data.items})
    return write_prepared_frames(home, key, {**data.windows, ITEMS: items}, params)


def read_session_data(prepared: PreparedData) -> SessionData:
    """The windows (in time order: their names sort by date) and the vocabulary of a prepared folder."""
    names = sorted(name for name in prepared.manifest["files"] if name != ITEMS)
    items = prepared.read(ITEMS)["item_id"].to_numpy()
    return SessionData({name: prepared.read(name) for name in names}, items)


def create_session_model(name: str, n_items: int, params: dict[str, Any], seed: int = 0) -> Any:
    """A session-protocol model by name (the transformers import their extra lazily); ``params`` are its
    constructor's (a transformer's :class:`TransformerConfig` fields; its ``seed`` overrides ``seed``)."""
    from dataclasses import fields

    from recmodels import session_baselines

    baselines = {
        "popularity": session_baselines.SessionPopularity,
        "item_knn": session_baselines.ItemKNN,
        "session_knn": session_baselines.SessionKNN,
    }
    if name in baselines:
        factory: Any = baselines[name]
        accepted = set(inspect.signature(factory).parameters) - {"n_items"}
    elif name in ("gpt2", "xlnet"):
        from recmodels.session_transformer import SessionTransformer, TransformerConfig

        def factory(n: int, **given: Any) -> Any:
            return SessionTransformer(n, TransformerConfig(**{"seed": seed, **given, "architecture": name}))

        accepted = {f.name for f in fields(TransformerConfig)} - {"architecture"}
    else:
        raise UnknownModel(f"unknown session model {name!r}; choose from {list(SESSION_MODELS)}")
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise InvalidConfig(
            f"--param {name}.{unknown[0]}: {name} has no parameter(s) {unknown}; it takes {sorted(accepted)}."
        )
    return factory(n_items, **params)


@task(name="sessionise-windows", cache_policy=NO_CACHE)
def prepare_sessions(events_path: str, home: str, size: str, config: SessionConfig) -> PreparedData:
    """Sessionise the parsed release and cut it into windows, once per (release, protocol, code)."""
    logger = get_run_logger()
    params = session_params(size, config)
    key = prepared_key(params)
    if (prepared := load_prepared(home, key)) is not None:
        logger.info("cache hit: session data %s at %s", key, prepared.folder)
        return prepared
    data = sequences.build_sessions(storage.read_parquet(events_path), config)
    prepared = write_session_data(home, key, data, params)
    logger.info("session data %s: %s → %s", key, data.counts(), prepared.folder)
    return prepared


def per_window_plot(per_window: dict[str, pd.DataFrame], metric: str, path: Path) -> Path:
    """NDCG@10 (or ``metric``) per evaluated window, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4.5))
    for model, frame in per_window.items():
        axis.plot(frame["step"], frame[metric], marker="o", markersize=3, label=model)
    axis.set_xlabel("evaluated window (step)")
    axis.set_ylabel(metric)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


@task(name="incremental-train-eval", cache_policy=NO_CACHE)
def incremental_train_eval(
    name: str,
    params: dict[str, Any],
    prepared: PreparedData,
    replay_windows: int,
    seed: int,
    tracking: Any,
) -> pd.DataFrame:
    """Train ``name`` window after window and evaluate on the next, logging into a nested MLflow run.

    In one process the loop checkpoints after every ``tracking.checkpoint_every`` windows (model state and
    rows so far, :func:`recmodels.session_eval.loop_state`) to ``<home>/checkpoints/<run id>/``, after that
    window's metrics are logged; the same command started again after a kill or an interrupt claims the
    same MLflow run (:func:`tasks.checkpoints.claim_run`) and goes on after the checkpoint's window, never
    logging a window's step twice. DDP runs (``num_workers`` > 1) start over.
    """
    import mlflow
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from recmodels import checkpoint as checkpoints
    from tasks.checkpoints import (
        checkpoint_url,
        claim_run,
        ending_of,
        load_checkpoint,
        logged_steps,
        new_run_tags,
        remove_checkpoint,
        run_identity,
    )
    from tasks.redaction import redact
    from tasks.tracking import use_tracking_uri

    logger = get_run_logger()
    data = read_session_data(prepared)
    num_workers = int(params.get("num_workers", 1))
    params = {k: v for k, v in params.items() if k != "num_workers"}
    model = create_session_model(name, data.n_items, params, seed)
    effective = model.params() if callable(getattr(model, "params", None)) else params
    client = MlflowClient(tracking.uri)
    tags = {**tracking.tags, "model": name}
    identity = run_identity(
        prepared=prepared.key,
        model=name,
        params=effective,
        replay_windows=replay_windows,
        seed=seed,
        num_workers=num_workers,
        tracking=tracking.uri,
        experiment=tracking.experiment_id,
    )
    claimed = claim_run(
        client, tracking.experiment_id, identity, {**tags, MLFLOW_PARENT_RUN_ID: tracking.parent_run_id}
    )
    if claimed is not None:
        logger.info(
            "%s: resuming MLflow run %s (its process died or was interrupted)", name, claimed.info.run_id
        )
        start: dict[str, Any] = {"run_id": claimed.info.run_id, "nested": True}
    else:
        start = {
            "experiment_id": tracking.experiment_id,
            "run_name": name,
            "nested": True,
            "parent_run_id": tracking.parent_run_id,
            "tags": {**tags, **new_run_tags(identity)},
        }
    with use_tracking_uri(tracking.uri), mlflow.start_run(**start) as run, ending_of(client, run.info.run_id):
        every = tracking.checkpoint_every
        saving = bool(tracking.home) and num_workers == 1 and every > 0 and supports_loop_state(model)
        checkpoint = checkpoint_url(tracking.home, run.info.run_id) if saving else None
        logged = logged_steps(client, run.info.run_id, ["ndcg_at_10"])["ndcg_at_10"] if claimed else set()
        state = load_checkpoint(checkpoint) if checkpoint and claimed is not None else None
        if claimed is None:
            values = {**effective, "replay_windows": replay_windows, "seed": seed, "num_workers": num_workers}
            mlflow.log_params({k: redact(str(v)) for k, v in {**values, "checkpoint_every": every}.items()})
        if state is not None:
            logger.info("%s: resuming after window %d (checkpoint)", name, len(state["rows"]))
            mlflow.set_tag("benchmark.resumed_from_window", len(state["rows"]))
        total = len(data.windows) - 1
        rows = list(state["rows"]) if state is not None else []

        def log_window(result: WindowResult) -> None:
            if result.step not in logged:  # a kill between the log and the checkpoint: logged once
                mlflow.log_metrics(
                    {**result.metrics, "fit_seconds": result.fit_seconds}
                    | {"sessions_per_second": result.row()["sessions_per_second"]},
                    step=result.step,
                )
            logger.info(
                "%s window %d/%d (%s): trained on %d sessions in %.2f s, ndcg@10 %.4f recall@10 %.4f",
                name,
                result.step,
                total,
                result.eval_window,
                result.train_sessions,
                result.fit_seconds,
                result.metrics["ndcg_at_10"],
                result.metrics["recall_at_10"],
            )
            rows.append(result.row())
            if checkpoint is not None and (result.step % every == 0 or result.step == total):
                storage.write_bytes_atomic(checkpoints.dumps(loop_state(model, rows)), checkpoint)

        with tempfile.TemporaryDirectory() as tmp:
            if num_workers > 1:  # DDP through torchrun: the workers save the model and the CSV
                per_window = _torchrun_session_transformer(
                    name,
                    {"seed": seed, **params, "architecture": name},
                    prepared,
                    replay_windows,
                    num_workers,
                    Path(tmp),
                )
                for _, row in per_window.iterrows():
                    log_window(_window_result(row))
            else:
                per_window = incremental_evaluation(
                    model, data.windows, replay_windows, on_window=log_window, resume_from=state
                )
                model.save(Path(tmp) / "model")
                per_window.to_csv(Path(tmp) / "eval_train_results_dates.csv", index=False)
            mlflow.log_artifact(str(Path(tmp) / "eval_train_results_dates.csv"))
            mlflow.log_artifacts(str(Path(tmp) / "model"), artifact_path="model")
        aod = average_over_windows(per_window)
        mlflow.log_metrics(aod)
        if checkpoint is not None:
            remove_checkpoint(checkpoint)
        logger.info(
            "%s AOD: %s (MLflow run %s)", name, {k: round(v, 4) for k, v in aod.items()}, run.info.run_id
        )
    return per_window.assign(model=name, run_id=run.info.run_id)


def _torchrun_session_transformer(
    name: str,
    config: dict[str, Any],
    prepared: PreparedData,
    replay_windows: int,
    num_workers: int,
    out: Path,
) -> pd.DataFrame:
    """The incremental loop on ``num_workers`` DDP workers (tasks/launcher.py); rank 0's per-window table."""
    import json

    from tasks.launcher import launch

    if name not in ("gpt2", "xlnet"):
        raise UnknownModel(f"num_workers > 1 is for gpt2 and xlnet (DDP); {name} runs in one process")
    if not storage.is_local(prepared.folder):
        raise InvalidConfig(
            f"{name} with num_workers > 1 reads a local prepared folder, not {prepared.folder}"
        )
    args = ["--output", str(out), "--prepared", prepared.folder, "--params", json.dumps(config)]
    args += ["--replay-windows", str(replay_windows)]
    device = "cuda" if str(config.get("device", "auto")).startswith("cuda") else "cpu"
    launch(num_workers, "tasks.session_transformer_worker", args, out, device=device)
    return pd.read_csv(out / "eval_train_results_dates.csv")


def _window_result(row: pd.Series) -> WindowResult:
    from recmodels.session_eval import METRIC_NAMES

    return WindowResult(
        step=int(row["step"]),
        train_window=str(row["train_window"]),
        eval_window=str(row["eval_window"]),
        train_sessions=int(row["train_sessions"]),
        eval_sessions=int(row["eval_sessions"]),
        fit_seconds=float(row["fit_seconds"]),
        metrics={m: float(row[m]) for m in METRIC_NAMES},
    )
