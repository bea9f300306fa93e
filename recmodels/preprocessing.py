"""Filters and train/validation/test splits of the canonical interaction table.

Every function takes and returns DataFrames with the canonical columns (user_id, item_id, rating,
timestamp) and keeps their dtypes; output rows keep their input order under a fresh RangeIndex. The work
is vectorised (sorts, factorisations and bincounts; no Python loop over users), so the same code runs
on ML-100K and ML-20M. A split is a pure function of its input (row order included) and its seed.

Ratio splits per user (``stratified``, ``temporal``) follow Microsoft Recommenders' ``_do_stratification``:
a user's n rows are ordered by a key (a uniform random draw or the timestamp; ties keep row order) and,
with cumulative ratios c₁ < c₂ ≤ 1, the row of rank r (1-based) goes to

    train if r ≤ round(c₁·n),   validation if round(c₁·n) < r ≤ round(c₂·n),   test otherwise,

where ``round`` is NumPy's half-to-even (pandas' ``Series.round`` in Recommenders), e.g. 75/25 on n = 22
gives 16 train rows (16.5 rounds to 16) and 6 test rows.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from numbers import Integral, Real

import numpy as np
import pandas as pd

from recmodels._columns import INTERACTION_COLUMNS, ITEM, RATING, TIMESTAMP, USER, require_columns
from recmodels.errors import EmptySplit, UnknownSplit

# Liang et al. (2018) split a held-out user's items into fold-in and held-out only from 5 items up.
_MIN_ITEMS_TO_HOLD_OUT = 5
_TRAIN, _VALIDATION, _TEST = range(3)  # set codes; + 2 gives validation_fold_in, test_fold_in


@dataclass(frozen=True)
class Split:
    """The sets of one split; ``validation`` is empty (same columns) for two-way splits."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    validation_fold_in: pd.DataFrame | None = None
    test_fold_in: pd.DataFrame | None = None

    def frames(self) -> dict[str, pd.DataFrame]:
        """Set name → frame, omitting the fold-in sets of splits that have none."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def filter_min_interactions(
    df: pd.DataFrame, min_user_interactions: int = 5, min_item_interactions: int = 5
) -> pd.DataFrame:
    """Iterative k-core: drop users and items with too few interactions, repeated until stable.

    Dropping a user can push an item under its threshold and vice versa, so passes repeat until none
    drops anything; the result is the unique largest sub-table where every user has at least
    ``min_user_interactions`` rows and every item at least ``min_item_interactions`` (Recommenders'
    ``filter_k_core``). ``min_item_interactions=0`` gives Liang et al.'s (2018) ``filter_triplets(tp,
    min_uc=5, min_sc=0)``.
    """
    require_columns(df, INTERACTION_COLUMNS)
    while len(df):
        user_count, item_count = _row_counts(df[USER].to_numpy()), _row_counts(df[ITEM].to_numpy())
        keep = (user_count >= min_user_interactions) & (item_count >= min_item_interactions)
        if keep.all():
            return df.reset_index(drop=True)
        if not keep.any():
            raise EmptySplit(
                _emptied_message(
                    user_count, item_count, min_user_interactions, min_item_interactions, len(df)
                )
            )
        df = df[keep]
    raise EmptySplit("filter_min_interactions got no interactions; check the data loaded before it.")


def to_implicit(df: pd.DataFrame, threshold: float = 4.0) -> pd.DataFrame:
    """Keep ratings ≥ ``threshold`` as positive feedback, their rating set to 1.

    Liang et al., "Variational Autoencoders for Collaborative Filtering", WWW 2018, Section 4.1: "we
    binarize the explicit data by keeping ratings of four or higher" (their code: ``rating > 3.5``,
    the same rows on MovieLens' half-star scale). Note ``threshold=3.5`` would also keep 3.5 stars.
    """
    require_columns(df, INTERACTION_COLUMNS)
    kept = df[df[RATING] >= threshold].reset_index(drop=True)
    if kept.empty:
        raise EmptySplit(
            f"to_implicit(threshold={threshold}) kept no interaction: the highest rating is "
            f"{df[RATING].max()}; lower threshold."
        )
    return kept.assign(**{RATING: 1}).astype({RATING: df[RATING].dtype})


def transpose(df: pd.DataFrame) -> pd.DataFrame:
    """Swap user_id and item_id, so items play the users' role (the seed PoC's "transpose & split")."""
    require_columns(df, INTERACTION_COLUMNS)
    return df.rename(columns={USER: ITEM, ITEM: USER})[list(df.columns)]


def split_random(df: pd.DataFrame, ratios: Sequence[float] = (0.8, 0.2), seed: int = 42) -> Split:
    """Global random split by ratio: Microsoft Recommenders' ``python_random_split``.

    Two ratios r, 1−r act as its float form, ``sklearn.model_selection.train_test_split(train_size=r,
    random_state=seed)``: ⌊r·n⌋ train rows, the first n−⌊r·n⌋ rows of ``RandomState(seed).permutation(n)``
    test. Three ratios act as its list form: that permutation cut at round(c₁·n) and round(c₂·n). Rows
    of each set are the same as Recommenders' (in input order). The seed PoC's "split 2/10" is 80/20.
    """
    require_columns(df, INTERACTION_COLUMNS)
    ratios = _ratios(ratios)
    n = len(df)
    order = np.random.RandomState(seed).permutation(n)
    part = np.empty(n, np.int8)
    if len(ratios) == 2:
        n_test = n - math.floor(ratios[0] * n)
        part[order[:n_test]], part[order[n_test:]] = _TEST, _TRAIN
    else:
        first, second = (round(c * n) for c in np.cumsum(ratios).tolist()[:-1])
        part[order[:first]], part[order[first:second]], part[order[second:]] = _TRAIN, _VALIDATION, _TEST
    return _split_by_part(df, part, "random", with_validation=len(ratios) == 3)


def split_stratified(
    df: pd.DataFrame, ratios: Sequence[float] = (0.75, 0.25), seed: int = 42, min_rating: int = 1
) -> Split:
    """Per-user random split by ratio: Recommenders' ``python_stratified_split(filter_by="user")``.

    Users with fewer than ``min_rating`` interactions are dropped first; then one draw of
    ``RandomState(seed).rand(n)`` over the rows in input order orders each user's rows, cut as in the
    module docstring. On ML-100K (``u.data`` order), 75/25 with seed 42 gives exactly the split of
    Recommenders' SAR notebook (74,992 train / 25,008 test rows; 1,653 / 1,444 items).
    """
    ratios = _ratios(ratios)
    df = _drop_light_users(df, min_rating)
    key = np.random.RandomState(seed).rand(len(df))
    return _split_users_by_ratio(df, ratios, key, "stratified")


def split_temporal(df: pd.DataFrame, ratios: Sequence[float] = (0.75, 0.25), min_rating: int = 1) -> Split:
    """Per-user chronological split by ratio: Recommenders' ``python_chrono_split(filter_by="user")``.

    Each user's earliest rows train, latest test (timestamp ties keep row order), cut as in the module
    docstring; users with fewer than ``min_rating`` interactions are dropped first.
    """
    ratios = _ratios(ratios)
    df = _drop_light_users(df, min_rating)
    return _split_users_by_ratio(df, ratios, df[TIMESTAMP].to_numpy(), "temporal")


def split_leave_one_out(df: pd.DataFrame) -> Split:
    """Per user, the last interaction is test, the second-to-last validation, the rest train.

    Order is by timestamp, ties by item_id, then row order: He et al., "Neural Collaborative
    Filtering", WWW 2017 (last item test), with Kang & McAuley, "Self-Attentive Sequential
    Recommendation", ICDM 2018 (second-to-last validation).
    """
    require_columns(df, INTERACTION_COLUMNS)
    users = df[USER].to_numpy()
    count = _row_counts(users)
    if (count < 3).any():
        n_light = pd.unique(users[count < 3]).size
        raise EmptySplit(
            f"leave_one_out needs 3 interactions per user (train, validation, test), but {n_light} of "
            f"{pd.unique(users).size} users have fewer; call "
            "filter_min_interactions(df, min_user_interactions=3) first."
        )
    from_last = count - _rank_within_user(users, df[TIMESTAMP].to_numpy(), df[ITEM].to_numpy())
    part = np.select([from_last == 0, from_last == 1], [_TEST, _VALIDATION], _TRAIN)
    return _split_by_part(df, part, "leave_one_out", with_validation=True)


def split_strong_generalization(
    df: pd.DataFrame,
    n_heldout_users: int | None = None,
    heldout_fraction: float = 0.1,
    fold_in_fraction: float = 0.8,
    seed: int = 98765,
) -> Split:
    """Held-out users with fold-in and to-predict items: Liang et al. 2018's strong generalization.

    As in their code (dawenl/vae_cf, ``VAE_ML20M_WWW2018.ipynb``): the sorted user ids are shuffled by
    ``RandomState(seed).permutation``; the last 2h become validation then test users (h =
    ``n_heldout_users``, 10,000 on ML-20M, else round(``heldout_fraction`` · users)); train holds every
    interaction of the other users. Held-out users' interactions with items absent from train are
    removed; then each held-out user with n ≥ 5 interactions has int((1 − ``fold_in_fraction``) · n)
    of them, drawn uniformly, in ``validation``/``test`` (to predict) and the rest in
    ``validation_fold_in``/``test_fold_in``; users with fewer keep all in fold-in.

    The user partition equals the paper code's for the same seed. The per-user item draw has the same
    distribution but not the same random stream: the paper draws ``np.random.choice`` user by user; here
    one vectorised draw serves all users.
    """
    require_columns(df, INTERACTION_COLUMNS)
    if n_heldout_users is None and not 0 < heldout_fraction < 0.5:
        raise UnknownSplit(
            f"heldout_fraction={heldout_fraction} must be in (0, 0.5): it is the share of users in each of "
            "validation and test, e.g. 0.1."
        )
    if n_heldout_users is not None and n_heldout_users < 1:
        raise UnknownSplit(f"n_heldout_users={n_heldout_users} must be ≥ 1, e.g. 10000 on ML-20M.")
    if not 0 < fold_in_fraction < 1:
        raise UnknownSplit(f"fold_in_fraction={fold_in_fraction} must be in (0, 1), e.g. 0.8.")
    users, items = df[USER].to_numpy(), df[ITEM].to_numpy()
    user_index, user_ids = pd.factorize(users, sort=True)  # sorted ids, as the paper's user_activity.index
    n_users = len(user_ids)
    n_heldout = round(heldout_fraction * n_users) if n_heldout_users is None else n_heldout_users
    if n_heldout < 1 or 2 * n_heldout >= n_users:
        raise EmptySplit(
            f"strong generalization with {n_heldout} validation and {n_heldout} test users out of {n_users} "
            f"leaves a set without users; pass n_heldout_users between 1 and {max(1, (n_users - 1) // 2)}."
        )
    rng = np.random.RandomState(seed)
    role_by_position = np.repeat(
        np.array([_TRAIN, _VALIDATION, _TEST], np.int8), [n_users - 2 * n_heldout, n_heldout, n_heldout]
    )
    role_of_user = np.empty(n_users, np.int8)
    role_of_user[rng.permutation(n_users)] = role_by_position
    role = role_of_user[user_index]
    heldout = np.flatnonzero((role != _TRAIN) & np.isin(items, pd.unique(items[role == _TRAIN])))
    heldout_users = users[heldout]
    count = _row_counts(heldout_users)
    to_predict_share = round(1 - fold_in_fraction, 10)  # 0.2, not 0.19999999999999996, as in the paper
    n_to_predict = np.where(count >= _MIN_ITEMS_TO_HOLD_OUT, np.floor(to_predict_share * count), 0)
    to_predict = _rank_within_user(heldout_users, rng.rand(len(heldout))) <= n_to_predict
    part = np.where(role == _TRAIN, _TRAIN, -1).astype(np.int8)
    part[heldout] = np.where(to_predict, role[heldout], role[heldout] + 2)
    frames = _frames(df, part, 5)
    _require_filled(frames[:3], "strong_generalization", len(df))
    return Split(*frames)


def split(df: pd.DataFrame, strategy: str, **params: object) -> Split:
    """Split ``df`` with the named strategy; ``params`` are that strategy's keyword arguments."""
    try:
        splitter = _STRATEGIES[strategy]
    except KeyError:
        raise UnknownSplit(f"unknown split strategy {strategy!r}; valid: {list(_STRATEGIES)}.") from None
    accepted = list(inspect.signature(splitter).parameters)[1:]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UnknownSplit(f"split strategy {strategy!r} takes no {unknown}; it accepts {accepted}.")
    return splitter(df, **params)


