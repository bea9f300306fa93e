"""SAR on Dask: column shards equal the single-node SAR, and so does the ``sar-dask`` subflow on a real
LocalCluster and on a ``dask scheduler`` + ``dask worker`` cluster attached by address.

Equality is exact (same items, same order, bit-identical float64 scores): the shards run the
single-node code on slices of the same arrays.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import distributed
import numpy as np
import pandas as pd
import pytest

from recmodels import sar
from recmodels._columns import ITEM, RATING, TIMESTAMP, USER
from recmodels.base import recommendations_frame
from recmodels.errors import InvalidConfig
from recmodels.sar import SAR
from recmodels.synthetic import generate_synthetic
from tasks.sar_dask import column_shards, dask_task_runner, run_sar_dask

REPO = Path(__file__).resolve().parents[1]
PARAMS = [
    {},
    {"similarity": "lift", "normalize": True},
    {"similarity": "counts", "time_decay_days": None, "support_threshold": 3},  # integer scores: many ties
    {"similarity": "cosine", "time_decay_days": 7.0, "normalize": True},
    {"similarity": "inclusion index", "time_decay_days": None},
]


@pytest.fixture(scope="module")
def ml100k(mirror: Path) -> pd.DataFrame:
    return pd.read_csv(mirror / "ml-100k" / "u.data", sep="\t", names=[USER, ITEM, RATING, TIMESTAMP])


@pytest.fixture(scope="module")
def synthetic() -> pd.DataFrame:
    return generate_synthetic(500, 600, 15_000, seed=3)  # 22% of the users hold > 5% of the items


def sharded_recommend(model: SAR, n_shards: int, k: int) -> pd.DataFrame:
    """What sar-dask computes, without Dask, on one thread per shard: every shard's top k, merged."""
    inputs = model.scoring_inputs()
    shards = column_shards(len(model.items_), n_shards)
    similarity = [
        sar.with_threads(
            1, sar.similarity_columns, model.seen_, slice(*c), model.similarity, model.support_threshold
        )
        for c in shards
    ]
    normalize = None
    if inputs.unit_affinity is not None:
        ranges = [sar.unit_score_range(inputs.unit_affinity, s, block_size=64) for s in similarity]
        low, high = np.minimum.reduce([r[0] for r in ranges]), np.maximum.reduce([r[1] for r in ranges])
        normalize = (low, high, *model.rating_range_)
    tops = [
        sar.with_threads(1, sar.top_k_items, inputs, s, k, True, 64, c[0], normalize)
        for s, c in zip(similarity, shards, strict=True)
    ]
    return recommendations_frame(inputs.user_ids, *sar.merge_top_k(tops, k), model.items_)


# --- the shard functions, without a cluster ----------------------------------------------------------------


@pytest.mark.parametrize("kind", sar.SIMILARITIES)
@pytest.mark.parametrize("threshold", [1, 4])
def test_similarity_columns_equal_the_sparse_similarity(synthetic, kind, threshold):
    model = SAR(similarity=kind, support_threshold=threshold).fit(synthetic)
    full = sar.similarity_from_cooccurrence(sar.cooccurrence(model.seen_), kind, threshold).toarray()
    np.testing.assert_array_equal(model.similarity_, full)
    for start, stop in [(0, 1), (37, 301), (599, 600)]:
        shard = sar.similarity_columns(model.seen_, slice(start, stop), kind, threshold)
        np.testing.assert_array_equal(shard, full[:, start:stop])


def test_merge_top_k_orders_by_score_then_item_and_drops_exclusions():
    # Two shards (items 0-2 and 3-5) of two users; -1 marks an excluded item (-inf).
    left = (np.array([[2, 0, -1], [1, 0, 2]]), np.array([[0.5, 0.25, -np.inf], [0.75, 0.5, 0.5]]))
    right = (np.array([[4, 3, 5], [3, -1, -1]]), np.array([[0.5, 0.5, 0.1], [0.5, -np.inf, -np.inf]]))
    positions, scores = sar.merge_top_k([left, right], k=4)
    # User 0: 0.5 ties among items 2, 3, 4 → by item; user 1: 0.5 ties among 0, 2, 3.
    np.testing.assert_array_equal(positions, [[2, 3, 4, 0], [1, 0, 2, 3]])
    np.testing.assert_array_equal(scores, [[0.5, 0.5, 0.5, 0.25], [0.75, 0.5, 0.5, 0.5]])
    positions, _ = sar.merge_top_k([left, right], k=10)  # k above the 6 candidates: exclusions last
    np.testing.assert_array_equal(positions, [[2, 3, 4, 0, 5, -1], [1, 0, 2, 3, -1, -1]])


