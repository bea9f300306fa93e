"""The train-and-evaluate task: fit one model on prepared data, recommend, evaluate, log to MLflow."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from recmodels import metrics
from recmodels.checkpoint import supports_checkpoints
from recmodels.errors import BenchmarkError
from recmodels.registry import create_model, model_spec
from tasks import storage
from tasks.checkpoints import (
    EpochRecorder,
    WorkerDied,
    checkpoint_url,
    claim_run,
    ending_of,
    fit_options,
    load_checkpoint,
    logged_steps,
    new_run_tags,
    remove_checkpoint,
    run_identity,
)
from tasks.prepared import PreparedData
from tasks.profiling import Measurement, measure
from tasks.redaction import redact
from tasks.tracking import fitted_params, use_tracking_uri


@dataclass(frozen=True)
class Tracking:
    """Where and under which parent run a task logs (passed to tasks that may run in other processes)."""

    uri: str
    experiment_id: str
    parent_run_id: str
    tags: dict[str, str] = field(default_factory=dict)
    home: str | None = None  # checkpoints go to <home>/checkpoints/<run id>/ (none without a home)
    checkpoint_every: int = 1  # epochs between checkpoints of models trained in epochs


def model_parameters(model: Any, given: dict[str, Any]) -> dict[str, Any]:
    """Every constructor parameter of ``model`` with its effective value (defaults included)."""
    if callable(getattr(model, "params", None)):  # models with a config object report it themselves
        return {**model.params(), **given}
    signature = inspect.signature(type(model).__init__)
    values = {
        name: p.default
        for name, p in signature.parameters.items()
        if name != "self" and p.default is not inspect.Parameter.empty
    }
    return {**values, **given}


def _fit_and_recommend(
    model: Any,
    prepared: PreparedData,
    train: pd.DataFrame,
    test: pd.DataFrame,
    k: int,
    options: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, Measurement, Measurement]:
    """Follow the split's protocol: fold-in users (strong generalisation) or users seen in train;
    ``options`` are ``fit``'s keywords (the epoch callback and the state to resume from)."""
    if prepared.has("test_fold_in"):
        history = prepared.read("test_fold_in")
        if hasattr(model, "recommend_fold_in"):
            with measure() as fit:
                _fit(model, train, prepared, options)
            with measure() as predict:
                recs = model.recommend_fold_in(history, k=k, exclude_seen=True)
            return recs, fit, predict
        train = pd.concat([train, history], ignore_index=True)
    if leave_one_out(prepared) and not _stops_on_validation_items(model):
        train = pd.concat([train, prepared.read("validation")], ignore_index=True)
    with measure() as fit:
        _fit(model, train, prepared, options)
    with measure() as predict:
        recs = model.recommend(test["user_id"].unique(), k=k, exclude_seen=True)
    return recs, fit, predict


def leave_one_out(prepared: PreparedData) -> bool:
    """Whether ``prepared`` is a leave-one-out split. Its protocol (issue 16, RecBole's full sort): the
    test item is ranked after the user's whole history, train items and validation item, which are
    excluded from the ranking; models that do not select epochs on the validation item (popularity, SAR,
    ...) are fitted on train + validation, as bert4rec/sasrec read it as input at test time. The test
    item is never excluded: bert4rec/sasrec rank it by score (``evaluate_leave_one_out``), and MovieLens
    holds one rating per user and item, so it is never in the history."""
    return prepared.manifest.get("params", {}).get("split") == "leave_one_out"


