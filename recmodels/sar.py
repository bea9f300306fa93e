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
4. Scores R = A S; items the user has seen are excluded (``exclude_seen``), the ``k`` best are
   returned, ties to the lower item id.
5. ``normalize=True`` maps each user's scores onto the rating scale [r_min, r_max] of train:
   with N = W S, W_ui = Σ w(t) (the affinity of unit ratings), lo = r_min · min_i N_ui and
   hi = r_max · max_i N_ui, R'_ui = r_min + (R_ui − lo)(r_max − r_min) / (hi − lo). Unlike
   SARSingleNode, r_min and r_max are the raw ratings, not the time-decayed ones.

Kernels. The steps run as numba kernels in float64 that do the same operations in the same order as
the plain scipy/numpy definitions this module keeps as the documented math (``cooccurrence`` and
``similarity_from_cooccurrence`` for steps 1-2; ``score_block``, ``normalize_scores``, then
``base.mask_seen`` and ``base.top_k_dense`` for steps 4-5): tests/test_sar.py checks each kernel
against them bit for bit, and the model against SARSingleNode.

- ``similarity_columns`` builds S[:, c] dense, one item row r at a time: C[r, c] is counted from the
  item lists of r's users into a per-thread counter, thresholded and turned into S[r, c] at once, so C
  is never formed. S is symmetric, so each pair inside the shard is counted once and mirrored: about
  Σ_u n_u² / 2 increments, n_u = u's items. S is dense, as in SARSingleNode: n_items² × 8 bytes, 5.7 GB
  at 26,744 items, where a sparse C (99.85% dense) would add 8.6 GB; for more items, use the Dask shards.
