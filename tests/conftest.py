"""Shared fixtures: the offline MovieLens mirror, a local Prefect API, isolated homes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

DEFAULT_MIRROR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "movielens"


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The folder of real GroupLens files (``$MOVIELENS_MIRROR`` or ``../shared/datasets/movielens``)."""
    path = Path(os.environ.get("MOVIELENS_MIRROR", DEFAULT_MIRROR))
    if not (path / "ml-100k" / "u.data").exists():
        pytest.skip(f"no MovieLens mirror at {path}: set MOVIELENS_MIRROR to a folder holding ml-100k/")
    return path


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A temporary local Prefect server (SQLite in a temp dir) for the whole test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
