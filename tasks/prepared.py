"""The prepared-data cache: ``<home>/prepared/<key>/{train,validation,test,...}.parquet`` + ``manifest.json``.

``<key>`` hashes everything that determines the prepared data, including the source code of the data
steps, so the same key means the same data and a changed parameter or data step means a new folder.
Folders are built under a temporary name and renamed into place with ``manifest.json`` inside, so a
folder without a manifest is never read, a crashed run leaves nothing half-written behind the key, and
two runs preparing the same key at once both end with one complete folder.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

import recmodels._columns
import recmodels.datasets
import recmodels.preprocessing
import recmodels.synthetic
from recmodels.preprocessing import Split

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
    """A complete prepared-data folder and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def key(self) -> str:
        return self.path.name

    def read(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.path / f"{name}.parquet")

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]


def load_prepared(home: Path, key: str) -> PreparedData | None:
    """The folder for ``key`` if it is complete (has a manifest), else None."""
    path = home / "prepared" / key
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return PreparedData(path, manifest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` to ``path`` under a temporary name, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_prepared(home: Path, key: str, split: Split, params: dict[str, Any]) -> PreparedData:
    """Write ``split`` under ``prepared/<key>`` atomically; if another run got there first, keep theirs."""
    root = home / "prepared"
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    if (existing := load_prepared(home, key)) is not None:
        return existing
    if final.exists():  # incomplete leftover of a crashed run: rebuild
        shutil.rmtree(final, ignore_errors=True)
    tmp = root / f".{key}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        files: dict[str, dict[str, Any]] = {}
        for name, frame in split.frames().items():
            path = tmp / f"{name}.parquet"
            frame.to_parquet(path, index=False)
            files[name] = {
                "rows": len(frame),
                "users": int(frame["user_id"].nunique()),
                "items": int(frame["item_id"].nunique()),
                "sha256": _sha256(path),
            }
        manifest = {"key": key, "params": params, "code_version": data_code_version(), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        try:
            os.rename(tmp, final)
        except OSError:  # another run renamed its complete folder into place first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prepared = load_prepared(home, key)
    assert prepared is not None, f"{final} has no manifest after writing it"
    return prepared
