"""Four processes at once on one empty home: the data is built once, no torn file is seen, and every
MLflow run is complete.

``test_four_processes_build_once_and_log_at_once`` starts four real processes at the same instant (each
imports first, then waits for a common go) that do what the flow does with the cache and the store:
check the prepared data under its lock, else fetch, parse, split and write it, then open the fresh SQLite
MLflow store and log a run (the flow's sequence, tasks/data.py and flows/benchmark.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

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
