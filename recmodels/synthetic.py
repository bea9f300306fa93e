"""Synthetic interaction tables with the shape and the skew of the MovieLens releases.

Scale tests need MovieLens-sized data that cannot be shipped; this module generates it. A shape is
``users × items × interactions``; ``synthetic-20m`` has the 138,493 users, 26,744 rated movies and
20,000,263 ratings of ML-20M (F. M. Harper and J. A. Konstan, "The MovieLens Datasets: History and
Context", ACM TiiS 5(4), 2015).

The generator, with ``U`` users, ``I`` items and ``N`` interactions:

- **User activity** (heavy-tailed, at least ``m = min(20, I, ⌊N/U⌋)`` per user, as every MovieLens
  user rated at least 20 movies): ``n_u = m + Multinomial(N − mU, w / Σw)`` with
  ``w_u ~ LogNormal(0, 1.6)`` (LensKit's codex fits a log-normal with ``s ≈ 1.6`` to the activity of
  ML-10M…ML-32M users). No user takes more than ``c = min(I, max(⌊I/2⌋, ⌈N/U⌉))`` items (the most
  active users of ML-latest-small, ML-100K and ML-10M rated 28%, 44% and 69% of the catalogue):
  counts above ``c`` are capped and their excess is dealt out to users with room, in proportion to
  the room left.
- **Item popularity** (Zipf–Mandelbrot, exponent 1, offset ``q = 10``): popularity ranks
  ``k = 1..I`` are a random permutation of the item ids and rank ``k`` is drawn with
  ``p_k = log(1 + 1/(k + q)) / log((I + 1 + q) / (1 + q)) ≈ 1 / ((k + q) log(I/q))``, by inverting
  the CDF: ``k = ⌊(1 + q) · ((I + 1 + q) / (1 + q))^V − q⌋``, ``V ~ U(0, 1)``. The offset keeps the
  head realistic: the top item reaches 68% of synthetic-100k's users (ML-100K: 62%), and since a
  user rates an item once, the top 10% of items get 41% of its ratings (ML-100K: 42.7%).
- **Unique pairs**: each user's items are a weighted sample *without* replacement from ``p``
  (successive sampling): draws with replacement, of which repeats are rejected and the first ``n_u``
  distinct items kept in draw order; users still short draw again,
  ``⌈1.1 · deficit_u / (1 − Σ_{k ∈ S_u} p_k)⌉`` times, until every user has ``n_u`` items.
- **Ratings** on MovieLens' half-star scale: ``clip(round₀.₅(3.6 + b_u + b_i + ε), 0.5, 5)`` with
  ``b_u, b_i ~ N(0, 0.45²)`` and ``ε ~ N(0, 0.85²)``: mean 3.53, standard deviation 1.0 (ML-100K:
  3.53 and 1.13, ML-latest-small: 3.50 and 1.04).
- **Timestamps**: user ``u`` is active during ``[s_u, s_u + d_u]`` inside 1995-01-09 … 2023-10-12
  (the span of ML-32M), ``d_u ~ LogNormal(log 30 days, 2.5)`` capped at the window; each rating gets
  ``s_u + U(0, 1) · d_u`` and rows are sorted by user, then time.

Everything is drawn from one ``numpy.random.Generator`` seeded by ``seed`` and vectorised over all
users at once. Items in the far tail of a small shape may receive no interaction, as in the real data
where only rated movies count.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from recmodels._columns import ITEM, RATING, TIMESTAMP, USER
from recmodels.errors import UnknownDataset

MIN_USER_INTERACTIONS = 20
ITEM_OFFSET = 10.0
USER_ACTIVITY_SIGMA = 1.6
RATING_MEAN, USER_BIAS_STD, ITEM_BIAS_STD, NOISE_STD = 3.6, 0.45, 0.45, 0.85
WINDOW_START = int(datetime(1995, 1, 9, tzinfo=UTC).timestamp())
WINDOW_END = int(datetime(2023, 10, 12, tzinfo=UTC).timestamp())
MEDIAN_ACTIVE_SECONDS, ACTIVE_SIGMA = 30 * 86_400, 2.5
_OVERSAMPLE = 1.1
_NAME = re.compile(r"synthetic-(\d+)x(\d+)x(\d+)")
NAME_FORMS = "synthetic-<users>x<items>x<interactions> (e.g. synthetic-1000x500x30000)"


@dataclass(frozen=True)
class SyntheticShape:
    """Users × items × interactions of a synthetic table; validated on construction."""

    n_users: int
    n_items: int
    n_interactions: int

    def __post_init__(self) -> None:
        shape = f"{self.n_users}x{self.n_items}x{self.n_interactions}"
        if self.n_users < 1 or self.n_items < 1:
            raise UnknownDataset(f"synthetic shape {shape} has no users or no items; use at least 1 of each.")
        if self.n_interactions < self.n_users:
            raise UnknownDataset(
                f"synthetic shape {shape} gives {self.n_users} users only {self.n_interactions} "
                f"interactions; every user needs at least one: use at least {self.n_users} interactions."
            )
        if self.n_interactions > self.n_users * self.n_items:
            raise UnknownDataset(
                f"synthetic shape {shape} asks for {self.n_interactions} interactions but "
                f"{self.n_users} users × {self.n_items} items allow at most "
                f"{self.n_users * self.n_items} unique (user, item) pairs; lower the interactions "
                "or raise the users or items."
            )

    def __iter__(self) -> Iterator[int]:
        """``(n_users, n_items, n_interactions)``, so that ``generate_synthetic(*shape)`` works."""
        return iter((self.n_users, self.n_items, self.n_interactions))


# Users and ratings: GroupLens' READMEs; rated items: LensKit codex data descriptions
# (codex.lenskit.org/movielens/*/description.html), 1 user and 1 item more for 1m, 25m and 32m,
# whose codex statistics leave out one user.
SYNTHETIC_SHAPES: dict[str, SyntheticShape] = {
    "synthetic-100k": SyntheticShape(943, 1_682, 100_000),
    "synthetic-1m": SyntheticShape(6_040, 3_706, 1_000_209),
    "synthetic-10m": SyntheticShape(69_878, 10_677, 10_000_054),
    "synthetic-20m": SyntheticShape(138_493, 26_744, 20_000_263),
    "synthetic-25m": SyntheticShape(162_541, 59_047, 25_000_095),
    "synthetic-32m": SyntheticShape(200_948, 84_432, 32_000_204),
    # The seed's sequence benchmark (TorchRec's examples/bert4rec: --dataset_name random
    # --random_user_count 3000 --random_item_count 500000 --random_size 8000000), as per-user sequences
    # through the sequence models (recmodels.sequences), here with MovieLens-like skew and time order.
    "synthetic-random": SyntheticShape(3_000, 500_000, 8_000_000),
}


def parse_synthetic_name(name: str) -> SyntheticShape:
    """Shape of ``synthetic-<release>`` (see :data:`SYNTHETIC_SHAPES`) or ``synthetic-<u>x<i>x<n>``."""
    if name in SYNTHETIC_SHAPES:
        return SYNTHETIC_SHAPES[name]
    match = _NAME.fullmatch(name)
    if match is None:
        raise UnknownDataset(
            f"unknown synthetic dataset {name!r}; use one of {', '.join(SYNTHETIC_SHAPES)} or {NAME_FORMS}."
        )
    return SyntheticShape(*(int(g) for g in match.groups()))


def generate_synthetic(n_users: int, n_items: int, n_interactions: int, seed: int = 0) -> pd.DataFrame:
    """Exactly ``n_interactions`` unique (user, item) ratings with MovieLens-like skew.

    Returns the canonical table user_id (1..n_users), item_id (1..n_items), rating (float32),
    timestamp (int64 Unix seconds), sorted by user then timestamp; see the module docstring for the
    distributions. The same arguments always give the same table.
    """
    shape = SyntheticShape(n_users, n_items, n_interactions)
    rng = np.random.default_rng(seed)
    counts = user_counts(rng, shape)
    users, ranks = sample_unique_ranks(rng, counts, n_items)
    items = rng.permutation(n_items)[ranks]
    ratings = rating_stars(rng, users, items, n_users, n_items)
    times = activity_times(rng, users, n_users)
    order = np.argsort((users << 32) | (times - WINDOW_START))  # by user, then time
    columns = {
        USER: users[order] + 1,
        ITEM: items[order] + 1,
        RATING: ratings[order],
        TIMESTAMP: times[order],
    }
    return pd.DataFrame(columns, copy=False)


def user_counts(rng: np.random.Generator, shape: SyntheticShape) -> np.ndarray:
    """Interactions per user: heavy-tailed, each in ``[m, c]``, summing to ``n_interactions``."""
    n_users, n_items, total = shape.n_users, shape.n_items, shape.n_interactions
    floor = min(MIN_USER_INTERACTIONS, n_items, total // n_users)
    ceiling = min(n_items, max(n_items // 2, -(-total // n_users)))
    weights = rng.lognormal(0.0, USER_ACTIVITY_SIGMA, n_users)
    counts = floor + rng.multinomial(total - floor * n_users, weights / weights.sum())
    excess = int(np.maximum(counts - ceiling, 0).sum())
    counts = np.minimum(counts, ceiling)
    while excess:
        room = ceiling - counts
        extra = np.minimum(rng.multinomial(excess, room / room.sum()), room)
        counts += extra
        excess -= int(extra.sum())
    return counts


def sample_unique_ranks(
    rng: np.random.Generator, counts: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """``counts[u]`` distinct popularity ranks (0-based) per user, Zipf-drawn without replacement.

    Returns (users, ranks), grouped by sampling round, then by user.
    """
    log_span = np.log((n_items + 1.0 + ITEM_OFFSET) / (1.0 + ITEM_OFFSET))
    p = np.log1p(1.0 / (np.arange(1, n_items + 1) + ITEM_OFFSET)) / log_span
    rounds: list[np.ndarray] = []  # sorted keys user * n_items + rank accepted in each round
    held = np.zeros(len(counts), dtype=np.int64)
    mass = np.zeros(len(counts))  # probability mass each user already holds
    while (needy := np.flatnonzero(held < counts)).size:
        deficit = counts[needy] - held[needy]
        fresh = np.clip(1.0 - mass[needy], p[-1], 1.0)  # at least the rarest item is left
        draws = np.ceil(_OVERSAMPLE * deficit / fresh).astype(np.int64)
        users = np.repeat(needy, draws)
        x = (1.0 + ITEM_OFFSET) * np.exp(rng.random(len(users)) * log_span) - ITEM_OFFSET
        ranks = np.minimum(x.astype(np.int64) - 1, n_items - 1)
        keys = users * n_items + ranks  # in draw order, grouped by user
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        first = np.r_[True, ordered[1:] != ordered[:-1]]  # first draw of each distinct pair
        for earlier in rounds:
            first[first] = ~_contains(earlier, ordered[first])
        keys = keys[np.sort(order[first])]  # new distinct pairs, in draw order
        users = keys // n_items
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        position = np.arange(len(keys)) - np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
        keys = keys[position < (counts - held)[users]]
        users, ranks = np.divmod(keys, n_items)
        held += np.bincount(users, minlength=len(counts))
        mass += np.bincount(users, weights=p[ranks], minlength=len(counts))
        if len(keys):
            rounds.append(np.sort(keys))
    return np.divmod(np.concatenate(rounds), n_items)


def _contains(sorted_keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Whether each value is in the non-empty sorted array ``sorted_keys``."""
    pos = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[pos] == values


def rating_stars(
    rng: np.random.Generator, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int
) -> np.ndarray:
    """Half-star ratings in [0.5, 5] from a user bias, an item bias and noise (float32)."""
    user_bias = rng.normal(0.0, USER_BIAS_STD, n_users)
    item_bias = rng.normal(0.0, ITEM_BIAS_STD, n_items)
    latent = RATING_MEAN + user_bias[users] + item_bias[items] + rng.normal(0.0, NOISE_STD, len(users))
    return np.clip(np.round(2.0 * latent) / 2.0, 0.5, 5.0).astype(np.float32)


def activity_times(rng: np.random.Generator, users: np.ndarray, n_users: int) -> np.ndarray:
    """Unix timestamps: each user rates within their own active period inside the ML-32M window."""
    window = WINDOW_END - WINDOW_START
    active = np.minimum(rng.lognormal(np.log(MEDIAN_ACTIVE_SECONDS), ACTIVE_SIGMA, n_users), window)
    start = WINDOW_START + rng.random(n_users) * (window - active)
    return (start[users] + rng.random(len(users)) * active[users]).astype(np.int64)
