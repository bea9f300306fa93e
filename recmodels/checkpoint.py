"""Checkpoint/resume and live per-epoch metrics: the contract of every model trained in epochs.

Models trained in epochs (implicit_mf, vae_cf on both backends and under Horovod, and bert4rec, sasrec,
gpt2, xlnet) keep this contract, so that ``tasks/`` can log their curves while they train and resume a
killed fit; nothing here knows Prefect or MLflow (``tasks/checkpoints.py`` does the logging and storage).

``fit(train, ..., *, on_epoch_end=None, resume_from=None)``
    ``on_epoch_end(record)`` is called once after every finished epoch with that epoch's metrics, the
    dict also appended to ``history_``: ``record["epoch"]`` is the 1-based epoch (an int), the other
    values are floats (``loss``, ``epoch_seconds``, ``validation_…``). Under Horovod it is called on every
    worker. ``resume_from`` is a state returned by ``training_state()`` of an earlier fit of the same model
    class, parameters and data: ``fit`` prepares its data as usual, then loads the state instead of
    initialising and continues at epoch ``state["epoch"] + 1``, so that the fitted model equals an
    uninterrupted fit's (bit for bit on the CPU). A state that does not fit the data or the parameters
    raises :class:`recmodels.errors.CheckpointMismatch`.
``training_state() -> dict``
    Everything the rest of the fit depends on, as of the end of the last finished epoch: ``epoch``,
    ``history``, the weights, the optimizer's state, every random generator's state, and any model
    selection bookkeeping (best epoch, its weights, early stopping's patience counter). Valid inside
    ``on_epoch_end`` (and after ``fit``); it returns a snapshot (copies) that later training does not
    change. Values are plain Python data, numpy arrays and torch tensors, so :func:`dumps` stores them.
    Under Horovod it is a collective call (every worker calls it at the same epoch; per-worker generator
    states are gathered so one file restores every worker).

A minimal model loop::

    def fit(self, train, *, on_epoch_end=None, resume_from=None):
        ...  # data preparation, deterministic
        if resume_from is None:
            ...  # initialise weights, optimizer, generators; self.history_ = []
        else:
            self._load_state(resume_from)  # check_state(...) first
        for epoch in range(len(self.history_) + 1, self.epochs + 1):
            ...  # one epoch
            self.history_.append(record)
            if on_epoch_end is not None:
                on_epoch_end(record)
"""

from __future__ import annotations

import inspect
import io
import pickle
from collections.abc import Callable
from typing import Any

from recmodels.errors import CheckpointMismatch

EpochCallback = Callable[[dict[str, Any]], None]
#: Bumped when the layout of a model's state changes; older checkpoints are then refused, not misread.
STATE_FORMAT = 1


def supports_checkpoints(model: Any) -> bool:
    """Whether ``model`` keeps the contract of this module (``training_state`` and ``fit``'s keywords)."""
    if not callable(getattr(model, "training_state", None)):
        return False
    parameters = inspect.signature(model.fit).parameters
    return "on_epoch_end" in parameters and "resume_from" in parameters


def check_state(state: dict[str, Any], model: str, **expected: Any) -> None:
    """Refuse a state of another format, model or shape: ``expected`` names values the state must hold
    (e.g. ``n_users=943``) as this fit computes them."""
    found = {"format": state.get("format"), "model": state.get("model")}
    found |= {name: state.get(name) for name in expected}
    wanted = {"format": STATE_FORMAT, "model": model, **expected}
    wrong = {name: (found[name], value) for name, value in wanted.items() if found[name] != value}
    if wrong:
        detail = ", ".join(f"{name} is {got!r}, this fit has {want!r}" for name, (got, want) in wrong.items())
        raise CheckpointMismatch(
            f"{model}: the checkpoint does not match this fit ({detail}); delete the checkpoint to start over."
        )


def dumps(state: dict[str, Any]) -> bytes:
    """``state`` as bytes (pickle: numpy arrays and torch tensors without copies through other formats).

    Checkpoints are read back only from the run's own storage, as trusted as the pickled models that
    ``mlflow.pytorch`` logs.
    """
    buffer = io.BytesIO()
    pickle.dump(state, buffer, protocol=pickle.HIGHEST_PROTOCOL)
    return buffer.getvalue()


def loads(data: bytes) -> dict[str, Any]:
    """The state that :func:`dumps` wrote."""
    return pickle.loads(data)
