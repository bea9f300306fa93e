"""MLflow conventions of DESIGN.md: experiment, parent/child runs, tags, tracking URI defaults."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from filelock import FileLock
from mlflow.tracking import MlflowClient

from tasks import storage
from tasks.links import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

EXPERIMENT = "movielens-benchmark"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def fitted_params(adapted: dict[str, Any]) -> dict[str, Any]:
    """A model's hyper-parameters as changed in ``fit`` (VAE-CF's small data rule), as ``fitted.<name>``."""
    return {f"fitted.{name}": value for name, value in adapted.items()}


def tracking_uri(home: str | Path) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else SQLite in the home's local folder (the local cache when the
    home is a URL: SQLite needs a local file; machines sharing a URL home should share a tracking server)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{storage.local_dir(str(home)) / 'mlflow.db'}"


def tracking_client(uri: str) -> MlflowClient:
    """A client of ``uri`` whose store is ready: a SQLite store is created (its schema migrated) by one
    process at a time, under the file lock ``<db>.lock`` beside it. MLflow's own set-up races when
    several processes open a new store at once (``table _alembic_tmp_metrics already exists``, a store
    left half-migrated); once the schema exists, SQLite's own locking serves concurrent runs."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///").partition("?")[0])
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{db}.lock"):
            MlflowClient(uri).search_experiments(max_results=1)  # creates and migrates the schema
    return MlflowClient(uri)


@contextmanager
def use_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for the block, then restore the previous setting.

    ``mlflow.set_tracking_uri`` also writes ``$MLFLOW_TRACKING_URI``, which :func:`tracking_uri` reads:
    without the restore, a later run in the same process would log to this run's store.
    """
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets the variable and MLflow's default applies again


def experiment_id(uri: str, home: str | Path, name: str = EXPERIMENT) -> str:
    """Get or create the experiment; local stores keep artifacts in ``mlartifacts`` beside the store.

    The experiment is tagged as MLflow 3's model-training kind (``mlflow.experimentKind``), not GenAI
    (see tasks/links.py for how the UI opens it on its runs)."""
    client = tracking_client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    location = (
        (storage.local_dir(str(home)) / "mlartifacts").as_uri()
        if uri.startswith(("sqlite:", "file:", "/"))
        else None
    )
    try:
        return client.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    except mlflow.exceptions.MlflowException:  # created concurrently by another run
        experiment = client.get_experiment_by_name(name)
        assert experiment is not None
        return experiment.experiment_id


def git_commit() -> str:
    """Commit of the project checkout the code runs from; ``$GIT_COMMIT`` (set by the Docker images,
    which have no .git) or ``unknown`` outside a git checkout."""
    fallback = os.environ.get("GIT_COMMIT", "unknown")
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return fallback
    return out.stdout.strip() if out.returncode == 0 else fallback
