"""``movielens-benchmark`` command line: run the flow locally, list datasets, show past results."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recmodels.errors import BenchmarkError, InvalidConfig

console = Console()


def _top_k(text: str) -> list[int]:
    """``--top-k 10,20,50,100`` → [10, 20, 50, 100], in the order given (the first is the table's)."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise InvalidConfig(
            f"--top-k {text!r} is not a comma-separated list of positive integers, e.g. --top-k 10,20,50,100"
        ) from None


def _print_rows(rows: list[dict[str, Any]], title: str) -> None:
    """One column per model, one row per metric: fits a terminal whatever the number of metrics."""
    if not rows:
        console.print("no results")
        return
    table = Table(title=title)
    table.add_column("metric")
    for row in rows:
        table.add_column(str(row["model"]), justify="right")
    metrics = [m for m in dict.fromkeys(k for row in rows for k in row) if m != "model"]  # every row's
    for metric in metrics:
        values = (row.get(metric) for row in rows)
        table.add_row(metric, *(f"{v:.4f}" if isinstance(v, float) else str(v) for v in values))
    console.print(table)


def _split_config(args: argparse.Namespace) -> Any:
    from flows.benchmark import SplitConfig

    return SplitConfig(
        strategy=args.split,
        ratios=[float(r) for r in args.ratios.split(",")],
        seed=args.seed,
        n_heldout_users=args.heldout_users,
    )


def cmd_run(args: argparse.Namespace) -> None:
    from flows.interrupts import interruptible
    from flows.prefect_api import local_api

    with interruptible() as received:  # Ctrl-C and SIGTERM: runs KILLED/CANCELLED, resumable (exit 128+n)
        api = local_api()  # a temporary Prefect server starts now, while the imports of _run go on
        try:
            _run(args, api)
        except KeyboardInterrupt:
            signum = received[0] if received else signal.SIGINT
            console.print(
                f"interrupted by {signal.Signals(signum).name}: MLflow runs KILLED, Prefect flow run "
                "CANCELLED; run the same command again to resume from the last checkpoint",
                highlight=False,
            )
            raise SystemExit(128 + signum) from None
        finally:
            if api is not None:
                api.restore_environment()


