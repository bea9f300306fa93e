"""Most-popular baseline: every user gets the items with the most interactions in train.

score(u, i) = |{rows of train with item i}| (duplicate rows count), the same for every user; items the
user has seen are excluded, ties go to the lower item id. It is the non-personalised reference that
personalised models must beat (e.g. Recommenders' ``SARSingleNode.get_popularity_based_topk``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recmodels._columns import ITEM, USER, require_columns
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


@dataclass(eq=False)
class Popularity:
    """Recommend the most frequent items of train."""

    block_size: int = 4096

    users_: IdIndex = field(init=False, repr=False)
    items_: IdIndex = field(init=False, repr=False)
    counts_: np.ndarray = field(init=False, repr=False)
    ranking_: np.ndarray = field(init=False, repr=False)
    seen_: sp.csr_matrix = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise InvalidConfig(f"Popularity block_size={self.block_size} must be >= 1.")

    def fit(self, train: pd.DataFrame) -> Popularity:
        """Count the rows of each item; ``ranking_`` lists item positions by (count desc, item id)."""
        require_columns(train, (USER, ITEM), "Popularity train")
        if train.empty:
            raise EmptySplit("Popularity train has no rows; fit on a non-empty train split.")
        self.users_ = IdIndex.from_values(train[USER])
        self.items_ = IdIndex.from_values(train[ITEM])
        positions = self.items_.positions(train[ITEM].to_numpy())
        self.counts_ = np.bincount(positions, minlength=len(self.items_)).astype(np.float64)
        self.ranking_ = np.lexsort((np.arange(len(self.items_)), -self.counts_))
        self.seen_ = interaction_matrix(train, self.users_, self.items_)
        return self

    def recommend(
        self, users: Iterable[int] | None = None, k: int = 10, exclude_seen: bool = True
    ) -> pd.DataFrame:
        """Top-``k`` items for ``users`` (default: all of train's); unknown users get no rows."""
        require_fitted(hasattr(self, "counts_"), "Popularity")
        user_ids = (
            self.users_.ids if users is None else pd.unique(np.asarray(list(users), self.users_.ids.dtype))
        )
        rows = self.users_.positions(user_ids)
        known = rows >= 0
        return self._top_k(user_ids[known], self.seen_[rows[known]], k, exclude_seen)

    def recommend_fold_in(
        self, history: pd.DataFrame, k: int = 10, exclude_seen: bool = True
    ) -> pd.DataFrame:
        """Top-``k`` items for every user of ``history`` (users need not be in train; no refit)."""
        require_fitted(hasattr(self, "counts_"), "Popularity")
        require_columns(history, (USER, ITEM), "Popularity fold-in history")
        users = IdIndex.from_values(history[USER])
        return self._top_k(users.ids, interaction_matrix(history, users, self.items_), k, exclude_seen)

    def _top_k(self, user_ids: np.ndarray, seen: sp.csr_matrix, k: int, exclude_seen: bool) -> pd.DataFrame:
        """Score only the best ``k`` + (most items seen by a user of the block) items: enough for everyone."""
        if k < 1:
            raise InvalidConfig(f"k={k} must be >= 1 (the number of items to return per user).")
        frames = []
        for block in user_blocks(len(user_ids), self.block_size):
            block_seen = seen[block]
            extra = int(block_seen.getnnz(axis=1).max()) if exclude_seen else 0
            candidates = self.ranking_[: k + extra]
            scores = np.tile(self.counts_[candidates], (block_seen.shape[0], 1))
            if exclude_seen:
                mask_seen(scores, block_seen[:, candidates])
            idx, val = top_k_dense(scores, k)
            items = np.where(idx >= 0, candidates[idx], -1)
            frames.append(recommendations_frame(user_ids[block], items, val, self.items_))
        if not frames:
            return recommendations_frame(user_ids, np.empty((0, k), np.int64), np.empty((0, k)), self.items_)
        return pd.concat(frames, ignore_index=True)
