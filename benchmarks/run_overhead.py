"""Fixed cost of a run (GitHub issue 18, goal 1): where the wall-clock of a cached ML-100K
``movielens-benchmark run --models popularity,sar,implicit_mf`` goes, against an earlier version.

Each measured run is a fresh process, ``python benchmarks/run_overhead.py --child ...``, that imports
the CLI of the checkout on its ``PYTHONPATH`` and calls ``flows.cli.main`` with the run's arguments
(embedded defaults: temporary Prefect server, MLflow on SQLite in the home), after wrapping a few
functions with timers. Phases, in wall seconds and the process's own CPU seconds:

- ``start``: interpreter start to the first line of this script (site-packages, ``.pth`` files);
- ``import_cli``: ``import flows.cli``; ``import_flow``: ``import flows.benchmark`` (prefect, mlflow,
  the tasks), which ``run`` does before calling the flow;
- ``prefect_api``: the temporary Prefect server's start (its process's imports, database, health
  check) as the CLI waits for it: all of it where Prefect starts it when the flow is called; what is
  left after the CLI's imports where ``flows/prefect_api.py`` started it first; ``flow_start``: the flow call until its body runs,
  less ``prefect_api`` (flow run creation, parameter validation);
- ``prepared``: the cache lookup of the prepared split; ``mlflow_setup``: from there to the first
  task (tracking URI, SQLite store and its schema check, experiment, parent run, parameters);
- ``task:<model>``: each train-evaluate task as the flow sees it, of which ``fit+predict:<model>``
  is the model's own work and ``log_model:<model>`` the model logging;
- ``flow_end``: the last task to the flow's return (artifact, parent run closed);
  ``exit``: the flow's return to the process's exit (server stop, interpreter shutdown).

Every version runs once untimed first (its own home and Prefect home: the prepared data are cached
and both databases exist), then the versions alternate for ``--repeats`` rounds; the table gives each
phase's median. The machine's load average is recorded with every run: on a shared machine the wall
figures are only comparable within one invocation.

    python -m benchmarks.run_overhead --baseline main --repeats 3      # this checkout against main
    python -m benchmarks.run_overhead --baseline 3356937 --repeats 5 --output run_overhead_quiet

Results: ``benchmarks/results/<--output>.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = "popularity,sar,implicit_mf"
RUN_ARGS = ["run", "--size", "100k", "--models", MODELS]


# --- the measured process ----------------------------------------------------------------------------


def _child(out: Path) -> int:
    """Run the CLI with timers around its phases; write them as JSON to ``out``."""
    import psutil

    started = psutil.Process().create_time()
    marks: dict[str, float] = {"start": time.time() - started}
    phases: dict[str, float] = {}
    phase_cpu: dict[str, float] = {"start": time.process_time()}
    events: dict[str, float] = {}

    def timed(name: Any, fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                key = name(*args, **kwargs) if callable(name) else name
                phases[key] = phases.get(key, 0.0) + time.perf_counter() - t
                phase_cpu[key] = phase_cpu.get(key, 0.0) + time.process_time() - c

        return wrapper

    api = None
    try:  # as the CLI's `run` does, before any import of Prefect (flows/prefect_api.py; absent before)
        from flows.prefect_api import local_api

        api = local_api()
    except ImportError:
        pass
    t, c = time.perf_counter(), time.process_time()
    import flows.cli as cli

    phases["import_cli"], phase_cpu["import_cli"] = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    import flows.benchmark as benchmark

    phases["import_flow"], phase_cpu["import_flow"] = time.perf_counter() - t, time.process_time() - c

    from prefect.server.api import server as prefect_server

    prefect_server.SubprocessASGIServer.start = timed(
        "prefect_api", prefect_server.SubprocessASGIServer.start
    )
    if api is not None:  # what is left of the server's start after the imports
        timed("prefect_api_wait", cli._api_ready)(api)

    flow = benchmark.movielens_benchmark

    @functools.wraps(flow)
    def call_flow(*args: Any, **kwargs: Any) -> Any:  # what `run` calls (it imports the name late)
        events["flow_call"] = time.perf_counter()
        try:
            return flow(*args, **kwargs)
        finally:
            events["flow_return"] = time.perf_counter()

    benchmark.movielens_benchmark = call_flow

    def mark_prepared(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            events["body_start"] = t  # the flow body's first step after its argument checks
            try:
                return fn(*args, **kwargs)
            finally:
                phases["prepared"] = time.perf_counter() - t
                events["prepared_end"] = time.perf_counter()

        return wrapper

    benchmark.load_prepared = mark_prepared(benchmark.load_prepared)
    rows: dict[str, dict[str, Any]] = {}
    train_task = benchmark.train_and_evaluate

    @functools.wraps(train_task)
    def task(name: str, *args: Any, **kwargs: Any) -> Any:
        events.setdefault("first_task", time.perf_counter())
        t = time.perf_counter()
        try:
            state = train_task(name, *args, **kwargs)
            if state.is_completed():
                rows[name] = state.result()
            return state
        finally:
            phases[f"task:{name}"] = time.perf_counter() - t
            events["last_task_end"] = time.perf_counter()

    benchmark.train_and_evaluate = task
    import tasks.train as train

    current: list[str] = []
    original_task_fn = train.train_and_evaluate.fn

    @functools.wraps(original_task_fn)
    def task_fn(name: str, *args: Any, **kwargs: Any) -> Any:
        current[:] = [name]
        return original_task_fn(name, *args, **kwargs)

    train.train_and_evaluate.fn = task_fn
    if hasattr(train, "_log_model"):
        train._log_model = timed(lambda *a, **k: f"log_model:{current[0]}", train._log_model)

    code = cli.main(RUN_ARGS)
    elapsed = time.time() - started
    phases["prefect_api"] = phases.get("prefect_api", 0.0)  # started by Prefect, inside the flow call
    phases["flow_start"] = events["body_start"] - events["flow_call"] - phases["prefect_api"]
    phases["prefect_api"] += phases.pop("prefect_api_wait", 0.0)  # started by the CLI, before the call
    phases["mlflow_setup"] = events["first_task"] - events["prepared_end"]
    phases["flow_end"] = events["flow_return"] - events["last_task_end"]
    for name, row in rows.items():
        phases[f"fit+predict:{name}"] = row.get("fit_seconds", 0.0) + row.get("predict_seconds", 0.0)
    phases["start"] = marks["start"]
    result = {
        "exit_code": code,
        "phases": phases,
        "cpu": phase_cpu,
        "process_cpu": time.process_time(),
        "elapsed_at_return": elapsed,
    }
    out.write_text(json.dumps(result))
    return code


# --- the driver --------------------------------------------------------------------------------------


def _checkout(ref: str, parent: Path) -> Path:
    """A detached worktree of ``ref`` under ``parent`` (removed by :func:`_remove`)."""
    path = parent / f"ref-{ref.replace('/', '_')}"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref],
        check=True,
        capture_output=True,
    )
    return path


def _remove(path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)


def measure(code: Path, state: Path, label: str) -> dict[str, Any]:
    """One run of the CLI of checkout ``code``, with its home and Prefect home under ``state``."""
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "MOVIELENS_BENCHMARK_HOME": str(state / "home"),
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "900",  # a loaded machine: slow, not failed
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    out = state / "phases.json"
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(out)],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(
            f"{label} run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    result = json.loads(out.read_text())
    result |= {
        "version": label,
        "wall": wall,
        "cpu_tree": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "log_mentions_reuse": "reus" in (done.stdout + done.stderr).lower(),
    }
    result["phases"]["exit"] = wall - result["elapsed_at_return"]
    return result


def table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median of each phase per version (seconds), phases in run order."""
    versions = list(dict.fromkeys(r["version"] for r in runs))
    order = ["start", "import_cli", "import_flow", "prefect_api", "flow_start", "prepared", "mlflow_setup"]
    names = list(dict.fromkeys([*order, *(p for r in runs for p in r["phases"]), "flow_end"]))
    rows = []
    for name in [*names, "wall", "cpu_tree", "load_before"]:
        row: dict[str, Any] = {"phase": name}
        for version in versions:
            values = [
                (r["phases"].get(name) if name in r["phases"] else r.get(name))
                for r in runs
                if r["version"] == version
            ]
            values = [v for v in values if v is not None]
            row[version] = round(statistics.median(values), 2) if values else None
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", default="main", help="git ref to compare with (a temporary worktree)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="run_overhead")
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child)

    import pandas as pd

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="run-overhead-") as tmp:
        tmp_path = Path(tmp)
        versions = {"this": ROOT}
        if args.baseline:
            versions[args.baseline] = _checkout(args.baseline, tmp_path)
        try:
            states = {label: tmp_path / f"state-{i}" for i, label in enumerate(versions)}
            for label, code in versions.items():
                states[label].mkdir()
                measure(code, states[label], label)  # fills the cache and both databases
            for repeat in range(args.repeats):
                for label, code in versions.items():
                    runs.append(measure(code, states[label], label) | {"repeat": repeat})
                    print(
                        {k: runs[-1][k] for k in ("version", "repeat", "wall", "cpu_tree", "load_before")},
                        flush=True,
                    )
        finally:
            for code in versions.values():
                if code != ROOT:
                    _remove(code)
    summary = table(runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.output}.json"
    path.write_text(json.dumps({"summary": summary, "runs": runs, "baseline": args.baseline}, indent=2))
    print(pd.DataFrame(summary).to_string(index=False))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
