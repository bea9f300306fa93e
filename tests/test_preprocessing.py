"""Filters and splits: hand-computed cases, reference implementations, and published split sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recmodels import preprocessing as pp
from recmodels._columns import INTERACTION_COLUMNS
from recmodels.errors import EmptySplit, MissingColumns, UnknownSplit

COLUMNS = list(INTERACTION_COLUMNS)


def frame(rows: list[tuple[int, int, float, int]]) -> pd.DataFrame:
    """Canonical table with the dtypes the parsers produce (rating float32)."""
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype({"user_id": np.int64, "item_id": np.int64, "rating": np.float32, "timestamp": np.int64})


def pairs(df: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(df["user_id"], df["item_id"], strict=True))


@pytest.fixture(scope="module")
def ml100k(mirror: Path) -> pd.DataFrame:
    """u.data in file order, as Recommenders' ``movielens.load_pandas_df("100k")`` reads it."""
    df = pd.read_csv(mirror / "ml-100k" / "u.data", sep="\t", names=COLUMNS)
    return df.astype({"rating": np.float32})


@pytest.fixture(scope="module")
def ml_small(mirror: Path) -> pd.DataFrame:
    df = pd.read_csv(mirror / "ml-latest-small" / "ratings.csv")
    return df.set_axis(COLUMNS, axis=1).astype({"rating": np.float32})


# --- filters -----------------------------------------------------------------------------------------


def test_filter_min_interactions_repeats_until_stable() -> None:
    # Thresholds 2/2. Pass 1 drops items 30 and 40 (1 user each); user 3 is left with item 10 alone.
    # Pass 2 drops user 3, leaving item 10 to user 1 alone; pass 3 drops (1, 10), leaving user 1 with
    # item 20 alone; pass 4 drops user 1. Users 2 and 4 with items 20 and 50 (2 each) remain.
    user_items = {1: [10, 20, 40], 2: [20, 50], 3: [10, 30], 4: [20, 50]}
    df = frame([(u, i, 4, 0) for u, items in user_items.items() for i in items])
    out = pp.filter_min_interactions(df, 2, 2)
    assert pairs(out) == {(2, 20), (2, 50), (4, 20), (4, 50)}
    assert out.dtypes.equals(df.dtypes) and list(out.index) == [0, 1, 2, 3]


def test_filter_min_interactions_is_the_k_core_of_real_data(ml_small: pd.DataFrame) -> None:
    out = pp.filter_min_interactions(ml_small, 10, 10)
    assert out.groupby("user_id").size().min() >= 10 and out.groupby("item_id").size().min() >= 10
    # Reference: Recommenders' filter_k_core loop (items, then users, until both hold).
    ref = ml_small
    while True:
        ref = ref[ref.groupby("item_id")["user_id"].transform("size") >= 10]
        ref = ref[ref.groupby("user_id")["item_id"].transform("size") >= 10]
        if ref.groupby("item_id").size().min() >= 10:
            break
    pd.testing.assert_frame_equal(out, ref.reset_index(drop=True))


def test_filter_min_item_zero_is_the_vae_cf_user_filter(ml_small: pd.DataFrame) -> None:
    # filter_triplets(min_uc=5, min_sc=0): one pass over users only.
    out = pp.filter_min_interactions(ml_small, 30, 0)
    expected = ml_small[ml_small.groupby("user_id")["item_id"].transform("size") >= 30]
    pd.testing.assert_frame_equal(out, expected.reset_index(drop=True))


def test_filter_min_interactions_names_the_threshold_that_emptied_the_data() -> None:
    df = frame([(1, 10, 5, 1), (1, 20, 4, 2), (2, 10, 3, 3)])
    with pytest.raises(EmptySplit, match=r"min_user_interactions=3 left nothing.*lower it"):
        pp.filter_min_interactions(df, 3, 1)
    with pytest.raises(EmptySplit, match=r"min_item_interactions=5 left nothing"):
        pp.filter_min_interactions(df, 1, 5)


def test_to_implicit_keeps_ratings_at_or_above_threshold_as_ones() -> None:
    df = frame([(1, 1, 3.0, 1), (1, 2, 3.5, 2), (2, 1, 4.0, 3), (2, 2, 5.0, 4)])
    out = pp.to_implicit(df)  # 4.0: Liang et al.'s "four or higher"
    assert pairs(out) == {(2, 1), (2, 2)}
    assert out["rating"].tolist() == [1.0, 1.0] and out.dtypes.equals(df.dtypes)
    assert len(pp.to_implicit(df, threshold=3.5)) == 3
    with pytest.raises(EmptySplit, match=r"highest rating is 5\.0; lower threshold"):
        pp.to_implicit(df, threshold=6)


