"""Session-protocol baselines (Ludewig & Jannach, "Evaluation of session-based recommendation algorithms",
UMUAI 2018): popularity, item-kNN on the last item and V-SkNN on the whole session.

Each keeps every session it was given (``update`` accumulates the windows seen so far, so ``replay`` is
redundant for them and ignored) and scores every item of the vocabulary (``n_items``) for an input session.
Sessions are arrays of dense item indices. Let ``B`` be the binary (seen sessions × items) matrix.

- :class:`SessionPopularity`: ``score(j) = #events of j in seen sessions`` (same for every input).
- :class:`ItemKNN`: cosine similarity of item columns of ``B``,
  ``sim(i, j) = |S_i ∩ S_j| / sqrt(|S_i| |S_j|)`` (``S_i``: seen sessions holding ``i``, ``sim(i, i) = 0``);
  ``score(j | s) = sim(s_last, j)``.
- :class:`SessionKNN` (V-SkNN): the input session's items weighted by a linear position decay
  ``w_p = p / L`` (p = 1..L, the last item weighs 1); ``sim(s, n) = Σ_{i ∈ s ∩ n} w(i)`` for each of the
  ``sample_size`` most recent seen sessions ``n`` that share an item with ``s``; the ``k`` most similar
  are the neighbours and ``score(j | s) = Σ_{n ∈ N_k(s)} sim(s, n) · [j ∈ n]``.

kNN scores add ``1e-9 · popularity / max popularity`` so that items the neighbourhood does not reach
are ordered by popularity instead of by index (it never reorders items the neighbourhood scores apart
by more than 1e-9).

Each keeps the session protocol's checkpoint contract (:mod:`recmodels.session_eval`): its state is its
attributes (counts, co-occurrences, seen sessions), copied.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recmodels.checkpoint import STATE_FORMAT, check_state
from recmodels.errors import InvalidConfig, NotFitted

POPULARITY_TIE_BREAK = 1e-9


class _StateIsAttributes:
    """``training_state``/``load_training_state`` of a model whose whole state is its attributes."""

    n_items: int

    def training_state(self) -> dict[str, Any]:
        name = type(self).__name__
        return {
            "format": STATE_FORMAT,
            "model": name,
            "n_items": self.n_items,
            "attributes": copy.deepcopy(vars(self)),
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        check_state(state, type(self).__name__, n_items=self.n_items)
        vars(self).update(copy.deepcopy(state["attributes"]))


def _session_matrix(sessions: Sequence[np.ndarray], n_items: int) -> sp.csr_array:
    """Binary (sessions × items) matrix."""
    lengths = np.fromiter((len(s) for s in sessions), dtype=np.int64, count=len(sessions))
    rows = np.repeat(np.arange(len(sessions)), lengths)
    cols = np.concatenate(sessions) if len(sessions) else np.zeros(0, dtype=np.int64)
    matrix = sp.csr_array(
        (np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(sessions), n_items)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


class SessionPopularity(_StateIsAttributes):
    """Most events in the windows seen so far."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        self.counts = np.zeros(n_items, dtype=np.float64)
        self.fitted = False

    def update(self, window: Sequence[np.ndarray], replay: Sequence[np.ndarray] = ()) -> None:
        if len(window):
            self.counts += np.bincount(np.concatenate(window), minlength=self.n_items)
        self.fitted = True

    def score(self, prefixes: Sequence[np.ndarray]) -> np.ndarray:
        if not self.fitted:
            raise NotFitted("popularity: call update() with a window before score()")
        return np.broadcast_to(self.counts, (len(prefixes), self.n_items)).copy()

    def save(self, folder: Path) -> None:
        """The counts, as ``popularity.npy`` in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "popularity.npy", self.counts)


class ItemKNN(_StateIsAttributes):
    """Items that co-occur most with the session's last item (cosine over seen sessions)."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        self.cooccurrence = sp.csr_array((n_items, n_items), dtype=np.float64)
        self.popularity = SessionPopularity(n_items)

    def update(self, window: Sequence[np.ndarray], replay: Sequence[np.ndarray] = ()) -> None:
        binary = _session_matrix(window, self.n_items).astype(np.float64)
        self.cooccurrence = (self.cooccurrence + binary.T @ binary).tocsr()
        self.popularity.update(window)

    def score(self, prefixes: Sequence[np.ndarray]) -> np.ndarray:
        if not self.popularity.fitted:
            raise NotFitted("item_knn: call update() with a window before score()")
        support = self.cooccurrence.diagonal()  # |S_i|
        last = np.array([p[-1] for p in prefixes], dtype=np.int64)
        rows = self.cooccurrence[last].toarray()
        norm = np.sqrt(np.outer(support[last], support))
        scores = np.divide(rows, norm, out=np.zeros_like(rows), where=norm > 0)
        scores[np.arange(len(last)), last] = 0.0
        return scores + _tie_break(self.popularity.counts)

    def save(self, folder: Path) -> None:
        """The co-occurrence matrix (``cooccurrence.npz``) and the popularity counts."""
        self.popularity.save(folder)
        sp.save_npz(folder / "cooccurrence.npz", self.cooccurrence)


