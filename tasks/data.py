"""Prefect tasks for the data steps: download → parse → filter → split → transpose → prepared folder.

Each task is a thin wrapper around :mod:`recmodels`; the caching lives in files under ``<home>``
(``interactions/<release>.parquet``, ``prepared/<key>/``; the raw release in the local cache when
``<home>`` is a URL, see ``tasks/storage.py``), so it holds across processes, machines that share
``<home>``, and Prefect servers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from recmodels import datasets, preprocessing, synthetic
from recmodels.preprocessing import Split
from tasks import storage
from tasks.prepared import PreparedData, write_prepared


def interactions_path(home: str, size: str) -> str:
    return storage.join(home, "interactions", f"{size}.parquet")


def check_size(size: str) -> None:
    """Raise UnknownDataset (listing the valid names) unless ``size`` is a release or synthetic shape."""
    if size.startswith("synthetic-"):
        synthetic.parse_synthetic_name(size)
    else:
        datasets.get_release(size)


@task(name="download", retries=3, retry_delay_seconds=[2, 10, 30], cache_policy=NO_CACHE)
def download(size: str, home: str, mirror: str | None) -> Path | None:
    """Fetch and verify a GroupLens release (from GroupLens or the mirror) into the local cache of
    ``home``; None for synthetic data."""
    if size.startswith("synthetic-"):
        return None
    return datasets.fetch_release(size, storage.local_dir(home), mirror=mirror, progress=False)


@task(name="parse", cache_policy=NO_CACHE)
def parse(size: str, raw_dir: Path | None, home: str, seed: int = 0) -> str:
    """Parse the release into the canonical Parquet table (or generate synthetic data), once per home."""
    logger = get_run_logger()
    out = interactions_path(home, size)
    if storage.exists(out):
        logger.info("cache hit: %s already parsed at %s, skipping parse", size, out)
        return out
    if raw_dir is None:
        shape = synthetic.parse_synthetic_name(size)
        frame = synthetic.generate_synthetic(shape.n_users, shape.n_items, shape.n_interactions, seed=seed)
    else:
        release = datasets.get_release(size)
        frame = datasets.parse_ratings(raw_dir / release.ratings_file, release.fmt)
    storage.write_parquet_atomic(frame, out)
    logger.info("parsed %s: %d interactions → %s", size, len(frame), out)
    return out


@task(name="filter", cache_policy=NO_CACHE)
def filter_interactions(
    path: str, min_user_interactions: int, min_item_interactions: int, implicit_threshold: float | None
) -> pd.DataFrame:
    """Optional implicit conversion, then the iterative k-core filter."""
    frame = storage.read_parquet(path)
    if implicit_threshold is not None:
        frame = preprocessing.to_implicit(frame, threshold=implicit_threshold)
    filtered = preprocessing.filter_min_interactions(frame, min_user_interactions, min_item_interactions)
    get_run_logger().info(
        "k-core (users ≥%d, items ≥%d): %d → %d interactions, %d users, %d items",
        min_user_interactions,
        min_item_interactions,
        len(frame),
        len(filtered),
        filtered["user_id"].nunique(),
        filtered["item_id"].nunique(),
    )
    return filtered


@task(name="transpose", cache_policy=NO_CACHE)
def transpose(frame: pd.DataFrame) -> pd.DataFrame:
    """Swap users and items (the seed PoC's "transpose & split")."""
    return preprocessing.transpose(frame)


@task(name="split", cache_policy=NO_CACHE)
def split(frame: pd.DataFrame, strategy: str, params: dict[str, Any]) -> Split:
    result = preprocessing.split(frame, strategy, **params)
    get_run_logger().info(
        "%s split: %s", strategy, {name: len(part) for name, part in result.frames().items()}
    )
    return result


@task(name="write-prepared", cache_policy=NO_CACHE)
def write(home: str, key: str, result: Split, params: dict[str, Any]) -> PreparedData:
    prepared = write_prepared(home, key, result, params)
    get_run_logger().info("prepared data %s written to %s", key, prepared.folder)
    return prepared