def _sequential_torchrun(
    name: str,
    params: dict[str, Any],
    prepared: PreparedData,
    k: int,
    uri: str,
    run_id: str,
    checkpoint: str | None = None,
) -> tuple[pd.DataFrame, Measurement, Measurement, dict[str, float]]:
    """BERT4Rec/SASRec in ``dmp``/``ddp`` mode: ``nproc`` torchrun ranks (tasks/launcher.py) of
    tasks/sequential_worker.py; rank 0 logs parameters, per-epoch metrics and the model into ``run_id``.
    Each rank checkpoints every epoch beside ``checkpoint`` (a local home; a rerun of a killed run resumes
    there), else in a temporary folder."""
    from tasks.launcher import launch
    from tasks.sequential_worker import worker_args

    nproc = int(params.get("nproc", 1))
    device = "cuda" if str(params.get("device", "auto")) != "cpu" and _cuda() else "cpu"
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as out:
        local = checkpoint is not None and "://" not in checkpoint
        ranks = Path(checkpoint).parent / "ranks" if local else Path(out) / "checkpoints"
        args = worker_args(name, prepared.folder, out, params, k, uri, run_id, ranks)
        with measure() as fit:
            results = launch(nproc, "tasks.sequential_worker", args, out, device=device)
        fit.seconds = results["fit_seconds"]
        loo = {key: v for key, v in results.items() if isinstance(v, float) and key != "fit_seconds"}
        return pd.read_parquet(Path(out) / "recommendations.parquet"), fit, Measurement(), loo


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sar_on_dask(
    params: dict[str, Any], prepared: PreparedData, test: pd.DataFrame, k: int, dask_address: str | None
) -> tuple[pd.DataFrame, Measurement, Measurement, dict[str, float], pd.DataFrame]:
    """SAR fitted and scored by the ``sar-dask`` subflow (LocalCluster, or the scheduler at ``dask_address``);
    also returns the train table the subflow read (it runs in this process), so it is read once."""
    from tasks.sar_dask import run_sar_dask

    fold_in = prepared.file("test_fold_in") if prepared.has("test_fold_in") else None
    users = None if fold_in else [int(u) for u in test["user_id"].unique()]
    with measure() as driver:
        result = run_sar_dask(
            prepared.file("train"),
            users,
            k,
            True,
            params,
            fold_in,
            dask_address=dask_address,
            return_train=True,
        )
    workers = {f"worker_{i}_peak_rss_mb": mb for i, mb in enumerate(result.worker_peak_rss_mb.values())}
    fit = Measurement(result.fit_seconds, driver.peak_rss_mb)
    predict = Measurement(result.predict_seconds, driver.peak_rss_mb)
    assert result.train is not None
    return result.recommendations, fit, predict, workers, result.train


def _vae_cf_horovod(
    params: dict[str, Any],
    prepared: PreparedData,
    k: int,
    num_workers: int,
    uri: str,
    run_id: str,
    checkpoint: str | None = None,
    checkpoint_every: int = 1,
) -> tuple[pd.DataFrame, Measurement, Measurement]:
    """VAE-CF trained by ``horovodrun -np num_workers --gloo`` (tasks/vae_cf_worker.py); rank 0 logs
    the parameters, per-epoch metrics and the model into ``run_id`` and hands back the recommendations."""
    from tasks.vae_cf_worker import command

    config = {key: value for key, value in params.items() if key != "num_workers"}
    with tempfile.TemporaryDirectory(prefix="vae_cf-") as out:
        worker_args = ["--prepared", prepared.folder, "--output", out, "--params", json.dumps(config)]
        worker_args += ["--k", str(k), "--tracking-uri", uri, "--run-id", run_id]
        if checkpoint is not None:
            worker_args += ["--checkpoint", checkpoint, "--checkpoint-every", str(checkpoint_every)]
        with measure() as fit:
            done = subprocess.run(command(num_workers, worker_args), capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            message = f"horovodrun -np {num_workers} failed (exit {done.returncode}):\n{tail}"
            if _killed(done.returncode, done.stdout + done.stderr):
                raise WorkerDied(message)  # resumable: the task's retry continues from the checkpoint
            raise BenchmarkError(message)
        results = json.loads((Path(out) / "results.json").read_text())
        fit.seconds = results["fit_seconds"]
        return pd.read_parquet(Path(out) / "recommendations.parquet"), fit, Measurement()


def _stops_on_validation_items(model: Any) -> bool:
    """Whether ``fit`` takes the validation items themselves for early stopping (BERT4Rec, SASRec)."""
    accepts = inspect.signature(model.fit).parameters
    return "validation" in accepts and "validation_fold_in" not in accepts


# horovodrun's reports of a worker ended by SIGKILL or SIGTERM ("Process 1 exit with status code 137.",
# "Exit code: 137"), and the shell's.
_KILLED = re.compile(
    r"(status code|Exit code:) (-9|-15|137|143)\b|\bsignal (9|15)\b|SIGKILL|SIGTERM|\bKilled\b"
)


def _killed(returncode: int, output: str) -> bool:
    """Whether a training subprocess (or one of horovodrun's workers) ended by a signal, not an error."""
    return returncode < 0 or returncode in (137, 143) or _KILLED.search(output) is not None


def _fit(
    model: Any, train: pd.DataFrame, prepared: PreparedData, options: dict[str, Any] | None = None
) -> None:
    """``fit``, with the validation users too where the model selects its best epoch on them (VAE-CF)."""
    accepts = inspect.signature(model.fit).parameters
    if "validation_fold_in" in accepts and prepared.has("validation_fold_in") and prepared.has("validation"):
        model.fit(train, prepared.read("validation_fold_in"), prepared.read("validation"), **(options or {}))
    elif _stops_on_validation_items(model) and prepared.has("validation"):
        # early stopping (BERT4Rec, SASRec)
        model.fit(train, validation=prepared.read("validation"), **(options or {}))
    else:
        model.fit(train, **(options or {}))


def _log_model(model: Any) -> None:
    """The trained model: ``mlflow.pytorch`` for torch modules, the model's own ``save`` otherwise."""
    module = getattr(model, "module_", None)
    if module is not None:
        from mlflow import pytorch as mlflow_pytorch

        # pickle: MLflow 3's default "pt2" traces forward() and needs an input example.
        mlflow_pytorch.log_model(
            module,
            name="model",
            serialization_format="pickle",
            pip_requirements=[f"torch=={_torch_version()}"],
        )
    elif callable(getattr(model, "save", None)):
        with tempfile.TemporaryDirectory() as tmp:
            model.save(Path(tmp) / "model")
            mlflow.log_artifacts(str(Path(tmp) / "model"), artifact_path="model")


def _model_selection(model: Any) -> dict[str, float]:
    """``best_epoch`` (the epoch whose weights the model keeps) and ``epochs_trained`` (fewer than
    configured where it stopped early), for models that select an epoch on validation users (VAE-CF)."""
    picked = {"best_epoch": getattr(model, "best_epoch_", None)}
    picked["epochs_trained"] = getattr(model, "epochs_trained_", None)
    return {key: float(value) for key, value in picked.items() if value is not None}


def _log_training_input(train: pd.DataFrame, prepared: PreparedData, size: str) -> None:
    """The train table as the run's MLflow dataset input (digest, schema, row count, source file)."""
    with warnings.catch_warnings():  # MLflow's notes on ambiguous local sources and integer schemas
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            train, source=redact(prepared.file("train")), name=f"{size}-{prepared.key}"
        )
        mlflow.log_input(dataset, context="training")


