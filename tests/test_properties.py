"""Property tests (hypothesis) of every split strategy and of the ranking metrics.

Splits: every row lands in exactly one set (the ``rating`` column carries a row id, so rows are told
apart), the same seed gives the same split, users are kept where the protocol keeps them and nothing
leaks where it forbids it (users across strong generalisation's sets, future rows into a temporal train
set). Metrics: bounds in [0, 1], invariance to row order, a perfect ranking scores 1, and equality with a
plain per-user reference written here from the formulas of ``recmodels/metrics.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st

from recmodels import metrics
from recmodels.errors import EmptySplit
from recmodels.preprocessing import (
    Split,
    split_leave_one_out,
    split_random,
    split_stratified,
    split_strong_generalization,
    split_temporal,
)

PROPERTIES = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)


@st.composite
def interactions(draw: st.DrawFn, min_per_user: int = 4, max_users: int = 12) -> pd.DataFrame:
    """A canonical table of 2..max_users users with min_per_user..10 rows each, in shuffled order;
    ``rating`` is the row id (0..n-1) and timestamps repeat, so ties are exercised."""
    n_users = draw(st.integers(2, max_users))
    counts = draw(st.lists(st.integers(min_per_user, 10), min_size=n_users, max_size=n_users))
    users = np.repeat(np.array(draw(st.permutations(range(100, 100 + n_users)))), counts)
    n = len(users)
    items = draw(st.lists(st.integers(1, 25), min_size=n, max_size=n))
    times = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    order = np.array(draw(st.permutations(range(n))))
    return pd.DataFrame(
        {
            "user_id": users[order].astype("int64"),
            "item_id": np.array(items, "int64"),
            "rating": np.arange(n, dtype="float32"),
            "timestamp": np.array(times, "int64"),
        }
    )


def row_ids(*frames: pd.DataFrame | None) -> list[int]:
    return sorted(int(r) for f in frames if f is not None for r in f["rating"])


def assert_partition(df: pd.DataFrame, result: Split) -> None:
    """Every input row in exactly one set, unchanged."""
    parts = [f for f in result.frames().values()]
    assert row_ids(*parts) == list(range(len(df)))
    joined = pd.concat(parts).sort_values("rating").reset_index(drop=True)
    pd.testing.assert_frame_equal(joined, df.sort_values("rating").reset_index(drop=True))


def assert_same_split(a: Split, b: Split) -> None:
    for name, frame in a.frames().items():
        pd.testing.assert_frame_equal(frame, b.frames()[name])


@PROPERTIES
@given(df=interactions(), seed=st.integers(0, 2**31 - 1), three_way=st.booleans())
def test_random_split_partitions_rows_by_ratio_and_seed(df: pd.DataFrame, seed: int, three_way: bool) -> None:
    ratios = (0.6, 0.2, 0.2) if three_way else (0.8, 0.2)
    result = split_random(df, ratios, seed=seed)
    assert_partition(df, result)
    assert_same_split(result, split_random(df, ratios, seed=seed))
    n = len(df)
    if not three_way:
        assert len(result.train) == math.floor(0.8 * n) and result.validation.empty
    else:
        assert len(result.train) == round(0.6 * n) and len(result.train) + len(result.validation) == round(
            0.8 * n
        )


@PROPERTIES
@given(df=interactions(), seed=st.integers(0, 2**31 - 1), three_way=st.booleans())
def test_stratified_split_keeps_every_user_in_train_with_their_share(
    df: pd.DataFrame, seed: int, three_way: bool
) -> None:
    ratios = (0.6, 0.2, 0.2) if three_way else (0.75, 0.25)
    result = split_stratified(df, ratios, seed=seed)
    assert_partition(df, result)
    assert_same_split(result, split_stratified(df, ratios, seed=seed))
    counts = df["user_id"].value_counts()
    train_counts = result.train["user_id"].value_counts()
    assert set(train_counts.index) == set(counts.index), "every user keeps training rows"
    expected = np.round(ratios[0] * counts.to_numpy())  # NumPy's half-to-even, as documented
    assert (train_counts[counts.index].to_numpy() == expected).all()
    held_out = pd.concat([result.validation, result.test])
    assert set(held_out["user_id"]) <= set(result.train["user_id"]), "no user unseen in train"


@PROPERTIES
@given(df=interactions(), three_way=st.booleans())
def test_temporal_split_never_trains_on_a_users_future(df: pd.DataFrame, three_way: bool) -> None:
    ratios = (0.6, 0.2, 0.2) if three_way else (0.75, 0.25)
    result = split_temporal(df, ratios)
    assert_partition(df, result)
    assert_same_split(result, split_temporal(df, ratios))
    assert set(result.train["user_id"]) == set(df["user_id"])
    last_train = result.train.groupby("user_id")["timestamp"].max()
    for later in (result.validation, result.test):
        first_later = later.groupby("user_id")["timestamp"].min()
        assert (first_later >= last_train[first_later.index]).all()
    if three_way and not result.validation.empty:
        last_validation = result.validation.groupby("user_id")["timestamp"].max()
        first_test = result.test.groupby("user_id")["timestamp"].min()
        common = first_test.index.intersection(last_validation.index)
        assert (first_test[common] >= last_validation[common]).all()


@PROPERTIES
@given(df=interactions(min_per_user=3))
def test_leave_one_out_holds_out_each_users_last_two(df: pd.DataFrame) -> None:
    result = split_leave_one_out(df)
    assert_partition(df, result)
    assert_same_split(result, split_leave_one_out(df))
    users = set(df["user_id"])
    for held_out in (result.validation, result.test):
        assert sorted(held_out["user_id"]) == sorted(users), "exactly one row per user"
    assert set(result.train["user_id"]) == users
    validation, test = (
        part.set_index("user_id")["timestamp"].sort_index() for part in (result.validation, result.test)
    )
    last_train = result.train.groupby("user_id")["timestamp"].max().sort_index()
    assert (test.to_numpy() >= validation.to_numpy()).all()
    assert (last_train.to_numpy() <= validation.to_numpy()).all()


@PROPERTIES
@given(
    df=interactions(min_per_user=2, max_users=20),
    seed=st.integers(0, 2**31 - 1),
    fold_in=st.sampled_from([0.5, 0.8]),
)
def test_strong_generalization_keeps_user_sets_apart(df: pd.DataFrame, seed: int, fold_in: float) -> None:
    n_users = df["user_id"].nunique()
    assume(n_users >= 3)
    try:
        result = split_strong_generalization(df, n_heldout_users=1, fold_in_fraction=fold_in, seed=seed)
    except EmptySplit:  # a held-out user with < 5 rows keeps them all in fold-in: nothing to predict
        reject()
    assert_same_split(
        result, split_strong_generalization(df, n_heldout_users=1, fold_in_fraction=fold_in, seed=seed)
    )
    sets = {name: set(frame["user_id"]) for name, frame in result.frames().items()}
    assert sets["validation"] <= sets["validation_fold_in"] and sets["test"] <= sets["test_fold_in"]
    heldout_users = [sets["validation_fold_in"], sets["test_fold_in"]]
    assert not sets["train"] & (heldout_users[0] | heldout_users[1]), "a held-out user leaked into train"
    assert not heldout_users[0] & heldout_users[1]
    assert len(sets["train"]) + sum(map(len, heldout_users)) <= n_users
    train_items = set(result.train["item_id"])
    for name in ("validation", "test", "validation_fold_in", "test_fold_in"):
        assert set(result.frames()[name]["item_id"]) <= train_items, f"{name} has an item unseen in train"
    # every row in exactly one set, except held-out users' rows of items absent from train (removed)
    kept = row_ids(*result.frames().values())
    assert len(kept) == len(set(kept))
    dropped = df[~df["rating"].isin(kept)]
    assert not set(dropped["user_id"]) & sets["train"] and not set(dropped["item_id"]) & train_items


# --- metrics -------------------------------------------------------------------------------------


@st.composite
def ranking_case(draw: st.DrawFn) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Recommendations (ties, duplicate pairs and users without truth included), truth and k."""
    n_users = draw(st.integers(1, 6))
    recs, truth = [], []
    for user in range(n_users):
        relevant = draw(st.sets(st.integers(0, 15), min_size=1, max_size=8))
        truth += [(user, item) for item in relevant]
        listed = draw(st.lists(st.tuples(st.integers(0, 15), st.integers(1, 12)), max_size=14))
        recs += [(user, item, rank) for item, rank in listed]
    recs += [(99, 0, 1)] * draw(st.integers(0, 1))  # a user outside truth: ignored
    recommendations = pd.DataFrame(recs, columns=["user_id", "item_id", "rank"], dtype="int64")
    return recommendations, pd.DataFrame(truth, columns=["user_id", "item_id"]), draw(st.integers(1, 12))


