"""Incremental time-window training and next-item evaluation (Transformers4Rec's protocol, issue 17).

Over the non-empty windows ``w0 < w1 < …`` (:func:`recmodels.sequences.build_sessions`): update the same
model with ``w_i`` (optionally replaying earlier windows), then evaluate on ``w_{i+1}``: the input is each
session without its last event, the target its last event, every item is scored and nothing is excluded.

For a target item ``t`` with score ``s_t`` among scores ``s``, its 0-based rank is
``r = #{j : s_j > s_t} + #{j < t : s_j = s_t}`` (ties go to the lower item index, as a stable sort of
``-s`` does), and per window

    Recall@k = mean[r < k],   NDCG@k = mean[r < k] / log2(r + 2),   MRR@20 = mean[r < 20] / (r + 1)

(one relevant item, so NDCG's ideal DCG is 1 and Recall@k is the hit rate). AOD ("average over days",
the seed's ``eval_results_avg_over_days``) is the unweighted mean of a metric over evaluated windows.

Checkpoints: the windows play the part of epochs (:mod:`recmodels.checkpoint`). Models of the protocol
that offer ``training_state()`` (a copy of everything later updates depend on) and
``load_training_state(state)`` can be resumed: :func:`loop_state` after a window is the model's state and
the rows so far, and ``incremental_evaluation(..., resume_from=state)`` continues after that window, so
that its rows equal an uninterrupted loop's (on the CPU; ``fit_seconds`` aside).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from recmodels.checkpoint import STATE_FORMAT
from recmodels.errors import CheckpointMismatch, InvalidConfig
from recmodels.sequences import check_windows

CUTOFFS = (10, 20)
METRIC_NAMES = ("recall_at_10", "ndcg_at_10", "recall_at_20", "ndcg_at_20", "mrr_at_20")


class SessionRecommender(Protocol):
    """A model of the session protocol: updated window after window, scoring every item for a session.

    ``update(window, replay)``: train on the sessions of the newest window (arrays of item indices);
    ``replay`` are sessions of earlier windows the loop chose to replay (models whose state already
    accumulates every seen session, the baselines, ignore them). ``score(prefixes)``: an array
    (len(prefixes), n_items) of scores, higher is better.
    """

    def update(self, window: Sequence[np.ndarray], replay: Sequence[np.ndarray]) -> None: ...

    def score(self, prefixes: Sequence[np.ndarray]) -> np.ndarray: ...


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The 0-based rank of each row's target among all items (ties to the lower item index)."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    lower_index = np.arange(scores.shape[1])[None, :] < targets[:, None]
    return ((scores > target_scores) | ((scores == target_scores) & lower_index)).sum(axis=1)


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """Recall@10/20, NDCG@10/20 and MRR@20 (module docstring) of 0-based target ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    result: dict[str, float] = {}
    for k in CUTOFFS:
        hit = ranks < k
        result[f"recall_at_{k}"] = float(hit.mean())
        result[f"ndcg_at_{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
    result["mrr_at_20"] = float(np.where(ranks < 20, 1.0 / (ranks + 1.0), 0.0).mean())
    return {name: result[name] for name in METRIC_NAMES}


def split_last(sessions: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Each session without its last event, and the last events."""
    return [np.asarray(s[:-1]) for s in sessions], np.array([s[-1] for s in sessions], dtype=np.int64)


def evaluate_window(
    model: SessionRecommender, sessions: Sequence[np.ndarray], batch_size: int = 1024
) -> dict[str, float]:
    """Metrics of ``model`` on one window: every session's last item predicted from the rest."""
    prefixes, targets = split_last(sessions)
    ranks = np.concatenate(
        [
            target_ranks(
                model.score(prefixes[start : start + batch_size]), targets[start : start + batch_size]
            )
            for start in range(0, len(prefixes), batch_size)
        ]
    )
    return metrics_from_ranks(ranks)


@dataclass(frozen=True)
class WindowResult:
    """One evaluated window: what was trained, what was evaluated, the metrics and timings."""

    step: int
    train_window: str
    eval_window: str
    train_sessions: int
    eval_sessions: int
    fit_seconds: float
    metrics: dict[str, float]

    def row(self) -> dict[str, float | int | str]:
        return {
            "step": self.step,
            "train_window": self.train_window,
            "eval_window": self.eval_window,
            "train_sessions": self.train_sessions,
            "eval_sessions": self.eval_sessions,
            "fit_seconds": self.fit_seconds,
            "sessions_per_second": self.train_sessions / self.fit_seconds if self.fit_seconds > 0 else 0.0,
            **self.metrics,
        }


def window_sessions(frame: pd.DataFrame) -> list[np.ndarray]:
    """The sessions of a window table as arrays of dense item indices."""
    return [np.asarray(s, dtype=np.int64) for s in frame["item_index"]]


def supports_loop_state(model: object) -> bool:
    """Whether ``model`` can be checkpointed and resumed between windows (module docstring)."""
    return callable(getattr(model, "training_state", None)) and callable(
        getattr(model, "load_training_state", None)
    )


def loop_state(model: SessionRecommender, rows: Sequence[dict]) -> dict:
    """What :func:`incremental_evaluation` resumes from: the model's state and the rows of the windows
    evaluated so far (call it after the last of them, e.g. in ``on_window``)."""
    return {
        "format": STATE_FORMAT,
        "model": "session_protocol",
        "rows": [dict(row) for row in rows],
        "model_state": model.training_state(),  # type: ignore[attr-defined]
    }


def incremental_evaluation(
    model: SessionRecommender,
    windows: dict[str, pd.DataFrame],
    replay_windows: int = 0,
    on_window: Callable[[WindowResult], None] | None = None,
    resume_from: dict | None = None,
) -> pd.DataFrame:
    """Update ``model`` on window i, evaluate it on window i+1, for every consecutive pair of windows.

    ``replay_windows``: how many earlier windows (the most recent ones) are replayed with window i; 0 is
    the seed's way, -1 replays every earlier window. Returns one row per evaluated window
    (:meth:`WindowResult.row`); ``on_window`` is called after each (progress, live logging).
    ``resume_from``: a :func:`loop_state` of an earlier loop of the same model, windows and replay; the
    model loads its state and the loop goes on after the last window that state had evaluated.

    The loop asserts its own contract: before evaluating on window i+1 the model has been given windows
    0..i only (the evaluated window's sessions are handed to ``score`` as prefixes, never to ``update``).
    """
    if replay_windows < -1:
        raise InvalidConfig(f"replay_windows={replay_windows}: use 0 (none), n > 0 (last n) or -1 (all)")
    check_windows(windows)
    names = list(windows)
    sessions = [window_sessions(windows[name]) for name in names]
    rows: list[dict] = []
    if resume_from is not None:
        rows = [dict(row) for row in resume_from["rows"]]
        evaluated = [row["eval_window"] for row in rows]
        if evaluated != names[1 : len(rows) + 1]:
            raise CheckpointMismatch(
                f"the checkpoint evaluated windows {evaluated[:3]}…, these windows are {names[1:4]}…; "
                "delete the checkpoint to start over."
            )
        model.load_training_state(resume_from["model_state"])  # type: ignore[attr-defined]
    given_through = len(rows) - 1  # the newest window index handed to model.update
    for i in range(len(rows), len(names) - 1):
        first = 0 if replay_windows == -1 else max(0, i - replay_windows)
        replay = [s for earlier in sessions[first:i] for s in earlier]
        start = time.perf_counter()
        model.update(sessions[i], replay)
        fit_seconds = time.perf_counter() - start
        given_through = max(given_through, i)
        assert given_through < i + 1, f"model saw window {given_through} before evaluating on window {i + 1}"
        metrics = evaluate_window(model, sessions[i + 1])
        result = WindowResult(
            step=i + 1,
            train_window=names[i],
            eval_window=names[i + 1],
            train_sessions=len(sessions[i]) + len(replay),
            eval_sessions=len(sessions[i + 1]),
            fit_seconds=fit_seconds,
            metrics=metrics,
        )
        rows.append(result.row())
        if on_window is not None:
            on_window(result)
    return pd.DataFrame(rows)


def average_over_windows(per_window: pd.DataFrame) -> dict[str, float]:
    """AOD: the unweighted mean of each metric over evaluated windows, named ``aod_<metric>``."""
    return {f"aod_{name}": float(per_window[name].mean()) for name in METRIC_NAMES}
