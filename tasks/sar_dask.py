"""SAR on a Dask cluster: the ``sar-dask`` Prefect subflow (GitHub issue 3).

Same model and same output as :class:`recmodels.sar.SAR` (same items, same order, same float64 scores:
the workers run the single-node code on column shards, see ``recmodels/sar.py``), spread over the
workers of a Dask cluster so that no process ever holds the whole item similarity S or a users × items
score matrix:

1. ``sar-dask-fit``: the flow's process reads train and builds the sparse users × items matrices B
   (seen), A (affinity) and W (unit affinity) with :meth:`SAR.fit_affinity`; B goes to every worker
   (O(interactions)). S is cut into one column shard S[:, c] per worker, built where it stays by the
   single node's kernel (``similarity_columns``: C[r, c] counted one item row r at a time).
2. ``sar-dask-recommend``: the rows of the users to score go to every worker; with ``normalize``, each
   shard first returns every user's min and max of W S and the flow reduces them. Each shard scores
   A S[:, c] tile by tile with the single node's kernel (``top_k_items``), skips seen items and keeps
   each user's k best; the flow merges the shards' lists into the top k (``merge_top_k``: by score,
   ties to the lower item id).

Each shard's kernels run on as many threads as its worker has (``with_threads``): one per worker in the
default LocalCluster, so two workers do not oversubscribe two cores.

Why shards of items rather than user partitions summed across workers: on synthetic-20m (ML-20M's
shape) C has 714M non-zeros, 99.85% dense, so one user partition's partial counts are about as large
as C (5.7 GB dense): summing P of them across workers moves and holds P copies. Counting a shard
over all users where the shard lives moves only B (about 180 MB) to each worker.

Memory per worker: its shard, n_items² × 8 / n_workers bytes (2.9 GB for 26,744 items on 2 workers),
plus B, A and W (O(interactions)), plus a tile of S[:, c] (n_items × 64 × 8 bytes) and the users × k
results: flat in the number of users but for the O(users × k) lists. ``peak_rss_plugin`` samples each worker's resident memory.

Prefect and Dask: prefect-dask's ``DaskTaskRunner`` starts the LocalCluster or attaches to the
scheduler, and the two Prefect tasks run in the flow's process, submitting the shard work as plain
``dask.distributed`` futures pinned to their worker. Shard work is not a Prefect task of its own: a
task run on a worker costs about a second of API round trips on this machine (measured; as much as a
shard's compute on MovieLens-1M), needs the Prefect API reachable from every worker (else each worker
process starts a Prefect server of its own), and hides its result's size from the Dask scheduler,
which would then move a multi-GB shard to balance load.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import distributed
import numpy as np
import pandas as pd
import psutil
from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.logging import get_run_logger
from prefect_dask import DaskTaskRunner

from recmodels.base import IdIndex, recommendations_frame
from recmodels.errors import InvalidConfig
from recmodels.sar import (
    SAR,
    ScoringInputs,
    check_k,
    merge_top_k,
    similarity_columns,
    top_k_items,
    unit_score_range,
    with_threads,
)
from tasks import storage


@dataclass(frozen=True)
class SARDaskResult:
    """``SAR.recommend``'s DataFrame, the fit and predict wall times and each worker's peak RSS; with
    ``return_train``, the train table the fit read (so that a caller logging it need not read it again)."""

    recommendations: pd.DataFrame
    fit_seconds: float
    predict_seconds: float
    worker_peak_rss_mb: dict[str, float]
    train: pd.DataFrame | None = None


@dataclass(frozen=True)
class Shard:
    """Items [start, stop) of the similarity, held as S[:, start:stop] by ``worker`` (``similarity``),
    which runs its kernels on ``threads`` threads."""

    start: int
    stop: int
    worker: str
    threads: int
    similarity: distributed.Future


PEAK_RSS = "sar-dask-peak-rss"


def peak_rss_plugin(interval: float = 0.05) -> distributed.WorkerPlugin:
    """A worker plugin that samples its worker's resident memory every ``interval`` s, keeping the peak.

    The class is made here rather than at module level so that cloudpickle ships it by value: workers
    run it without importing this module and Prefect (up to 10 s per worker process on a busy machine).
    """

    class PeakRSS(distributed.WorkerPlugin):
        name = PEAK_RSS

        def __init__(self) -> None:
            self.peak_bytes = 0

        def setup(self, worker: distributed.Worker) -> None:
            process = psutil.Process()
            self._stop = threading.Event()

            def sample() -> None:
                while True:
                    self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
                    if self._stop.wait(interval):
                        return

            threading.Thread(target=sample, name=PEAK_RSS, daemon=True).start()

        def teardown(self, worker: distributed.Worker) -> None:
            self._stop.set()

    return PeakRSS()


def worker_peak_rss_mb(client: distributed.Client) -> dict[str, float]:
    """Each worker's peak resident memory (MB) since ``peak_rss_plugin`` was registered."""
    return client.run(lambda dask_worker: dask_worker.plugins[PEAK_RSS].peak_bytes / 2**20)


