"""The benchmark home as a local folder or an fsspec URL (``tasks/storage.py``, ``tasks/prepared.py``).

S3 runs against a real S3-compatible server on 127.0.0.1 (conftest's ``s3_bucket``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.benchmark import movielens_benchmark
from recmodels.datasets import benchmark_home
from recmodels.errors import MissingExtra
from recmodels.preprocessing import Split
from tasks import storage
from tasks.prepared import MANIFEST, load_prepared, prepared_folder, write_prepared


@pytest.fixture(scope="module")
def s3_home(s3_bucket: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``s3://<bucket>/home``; the local cache in a temporary folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        patch.delenv("MOVIELENS_BENCHMARK_HOME", raising=False)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield storage.join(s3_bucket, "home")


@pytest.fixture(params=["local", "s3"])
def home(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "home")
    return storage.join(request.getfixturevalue("s3_home"), request.node.name.replace("[", "-").strip("]"))


def _split() -> Split:
    train = pd.DataFrame(
        {"user_id": [1, 1, 2, 2, 3], "item_id": [10, 11, 10, 12, 11], "rating": 1.0, "timestamp": 0}
    )
    test = pd.DataFrame({"user_id": [1, 2], "item_id": [12, 11], "rating": 1.0, "timestamp": 0})
    return Split(train=train, validation=test.iloc[:0], test=test)


def _listing(url: str) -> list[str]:
    fs, path = storage.filesystem(url)
    return sorted(p.rpartition("/")[2] for p in fs.ls(path, detail=False))


def test_resolve_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOVIELENS_BENCHMARK_HOME", "s3://bucket/prefix/")
    assert storage.resolve_home() == "s3://bucket/prefix"
    assert storage.resolve_home(f"file://{tmp_path}") == str(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert storage.resolve_home("~/bench") == str(tmp_path / "bench")
    # A URL in the variable is the flows' shared home; the library's local cache falls back to the default.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert benchmark_home() == tmp_path / "xdg" / "movielens-benchmark"
    assert storage.local_dir("s3://bucket/prefix") == tmp_path / "xdg" / "movielens-benchmark"
    assert storage.local_dir(str(tmp_path / "h")) == tmp_path / "h"
    monkeypatch.delenv("MOVIELENS_BENCHMARK_HOME")
    assert storage.resolve_home() == str(tmp_path / "xdg" / "movielens-benchmark")


def test_protocol_without_its_file_system_names_the_fix() -> None:
    with pytest.raises(MissingExtra, match=r"gcs://.*install"):
        storage.filesystem("gcs://bucket/home")


def test_parquet_written_whole_then_read_back(home: str) -> None:
    frame = _split().train
    url = storage.join(home, "interactions", "x.parquet")
    storage.write_parquet_atomic(frame, url)
    storage.write_parquet_atomic(frame.head(2), url)  # replaces, leaves no temporary file behind
    assert _listing(storage.join(home, "interactions")) == ["x.parquet"]
    pd.testing.assert_frame_equal(storage.read_parquet(url), frame.head(2))


def test_prepared_folder_round_trip(home: str) -> None:
    split = _split()
    prepared = write_prepared(home, "k1", split, {"size": "tiny"})
    assert prepared.folder == prepared_folder(home, "k1") and prepared.key == "k1"
    assert _listing(prepared.folder) == [MANIFEST, "test.parquet", "train.parquet", "validation.parquet"]
    assert prepared.manifest["files"]["train"]["rows"] == 5 and prepared.has("test")
    pd.testing.assert_frame_equal(prepared.read("train"), split.train)
    again = load_prepared(home, "k1")
    assert again is not None and again.manifest == prepared.manifest


def test_folder_without_manifest_is_never_read_and_is_rebuilt(home: str) -> None:
    """What a crash between the data files and the manifest leaves behind."""
    folder = prepared_folder(home, "k2")
    storage.write_bytes_atomic(b"not parquet", storage.join(folder, "train.parquet"))
    assert load_prepared(home, "k2") is None
    prepared = write_prepared(home, "k2", _split(), {})
    pd.testing.assert_frame_equal(prepared.read("train"), _split().train)


def test_concurrent_writers_leave_one_complete_folder(home: str) -> None:
    split = _split()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: write_prepared(home, "k3", split, {"n": 1}), range(4)))
    assert all(r.manifest == results[0].manifest for r in results)
    assert _listing(storage.join(home, "prepared")) == ["k3"]  # no temporary folder left
    assert _listing(results[0].folder) == [MANIFEST, "test.parquet", "train.parquet", "validation.parquet"]
    pd.testing.assert_frame_equal(load_prepared(home, "k3").read("test"), split.test)


def _task_names(flow_run_id) -> set[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0] for run in runs}


def test_flow_on_an_s3_home_prepares_once_and_shares_the_data(
    s3_home: str, mirror: Path, prefect_api: None
) -> None:
    home = storage.join(s3_home, "flow")
    first = movielens_benchmark(home=home, mirror=str(mirror), return_state=True)
    sar = {r["model"]: r for r in first.result()}["sar"]
    assert sar["precision_at_10"] == pytest.approx(0.3308, abs=0.01)  # the same as with a local home
    assert _listing(home) == ["interactions", "prepared", "runs"]
    assert _listing(storage.join(home, "interactions")) == ["100k.json", "100k.parquet"]  # marker, table
    (key,) = _listing(storage.join(home, "prepared"))
    flow_run = str(first.state_details.flow_run_id)
    assert _listing(storage.join(home, "runs", flow_run)) == ["popularity", "sar"]
    # What must be local stays in the local cache: the raw release and the SQLite MLflow store.
    local = Path(os.environ["XDG_CACHE_HOME"]) / "movielens-benchmark"
    assert (local / "raw" / "100k").is_dir()
    client = MlflowClient(f"sqlite:///{local / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("movielens-benchmark").experiment_id])
    assert {r.data.params.get("prepared_key") for r in runs} >= {key}

    rerun = movielens_benchmark(home=home, models=["sar"], sar_backend="dask", return_state=True)
    (dask_sar,) = rerun.result()  # SAR on a Dask LocalCluster, reading the training set from S3
    assert dask_sar["precision_at_10"] == sar["precision_at_10"] and dask_sar["map_at_10"] == sar["map_at_10"]
    names = _task_names(rerun.state_details.flow_run_id)
    assert "train-evaluate" in names and not names & {"download", "parse", "filter", "split"}
    assert _listing(storage.join(home, "prepared")) == [key]
