"""SIGKILL during each data step leaves nothing that a later run takes for a finished result, and the
next run rebuilds what is missing and removes the leftovers.

Processes are paused at a step by the test seam ``$MOVIELENS_BENCHMARK_PAUSE_AT`` (``fetch``: files
staged, marker not yet written; ``parse``: table written, marker not yet; ``prepared``: one split file
written in the temporary folder), then killed with SIGKILL: real processes, real files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from recmodels.datasets import MARKER, RELEASES

ROOT = Path(__file__).resolve().parents[1]


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: this checkout importable, a Prefect home of its own, MLflow's
    default store (in the benchmark home)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API"))}
    env |= {"PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp_path / "prefect"), **extra}
    env |= {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
    }
    return env


def kill_when_paused(argv: list[str], env: dict[str, str], step: str) -> None:
    """Run ``argv`` until it announces ``paused at <step>``, then SIGKILL its whole process group."""
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**env, "MOVIELENS_BENCHMARK_PAUSE_AT": step},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen = []
    try:
        for line in process.stderr:
            seen.append(line)
            if line.strip() == f"paused at {step}":
                break
        else:
            pytest.fail(f"never paused at {step}: {''.join(seen)[-3000:]}")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.mark.slow
def test_sigkill_in_each_data_step_then_the_next_run_rebuilds(tmp_path: Path, mirror: Path) -> None:
    home = tmp_path / "home"
    env = cli_env(tmp_path)
    fetch = f"from recmodels.datasets import fetch_release; raw = fetch_release('100k', {str(home)!r}, {str(mirror)!r})"

    kill_when_paused(python(fetch), env, "fetch")
    assert not (home / "raw" / "100k").exists(), "an unverified release folder is visible"
    assert [p.name for p in (home / "raw").glob(".100k.*.tmp")], "the killed fetch's staging folder"

    parse = (
        f"{fetch}; from tasks.data import build_interactions; build_interactions('100k', raw, {str(home)!r})"
    )
    kill_when_paused(python(parse), env, "parse")
    assert sorted(p.name for p in (home / "raw").iterdir()) == ["100k"], "staging leftovers removed"
    marker = json.loads((home / "raw" / "100k" / MARKER).read_text())
    assert marker["ratings_sha256"] == RELEASES["100k"].ratings_sha256
    assert (home / "interactions" / "100k.parquet").exists()
    assert not (home / "interactions" / "100k.json").exists(), "the table was never vouched for"

    run = [sys.executable, "-m", "flows.cli", "run", "--size", "100k", "--models", "popularity"]
    run += ["--home", str(home), "--mirror", str(mirror)]
    kill_when_paused(run, env, "prepared")
    prepared = home / "prepared"
    (leftover,) = [p.name for p in prepared.iterdir()]
    assert leftover.startswith(".") and leftover.endswith(".tmp"), "only a temporary folder, no manifest"
    assert (home / "interactions" / "100k.json").exists(), "this run rebuilt the table and vouched for it"

    done = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    (key,) = [p.name for p in prepared.iterdir()]
    assert leftover.startswith(f".{key}."), "the killed run's temporary folder was removed"
    manifest = json.loads((prepared / key / "manifest.json").read_text())
    assert set(manifest["files"]) == {"train", "validation", "test"}
    assert "ndcg_at_" in done.stdout  # the table at the run's first cutoff