def dask_task_runner(dask_address: str | None = None, n_workers: int | None = None) -> DaskTaskRunner:
    """Attach to the scheduler at ``dask_address``, or start a LocalCluster of ``n_workers`` processes.

    The LocalCluster has one single-threaded worker per core by default (each worker's SAR kernels
    then run on one thread) and shares the machine's memory between them.
    """
    if dask_address is not None:
        if n_workers is not None:
            raise InvalidConfig(
                f"n_workers={n_workers} sizes a new LocalCluster, but dask_address={dask_address!r} attaches "
                "to a running one; pass one of them (start more `dask worker`s to grow that cluster)."
            )
        return DaskTaskRunner(address=dask_address)
    n_workers = (os.cpu_count() or 1) if n_workers is None else n_workers
    if n_workers < 1:
        raise InvalidConfig(f"n_workers={n_workers} must be >= 1 (or None for one worker per core).")
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": n_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


def column_shards(n_items: int, n_shards: int) -> list[tuple[int, int]]:
    """``n_shards`` consecutive item ranges (start, stop) of near-equal width, none empty."""
    bounds = np.linspace(0, n_items, min(n_shards, n_items) + 1).round().astype(int).tolist()
    return list(itertools.pairwise(bounds))


def _submit_to(
    client: distributed.Client, worker: str, threads: int, function: Any, *args: Any
) -> distributed.Future:
    """``function(*args)`` on ``threads`` threads of ``worker``, which holds the shard it needs
    (elsewhere only if it is gone)."""
    return client.submit(with_threads, threads, function, *args, workers=[worker], allow_other_workers=True)


def _wait(client: distributed.Client, futures: list[distributed.Future]) -> None:
    """Wait for futures without fetching their results; raise the first error."""
    with client.as_current():
        distributed.wait(futures)
    for future in futures:
        if future.status == "error":
            future.result()


@task(name="sar-dask-fit", cache_policy=NO_CACHE, persist_result=False)
def fit_shards(
    client: distributed.Client, params: dict[str, Any], train: pd.DataFrame
) -> tuple[SAR, list[Shard]]:
    """``SAR(**params)``'s ids and affinities here, its similarity in one column shard per worker."""
    model = SAR(**params).fit_affinity(train)
    client.wait_for_workers(1)
    workers = client.scheduler_info()["workers"]
    seen = client.scatter(model.seen_, broadcast=True, hash=False)
    columns = column_shards(len(model.items_), len(workers))
    shards = [
        Shard(
            start,
            stop,
            worker,
            workers[worker]["nthreads"],
            _submit_to(
                client,
                worker,
                workers[worker]["nthreads"],
                similarity_columns,
                seen,
                slice(start, stop),
                model.similarity,
                model.support_threshold,
            ),
        )
        for worker, (start, stop) in zip(sorted(workers), columns, strict=False)
    ]
    _wait(client, [s.similarity for s in shards])
    return model, shards


