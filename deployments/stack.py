"""Bring the benchmark stack up and down on one machine (GitHub issue 5).

The stack is a Prefect server, an MLflow tracking server (SQLite backend store, artifacts folder), one
process worker per work pool (``cpu`` and ``gpu``, process pools created when absent) started in the
project root, and the deployments of ``deployments/prefect.yaml``. Servers bind 127.0.0.1 unless told
otherwise. Everything the stack keeps lives under ``<home>/stack/``::

    <name>.pid  <name>.log     one per process: prefect-server, mlflow, worker-cpu, worker-gpu
    deploy.log                 output of the last `prefect deploy`
    prefect/                   PREFECT_HOME of every stack process (server database, task results)
    mlflow/mlflow.db           MLflow backend store
    mlflow/artifacts/          MLflow artifacts, served by the tracking server

Each process runs in its own session; ``stack_down`` stops exactly the process groups named by the pid
files (a pid file also records the process start time, so a reused pid is never signalled).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from recmodels.errors import StackFailed

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("prefect-server", "mlflow")


@dataclass(frozen=True)
class StackConfig:
    """Where the stack keeps its state, where its servers listen and what it deploys."""

    home: Path
    # The workers' MOVIELENS_BENCHMARK_HOME (a shared folder or an fsspec URL); default: home.
    storage: str | None = None
    prefect_host: str = "127.0.0.1"
    prefect_port: int = 4200
    mlflow_host: str = "127.0.0.1"
    mlflow_port: int = 5000
    mlflow_workers: int = 1
    pools: tuple[str, ...] = ("cpu", "gpu")
    project_root: Path = PROJECT_ROOT
    prefect_file: str = "deployments/prefect.yaml"
    timeout_s: float = 120.0

    @property
    def state_dir(self) -> Path:
        return self.home / "stack"

    @property
    def prefect_ui_url(self) -> str:
        return f"http://{self.prefect_host}:{self.prefect_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_ui_url}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.mlflow_host}:{self.mlflow_port}"


@dataclass(frozen=True)
class ServiceStatus:
    """One stack process as ``stack_status`` found it."""

    name: str
    pid: int | None
    healthy: bool
    log: Path


def exposure_warning(config: StackConfig) -> str | None:
    """A warning when a server listens beyond this machine: neither has authentication."""
    exposed = sorted({h for h in (config.prefect_host, config.mlflow_host) if not _is_loopback(h)})
    if not exposed:
        return None
    return (
        f"the Prefect and MLflow servers will listen on {', '.join(exposed)}, reachable from other machines, "
        "and neither has authentication: anyone who reaches them can read and change runs. Keep the default "
        "--host 127.0.0.1, or put them behind an authenticating proxy or a firewall."
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def client_env(config: StackConfig) -> dict[str, str]:
    """The variables a shell needs to use the stack (``prefect deployment run``, MLflow clients)."""
    return {
        "PREFECT_API_URL": config.prefect_api_url,
        "MLFLOW_TRACKING_URI": config.mlflow_url,
        "MOVIELENS_BENCHMARK_HOME": config.storage or str(config.home),
    }


def stack_env(config: StackConfig) -> dict[str, str]:
    """Environment of every stack process: this process's, plus the stack's own Prefect home."""
    return {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # GenAI job runners: not used here, cost startup
        **os.environ,
        **client_env(config),
        "PREFECT_HOME": str(config.state_dir / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def service_commands(config: StackConfig) -> dict[str, list[str]]:
    """Command line of each stack process, by service name."""
    mlflow_dir = config.state_dir / "mlflow"
    prefect = [sys.executable, "-m", "prefect"]
    commands = {
        "prefect-server": [
            *prefect,
            "server",
            "start",
            "--host",
            config.prefect_host,
            "--port",
            str(config.prefect_port),
        ],
        "mlflow": [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            config.mlflow_host,
            "--port",
            str(config.mlflow_port),
            "--workers",
            str(config.mlflow_workers),
            "--backend-store-uri",
            f"sqlite:///{mlflow_dir / 'mlflow.db'}",
            "--artifacts-destination",
            str(mlflow_dir / "artifacts"),
        ],
    }
    for pool in config.pools:
        commands[f"worker-{pool}"] = [
            *prefect,
            "worker",
            "start",
            "--pool",
            pool,
            "--type",
            "process",
            "--name",
            worker_name(config, pool),
        ]
    return commands


def worker_name(config: StackConfig, pool: str) -> str:
    return f"{pool}@{socket.gethostname()}:{config.prefect_port}"


def _http(url: str, body: dict[str, object] | None = None, timeout_s: float = 5.0) -> object | None:
    """JSON (or text) answer of a GET, or of a POST when ``body`` is given; None on any failure."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def is_healthy(config: StackConfig, name: str) -> bool:
    """Whether the service answers: server health endpoints, or the worker online in its pool."""
    if name == "prefect-server":
        return _http(f"{config.prefect_api_url}/health") is True
    if name == "mlflow":
        return _http(f"{config.mlflow_url}/health") == "OK"
    pool = name.removeprefix("worker-")
    workers = _http(f"{config.prefect_api_url}/work_pools/{pool}/workers/filter", body={})
    return isinstance(workers, list) and any(
        w["name"] == worker_name(config, pool) and w["status"] == "ONLINE" for w in workers
    )


