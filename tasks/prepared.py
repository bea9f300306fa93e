"""The prepared-data cache: ``<home>/prepared/<key>/{train,validation,test,...}.parquet`` + ``manifest.json``.

``<key>`` hashes everything that determines the prepared data, including the source code of the data
steps, so the same key means the same data and a changed parameter or data step means a new folder.
``<home>`` is a local folder or an fsspec URL (``tasks/storage.py``). ``manifest.json`` is what makes a
folder complete: a folder without it is never read and is rebuilt. On a local disk the folder is built
under a temporary name and renamed into place with its manifest inside; on an object store (no folder
rename there) each file is published whole and the manifest last. Either way a crashed run leaves
nothing readable half-written, and two runs preparing the same key at once both end with one complete
folder of the same data.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

import recmodels._columns
import recmodels.datasets
import recmodels.preprocessing
import recmodels.synthetic
from recmodels.preprocessing import Split
from tasks import storage

MANIFEST = "manifest.json"
DATA_STEP_MODULES = (recmodels._columns, recmodels.datasets, recmodels.synthetic, recmodels.preprocessing)


def data_code_version() -> str:
    """Short hash of the source of the data steps: editing them invalidates the cache."""
    digest = hashlib.sha256()
    for module in DATA_STEP_MODULES:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:12]


def prepared_key(params: dict[str, Any]) -> str:
    """Short, stable hash of the data parameters and the data-step code version."""
    payload = json.dumps({**params, "code": data_code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PreparedData:
    """A complete prepared-data folder (a local path or URL) and its manifest."""

    folder: str
    manifest: dict[str, Any]

    @property
    def key(self) -> str:
        return self.folder.rstrip("/").rpartition("/")[2]

    def file(self, name: str) -> str:
        return storage.join(self.folder, f"{name}.parquet")

    def read(self, name: str) -> pd.DataFrame:
        return storage.read_parquet(self.file(name))

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]


def prepared_folder(home: str, key: str) -> str:
    return storage.join(home, "prepared", key)


def load_prepared(home: str, key: str) -> PreparedData | None:
    """The folder for ``key`` if it is complete (has a manifest), else None."""
    folder = prepared_folder(home, key)
    try:
        manifest = json.loads(storage.read_text(storage.join(folder, MANIFEST)))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return PreparedData(folder, manifest)


def _describe(frame: pd.DataFrame, data: bytes) -> dict[str, Any]:
    """Rows, checksum and, for interaction tables (scalar id columns), the users and items."""
    description: dict[str, Any] = {"rows": len(frame), "sha256": hashlib.sha256(data).hexdigest()}
    for column, name in (("user_id", "users"), ("item_id", "items")):
        if column in frame and frame[column].dtype != object:
            description[name] = int(frame[column].nunique())
    return description


def write_prepared(home: str, key: str, split: Split, params: dict[str, Any]) -> PreparedData:
    """Write ``split`` under ``prepared/<key>`` atomically; if another run got there first, keep theirs."""
    return write_prepared_frames(home, key, split.frames(), params)


def write_prepared_frames(
    home: str, key: str, frames: dict[str, pd.DataFrame], params: dict[str, Any]
) -> PreparedData:
    """Write ``frames`` (file stem → table) under ``prepared/<key>`` atomically, manifest last; if another
    run got there first, keep theirs.

    Writers of one key on one machine take turns (a file lock); temporary folders of killed runs
    (``prepared/.<key>.<uuid>.tmp``) are removed then. The flow also holds ``prepared-<key>`` from its
    cache check to here, so that the split is computed once."""
    with storage.lock(home, f"write-prepared-{key}"):
        if (existing := load_prepared(home, key)) is not None:
            return existing
        folder = prepared_folder(home, key)
        if storage.is_local(home):
            _write_local(folder, key, frames, params)
        else:
            _write_object_store(folder, key, frames, params)
    prepared = load_prepared(home, key)
    assert prepared is not None, f"{folder} has no manifest after writing it"
    return prepared


def _manifest(key: str, params: dict[str, Any], files: dict[str, dict[str, Any]]) -> bytes:
    manifest = {"key": key, "params": params, "code_version": data_code_version(), "files": files}
    return json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()


def _write_local(final: str, key: str, frames: dict[str, pd.DataFrame], params: dict[str, Any]) -> None:
    """Build the folder under a temporary name, manifest inside, and rename it into place."""
    if Path(final).exists():  # incomplete leftover of a crashed run: rebuild
        shutil.rmtree(final, ignore_errors=True)
    for leftover in Path(final).parent.glob(f".{key}.*.tmp"):  # of killed runs (we hold the lock)
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(storage.temporary_name(final))
    tmp.mkdir(parents=True)
    try:
        files = {}
        for name, frame in frames.items():
            data = frame.to_parquet(index=False)
            (tmp / f"{name}.parquet").write_bytes(data)
            files[name] = _describe(frame, data)
            recmodels.datasets.pause_point("prepared")
        (tmp / MANIFEST).write_bytes(_manifest(key, params, files))
        try:
            os.rename(tmp, final)
        except OSError:  # another run renamed its complete folder into place first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_object_store(
    folder: str, key: str, frames: dict[str, pd.DataFrame], params: dict[str, Any]
) -> None:
    """Publish each file whole, then the manifest: until it lands the folder is incomplete."""
    files = {}
    for name, frame in frames.items():
        data = frame.to_parquet(index=False)
        storage.write_bytes_atomic(data, storage.join(folder, f"{name}.parquet"))
        files[name] = _describe(frame, data)
    storage.write_bytes_atomic(_manifest(key, params, files), storage.join(folder, MANIFEST))