- ``top_k_items`` computes R = A S one tile of ``SCORE_TILE`` columns at a time: the tile S[:, tile] is
  copied contiguous (3.8 MB at 3,706 items; 27 MB at 26,744, beyond a core's 2 MB L2), and every
  user's tile of scores is summed from its affinity row, normalised, its seen items skipped and the rest
  folded into the user's running top k. Nothing of size users × items is formed: memory beyond S and
  the sparse inputs is users × k.
- Cache blocking (GitHub issue 18): users are scored in groups of ``block_size`` users of similar
  activity (sorted by their number of affinity entries), and a group reads the tile in blocks of item
  rows, in increasing item order: each user adds its entries inside the block to its accumulator row
  before the group moves on, so a block stays in L2 while the group's users read it. A block holds
  ``VISIT_ENTRIES`` of a user's entries on average (at least ``ROW_BLOCK`` rows, at most the tile):
  short blocks for groups of heavy users, whose reads then come from L2, the whole tile for light
  users, who read too few rows of any block to reuse it. Every score is still the sum of the same
  products in the same order (the user's entries by increasing item), so the scores and the lists,
  ties included, are bit-identical to the unblocked kernel's (tests/test_sar.py).
- Both use every core (``prange`` over item rows, resp. blocks of ``block_size`` users); results do
  not depend on the number of threads.

Column shards. Every step above is column-separable: S[:, c] needs only C[:, c] = Bᵀ B[:, c] and the
item counts d, the scores of items c are A S[:, c], and the top k of a user is the top k of the union of
the per-shard top k (ordered by score, then item). ``similarity_columns``, ``unit_score_range``,
``top_k_items`` and ``merge_top_k`` compute a shard each; ``tasks/sar_dask.py`` runs them on a Dask
cluster, one dense shard per worker, each on the worker's threads (``with_threads``). The single node
is one shard of all items, so both give the same items, order and scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar, get_args

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from numba import prange

from recmodels._columns import ITEM, RATING, TIMESTAMP, USER, require_columns
from recmodels.base import (
    IdIndex,
    interaction_matrix,
    recommendations_frame,
    require_fitted,
    top_k_dense,
)
from recmodels.errors import EmptySplit, InvalidConfig

Similarity = Literal["jaccard", "lift", "cosine", "counts", "inclusion index"]
SIMILARITIES: tuple[str, ...] = get_args(Similarity)
SECONDS_PER_DAY = 86_400
SCORE_TILE = (
    128  # columns scored at a time (synthetic-1m, loaded machine: 64 → 1.9 CPU s, 128 → 1.3, 256 → 1.4)
)
ROW_BLOCK = 256  # fewest item rows of a score tile that a group of users reads before the next rows
VISIT_ENTRIES = 16  # a group's row blocks hold this many of a user's affinity entries on average
T = TypeVar("T")


# --- the plain definitions (steps 1, 2, 4, 5), which the kernels below reproduce -----------------------


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


def _similarity(c: np.ndarray, di: np.ndarray, dj: np.ndarray, kind: str) -> np.ndarray:
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
    return np.divide(c, denominator)


def score_block(affinity: sp.csr_matrix, similarity: sp.csr_matrix | np.ndarray) -> np.ndarray:
    """Dense scores A S for a block of users' affinity rows."""
    scores = affinity @ similarity
    return scores.toarray() if sp.issparse(scores) else np.asarray(scores)


def normalize_scores(
    scores: np.ndarray, unit_min: np.ndarray, unit_max: np.ndarray, rating_min: float, rating_max: float
) -> np.ndarray:
    """Rescale each row of ``scores`` to [rating_min, rating_max] given the row's min and max of W S."""
    lo, span = _normalize_terms(unit_min, unit_max, rating_min, rating_max)
    return rating_min + (scores - lo[:, None]) * (rating_max - rating_min) / span[:, None]


def _normalize_terms(
    unit_min: np.ndarray, unit_max: np.ndarray, rating_min: float, rating_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per user, lo = r_min · min N and the span hi − lo (1 where hi ≤ lo) of step 5."""
    lo = rating_min * unit_min
    hi = rating_max * unit_max
    return lo, np.where(hi > lo, hi - lo, 1.0)


# --- the rest of fit ---------------------------------------------------------------------------------


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


def pattern(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Ones at the stored entries of ``matrix`` (the seen pairs B of an affinity matrix)."""
    return sp.csr_matrix((np.ones(matrix.nnz), matrix.indices, matrix.indptr), shape=matrix.shape)


# --- kernels: shards of S and of the top k -------------------------------------------------------------


def similarity_columns(
    seen: sp.csr_matrix, columns: slice, kind: Similarity = "jaccard", support_threshold: int = 1
) -> np.ndarray:
    """The dense column shard S[:, columns] (items × shard width, float64) of ``seen``'s similarity.

    Equal, bit for bit, to ``similarity_from_cooccurrence(cooccurrence(seen), ...)[:, columns]``,
    without forming C (module docstring, "Kernels"); ``columns`` is a slice of consecutive items.
    """
    if kind not in SIMILARITIES:
        raise InvalidConfig(f"similarity {kind!r} is unknown; use one of {SIMILARITIES}.")
    seen = seen.tocsr()
    if not seen.has_canonical_format:
        seen = seen.copy()
        seen.sum_duplicates()  # sorted item lists, each pair once
    n_items = seen.shape[1]
    start, stop, step = columns.indices(n_items)
    if step != 1:
        raise InvalidConfig(
            f"similarity columns {columns} must be consecutive (step 1); pass slice(start, stop)."
        )
    by_item = seen.T.tocsr()  # the users of each item
    users_per_item = np.bincount(seen.indices, minlength=n_items).astype(np.float64)
    return _similarity_kernel(
        seen.indptr,
        seen.indices,
        by_item.indptr,
        by_item.indices,
        users_per_item,
        start,
        max(start, stop),
        SIMILARITIES.index(kind),
        support_threshold,
        numba.get_num_threads(),
    )


@numba.njit(cache=True, inline="always", error_model="numpy")
def _similarity_value(c: float, di: float, dj: float, kind: int) -> float:
    """``_similarity`` for one pair, ``kind`` its index in SIMILARITIES."""
    if kind == 0:
        return c / (di + dj - c)
    if kind == 1:
        return c / (di * dj)
    if kind == 2:
        return c / np.sqrt(di * dj)
    if kind == 3:
        return c / 1.0
    return c / min(di, dj)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _similarity_kernel(
    user_indptr: np.ndarray,
    user_items: np.ndarray,
    item_indptr: np.ndarray,
    item_users: np.ndarray,
    users_per_item: np.ndarray,
    start: int,
    stop: int,
    kind: int,
    support_threshold: int,
    n_threads: int,
) -> np.ndarray:
    """S[:, start:stop] from the CSR item lists of users and user lists of items (``similarity_columns``).

    S is symmetric (C is, and every formula is symmetric in d_i, d_j, in floating point too), so rows
    r inside the shard count only the columns j ≥ r and the square block is mirrored at the end.
    """
    n_users, n_items, width = len(user_indptr) - 1, len(item_indptr) - 1, stop - start
    first, last = np.empty(n_users, np.int64), np.empty(n_users, np.int64)
    for u in prange(n_users):  # each user's items in [start, stop): user_items[first[u]:last[u]]
        items = user_items[user_indptr[u] : user_indptr[u + 1]]
        first[u] = user_indptr[u] + np.searchsorted(items, start)
        last[u] = user_indptr[u] + np.searchsorted(items, stop)
    out = np.empty((n_items, width))
    for thread in prange(n_threads):
        counts = np.zeros(width, np.int64)
        for r in range(thread, n_items, n_threads):  # interleaved rows: popular items spread evenly
            inside = start <= r < stop
            for q in range(item_indptr[r], item_indptr[r + 1]):
                u = item_users[q]
                begin = first[u]
                if inside:  # from item r itself on
                    begin = user_indptr[u] + np.searchsorted(user_items[user_indptr[u] : last[u]], r)
                for p in range(begin, last[u]):
                    counts[user_items[p] - start] += 1
            for j in range(r - start if inside else 0, width):
                c = np.float64(counts[j]) if counts[j] >= support_threshold else 0.0
                counts[j] = 0
                out[r, j] = _similarity_value(c, users_per_item[r], users_per_item[start + j], kind)
    tile = 64  # the square block's lower triangle, by tiles (its reads go down columns)
    for row in prange((width + tile - 1) // tile):
        for column in range(0, row * tile + 1, tile):
            for b in range(row * tile, min(row * tile + tile, width)):
                for a in range(column, min(column + tile, b)):
                    out[start + b, a] = out[start + a, b]
    return out


@dataclass(frozen=True)
class ScoringInputs:
    """The rows that scoring needs, one per user: raw id, affinity A, unit affinity W (or None), seen B."""

    user_ids: np.ndarray
    affinity: sp.csr_matrix
    unit_affinity: sp.csr_matrix | None
    seen: sp.csr_matrix


def sorted_rows(matrix: sp.spmatrix) -> sp.csr_matrix:
    """``matrix`` as CSR with each row's columns in increasing order (the order scores are summed in)."""
    matrix = matrix.tocsr()
    return matrix if matrix.has_sorted_indices else matrix.sorted_indices()


def unit_score_range(
    unit_affinity: sp.csr_matrix,
    similarity: np.ndarray,
    block_size: int = 1024,
    row_block: int = ROW_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's min and max of W S over the columns of ``similarity`` (all items or one shard)."""
    unit = sorted_rows(unit_affinity)
    similarity = np.ascontiguousarray(similarity, np.float64)
    return _score_range_kernel(
        unit.indptr, unit.indices, unit.data, similarity, block_size, row_block, numba.get_num_threads()
    )


def top_k_items(
    inputs: ScoringInputs,
    similarity: np.ndarray,
    k: int,
    exclude_seen: bool = True,
    block_size: int = 1024,
    first_item: int = 0,
    normalize: tuple[np.ndarray, np.ndarray, float, float] | None = None,
    row_block: int = ROW_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """Item positions and scores of each user's ``k`` best items among the columns of ``similarity``.

    ``similarity`` is S or its dense column shard starting at item ``first_item`` (positions returned
    are global); threads take groups of ``block_size`` users of similar activity, which read the tile
    in row blocks of at least ``row_block`` item rows (module docstring, "Cache blocking"); affinity
    rows are summed in increasing item order. ``normalize`` = (unit_min, unit_max,
    r_min, r_max) rescales scores as in step 5, with each user's W S range over all items
    (``unit_score_range``). Equal, bit for bit, to ``top_k_dense`` of ``score_block`` (normalised by
    ``normalize_scores``, seen items masked by ``mask_seen``): positions of excluded items are -1.
    """
    k = min(check_k(k), similarity.shape[1])
    affinity, seen = sorted_rows(inputs.affinity), sorted_rows(inputs.seen)
    lo = span = np.empty(0)
    rating_min = scale = 0.0
    if normalize is not None:
        unit_min, unit_max, rating_min, rating_max = normalize
        lo, span = _normalize_terms(unit_min, unit_max, rating_min, rating_max)
        scale = rating_max - rating_min
    return _top_k_kernel(
        affinity.indptr,
        affinity.indices,
        affinity.data,
        np.ascontiguousarray(similarity, np.float64),
        seen.indptr,
        seen.indices,
        first_item,
        exclude_seen,
        k,
        lo,
        span,
        rating_min,
        scale,
        block_size,
        row_block,
        numba.get_num_threads(),
    )


@numba.njit(cache=True, inline="always", error_model="numpy")
def _copy_tile(similarity: np.ndarray, start: int, tile: np.ndarray) -> int:
    """Copy similarity[:, start:start + SCORE_TILE] into the front of ``tile``; return its width."""
    n_rows, width = similarity.shape[0], min(SCORE_TILE, similarity.shape[1] - start)
    for block in prange((n_rows + 63) // 64):  # element loops: a slice assignment per row costs ~1 µs
        for i in range(block * 64, min(block * 64 + 64, n_rows)):
            for j in range(width):
                tile[i, j] = similarity[i, start + j]
    return width


@numba.njit(cache=True, error_model="numpy")
def _by_activity(indptr: np.ndarray) -> np.ndarray:
    """Users from the most affinity entries to the fewest (ties by position): groups of similar users."""
    return np.argsort(-np.diff(indptr), kind="mergesort")


@numba.njit(cache=True, inline="always", error_model="numpy")
def _score_group(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    tile: np.ndarray,
    users: np.ndarray,
    row_block: int,
    scores: np.ndarray,
    cursor: np.ndarray,
) -> None:
    """scores[g] = A[users[g]] S[:, tile] for a group of users, S's rows ``row_block`` at a time.

    For each block of item rows in increasing order, every user of the group adds the products of its
    affinity entries inside the block (a cursor walks its sorted CSR row), so each score is the same
    sum in the same order as scipy's CSR × dense (entries in increasing item order) while the block's
    rows stay in cache for the whole group.
    """
    n_rows, entries = tile.shape[0], 0
    for g in range(len(users)):
        cursor[g] = indptr[users[g]]
        scores[g, :] = 0.0
        entries += indptr[users[g] + 1] - indptr[users[g]]
    # blocks in which a user has VISIT_ENTRIES entries on average, at least row_block rows
    rows = n_rows if entries == 0 else (n_rows * VISIT_ENTRIES * len(users)) // entries
    rows = max(row_block, min(rows, n_rows))
    for block_end in range(rows, n_rows + rows, rows):
        for g in range(len(users)):
            p, end = cursor[g], indptr[users[g] + 1]
            if p == end or indices[p] >= block_end:
                continue
            row_scores = scores[g]
            while p < end and indices[p] < block_end:
                a, row = data[p], tile[indices[p]]
                for j in range(SCORE_TILE):
                    row_scores[j] += a * row[j]
                p += 1
            cursor[g] = p


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _score_range_kernel(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    similarity: np.ndarray,
    block_size: int,
    row_block: int,
    n_threads: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's min and max of A S (``unit_score_range``)."""
    n_users = len(indptr) - 1
    low, high = np.full(n_users, np.inf), np.full(n_users, -np.inf)
    order = _by_activity(indptr)
    n_groups = (n_users + block_size - 1) // block_size
    tile = np.zeros((similarity.shape[0], SCORE_TILE))
    for start in range(0, similarity.shape[1], SCORE_TILE):
        width = _copy_tile(similarity, start, tile)
        for thread in prange(n_threads):
            size = min(block_size, n_users)
            scores, cursor = np.empty((size, SCORE_TILE)), np.empty(size, np.int64)
            for group in range(thread, n_groups, n_threads):
                users = order[group * block_size : group * block_size + block_size]
                _score_group(indptr, indices, data, tile, users, row_block, scores, cursor)
                for g in range(len(users)):
                    u = users[g]
                    low[u] = min(low[u], scores[g, :width].min())
                    high[u] = max(high[u], scores[g, :width].max())
    return low, high


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _top_k_kernel(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    similarity: np.ndarray,
    seen_indptr: np.ndarray,
    seen_items: np.ndarray,
    first_item: int,
    exclude_seen: bool,
    k: int,
    lo: np.ndarray,
    span: np.ndarray,
    rating_min: float,
    scale: float,
    block_size: int,
    row_block: int,
    n_threads: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``top_k_items``: each row's k best of A S (normalised if ``lo`` is not empty), best first."""
    n_users = len(indptr) - 1
    positions, values = np.full((n_users, k), -1, np.int64), np.full((n_users, k), -np.inf)
    next_seen = seen_indptr[:-1].astype(np.int64)  # per user: first seen entry not yet passed
    order = _by_activity(indptr)
    n_groups = (n_users + block_size - 1) // block_size
    tile = np.zeros((similarity.shape[0], SCORE_TILE))
    for start in range(0, similarity.shape[1], SCORE_TILE):
        width = _copy_tile(similarity, start, tile)
        for thread in prange(n_threads):
            size = min(block_size, n_users)
            scores, cursor = np.empty((size, SCORE_TILE)), np.empty(size, np.int64)
            for group in range(thread, n_groups, n_threads):
                users = order[group * block_size : group * block_size + block_size]
                _score_group(indptr, indices, data, tile, users, row_block, scores, cursor)
                for g in range(len(users)):
                    u = users[g]
                    best, where = values[u], positions[u]
                    threshold = best[k - 1]
                    s, end = next_seen[u], seen_indptr[u + 1]
                    for j in range(width):
                        item = first_item + start + j
                        if exclude_seen:
                            while s < end and seen_items[s] < item:
                                s += 1
                            if s < end and seen_items[s] == item:
                                continue
                        x = scores[g, j]
                        if len(lo):
                            x = rating_min + (x - lo[u]) * scale / span[u]
                        if x > threshold:  # ties keep the lower item, met first
                            m = k - 1
                            while m > 0 and x > best[m - 1]:
                                best[m], where[m] = best[m - 1], where[m - 1]
                                m -= 1
                            best[m], where[m] = x, item
                            threshold = best[k - 1]
                    next_seen[u] = s
    return positions, values


def with_threads(threads: int, function: Callable[..., T], *args: object) -> T:
    """``function(*args)`` with the kernels on at most ``threads`` threads (a Dask worker's share)."""
    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        return function(*args)
    finally:
        numba.set_num_threads(before)


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
    ``similarity_`` (S, items × items dense float64), ``time_now_`` (None without decay) and
    ``rating_range_``. ``block_size`` is the number of users a thread scores together (a group that reads
    each row block of a score tile before the next, module docstring "Cache blocking").
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
    similarity_: np.ndarray = field(init=False, repr=False)
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
        columns = slice(0, len(self.items_))
        self.similarity_ = similarity_columns(self.seen_, columns, self.similarity, self.support_threshold)
        return self

    def fit_affinity(self, train: pd.DataFrame) -> SAR:
        """Everything ``fit`` learns but the similarity (which a distributed fit builds in shards)."""
        require_columns(train, self._columns, "SAR train")
        if train.empty:
            raise EmptySplit("SAR train has no rows; fit on a non-empty train split.")
        self.users_ = IdIndex.from_values(pd.unique(train[USER]))  # hashing first: sorts only the ids
        self.items_ = IdIndex.from_values(pd.unique(train[ITEM]))
        self.time_now_ = None
        if self.time_decay_days is not None:
            self.time_now_ = float(train[TIMESTAMP].max() if self.time_now is None else self.time_now)
        ratings = train[RATING]
        self.rating_range_ = (float(ratings.min()), float(ratings.max()))
        weights = self._weights(train)
        self.affinity_ = user_affinity(train, self.users_, self.items_, weights)
        self.seen_ = pattern(self.affinity_)
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
        return ScoringInputs(users.ids, affinity, unit, pattern(affinity))

    def similar_items(self, items: Iterable[int], k: int = 10) -> pd.DataFrame:
        """The ``k`` items most similar to each of ``items``: DataFrame(item_id, similar_item_id, score, rank).

        An item is never its own neighbour; pairs below the support threshold are never returned.
        """
        require_fitted(hasattr(self, "similarity_"), "SAR")
        item_ids = pd.unique(np.asarray(list(items), dtype=self.items_.ids.dtype))
        rows = self.items_.positions(item_ids)
        rows = rows[rows >= 0]
        scores = self.similarity_[rows]
        scores[scores == 0] = -np.inf
        scores[np.arange(len(rows)), rows] = -np.inf
        idx, val = top_k_dense(scores, check_k(k))
        frame = recommendations_frame(self.items_.ids[rows], idx, val, self.items_)
        return frame.rename(columns={ITEM: "similar_item_id", USER: ITEM})

    def _top_k(self, inputs: ScoringInputs, k: int, exclude_seen: bool) -> pd.DataFrame:
        similarity = self.similarity_
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
