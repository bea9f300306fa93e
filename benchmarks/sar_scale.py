"""SAR at scale (GitHub issue 3): time and peak memory of the data steps, fit and recommend-all-users.

For each synthetic shape (``synthetic-1m``, ``-10m``, ``-20m``: MovieLens' sizes, see
``recmodels/synthetic.py``), ``prep`` generates the table (the "parse" of synthetic data), runs the
flow's default data steps (5-core filter, stratified 75/25 split, seed 42; the issue's goal on
synthetic-20m: under 60 s and 6 GiB) and writes train.parquet, then times the other splits (random,
temporal, leave-one-out, strong generalization) and the transpose; then each engine reads train.parquet,
fits and recommends the top 10 unseen items to every train user:

- ``sar``: :class:`recmodels.sar.SAR`, single node, its numba kernels on every core;
- ``sar-dask-1``, ``sar-dask-2``: the ``sar-dask`` subflow (``tasks/sar_dask.py``) attached by address
  to a LocalCluster of 1 or 2 single-threaded workers that the step starts (``cluster_seconds``), the
  same kernels on one thread per worker; fit and predict are timed inside the flow;
- ``sarsinglenode``: Microsoft Recommenders' ``SARSingleNode`` (1.2.1), the reference, same parameters
  (jaccard, 30-day half-life). It declares pandas<3, so it cannot be a pip extra of this project;
  install it beside the venv, as CI does: ``pip install --no-deps --target .venv/sar-reference
  recommenders==1.2.1`` (or set ``SAR_REFERENCE_DIR``).

Every step runs in a child process whose process tree (Dask workers included; the Prefect server is
the benchmark's own) has its resident memory sampled every 0.1 s; a step above ``--memory-cap-gb`` or
``--timeout`` is killed and reported as such, and that engine is not run again. On a shared machine wall
times follow the load (each step records the 1-minute load average); CPU seconds, summed over the
step's processes (flow process and workers), much less so: the ratio to SARSingleNode is given in both.
Times include importing the model and numba's first call in each process (0.6-1 s for SAR); numba
compiles the kernels once into ``recmodels/__pycache__`` (about 15 s, in the first repeat after a
change to ``recmodels/sar.py``), hence ``--repeats``.
Results: a table on stdout, ``benchmarks/results/sar_scale.json``, ``sar_scale.png`` (time and memory
against size) and an MLflow run ``sar-scale`` (a child run per shape and engine, metrics named as in
DESIGN.md) at ``$MLFLOW_TRACKING_URI`` or ``<home>/mlflow.db``::

    python -m benchmarks.sar_scale --sizes synthetic-1m --repeats 3
    python -m benchmarks.sar_scale --sizes synthetic-1m synthetic-10m synthetic-20m
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REFERENCE_DIR = Path(os.environ.get("SAR_REFERENCE_DIR", ROOT / ".venv" / "sar-reference"))
SIZES = ("synthetic-1m", "synthetic-10m", "synthetic-20m")
SCORING_CORES = 2  # the machine's cores: single node on 2 threads, Dask on 2 single-threaded workers
ENGINES = ("sar", "sar-dask-1", "sar-dask-2", "sarsinglenode")
REFERENCE = "sarsinglenode"
K = 10
GIB = 2**30
CODE_ENV = "SAR_SCALE_CODE"
BASELINE = "@baseline"


# --- steps, each run in a child process ------------------------------------------------------------------


def prep(size: str, folder: Path, other_splits: bool = True) -> dict[str, Any]:
    """Generate ("parse"), 5-core filter and stratified split ``size``, train.parquet into ``folder``;
    then time the other splits and the transpose of the filtered table."""
    import resource

    from recmodels import preprocessing
    from recmodels.synthetic import generate_synthetic, parse_synthetic_name

    start = time.perf_counter()
    frame = generate_synthetic(*parse_synthetic_name(size))
    parsed = time.perf_counter()
    frame = preprocessing.filter_min_interactions(frame, 5, 5)
    filtered = time.perf_counter()
    train = preprocessing.split_stratified(frame, (0.75, 0.25), seed=42).train
    split = time.perf_counter()
    row = {
        "parse_seconds": parsed - start,
        "filter_seconds": filtered - parsed,
        "split_seconds": split - filtered,
        "seconds": split - start,
        "goal_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
        "interactions": len(frame),
        "train_interactions": len(train),
        "users": int(train["user_id"].nunique()),
        "items": int(train["item_id"].nunique()),
    }
    train.to_parquet(folder / "train.parquet", index=False)
    del train
    if not other_splits:
        return row
    others = {
        "random": {},
        "temporal": {},
        "leave_one_out": {},
        "strong_generalization": {"n_heldout_users": 1000},
    }
    for strategy, params in others.items():
        begin = time.perf_counter()
        preprocessing.split(frame, strategy, **params)
        row[f"{strategy}_split_seconds"] = time.perf_counter() - begin
    begin = time.perf_counter()
    preprocessing.transpose(frame)
    row["transpose_seconds"] = time.perf_counter() - begin
    return row


def run_engine(engine: str, train_path: Path) -> dict[str, Any]:
    """Read train, fit and recommend the top K unseen items to every train user: wall and CPU seconds."""
    if engine.startswith("sar-dask-"):
        return run_dask(int(engine.rsplit("-", 1)[1]), train_path)
    import pandas as pd

    start, cpu = time.perf_counter(), time.process_time()
    train = pd.read_parquet(train_path)
    if engine == "sar":
        from recmodels.sar import SAR

        model = SAR().fit(train)
        fitted = time.perf_counter()
        recommendations = model.recommend(k=K)
    else:
        sys.path.append(str(REFERENCE_DIR))
        from recommenders.models.sar.sar_singlenode import SARSingleNode

        model = SARSingleNode(
            col_user="user_id",
            col_item="item_id",
            col_rating="rating",
            col_timestamp="timestamp",
            similarity_type="jaccard",
            time_decay_coefficient=30,
            timedecay_formula=True,
        )
        model.fit(train)
        fitted = time.perf_counter()
        recommendations = model.recommend_k_items(train, top_k=K, remove_seen=True)
    done = time.perf_counter()
    return {
        "fit_seconds": fitted - start,
        "predict_seconds": done - fitted,
        "total_seconds": done - start,
        "cpu_seconds": time.process_time() - cpu,
        "recommendations": len(recommendations),
        **({"lists_sha256": lists_digest(recommendations)} if engine == "sar" else {}),
    }


def lists_digest(recommendations: Any) -> str:
    """sha256 of the top-k lists (user, item, float64 score bits, in rank order): equal lists, equal digest."""
    import hashlib

    import numpy as np

    ordered = recommendations.sort_values(["user_id", "score", "item_id"], ascending=[True, False, True])
    digest = hashlib.sha256()
    for column in ("user_id", "item_id", "score"):
        digest.update(
            np.ascontiguousarray(ordered[column].to_numpy(np.float64 if column == "score" else np.int64))
        )
    return digest.hexdigest()


def run_dask(n_workers: int, train_path: Path) -> dict[str, Any]:
    """The sar-dask subflow attached to a LocalCluster of ``n_workers`` (as ``run_sar_dask`` starts one);
    CPU seconds are the flow process's plus the workers'."""
    import distributed

    from tasks.sar_dask import run_sar_dask

    start = time.perf_counter()
    with (
        distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        started = time.perf_counter()
        workers_cpu, cpu = sum(client.run(time.process_time).values()), time.process_time()
        result = run_sar_dask(str(train_path), k=K, dask_address=cluster.scheduler_address)
        cpu = time.process_time() - cpu + sum(client.run(time.process_time).values()) - workers_cpu
    return {
        "fit_seconds": result.fit_seconds,
        "predict_seconds": result.predict_seconds,
        "cluster_seconds": started - start,
        "total_seconds": time.perf_counter() - start,
        "cpu_seconds": cpu,
        "recommendations": len(result.recommendations),
        "lists_sha256": lists_digest(result.recommendations),
        "worker_peak_rss_gb": {w: mb / 1024 for w, mb in result.worker_peak_rss_mb.items()},
    }


# --- the parent: children, memory, results ---------------------------------------------------------------


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of ``process`` and all its descendants."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """``$PREFECT_API_URL``, else a ``prefect server start`` on a free port for the whole benchmark
    (an ephemeral server per child would add its start and memory to each step)."""
    if url := os.environ.get("PREFECT_API_URL"):
        yield url
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    with tempfile.TemporaryDirectory(prefix="sar-scale-prefect-") as home:
        env = {**os.environ, "PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        command = [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while True:
                with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"prefect server start did not answer at {url}; set PREFECT_API_URL")
                time.sleep(1)
            yield url
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait()


def measure(
    step: list[str], cap_gb: float, timeout: float, api_url: str, code: Path | None = None
) -> dict[str, Any]:
    """Run ``python -m benchmarks.sar_scale child STEP...``; its result, peak tree RSS and status.

    With ``code`` (a checkout of another version), the child imports ``recmodels`` and ``tasks`` from it.
    """
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        path = str(ROOT) if code is None else f"{code}{os.pathsep}{ROOT}"
        env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": path}
        if code is not None:
            env[CODE_ENV] = str(code)
        command = [sys.executable, "-m", "benchmarks.sar_scale", "child", out.name, *step]
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        process, peak, status = psutil.Process(child.pid), 0, "ok"
        load = os.getloadavg()[0]
        started = time.perf_counter()
        while child.poll() is None:
            peak = max(peak, tree_rss(process))
            if peak > cap_gb * GIB or time.perf_counter() - started > timeout:
                status = "memory cap" if peak > cap_gb * GIB else "timeout"
                for p in [*process.children(recursive=True), process]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        p.kill()
                child.wait()
                break
            time.sleep(0.1)
        row = {"status": status, "peak_rss_gb": peak / GIB, "elapsed_seconds": time.perf_counter() - started}
        row["load_average"] = (load + os.getloadavg()[0]) / 2
        if status == "ok" and child.returncode != 0:
            row["status"] = f"error (exit {child.returncode})"
        if row["status"] == "ok":
            row |= json.loads(Path(out.name).read_text())
        return row


def benchmark(args: argparse.Namespace, folder: Path, api_url: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    failed: set[str] = set()
    versions: list[tuple[str, Path | None]] = [("", None)]
    if args.baseline is not None:
        versions.append((BASELINE, args.baseline.resolve()))
    for size in args.sizes:
        prep_step = ["prep", size, str(folder), *(["--no-other-splits"] if args.no_other_splits else [])]
        data = measure(prep_step, args.memory_cap_gb, args.timeout, api_url)
        rows.append({"size": size, "step": "prep", **data})
        print(format_row(rows[-1]), flush=True)
        if data["status"] != "ok":
            break
        for repeat in range(args.repeats):
            for engine in args.engines:
                for suffix, code in versions if engine != REFERENCE else versions[:1]:
                    name = engine + suffix
                    if name in failed:
                        row = {"status": "skipped: failed before"}
                    else:
                        step = ["engine", engine, str(folder / "train.parquet")]
                        row = measure(step, args.memory_cap_gb, args.timeout, api_url, code)
                        if row["status"] != "ok":
                            failed.add(name)
                    counts = {k: data[k] for k in ("interactions", "train_interactions", "users", "items")}
                    rows.append({"size": size, "step": name, "repeat": repeat, **counts, **row})
                    if row["status"] == "ok" and engine != REFERENCE:
                        # A's non-zeros × items multiply-adds over the cores the scoring ran on
                        macs = data["train_interactions"] * data["items"]
                        rows[-1]["gmac_per_second_per_core"] = (
                            macs / row["predict_seconds"] / 1e9 / SCORING_CORES
                        )
                    print(format_row(rows[-1]), flush=True)
    return rows


def side_by_side(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size and repeat, each engine's fit + recommend against SARSingleNode's of the same repeat,
    and whether its lists equal the baseline version's (same sha256)."""
    out = []
    by_run = {(r["size"], r.get("repeat"), r["step"]): r for r in rows if r["status"] == "ok"}
    for (size, repeat, step), row in by_run.items():
        if step in ("prep", REFERENCE):
            continue
        entry: dict[str, Any] = {
            "size": size,
            "repeat": repeat,
            "step": step,
            "load_average": row["load_average"],
        }
        if (reference := by_run.get((size, repeat, REFERENCE))) is not None:
            entry["speedup_vs_sarsinglenode"] = _work(reference) / _work(row)
        if not step.endswith(BASELINE) and (old := by_run.get((size, repeat, step + BASELINE))) is not None:
            entry["speedup_vs_baseline"] = _work(old) / _work(row)
            entry["same_lists_as_baseline"] = old.get("lists_sha256") == row["lists_sha256"]
        out.append(entry)
    return out