@task(name="sar-dask-recommend", cache_policy=NO_CACHE, persist_result=False)
def recommend_shards(
    client: distributed.Client,
    inputs: ScoringInputs,
    shards: list[Shard],
    items: IdIndex,
    k: int,
    exclude_seen: bool,
    block_size: int,
    rating_range: tuple[float, float],
) -> pd.DataFrame:
    """Each shard's top ``k`` per user, computed where the shard lives, merged into SAR.recommend's frame."""
    rows = client.scatter(replace(inputs, unit_affinity=None), broadcast=True, hash=False)
    normalize = None
    if inputs.unit_affinity is not None:
        unit = client.scatter(inputs.unit_affinity, broadcast=True, hash=False)
        ranges = client.gather(
            [
                _submit_to(client, s.worker, s.threads, unit_score_range, unit, s.similarity, block_size)
                for s in shards
            ]
        )
        low = np.minimum.reduce([low for low, _ in ranges])
        high = np.maximum.reduce([high for _, high in ranges])
        normalize = (low, high, *rating_range)
    tops = client.gather(
        [
            _submit_to(
                client,
                s.worker,
                s.threads,
                top_k_items,
                rows,
                s.similarity,
                k,
                exclude_seen,
                block_size,
                s.start,
                normalize,
            )
            for s in shards
        ]
    )
    positions, scores = merge_top_k(tops, k)
    return recommendations_frame(inputs.user_ids, positions, scores, items)


@flow(name="sar-dask", task_runner=dask_task_runner())
def sar_dask(
    train_path: str,
    users: list[int] | None = None,
    k: int = 10,
    exclude_seen: bool = True,
    params: dict[str, Any] | None = None,
    fold_in_path: str | None = None,
    return_train: bool = False,
) -> SARDaskResult:
    """Fit ``SAR(**params)`` on the train Parquet file and return ``recommend(users, k, exclude_seen)``
    (or ``recommend_fold_in`` of the history at ``fold_in_path``), computed on the flow's Dask cluster;
    ``return_train`` hands back the train table it read (held until the caller drops the result).

    Call it through :func:`run_sar_dask`, which picks the cluster.
    """
    check_k(k)
    params = params or {}
    try:
        SAR(**params)
    except TypeError as exc:
        raise InvalidConfig(f"bad SAR parameters {params}: {exc}; see help(recmodels.sar.SAR).") from None
    client = FlowRunContext.get().task_runner.client
    client.register_plugin(peak_rss_plugin())
    try:
        start = time.perf_counter()
        train = storage.read_parquet(train_path)
        model, shards = fit_shards(client, params, train)
        if not return_train:
            train = None
        fit_seconds = time.perf_counter() - start
        inputs = (
            model.scoring_inputs(users)
            if fold_in_path is None
            else model.fold_in_inputs(storage.read_parquet(fold_in_path))
        )
        recommendations = recommend_shards(
            client, inputs, shards, model.items_, k, exclude_seen, model.block_size, model.rating_range_
        )
        predict_seconds = time.perf_counter() - start - fit_seconds
        peaks = worker_peak_rss_mb(client)
    finally:
        client.unregister_worker_plugin(PEAK_RSS)  # an attached cluster outlives the flow
    get_run_logger().info(
        "SAR on %d Dask workers: %d users × %d items, fit %.1f s, predict %.1f s, peak RSS per worker %s MB",
        len(peaks),
        len(model.users_),
        len(model.items_),
        fit_seconds,
        predict_seconds,
        {w: round(mb) for w, mb in peaks.items()},
    )
    items_of = {s.worker: f"{s.start}:{s.stop}" for s in shards}
    create_table_artifact(
        [
            {"worker": w, "similarity_items": items_of.get(w, "-"), "peak_rss_mb": round(mb, 1)}
            for w, mb in peaks.items()
        ],
        key="sar-dask-workers",
        description=f"SAR similarity shard and peak RSS of each Dask worker ({len(model.items_)} items)",
    )
    return SARDaskResult(recommendations, fit_seconds, predict_seconds, peaks, train)


def run_sar_dask(
    train_path: str,
    users: list[int] | None = None,
    k: int = 10,
    exclude_seen: bool = True,
    params: dict[str, Any] | None = None,
    fold_in_path: str | None = None,
    dask_address: str | None = None,
    n_workers: int | None = None,
    return_train: bool = False,
) -> SARDaskResult:
    """Run the ``sar-dask`` subflow on the scheduler at ``dask_address`` (e.g. ``tcp://host:8786``,
    started with ``dask scheduler`` and ``dask worker``) or on a new LocalCluster of ``n_workers``."""
    runner = dask_task_runner(dask_address, n_workers)
    return sar_dask.with_options(task_runner=runner)(
        train_path, users, k, exclude_seen, params, fold_in_path, return_train
    )
