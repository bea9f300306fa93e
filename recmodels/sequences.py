"""Sequences and sessions built from the canonical interaction table (pure functions, no model code).

Session protocol (issue 17, NVIDIA Transformers4Rec's incremental time-window evaluation):

1. every rating is one event (user, item, timestamp);
2. items with fewer than ``min_item_events`` (5) events are dropped, one pass, no user filter;
3. per user, events sorted by (timestamp, item_id); a new session starts where the gap to the user's
   previous event exceeds ``session_gap`` seconds (1,800): a gap of exactly ``session_gap`` continues it;
4. sessions with fewer than ``min_session_length`` (2) events are dropped; longer ones keep their last
   ``max_len`` (20) events;
5. a session's window is ``floor((start - earliest start) / window)``, its start being its first event
   before the cut of step 4; the prepared data holds one table per non-empty window, named by the window's
   start date like the seed's NVTabular output (``session_start_date=1997-09-20``);
6. the item vocabulary is every item surviving step 2, sorted by raw id: item index ``i`` is ``items[i]``.

Checked against the issue: ml-100k with 7-day windows gives 31 windows, 2,275 sessions and 1,349 items;
ml-latest-small with 365-day windows 23 windows, 3,321 sessions and 3,650 items
(``tests/test_sequences.py``).

Per-user sequences (issue 16: BERT4Rec, SASRec). Each user's items in time order, ties broken by item_id then
row order, the order of :func:`recmodels.preprocessing.split_leave_one_out`, so that a user's train
sequence followed by the validation and test items is the whole history in the split's order. They
are held in CSR form: ``items[offsets[u]:offsets[u + 1]]`` is user ``u``'s sequence, oldest first.

Training uses every item of long histories through windows of a fixed length L (:func:`sliding_windows`,
as BERT4Rec's ``gen_data_fin.py`` slides over sequences longer than its ``max_len``): a sequence of n
items gives the windows ending at n, n − s, n − 2s, … (step s) down to the first full window, and the
window [0, L) itself, so every item is in at least one window; shorter sequences give one window,
padded on the left with 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recmodels._columns import ITEM, TIMESTAMP, USER, require_columns
from recmodels.errors import EmptyWindow, InvalidConfig

DAY_SECONDS = 86_400
SESSION_COLUMNS = ("session_id", USER, "session_start", "window", ITEM, "item_index", TIMESTAMP)


@dataclass(frozen=True)
class SessionConfig:
    """The session protocol's parameters; defaults are the issue's (7-day windows: ml-100k's)."""

    session_gap: int = 1_800
    min_item_events: int = 5
    min_session_length: int = 2
    max_len: int = 20
    window_days: float = 7.0

    def __post_init__(self) -> None:
        if self.session_gap <= 0:
            raise InvalidConfig(
                f"session_gap={self.session_gap} s: it must be > 0 (a gap in seconds, e.g. 1800)"
            )
        if self.window_days <= 0:
            raise InvalidConfig(f"window_days={self.window_days}: it must be > 0 (e.g. 7 or 365)")
        if self.min_session_length < 2:
            raise InvalidConfig(
                f"min_session_length={self.min_session_length}: it must be ≥ 2 (input + target)"
            )
        if self.max_len < self.min_session_length:
            raise InvalidConfig(
                f"max_len={self.max_len} is below min_session_length={self.min_session_length}; raise max_len"
            )

    @property
    def window_seconds(self) -> int:
        return round(self.window_days * DAY_SECONDS)


def default_window_days(size: str) -> float:
    """The issue's window per release: 7 days for ml-100k (7 months of data), 365 for the others."""
    return 7.0 if size == "100k" else 365.0


def drop_rare_items(events: pd.DataFrame, min_item_events: int = 5) -> pd.DataFrame:
    """Step 2: the events of items with at least ``min_item_events`` events (one pass)."""
    require_columns(events, (USER, ITEM, TIMESTAMP), what="events")
    counts = events[ITEM].map(events[ITEM].value_counts())
    return events.loc[counts.to_numpy() >= min_item_events, [USER, ITEM, TIMESTAMP]].reset_index(drop=True)


def sessionise(events: pd.DataFrame, session_gap: int = 1_800) -> pd.DataFrame:
    """Step 3: ``events`` sorted by (user, timestamp, item) with a ``session_id`` column (0, 1, … in that order).

    A session ends where the next event of the same user comes more than ``session_gap`` seconds later.
    """
    if session_gap <= 0:
        raise InvalidConfig(f"session_gap={session_gap} s: it must be > 0 (a gap in seconds, e.g. 1800)")
    require_columns(events, (USER, ITEM, TIMESTAMP), what="events")
    ordered = events.sort_values([USER, TIMESTAMP, ITEM], kind="stable").reset_index(drop=True)
    users, times = ordered[USER].to_numpy(), ordered[TIMESTAMP].to_numpy()
    starts = np.ones(len(ordered), dtype=bool)
    starts[1:] = (users[1:] != users[:-1]) | (np.diff(times) > session_gap)
    return ordered.assign(session_id=np.cumsum(starts) - 1)


def session_table(sessionised: pd.DataFrame, min_session_length: int = 2, max_len: int = 20) -> pd.DataFrame:
    """Step 4: one row per session of at least ``min_session_length`` events, its last ``max_len`` kept.

    Columns: ``session_id``, ``user_id``, ``session_start`` (first event before the cut), ``item_id`` and
    ``timestamp`` (lists, in event order). Session ids are renumbered 0, 1, … by (start, old id).
    """
    sizes = sessionised.groupby("session_id", sort=True).size()
    kept = sessionised[sessionised["session_id"].map(sizes).to_numpy() >= min_session_length]
    starts = kept.groupby("session_id", sort=True)[TIMESTAMP].transform("min")
    from_end = kept.groupby("session_id", sort=True).cumcount(ascending=False)
    cut = kept.assign(session_start=starts)[from_end.to_numpy() < max_len]
    grouped = cut.groupby("session_id", sort=True)
    table = pd.DataFrame(
        {
            USER: grouped[USER].first(),
            "session_start": grouped["session_start"].first(),
            ITEM: grouped[ITEM].agg(list),
            TIMESTAMP: grouped[TIMESTAMP].agg(list),
        }
    )
    table = table.sort_values(["session_start"], kind="stable").reset_index(drop=True)
    return table.rename_axis("session_id").reset_index()


def assign_windows(sessions: pd.DataFrame, window_seconds: int) -> pd.DataFrame:
    """Step 5: ``sessions`` with ``window`` = floor((start − earliest start) / ``window_seconds``)."""
    if window_seconds <= 0:
        raise InvalidConfig(f"window={window_seconds} s: it must be > 0 (e.g. 7 days)")
    origin = sessions["session_start"].min()
    return sessions.assign(window=((sessions["session_start"] - origin) // window_seconds).astype(np.int64))


def item_vocabulary(events: pd.DataFrame) -> np.ndarray:
    """Step 6: the sorted raw ids of the items of ``events``; item index ``i`` stands for ``items[i]``."""
    return np.unique(events[ITEM].to_numpy())


def window_name(window_start_seconds: int) -> str:
    """The seed's file stem of a window: ``session_start_date=YYYY-MM-DD`` (UTC date of its start)."""
    day = pd.Timestamp(int(window_start_seconds), unit="s").strftime("%Y-%m-%d")
    return f"session_start_date={day}"


@dataclass(frozen=True)
class SessionData:
    """The prepared session data: one table per non-empty window (in time order) and the item vocabulary."""

    windows: dict[str, pd.DataFrame]
    items: np.ndarray

    @property
    def n_items(self) -> int:
        return len(self.items)

    def counts(self) -> dict[str, int]:
        return {
            "windows": len(self.windows),
            "sessions": sum(len(frame) for frame in self.windows.values()),
            "items": self.n_items,
        }


def build_sessions(events: pd.DataFrame, config: SessionConfig | None = None) -> SessionData:
    """Steps 1–6 on the canonical table: per-window session tables with raw and dense item ids.

    Raises :class:`EmptyWindow` when nothing survives, and :class:`InvalidConfig` when the window length
    leaves fewer than two non-empty windows (nothing to train before the first evaluation).
    """
    config = config or SessionConfig()
    kept = drop_rare_items(events, config.min_item_events)
    items = item_vocabulary(kept)
    sessions = session_table(sessionise(kept, config.session_gap), config.min_session_length, config.max_len)
    if sessions.empty:
        raise EmptyWindow(
            f"no session has ≥ {config.min_session_length} events within a gap of {config.session_gap} s; "
            "raise session_gap or use a larger release"
        )
    sessions = assign_windows(sessions, config.window_seconds)
    sessions["item_index"] = [np.searchsorted(items, np.asarray(s)).astype(np.int32) for s in sessions[ITEM]]
    origin = int(sessions["session_start"].min())
    windows = {
        window_name(origin + int(index) * config.window_seconds): frame[list(SESSION_COLUMNS)].reset_index(
            drop=True
        )
        for index, frame in sessions.groupby("window", sort=True)
    }
    if len(windows) < 2:
        raise InvalidConfig(
            f"window={config.window_days:g} days leaves {len(windows)} window: the protocol trains on one "
            "window and evaluates on the next; use a shorter window"
        )
    return SessionData(windows, items)


def check_windows(windows: dict[str, pd.DataFrame]) -> None:
    """Raise :class:`EmptyWindow` naming the first window without sessions, and InvalidConfig for < 2."""
    for name, frame in windows.items():
        if frame.empty:
            raise EmptyWindow(
                f"window {name} has no sessions; rebuild the session data (windows are non-empty by "
                "construction) or drop that window"
            )
    if len(windows) < 2:
        raise InvalidConfig(
            f"{len(windows)} window: the protocol trains on one window and evaluates on the next; "
            "use a shorter window"
        )


# Per-user sequences (issue 16) -----------------------------------------------------------------


@dataclass(frozen=True)
class UserSequences:
    """Each user's items oldest first, in CSR form (``users[u]``'s items are ``items[offsets[u]:offsets[u+1]]``)."""

    users: np.ndarray  # raw user ids, sorted
    offsets: np.ndarray  # int64, len(users) + 1
    items: np.ndarray  # raw item ids (or codes), user by user, in time order

    def __len__(self) -> int:
        return len(self.users)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, position: int) -> np.ndarray:
        return self.items[self.offsets[position] : self.offsets[position + 1]]

    def map_items(self, codes: np.ndarray) -> UserSequences:
        """The same sequences with ``items`` replaced by ``codes`` (one per item, same order)."""
        return UserSequences(self.users, self.offsets, np.asarray(codes))


def user_sequences(df: pd.DataFrame) -> UserSequences:
    """Every user's items in time order (ties: item_id, then row order), users sorted by id."""
    require_columns(df, (USER, ITEM, TIMESTAMP))
    users, items, times = (df[c].to_numpy() for c in (USER, ITEM, TIMESTAMP))
    order = np.arange(len(df))
    for key in (items, times, users):  # stable sorts, least significant key first
        order = order[np.argsort(key[order], kind="stable")]
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]]) if len(order) else np.zeros(0)
    offsets = np.r_[starts, len(order)].astype(np.int64)
    return UserSequences(sorted_users[starts.astype(np.int64)], offsets, items[order])


