"""The Prefect API a local ``movielens-benchmark run`` talks to, found or started before Prefect loads.

Without ``PREFECT_API_URL`` Prefect starts a temporary server itself when the flow is called: it imports
``prefect.server`` into the calling process (seconds of CPU, only to reach the class that launches the
server), launches ``uvicorn`` with the server app in a subprocess, and waits for its health check while
this process sits idle. That subprocess spends its ~10 s importing the server's modules (FastAPI,
SQLAlchemy, every API route and model) and opening its SQLite database. :func:`local_api` does the same
launch before the CLI imports Prefect and MLflow, so that the server's start overlaps the CLI's own
imports (two processes, two cores), and points Prefect at it through ``PREFECT_API_URL``; or it reuses a
server that already answers (the one ``movielens-benchmark stack up`` runs), and says so.

Order of choice:

1. ``PREFECT_API_URL`` set (environment, Prefect profile, or a settings context already loaded): Prefect
   uses it; nothing to do.
2. A Prefect server answers at ``http://127.0.0.1:4200/api`` (the stack's default): reused, logged.
3. Otherwise a temporary server on a free local port, as Prefect's own (same command and settings:
   no UI, ephemeral mode), stopped when the process exits; in its own session, so that Ctrl-C reaches
   the CLI and not the server (:mod:`flows.interrupts`).

Temporary servers of runs started at the same moment share ``$PREFECT_HOME/prefect.db``, and each one
migrates it as it starts: on a fresh database they race (``duplicate column name: max_scheduled_runs``,
server exit 3). So a temporary server starts under a file lock in ``$PREFECT_HOME``, held until it answers:
the next run's server then finds the database migrated.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from flows.interrupts import detached_child
from recmodels.errors import BenchmarkError

RUNNING_SERVER_URL = "http://127.0.0.1:4200/api"  # `movielens-benchmark stack up`'s Prefect server


@dataclass
class LocalAPI:
    """The API this run uses: ``url``, where it came from (``source``), and the server process we own."""

    url: str
    source: str  # "running server" or "temporary server"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    previous_url: str | None = field(default=None, repr=False)
    start_lock: FileLock | None = field(default=None, repr=False)  # held while a temporary server starts

    def wait(self, timeout: float) -> None:
        """Block until the server answers its health check (a temporary server may still be starting)."""
        try:
            self._wait(timeout)
        finally:
            self.release_start_lock()

    def release_start_lock(self) -> None:
        """Let the next run's temporary server start (this one answers, failed, or is not needed)."""
        if self.start_lock is not None and self.start_lock.is_locked:
            self.start_lock.release()

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not _healthy(self.url):
            if self.process is not None and self.process.poll() is not None:
                raise BenchmarkError(
                    f"the temporary Prefect server exited with code {self.process.returncode} before answering "
                    f"at {self.url}; run `prefect server start` to see why, or set PREFECT_API_URL to a server."
                )
            if time.monotonic() > deadline:
                self.stop()
                raise BenchmarkError(
                    f"the temporary Prefect server did not answer at {self.url} within {timeout:.0f} s; "
                    "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or set PREFECT_API_URL to a server."
                )
            time.sleep(0.05)

    def restore_environment(self) -> None:
        """``PREFECT_API_URL`` as it was before :func:`local_api`."""
        self.release_start_lock()
        if self.previous_url is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = self.previous_url

    def stop(self) -> None:
        """Stop the server we started (at exit: registered before Prefect loads, it runs after Prefect's own
        exit handlers have flushed their logs and events to it, as Prefect's temporary server does)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def local_api(running_server_url: str = RUNNING_SERVER_URL) -> LocalAPI | None:
    """Reuse the server at ``running_server_url`` or start a temporary one (module docstring), and set
    ``PREFECT_API_URL`` to it; ``None`` where Prefect already has an API URL."""
    if configured_api_url() or settings_loaded():
        return None
    previous = os.environ.get("PREFECT_API_URL")
    if _healthy(running_server_url, timeout=0.3):
        os.environ["PREFECT_API_URL"] = running_server_url
        return LocalAPI(running_server_url, "running server", previous_url=previous)
    lock = _start_lock()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    api = LocalAPI(url, "temporary server", _start_server(port), previous_url=previous, start_lock=lock)
    atexit.register(api.stop)
    os.environ["PREFECT_API_URL"] = url
    return api


def settings_loaded() -> bool:
    """Whether Prefect's settings are loaded in this process: it then no longer reads ``PREFECT_API_URL``
    from the environment, so a server started here would go unused (Prefect starts its own)."""
    return "prefect.settings" in sys.modules


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` as Prefect will see it, read without importing Prefect where it is not loaded
    yet: the environment, else the active profile of ``$PREFECT_HOME/profiles.toml``."""
    if "prefect.settings" in sys.modules:  # e.g. a test harness's temporary settings
        from prefect.settings import PREFECT_API_URL

        return PREFECT_API_URL.value() or None
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    path = Path(os.environ.get("PREFECT_PROFILES_PATH", prefect_home() / "profiles.toml")).expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL") or None


def prefect_home() -> Path:
    """``$PREFECT_HOME`` (default ``~/.prefect``), where the temporary servers' database lives."""
    return Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()


def _start_lock() -> FileLock:
    """The lock a temporary server starts under (module docstring), acquired: other runs' servers are
    waited for as long as one may take to start."""
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20"))
    lock = FileLock(home / ".temporary-server.lock")
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise BenchmarkError(
            f"another run's temporary Prefect server held {lock.lock_file} for {timeout:.0f} s while starting; "
            "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or run `movielens-benchmark stack up`."
        ) from None
    return lock


def _healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200 and json.loads(response.read() or b"false") is True
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(port: int) -> subprocess.Popen[bytes]:
    """Prefect's temporary server command (``SubprocessASGIServer._run_uvicorn_command``), on ``port``."""
    import importlib.util

    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent)]
    command += [
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    command += ["--log-level", "error", "--lifespan", "on"]
    # Its own session: the terminal's Ctrl-C reaches the CLI, which stops the server at exit (and the kernel
    # does where the CLI is killed: flows/interrupts.py).
    return subprocess.Popen(command, env=env, **detached_child())
