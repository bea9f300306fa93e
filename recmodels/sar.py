"""SAR — Smart Adaptive Recommendations, single node.

The algorithm of Microsoft's Product-Recommendations service
(github.com/microsoft/Product-Recommendations/blob/master/doc/sar.md) as implemented by Recommenders'
``SARSingleNode`` (recommenders/models/sar/sar_singlenode.py, v1.2.1), whose recommendations this
module reproduces item for item (tests/test_sar.py). From rows (user u, item i, rating r, time t):

1. Co-occurrence. ``B`` is the binarised users × items matrix (B_ui = 1 if u has any row for i) and
   ``C = Bᵀ B``: C_ij is the number of users of both i and j, d_i = C_ii the number of users of i.
   Entries below ``support_threshold`` are dropped.
2. Item similarity ``S`` from ``C``, on its non-zeros only (S keeps C's sparsity):

   - counts:          S_ij = C_ij
   - jaccard:         S_ij = C_ij / (d_i + d_j − C_ij)
   - lift:            S_ij = C_ij / (d_i d_j)
   - cosine:          S_ij = C_ij / √(d_i d_j)
   - inclusion index: S_ij = C_ij / min(d_i, d_j)

   Recommenders' mutual information, log₂(n_items · lift), is −∞ where C_ij = 0, which turns whole
   score rows into −∞ or NaN there; it has no faithful sparse form and is left out.
3. Affinity. A_ui = Σ r · w(t) over u's rows for i (duplicate rows add up, as in SARSingleNode), with
   the half-life decay w(t) = min(1, 2^(−(T − t) / H)), H = ``time_decay_days`` in seconds and
   T = ``time_now`` (default: the latest timestamp in train; timestamps are Unix seconds).
   ``time_decay_days=None`` sets w = 1: the affinity is the summed rating.
4. Scores R = A S, computed for ``block_size`` users at a time; items the user has seen are excluded
   (``exclude_seen``), the ``k`` best are returned, ties to the lower item id.
5. ``normalize=True`` maps each user's scores onto the rating scale [r_min, r_max] of train:
   with N = W S, W_ui = Σ w(t) (the affinity of unit ratings), lo = r_min · min_i N_ui and
   hi = r_max · max_i N_ui, R'_ui = r_min + (R_ui − lo)(r_max − r_min) / (hi − lo). Unlike
   SARSingleNode, r_min and r_max are the raw ratings, not the time-decayed ones.

S is stored sparse (CSR, float64): SARSingleNode's dense S would need 5.7 GB for 26k items. Scoring
multiplies by a dense copy of S when it fits in ``DENSE_SIMILARITY_BYTES`` (≈5.8k items), which is
faster for the dense S of MovieLens, and by the sparse S otherwise.

Column shards. Every step above is column-separable: S[:, c] needs only C[:, c] = Bᵀ B[:, c] and the
item counts d, the scores of items c are A S[:, c], and the top k of a user is the top k of the union of
the per-shard top k (ordered by score, then item). ``similarity_columns``, ``unit_score_range``,
``top_k_items`` and ``merge_top_k`` compute a shard each; ``tasks/sar_dask.py`` runs them on a Dask
cluster, one dense shard per worker. They do the same float64 operations in the same order as the
single-node path (which is ``top_k_items`` over one shard), so both give the same items, order and
scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recmodels._columns import ITEM, RATING, TIMESTAMP, USER, require_columns
from recmodels.base import (
    IdIndex,
    interaction_matrix,
    mask_seen,
    recommendations_frame,
    require_fitted,
    top_k_dense,
    user_blocks,
)
from recmodels.errors import EmptySplit, InvalidConfig

Similarity = Literal["jaccard", "lift", "cosine", "counts", "inclusion index"]
SIMILARITIES: tuple[str, ...] = get_args(Similarity)
SECONDS_PER_DAY = 86_400
DENSE_SIMILARITY_BYTES = 2**28
SHARD_CHUNK_ELEMENTS = 2**22  # item rows × shard columns counted at once by ``similarity_columns``
DENSE_USER_SHARE = 0.05  # users of more items are counted with BLAS (measured: cheaper above ≈ 6%)


def cooccurrence(seen: sp.csr_matrix) -> sp.csr_matrix:
    """Item co-occurrence C = Bᵀ B of the binarised users × items matrix ``seen`` (int64 counts)."""
    binary = seen.astype(bool).astype(np.int64)
    return binary.T.tocsr() @ binary  # CSR @ CSR: no conversion of the (large) product


def similarity_from_cooccurrence(
    counts: sp.csr_matrix, kind: Similarity = "jaccard", support_threshold: int = 1
) -> sp.csr_matrix:
    """Item × item similarity (CSR, float64) from co-occurrence counts, below-threshold pairs dropped."""
    counts = counts.tocsr().astype(np.float64)
    counts.data[counts.data < support_threshold] = 0
    counts.eliminate_zeros()
    d = counts.diagonal()
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    values = _similarity(counts.data, d[rows], d[counts.indices], kind)
    return sp.csr_matrix((values, counts.indices, counts.indptr), shape=counts.shape)


def similarity_columns(
    seen: sp.csr_matrix,
    columns: slice,
    kind: Similarity = "jaccard",
    support_threshold: int = 1,
    chunk_elements: int = SHARD_CHUNK_ELEMENTS,
) -> np.ndarray:
    """The dense column shard S[:, columns] (items × shard width, float64) of ``seen``'s similarity.

    Equal, entry for entry, to ``similarity_from_cooccurrence(cooccurrence(seen), ...)[:, columns]``
    without forming C: C[r, columns] = B[:, r]ᵀ B[:, columns] is counted for chunks r of item rows
    holding at most ``chunk_elements`` entries. Users with more than ``DENSE_USER_SHARE`` of the items
    (21% of the users of synthetic-1m, 95% of its co-occurring pairs) are counted by a float32 matrix
    product of their dense rows, exact below 2²⁴ such users; the others by a sparse product.
    """
    n_items = seen.shape[1]
    binary = seen.astype(bool)
    heavy = np.diff(binary.indptr) > DENSE_USER_SHARE * n_items
    light = binary[~heavy].astype(np.int32)
    light_by_item, light_shard = light.T.tocsr(), light[:, columns].tocsr()
    dense = binary[heavy].astype(np.float32).toarray()  # ≤ 40 bytes per interaction
    dense_shard = dense[:, columns]
    # d = diag C before the threshold: > 0 for every item, so below-threshold zeros divide to 0.
    users_per_item = np.bincount(binary.indices, minlength=n_items).astype(np.float64)
    d_columns = users_per_item[None, columns]
    out = np.empty((n_items, light_shard.shape[1]))
    for rows in user_blocks(n_items, max(1, chunk_elements // max(1, light_shard.shape[1]))):
        counts = (light_by_item[rows] @ light_shard).toarray().astype(np.float64)
        counts += dense[:, rows].T @ dense_shard
        counts[counts < support_threshold] = 0
        _similarity(counts, users_per_item[rows, None], d_columns, kind, out=out[rows])
    return out


def _similarity(
    c: np.ndarray, di: np.ndarray, dj: np.ndarray, kind: str, out: np.ndarray | None = None
) -> np.ndarray:
    """S_ij from C_ij and the item counts d_i, d_j (module docstring, step 2); d > 0 wherever C > 0."""
    match kind:
        case "counts":
            denominator = np.ones_like(c)
        case "jaccard":
            denominator = di + dj - c
        case "lift":
            denominator = di * dj
        case "cosine":
            denominator = np.sqrt(di * dj)
        case "inclusion index":
            denominator = np.minimum(di, dj)
        case _:
            raise InvalidConfig(f"similarity {kind!r} is unknown; use one of {SIMILARITIES}.")
    return np.divide(c, denominator, out=out)


def decay_weights(timestamps: np.ndarray, time_now: float, half_life_days: float | None) -> np.ndarray:
    """w(t) = min(1, 2^(−(time_now − t) / half-life)); all ones when ``half_life_days`` is None."""
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if half_life_days is None:
        return np.ones_like(timestamps)
    age = (time_now - timestamps) / (half_life_days * SECONDS_PER_DAY)
    return np.minimum(1.0, np.power(0.5, age))


def user_affinity(
    interactions: pd.DataFrame, users: IdIndex, items: IdIndex, weights: np.ndarray
) -> sp.csr_matrix:
    """A_ui = Σ rating · weight over u's rows for i (users × items CSR; unknown ids dropped)."""
    values = interactions[RATING].to_numpy(np.float64) * weights
    return interaction_matrix(interactions, users, items, values=values)


