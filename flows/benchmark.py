"""The ``movielens-benchmark`` flow: prepare a MovieLens split once, train and evaluate models on it.

download → parse → filter (k-core) → transpose? → split → prepared/<key>/ → train-evaluate per model,
with one MLflow parent run per flow run, a nested run per model and a Prefect table artifact of results.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Literal

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from prefect import flow, runtime
from prefect.artifacts import create_table_artifact
from prefect.deployments import run_deployment
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from flows.interrupts import cancel_interrupted_flow_run
from flows.run_owners import own_flow_run
from recmodels import metrics, preprocessing
from recmodels.errors import BenchmarkError, InvalidConfig
from recmodels.registry import model_spec, with_run_seed
from tasks import data, storage
from tasks.checkpoints import (
    claim_run,
    end_interrupted,
    fail_dead_runs,
    interrupts,
    new_run_tags,
    run_identity,
)
from tasks.links import markdown_link, mlflow_experiment_url, mlflow_run_url, prefect_flow_run_url
from tasks.prepared import load_prepared, prepared_key
from tasks.redaction import install_log_redaction, redact
from tasks.tracking import experiment_id, git_commit, tracking_client, tracking_uri
from tasks.train import Tracking, train_and_evaluate

install_log_redaction()  # no credential from a URI in this process's Prefect logs
GPU_POOL = "gpu"
GPU_DEPLOYMENT = "movielens-benchmark/gpu"
RESULT_COLUMNS = (
    "model",
    "precision_at_{k}",
    "recall_at_{k}",
    "ndcg_at_{k}",
    "map_at_{k}",
    "hr_at_{k}",
    "mrr",
    "coverage_at_{k}",
    "fit_seconds",
    "predict_seconds",
    "peak_rss_mb",
)


class SplitConfig(BaseModel):
    """How to split the filtered interactions; defaults reproduce SAR's published ML-100K protocol."""

    strategy: Literal["random", "stratified", "temporal", "leave_one_out", "strong_generalization"] = (
        "stratified"
    )
    ratios: list[float] = Field(default=[0.75, 0.25], description="train/test or train/validation/test")
    seed: int = 42
    n_heldout_users: int | None = Field(
        default=None, description="strong_generalization: validation and test users each"
    )

    def params(self) -> dict[str, Any]:
        """The fields that this strategy's splitter accepts."""
        accepted = inspect.signature(getattr(preprocessing, f"split_{self.strategy}")).parameters
        return {k: v for k, v in self.model_dump().items() if k in accepted and v is not None}


def cutoffs_and_table_k(top_k: int | list[int], table_k: int | None = None) -> tuple[list[int], int]:
    """The cutoffs to evaluate (ascending) and the one the results table shows: ``table_k``, else the
    first of ``top_k`` as given. InvalidConfig when a cutoff is not a positive integer or ``table_k`` is
    not one of them."""
    cutoffs = metrics.check_cutoffs(top_k)
    first = top_k if isinstance(top_k, int) else top_k[0]
    shown = first if table_k is None else table_k
    if shown not in cutoffs:
        raise InvalidConfig(
            f"table_k={shown!r} is not one of the cutoffs top_k={cutoffs}: choose one of them or add it to top_k"
        )
    return cutoffs, shown


