"""Which Prefect API a local run uses: the configured one, a running server (reused, said), or a new one."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows import prefect_api

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def health_endpoint() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering ``GET /api/health`` with ``true``, as a Prefect server does."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"true" if self.path == "/api/health" else b"false"
            self.send_response(200 if self.path == "/api/health" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()


def test_a_running_server_is_reused_and_the_environment_restored(
    health_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefect_api, "configured_api_url", lambda: None)
    monkeypatch.setattr(prefect_api, "settings_loaded", lambda: False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    api = prefect_api.local_api(health_endpoint)
    assert api is not None and (api.source, api.url, api.process) == ("running server", health_endpoint, None)
    assert os.environ["PREFECT_API_URL"] == health_endpoint
    api.wait(timeout=5)
    api.restore_environment()
    assert "PREFECT_API_URL" not in os.environ


def test_a_configured_api_is_left_to_prefect(health_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefect_api, "configured_api_url", lambda: "http://prefect.example:4200/api")
    assert prefect_api.local_api(health_endpoint) is None


def test_nothing_answering_is_not_reused() -> None:
    assert not prefect_api._healthy(f"http://127.0.0.1:{prefect_api._free_port()}/api", timeout=0.3)


def test_configured_url_comes_from_the_environment_or_the_active_profile(tmp_path: Path) -> None:
    """Read before Prefect is imported (a fresh interpreter), as the CLI does."""
    (tmp_path / "profiles.toml").write_text(
        'active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://team:4200/api"\n[profiles.ephemeral]\n'
    )
    code = "from flows.prefect_api import configured_api_url; import sys; print(configured_api_url(), 'prefect' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"PYTHONPATH": str(ROOT)}
    for extra, expected in [
        ({"PREFECT_HOME": str(tmp_path)}, "http://team:4200/api False"),
        ({"PREFECT_HOME": str(tmp_path), "PREFECT_PROFILE": "ephemeral"}, "None False"),
        ({"PREFECT_HOME": str(tmp_path), "PREFECT_API_URL": "http://env:1/api"}, "http://env:1/api False"),
    ]:
        out = subprocess.run([sys.executable, "-c", code], env=env | extra, capture_output=True, text=True)
        assert out.stdout.strip() == expected, out.stderr


def test_a_temporary_server_still_starting_is_not_asked_for_a_gpu_pool() -> None:
    """The CLI validates its arguments while its temporary server starts: asking that server for GPU workers
    would fail with 'does not answer' (seen in CI under load); it has none, so GPU models run here."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.validation import GPUUnavailable, check_gpu

    dead = f"http://127.0.0.1:{prefect_api._free_port()}/api"
    with temporary_settings(updates={PREFECT_API_URL: dead}):  # over the test session's harness, if any
        assert check_gpu("auto", ["implicit_mf"], temporary_api=True) is False
        with pytest.raises(GPUUnavailable, match="PREFECT_API_URL"):
            check_gpu("pool", ["implicit_mf"], temporary_api=True)
        with pytest.raises(Exception, match="does not answer"):  # a configured server that is down: an error
            check_gpu("auto", ["implicit_mf"])