def append_items(sequences: UserSequences, users: np.ndarray, items: np.ndarray) -> UserSequences:
    """``sequences`` with ``items[j]`` appended to the sequence of ``users[j]`` (each user at most once;
    users not in ``sequences`` are ignored): train history + validation item for the leave-one-out test."""
    position = pd.Index(sequences.users).get_indexer(np.asarray(users))
    known = position >= 0
    extra = np.zeros(len(sequences), np.int64)
    added = np.zeros(len(sequences), dtype=sequences.items.dtype)
    extra[position[known]] = 1
    added[position[known]] = np.asarray(items)[known]
    lengths = sequences.lengths + extra
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    out = np.empty(offsets[-1], dtype=sequences.items.dtype)
    old = np.repeat(offsets[:-1] - sequences.offsets[:-1], sequences.lengths) + np.arange(
        len(sequences.items)
    )
    out[old] = sequences.items
    out[offsets[1:][extra == 1] - 1] = added[extra == 1]
    return UserSequences(sequences.users, offsets, out)


def last_items(sequences: UserSequences, length: int, pad: int = 0) -> np.ndarray:
    """users × ``length`` matrix of each user's last ``length`` items, left-padded with ``pad``."""
    return _windows_at(sequences, np.arange(len(sequences)), sequences.offsets[1:], length, pad)


