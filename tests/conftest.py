"""Shared fixtures: the offline MovieLens mirror, a local Prefect API, isolated homes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

DEFAULT_MIRROR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "movielens"


@pytest.fixture(scope="session", autouse=True)
def prefect_logging_on_the_session_stream() -> None:
    """Prefect sets up its console log handlers once per process, on the ``sys.stderr`` of that moment. Here
    that is pytest's session capture, never a test's ``capsys``/``capfd`` stream: one closes with its test,
    and every later Prefect log line would fail with "I/O operation on closed file"."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()


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

    with prefect_test_harness(
        server_startup_timeout=int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])
    ):
        yield


@pytest.fixture(scope="session")
def s3_bucket() -> Iterator[str]:
    """``s3://<bucket>`` on a real S3-compatible server on 127.0.0.1 (moto's server mode, the dev extra),
    reached through s3fs (the s3 extra) configured as users configure any endpoint: ``AWS_ENDPOINT_URL_S3``
    and credentials in the environment, which processes started later (workers) inherit."""
    pytest.importorskip("s3fs", reason="the s3 extra: pip install -e '.[s3]'")
    server_module = pytest.importorskip("moto.server", reason="the dev extra: pip install -e '.[dev]'")
    import s3fs

    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL_S3", f"http://{host}:{port}")
        patch.setenv("AWS_ACCESS_KEY_ID", "benchmark")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "benchmark")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        s3fs.S3FileSystem.clear_instance_cache()  # instances made before the endpoint was set
        s3fs.S3FileSystem().mkdir("movielens-benchmark-test")
        yield "s3://movielens-benchmark-test"
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()