def _pid_file(config: StackConfig, name: str) -> Path:
    return config.state_dir / f"{name}.pid"


def _log_file(config: StackConfig, name: str) -> Path:
    return config.state_dir / f"{name}.log"


def running_pid(config: StackConfig, name: str) -> int | None:
    """Pid of the service's process if its pid file names a live process started at the recorded time."""
    try:
        pid, started = _pid_file(config, name).read_text().split()
        process = psutil.Process(int(pid))
        alive = process.status() != psutil.STATUS_ZOMBIE and f"{process.create_time():.3f}" == started
    except (FileNotFoundError, ValueError, psutil.Error):
        return None
    return int(pid) if alive else None


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _check_port_free(host: str, port: int, name: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: ignore TIME_WAIT
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StackFailed(
                f"{name} cannot listen on {host}:{port}: {exc.strerror}; another process holds the port. "
                "Stop it, or choose another port for the stack."
            ) from None


def _start(config: StackConfig, name: str, command: list[str], env: dict[str, str]) -> None:
    """Start ``name`` in its own session unless it already runs; record its pid and start time."""
    if running_pid(config, name) is not None:
        return
    if name in SERVERS:
        host, port = (
            (config.prefect_host, config.prefect_port)
            if name == "prefect-server"
            else (config.mlflow_host, config.mlflow_port)
        )
        _check_port_free(host, port, name)
    with _log_file(config, name).open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=config.project_root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = psutil.Process(process.pid).create_time()
    _pid_file(config, name).write_text(f"{process.pid} {started:.3f}\n")


def _wait_healthy(config: StackConfig, name: str) -> None:
    deadline = time.monotonic() + config.timeout_s
    while not is_healthy(config, name):
        if running_pid(config, name) is None:
            raise StackFailed(
                f"{name} exited while starting; last lines of {_log_file(config, name)}:\n"
                f"{_log_tail(_log_file(config, name))}"
            )
        if time.monotonic() > deadline:
            raise StackFailed(
                f"{name} did not become healthy within {config.timeout_s:.0f} s; see "
                f"{_log_file(config, name)}, or raise the stack's timeout on a slow machine."
            )
        time.sleep(0.5)


def ensure_pools(config: StackConfig) -> None:
    """Create the process work pools that do not exist yet, one at a time (SQLite serialises writes)."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    for pool in config.pools:
        if _http(f"{config.prefect_api_url}/work_pools/{pool}") is not None:
            continue
        body = {"name": pool, "type": "process", "base_job_template": template}
        if _http(f"{config.prefect_api_url}/work_pools/", body=body) is None:
            raise StackFailed(
                f"the Prefect server at {config.prefect_api_url} did not create work pool {pool!r}; "
                f"see {_log_file(config, 'prefect-server')}"
            )


def deploy(config: StackConfig, env: dict[str, str]) -> None:
    """Register the deployments of ``config.prefect_file`` from the project root."""
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
    command += ["--prefect-file", config.prefect_file]
    log = config.state_dir / "deploy.log"
    with log.open("wb") as out:
        result = subprocess.run(
            command, cwd=config.project_root, env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if result.returncode != 0:
        raise StackFailed(
            f"`prefect deploy` of {config.prefect_file} failed (exit {result.returncode}); "
            f"last lines of {log}:\n{_log_tail(log)}"
        )


def _start_healthy(
    config: StackConfig, names: list[str], commands: dict[str, list[str]], env: dict[str, str]
) -> None:
    """Start ``names`` together, then wait until each one is healthy."""
    for name in names:
        _start(config, name, commands[name], env)
    for name in names:
        _wait_healthy(config, name)


def stack_up(config: StackConfig) -> list[ServiceStatus]:
    """Start what is not running yet (servers, then pools and workers), wait until healthy, deploy."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    env = stack_env(config)
    commands = service_commands(config)
    _start_healthy(config, list(SERVERS), commands, env)
    ensure_pools(config)
    _start_healthy(config, [name for name in commands if name not in SERVERS], commands, env)
    deploy(config, env)
    return stack_status(config)


def _stop(config: StackConfig, name: str) -> bool:
    """Terminate the service's process group (then kill what is left); True if it was running."""
    pid = running_pid(config, name)
    _pid_file(config, name).unlink(missing_ok=True)
    if pid is None:
        return False
    leader = psutil.Process(pid)
    group = [leader, *leader.children(recursive=True)]
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    _, alive = psutil.wait_procs(group, timeout=min(config.timeout_s, 30.0))
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5.0)
    return True


def stack_down(config: StackConfig) -> list[str]:
    """Stop workers first, then the servers; return the names of the services that were running."""
    names = list(service_commands(config))[::-1]
    return [name for name in names if _stop(config, name)]


def stack_status(config: StackConfig) -> list[ServiceStatus]:
    """Pid and health of every stack service."""
    return [
        ServiceStatus(
            name,
            pid := running_pid(config, name),
            pid is not None and is_healthy(config, name),
            _log_file(config, name),
        )
        for name in service_commands(config)
    ]
