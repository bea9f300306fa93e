"""Prefect tasks for the data steps: download → parse → filter → split → transpose → prepared folder.

Each task is a thin wrapper around :mod:`recmodels`; the caching lives in files under ``<home>``
(``interactions/<release>.parquet``, ``prepared/<key>/``; the raw release in the local cache when
``<home>`` is a URL, see ``tasks/storage.py``), so it holds across processes, machines that share
``<home>``, and Prefect servers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.states import State

from recmodels import datasets, preprocessing, synthetic
from recmodels.errors import BenchmarkError, DownloadFailed, EmptySplit, MalformedRatings, NetworkError
from recmodels.preprocessing import Split
from tasks import storage
from tasks.prepared import PreparedData, data_code_version, write_prepared


def interactions_path(home: str, size: str) -> str:
    return storage.join(home, "interactions", f"{size}.parquet")


def check_size(size: str) -> None:
    """Raise UnknownDataset (listing the valid names) unless ``size`` is a release or synthetic shape."""
    if size.startswith("synthetic-"):
        synthetic.parse_synthetic_name(size)
    else:
        datasets.get_release(size)


def only_network_errors(task: Any, task_run: Any, state: State) -> bool:
    """Prefect retry condition: retry network errors (and unexpected ones), never an error that a retry
    cannot fix (checksum, unsafe or corrupt archive, missing mirror, malformed data)."""
    error = state.data
    return not isinstance(error, BenchmarkError) or isinstance(error, NetworkError)


@task(
    name="download",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=only_network_errors,
    cache_policy=NO_CACHE,
)
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
    out, reused = build_interactions(size, raw_dir, home, seed)
    if reused:
        logger.info("cache hit: %s already parsed at %s (marker verified), skipping parse", size, out)
    else:
        logger.info("parsed %s → %s", size, out)
    return out


def build_interactions(size: str, raw_dir: Path | None, home: str, seed: int = 0) -> tuple[str, bool]:
    """``interactions/<size>.parquet`` and whether it was reused: reused only when its marker
    ``interactions/<size>.json`` (written last) records the same source (the verified raw ratings file's
    SHA-256, or the synthetic shape and seed), the same data-step code and the file's own SHA-256.
    One process per machine builds it at a time (:func:`tasks.storage.lock`)."""
    out, marker_path = interactions_path(home, size), interactions_marker_path(home, size)
    source = _interactions_source(size, raw_dir, seed)
    with storage.lock(home, f"interactions-{size}"):
        if _trusted_interactions(out, marker_path, source):
            return out, True
        storage.remove(marker_path)  # the old marker must never vouch for the new file
        if raw_dir is None:
            shape = synthetic.parse_synthetic_name(size)
            frame = synthetic.generate_synthetic(
                shape.n_users, shape.n_items, shape.n_interactions, seed=seed
            )
        else:
            release = datasets.get_release(size)
            try:
                frame = datasets.parse_ratings(raw_dir / release.ratings_file, release.fmt)
            except MalformedRatings:  # never keep bad data: the next run fetches the release again
                datasets.discard_release(size, raw_dir.parent.parent)
                raise
        data = frame.to_parquet(index=False)
        storage.write_bytes_atomic(data, out)
        datasets.pause_point("parse")
        marker = {"size": size, "source": source, "code": data_code_version(), "rows": len(frame)}
        marker["sha256"] = hashlib.sha256(data).hexdigest()
        storage.write_bytes_atomic(json.dumps(marker, indent=2, sort_keys=True).encode(), marker_path)
    return out, False


def interactions_marker_path(home: str, size: str) -> str:
    return storage.join(home, "interactions", f"{size}.json")


def _interactions_source(size: str, raw_dir: Path | None, seed: int) -> dict[str, Any]:
    if raw_dir is None:
        return {"synthetic": size, "seed": seed}
    marker = datasets.verified_marker(datasets.get_release(size), raw_dir)
    if marker is None:
        raise DownloadFailed(f"{raw_dir} is not a verified copy of {size}; delete it and run again.")
    return {"release": size, "ratings_sha256": marker["ratings_sha256"]}


def _trusted_interactions(out: str, marker_path: str, source: dict[str, Any]) -> bool:
    try:
        marker = json.loads(storage.read_text(marker_path))
        return (
            marker["source"] == source
            and marker["code"] == data_code_version()
            and hashlib.sha256(storage.read_bytes(out)).hexdigest() == marker["sha256"]
        )
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return False


@task(name="filter", cache_policy=NO_CACHE)
def filter_interactions(
    path: str, min_user_interactions: int, min_item_interactions: int, implicit_threshold: float | None
) -> pd.DataFrame:
    """Optional implicit conversion, then the iterative k-core filter."""
    frame = storage.read_parquet(path)
    if implicit_threshold is not None:
        frame = preprocessing.to_implicit(frame, threshold=implicit_threshold)
    filtered = preprocessing.filter_min_interactions(frame, min_user_interactions, min_item_interactions)
    n_users, n_items = filtered["user_id"].nunique(), filtered["item_id"].nunique()
    if n_users < 2 or n_items < 2:
        raise EmptySplit(
            f"the filtered data has {n_users} user(s) and {n_items} item(s); a benchmark needs at least 2 of "
            "each: check the data set (its ratings file) or lower --min-interactions."
        )
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