def reference(recommendations: pd.DataFrame, truth: pd.DataFrame, k: int) -> dict[str, float]:
    """Plain loops over users: sort by (rank, item), keep each item's first listing, score the top k."""
    totals = dict.fromkeys(("precision", "recall", "map", "ndcg", "hr", "mrr"), 0.0)
    users = sorted(set(truth["user_id"]))
    for user in users:
        relevant = set(truth.loc[truth["user_id"] == user, "item_id"])
        mine = recommendations[recommendations["user_id"] == user]
        listed: list[int] = []
        for _, item in sorted(zip(mine["rank"], mine["item_id"], strict=True)):
            if item not in listed:
                listed.append(item)
        hits = [item in relevant for item in listed]
        top = hits[:k]
        totals["precision"] += sum(top) / k
        totals["recall"] += sum(top) / len(relevant)
        totals["map"] += sum(sum(top[: i + 1]) / (i + 1) for i, h in enumerate(top) if h) / len(relevant)
        dcg = sum(1 / math.log2(i + 2) for i, h in enumerate(top) if h)
        totals["ndcg"] += dcg / sum(1 / math.log2(i + 2) for i in range(min(k, len(relevant))))
        totals["hr"] += float(any(top))
        totals["mrr"] += next((1 / (i + 1) for i, h in enumerate(hits) if h), 0.0)
    return {name: value / len(users) for name, value in totals.items()}