_STRATEGIES: dict[str, Callable[..., Split]] = {
    "random": split_random,
    "stratified": split_stratified,
    "temporal": split_temporal,
    "leave_one_out": split_leave_one_out,
    "strong_generalization": split_strong_generalization,
}


def _ratios(ratios: Sequence[float]) -> list[float]:
    """2 or 3 positive ratios, normalised to sum to 1 as in Recommenders' ``process_split_ratio``."""
    values = list(ratios) if isinstance(ratios, Sequence) and not isinstance(ratios, str) else []
    if len(values) not in (2, 3) or not all(isinstance(x, Real) and 0 < x < math.inf for x in values):
        raise UnknownSplit(
            f"ratios={ratios!r} is not valid: give 2 (train, test) or 3 (train, validation, test) "
            "positive numbers, e.g. (0.75, 0.25) or (0.8, 0.1, 0.1)."
        )
    total = math.fsum(values)
    return [float(x) for x in values] if total == 1.0 else [x / total for x in values]


def _drop_light_users(df: pd.DataFrame, min_rating: int) -> pd.DataFrame:
    """Rows of users with at least ``min_rating`` interactions (Recommenders' ``min_rating_filter_pandas``)."""
    require_columns(df, INTERACTION_COLUMNS)
    if not (isinstance(min_rating, Integral) and min_rating >= 1):
        raise UnknownSplit(f"min_rating={min_rating!r} must be an integer ≥ 1 (1 keeps every user).")
    return df if min_rating == 1 else df[_row_counts(df[USER].to_numpy()) >= min_rating]


