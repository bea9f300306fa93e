"""What every model shares: the raw-id ⇄ dense-index mapping, sparse interaction matrices, block top-k.

Models map raw ids to dense indices internally and map back in ``recommend``; see
``../shared/DESIGN.md`` ("Raw ids are kept in the canonical table").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recmodels._columns import ITEM, USER, require_columns
from recmodels.errors import NotFitted


@runtime_checkable
class Recommender(Protocol):
    """The interface of every model in :mod:`recmodels`."""

    def fit(self, train: pd.DataFrame) -> Recommender:
        """Learn from a DataFrame with columns user_id, item_id, rating, timestamp (raw integer ids)."""
        ...

    def recommend(
        self, users: Iterable[int] | None = None, k: int = 10, exclude_seen: bool = True
    ) -> pd.DataFrame:
        """Top-``k`` items per user: DataFrame(user_id, item_id, score, rank), rank 1 = best.

        ``users=None`` means every user seen in ``fit``. Users unknown to the model get no rows.
        """
        ...


@dataclass(frozen=True)
class IdIndex:
    """Sorted raw ids and their dense positions 0..n-1."""

    ids: np.ndarray

    @classmethod
    def from_values(cls, values: Iterable[int] | pd.Series | np.ndarray) -> IdIndex:
        return cls(np.unique(np.asarray(values)))

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, values: pd.Series | np.ndarray) -> np.ndarray:
        """Dense index of each raw id; -1 where the id is unknown."""
        return pd.Index(self.ids).get_indexer(np.asarray(values)).astype(np.int64, copy=False)


def interaction_matrix(
    df: pd.DataFrame,
    users: IdIndex,
    items: IdIndex,
    values: np.ndarray | None = None,
) -> sp.csr_matrix:
    """users × items CSR matrix in canonical form (each row's columns sorted, duplicate (user, item)
    pairs summed); unknown ids are dropped.

    One sort: COO → CSR buckets the rows, then sums duplicates after sorting each row's columns once and
    flags the result canonical (the former extra ``sum_duplicates`` and callers' ``sort_indices`` were
    repeated passes over work already done).
    """
    require_columns(df, (USER, ITEM))
    rows = users.positions(df[USER].to_numpy())
    cols = items.positions(df[ITEM].to_numpy())
    data = np.ones(len(df), dtype=np.float64) if values is None else np.asarray(values, dtype=np.float64)
    keep = (rows >= 0) & (cols >= 0)
    coo = sp.coo_matrix((data[keep], (rows[keep], cols[keep])), shape=(len(users), len(items)))
    return coo.tocsr()


def user_blocks(n_users: int, block_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``block_size`` users."""
    for start in range(0, n_users, block_size):
        yield slice(start, min(start + block_size, n_users))


def top_k_dense(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the ``k`` largest entries of each row, best first.

    Ties are broken by the lower item index, so results are deterministic. ``-inf`` entries
    (excluded items) are never returned: their positions come back as -1.
    """
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if k == 0:
        return np.empty((n_rows, 0), np.int64), np.empty((n_rows, 0), scores.dtype)
    part = (
        np.argpartition(-scores, k - 1, axis=1)[:, :k]
        if k < n_cols
        else np.tile(np.arange(n_cols), (n_rows, 1))
    )
    part_scores = np.take_along_axis(scores, part, axis=1)
    # Sort candidates by (-score, index) so that ties go to the lower item index.
    order = np.lexsort((part, -part_scores), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    val = np.take_along_axis(part_scores, order, axis=1)
    if k < n_cols:
        # argpartition may cut a tie at the k-th value arbitrarily; repair rows where that happened.
        kth = val[:, -1:]
        ties_outside = (scores == kth).sum(axis=1) > (val == kth).sum(axis=1)
        for r in np.flatnonzero(ties_outside):
            row = scores[r]
            full = np.lexsort((np.arange(n_cols), -row))[:k]
            idx[r], val[r] = full, row[full]
    idx = np.where(np.isneginf(val), -1, idx)
    return idx, val


def recommendations_frame(
    user_ids: np.ndarray,
    item_positions: np.ndarray,
    scores: np.ndarray,
    items: IdIndex,
) -> pd.DataFrame:
    """Long DataFrame(user_id, item_id, score, rank) from per-row top-k arrays (-1 positions dropped)."""
    n_rows, k = item_positions.shape
    ranks = np.tile(np.arange(1, k + 1), n_rows)
    users = np.repeat(np.asarray(user_ids), k)
    pos = item_positions.ravel()
    keep = pos >= 0
    return pd.DataFrame(
        {
            USER: users[keep],
            ITEM: items.ids[pos[keep]],
            "score": scores.ravel()[keep].astype(np.float64),
            "rank": ranks[keep].astype(np.int64),
        }
    )


def mask_seen(scores: np.ndarray, seen: sp.csr_matrix) -> None:
    """Set scores of items already seen (non-zeros of ``seen``, same shape) to ``-inf`` in place."""
    coo = seen.tocoo()
    scores[coo.row, coo.col] = -np.inf


def require_fitted(fitted: bool, model: str) -> None:
    if not fitted:
        raise NotFitted(f"{model}.recommend() was called before fit(); call {model}.fit(train) first.")