def test_column_shards_cover_the_items_once():
    assert column_shards(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert column_shards(2, 5) == [(0, 1), (1, 2)]  # never an empty shard


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("n_shards", [1, 3])
def test_shards_equal_single_node(synthetic, params, n_shards):
    model = SAR(**params).fit(synthetic)  # on every core, 1,024 users per thread
    expected = model.recommend(k=7)
    pd.testing.assert_frame_equal(sharded_recommend(model, n_shards, k=7), expected, check_exact=True)


# --- the sar-dask subflow on real clusters -----------------------------------------------------------------


def test_flow_on_a_local_cluster_equals_single_node_on_ml100k(prefect_api, ml100k, tmp_path):
    train_path = tmp_path / "train.parquet"
    ml100k.to_parquet(train_path)
    users = [5, 999_999, 1, 943, 5, 200]  # order kept, duplicates and unknown users dropped
    result = run_sar_dask(str(train_path), users=users, k=10, n_workers=2, return_train=True)
    expected = SAR().fit(ml100k).recommend(users, k=10)
    pd.testing.assert_frame_equal(result.recommendations, expected, check_exact=True)
    pd.testing.assert_frame_equal(result.train, ml100k, check_exact=True)  # the table the fit read
    assert result.recommendations[USER].unique().tolist() == [5, 1, 943, 200]
    assert len(result.worker_peak_rss_mb) == 2
    assert all(100 < mb < 4000 for mb in result.worker_peak_rss_mb.values())
    assert result.fit_seconds > 0 and result.predict_seconds > 0


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``dask scheduler`` and ``dask worker --nworkers 2`` processes; yields the scheduler's address."""
    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    dask = str(Path(sys.executable).parent / "dask")
    scheduler = subprocess.Popen(
        [
            dask,
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
        ],
        env=env,
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    workers = None
    try:
        deadline = time.monotonic() + 120
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        workers = subprocess.Popen(
            [dask, "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
            env=env,
            start_new_session=True,
            stderr=subprocess.DEVNULL,
        )
        with distributed.Client(address) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in (workers, scheduler):
            if process is not None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.parametrize("params", [PARAMS[1], PARAMS[2]])
def test_flow_attached_by_address_equals_single_node(prefect_api, dask_cluster, synthetic, tmp_path, params):
    train_path = tmp_path / "train.parquet"
    synthetic.to_parquet(train_path)
    result = run_sar_dask(str(train_path), k=8, params=params, dask_address=dask_cluster)
    expected = SAR(**params).fit(synthetic).recommend(k=8)
    pd.testing.assert_frame_equal(result.recommendations, expected, check_exact=True)
    assert result.train is None  # not held unless asked for
    assert len(result.worker_peak_rss_mb) == 2


def test_flow_fold_in_equals_single_node(prefect_api, dask_cluster, synthetic, tmp_path):
    users = synthetic[USER].unique()
    history = synthetic[synthetic[USER].isin(users[:40])].assign(**{USER: lambda f: f[USER] + 10_000})
    train = synthetic[~synthetic[USER].isin(users[:40])]
    train.to_parquet(tmp_path / "train.parquet")
    history.to_parquet(tmp_path / "history.parquet")
    result = run_sar_dask(
        str(tmp_path / "train.parquet"),
        k=5,
        params={"normalize": True},
        fold_in_path=str(tmp_path / "history.parquet"),
        dask_address=dask_cluster,
    )
    expected = SAR(normalize=True).fit(train).recommend_fold_in(history, k=5)
    pd.testing.assert_frame_equal(result.recommendations, expected, check_exact=True)


# --- errors ------------------------------------------------------------------------------------------------


def test_cluster_choice_errors():
    with pytest.raises(InvalidConfig, match="pass one of them"):
        dask_task_runner("tcp://127.0.0.1:8786", n_workers=2)
    with pytest.raises(InvalidConfig, match="n_workers=0 must be >= 1"):
        dask_task_runner(n_workers=0)


def test_flow_rejects_bad_k_and_parameters(prefect_api, tmp_path):
    with pytest.raises(InvalidConfig, match="k=0 must be >= 1"):
        run_sar_dask(str(tmp_path / "train.parquet"), k=0, n_workers=1)
    with pytest.raises(InvalidConfig, match=r"bad SAR parameters .*alpha.*help\(recmodels.sar.SAR\)"):
        run_sar_dask(str(tmp_path / "train.parquet"), params={"alpha": 1}, n_workers=1)
    with pytest.raises(InvalidConfig, match="similarity 'pearson' is unknown"):
        run_sar_dask(str(tmp_path / "train.parquet"), params={"similarity": "pearson"}, n_workers=1)
