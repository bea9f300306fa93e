"""The ``movielens-benchmark-sweep`` flow: the benchmark across dataset sizes, compared in MLflow (issue 5).

One child flow run of ``movielens-benchmark`` per size, one after the other so that their times compare:
a subflow in this process, or, given ``deployment``, a run of that deployment on its work pool
(``run_deployment(..., as_subflow=True)``); either way the Prefect UI shows each under the sweep.

Afterwards the sweep reads the children's results from MLflow, wherever they trained: each child's
parent run carries its ``prefect.flow_run_id`` tag, and its model runs (GPU-pool ones included) are the
runs whose ``mlflow.parentRunId`` is that parent. It plots ``metric`` and ``fit_seconds`` against the
number of training interactions, one line per model, into ``sweep.png`` of a sweep MLflow run, and
publishes a markdown artifact with one row per size × model linking each model run in the MLflow UI.
"""

from __future__ import annotations

import json
from typing import Any

from matplotlib.figure import Figure
from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient
from prefect import flow, runtime
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
from prefect.states import State

from flows.benchmark import RESULT_COLUMNS, SplitConfig, movielens_benchmark
from recmodels.errors import (
    BenchmarkError,
    InvalidConfig,
    TrackingMismatch,
    UnknownDeployment,
)
from recmodels.metrics import check_cutoffs
from recmodels.registry import model_spec
from tasks import data, storage
from tasks.links import mlflow_run_url
from tasks.redaction import install_log_redaction
from tasks.tracking import experiment_id, git_commit, tracking_client, tracking_uri

install_log_redaction()
ARTIFACT_KEY = "movielens-benchmark-sweep"
FIGURE = "sweep.png"


def check_metric(metric: str, top_k: int | list[int]) -> None:
    """Raise InvalidConfig unless ``metric`` is a headline result of every model at one of the cutoffs
    ``top_k`` (``ndcg_at_20`` plots NDCG at cutoff 20)."""
    allowed = list(dict.fromkeys(c.format(k=k) for k in check_cutoffs(top_k) for c in RESULT_COLUMNS))
    allowed.remove("model")
    if metric not in allowed:
        raise InvalidConfig(
            f"metric {metric!r} is not logged by every model at the cutoffs top_k={top_k}; choose from {allowed}"
        )


def check_deployment(name: str) -> None:
    """Raise UnknownDeployment unless the Prefect API knows deployment ``<flow>/<deployment>``."""
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except (ObjectNotFound, ValueError):
            raise UnknownDeployment(
                f"the Prefect API has no deployment {name!r}; list them with `prefect deployment ls`, "
                "or register them with `prefect deploy --all --prefect-file deployments/prefect.yaml`"
            ) from None


def run_child(size: str, parameters: dict[str, Any], deployment: str | None) -> tuple[str, State]:
    """Run the benchmark on ``size`` as a subflow or a deployment run; (flow run id, final state)."""
    if deployment is None:
        state = movielens_benchmark(size=size, **parameters, return_state=True)
        return str(state.state_details.flow_run_id), state
    flow_run = run_deployment(deployment, parameters={"size": size, **parameters}, as_subflow=True)
    return str(flow_run.id), flow_run.state


def run_url(uri: str, experiment: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI (on the training workflow) when the tracking URI is a server."""
    return mlflow_run_url(uri, experiment, run_id)


def _train_interactions(run: Run) -> int:
    """Rows of the training set that the run logged with ``mlflow.log_input``."""
    return int(json.loads(run.inputs.dataset_inputs[0].dataset.profile)["num_rows"])


def sweep_rows(
    client: MlflowClient,
    uri: str,
    experiment: str,
    children: dict[str, str],
    models: list[str],
    metric: str,
) -> list[dict[str, Any]]:
    """One row per size × model from the model runs under each child flow run's MLflow parent run."""
    rows = []
    for size, flow_run_id in children.items():
        parents = client.search_runs(
            [experiment],
            filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}' AND tags.mlflow.parentRunId IS NULL",
        )
        if len(parents) != 1:
            raise TrackingMismatch(
                f"{len(parents)} MLflow parent runs tagged prefect.flow_run_id={flow_run_id} ({size}) in "
                f"experiment {experiment} at {uri}, expected 1; give the sweep the MLFLOW_TRACKING_URI of "
                "the workers that ran the benchmark"
            )
        runs = client.search_runs(
            [experiment], filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'"
        )
        for run in sorted(runs, key=lambda r: models.index(r.data.tags["model"])):
            rows.append(
                {
                    "size": size,
                    "model": run.data.tags["model"],
                    "train_interactions": _train_interactions(run),
                    metric: run.data.metrics[metric],
                    "fit_seconds": run.data.metrics["fit_seconds"],
                    "run_id": run.info.run_id,
                    "run_url": run_url(uri, experiment, run.info.run_id),
                }
            )
    return rows


