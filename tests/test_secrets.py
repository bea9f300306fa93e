"""No credential reaches a log, an MLflow param or tag, and the stack's servers stay on loopback unless
told otherwise, with a warning then (issue 15, item 8).

The end-to-end case uses real processes: an MLflow tracking server, the test session's Prefect server,
and ``movielens-benchmark run`` as a subprocess with a fake secret in its environment and in the
password of ``MLFLOW_TRACKING_URI``; the run's Prefect logs are read back through the Prefect API.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from deployments.stack import PROJECT_ROOT, StackConfig, exposure_warning, service_commands
from flows.cli import build_parser, main
from tasks.redaction import RedactCredentials, redact

SECRET = "fake-Secret-4f1c9e"  # must never be stored
ENV_SECRET = "fake-Env-Secret-77ab2d"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://bench:hunter2@127.0.0.1:5000", "http://bench:***@127.0.0.1:5000"),
        ("at https://u:p%40ss@mlflow.example/x, then", "at https://u:***@mlflow.example/x, then"),
        ("postgresql+psycopg2://app:pw@db:5432/mlflow", "postgresql+psycopg2://app:***@db:5432/mlflow"),
        ("s3://AKIAFAKE:wJalrFAKE@bucket/prefix", "s3://AKIAFAKE:***@bucket/prefix"),
        ("https://ghp_tokenonly@git.example/repo", "https://***@git.example/repo"),
        (
            "https://b.s3.aws/k?X-Amz-Signature=abc123&X-Amz-Date=1",
            "https://b.s3.aws/k?X-Amz-Signature=***&X-Amz-Date=1",
        ),
        (
            "sqlite:///home/me/mlflow.db?password=pw&mode=ro",
            "sqlite:///home/me/mlflow.db?password=***&mode=ro",
        ),
        (
            "sqlite:////tmp/x/mlflow.db and s3://bucket/prefix",
            "sqlite:////tmp/x/mlflow.db and s3://bucket/prefix",
        ),
    ],
)
def test_redact_hides_credentials_in_uris(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_log_filter_redacts_message_arguments_and_exceptions() -> None:
    logger = logging.Logger("redaction-test")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.addFilter(RedactCredentials())
    logger.info("MLflow at %s", f"http://bench:{SECRET}@host:5000")
    try:
        raise RuntimeError(f"cannot reach https://bench:{SECRET}@host/api")
    except RuntimeError:
        logger.exception("failed")
    text = "\n".join(logging.Formatter().format(record) for record in records)
    assert SECRET not in text
    assert "http://bench:***@host:5000" in text and "https://bench:***@host/api" in text


def test_stack_binds_loopback_unless_told_and_warns_when_exposed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(["stack", "up"])
    assert args.host == "127.0.0.1"
    commands = service_commands(StackConfig(home=tmp_path))
    for name in ("prefect-server", "mlflow"):
        assert commands[name][commands[name].index("--host") + 1] == "127.0.0.1"
    assert exposure_warning(StackConfig(home=tmp_path)) is None
    assert exposure_warning(StackConfig(home=tmp_path, prefect_host="localhost", mlflow_host="::1")) is None
    assert "no authentication" not in (exposure_warning(StackConfig(home=tmp_path)) or "")
    assert "neither has authentication" in exposure_warning(StackConfig(home=tmp_path, mlflow_host="0.0.0.0"))

    with socket.socket() as busy:  # the real `stack up --host 0.0.0.0` warns, then stops at the busy port
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        argv = ["stack", "up", "--host", "0.0.0.0", "--home", str(tmp_path), "--prefect-port", port]
        assert main(argv) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "warning: the Prefect and MLflow servers will listen on 0.0.0.0" in out
    assert "neither has authentication" in out and "StackFailed" in out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server on loopback (no authentication: it ignores the URI's password)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(root / "artifacts")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with (root / "server.log").open("wb") as log:
        server = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.read() == b"OK":
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "server.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_a_secret_in_the_environment_and_tracking_uri_is_never_stored(
    tmp_path: Path, mirror: Path, mlflow_server: str, prefect_api: None
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL

    uri_with_password = mlflow_server.replace("http://", f"http://bench:{SECRET}@")
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),  # the session's real Prefect server
        "MLFLOW_TRACKING_URI": uri_with_password,
        "MOVIELENS_FAKE_API_TOKEN": ENV_SECRET,
        "AWS_SECRET_ACCESS_KEY": ENV_SECRET,
    }
    argv = ["--home", str(tmp_path), "--mirror", str(mirror), "--models", "popularity", "--top-k", "10"]
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", *argv, "--experiment", "secrets"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # nor on the console (a worker's log file, under `stack up`)
    assert SECRET not in done.stdout + done.stderr and ENV_SECRET not in done.stdout + done.stderr

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("secrets")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2  # the parent run and popularity's
    stored = [experiment.tags, *(d for run in runs for d in (run.data.params, run.data.tags))]
    for values in stored:
        for key, value in values.items():
            assert SECRET not in value and ENV_SECRET not in value, key
    flow_run_id = runs[0].data.tags["prefect.flow_run_id"]

    with get_client(sync_client=True) as prefect:
        logs = prefect.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    text = "\n".join(entry.message for entry in logs)
    assert f"at http://bench:***@127.0.0.1:{mlflow_server.rsplit(':', 1)[1]}" in text  # logged, redacted
    assert SECRET not in text and ENV_SECRET not in text


def test_the_horovod_workers_params_and_tags_are_redacted(tmp_path: Path) -> None:
    """The VAE-CF Horovod worker logs to MLflow itself (tasks/vae_cf_worker.py): a credential in a value it
    logs is stored redacted, as the train task's are."""
    from tasks import vae_cf_worker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = vae_cf_worker.start_run(uri, "secrets", {"source": f"s3://KEY:{SECRET}@bucket/x"})
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "items.json").write_text("[]")
    for name in ("learning_curve.png", "results.json"):
        (tmp_path / name).write_text("{}")
    final = ("ndcg_at_100", "recall_at_20", "recall_at_50", "best_epoch", "epochs_trained", "fit_seconds")
    results = {key: 0.5 for key in (*final, "users_per_second")}
    results |= {"params": {"data": f"https://u:{SECRET}@host/x", "epochs": 3}, "adapted_params": {}}
    results |= {"world_size": 2, "history": []}
    vae_cf_worker.log_to_mlflow(uri, run_id, results, tmp_path, epochs_logged=True)
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.params["data"] == "https://u:***@host/x" and run.data.params["epochs"] == "3"
    assert run.data.tags["source"] == "s3://KEY:***@bucket/x"
    assert all(SECRET not in value for value in [*run.data.params.values(), *run.data.tags.values()])
