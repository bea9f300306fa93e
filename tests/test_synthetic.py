"""Synthetic MovieLens-shaped data: exact shapes, determinism, skew, per-user time order, name parsing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recmodels._columns import INTERACTION_COLUMNS
from recmodels.errors import UnknownDataset
from recmodels.synthetic import (
    SYNTHETIC_SHAPES,
    WINDOW_END,
    WINDOW_START,
    SyntheticShape,
    generate_synthetic,
    parse_synthetic_name,
    user_counts,
)


def top_decile_share(df: pd.DataFrame) -> float:
    """Share of all interactions held by the 10% most popular items."""
    counts = df["item_id"].value_counts()
    return counts.iloc[: len(counts) // 10].sum() / len(df)


def check_canonical(df: pd.DataFrame, n_users: int, n_items: int, n_interactions: int) -> None:
    assert list(df.columns) == list(INTERACTION_COLUMNS)
    assert [str(t) for t in df.dtypes] == ["int64", "int64", "float32", "int64"]
    assert len(df) == n_interactions
    assert sorted(df["user_id"].unique()) == list(range(1, n_users + 1))
    assert df["item_id"].between(1, n_items).all()
    assert not df.duplicated(["user_id", "item_id"]).any()
    assert set(np.unique(df["rating"])) <= {r / 2 for r in range(1, 11)}


@pytest.fixture(scope="module")
def ml100k_like() -> pd.DataFrame:
    return generate_synthetic(*SYNTHETIC_SHAPES["synthetic-100k"], seed=0)


def test_100k_shape_is_exact_and_canonical(ml100k_like: pd.DataFrame) -> None:
    check_canonical(ml100k_like, 943, 1_682, 100_000)
    per_user = ml100k_like.groupby("user_id").size()
    assert per_user.min() >= 20  # every MovieLens user rated at least 20 movies
    assert per_user.max() <= 1_682 // 2
    assert per_user.max() > 5 * per_user.median()  # heavy-tailed activity
    assert 3.3 < ml100k_like["rating"].mean() < 3.7
    assert 0.8 < ml100k_like["rating"].std() < 1.2


def test_1m_shape_exact_and_timed(capsys: pytest.CaptureFixture[str]) -> None:
    start = time.perf_counter()
    df = generate_synthetic(*SYNTHETIC_SHAPES["synthetic-1m"], seed=0)
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nsynthetic-1m (6,040 x 3,706 x 1,000,209): generated in {seconds:.2f} s")
    check_canonical(df, 6_040, 3_706, 1_000_209)
    assert df.groupby("user_id").size().min() >= 20


def test_same_seed_same_table_other_seed_other_table() -> None:
    a = generate_synthetic(300, 200, 12_000, seed=7)
    pd.testing.assert_frame_equal(a, generate_synthetic(300, 200, 12_000, seed=7))
    b = generate_synthetic(300, 200, 12_000, seed=8)
    assert len(b) == len(a)
    assert not a[["item_id", "rating"]].equals(b[["item_id", "rating"]])


def test_popularity_skew(ml100k_like: pd.DataFrame) -> None:
    # Uniform popularity would give the top 10% of items about 10% of the interactions.
    assert top_decile_share(ml100k_like) > 0.3
    uniform_reach = ml100k_like["item_id"].value_counts().iloc[0] / 943
    assert uniform_reach > 0.4  # the top item reaches a large share of users, as in MovieLens


def test_skew_close_to_real_ml100k(ml100k_like: pd.DataFrame, mirror: Path) -> None:
    real = pd.read_csv(mirror / "ml-100k" / "u.data", sep="\t", names=list(INTERACTION_COLUMNS))
    assert abs(top_decile_share(ml100k_like) - top_decile_share(real)) < 0.08  # 0.407 vs 0.427


def test_timestamps_increase_per_user_over_years(ml100k_like: pd.DataFrame) -> None:
    times = ml100k_like["timestamp"].to_numpy()
    same_user = ml100k_like["user_id"].to_numpy()[1:] == ml100k_like["user_id"].to_numpy()[:-1]
    assert (np.diff(times)[same_user] >= 0).all()
    assert np.diff(ml100k_like["user_id"].to_numpy()).min() >= 0
    assert times.min() >= WINDOW_START and times.max() <= WINDOW_END
    assert times.max() - times.min() > 10 * 365 * 86_400  # a multi-year span across users
    # Items within a user are not in popularity or id order.
    first_user = ml100k_like[ml100k_like["user_id"] == 1]["item_id"].to_numpy()
    assert not (np.diff(first_user) > 0).all()


def test_fully_dense_and_tiny_shapes() -> None:
    dense = generate_synthetic(10, 10, 100, seed=3)
    check_canonical(dense, 10, 10, 100)
    assert dense.groupby("user_id").size().eq(10).all()
    small = generate_synthetic(5, 30, 60, seed=3)  # 12 per user on average: floor lowers to 12
    check_canonical(small, 5, 30, 60)
    assert small.groupby("user_id").size().min() >= 12


def test_user_counts_sum_floor_and_ceiling() -> None:
    shape = SyntheticShape(2_000, 300, 150_000)
    counts = user_counts(np.random.default_rng(0), shape)
    assert counts.sum() == 150_000
    assert counts.min() >= 20 and counts.max() <= 150


def test_named_shapes_match_the_real_releases() -> None:
    assert parse_synthetic_name("synthetic-20m") == SyntheticShape(138_493, 26_744, 20_000_263)
    assert parse_synthetic_name("synthetic-100k") == SyntheticShape(943, 1_682, 100_000)
    releases = {f"synthetic-{s}" for s in ("100k", "1m", "10m", "20m", "25m", "32m")}
    assert set(SYNTHETIC_SHAPES) == releases | {"synthetic-random"}  # + TorchRec BERT4Rec's random dataset
    assert parse_synthetic_name("synthetic-random") == SyntheticShape(3_000, 500_000, 8_000_000)
    assert tuple(parse_synthetic_name("synthetic-1000x500x30000")) == (1_000, 500, 30_000)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("synthetic-2m", "synthetic-<users>x<items>x<interactions>"),
        ("synthetic-10x10", "synthetic-<users>x<items>x<interactions>"),
        ("synthetic-10x10x101", "at most 100 unique"),
        ("synthetic-10x10x5", "at least 10 interactions"),
        ("synthetic-0x10x10", "at least 1 of each"),
    ],
)
def test_bad_synthetic_names(name: str, message: str) -> None:
    with pytest.raises(UnknownDataset, match=message):
        parse_synthetic_name(name)


def test_generate_rejects_impossible_shape() -> None:
    with pytest.raises(UnknownDataset, match="at most 6 unique"):
        generate_synthetic(2, 3, 7)