def sliding_windows(
    sequences: UserSequences, length: int, step: int | None = None, pad: int = 0
) -> np.ndarray:
    """All training windows of ``length`` items (module docstring), one per row, left-padded with ``pad``.

    ``step`` defaults to ``length // 2`` (windows overlap by half). Rows are grouped by user.
    """
    if length < 2:
        raise InvalidConfig(f"window length {length} is below 2: a sequence model needs max_len ≥ 2.")
    step = max(1, length // 2) if step is None else step
    if step < 1:
        raise InvalidConfig(f"window step {step} must be ≥ 1, e.g. max_len // 2.")
    n = sequences.lengths
    # Windows ending at n, n - step, ... while the window is full, then the first window [0, length).
    full = np.where(n > length, (n - length) // step + 1, 0)
    extra = np.where(n > length, ((n - length) % step != 0).astype(np.int64), 1)
    per_user = full + extra
    user = np.repeat(np.arange(len(sequences)), per_user)
    k = np.arange(per_user.sum()) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    start = sequences.offsets[:-1][user]
    end = np.where(k < full[user], start + n[user] - k * step, start + np.minimum(n[user], length))
    return _windows_at(sequences, user, end, length, pad)


def _windows_at(
    sequences: UserSequences, user: np.ndarray, end: np.ndarray, length: int, pad: int
) -> np.ndarray:
    """Rows of ``length`` items of ``user``'s sequence ending (exclusive) at flat position ``end``."""
    start = sequences.offsets[:-1][user]
    column = np.arange(length) - length
    index = end[:, None] + column[None, :]
    valid = index >= start[:, None]
    out = np.full(index.shape, pad, dtype=np.int64)
    out[valid] = sequences.items[index[valid]]
    return out