def result_table(rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Results rows reduced to the headline columns, rounded for display."""
    columns = [c.format(k=k) for c in RESULT_COLUMNS]
    return [{c: round(r[c], 4) if isinstance(r[c], float) else r[c] for c in columns if c in r} for r in rows]


@flow(name="movielens-benchmark", on_crashed=[cancel_interrupted_flow_run])
def movielens_benchmark(
    size: str = "100k",
    models: list[str] = ["popularity", "sar"],  # noqa: B006 - Prefect parameters are copied per run
    min_interactions: int = 5,
    min_item_interactions: int | None = None,
    implicit_threshold: float | None = None,
    split: SplitConfig = SplitConfig(),  # noqa: B008
    transpose: bool = False,
    top_k: list[int] | int = [5, 10, 20, 50, 100],  # noqa: B006 - RecBole's ``topk``
    table_k: int | None = None,
    model_params: dict[str, dict[str, Any]] = {},  # noqa: B006
    home: str | None = None,
    mirror: str | None = None,
    experiment: str = "movielens-benchmark",
    gpu: Literal["auto", "local", "pool"] = "auto",
    mlflow_parent_run_id: str | None = None,
    sar_backend: Literal["single", "dask"] = "single",
    dask_address: str | None = None,
    checkpoint_every: int = 1,
) -> list[dict[str, Any]]:
    """Benchmark ``models`` on MovieLens ``size`` (100k, 1m, 10m, 20m, 25m, 32m, latest-small, latest,
    synthetic-<shape>); returns one row of metrics, times and memory per model.

    Every metric is logged at every cutoff of ``top_k`` (``ndcg_at_5`` … ``ndcg_at_100``), from one list
    of recommendations per user computed at the largest; the results table artifact shows the cutoff
    ``table_k`` (default: the first of ``top_k``). An int ``top_k`` is one cutoff.

    ``min_interactions`` is the k-core threshold for users, and for items unless
    ``min_item_interactions`` is given (VAE-CF's protocol filters users only: 0).
    ``implicit_threshold`` keeps ratings at or above it as 1 (VAE-CF: 4.0). ``split.seed`` also seeds
    every model that takes a seed and is given none in ``model_params`` (logged as its ``seed``).

    GPU models (implicit_mf, vae_cf) go to the ``gpu`` work pool as a run of the deployment
    ``movielens-benchmark/gpu`` when ``gpu="pool"``, or with ``gpu="auto"`` when a worker of that pool
    is online; otherwise (and with ``gpu="local"``) they run in-process (on CUDA when present). The GPU
    run reuses the prepared data through the shared home and logs under ``mlflow_parent_run_id``.

    ``sar_backend="dask"`` runs SAR on Dask (the ``sar-dask`` subflow): a LocalCluster sized to the
    machine, or the existing scheduler at ``dask_address`` (``tcp://host:8786``).

    Models trained in epochs log each epoch as it ends and checkpoint every ``checkpoint_every`` epochs
    to ``<home>/checkpoints/``; the same command run again after a kill (or Ctrl-C) continues the same
    MLflow runs from their last checkpoints (tasks/checkpoints.py)."""
    logger = get_run_logger()
    # No flow run stays RUNNING after its process died (flows/run_owners.py).
    if crashed := own_flow_run(str(runtime.flow_run.id or ""), list(runtime.flow_run.tags)):
        logger.info("marked CRASHED the flow runs of dead processes: %s", ", ".join(crashed))
    data.check_size(size)
    cutoffs, table_k = cutoffs_and_table_k(top_k, table_k)
    for name in models:
        model_spec(name)
    unknown = set(model_params) - set(models)
    if unknown:
        raise BenchmarkError(f"model_params names {sorted(unknown)} which are not in models={models}")
    model_params = {name: with_run_seed(name, model_params.get(name, {}), split.seed) for name in models}
    root = storage.resolve_home(home)

    data_params = {
        "size": size,
        "min_interactions": min_interactions,
        "min_item_interactions": min_interactions if min_item_interactions is None else min_item_interactions,
        "implicit_threshold": implicit_threshold,
        "split": split.strategy,
        "split_params": split.params(),
        "transpose": transpose,
    }
    key = prepared_key(data_params)
    with storage.lock(root, f"prepared-{key}"):  # one run builds it; the others wait and reuse it
        prepared = load_prepared(root, key)
        if prepared is not None:
            logger.info(
                "cache hit: prepared data %s found at %s; skipping download, parse, filter, split, transpose",
                key,
                prepared.folder,
            )
        else:
            raw = data.download(size, root, mirror)
            parsed = data.parse(size, raw, root)
            frame = data.filter_interactions(
                parsed, min_interactions, data_params["min_item_interactions"], implicit_threshold
            )
            if transpose:
                frame = data.transpose(frame)
            result = data.split(frame, split.strategy, split.params())
            prepared = data.write(root, key, result, data_params)

    uri = tracking_uri(root)
    if redact(uri) != uri:  # MLflow prints run links with the tracking URI's password on stdout
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    client = tracking_client(uri)
    flow_run_id = str(runtime.flow_run.id or "")
    tags = {
        "dataset": "synthetic" if size.startswith("synthetic") else "movielens",
        "size": size,
        "split": split.strategy,
        "prefect.flow_run_id": flow_run_id,
        "git_commit": git_commit(),
    }
    if prefect_url := prefect_flow_run_url(flow_run_id):  # the Prefect server's UI, when there is one
        tags["prefect.flow_run_url"] = prefect_url
    exp_id = experiment_id(uri, root, experiment)
    own_parent = mlflow_parent_run_id is None
    finished: list[str] = []  # models a resumed parent run has already finished
    if own_parent:
        run_name = f"{size}-{runtime.flow_run.name or 'local'}"
        description = _run_description(flow_run_id, prefect_url)
        parent_id, finished = _parent_run(
            client, exp_id, tags, description, run_name, key, models, model_params, cutoffs
        )
        params = {
            **data_params,
            "models": ",".join(models),
            "top_k": ",".join(map(str, cutoffs)),
            "table_k": table_k,
            "seed": split.seed,
            "prepared_key": key,
        }
        for name, value in params.items():
            client.log_param(parent_id, name, redact(str(value)))
        client.log_dict(parent_id, prepared.manifest, "prepared/manifest.json")
    else:
        parent_id = mlflow_parent_run_id
    logger.info("MLflow parent run %s in experiment %s at %s", parent_id, experiment, uri)

    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        remote = [m for m in models if model_spec(m).gpu]
        if remote and not _send_to_gpu_pool(gpu):
            remote = []
        if remote:
            logger.info("sending %s to the %r work pool as %s", remote, GPU_POOL, GPU_DEPLOYMENT)
            child = run_deployment(
                GPU_DEPLOYMENT,
                parameters={
                    "size": size,
                    "models": remote,
                    "min_interactions": min_interactions,
                    "min_item_interactions": min_item_interactions,
                    "implicit_threshold": implicit_threshold,
                    "split": split.model_dump(),
                    "transpose": transpose,
                    "top_k": cutoffs,
                    "table_k": table_k,
                    "model_params": {m: p for m, p in model_params.items() if m in remote},
                    "home": home,
                    "mirror": mirror,
                    "experiment": experiment,
                    "gpu": "local",
                    "mlflow_parent_run_id": parent_id,
                    "checkpoint_every": checkpoint_every,
                },
                timeout=None,
                as_subflow=True,
            )
            if child.state is not None and child.state.is_completed():
                rows += _rows_from_mlflow(client, exp_id, parent_id, remote)
            else:
                failures.append(f"{remote}: GPU flow run {child.name} ended {child.state_name}")
        tracking = Tracking(uri, exp_id, parent_id, tags, root, checkpoint_every)
        output_dir = storage.join(root, "runs", flow_run_id or parent_id)
        if finished:
            logger.info("resumed parent run %s has finished %s already", parent_id, finished)
            rows += _rows_from_mlflow(client, exp_id, parent_id, [m for m in finished if m not in remote])
        for name in (m for m in models if m not in remote and m not in finished):
            state = train_and_evaluate(
                name,
                model_params.get(name, {}),
                prepared,
                cutoffs,
                tracking,
                output_dir,
                sar_backend,
                dask_address,
                return_state=True,
            )
            if state.is_completed():
                rows.append(state.result())
            else:
                failures.append(f"{name}: {state.message}")

        table = result_table(rows, table_k)
        if table:
            create_table_artifact(
                table,
                key="movielens-benchmark-results",
                description=f"MovieLens {size}, {split.strategy} split, top-{table_k}; MLflow parent run "
                f"{markdown_link(parent_id, mlflow_run_url(uri, exp_id, parent_id))} in experiment "
                f"{markdown_link(experiment, mlflow_experiment_url(uri, exp_id))}",
            )
            if own_parent:
                client.log_table(parent_id, {c: [r.get(c) for r in table] for c in table[0]}, "results.json")
        if failures:
            raise BenchmarkError("model(s) failed: " + "; ".join(failures))
    except interrupts():  # Ctrl-C or SIGTERM (flows/interrupts.py): the next start resumes it
        if own_parent:
            end_interrupted(client, parent_id, "KILLED", "interrupted")
        raise
    except BaseException:
        if own_parent:
            client.set_terminated(parent_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    if own_parent:
        client.set_terminated(parent_id)
    return rows


def _run_description(flow_run_id: str, prefect_url: str | None) -> dict[str, str]:
    """The MLflow run's description (the ``mlflow.note.content`` tag, markdown), linking its Prefect flow run."""
    if not flow_run_id:
        return {}
    name = runtime.flow_run.name or flow_run_id
    return {"mlflow.note.content": f"Prefect flow run {markdown_link(name, prefect_url)} ({flow_run_id})"}


def _parent_run(
    client: MlflowClient,
    exp_id: str,
    tags: dict[str, str],
    description: dict[str, str],
    run_name: str,
    key: str,
    models: list[str],
    model_params: dict[str, dict[str, Any]],
    top_k: Any,
) -> tuple[str, list[str]]:
    """The parent run: the same command's run that died or was interrupted, resumed, else a new one;
    with the models it has finished. RUNNING runs of dead processes are marked FAILED first."""
    fail_dead_runs(client, exp_id)
    identity = run_identity(prepared=key, models=models, params=model_params, top_k=top_k)
    claimed = claim_run(client, exp_id, identity, tags)
    if claimed is None:
        run = client.create_run(
            exp_id,
            run_name=run_name,
            tags={**tags, "model": ",".join(models), **description, **new_run_tags(identity)},
        )
        return run.info.run_id, []
    children = client.search_runs(
        [exp_id], filter_string=f"tags.mlflow.parentRunId = '{claimed.info.run_id}'"
    )
    done = {c.data.tags.get("model") for c in children if c.info.status == "FINISHED"}
    return claimed.info.run_id, [m for m in models if m in done]


def gpu_pool_online(pool: str = GPU_POOL) -> bool:
    """Whether the Prefect API knows work pool ``pool`` with at least one online worker."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            return False
        online = WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"]))
        return bool(client.read_workers_for_work_pool(pool, worker_filter=online))


def _send_to_gpu_pool(gpu: str) -> bool:
    """``local``: never; ``pool``: always; ``auto``: when a GPU worker is online (and we are not one)."""
    if gpu == "local" or runtime.deployment.name == "gpu":
        return False
    return gpu == "pool" or gpu_pool_online()


def _rows_from_mlflow(
    client: MlflowClient, exp_id: str, parent_id: str, models: list[str]
) -> list[dict[str, Any]]:
    """Result rows of the newest child run of ``parent_id`` per model (runs logged by a GPU worker)."""
    runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        order_by=["attributes.start_time DESC"],
    )
    newest = {}
    for run in runs:
        newest.setdefault(run.data.tags.get("model"), run)
    return [
        {"model": m, "run_id": newest[m].info.run_id, "gpu_model": True, **newest[m].data.metrics}
        for m in models
        if m in newest
    ]