def _split_users_by_ratio(df: pd.DataFrame, ratios: list[float], key: np.ndarray, strategy: str) -> Split:
    """Cut each user's rows, ordered by ``key``, at the rounded cumulative ratios (module docstring)."""
    users = df[USER].to_numpy()
    count = _row_counts(users)
    rank = _rank_within_user(users, key)
    cuts = [np.round(c * count) for c in np.cumsum(ratios)[:-1]]
    if (cuts[0] == 0).any():
        needed = math.floor(0.5 / ratios[0]) + 1
        raise EmptySplit(
            f"{strategy} split with ratios {ratios} gives users with fewer than {needed} interactions no "
            f"training row ({pd.unique(users[cuts[0] == 0]).size} users); pass min_rating={needed}, "
            "filter with filter_min_interactions first, or raise the training ratio."
        )
    part = np.where(rank > cuts[0], _TEST, _TRAIN).astype(np.int8)
    if len(cuts) == 2:
        part[(rank > cuts[0]) & (rank <= cuts[1])] = _VALIDATION
    return _split_by_part(df, part, strategy, with_validation=len(cuts) == 2)


def _split_by_part(df: pd.DataFrame, part: np.ndarray, strategy: str, with_validation: bool) -> Split:
    """Train/validation/test from a per-row set code; EmptySplit if a set that should have rows has none."""
    train, validation, test = _frames(df, part, 3)
    _require_filled([train, validation, test] if with_validation else [train, test], strategy, len(df))
    return Split(train, validation, test)