def test_transpose_swaps_users_and_items() -> None:
    df = frame([(1, 10, 5, 1), (2, 20, 4, 2)]).astype({"item_id": np.int32})
    out = pp.transpose(df)
    assert list(out.columns) == COLUMNS
    assert pairs(out) == {(10, 1), (20, 2)} and out["user_id"].dtype == np.int32
    pd.testing.assert_frame_equal(pp.transpose(out), df)


def test_missing_columns_raise() -> None:
    df = pd.DataFrame({"user_id": [1], "item_id": [2], "rating": [3.0]})
    for call in (pp.filter_min_interactions, pp.to_implicit, pp.split_random, pp.split_leave_one_out):
        with pytest.raises(MissingColumns, match="timestamp"):
            call(df)


# --- ratio splits ------------------------------------------------------------------------------------


def test_split_random_matches_sklearn_train_test_split(ml100k: pd.DataFrame) -> None:
    # Recommenders' python_random_split(data, ratio=0.8, seed=42) calls exactly this.
    sklearn = pytest.importorskip("sklearn.model_selection")
    train, test = sklearn.train_test_split(ml100k, train_size=0.8, random_state=42)
    out = pp.split_random(ml100k, (0.8, 0.2), seed=42)
    pd.testing.assert_frame_equal(out.train, train.sort_index().reset_index(drop=True))
    pd.testing.assert_frame_equal(out.test, test.sort_index().reset_index(drop=True))
    assert out.validation.empty and list(out.validation.columns) == COLUMNS
    assert out.frames().keys() == {"train", "validation", "test"}


def test_split_random_three_way_matches_recommenders_list_form(ml100k: pd.DataFrame) -> None:
    # Recommenders: data.sample(frac=1, random_state=seed), cut at round(0.7·n), round(0.9·n).
    shuffled = ml100k.sample(frac=1, random_state=7)
    out = pp.split_random(ml100k, [7, 2, 1], seed=7)  # normalised to 0.7, 0.2, 0.1
    assert [len(out.train), len(out.validation), len(out.test)] == [70_000, 20_000, 10_000]
    assert out.validation.equals(shuffled.iloc[70_000:90_000].sort_index().reset_index(drop=True))
    assert out.test.equals(shuffled.iloc[90_000:].sort_index().reset_index(drop=True))


def test_split_stratified_reproduces_recommenders_sar_notebook(ml100k: pd.DataFrame) -> None:
    # examples/00_quick_start/sar_movielens.ipynb: python_stratified_split(data, 0.75, seed=42) prints
    # train 74,992 ratings / 943 users / 1,653 items, test 25,008 / 943 / 1,444.
    out = pp.split_stratified(ml100k, (0.75, 0.25), seed=42)
    for part, expected in ((out.train, (74_992, 943, 1653)), (out.test, (25_008, 943, 1444))):
        assert (len(part), part["user_id"].nunique(), part["item_id"].nunique()) == expected
    # Reference: Recommenders' _do_stratification, step by step.
    data = ml100k.assign(random=np.random.RandomState(42).rand(len(ml100k)))
    data = data.sort_values(["user_id", "random"])
    groups = data.groupby("user_id")
    rank, count = groups.cumcount() + 1, groups["user_id"].transform("count")
    assert pairs(out.train) == pairs(data[rank <= (0.75 * count).round()])
    assert out.train.dtypes.equals(ml100k.dtypes)


def test_split_stratified_rounds_half_to_even_and_drops_light_users() -> None:
    # User 1: 22 rows → 0.75·22 = 16.5 → 16 train, 6 test. User 2: 2 rows → 1.5 → 2 train, 0 test.
    # User 3: 1 row, dropped by min_rating=2.
    rows = [(1, i, 4, i) for i in range(22)] + [(2, 1, 4, 1), (2, 2, 4, 2), (3, 1, 4, 1)]
    out = pp.split_stratified(frame(rows), (0.75, 0.25), seed=0, min_rating=2)
    assert out.train.groupby("user_id").size().to_dict() == {1: 16, 2: 2}
    assert out.test.groupby("user_id").size().to_dict() == {1: 6}


def test_split_stratified_three_way_keeps_each_user_in_every_set(ml_small: pd.DataFrame) -> None:
    out = pp.split_stratified(ml_small, (0.8, 0.1, 0.1), seed=1)
    n_users = ml_small["user_id"].nunique()
    assert all(part["user_id"].nunique() == n_users for part in (out.train, out.validation, out.test))
    assert len(out.train) + len(out.validation) + len(out.test) == len(ml_small)
    assert pairs(out.train).isdisjoint(pairs(out.test)) and pairs(out.validation).isdisjoint(pairs(out.test))
    assert pairs(pp.split_stratified(ml_small, (0.8, 0.1, 0.1), seed=1).test) == pairs(out.test)
    assert pairs(pp.split_stratified(ml_small, (0.8, 0.1, 0.1), seed=2).test) != pairs(out.test)