def sweep_figure(rows: list[dict[str, Any]], metric: str) -> Figure:
    """``metric`` and fit time against training interactions (log scale), one line per model."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    axes = figure.subplots(1, 2)
    for model in dict.fromkeys(r["model"] for r in rows):
        points = sorted((r for r in rows if r["model"] == model), key=lambda r: r["train_interactions"])
        for ax, column in zip(axes, (metric, "fit_seconds"), strict=True):
            ax.plot([p["train_interactions"] for p in points], [p[column] for p in points], "o-", label=model)
    ticks = {r["train_interactions"]: f"{r['size']}\n{r['train_interactions']:,}" for r in rows}
    for ax, column in zip(axes, (metric, "fit_seconds"), strict=True):
        ax.set(xscale="log", xlabel="training interactions", ylabel=column, title=f"{column} against size")
        ax.set_xticks(list(ticks), list(ticks.values()))
        ax.minorticks_off()
    axes[1].set_yscale("log")
    axes[0].legend()
    return figure


def _cell(value: Any) -> str:
    return (
        f"{value:.4f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)
    )


def sweep_markdown(rows: list[dict[str, Any]], metric: str, sweep_run: str) -> str:
    """A markdown table of ``rows``, each run linked to the MLflow UI when there is one."""
    columns = ["size", "model", "train_interactions", metric, "fit_seconds"]
    lines = [
        f"### MovieLens sweep: {metric} and fit time against size",
        "",
        "| " + " | ".join([*columns, "MLflow run"]) + " |",
        "|" + "---|" * 2 + "---:|" * 3 + "---|",
    ]
    for row in rows:
        run = f"[{row['run_id']}]({row['run_url']})" if row["run_url"] else row["run_id"]
        lines.append("| " + " | ".join([*(_cell(row[c]) for c in columns), run]) + " |")
    lines += ["", f"Figure `{FIGURE}` in MLflow run {sweep_run}."]
    return "\n".join(lines)


@flow(name="movielens-benchmark-sweep")
def movielens_benchmark_sweep(
    sizes: list[str] = ["100k", "latest-small"],  # noqa: B006 - Prefect parameters are copied per run
    models: list[str] = ["popularity", "sar"],  # noqa: B006
    deployment: str | None = None,
    metric: str = "ndcg_at_10",
    split: SplitConfig = SplitConfig(),  # noqa: B008
    top_k: list[int] | int = [5, 10, 20, 50, 100],  # noqa: B006
    model_params: dict[str, dict[str, Any]] = {},  # noqa: B006
    home: str | None = None,
    mirror: str | None = None,
    experiment: str = "movielens-benchmark",
) -> list[dict[str, Any]]:
    """Run ``movielens-benchmark`` on each of ``sizes`` with ``models`` and compare them in MLflow.

    ``deployment`` (e.g. ``movielens-benchmark/cpu``) runs each size on that deployment's work pool;
    None runs them in this process. ``metric`` is plotted at the cutoff in its name (``ndcg_at_20``), one
    of ``top_k``, the cutoffs every child run logs. Returns one row per size × model: size, model,
    train_interactions, ``metric``, fit_seconds, run_id and run_url (None without an MLflow server)."""
    logger = get_run_logger()
    for name, values in (("sizes", sizes), ("models", models)):
        if not values or len(set(values)) != len(values):
            raise InvalidConfig(f"{name}={values}: list at least one, and each one once")
    for size in sizes:
        data.check_size(size)
    for name in models:
        model_spec(name)
    check_metric(metric, top_k)
    if deployment is not None:
        check_deployment(deployment)

    parameters = {
        "models": models,
        "split": split.model_dump(),
        "top_k": top_k,
        "model_params": model_params,
        "home": home,
        "mirror": mirror,
        "experiment": experiment,
    }
    children: dict[str, str] = {}
    failures: list[str] = []
    for size in sizes:
        flow_run_id, state = run_child(size, parameters, deployment)
        logger.info("%s: flow run %s %s", size, flow_run_id, state.name)
        if state.is_completed():
            children[size] = flow_run_id
        else:
            failures.append(f"{size}: flow run {flow_run_id} {state.name}: {state.message}")
    if not children:
        raise BenchmarkError("every size failed: " + "; ".join(failures))

    root = storage.resolve_home(home)
    uri = tracking_uri(root)
    client = tracking_client(uri)
    exp_id = experiment_id(uri, root, experiment)
    rows = sweep_rows(client, uri, exp_id, children, models, metric)
    kinds = {"synthetic" if s.startswith("synthetic") else "movielens" for s in sizes}
    tags = {
        "dataset": ",".join(sorted(kinds)),
        "size": ",".join(sizes),
        "split": split.strategy,
        "model": ",".join(models),
        "prefect.flow_run_id": str(runtime.flow_run.id or ""),
        "git_commit": git_commit(),
    }
    sweep_id = client.create_run(
        exp_id, run_name=f"sweep-{runtime.flow_run.name or 'local'}", tags=tags
    ).info.run_id
    for name, value in {
        "sizes": tags["size"],
        "models": tags["model"],
        "metric": metric,
        "top_k": ",".join(map(str, check_cutoffs(top_k))),
    }.items():
        client.log_param(sweep_id, name, value)
    client.log_figure(sweep_id, sweep_figure(rows, metric), FIGURE)
    client.log_table(sweep_id, {c: [r[c] for r in rows] for c in rows[0]}, "sweep.json")
    sweep_url = run_url(uri, exp_id, sweep_id)
    create_markdown_artifact(
        sweep_markdown(rows, metric, f"[{sweep_id}]({sweep_url})" if sweep_url else sweep_id),
        key=ARTIFACT_KEY,
        description=f"MovieLens {', '.join(sizes)}: {metric} and fit time per model",
    )
    logger.info("MLflow sweep run %s at %s", sweep_id, uri)
    if failures:
        client.set_terminated(sweep_id, RunStatus.to_string(RunStatus.FAILED))
        raise BenchmarkError("size(s) failed: " + "; ".join(failures))
    client.set_terminated(sweep_id)
    return rows
