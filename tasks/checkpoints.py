"""Live per-epoch metrics, checkpoints every ``checkpoint_every`` epochs, and resuming a killed run.

Models keep the contract of :mod:`recmodels.checkpoint` (``fit(..., on_epoch_end=, resume_from=)`` and
``training_state()``); this module is the MLflow and storage side of it, used by the train task
(``tasks/train.py``), the Horovod worker (``tasks/vae_cf_worker.py``) and any other launcher:

- :class:`EpochRecorder` gets every epoch's record from the model's callback and logs it to the run as the
  epoch ends (``step`` = epoch), from a background thread: records are batched into one ``log_batch`` per
  ``flush_seconds`` (a SQLite ``log_metrics`` costs ~10 ms, an epoch of a small model ~70 ms), so logging
  stays off the training's critical path. Every ``checkpoint_every`` epochs it takes a snapshot of the
  training state and, in the same thread and order, first logs every pending record, then writes the
  checkpoint (atomically, :func:`tasks.storage.write_bytes_atomic`) to ``<home>/checkpoints/<run id>/``:
  a checkpoint of epoch e exists only once the metrics of epochs 1..e are in MLflow, so a resume never
  skips a step; steps already logged past the checkpoint (a kill between the two) are not logged again,
  so it never duplicates one.
- :func:`run_identity` hashes what determines a run's results (prepared data key, model, effective
  parameters and seeds, tracking store), stored as the tag ``benchmark.identity``; every run also gets
  ``benchmark.owner`` (host, pid and process start time). :func:`claim_run` finds a run of the same
  identity whose process died (RUNNING with a dead owner) or that was interrupted (``benchmark.resumable``:
  Ctrl-C, SIGTERM, a killed Horovod worker) and takes it over; :func:`fail_dead_runs` marks every other
  RUNNING run of a dead owner on this host FAILED, so none stays RUNNING for ever.
"""

from __future__ import annotations

import hashlib
import json
import queue
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import psutil
from filelock import FileLock
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from recmodels import checkpoint
from recmodels.checkpoint import EpochCallback
from tasks import storage

IDENTITY_TAG = "benchmark.identity"
OWNER_TAG = "benchmark.owner"
RESUMABLE_TAG = "benchmark.resumable"  # "true" on runs stopped by an interrupt, to be continued
ENDED_TAG = "benchmark.ended"  # why a run ended without finishing: process died, interrupted, ...
CHECKPOINT_FILE = "state.pkl"
MAX_BATCH = 1000  # MLflow's metrics per log_batch


def run_identity(**parts: Any) -> str:
    """A short hash of ``parts`` (JSON-able values): equal for the same command on the same data."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def process_owner(pid: int | None = None) -> str:
    """``host:pid:start time`` of a process (this one by default): a pid reused later has another start."""
    process = psutil.Process(pid)
    return f"{socket.gethostname()}:{process.pid}:{process.create_time():.2f}"


def owner_alive(owner: str | None) -> bool:
    """Whether the process named by ``owner`` runs; owners on other hosts count as alive (unknowable)."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname():
        return True
    try:
        return f"{psutil.Process(int(pid)).create_time():.2f}" == started
    except (psutil.NoSuchProcess, ValueError):
        return False


def checkpoint_url(home: str, run_id: str) -> str:
    """Where run ``run_id`` keeps its latest training state."""
    return storage.join(home, "checkpoints", run_id, CHECKPOINT_FILE)


def load_checkpoint(url: str) -> dict[str, Any] | None:
    """The training state stored at ``url``; None when there is none (no epoch finished yet)."""
    if not storage.exists(url):
        return None
    fs, path = storage.filesystem(url)
    return checkpoint.loads(fs.cat_file(path))


def remove_checkpoint(url: str) -> None:
    """Delete a finished run's checkpoint folder (what it holds is in the run's logged model)."""
    fs, path = storage.filesystem(url)
    folder = path.rpartition("/")[0]
    if fs.exists(folder):
        fs.rm(folder, recursive=True)