def test_ratios_leaving_a_user_no_training_row_raise() -> None:
    # 0.2·2 = 0.4 rounds to 0 training rows; a user needs ⌊0.5/0.2⌋ + 1 = 3 interactions.
    rows = [(1, i, 4, i) for i in range(10)] + [(2, 1, 4, 1), (2, 2, 4, 2)]
    with pytest.raises(
        EmptySplit, match=r"fewer than 3 interactions no training row \(1 users\).*min_rating=3"
    ):
        pp.split_stratified(frame(rows), (0.2, 0.8))
    assert len(pp.split_stratified(frame(rows), (0.2, 0.8), min_rating=3).train) == 2


def test_split_temporal_cuts_each_user_by_time_ties_in_row_order() -> None:
    # User 1: 4 rows, times 40, 10, 30, 30 → order items 2, 3, 4 (tie at 30, row order), 1;
    # 0.75·4 = 3 train (items 2, 3, 4), test item 1. User 2: 0.75·2 = 1.5 → 2 train.
    df = frame([(1, 1, 4, 40), (1, 2, 4, 10), (1, 3, 4, 30), (1, 4, 4, 30), (2, 5, 4, 5), (2, 6, 4, 1)])
    out = pp.split_temporal(df)
    assert pairs(out.train) == {(1, 2), (1, 3), (1, 4), (2, 5), (2, 6)} and pairs(out.test) == {(1, 1)}
    # 50/50: user 1 keeps its two earliest (items 2, 3), not the tied item 4 after item 3.
    assert pairs(pp.split_temporal(df, (0.5, 0.5)).test) == {(1, 4), (1, 1), (2, 5)}


def test_split_temporal_never_trains_on_the_future(ml_small: pd.DataFrame) -> None:
    out = pp.split_temporal(ml_small, (0.6, 0.2, 0.2))
    last_train = out.train.groupby("user_id")["timestamp"].max()
    first_valid = out.validation.groupby("user_id")["timestamp"].min()
    last_valid = out.validation.groupby("user_id")["timestamp"].max()
    first_test = out.test.groupby("user_id")["timestamp"].min()
    assert (last_train.loc[first_valid.index] <= first_valid).all()
    assert (last_valid <= first_test.loc[last_valid.index]).all()


# --- leave-one-out -----------------------------------------------------------------------------------


def test_split_leave_one_out_breaks_time_ties_by_item() -> None:
    # User 1: items 7 and 3 share the last timestamp → item 7 (higher id) is last (test), 3 validation.
    df = frame([(1, 7, 4, 50), (1, 3, 4, 50), (1, 9, 4, 10), (2, 1, 4, 3), (2, 2, 4, 2), (2, 3, 4, 1)])
    out = pp.split_leave_one_out(df)
    assert pairs(out.test) == {(1, 7), (2, 1)}
    assert pairs(out.validation) == {(1, 3), (2, 2)}
    assert pairs(out.train) == {(1, 9), (2, 3)}
    assert pairs(pp.split_leave_one_out(df.iloc[::-1]).test) == pairs(out.test)


def test_split_leave_one_out_needs_three_interactions_per_user() -> None:
    df = frame([(1, 1, 4, 1), (1, 2, 4, 2), (1, 3, 4, 3), (2, 1, 4, 1), (2, 2, 4, 2)])
    with pytest.raises(EmptySplit, match=r"1 of 2 users have fewer.*min_user_interactions=3"):
        pp.split_leave_one_out(df)


# --- strong generalization ---------------------------------------------------------------------------


def test_strong_generalization_follows_the_vae_cf_notebook(ml_small: pd.DataFrame) -> None:
    data = pp.filter_min_interactions(pp.to_implicit(ml_small), 5, 0)
    out = pp.split_strong_generalization(data, n_heldout_users=50)
    # Notebook: unique_uid (sorted) shuffled with np.random.seed(98765); permutation; last 2·50 held out.
    unique_uid = np.unique(data["user_id"])
    unique_uid = unique_uid[np.random.RandomState(98765).permutation(len(unique_uid))]
    tr_users, vd_users, te_users = unique_uid[:-100], unique_uid[-100:-50], unique_uid[-50:]
    train = data[data["user_id"].isin(tr_users)]
    pd.testing.assert_frame_equal(out.train, train.reset_index(drop=True))
    unique_sid = pd.unique(train["item_id"])
    for users, fold_in, to_predict in (
        (vd_users, out.validation_fold_in, out.validation),
        (te_users, out.test_fold_in, out.test),
    ):
        plays = data[data["user_id"].isin(users) & data["item_id"].isin(unique_sid)]
        assert pairs(fold_in) | pairs(to_predict) == pairs(plays)
        assert pairs(fold_in).isdisjoint(pairs(to_predict))
        n_items = plays.groupby("user_id").size()
        expected = n_items.map(lambda n: int(0.2 * n) if n >= 5 else 0)
        got = to_predict.groupby("user_id").size().reindex(n_items.index, fill_value=0)
        pd.testing.assert_series_equal(got, expected, check_names=False)
    assert set(out.test["item_id"]) <= set(unique_sid)
    assert set(out.frames()) == {"train", "validation", "test", "validation_fold_in", "test_fold_in"}


