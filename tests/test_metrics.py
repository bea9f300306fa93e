"""Ranking metrics: hand-computed cases, edge cases, and per-user Python references."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recmodels import metrics as m
from recmodels.errors import EmptySplit, InvalidConfig, MissingColumns

LOG2_3 = math.log2(3)


def recs(lists: dict[int, list[int]]) -> pd.DataFrame:
    """Recommendations with ranks 1, 2, … in list order (scores decreasing)."""
    rows = [(u, i, float(-r), r + 1) for u, items in lists.items() for r, i in enumerate(items)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "score", "rank"])


def truth(sets: dict[int, list[int]]) -> pd.DataFrame:
    return pd.DataFrame([(u, i) for u, items in sets.items() for i in items], columns=["user_id", "item_id"])


# User 1: relevant {1, 2, 3, 10}, list 1*, 9, 3*, 8 (* = hit). User 2: relevant {4}, list 7, 4*, 6.
# User 3: relevant {5, 6}, no list. User 9: a list but no truth (ignored).
RECS = recs({1: [1, 9, 3, 8], 2: [7, 4, 6], 9: [1]})
TRUTH = truth({1: [1, 2, 3, 10], 2: [4], 3: [5, 6]})
# At k = 3, hits: user 1 at positions 1 and 3 (H = 2), user 2 at position 2 (H = 1), user 3 none.
NDCG_1 = (1 + 1 / 2) / (1 + 1 / LOG2_3 + 1 / 2)  # DCG 1/log2(2) + 1/log2(4); IDCG over min(3, 4) = 3
NDCG_2 = (1 / LOG2_3) / 1  # DCG 1/log2(3); IDCG over min(3, 1) = 1


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        (m.precision_at_k, (2 / 3 + 1 / 3 + 0) / 3),  # H/k = 2/3, 1/3, 0 → 1/3
        (m.recall_at_k, (2 / 4 + 1 / 1 + 0) / 3),  # H/|R| = 1/2, 1, 0 → 1/2
        (m.f1_at_k, 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)),  # F1 of P = 1/3 and R = 1/2 → 2/5
        (m.ndcg_at_k, (NDCG_1 + NDCG_2 + 0) / 3),
        (m.hit_rate_at_k, 2 / 3),  # users 1 and 2 hit
        (m.recall_at_k_vaecf, (2 / 3 + 1 / 1 + 0) / 3),  # H/min(3, |R|) = 2/3, 1, 0 → 5/9
    ],
)
def test_hand_computed_at_3(metric, expected: float) -> None:
    assert metric(RECS, TRUTH, k=3) == pytest.approx(expected)


def test_map_normalisations_at_3() -> None:
    # Σ_hits H(i)/i: user 1: 1/1 + 2/3 = 5/3; user 2: 1/2; user 3: 0.
    # "relevant": (5/3)/4 = 5/12, (1/2)/1 → (5/12 + 1/2 + 0)/3 = 11/36.
    # "min":      (5/3)/min(3, 4) = 5/9, (1/2)/min(3, 1) → (5/9 + 1/2 + 0)/3 = 19/54.
    assert m.map_at_k(RECS, TRUTH, k=3) == pytest.approx(11 / 36)
    assert m.map_at_k(RECS, TRUTH, k=3, normalization="min") == pytest.approx(19 / 54)
    with pytest.raises(InvalidConfig, match="'min', 'relevant'"):
        m.map_at_k(RECS, TRUTH, k=3, normalization="k")


def test_mrr_reads_the_whole_list() -> None:
    # First hits at positions 1 and 2; user 3 has none: (1 + 1/2 + 0)/3.
    assert m.mrr(RECS, TRUTH) == pytest.approx(1 / 2)
    # A first hit at position 4 counts (1/4) although no top-3 metric sees it.
    late = recs({1: [7, 8, 9, 2]})
    assert m.mrr(late, truth({1: [2]})) == pytest.approx(1 / 4)
    assert m.precision_at_k(late, truth({1: [2]}), k=3) == 0


def test_catalog_coverage() -> None:
    # Top 3 of users 1, 2, 9: {1, 9, 3} ∪ {7, 4, 6} ∪ {1} = 6 items of 20; top 4 adds item 8.
    assert m.catalog_coverage_at_k(RECS, n_items=20, k=3) == pytest.approx(6 / 20)
    assert m.catalog_coverage_at_k(RECS, n_items=20, k=4) == pytest.approx(7 / 20)
    with pytest.raises(InvalidConfig, match="7 distinct items are recommended"):
        m.catalog_coverage_at_k(RECS, n_items=5, k=10)


def test_evaluate_names_follow_k() -> None:
    values = m.evaluate(RECS, TRUTH, k=3, n_items=20)
    assert set(values) == {
        "precision_at_3",
        "recall_at_3",
        "f1_at_3",
        "map_at_3",
        "ndcg_at_3",
        "hr_at_3",
        "mrr",
        "coverage_at_3",
    }
    assert values["map_at_3"] == pytest.approx(11 / 36) and values["f1_at_3"] == pytest.approx(2 / 5)
    assert values["ndcg_at_3"] == pytest.approx(m.ndcg_at_k(RECS, TRUTH, k=3))
    assert set(m.evaluate(RECS, TRUTH)) == {
        "precision_at_10",
        "recall_at_10",
        "f1_at_10",
        "map_at_10",
        "ndcg_at_10",
        "hr_at_10",
        "mrr",
    }


# Hand-computed at cutoffs 1, 2 and 4 (RECS and TRUTH above; n_items = 20, user 9 counts for coverage only).
# Hits in the top c: c = 1: user 1 (pos 1); c = 2: users 1 (pos 1) and 2 (pos 2); c = 4: user 1 twice, user 2.
CUTOFF_VALUES = {
    "precision_at_1": 1 / 3,  # (1/1 + 0 + 0)/3
    "recall_at_1": 1 / 12,  # (1/4 + 0 + 0)/3
    "f1_at_1": 2 / 15,  # 2·(1/3)(1/12)/(1/3 + 1/12)
    "map_at_1": 1 / 12,  # user 1: (1/1)/4
    "ndcg_at_1": 1 / 3,  # user 1: DCG 1 / IDCG 1
    "hr_at_1": 1 / 3,
    "coverage_at_1": 2 / 20,  # {1} ∪ {7} ∪ {1}
    "precision_at_2": 1 / 3,  # (1/2 + 1/2 + 0)/3
    "recall_at_2": 5 / 12,  # (1/4 + 1/1 + 0)/3
    "f1_at_2": 10 / 27,  # 2·(1/3)(5/12)/(1/3 + 5/12)
    "map_at_2": 1 / 4,  # (1/4 + (1/2)/1 + 0)/3
    "ndcg_at_2": (1 / (1 + 1 / LOG2_3) + 1 / LOG2_3) / 3,  # user 2: IDCG over min(2, 1) = 1 position
    "hr_at_2": 2 / 3,
    "coverage_at_2": 4 / 20,  # {1, 9} ∪ {7, 4} ∪ {1}
    "precision_at_4": 1 / 4,  # (2/4 + 1/4 + 0)/3
    "recall_at_4": 1 / 2,  # (2/4 + 1/1 + 0)/3
    "f1_at_4": 2 * (1 / 4) * (1 / 2) / (1 / 4 + 1 / 2),
    "map_at_4": 11 / 36,  # as at 3: no hit at position 4
    "ndcg_at_4": ((1 + 1 / 2) / (1 + 1 / LOG2_3 + 1 / 2 + 1 / math.log2(5)) + 1 / LOG2_3) / 3,
    "hr_at_4": 2 / 3,
    "coverage_at_4": 7 / 20,
    "mrr": 1 / 2,  # once, over the whole list
}


def test_evaluate_every_cutoff_hand_computed() -> None:
    values = m.evaluate(RECS, TRUTH, k=[4, 1, 2, 2], n_items=20)  # any order, duplicates once
    assert set(values) == set(CUTOFF_VALUES)
    for name, expected in CUTOFF_VALUES.items():
        assert values[name] == pytest.approx(expected), name
    for k in (1, 2, 4):  # one list evaluated at several cutoffs = each cutoff on its own
        assert m.evaluate(RECS, TRUTH, k=k, n_items=20) == pytest.approx(
            {name: v for name, v in values.items() if name.endswith(f"_at_{k}") or name == "mrr"}
        )


def test_evaluate_vaecf_recall_at_every_cutoff() -> None:
    # Liang et al.: H_u(c) / min(c, |R_u|). c = 1: (1/1 + 0 + 0)/3; c = 2: (1/2 + 1/1)/3; c = 4: (2/4 + 1)/3.
    values = m.evaluate(RECS, TRUTH, k=[1, 2, 4], recall="vaecf")
    assert [values[f"recall_at_{c}"] for c in (1, 2, 4)] == pytest.approx([1 / 3, 1 / 2, 1 / 2])
    assert values["recall_at_2"] == pytest.approx(m.recall_at_k_vaecf(RECS, TRUTH, k=2))
    assert values["f1_at_2"] == pytest.approx(10 / 27), "F1 keeps the standard recall"
    assert values["precision_at_2"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("k", [0, -5, [], [10, 0], [2.5], [True]])
def test_cutoffs_must_be_positive_integers(k) -> None:
    with pytest.raises(InvalidConfig, match="positive integers"):
        m.evaluate(RECS, TRUTH, k=k)


def test_k_larger_than_the_lists() -> None:
    # k = 10 with 4 and 3 items: precision still divides by 10 → (2/10 + 1/10 + 0)/3 = 0.1;
    # IDCG of user 1 now runs over min(10, 4) = 4 positions.
    assert m.precision_at_k(RECS, TRUTH, k=10) == pytest.approx(0.1)
    idcg_1 = 1 + 1 / LOG2_3 + 1 / 2 + 1 / math.log2(5)
    assert m.ndcg_at_k(RECS, TRUTH, k=10) == pytest.approx(((1 + 1 / 2) / idcg_1 + NDCG_2) / 3)


def test_ties_in_rank_are_broken_by_item_id() -> None:
    # Ranks 1, 1, 2 for items 5, 3, 4 → positions: item 3, item 5, item 4. Only the first k count.
    tied = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [5, 3, 4], "rank": [1, 1, 2]})
    t = truth({1: [5]})
    assert m.precision_at_k(tied, t, k=1) == 0  # item 3 holds position 1
    assert m.ndcg_at_k(tied, t, k=2) == pytest.approx(1 / LOG2_3)  # item 5 at position 2
    assert m.mrr(tied, t) == pytest.approx(1 / 2)


def test_duplicate_rows_count_once() -> None:
    # Item 2 listed at ranks 1 and 3: it keeps position 1, item 8 moves to position 3.
    dup = pd.DataFrame({"user_id": [1, 1, 1, 1], "item_id": [2, 7, 2, 8], "rank": [1, 2, 3, 4]})
    t = truth({1: [2, 8, 2]})  # duplicate truth row: |R| = 2
    assert m.precision_at_k(dup, t, k=3) == pytest.approx(2 / 3)  # items 2, 7, 8
    assert m.recall_at_k(dup, t, k=2) == pytest.approx(1 / 2)
    assert m.map_at_k(dup, t, k=3) == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_users_without_recommendations_score_zero() -> None:
    t = truth({1: [1], 2: [2]})
    assert m.hit_rate_at_k(recs({1: [1]}), t, k=10) == pytest.approx(1 / 2)
    assert m.recall_at_k(recs({3: [2]}), t, k=10) == 0  # user 3 is not in truth
    assert m.evaluate(recs({}), t)["ndcg_at_10"] == 0


def test_bad_inputs_raise() -> None:
    with pytest.raises(InvalidConfig, match="k=0 is not a positive integer"):
        m.precision_at_k(RECS, TRUTH, k=0)
    with pytest.raises(MissingColumns, match=r"recommendations lacks column\(s\) \['rank'\]"):
        m.ndcg_at_k(RECS.drop(columns="rank"), TRUTH)
    with pytest.raises(EmptySplit, match="truth has no rows"):
        m.evaluate(RECS, TRUTH.iloc[:0])


def reference(recommendations: pd.DataFrame, truth_: pd.DataFrame, k: int) -> dict[str, float]:
    """Per-user loops straight from the definitions (Recommenders' formulas for P, R, MAP, NDCG)."""
    relevant = truth_.groupby("user_id")["item_id"].apply(set).to_dict()
    ordered = recommendations.sort_values(["user_id", "rank", "item_id"])
    lists = ordered.groupby("user_id")["item_id"].apply(list).to_dict()
    sums = dict.fromkeys(["p", "r", "ap", "ap_min", "ndcg", "hr", "rr"], 0.0)
    for user, rel in relevant.items():
        items = lists.get(user, [])
        top = items[:k]
        hits = [i in rel for i in top]
        sums["p"] += sum(hits) / k
        sums["r"] += sum(hits) / len(rel)
        precisions = [sum(hits[: i + 1]) / (i + 1) for i in range(len(top)) if hits[i]]
        sums["ap"] += sum(precisions) / len(rel)
        sums["ap_min"] += sum(precisions) / min(k, len(rel))
        dcg = sum(1 / math.log2(i + 2) for i in range(len(top)) if hits[i])
        sums["ndcg"] += dcg / sum(1 / math.log2(i + 2) for i in range(min(k, len(rel))))
        sums["hr"] += any(hits)
        sums["rr"] += next((1 / (i + 1) for i, item in enumerate(items) if item in rel), 0.0)
    return {name: total / len(relevant) for name, total in sums.items()}


@pytest.mark.parametrize("k", [1, 5, 20])
def test_matches_a_per_user_reference_on_random_data(k: int) -> None:
    rng = np.random.default_rng(k)
    n_users, n_items = 60, 40
    rec_rows = [
        (u, i, r + 1)
        for u in range(n_users)
        if u % 7  # every 7th user gets no list
        for r, i in enumerate(rng.permutation(n_items)[: rng.integers(1, 15)])
    ]
    rec = pd.DataFrame(rec_rows, columns=["user_id", "item_id", "rank"]).sample(frac=1, random_state=k)
    true = truth(
        {u: list(rng.choice(n_items, rng.integers(1, 12), replace=False)) for u in range(5, n_users)}
    )
    expected = reference(rec, true, k)
    got = m.evaluate(rec, true, k=k)
    assert got[f"precision_at_{k}"] == pytest.approx(expected["p"])
    assert got[f"recall_at_{k}"] == pytest.approx(expected["r"])
    assert got[f"map_at_{k}"] == pytest.approx(expected["ap"])
    assert m.map_at_k(rec, true, k, normalization="min") == pytest.approx(expected["ap_min"])
    assert got[f"ndcg_at_{k}"] == pytest.approx(expected["ndcg"])
    assert got[f"hr_at_{k}"] == pytest.approx(expected["hr"])
    assert got["mrr"] == pytest.approx(expected["rr"])
    assert expected["p"] > 0 and expected["hr"] < 1  # the case exercises hits and misses


# --- VAE-CF's dense protocol ---------------------------------------------------------------------------


def vae_cf_reference(scores: np.ndarray, heldout: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """dawenl/vae_cf's NDCG_binary_at_k_batch and Recall_at_k_batch, with np.argpartition for bn's."""
    users = np.arange(scores.shape[0])[:, None]
    part = np.argpartition(-scores, k, axis=1)
    topk = part[users, np.argsort(-scores[users, part[:, :k]], axis=1)]
    tp = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (heldout[users, topk].toarray() * tp).sum(axis=1)
    idcg = np.array([tp[: min(n, k)].sum() for n in heldout.getnnz(axis=1)])
    predicted = np.zeros_like(scores, dtype=bool)
    predicted[users, part[:, :k]] = True
    hits = np.logical_and((heldout > 0).toarray(), predicted).sum(axis=1)
    return dcg / idcg, hits / np.minimum(k, (heldout > 0).toarray().sum(axis=1))


def test_dense_scores_hand_computed() -> None:
    # Row 0: scores rank items 2, 0, 3, 1, 4; held out {0, 4}. k = 3 → hit at position 2 only.
    #   NDCG = (1/log2 3) / (1 + 1/log2 3); recall = 1 / min(3, 2) = 1/2.
    # Row 1: item 1 masked (-inf, fold-in); ranking 0, 2, 3, 4; held out {3}: position 3.
    #   NDCG = (1/log2 4) / 1 = 1/2; recall = 1/1.
    scores = np.array([[0.8, 0.2, 0.9, 0.5, 0.1], [0.9, -np.inf, 0.7, 0.6, 0.1]])
    heldout = sp.csr_matrix(np.array([[1, 0, 0, 0, 1], [0, 0, 0, 1, 0]], dtype=float))
    ndcg = m.ndcg_at_k_from_scores(scores, heldout, k=3)
    np.testing.assert_allclose(ndcg, [(1 / LOG2_3) / (1 + 1 / LOG2_3), 1 / 2])
    np.testing.assert_allclose(m.recall_at_k_from_scores(scores, heldout, k=3), [1 / 2, 1])


def test_dense_scores_match_the_vae_cf_code() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 300))
    one_per_row = sp.csr_matrix((np.ones(50), (np.arange(50), rng.integers(0, 300, 50))), shape=(50, 300))
    heldout = (sp.random(50, 300, density=0.05, format="csr", random_state=1) + one_per_row).tocsr()
    heldout.data[:] = 1.0  # binary, and every row holds at least one item out
    for k in (20, 100):
        ndcg_ref, recall_ref = vae_cf_reference(scores, heldout, k)
        np.testing.assert_allclose(m.ndcg_at_k_from_scores(scores, heldout, k), ndcg_ref)
        np.testing.assert_allclose(m.recall_at_k_from_scores(scores, heldout, k), recall_ref)


def test_dense_scores_bad_inputs() -> None:
    scores = np.zeros((2, 3))
    with pytest.raises(InvalidConfig, match=r"scores has shape \(2, 3\) but heldout \(2, 4\)"):
        m.recall_at_k_from_scores(scores, sp.csr_matrix((2, 4)), k=2)
    with pytest.raises(EmptySplit, match="1 rows of heldout have no item"):
        m.ndcg_at_k_from_scores(scores, sp.csr_matrix(np.array([[1.0, 0, 0], [0, 0, 0]])), k=2)