def _frames(df: pd.DataFrame, part: np.ndarray, n_sets: int) -> list[pd.DataFrame]:
    return [df[part == code].reset_index(drop=True) for code in range(n_sets)]


def _require_filled(frames: list[pd.DataFrame], strategy: str, n_rows: int) -> None:
    names = ["train", "test"] if len(frames) == 2 else ["train", "validation", "test"]
    empty = [name for name, frame in zip(names, frames, strict=True) if frame.empty]
    if empty:
        raise EmptySplit(
            f"{strategy} split of {n_rows} interactions left {' and '.join(empty)} empty; "
            "give it more interactions (per user) or change its ratios or held-out sizes."
        )


def _row_counts(values: np.ndarray) -> np.ndarray:
    """For each row, how many rows share its value."""
    codes, _ = pd.factorize(values)
    return np.bincount(codes)[codes] if len(codes) else np.zeros(0, np.int64)


def _rank_within_user(users: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """1-based rank of each row among its user's rows ordered by ``keys`` (first most significant).

    Chained stable argsorts, least significant key first (twice as fast as ``np.lexsort`` on 10M rows),
    so rows tied on every key keep their input order.
    """
    order = np.arange(len(users))
    for values in (*keys[::-1], users):
        order = order[np.argsort(values[order], kind="stable")]
    sorted_users = users[order]
    starts = np.ones(len(users), bool)
    starts[1:] = sorted_users[1:] != sorted_users[:-1]
    position = np.arange(len(users))
    rank = np.empty(len(users), np.int64)
    rank[order] = position - np.maximum.accumulate(np.where(starts, position, 0)) + 1
    return rank


def _emptied_message(
    user_count: np.ndarray, item_count: np.ndarray, min_user: int, min_item: int, n_rows: int
) -> str:
    users_fail, items_fail = (user_count < min_user).all(), (item_count < min_item).all()
    culprit = (
        "both thresholds"
        if users_fail and items_fail
        else f"min_user_interactions={min_user}"
        if users_fail
        else f"min_item_interactions={min_item}"
        if items_fail
        else "the two thresholds together"
    )
    return (
        f"filter_min_interactions(min_user_interactions={min_user}, min_item_interactions={min_item}) "
        f"removed every interaction: {culprit} left nothing of {n_rows} rows (most active user "
        f"{user_count.max()}, most popular item {item_count.max()} interactions at that pass); lower it."
    )
