"""Four ``movielens-benchmark run`` processes started at once on one empty home (real CLI processes, each
with its own temporary Prefect server, one SQLite MLflow store): all succeed, the data is built once,
and every MLflow run is complete."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from recmodels.datasets import MARKER
from tests.test_crash import cli_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_four_runs_at_once_on_an_empty_home(tmp_path: Path, mirror: Path) -> None:
    home = tmp_path / "home"
    env = cli_env(tmp_path)
    argv = [sys.executable, "-m", "flows.cli", "run", "--size", "100k", "--models", "popularity"]
    argv += ["--home", str(home), "--mirror", str(mirror)]
    runs = [
        subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]
        assert "popularity" in output and "ndcg_at_10" in output
    logs = "\n".join(outputs)
    assert logs.count("parsed 100k →") == 1, "the canonical table is built once"
    assert logs.count("prepared data") - logs.count("cache hit: prepared data") == 1, (
        "the split is built once"
    )
    assert logs.count("cache hit: prepared data") == 3, "the others wait, then reuse it"
    assert "database is locked" not in logs and "_alembic_tmp" not in logs

    assert sorted(p.name for p in (home / "raw").iterdir()) == ["100k"]
    assert (home / "raw" / "100k" / MARKER).is_file()
    assert sorted(p.name for p in (home / "interactions").iterdir()) == ["100k.json", "100k.parquet"]
    (key,) = [p.name for p in (home / "prepared").iterdir()]  # no temporary folder left
    assert (home / "prepared" / key / "manifest.json").is_file()

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("movielens-benchmark")
    runs_logged = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs_logged if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs_logged if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 4 and len(children) == 4
    assert {r.info.status for r in runs_logged} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {p.info.run_id for p in parents}
    ndcg = {c.data.metrics["ndcg_at_10"] for c in children}
    assert len(ndcg) == 1, f"the four runs read the same prepared data: {ndcg}"
    assert os.path.getsize(home / "mlflow.db") > 0