def computed(recommendations: pd.DataFrame, truth: pd.DataFrame, k: int) -> dict[str, float]:
    values = metrics.evaluate(recommendations, truth, k=k, n_items=16)
    return {
        "precision": values[f"precision_at_{k}"],
        "recall": values[f"recall_at_{k}"],
        "f1": values[f"f1_at_{k}"],
        "map": values[f"map_at_{k}"],
        "ndcg": values[f"ndcg_at_{k}"],
        "hr": values[f"hr_at_{k}"],
        "mrr": values["mrr"],
        "coverage": values[f"coverage_at_{k}"],
    }


@PROPERTIES
@given(case=ranking_case())
def test_metrics_equal_a_plain_reference_and_lie_in_0_1(case) -> None:
    recommendations, truth, k = case
    values = computed(recommendations, truth, k)
    expected = reference(recommendations, truth, k)
    for name, value in expected.items():
        assert values[name] == pytest.approx(value, abs=1e-12), name
    p, r = expected["precision"], expected["recall"]
    assert values["f1"] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)
    assert all(0.0 <= v <= 1.0 for v in values.values()), values


@PROPERTIES
@given(case=ranking_case(), seed=st.integers(0, 2**32 - 1))
def test_metrics_do_not_depend_on_row_order(case, seed: int) -> None:
    recommendations, truth, k = case
    shuffled = [
        f.sample(frac=1.0, random_state=np.random.RandomState(seed)) for f in (recommendations, truth)
    ]
    assert computed(*shuffled, k) == pytest.approx(computed(recommendations, truth, k), abs=1e-12)


@PROPERTIES
@given(case=ranking_case())
def test_a_perfect_ranking_scores_1(case) -> None:
    _, truth, _ = case
    perfect = truth.sort_values(["user_id", "item_id"]).assign(
        rank=lambda f: f.groupby("user_id").cumcount() + 1
    )
    k = int(truth.groupby("user_id").size().max())
    values = computed(perfect, truth, k)
    for name in ("recall", "map", "ndcg", "hr", "mrr"):
        assert values[name] == pytest.approx(1.0), name
    assert metrics.recall_at_k_vaecf(perfect, truth, k=1) == pytest.approx(1.0)
