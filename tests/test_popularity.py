"""Most-popular baseline: hand-computed counts and ties, a brute-force reference, fold-in, errors.

The tiny train set: u1 saw items 10, 20; u2 saw 10, 30; u3 saw 20, 30, 40. Counts: 10 → 2, 20 → 2,
30 → 2, 40 → 1, so the global order is 10, 20, 30 (tied, lower id first), then 40.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recmodels._columns import ITEM, RATING, TIMESTAMP, USER
from recmodels.errors import EmptySplit, InvalidConfig, MissingColumns, NotFitted
from recmodels.popularity import Popularity

TINY = pd.DataFrame(
    {
        USER: [1, 1, 2, 2, 3, 3, 3],
        ITEM: [10, 20, 10, 30, 20, 30, 40],
        RATING: 4.0,
        TIMESTAMP: 1_000_000_000,
    }
)


def lists(recs: pd.DataFrame) -> dict[int, list[tuple[int, float]]]:
    """user → [(item, score), ...] in rank order."""
    recs = recs.sort_values([USER, "rank"])
    return {u: list(zip(g[ITEM].tolist(), g["score"].tolist(), strict=True)) for u, g in recs.groupby(USER)}


def brute_force(train: pd.DataFrame, users: np.ndarray, k: int, seen: pd.DataFrame) -> dict[int, list[int]]:
    """For each user: items sorted by (count desc, id asc), minus those in ``seen``, first k."""
    counts = train[ITEM].value_counts()
    ranked = sorted(counts.index, key=lambda item: (-counts[item], item))
    seen_by = seen.groupby(USER)[ITEM].agg(set).to_dict()
    return {u: [i for i in ranked if i not in seen_by.get(u, set())][:k] for u in users}


def test_counts_exclusions_and_ties():
    recs = Popularity().fit(TINY).recommend(k=10)
    assert lists(recs) == {1: [(30, 2.0), (40, 1.0)], 2: [(20, 2.0), (40, 1.0)], 3: [(10, 2.0)]}
    assert list(recs.columns) == [USER, ITEM, "score", "rank"]
    assert recs["rank"].tolist() == [1, 2, 1, 2, 1]


def test_exclude_seen_off_gives_everyone_the_global_order():
    recs = Popularity().fit(TINY).recommend([3, 1], k=3, exclude_seen=False)
    assert lists(recs) == {u: [(10, 2.0), (20, 2.0), (30, 2.0)] for u in (3, 1)}
    assert recs[USER].tolist() == [3, 3, 3, 1, 1, 1]


def test_duplicate_rows_count_as_interactions():
    train = pd.concat([TINY, TINY.iloc[[6]]], ignore_index=True)  # u3 → 40 twice: 40 now ties at 2
    assert lists(Popularity().fit(train).recommend([1]))[1] == [(30, 2.0), (40, 2.0)]


def test_unknown_users_get_no_rows():
    model = Popularity().fit(TINY)
    assert model.recommend([99, 2, 99], k=1)[USER].tolist() == [2]
    empty = model.recommend([99])
    assert empty.empty
    assert list(empty.columns) == [USER, ITEM, "score", "rank"]


def test_fold_in_users_need_not_be_in_train():
    history = pd.DataFrame({USER: [9, 9, 8], ITEM: [10, 99, 99], RATING: 5.0, TIMESTAMP: 0})
    recs = Popularity().fit(TINY).recommend_fold_in(history, k=3)
    # User 9 has seen 10 (99 is unknown to the model); user 8 has seen nothing the model knows.
    assert lists(recs) == {8: [(10, 2.0), (20, 2.0), (30, 2.0)], 9: [(20, 2.0), (30, 2.0), (40, 1.0)]}


def test_matches_brute_force_on_random_data():
    # Heavy users (up to 40 of 60 items) push many candidates out of the global top k.
    rng = np.random.default_rng(11)
    popular = rng.zipf(1.3, size=3000) % 60
    train = pd.DataFrame({USER: rng.integers(0, 200, size=3000), ITEM: popular, RATING: 1.0, TIMESTAMP: 0})
    train = pd.concat([train, pd.DataFrame({USER: 500, ITEM: np.arange(40), RATING: 1.0, TIMESTAMP: 0})])
    model = Popularity(block_size=16).fit(train)
    recs = model.recommend(k=7)
    got = {u: [i for i, _ in pairs] for u, pairs in lists(recs).items()}
    assert got == brute_force(train, model.users_.ids, 7, seen=train)
    assert len(got[500]) == 7
    fold_in = model.recommend_fold_in(train[train[USER] < 50], k=7)
    pd.testing.assert_frame_equal(fold_in, recs[recs[USER] < 50].reset_index(drop=True))


def test_users_who_saw_almost_everything_get_what_is_left():
    train = pd.DataFrame({USER: [1, 1, 1, 2], ITEM: [1, 2, 3, 3], RATING: 1.0, TIMESTAMP: 0})
    assert lists(Popularity().fit(train).recommend([1, 2], k=5)) == {2: [(1, 1.0), (2, 1.0)]}


def test_not_fitted():
    with pytest.raises(NotFitted, match=r"call Popularity\.fit\(train\) first"):
        Popularity().recommend()
    with pytest.raises(NotFitted):
        Popularity().recommend_fold_in(TINY)


def test_bad_input():
    with pytest.raises(MissingColumns, match=r"\['item_id'\]"):
        Popularity().fit(TINY.drop(columns=ITEM))
    with pytest.raises(EmptySplit, match="no rows"):
        Popularity().fit(TINY.iloc[:0])
    with pytest.raises(InvalidConfig, match="k=0 must be >= 1"):
        Popularity().fit(TINY).recommend(k=0)
    with pytest.raises(InvalidConfig, match="block_size=0"):
        Popularity(block_size=0)
