"""The session protocol (issue 17): sessionise, truncation, windows, metrics, the incremental loop and the
baselines, on hand-made tables with hand-computed answers, and the issue's counts on the real releases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recmodels import sequences as seq
from recmodels.datasets import parse_ratings
from recmodels.errors import EmptyWindow, InvalidConfig, NotFitted
from recmodels.session_baselines import ItemKNN, SessionKNN, SessionPopularity
from recmodels.session_eval import (
    average_over_windows,
    incremental_evaluation,
    metrics_from_ranks,
    target_ranks,
)

DAY = 86_400


def events(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


# --- sessionise / truncation / windows ------------------------------------------------------------


def test_sessionise_gap_boundary_ties_and_users() -> None:
    table = events(
        [
            (1, 12, 3600),  # tie with item 9 at 3600: sorted by item id
            (1, 10, 0),
            (1, 11, 1800),  # gap exactly 1800: same session
            (1, 9, 3600),  # gap 1800 again: same session
            (1, 13, 5401),  # gap 1801: a new session
            (2, 10, 1),  # another user, same time: another session
            (2, 11, 2),
        ]
    )
    result = seq.sessionise(table, session_gap=1800)
    assert result["item_id"].tolist() == [10, 11, 9, 12, 13, 10, 11]
    assert result["session_id"].tolist() == [0, 0, 0, 0, 1, 2, 2]


def test_session_table_drops_one_event_sessions_and_keeps_the_last_max_len() -> None:
    table = events([(1, item, 10 * item) for item in range(1, 6)] + [(2, 7, 0), (3, 8, 5), (3, 9, 5)])
    sessions = seq.session_table(seq.sessionise(table, 1800), min_session_length=2, max_len=3)
    # user 2's single event is dropped; user 1's session keeps items 3..5 but starts at its first event
    assert sessions["user_id"].tolist() == [3, 1]  # ordered by start: user 3 at 5, user 1 at 10
    assert sessions["item_id"].tolist() == [[8, 9], [3, 4, 5]]
    assert sessions["session_start"].tolist() == [5, 10]
    assert sessions["timestamp"].tolist() == [[5, 5], [30, 40, 50]]
    assert sessions["session_id"].tolist() == [0, 1]


def test_drop_rare_items_is_one_pass() -> None:
    table = events([(u, 1, u) for u in range(5)] + [(u, 2, u) for u in range(4)] + [(9, 3, 0)])
    kept = seq.drop_rare_items(table, min_item_events=5)
    assert sorted(kept["item_id"].unique()) == [1]
    assert len(kept) == 5


def test_windows_floor_from_the_earliest_start_and_skip_empty_ones() -> None:
    start = 874_724_710  # 1997-09-20 03:05:10 UTC
    rows = []
    for user, day in enumerate([0.0, 0.5, 1.0, 3.5]):  # windows of 1 day: 0, 0, 1, 3 (2 is empty)
        t = start + int(day * DAY)
        rows += [(user, 1, t), (user, 2, t + 60)]
    data = seq.build_sessions(events(rows), seq.SessionConfig(min_item_events=1, window_days=1))
    assert list(data.windows) == [
        "session_start_date=1997-09-20",
        "session_start_date=1997-09-21",
        "session_start_date=1997-09-23",
    ]
    assert [len(frame) for frame in data.windows.values()] == [2, 1, 1]
    assert [frame["window"].iloc[0] for frame in data.windows.values()] == [0, 1, 3]
    assert data.items.tolist() == [1, 2]
    assert data.windows["session_start_date=1997-09-20"]["item_index"].iloc[0].tolist() == [0, 1]


def test_bad_protocol_parameters_are_one_line_errors() -> None:
    with pytest.raises(InvalidConfig, match="session_gap=0"):
        seq.SessionConfig(session_gap=0)
    with pytest.raises(InvalidConfig, match="session_gap=-5"):
        seq.sessionise(events([(1, 1, 0)]), session_gap=-5)
    one_window = events([(0, 1, 0), (0, 2, 10), (1, 1, 100), (1, 2, 110)])
    with pytest.raises(InvalidConfig, match="leaves 1 window"):
        seq.build_sessions(one_window, seq.SessionConfig(min_item_events=1, window_days=1))
    with pytest.raises(EmptyWindow, match="no session"):
        seq.build_sessions(events([(0, 1, 0), (1, 1, 5)]), seq.SessionConfig(min_item_events=1))
    empty = pd.DataFrame({"item_index": pd.Series([], dtype=object)})
    full = pd.DataFrame({"item_index": [np.array([0, 1])]})
    with pytest.raises(EmptyWindow, match="window b has no sessions"):
        incremental_evaluation(SessionPopularity(2), {"a": full, "b": empty})
    for message in (str(e) for e in [InvalidConfig("x")]):
        assert "\n" not in message


@pytest.mark.parametrize(
    ("folder", "fmt", "days", "expected"),
    [
        ("ml-100k/u.data", "tab", 7, {"windows": 31, "sessions": 2275, "items": 1349}),
        ("ml-latest-small/ratings.csv", "csv", 365, {"windows": 23, "sessions": 3321, "items": 3650}),
    ],
)
def test_the_issues_counts_on_the_real_releases(
    mirror: Path, folder: str, fmt: str, days: int, expected: dict[str, int]
) -> None:
    data = seq.build_sessions(parse_ratings(mirror / folder, fmt), seq.SessionConfig(window_days=days))
    assert data.counts() == expected
    lengths = [len(s) for frame in data.windows.values() for s in frame["item_id"]]
    assert min(lengths) == 2 and max(lengths) == 20


# --- metrics ---------------------------------------------------------------------------------------


def test_target_ranks_break_ties_to_the_lower_index() -> None:
    scores = np.array([[0.1, 0.5, 0.5, 0.2], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 3.0]])
    assert target_ranks(scores, np.array([2, 3, 3])).tolist() == [1, 3, 0]


def test_metrics_from_ranks_by_hand() -> None:
    result = metrics_from_ranks(np.array([0, 9, 10, 25]))
    assert result["recall_at_10"] == 0.5
    assert result["recall_at_20"] == 0.75
    assert result["ndcg_at_10"] == pytest.approx((1 + 1 / math.log2(11)) / 4)
    assert result["ndcg_at_20"] == pytest.approx((1 + 1 / math.log2(11) + 1 / math.log2(12)) / 4)
    assert result["mrr_at_20"] == pytest.approx((1 + 1 / 10 + 1 / 11) / 4)


# --- the incremental loop --------------------------------------------------------------------------


class Spy:
    """Records what it is given and checks it never sees a session before it is evaluated on it."""

    def __init__(self, n_items: int, windows: list[list[np.ndarray]]) -> None:
        self.n_items, self.windows = n_items, windows
        self.updates: list[tuple[int, int]] = []
        self.scored: list[int] = []
        self.seen: set[int] = set()

    def _window_of(self, session: np.ndarray) -> int:
        return next(
            i for i, w in enumerate(self.windows) for s in w if s is session or np.array_equal(s, session)
        )

    def update(self, window: list[np.ndarray], replay: list[np.ndarray]) -> None:
        index = self._window_of(window[0])
        self.seen |= {index} | {self._window_of(s) for s in replay}
        self.updates.append((index, len(replay)))

    def score(self, prefixes: list[np.ndarray]) -> np.ndarray:
        index = next(
            i for i, w in enumerate(self.windows) if any(np.array_equal(s[:-1], prefixes[0]) for s in w)
        )
        assert index not in self.seen and max(self.seen) == index - 1
        self.scored.append(index)
        return np.zeros((len(prefixes), self.n_items))


def _toy_windows() -> dict[str, pd.DataFrame]:
    sessions = [[[0, 1], [1, 2]], [[2, 3, 4]], [[4, 0]], [[3, 1], [3, 1, 2]]]
    return {f"w{i}": pd.DataFrame({"item_index": [np.array(s) for s in w]}) for i, w in enumerate(sessions)}


@pytest.mark.parametrize(("replay", "expected_replay"), [(0, [0, 0, 0]), (1, [0, 2, 1]), (-1, [0, 2, 3])])
def test_the_loop_never_shows_window_i_plus_1_before_evaluating_on_it(
    replay: int, expected_replay: list[int]
) -> None:
    windows = _toy_windows()
    spy = Spy(5, [[np.asarray(s) for s in frame["item_index"]] for frame in windows.values()])
    steps = []
    result = incremental_evaluation(
        spy, windows, replay_windows=replay, on_window=lambda r: steps.append(r.step)
    )
    assert spy.updates == list(zip([0, 1, 2], expected_replay, strict=True))
    assert spy.scored == [1, 2, 3] and steps == [1, 2, 3]
    assert result["eval_window"].tolist() == ["w1", "w2", "w3"]


def test_loop_metrics_and_aod_with_popularity_by_hand() -> None:
    # after w0 counts are [1, 2, 1, 0, 0]: order 1, 0, 2, 3, 4. w1 target 4 has rank 4.
    # after w1 counts [1, 2, 2, 1, 1]: order 1, 2, 0, 3, 4. w2 target 0 has rank 2.
    result = incremental_evaluation(SessionPopularity(5), dict(list(_toy_windows().items())[:3]))
    assert result["recall_at_10"].tolist() == [1.0, 1.0]
    assert result["ndcg_at_10"].tolist() == pytest.approx([1 / math.log2(6), 1 / math.log2(4)])
    aod = average_over_windows(result)
    assert aod["aod_ndcg_at_10"] == pytest.approx((1 / math.log2(6) + 1 / math.log2(4)) / 2)
    assert aod["aod_mrr_at_20"] == pytest.approx((1 / 5 + 1 / 3) / 2)


# --- baselines -------------------------------------------------------------------------------------


def test_popularity_counts_windows_seen_so_far() -> None:
    model = SessionPopularity(4)
    with pytest.raises(NotFitted):
        model.score([np.array([0])])
    model.update([np.array([0, 1]), np.array([1, 2])], [])
    model.update([np.array([1, 3])], [np.array([0, 1])])  # replay ignored: already counted
    assert model.score([np.array([2])])[0].tolist() == [1, 3, 1, 1]


def test_item_knn_cosine_on_the_last_item() -> None:
    model = ItemKNN(4)
    model.update([np.array([0, 1]), np.array([0, 1, 2]), np.array([2, 3])], [])
    scores = model.score([np.array([3, 0])])[0]  # last item 0: |S0|=2, |S1|=2, |S2|=2, |S3|=1
    assert scores[1] == pytest.approx(2 / 2, abs=1e-8)
    assert scores[2] == pytest.approx(1 / 2, abs=1e-8)
    assert scores[3] == pytest.approx(0.0, abs=1e-8)
    assert scores[0] < 1e-8  # the item itself: only the popularity tie-break
    assert np.argsort(-scores).tolist()[:2] == [1, 2]


def test_session_knn_by_hand() -> None:
    model = SessionKNN(5, k=2, sample_size=3)
    seen = [np.array([0, 1]), np.array([1, 2]), np.array([2, 3]), np.array([0, 4])]
    model.update(seen, [])
    # input (0, 2): weights w(0) = 1/2, w(2) = 1. sample: the 3 most recent sessions sharing an item
    # (indices 1, 2, 3; session 0 is older). sims: s1 = 1, s2 = 1, s3 = 1/2. k = 2: s1, s2.
    scores = model.score([np.array([0, 2])])[0]
    assert scores[:4] == pytest.approx([0, 1, 2, 1], abs=1e-8)
    assert scores[4] < 1e-8