def score_block(affinity: sp.csr_matrix, similarity: sp.csr_matrix | np.ndarray) -> np.ndarray:
    """Dense scores A S for a block of users' affinity rows."""
    scores = affinity @ similarity
    return scores.toarray() if sp.issparse(scores) else np.asarray(scores)


def normalize_scores(
    scores: np.ndarray, unit_min: np.ndarray, unit_max: np.ndarray, rating_min: float, rating_max: float
) -> np.ndarray:
    """Rescale each row of ``scores`` to [rating_min, rating_max] given the row's min and max of W S."""
    lo = rating_min * unit_min[:, None]
    hi = rating_max * unit_max[:, None]
    span = np.where(hi > lo, hi - lo, 1.0)
    return rating_min + (scores - lo) * (rating_max - rating_min) / span


@dataclass(frozen=True)
class ScoringInputs:
    """The rows that scoring needs, one per user: raw id, affinity A, unit affinity W (or None), seen B."""

    user_ids: np.ndarray
    affinity: sp.csr_matrix
    unit_affinity: sp.csr_matrix | None
    seen: sp.csr_matrix


def unit_score_range(
    unit_affinity: sp.csr_matrix, similarity: sp.csr_matrix | np.ndarray, block_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's min and max of W S over the columns of ``similarity`` (all items or one shard)."""
    lows, highs = [np.empty(0)], [np.empty(0)]
    for block in user_blocks(unit_affinity.shape[0], block_size):
        unit_scores = score_block(unit_affinity[block], similarity)
        lows.append(unit_scores.min(axis=1))
        highs.append(unit_scores.max(axis=1))
    return np.concatenate(lows), np.concatenate(highs)


def top_k_items(
    inputs: ScoringInputs,
    similarity: sp.csr_matrix | np.ndarray,
    k: int,
    exclude_seen: bool = True,
    block_size: int = 1024,
    first_item: int = 0,
    normalize: tuple[np.ndarray, np.ndarray, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Item positions and scores of each user's ``k`` best items among the columns of ``similarity``.

    ``similarity`` is S or its column shard starting at item ``first_item`` (positions returned are
    global); ``block_size`` users are scored at a time. ``normalize`` = (unit_min, unit_max, r_min,
    r_max) rescales scores as in step 5, with each user's W S range over all items (``unit_score_range``).
    Positions of excluded items come back as -1 (see ``top_k_dense``).
    """
    k = check_k(k)
    width = similarity.shape[1]
    seen = inputs.seen[:, first_item : first_item + width]
    positions, values = [np.empty((0, min(k, width)), np.int64)], [np.empty((0, min(k, width)))]
    for block in user_blocks(len(inputs.user_ids), block_size):
        scores = score_block(inputs.affinity[block], similarity)
        if normalize is not None:
            unit_min, unit_max, rating_min, rating_max = normalize
            scores = normalize_scores(scores, unit_min[block], unit_max[block], rating_min, rating_max)
        if exclude_seen:
            mask_seen(scores, seen[block])
        idx, val = top_k_dense(scores, k)
        positions.append(np.where(idx >= 0, idx + first_item, -1))
        values.append(val)
    return np.concatenate(positions), np.concatenate(values)


def merge_top_k(shards: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of per-shard ``top_k_items`` results: by score, ties to the lower item, -1 last."""
    positions = np.hstack([p for p, _ in shards])
    values = np.hstack([v for _, v in shards])
    order = np.lexsort((positions, -values), axis=1)[:, : check_k(k)]
    return np.take_along_axis(positions, order, axis=1), np.take_along_axis(values, order, axis=1)


@dataclass(eq=False)
class SAR:
    """Smart Adaptive Recommendations with SARSingleNode's defaults (see the module docstring).

    Fitted attributes: ``users_`` and ``items_`` (raw id ⇄ row/column), ``seen_`` (users × items, the
    non-zeros are the seen pairs), ``affinity_`` (A), ``unit_affinity_`` (W, only with ``normalize``),
    ``similarity_`` (S, items × items CSR), ``time_now_`` (None without decay) and ``rating_range_``.
    """

    similarity: Similarity = "jaccard"
    time_decay_days: float | None = 30.0
    support_threshold: int = 1
    time_now: float | None = None
    normalize: bool = False
    block_size: int = 1024

    users_: IdIndex = field(init=False, repr=False)
    items_: IdIndex = field(init=False, repr=False)
    seen_: sp.csr_matrix = field(init=False, repr=False)
    affinity_: sp.csr_matrix = field(init=False, repr=False)
    unit_affinity_: sp.csr_matrix | None = field(init=False, repr=False)
    similarity_: sp.csr_matrix = field(init=False, repr=False)
    time_now_: float | None = field(init=False, repr=False)
    rating_range_: tuple[float, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise InvalidConfig(f"SAR similarity {self.similarity!r} is unknown; use one of {SIMILARITIES}.")
        if self.time_decay_days is not None and not self.time_decay_days > 0:
            raise InvalidConfig(
                f"SAR time_decay_days={self.time_decay_days} must be > 0 (a half-life in days), "
                "or None to turn time decay off."
            )
        if self.support_threshold < 1:
            raise InvalidConfig(f"SAR support_threshold={self.support_threshold} must be >= 1.")
        if self.block_size < 1:
            raise InvalidConfig(f"SAR block_size={self.block_size} must be >= 1.")

    @property
    def _columns(self) -> tuple[str, ...]:
        return (USER, ITEM, RATING) if self.time_decay_days is None else (USER, ITEM, RATING, TIMESTAMP)

    def _weights(self, interactions: pd.DataFrame) -> np.ndarray:
        if self.time_now_ is None:
            return np.ones(len(interactions))
        return decay_weights(interactions[TIMESTAMP].to_numpy(), self.time_now_, self.time_decay_days)

    def fit(self, train: pd.DataFrame) -> SAR:
        """Learn item similarity and user affinity from user_id, item_id, rating[, timestamp] rows."""
        self.fit_affinity(train)
        self.similarity_ = similarity_from_cooccurrence(
            cooccurrence(self.seen_), self.similarity, self.support_threshold
        )
        return self

    def fit_affinity(self, train: pd.DataFrame) -> SAR:
        """Everything ``fit`` learns but the similarity (which a distributed fit builds in shards)."""
        require_columns(train, self._columns, "SAR train")
        if train.empty:
            raise EmptySplit("SAR train has no rows; fit on a non-empty train split.")
        self.users_ = IdIndex.from_values(train[USER])
        self.items_ = IdIndex.from_values(train[ITEM])
        self.time_now_ = None
        if self.time_decay_days is not None:
            self.time_now_ = float(train[TIMESTAMP].max() if self.time_now is None else self.time_now)
        ratings = train[RATING]
        self.rating_range_ = (float(ratings.min()), float(ratings.max()))
        self.seen_ = interaction_matrix(train, self.users_, self.items_)
        weights = self._weights(train)
        self.affinity_ = user_affinity(train, self.users_, self.items_, weights)
        self.unit_affinity_ = (
            interaction_matrix(train, self.users_, self.items_, values=weights) if self.normalize else None
        )
        return self

    def recommend(
        self, users: Iterable[int] | None = None, k: int = 10, exclude_seen: bool = True
    ) -> pd.DataFrame:
        """Top-``k`` items for ``users`` (default: all of train's), seen items excluded unless told.

        Users unknown to the model get no rows; the others come in the order given.
        """
        require_fitted(hasattr(self, "similarity_"), "SAR")
        return self._top_k(self.scoring_inputs(users), k, exclude_seen)

    def recommend_fold_in(
        self, history: pd.DataFrame, k: int = 10, exclude_seen: bool = True
    ) -> pd.DataFrame:
        """Top-``k`` items for the users of ``history``, scored with the fitted similarity (no refit).

        Items unknown to the model are ignored; users with no known item get no rows. Time decay is
        relative to the fitted ``time_now_``.
        """
        require_fitted(hasattr(self, "similarity_"), "SAR")
        return self._top_k(self.fold_in_inputs(history), k, exclude_seen)

    def scoring_inputs(self, users: Iterable[int] | None = None) -> ScoringInputs:
        """The fitted rows of ``users`` (default: all of train's) in the order given, unknown ones dropped."""
        require_fitted(hasattr(self, "affinity_"), "SAR")
        user_ids = (
            self.users_.ids
            if users is None
            else pd.unique(np.asarray(list(users), dtype=self.users_.ids.dtype))
        )
        rows = self.users_.positions(user_ids)
        known = rows >= 0
        rows = rows[known]
        unit = None if self.unit_affinity_ is None else self.unit_affinity_[rows]
        return ScoringInputs(user_ids[known], self.affinity_[rows], unit, self.seen_[rows])

    def fold_in_inputs(self, history: pd.DataFrame) -> ScoringInputs:
        """Rows built from ``history`` for its users, over the fitted items (unknown items ignored)."""
        require_fitted(hasattr(self, "affinity_"), "SAR")
        require_columns(history, self._columns, "SAR fold-in history")
        history = history[self.items_.positions(history[ITEM].to_numpy()) >= 0]
        users = IdIndex.from_values(history[USER])
        weights = self._weights(history)
        affinity = user_affinity(history, users, self.items_, weights)
        unit = interaction_matrix(history, users, self.items_, values=weights) if self.normalize else None
        return ScoringInputs(users.ids, affinity, unit, interaction_matrix(history, users, self.items_))

    def similar_items(self, items: Iterable[int], k: int = 10) -> pd.DataFrame:
        """The ``k`` items most similar to each of ``items``: DataFrame(item_id, similar_item_id, score, rank).

        An item is never its own neighbour; pairs below the support threshold are never returned.
        """
        require_fitted(hasattr(self, "similarity_"), "SAR")
        item_ids = pd.unique(np.asarray(list(items), dtype=self.items_.ids.dtype))
        rows = self.items_.positions(item_ids)
        rows = rows[rows >= 0]
        scores = self.similarity_[rows].toarray()
        scores[scores == 0] = -np.inf
        scores[np.arange(len(rows)), rows] = -np.inf
        idx, val = top_k_dense(scores, check_k(k))
        frame = recommendations_frame(self.items_.ids[rows], idx, val, self.items_)
        return frame.rename(columns={ITEM: "similar_item_id", USER: ITEM})

    def _top_k(self, inputs: ScoringInputs, k: int, exclude_seen: bool) -> pd.DataFrame:
        n_items = len(self.items_)
        dense = n_items * n_items * 8 <= DENSE_SIMILARITY_BYTES
        similarity = self.similarity_.toarray() if dense else self.similarity_
        normalize = None
        if inputs.unit_affinity is not None:
            unit_range = unit_score_range(inputs.unit_affinity, similarity, self.block_size)
            normalize = (*unit_range, *self.rating_range_)
        idx, val = top_k_items(inputs, similarity, k, exclude_seen, self.block_size, normalize=normalize)
        return recommendations_frame(inputs.user_ids, idx, val, self.items_)


def check_k(k: int) -> int:
    """``k`` if it is a valid number of items per user, else :class:`InvalidConfig`."""
    if k < 1:
        raise InvalidConfig(f"k={k} must be >= 1 (the number of items to return per user).")
    return k