def test_strong_generalization_holds_out_only_from_five_items() -> None:
    # fold_in_fraction 0.5: a held-out user with 6 items predicts int(0.5·6) = 3 of them; one with 4
    # items keeps all 4 in fold-in although int(0.5·4) = 2 (the notebook's n_items_u >= 5 rule).
    rows = [(u, i, 1, 0) for u in range(20) for i in range(4 if u % 2 else 6)]
    out = pp.split_strong_generalization(frame(rows), n_heldout_users=5, fold_in_fraction=0.5)
    fold_in = pd.concat([out.validation_fold_in, out.test_fold_in]).groupby("user_id").size()
    predicted = pd.concat([out.validation, out.test]).groupby("user_id").size()
    predicted = predicted.reindex(fold_in.index, fill_value=0)
    assert set(fold_in[predicted == 0].index) == {u for u in fold_in.index if u % 2}
    assert (fold_in[predicted == 0] == 4).all() and (predicted[predicted > 0] == 3).all()
    assert (predicted == 0).any() and (predicted > 0).any()


def test_strong_generalization_defaults_and_determinism(ml_small: pd.DataFrame) -> None:
    out = pp.split_strong_generalization(ml_small)
    # 610 users: round(0.1·610) = 61 validation and 61 test users.
    assert out.test_fold_in["user_id"].nunique() == 61 and out.validation_fold_in["user_id"].nunique() == 61
    again = pp.split_strong_generalization(ml_small)
    assert all(a.equals(b) for a, b in zip(out.frames().values(), again.frames().values(), strict=True))
    with pytest.raises(EmptySplit, match="between 1 and 304"):
        pp.split_strong_generalization(ml_small, n_heldout_users=305)


# --- dispatcher and parameters -----------------------------------------------------------------------


def test_split_dispatches_by_name(ml100k: pd.DataFrame) -> None:
    via_name = pp.split(ml100k, "stratified", ratios=[0.75, 0.25], seed=42)
    assert via_name.test.equals(pp.split_stratified(ml100k).test)


@pytest.mark.parametrize(
    ("strategy", "params", "message"),
    [
        ("kfold", {}, r"unknown split strategy 'kfold'; valid: \['random', 'stratified'"),
        ("temporal", {"seed": 1}, r"takes no \['seed'\]; it accepts \['ratios', 'min_rating'\]"),
        ("random", {"ratios": (0.8, -0.2)}, r"positive numbers, e\.g\. \(0\.75, 0\.25\)"),
        ("random", {"ratios": (1.0,)}, "give 2 .* or 3"),
        ("stratified", {"min_rating": 0}, "min_rating=0 must be an integer ≥ 1"),
        ("strong_generalization", {"fold_in_fraction": 1.5}, r"must be in \(0, 1\)"),
        ("strong_generalization", {"heldout_fraction": 0.6}, r"must be in \(0, 0\.5\)"),
    ],
)
def test_bad_strategy_or_parameters_raise_unknown_split(strategy: str, params: dict, message: str) -> None:
    df = frame([(1, 1, 4, 1), (1, 2, 4, 2), (2, 1, 4, 3), (2, 2, 4, 4)])
    with pytest.raises(UnknownSplit, match=message):
        pp.split(df, strategy, **params)


def test_split_leaving_a_set_empty_raises() -> None:
    # Every user has 1 row: 0.75·1 rounds to 1 train row and 0 test rows.
    df = frame([(1, 1, 4, 1), (2, 1, 4, 2)])
    with pytest.raises(EmptySplit, match="stratified split of 2 interactions left test empty"):
        pp.split_stratified(df)
    # One row at 90/10: ⌊0.9·1⌋ = 0 train rows, as in sklearn's train_test_split.
    with pytest.raises(EmptySplit, match="left train empty"):
        pp.split_random(df.iloc[:1], (0.9, 0.1))
