"""The benchmark home: a local folder or any fsspec URL that every machine of a deployment can read.

``<home>`` (the flow's ``home`` parameter, else ``$MOVIELENS_BENCHMARK_HOME``, else the user's cache
folder) holds ``interactions/``, ``prepared/`` and ``runs/``. A URL such as ``s3://bucket/prefix``
lets a CPU worker and a GPU worker on other machines share the prepared data: install the fsspec
implementation for its protocol (``pip install -e '.[s3]'`` for S3) and configure it the fsspec way,
e.g. ``FSSPEC_S3_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL``) and the usual ``AWS_*`` credentials.

Things that must be local stay in :func:`local_dir`: the downloaded raw releases (extracted zip
files) and the default SQLite MLflow store. Every file goes through fsspec here, never through
pyarrow's own S3 client, so one configuration serves all readers and writers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
import pandas as pd
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from recmodels import datasets
from recmodels.datasets import benchmark_home
from recmodels.errors import MissingExtra

#: The pip extra that brings each object-store protocol's fsspec implementation.
PROTOCOL_EXTRAS = {"s3": "s3", "s3a": "s3"}


def resolve_home(home: str | Path | None = None) -> str:
    """``home``, else ``$MOVIELENS_BENCHMARK_HOME``, else the local cache
    (:func:`recmodels.datasets.benchmark_home`); local folders are made absolute (``~`` expanded,
    ``file://`` dropped) so every process resolves them alike."""
    value = str(home or os.environ.get("MOVIELENS_BENCHMARK_HOME") or benchmark_home())
    if value.startswith("file://"):
        value = value.removeprefix("file://")
    if "://" in value:
        return value.rstrip("/")
    return str(Path(value).expanduser().absolute())


def is_local(url: str) -> bool:
    return isinstance(filesystem(url)[0], LocalFileSystem)


def local_dir(home: str) -> Path:
    """Where this machine keeps what must be local: ``home`` itself, or for a URL home the local cache
    (:func:`recmodels.datasets.benchmark_home`)."""
    return Path(home) if is_local(home) else benchmark_home()


@contextmanager
def lock(home: str, name: str) -> Iterator[None]:
    """Hold the file lock ``<local_dir(home)>/locks/<name>.lock`` for the block.

    It serialises the processes (and threads) of one machine that build the same cached file, so each
    is built once and the others wait, then reuse it. An OS lock: a process killed by SIGKILL releases
    it. For a URL home the lock is on this machine only; machines sharing the URL may each build a file,
    and each publishes it whole (manifest or marker last), so readers never see a torn file.
    """
    with datasets.lock(local_dir(home), name):
        yield


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def remove(url: str) -> None:
    """Delete the file ``url`` if it exists."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path)


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec file system of ``url`` and the path within it; MissingExtra names the extra to install."""
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as error:
        protocol = url.split("://", 1)[0]
        extra = PROTOCOL_EXTRAS.get(protocol)
        fix = f"pip install -e '.[{extra}]'" if extra else f"install fsspec's implementation of {protocol}://"
        raise MissingExtra(f"home {url} needs fsspec's {protocol}:// file system ({error}): {fix}") from error


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def read_parquet(url: str) -> pd.DataFrame:
    fs, path = filesystem(url)
    return pd.read_parquet(path, filesystem=fs)


def read_text(url: str) -> str:
    fs, path = filesystem(url)
    return fs.cat_file(path).decode()


def temporary_name(path: str) -> str:
    """A unique hidden sibling of ``path`` to write before moving into place."""
    head, _, name = path.rpartition("/")
    return f"{head}/.{name}.{uuid.uuid4().hex}.tmp"


def _move_into_place(fs: AbstractFileSystem, tmp: str, path: str) -> None:
    """Rename ``tmp`` to ``path``: atomic on a local disk; on object stores a server-side copy, which
    publishes the object whole (readers never see part of it)."""
    try:
        if isinstance(fs, LocalFileSystem):
            os.replace(tmp, path)
        else:
            fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def write_bytes_atomic(data: bytes, url: str) -> str:
    """Write ``data`` to ``url`` under a temporary name, then move it into place."""
    fs, path = filesystem(url)
    fs.makedirs(path.rpartition("/")[0], exist_ok=True)
    tmp = temporary_name(path)
    fs.pipe_file(tmp, data)
    _move_into_place(fs, tmp, path)
    return url


def write_parquet_atomic(frame: pd.DataFrame, url: str) -> str:
    """Write ``frame`` as Parquet to ``url`` under a temporary name, then move it into place."""
    return write_bytes_atomic(frame.to_parquet(index=False), url)