class SessionKNN(_StateIsAttributes):
    """V-SkNN: the ``k`` seen sessions most similar to the whole input session, recent items weighing more."""

    def __init__(self, n_items: int, k: int = 100, sample_size: int = 1000) -> None:
        if k < 1 or sample_size < k:
            raise InvalidConfig(
                f"session_knn: need 1 ≤ k ≤ sample_size, got k={k}, sample_size={sample_size}"
            )
        self.n_items, self.k, self.sample_size = n_items, k, sample_size
        self.sessions: list[np.ndarray] = []
        self.matrix = sp.csr_array((0, n_items), dtype=np.float64)
        self.popularity = SessionPopularity(n_items)

    def update(self, window: Sequence[np.ndarray], replay: Sequence[np.ndarray] = ()) -> None:
        self.sessions.extend(np.asarray(s) for s in window)
        self.matrix = sp.vstack([self.matrix, _session_matrix(window, self.n_items)], format="csr")
        self.popularity.update(window)

    def score(self, prefixes: Sequence[np.ndarray]) -> np.ndarray:
        if not self.popularity.fitted:
            raise NotFitted("session_knn: call update() with a window before score()")
        weights = np.zeros((len(prefixes), self.n_items))
        for row, prefix in enumerate(prefixes):
            decay = np.arange(1, len(prefix) + 1) / len(prefix)
            np.maximum.at(weights[row], np.asarray(prefix, dtype=np.int64), decay)
        similarity = sp.csr_array(self.matrix @ sp.csr_array(weights).T).T.tocsr()  # (prefixes × sessions)
        neighbours = sp.lil_array(similarity.shape)
        for row in range(similarity.shape[0]):
            start, end = similarity.indptr[row], similarity.indptr[row + 1]
            candidates, sims = similarity.indices[start:end], similarity.data[start:end]
            recent = np.argsort(candidates, kind="stable")[-self.sample_size :]  # later index = more recent
            candidates, sims = candidates[recent], sims[recent]
            top = np.argsort(-sims, kind="stable")[: self.k]
            neighbours[row, candidates[top]] = sims[top]
        scores = (sp.csr_array(neighbours) @ self.matrix).toarray()
        return scores + _tie_break(self.popularity.counts)

    def save(self, folder: Path) -> None:
        """The seen sessions (``sessions.npz``, rows in time order) and the popularity counts."""
        self.popularity.save(folder)
        sp.save_npz(folder / "sessions.npz", self.matrix)


def _tie_break(popularity: np.ndarray) -> np.ndarray:
    top = popularity.max()
    return POPULARITY_TIE_BREAK * popularity / top if top > 0 else np.zeros_like(popularity)