def _lock(identity: str) -> FileLock:
    """A lock on this host for claiming runs of ``identity`` (two processes never claim one run)."""
    folder = Path(tempfile.gettempdir()) / "movielens-benchmark-locks"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(folder / f"{identity}.lock", timeout=60)


def _claimable(run: Run) -> bool:
    status, tags = run.info.status, run.data.tags
    if status == "RUNNING":
        return not owner_alive(tags.get(OWNER_TAG))
    return status in ("FAILED", "KILLED") and tags.get(RESUMABLE_TAG) == "true"


def claim_run(client: MlflowClient, experiment_id: str, identity: str, tags: dict[str, str]) -> Run | None:
    """The newest run of ``identity`` whose process died or that was interrupted, taken over by this
    process (status RUNNING, owner this process, ``tags`` set); None when there is none to resume."""
    with _lock(identity):
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{IDENTITY_TAG}` = '{identity}'",
            order_by=["attributes.start_time DESC"],
            max_results=20,
        )
        run = next((r for r in runs if _claimable(r)), None)
        if run is None:
            return None
        client.update_run(run.info.run_id, status="RUNNING")
        for key, value in {**tags, OWNER_TAG: process_owner(), RESUMABLE_TAG: "false"}.items():
            client.set_tag(run.info.run_id, key, value)
        if ENDED_TAG in run.data.tags:
            client.delete_tag(run.info.run_id, ENDED_TAG)
        return client.get_run(run.info.run_id)


def new_run_tags(identity: str) -> dict[str, str]:
    """Tags a new run carries so that a later start can find and resume it."""
    return {IDENTITY_TAG: identity, OWNER_TAG: process_owner(), RESUMABLE_TAG: "false"}


def end_interrupted(client: MlflowClient, run_id: str, status: str, why: str) -> None:
    """Mark a run stopped from outside (``KILLED`` on Ctrl-C/SIGTERM, ``FAILED`` when its worker died) as
    one to resume: the next start of the same command continues it from its checkpoint."""
    client.set_tag(run_id, RESUMABLE_TAG, "true")
    client.set_tag(run_id, ENDED_TAG, why)
    client.set_terminated(run_id, status)


def interrupts() -> tuple[type[BaseException], ...]:
    """Ctrl-C, and SIGTERM (Prefect's flow engine raises ``TerminationSignal`` for it; flows/interrupts.py).
    Prefect is imported here only: the Horovod workers use this module without it."""
    from prefect.exceptions import TerminationSignal

    return (KeyboardInterrupt, TerminationSignal)


class WorkerDied(RuntimeError):
    """A training process (e.g. a Horovod worker) killed by a signal: the run is left to resume."""


@contextmanager
def ending_of(client: MlflowClient, run_id: str) -> Iterator[None]:
    """Around the body of the active fluent run ``run_id``: Ctrl-C or SIGTERM (KeyboardInterrupt) ends it
    KILLED, a dead training worker FAILED, both resumable (:func:`end_interrupted`); other errors are
    left to MLflow (FAILED, not resumed: the same command would fail again)."""
    try:
        yield
    except interrupts():
        end_interrupted(client, run_id, "KILLED", "interrupted")
        mlflow.end_run("KILLED")  # so that start_run's exit does not mark it FAILED
        raise
    except WorkerDied:
        end_interrupted(client, run_id, "FAILED", "training worker died")
        mlflow.end_run("FAILED")
        raise


def fail_dead_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark FAILED (resumable) every RUNNING run of the experiment whose owner on this host has died;
    returns their ids. A later start of the same command still resumes them (:func:`claim_run`)."""
    dead = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        owner = run.data.tags.get(OWNER_TAG)
        if owner and not owner_alive(owner):
            end_interrupted(client, run.info.run_id, "FAILED", "process died")
            dead.append(run.info.run_id)
    return dead


def logged_steps(client: MlflowClient, run_id: str, keys: list[str] | None = None) -> dict[str, set[int]]:
    """The steps already logged per metric of a run (a resumed run must not log them again)."""
    keys = list(client.get_run(run_id).data.metrics) if keys is None else keys
    return {key: {m.step for m in client.get_metric_history(run_id, key)} for key in keys}


@dataclass
class _Checkpoint:
    epoch: int
    state: dict[str, Any]


class EpochRecorder:
    """Logs each epoch's record to ``run_id`` as it ends and writes checkpoints, off the training thread.

    ``recorder.callback(model)`` is the ``on_epoch_end`` to pass to ``model.fit`` (``client`` None: only
    checkpoints); :meth:`close` waits
    for everything queued and re-raises a failure of the background thread (also raised at the next
    epoch). ``checkpoint`` is the URL to write to (None: no checkpoints); ``write=False`` (Horovod ranks
    other than 0) still takes the collective snapshots but logs and writes nothing.
    """

    def __init__(
        self,
        client: MlflowClient | None,
        run_id: str,
        checkpoint_url: str | None,
        checkpoint_every: int = 1,
        flush_seconds: float = 2.0,
        skip_steps: dict[str, set[int]] | None = None,
        write: bool = True,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every={checkpoint_every} must be >= 1")
        self.client, self.run_id, self.url = client, run_id, checkpoint_url
        self.every, self.flush_seconds, self.write = checkpoint_every, flush_seconds, write
        self.skip = skip_steps or {}
        self.checkpoints_written = 0
        self._queue: queue.Queue[list[Metric] | _Checkpoint | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="epoch-recorder", daemon=True)
        if write:
            self._thread.start()

    def callback(self, model: Any) -> EpochCallback:
        """The ``on_epoch_end`` of ``model``'s fit."""

        def on_epoch_end(record: dict[str, Any]) -> None:
            self._raise_failure()
            epoch = int(record["epoch"])
            state = model.training_state() if self.url is not None and epoch % self.every == 0 else None
            if not self.write:
                return
            now = int(time.time() * 1000)
            self._queue.put(
                [Metric(k, float(v), now, epoch) for k, v in record.items() if k != "epoch" and v is not None]
            )
            if state is not None:
                self._queue.put(_Checkpoint(epoch, state))

        return on_epoch_end

    def close(self) -> None:
        """Log what is pending, write the last queued checkpoint and stop the thread."""
        if self.write and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"logging epochs of MLflow run {self.run_id} failed: {error}") from error

    def _work(self) -> None:
        pending: list[Metric] = []
        last_flush = time.monotonic()
        while True:
            timeout = max(0.0, self.flush_seconds - (time.monotonic() - last_flush)) if pending else None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = []  # time to flush
            try:
                if isinstance(item, list) and item:
                    pending += item
                    if time.monotonic() - last_flush < self.flush_seconds:
                        continue
                self._log(pending)
                pending, last_flush = [], time.monotonic()
                if isinstance(item, _Checkpoint):
                    assert self.url is not None
                    storage.write_bytes_atomic(checkpoint.dumps(item.state), self.url)
                    self.checkpoints_written += 1
            except BaseException as error:  # reported to the training thread
                self._error = error
                return
            if item is None:
                return

    def _log(self, metrics: list[Metric]) -> None:
        if self.client is None:  # checkpoints without tracking
            return
        fresh = [m for m in metrics if m.step not in self.skip.get(m.key, ())]
        for start in range(0, len(fresh), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=fresh[start : start + MAX_BATCH])


def fit_options(model: Any, recorder: EpochRecorder | None, state: dict[str, Any] | None) -> dict[str, Any]:
    """``fit``'s keywords for a model of the :mod:`recmodels.checkpoint` contract (none for others)."""
    if recorder is None or not checkpoint.supports_checkpoints(model):
        return {}
    return {"on_epoch_end": recorder.callback(model), "resume_from": state}