def _api_ready(api: Any) -> None:
    """Wait for the Prefect API that :func:`flows.prefect_api.local_api` found or started; say which."""
    if api is None:
        return
    api.wait(float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
    if api.source == "running server":
        console.print(f"Prefect API: reusing the server already running at {api.url}", highlight=False)
    else:
        console.print(f"Prefect API: temporary server at {api.url} (stopped at exit)", highlight=False)


def _run(args: argparse.Namespace, api: Any) -> None:
    from flows.benchmark import cutoffs_and_table_k, movielens_benchmark, result_table
    from flows.validation import parse_list, validate_benchmark_args

    models = parse_list(args.models, "--models")
    temporary_api = api is not None and api.source == "temporary server"
    # Before the temporary Prefect API has started (never asked: it has no GPU pool).
    model_params = validate_benchmark_args(args, [args.size], models, temporary_api)
    top_k = _top_k(args.top_k)
    _, table_k = cutoffs_and_table_k(top_k, args.table_k)
    split = _split_config(args)
    _api_ready(api)
    rows = movielens_benchmark(
        size=args.size,
        models=models,
        min_interactions=args.min_interactions,
        min_item_interactions=args.min_item_interactions,
        implicit_threshold=args.implicit_threshold,
        split=split,
        transpose=args.transpose,
        top_k=top_k,
        table_k=table_k,
        model_params=model_params,
        home=args.home,
        mirror=args.mirror,
        experiment=args.experiment,
        gpu=args.gpu,
        sar_backend=args.sar_backend,
        dask_address=args.dask_address,
        checkpoint_every=args.checkpoint_every,
    )
    _print_rows(result_table(rows, table_k), f"MovieLens {args.size} — {args.split} split, top-{table_k}")


def cmd_sessions(args: argparse.Namespace) -> None:
    from flows.sessions import AOD_COLUMNS, check_models, movielens_sessions
    from flows.validation import parse_list, parse_model_params
    from recmodels.sequences import SessionConfig
    from tasks.data import check_size

    models = parse_list(args.models, "--models")
    check_size(args.size)  # fail fast, before the local Prefect API starts
    check_models(models)
    SessionConfig(session_gap=args.session_gap, max_len=args.max_len, window_days=args.window_days or 1.0)
    model_params = parse_model_params(args.param)
    rows = movielens_sessions(
        size=args.size,
        models=models,
        session_gap=args.session_gap,
        max_len=args.max_len,
        window_days=args.window_days,
        replay_windows=args.replay_windows,
        seed=args.seed,
        model_params=model_params,
        home=args.home,
        mirror=args.mirror,
        experiment=args.experiment,
    )
    columns = ("model", *AOD_COLUMNS, "sessions_per_second")
    _print_rows([{c: r[c] for c in columns} for r in rows], f"MovieLens {args.size} — session protocol, AOD")


def cmd_sweep(args: argparse.Namespace) -> None:
    from flows.sweep import check_metric, movielens_benchmark_sweep
    from flows.validation import parse_list, validate_benchmark_args

    sizes = parse_list(args.sizes, "--sizes")
    models = parse_list(args.models, "--models")
    model_params = validate_benchmark_args(args, sizes, models)  # before the local Prefect API starts
    top_k = _top_k(args.top_k)
    check_metric(args.metric, top_k)
    rows = movielens_benchmark_sweep(
        sizes=sizes,
        models=models,
        deployment=args.deployment,
        metric=args.metric,
        split=_split_config(args),
        top_k=top_k,
        model_params=model_params,
        home=args.home,
        mirror=args.mirror,
        experiment=args.experiment,
    )
    _print_sweep(rows, args.metric, "MovieLens sweep")


def _print_sweep(rows: list[dict[str, Any]], metric: str, title: str) -> None:
    """One line per size × model: the sweep's metric, fit time and MLflow run."""
    columns = ["size", "model", "train_interactions", metric, "fit_seconds"]
    table = Table(title=f"{title} — {metric} and fit time")
    for column in [*columns, "MLflow run"]:
        table.add_column(column, overflow="fold")
    for row in rows:
        cells = (f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns)
        table.add_row(*cells, row.get("run_url") or row["run_id"])
    console.print(table)


def cmd_datasets(args: argparse.Namespace) -> None:
    from recmodels.datasets import RELEASES
    from recmodels.synthetic import SYNTHETIC_SHAPES
    from tasks import storage
    from tasks.data import interactions_marker_path

    home = storage.resolve_home(args.home)

    def parsed(name: str) -> str:
        """ "yes" once the table's marker (written last, after the table) exists: a build killed halfway
        leaves no marker."""
        return "yes" if storage.exists(interactions_marker_path(home, name)) else ""

    table = Table(title=f"Datasets (home: {home})")
    for column in ("name", "source", "parsed"):
        table.add_column(column)
    for name, release in RELEASES.items():
        table.add_row(name, release.url, parsed(name))
    for name, shape in SYNTHETIC_SHAPES.items():
        table.add_row(name, "synthetic {} users × {} items × {} interactions".format(*shape), parsed(name))
    console.print(table)


def cmd_show(args: argparse.Namespace) -> None:
    import mlflow

    from tasks.storage import resolve_home
    from tasks.tracking import tracking_client, tracking_uri

    uri = tracking_uri(resolve_home(args.home))
    client = tracking_client(uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise BenchmarkError(
            f"no MLflow experiment {args.experiment!r} at {uri}; run `movielens-benchmark run`"
        )
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.mlflow.parentRunId IS NULL",
        order_by=["attributes.start_time DESC"],
        max_results=args.last,
    )
    for parent in parents:
        title = f"{parent.info.run_name} ({parent.info.status}, run {parent.info.run_id})"
        if "sizes" in parent.data.params:  # a sweep: its table, from the runs of the benchmarks it ran
            table = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/sweep.json")
            rows = [dict(zip(table["columns"], values, strict=True)) for values in table["data"]]
            _print_sweep(rows, parent.data.params["metric"], title)
            continue
        children = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        cutoff = args.table_k or parent.data.params.get("table_k")
        if cutoff is not None:
            cutoff = int(cutoff)
            logged = parent.data.params.get("top_k", str(cutoff)).split(",")
            if str(cutoff) not in logged:
                raise InvalidConfig(
                    f"run {parent.info.run_id} logged the cutoffs {','.join(logged)}, not {cutoff}; "
                    "choose --table-k among them"
                )
            title += f", top-{cutoff}"
        # A killed run: its finished models are shown beside the ones that never finished (status row).
        children = sorted(children, key=lambda c: c.info.start_time or 0)
        rows = [
            {"model": c.info.run_name, "status": c.info.status, **_at_cutoff(c.data.metrics, cutoff)}
            for c in children
        ]
        _print_rows(rows, title)


def _at_cutoff(values: dict[str, float], cutoff: int | None) -> dict[str, float]:
    """The metrics at ``cutoff`` and those without one (mrr, times), sorted; all of them for None."""
    return {
        name: value
        for name, value in sorted(values.items())
        if cutoff is None or not re.search(r"_at_\d+$", name) or name.endswith(f"_at_{cutoff}")
    }


def cmd_stack(args: argparse.Namespace) -> None:
    from pathlib import Path

    from deployments.stack import (
        StackConfig,
        client_env,
        exposure_warning,
        stack_down,
        stack_status,
        stack_up,
    )
    from recmodels.datasets import benchmark_home

    config = StackConfig(
        home=Path(args.home) if args.home else benchmark_home(),
        storage=args.storage,
        prefect_host=args.host,
        prefect_port=args.prefect_port,
        mlflow_host=args.host,
        mlflow_port=args.mlflow_port,
        timeout_s=args.timeout,
    )
    if args.action == "down":
        console.print("stopped: " + (", ".join(stack_down(config)) or "nothing was running"))
        return
    if args.action == "up" and (warning := exposure_warning(config)):
        console.print(f"[bold yellow]warning[/]: {warning}", highlight=False)
    table = Table(title=f"stack ({config.state_dir})")
    for column in ("service", "pid", "healthy", "log"):
        table.add_column(column)
    for status in (stack_up if args.action == "up" else stack_status)(config):
        table.add_row(status.name, str(status.pid or ""), "yes" if status.healthy else "no", str(status.log))
    console.print(table)
    for key, value in client_env(config).items():
        console.print(f"export {key}={value}", highlight=False, soft_wrap=True)


def _add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    """Models, split, top-k, model parameters and where data and results live (run and sweep)."""
    parser.add_argument("--models", default="popularity,sar", help="comma-separated model names")
    parser.add_argument(
        "--split",
        default="stratified",
        choices=["random", "stratified", "temporal", "leave_one_out", "strong_generalization"],
    )
    parser.add_argument("--ratios", default="0.75,0.25")
    parser.add_argument(
        "--seed", type=int, default=42, help="split seed; also seeds every model not given its own seed"
    )
    parser.add_argument("--heldout-users", type=int, default=None)
    parser.add_argument(
        "--top-k",
        default="5,10,20,50,100",
        help="cutoffs: every metric is logged at each (recommendations computed once, at the largest)",
    )
    parser.add_argument("--param", action="append", default=[], metavar="MODEL.NAME=VALUE")
    parser.add_argument("--home", default=None, help="cache home (default $MOVIELENS_BENCHMARK_HOME)")
    parser.add_argument(
        "--mirror", default=None, help="folder or URL with GroupLens files ($MOVIELENS_MIRROR)"
    )
    parser.add_argument("--experiment", default="movielens-benchmark")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="movielens-benchmark", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the benchmark flow locally")
    run.add_argument("--size", default="100k", help="100k, 1m, 10m, 20m, 25m, 32m, latest-small, synthetic-…")
    run.add_argument("--min-interactions", type=int, default=5, help="k-core threshold (users and items)")
    run.add_argument("--min-item-interactions", type=int, default=None, help="item threshold if different")
    run.add_argument("--implicit-threshold", type=float, default=None)
    run.add_argument("--transpose", action="store_true")
    run.add_argument("--sar-backend", default="single", choices=["single", "dask"])
    run.add_argument("--dask-address", default=None, help="attach SAR on Dask to this scheduler")
    run.add_argument("--gpu", default="auto", choices=["auto", "local", "pool"], help="where GPU models run")
    run.add_argument(
        "--table-k", type=int, default=None, help="cutoff the printed table shows (default: first)"
    )
    run.add_argument(
        "--checkpoint-every", type=int, default=1, help="epochs between checkpoints (resume after a kill)"
    )
    _add_benchmark_arguments(run)
    run.set_defaults(func=cmd_run)

    sweep = sub.add_parser("sweep", help="run the benchmark across sizes and compare them in MLflow")
    sweep.add_argument("--sizes", default="100k,latest-small", help="comma-separated dataset sizes")
    sweep.add_argument(
        "--deployment", default=None, help="run each size on this deployment, e.g. movielens-benchmark/cpu"
    )
    sweep.add_argument(
        "--metric", default="ndcg_at_10", help="metric to plot against size, at one of the --top-k cutoffs"
    )
    _add_benchmark_arguments(sweep)
    sweep.set_defaults(func=cmd_sweep)

    sessions = sub.add_parser("sessions", help="session protocol: incremental time-window train/eval")
    sessions.add_argument("--size", default="100k", help="100k, latest-small, 1m, …")
    sessions.add_argument("--models", default="gpt2,xlnet,session_knn,item_knn,popularity")
    sessions.add_argument("--session-gap", type=int, default=1800, help="seconds between sessions")
    sessions.add_argument("--max-len", type=int, default=20, help="events kept per session (the last)")
    sessions.add_argument("--window-days", type=float, default=None, help="default: 7 (100k), 365 (others)")
    sessions.add_argument("--replay-windows", type=int, default=0, help="earlier windows replayed; -1: all")
    sessions.add_argument("--seed", type=int, default=0)
    sessions.add_argument("--param", action="append", default=[], metavar="MODEL.NAME=VALUE")
    sessions.add_argument("--home", default=None, help="cache home (default $MOVIELENS_BENCHMARK_HOME)")
    sessions.add_argument("--mirror", default=None, help="folder or URL with GroupLens files")
    sessions.add_argument("--experiment", default="movielens-sessions")
    sessions.set_defaults(func=cmd_sessions)

    datasets = sub.add_parser("datasets", help="list releases and synthetic shapes")
    datasets.add_argument("--home", default=None)
    datasets.set_defaults(func=cmd_datasets)

    show = sub.add_parser("show", help="show the latest results from MLflow")
    show.add_argument("--home", default=None)
    show.add_argument("--experiment", default="movielens-benchmark")
    show.add_argument("--last", type=int, default=1)
    show.add_argument("--table-k", type=int, default=None, help="cutoff to show (default: the run's table's)")
    show.set_defaults(func=cmd_show)

    stack = sub.add_parser("stack", help="Prefect server, MLflow server, work pools, workers, deployments")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--home", default=None)
    stack.add_argument(
        "--storage",
        default=None,
        help="workers' data home: a folder they share or an fsspec URL (s3://bucket/prefix); default: home",
    )
    stack.add_argument(
        "--host", default="127.0.0.1", help="address both servers bind (no authentication: keep loopback)"
    )
    stack.add_argument("--prefect-port", type=int, default=4200)
    stack.add_argument("--mlflow-port", type=int, default=5000)
    stack.add_argument("--timeout", type=float, default=120.0)
    stack.set_defaults(func=cmd_stack)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        from flows.validation import hide_prefect_tracebacks

        hide_prefect_tracebacks()
    try:
        args.func(args)
    except BenchmarkError as exc:
        if args.debug:
            raise
        console.print(
            f"[bold red]{type(exc).__name__}[/]: {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