def best(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size and step, the fastest successful repeat (or the first failure), with speed ratios."""
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["size"], row["step"])
        old = chosen.get(key)
        if old is None or (row["status"] == "ok" and (old["status"] != "ok" or _work(row) < _work(old))):
            chosen[key] = row
    for (size, step), row in chosen.items():
        reference = chosen.get((size, REFERENCE))
        if (
            step not in ("prep", REFERENCE)
            and row["status"] == "ok"
            and reference
            and reference["status"] == "ok"
        ):
            row["speedup_vs_sarsinglenode"] = _work(reference) / _work(row)
            row["cpu_ratio_vs_sarsinglenode"] = reference["cpu_seconds"] / row["cpu_seconds"]
    return list(chosen.values())


def _work(row: dict[str, Any]) -> float:
    """Fit + recommend seconds (prep: its seconds)."""
    return row["seconds"] if row["step"] == "prep" else row["fit_seconds"] + row["predict_seconds"]


def format_row(row: dict[str, Any]) -> str:
    text = f"{row['size']:<14} {row['step']:<14}"
    if row["status"] != "ok":
        if "peak_rss_gb" not in row:
            return f"{text} {row['status']}"
        return (
            f"{text} {row['status']} (peak {row['peak_rss_gb']:.1f} GiB after {row['elapsed_seconds']:.0f} s)"
        )
    if row["step"] == "prep" and "random_split_seconds" not in row:
        return (
            f"{text} parse {row['parse_seconds']:6.1f} s  filter {row['filter_seconds']:5.1f} s  "
            f"split {row['split_seconds']:5.1f} s  total {row['seconds']:6.1f} s  "
            f"{row['interactions']:,} interactions (load {row['load_average']:.1f})"
        )
    if row["step"] == "prep":
        return (
            f"{text} parse {row['parse_seconds']:6.1f} s  filter {row['filter_seconds']:5.1f} s  "
            f"split {row['split_seconds']:5.1f} s  total {row['seconds']:6.1f} s  peak {row['goal_peak_rss_gb']:5.2f} GiB  "
            f"(other splits: random {row['random_split_seconds']:.1f} s, temporal {row['temporal_split_seconds']:.1f} s, "
            f"leave-one-out {row['leave_one_out_split_seconds']:.1f} s, strong generalization "
            f"{row['strong_generalization_split_seconds']:.1f} s; transpose {row['transpose_seconds']:.2f} s; "
            f"{row['interactions']:,} interactions, load {row['load_average']:.1f})"
        )
    speedup = row.get("speedup_vs_sarsinglenode")
    return (
        f"{text} fit {row['fit_seconds']:7.1f} s  recommend {row['predict_seconds']:7.1f} s  "
        f"total {row['total_seconds']:7.1f} s  peak {row['peak_rss_gb']:5.2f} GiB"
        + (f" (workers ≤ {max(workers.values()):.2f})" if (workers := row.get("worker_peak_rss_gb")) else "")
        + f"  cpu {row['cpu_seconds']:7.1f} s"
        + (f"  {gmac:.2f} GMAC/s/core" if (gmac := row.get("gmac_per_second_per_core")) else "")
        + (
            f"  {speedup:4.1f}× SARSingleNode ({row['cpu_ratio_vs_sarsinglenode']:.1f}× in CPU)"
            if speedup
            else ""
        )
        + f"  (load {row['load_average']:.1f})"
    )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Fit + recommend time (data prep: its time) and peak memory against interactions, per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for step in dict.fromkeys(r["step"] for r in rows):
        points = [r for r in rows if r["step"] == step and "interactions" in r and "peak_rss_gb" in r]
        done = [r for r in points if r["status"] == "ok"]
        line = time_ax.plot(
            [r["interactions"] for r in done], [_work(r) for r in done], marker="o", label=step
        )
        memory_ax.plot(
            [r["interactions"] for r in done],
            [r["peak_rss_gb"] for r in done],
            marker="o",
            color=line[0].get_color(),
            label=step,
        )
        for r in points:
            if r["status"] != "ok":
                memory_ax.plot(
                    r["interactions"], r["peak_rss_gb"], "x", color=line[0].get_color(), markersize=10
                )
                memory_ax.annotate(r["status"], (r["interactions"], r["peak_rss_gb"]), fontsize=7)
    time_ax.set(
        xscale="log", yscale="log", xlabel="interactions", ylabel="seconds (fit + recommend all users)"
    )
    memory_ax.set(
        xscale="log", yscale="log", xlabel="interactions", ylabel="peak RSS of the process tree (GiB)"
    )
    time_ax.legend(fontsize=8)
    memory_ax.legend(fontsize=8)
    fig.suptitle("SAR on synthetic MovieLens shapes (2 cores; x: killed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_to_mlflow(rows: list[dict[str, Any]], files: list[Path]) -> str:
    """A parent run ``sar-scale`` with the files, a child run per size and engine with its metrics."""
    from mlflow.tracking import MlflowClient

    from recmodels.datasets import benchmark_home
    from tasks.tracking import experiment_id, git_commit, tracking_uri

    home = benchmark_home()
    uri = tracking_uri(home)
    client = MlflowClient(uri)
    experiment = experiment_id(uri, home)
    tags = {"dataset": "synthetic", "split": "stratified", "model": "sar", "git_commit": git_commit()}
    parent = client.create_run(
        experiment,
        run_name="sar-scale",
        tags={**tags, "size": ",".join(dict.fromkeys(r["size"] for r in rows))},
    ).info.run_id
    for path in files:
        client.log_artifact(parent, str(path))
    for row in rows:
        run = client.create_run(
            experiment,
            run_name=f"sar-scale-{row['step']}-{row['size']}",
            tags={
                **tags,
                "size": row["size"],
                "engine": row["step"],
                "status": row["status"],
                "mlflow.parentRunId": parent,
            },
        ).info.run_id
        if row["status"] == "ok":
            metrics = {"peak_rss_mb": row["peak_rss_gb"] * 1024}
            if row["step"] == "prep":
                metrics |= {k: v for k, v in row.items() if k.endswith("_seconds") and k != "elapsed_seconds"}
                metrics["goal_peak_rss_mb"] = row["goal_peak_rss_gb"] * 1024
            else:
                metrics |= {"fit_seconds": row["fit_seconds"], "predict_seconds": row["predict_seconds"]}
                metrics["interactions_per_second"] = row["train_interactions"] / row["fit_seconds"]
                metrics["users_per_second"] = row["users"] / row["predict_seconds"]
            for name, value in metrics.items():
                client.log_metric(run, name, value)
        client.set_terminated(run)
    client.set_terminated(parent)
    return parent


def synthetic_name(name: str) -> str:
    """``name`` if it is a synthetic shape (``synthetic-20m``, ``synthetic-<users>x<items>x<n>``)."""
    from recmodels.errors import UnknownDataset
    from recmodels.synthetic import parse_synthetic_name

    try:
        parse_synthetic_name(name)
    except UnknownDataset as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", nargs="+", default=list(SIZES), type=synthetic_name, help="synthetic shapes"
    )
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each engine; the fastest is reported")
    parser.add_argument("--memory-cap-gb", type=float, default=0.8 * psutil.virtual_memory().total / GIB)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per step")
    parser.add_argument(
        "--output", default="sar_scale", help="name of the JSON and PNG in benchmarks/results"
    )
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of the previous version (git worktree add DIR REF): its sar engines run beside "
        "this checkout's in every repeat, and the JSON says whether their lists are equal",
    )
    parser.add_argument(
        "--no-other-splits", action="store_true", help="prep: skip timing the other splits and the transpose"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        out, step, *rest = argv[1:]
        if code := os.environ.get(CODE_ENV):
            sys.path.insert(0, code)  # the baseline's recmodels and tasks
        if step == "prep":
            result = prep(rest[0], Path(rest[1]), other_splits="--no-other-splits" not in rest)
        else:
            result = run_engine(rest[0], Path(rest[1]))
        Path(out).write_text(json.dumps(result))
        return
    args = parse_args(argv)
    if REFERENCE in args.engines and not (REFERENCE_DIR / "recommenders").is_dir():
        sys.exit(
            f"{REFERENCE} needs Recommenders: pip install --no-deps --target {REFERENCE_DIR} recommenders==1.2.1"
        )
    with tempfile.TemporaryDirectory(prefix="sar-scale-") as folder, prefect_api() as api_url:
        rows = benchmark(args, Path(folder), api_url)
    table, pairs = best(rows), side_by_side(rows)
    print("\nFastest of each (fit + recommend for all users, k=10):")
    for row in table:
        print(format_row(row))
    print("\nSide by side, per repeat:")
    for pair in pairs:
        print(json.dumps(pair))
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, png_path = RESULTS / f"{args.output}.json", RESULTS / f"{args.output}.png"
    json_path.write_text(
        json.dumps(
            {
                "params": vars(args),
                "cpus": os.cpu_count(),
                "best": table,
                "side_by_side": pairs,
                "runs": rows,
            },
            indent=2,
            default=str,
        )
    )
    plot(table, png_path)
    print(f"wrote {json_path} and {png_path}")
    if not args.no_mlflow:
        print(f"MLflow run {log_to_mlflow(table, [json_path, png_path])}")


if __name__ == "__main__":
    main()
