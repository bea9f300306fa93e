"""Four processes at once on one empty home: the data is built once, no torn file is seen, and every
MLflow run is complete.

``test_four_processes_build_once_and_log_at_once`` starts four real processes at the same instant (each
imports first, then waits for a common go) that do what the flow does with the cache and the store:
check the prepared data under its lock, else fetch, parse, split and write it, then open the fresh SQLite
MLflow store and log a run. ``test_four_runs_at_once_on_an_empty_home`` runs the real CLI four times at
once (each with its own temporary Prefect server): slower, the same guarantees end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from recmodels.datasets import MARKER
from tests.test_crash import cli_env

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import sys, time
from pathlib import Path
from recmodels import preprocessing
from recmodels.datasets import fetch_release
from tasks import storage
from tasks.data import build_interactions
from tasks.prepared import load_prepared, write_prepared
from tasks.tracking import experiment_id, tracking_client, tracking_uri

home, mirror, ready, go = sys.argv[1:5]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
with storage.lock(home, "prepared-k"):
    prepared = load_prepared(home, "k")
    if prepared is None:
        raw = fetch_release("100k", home, mirror)
        path, reused = build_interactions("100k", raw, home)
        print("parsed" if not reused else "parse reused")
        frame = preprocessing.filter_min_interactions(storage.read_parquet(path))
        prepared = write_prepared(home, "k", preprocessing.split(frame, "stratified"), {})
        print("built")
    else:
        print("reused")
train = prepared.read("train")
uri = tracking_uri(home)
client = tracking_client(uri)
run = client.create_run(experiment_id(uri, home)).info.run_id
client.log_metric(run, "train_rows", len(train))
client.set_terminated(run)
"""


def test_four_processes_build_once_and_log_at_once(tmp_path: Path, mirror: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"PYTHONPATH": str(ROOT)}
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(home), str(mirror), str(tmp_path / f"ready-{i}"), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(4)
    ]
    deadline = time.monotonic() + 600
    while not all((tmp_path / f"ready-{i}").exists() for i in range(4)):
        assert time.monotonic() < deadline and all(w.poll() is None for w in workers), "a worker died"
        time.sleep(0.05)
    go.touch()  # the four start at the same instant
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, "\n".join(outputs)[-4000:]
    said = sorted(line for o in outputs for line in o.splitlines() if line in ("built", "reused"))
    assert said == ["built", "reused", "reused", "reused"], outputs
    assert [line for o in outputs for line in o.splitlines()].count("parsed") == 1
    assert sorted(p.name for p in (home / "raw").iterdir()) == ["100k"]
    assert sorted(p.name for p in (home / "interactions").iterdir()) == ["100k.json", "100k.parquet"]
    assert [p.name for p in (home / "prepared").iterdir()] == ["k"]
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("movielens-benchmark").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"] * 4
    assert len({r.data.metrics["train_rows"] for r in runs}) == 1


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