def _log_bytes(data: bytes, artifact_file: str) -> None:
    """Log ``data`` as the artifact ``artifact_file`` (through a local file: the home may be a URL)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_bytes(data)
        mlflow.log_artifact(str(path), artifact_path=str(Path(artifact_file).parent))


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def _worker_died(task: Any, task_run: Any, state: Any) -> bool:
    """Retry the task only when its training worker was killed: the retry resumes the same MLflow run
    from its checkpoint. Other failures would fail the same way again."""
    try:
        state.result()
    except WorkerDied:
        return True
    except BaseException:
        return False
    return False


@task(
    name="train-evaluate",
    task_run_name="train-evaluate-{name}",
    cache_policy=NO_CACHE,
    retries=1,
    retry_condition_fn=_worker_died,
)
def train_and_evaluate(
    name: str,
    params: dict[str, Any],
    prepared: PreparedData,
    top_k: list[int] | int,
    tracking: Tracking,
    output_dir: str,
    sar_backend: str = "single",
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Fit ``name`` on the prepared train set, recommend once at the largest cutoff of ``top_k`` for the
    test users, log every metric at every cutoff (``ndcg_at_5`` … ``ndcg_at_100``) and everything else.

    With ``sar_backend="dask"``, SAR runs as the ``sar-dask`` subflow on a Dask cluster (a new
    LocalCluster, or the scheduler at ``dask_address``); its results equal the single-node SAR's.

    Returns one results row: model, MLflow run id, metrics, times and memory.
    """
    logger = get_run_logger()
    spec = model_spec(name)
    tags = {**tracking.tags, "model": name}
    horovod_workers = int(params.get("num_workers", 1)) if name == "vae_cf" else 1
    torchrun = name in ("bert4rec", "sasrec") and params.get("mode", "local") != "local"
    model: Any = None
    if horovod_workers == 1 and not torchrun:  # the workers log the effective parameters themselves
        model = create_model(name, **{k: v for k, v in params.items() if k != "num_workers"})
    client = MlflowClient(tracking.uri)
    identity = run_identity(
        prepared=prepared.key,
        model=name,
        params=model_parameters(model, params) if model is not None else params,
        top_k=top_k,
        sar_backend=sar_backend if name == "sar" else None,
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
        start = {"run_id": claimed.info.run_id, "nested": True}
    else:
        start = {
            "experiment_id": tracking.experiment_id,
            "run_name": name,
            "parent_run_id": tracking.parent_run_id,
            "nested": True,
            "tags": {**tags, **new_run_tags(identity)},
        }
    with use_tracking_uri(tracking.uri), mlflow.start_run(**start) as run, ending_of(client, run.info.run_id):
        run_id = run.info.run_id
        checkpoint = checkpoint_url(tracking.home, run_id) if tracking.home else None
        skip = logged_steps(client, run_id) if claimed is not None else {}
        if claimed is None and model is not None:
            logged = model_parameters(model, params)
            if supports_checkpoints(model):  # models trained in epochs
                logged["checkpoint_every"] = tracking.checkpoint_every
            mlflow.log_params({k: redact(str(v)) for k, v in logged.items()})
        strong_generalization = prepared.has("test_fold_in")
        # VAE-CF's protocol (Liang et al. 2018) reports Recall@20, Recall@50 (its recall) and NDCG@100.
        paper = (20, 50, 100) if strong_generalization else ()
        cutoffs = metrics.check_cutoffs([*metrics.check_cutoffs(top_k), *paper])  # an int top_k too
        depth = cutoffs[-1]
        test = prepared.read("test")
        worker_memory: dict[str, float] = {}
        ranking: dict[str, float] = {}  # full-ranking and sampled leave-one-out metrics (issue 16)
        if name == "sar" and sar_backend == "dask":  # the subflow reads train (once) in this process
            mlflow.set_tag("sar_backend", "dask")
            recs, fit, predict, worker_memory, train_frame = _sar_on_dask(
                params, prepared, test, depth, dask_address
            )
        else:
            train_frame = prepared.read("train")
            if torchrun:
                create_model(name, **params)  # bad parameters fail here, before any process starts
                recs, fit, predict, ranking = _sequential_torchrun(
                    name, params, prepared, depth, tracking.uri, run_id, checkpoint
                )
            elif model is None:
                recs, fit, predict = _vae_cf_horovod(
                    params,
                    prepared,
                    depth,
                    horovod_workers,
                    tracking.uri,
                    run_id,
                    checkpoint,
                    tracking.checkpoint_every,
                )
            else:
                live = supports_checkpoints(model)
                recorder = EpochRecorder(
                    client, run_id, checkpoint, tracking.checkpoint_every, skip_steps=skip
                )
                state = load_checkpoint(checkpoint) if checkpoint and claimed is not None and live else None
                if state is not None:
                    logger.info("%s: resuming from the checkpoint of epoch %s", name, state["epoch"])
                    mlflow.set_tag("benchmark.resumed_from_epoch", state["epoch"])
                try:
                    options = fit_options(model, recorder, state)
                    recs, fit, predict = _fit_and_recommend(
                        model, prepared, train_frame, test, depth, options
                    )
                finally:
                    recorder.close()
                if callable(getattr(model, "adapted_params", None)):  # VAE-CF's small data rule
                    mlflow.log_params(fitted_params(model.adapted_params()))
                if not live:  # models without the checkpoint contract log their curve once fitted
                    for epoch in getattr(model, "history_", []):
                        step = int(epoch["epoch"])
                        mlflow.log_metrics({k: v for k, v in epoch.items() if k != "epoch"}, step=step)
        if callable(getattr(model, "evaluate_leave_one_out", None)):
            ranking = model.evaluate_leave_one_out(test)
        _log_training_input(train_frame, prepared, tags.get("size", "data"))
        n_items = train_frame["item_id"].nunique()
        recall = "vaecf" if strong_generalization else "standard"
        values = metrics.evaluate(recs, test, k=cutoffs, n_items=n_items, recall=recall) | ranking
        n_users = test["user_id"].nunique()
        values |= {
            "fit_seconds": fit.seconds,
            "peak_rss_mb": max(fit.peak_rss_mb, predict.peak_rss_mb),
            "interactions_per_second": len(train_frame) / max(fit.seconds, 1e-9),
            **worker_memory,
        }
        if predict.seconds > 0:  # the Horovod path predicts inside its worker and reports no time
            values |= {"predict_seconds": predict.seconds, "users_per_second": n_users / predict.seconds}
        values |= _model_selection(model)
        mlflow.log_metrics({k: v for k, v in values.items() if 0 not in skip.get(k, ())})
        recs_parquet = recs.to_parquet(index=False)
        storage.write_bytes_atomic(recs_parquet, storage.join(output_dir, name, "recommendations.parquet"))
        _log_bytes(recs_parquet, "recommendations/recommendations.parquet")
        _log_learning_curve(getattr(model, "history_", []), name)
        _log_model(model)
        if checkpoint is not None:
            remove_checkpoint(checkpoint)
        logger.info("%s: %s", name, {k: round(v, 4) for k, v in values.items()})
        return {"model": name, "run_id": run_id, "gpu_model": spec.gpu, **values}


def _log_learning_curve(history: list[dict[str, float]], name: str) -> None:
    if not history or "loss" not in history[0]:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([h["epoch"] for h in history], [h["loss"] for h in history], marker="o")
    ax.set(xlabel="epoch", ylabel="training loss", title=f"{name} learning curve")
    fig.tight_layout()
    mlflow.log_figure(fig, "learning_curve.png")
    plt.close(fig)
