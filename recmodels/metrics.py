"""Top-k ranking metrics with binary relevance, computed for all users at once.

Inputs: ``recommendations``, DataFrame(user_id, item_id, rank[, score]) with rank 1 the best, and
``truth``, DataFrame(user_id, item_id) whose rows are the relevant items. Conventions of every metric:

- Each user's list is ordered by ``rank`` (ties broken by the lower item_id; a (user, item) pair listed
  twice keeps its best rank) and numbered i = 1, 2, …; only i ≤ k counts, so at most k items per user.
  Duplicate truth rows count once.
- The mean runs over U, every user in ``truth``: a user without recommendations scores 0, and
  recommendations for users outside ``truth`` are ignored. Microsoft Recommenders' ``python_evaluation``
  averages precision, recall and MAP over the users present in both frames instead; the two agree when
  every test user is recommended for (as in its SAR ML-100K notebook).

Notation, for user u: R_u the relevant items, hit_u(i) = 1 if the item at position i is in R_u, and
H_u(k) = Σ_{i≤k} hit_u(i) the hits in the top k.

``ndcg_at_k_from_scores`` and ``recall_at_k_from_scores`` follow instead the dense protocol of Liang et
al., "Variational Autoencoders for Collaborative Filtering", WWW 2018 (dawenl/vae_cf's
``NDCG_binary_at_k_batch`` and ``Recall_at_k_batch``): a users × items score block against a held-out
CSR block, one value per user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recmodels._columns import ITEM, USER, require_columns
from recmodels.base import IdIndex, top_k_dense
from recmodels.errors import EmptySplit, InvalidConfig

Normalization = Literal["min", "relevant"]
RecallDefinition = Literal["standard", "vaecf"]


@dataclass(frozen=True)
class _Lists:
    """Recommendation lists of the truth users; rows sorted by (user, position)."""

    user: np.ndarray  # dense index of the row's truth user
    position: np.ndarray  # 1-based position i in that user's list
    hit: np.ndarray  # hit_u(i)
    n_relevant: np.ndarray  # |R_u| for every truth user


def precision_at_k(recommendations: pd.DataFrame, truth: pd.DataFrame, k: int = 10) -> float:
    """P@k = (1/|U|) Σ_u H_u(k) / k (a list shorter than k still divides by k, as in Recommenders)."""
    return float(_precision(_lists(_ordered(recommendations), truth), _check_k(k)).mean())


def recall_at_k(recommendations: pd.DataFrame, truth: pd.DataFrame, k: int = 10) -> float:
    """R@k = (1/|U|) Σ_u H_u(k) / |R_u|."""
    return float(_recall(_lists(_ordered(recommendations), truth), _check_k(k)).mean())


def f1_at_k(recommendations: pd.DataFrame, truth: pd.DataFrame, k: int = 10) -> float:
    """F1@k = 2·P@k·R@k / (P@k + R@k): the harmonic mean of the averaged precision and recall (0 if both 0).

    This is the seed PoC's (Spotlight-based) table column. Neither Spotlight, whose
    ``precision_recall_score`` returns per-user arrays, nor Recommenders' ``python_evaluation`` defines a
    ranking F1, and the mean of per-user F1 would be a different, smaller-or-equal number.
    """
    lists = _lists(_ordered(recommendations), truth)
    return _f1(float(_precision(lists, _check_k(k)).mean()), float(_recall(lists, k).mean()))


def map_at_k(
    recommendations: pd.DataFrame, truth: pd.DataFrame, k: int = 10, normalization: Normalization = "relevant"
) -> float:
    """MAP@k = (1/|U|) Σ_u (1/N_u) Σ_{i≤k} hit_u(i) · H_u(i) / i.

    ``normalization="relevant"``: N_u = |R_u|, Recommenders' ``map`` (and its ``map_at_k`` before
    1.2.0), the MAP of its published SAR ML-100K tables; hence the default. ``"min"``: N_u = min(k, |R_u|),
    Recommenders' ``map_at_k`` since 1.2.0 and Spark's ``meanAveragePrecisionAt``, whose maximum is 1.
    """
    return float(
        _average_precision(_lists(_ordered(recommendations), truth), _check_k(k), normalization).mean()
    )


def ndcg_at_k(recommendations: pd.DataFrame, truth: pd.DataFrame, k: int = 10) -> float:
    """NDCG@k = (1/|U|) Σ_u DCG_u / IDCG_u, with binary gains and a log2 discount:

    DCG_u = Σ_{i≤k} hit_u(i) / log2(i + 1),   IDCG_u = Σ_{i ≤ min(k, |R_u|)} 1 / log2(i + 1).

    Recommenders' default natural-log discount gives the same ratio.
    """
    return float(_ndcg(_lists(_ordered(recommendations), truth), _check_k(k)).mean())


def hit_rate_at_k(recommendations: pd.DataFrame, truth: pd.DataFrame, k: int = 10) -> float:
    """HR@k = (1/|U|) Σ_u [H_u(k) > 0]: the share of users with at least one relevant item in the top k."""
    return float((_hits(_lists(_ordered(recommendations), truth), _check_k(k)) > 0).mean())


def mrr(recommendations: pd.DataFrame, truth: pd.DataFrame) -> float:
    """MRR = (1/|U|) Σ_u 1 / i_u, i_u the position of u's first hit in the whole list given (0 if none).

    Unlike Spotlight's ``mrr_score`` (mean reciprocal rank of every test item in a full-catalog ranking),
    this reads only the list given, so it is bounded by the list length the model was asked for.
    """
    return float(_reciprocal_rank(_lists(_ordered(recommendations), truth)).mean())


def recall_at_k_vaecf(recommendations: pd.DataFrame, truth: pd.DataFrame, k: int = 10) -> float:
    """Recall@k of Liang et al. 2018 (Section 4.2, Metrics): (1/|U|) Σ_u H_u(k) / min(k, |R_u|).

    Its maximum is 1 even for users with more than k relevant items, unlike :func:`recall_at_k`.
    """
    lists = _lists(_ordered(recommendations), truth)
    return float((_hits(lists, _check_k(k)) / np.minimum(k, lists.n_relevant)).mean())


def catalog_coverage_at_k(recommendations: pd.DataFrame, n_items: int, k: int = 10) -> float:
    """Coverage@k = |∪_u top-k(u)| / n_items: the share of the catalog recommended to at least one user.

    Shani & Gunawardana, "Evaluating Recommendation Systems", Recommender Systems Handbook, 2011
    (Recommenders' ``catalog_coverage``, which divides by the items in train instead of ``n_items``).
    """
    return _coverage(_ordered(recommendations), n_items, _check_k(k))


def check_cutoffs(k: int | Sequence[int]) -> list[int]:
    """The cutoffs of ``k`` (one or several), ascending and each once; InvalidConfig unless each is a
    positive integer and there is at least one."""
    ks = [k] if isinstance(k, int | np.integer) else list(k)
    if not ks or any(isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1 for v in ks):
        raise InvalidConfig(
            f"top_k={k!r} is not a list of positive integers: give the cutoffs to evaluate, e.g. 5,10,20,50,100."
        )
    return sorted({int(v) for v in ks})


def evaluate(
    recommendations: pd.DataFrame,
    truth: pd.DataFrame,
    k: int | Sequence[int] = 10,
    n_items: int | None = None,
    recall: RecallDefinition = "standard",
) -> dict[str, float]:
    """Every metric at every cutoff of ``k`` under its MLflow name (DESIGN.md), from one ranked list.

    Returns, for each cutoff c of ``k`` (an int or a list: 5, 10, 20, 50, 100 like RecBole's ``topk``),
    precision_at_c, recall_at_c, f1_at_c, map_at_c (``normalization="relevant"``), ndcg_at_c, hr_at_c,
    and coverage_at_c when ``n_items`` is given; and once ``mrr``, over the whole list given (the largest
    cutoff's list when the recommendations were computed at that depth). Compute the recommendations once
    at the largest cutoff: each cutoff reads the first c positions of each list.

    ``recall="vaecf"`` reports Liang et al. 2018's recall, H_u(c) / min(c, |R_u|) (:func:`recall_at_k_vaecf`),
    as recall_at_c, the strong-generalisation protocol's definition (VAE-CF's Recall@20 and Recall@50);
    f1_at_c always combines precision with the standard recall H_u(c) / |R_u|.
    """
    if recall not in ("standard", "vaecf"):
        raise InvalidConfig(f"recall={recall!r} is not one of 'standard', 'vaecf'.")
    ordered = _ordered(recommendations)
    lists = _lists(ordered, truth)
    values: dict[str, float] = {}
    for c in check_cutoffs(k):
        precision, standard_recall = float(_precision(lists, c).mean()), float(_recall(lists, c).mean())
        values |= {
            f"precision_at_{c}": precision,
            f"recall_at_{c}": standard_recall
            if recall == "standard"
            else float((_hits(lists, c) / np.minimum(c, lists.n_relevant)).mean()),
            f"f1_at_{c}": _f1(precision, standard_recall),
            f"map_at_{c}": float(_average_precision(lists, c, "relevant").mean()),
            f"ndcg_at_{c}": float(_ndcg(lists, c).mean()),
            f"hr_at_{c}": float((_hits(lists, c) > 0).mean()),
        }
        if n_items is not None:
            values[f"coverage_at_{c}"] = _coverage(ordered, n_items, c)
    values["mrr"] = float(_reciprocal_rank(lists).mean())
    return values


def ndcg_at_k_from_scores(scores: np.ndarray, heldout: sp.sparray | sp.spmatrix, k: int = 100) -> np.ndarray:
    """Per-user NDCG@k of a dense score block: dawenl/vae_cf's ``NDCG_binary_at_k_batch``.

    For row u: DCG_u = Σ_{i≤k} [heldout[u, top_i] > 0] / log2(i + 1) over the k best-scored items, and
    IDCG_u = Σ_{i ≤ min(k, n_u)} 1 / log2(i + 1), n_u the non-zeros of row u. Score ties go to the lower
    item index (the reference's ``bn.argpartition`` breaks them arbitrarily); ``-inf`` scores (fold-in
    items masked as in the paper) are never counted. Average the returned values over all blocks.
    """
    relevant, n_relevant = _score_block(scores, heldout, _check_k(k))
    discount = 1.0 / np.log2(np.arange(2, relevant.shape[1] + 2))
    dcg = (relevant * discount).sum(axis=1)
    idcg = np.cumsum(discount)[np.minimum(k, n_relevant) - 1]
    return dcg / idcg


def recall_at_k_from_scores(scores: np.ndarray, heldout: sp.sparray | sp.spmatrix, k: int = 20) -> np.ndarray:
    """Per-user Recall@k of a dense score block: dawenl/vae_cf's ``Recall_at_k_batch``.

    Row u: |top-k(u) ∩ heldout_u| / min(k, n_u), with the tie and ``-inf`` rules of
    :func:`ndcg_at_k_from_scores`.
    """
    relevant, n_relevant = _score_block(scores, heldout, _check_k(k))
    return relevant.sum(axis=1) / np.minimum(k, n_relevant)


def _lists(ordered: tuple[np.ndarray, np.ndarray, np.ndarray], truth: pd.DataFrame) -> _Lists:
    require_columns(truth, (USER, ITEM), "truth")
    if truth.empty:
        raise EmptySplit("truth has no rows: evaluate against a test set that has interactions.")
    users, items = IdIndex.from_values(truth[USER]), IdIndex.from_values(truth[ITEM])
    pairs = np.unique(users.positions(truth[USER]) * len(items) + items.positions(truth[ITEM]))
    user_id, item_id, position = ordered
    user = users.positions(user_id)
    known = user >= 0
    user, position, item = user[known], position[known], items.positions(item_id[known])
    hit = (item >= 0) & np.isin(user * len(items) + item, pairs)
    return _Lists(user, position, hit, np.bincount(pairs // len(items), minlength=len(users)))


def _ordered(recommendations: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """user_id, item_id and 1-based position of each distinct (user, item), sorted by (user, position)."""
    require_columns(recommendations, (USER, ITEM, "rank"), "recommendations")
    user, item, rank = (recommendations[c].to_numpy() for c in (USER, ITEM, "rank"))
    order = np.arange(len(user))
    for values in (item, rank, user):  # np.lexsort((item, rank, user)) as chained stable argsorts: faster
        order = order[np.argsort(values[order], kind="stable")]
    user, item = user[order], item[order]
    first = ~pd.DataFrame({USER: user, ITEM: item}).duplicated().to_numpy()
    user, item = user[first], item[first]
    return user, item, pd.Series(user).groupby(user).cumcount().to_numpy() + 1


def _coverage(ordered: tuple[np.ndarray, np.ndarray, np.ndarray], n_items: int, k: int) -> float:
    _, item, position = ordered
    n_covered = pd.unique(item[position <= k]).size
    if not isinstance(n_items, int | np.integer) or n_items < n_covered or n_items < 1:
        raise InvalidConfig(
            f"n_items={n_items!r} is not a catalog size: {n_covered} distinct items are recommended; pass "
            "the number of items in the catalog (e.g. in train)."
        )
    return n_covered / n_items


def _check_k(k: int) -> int:
    if not isinstance(k, int | np.integer) or k < 1:
        raise InvalidConfig(f"k={k!r} is not a positive integer: pass the list length to evaluate, e.g. 10.")
    return int(k)


def _hits(lists: _Lists, k: int) -> np.ndarray:
    top = lists.position <= k
    return np.bincount(lists.user[top], weights=lists.hit[top], minlength=len(lists.n_relevant))


def _precision(lists: _Lists, k: int) -> np.ndarray:
    return _hits(lists, k) / k


def _recall(lists: _Lists, k: int) -> np.ndarray:
    return _hits(lists, k) / lists.n_relevant


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _average_precision(lists: _Lists, k: int, normalization: Normalization) -> np.ndarray:
    if normalization not in ("min", "relevant"):
        raise InvalidConfig(f"normalization={normalization!r} is not one of 'min', 'relevant'.")
    top = (lists.position <= k) & lists.hit
    user, position = lists.user[top], lists.position[top]
    hits_so_far = pd.Series(user).groupby(user).cumcount().to_numpy() + 1  # H_u(i) at each hit
    total = np.bincount(user, weights=hits_so_far / position, minlength=len(lists.n_relevant))
    return total / (np.minimum(k, lists.n_relevant) if normalization == "min" else lists.n_relevant)


def _ndcg(lists: _Lists, k: int) -> np.ndarray:
    top = (lists.position <= k) & lists.hit
    dcg = np.bincount(
        lists.user[top], weights=1.0 / np.log2(lists.position[top] + 1), minlength=len(lists.n_relevant)
    )
    ideal = np.minimum(k, lists.n_relevant)
    idcg = np.cumsum(1.0 / np.log2(np.arange(2, ideal.max() + 2)))[ideal - 1]
    return dcg / idcg


def _reciprocal_rank(lists: _Lists) -> np.ndarray:
    # Rows are sorted by (user, position): a user's first hit row is its first row in the hit subset.
    hit_users, first = np.unique(lists.user[lists.hit], return_index=True)
    reciprocal = np.zeros(len(lists.n_relevant))
    reciprocal[hit_users] = 1.0 / lists.position[lists.hit][first]
    return reciprocal


def _score_block(
    scores: np.ndarray, heldout: sp.sparray | sp.spmatrix, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Whether each row's top-k items (best first) are held out, and the held-out count of each row."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape != heldout.shape:
        raise InvalidConfig(
            f"scores has shape {scores.shape} but heldout {heldout.shape}: pass the held-out CSR block of "
            "the same users (rows) and items (columns) as the score block."
        )
    is_relevant = (heldout > 0).toarray()
    n_relevant = is_relevant.sum(axis=1)
    if (n_relevant == 0).any():
        raise EmptySplit(
            f"{int((n_relevant == 0).sum())} rows of heldout have no item, so their NDCG/recall is 0/0; "
            "evaluate only users with held-out items (split_strong_generalization keeps users with fewer "
            "than 5 interactions wholly in fold-in)."
        )
    top, _ = top_k_dense(scores, k)
    relevant = np.take_along_axis(is_relevant, np.maximum(top, 0), axis=1) & (top >= 0)
    return relevant, n_relevant


def target_ranks(scores: np.ndarray, target: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of each row's ``target`` column among all columns of ``scores``, or among itself
    and that row's ``candidates`` (sampled negatives, column indices), nothing excluded.

    Rank = 1 + the number of other columns scored at least as high (ties count against the target, so
    a model that scores everything alike ranks its target last, not first).
    """
    scores = np.asarray(scores)
    rows = np.arange(len(scores))
    target_score = scores[rows, target][:, None]
    if candidates is None:
        ahead = (scores >= target_score).sum(axis=1) - 1
    else:
        ahead = (np.take_along_axis(scores, candidates, axis=1) >= target_score).sum(axis=1)
    return (ahead + 1).astype(np.int64)


def ranks_to_metrics(
    ranks: np.ndarray, prefix: str = "", cutoffs: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Leave-one-out metrics of one held-out item per user at 1-based ``ranks`` r_u:

    HR@k = (1/|U|) Σ_u [r_u ≤ k],   NDCG@k = (1/|U|) Σ_u [r_u ≤ k] / log2(r_u + 1),   MRR = (1/|U|) Σ_u 1/r_u

    (one relevant item, so IDCG = 1). Names ``hr_at_k`` for every cutoff, ``ndcg_at_k`` for cutoffs > 1
    (NDCG@1 = HR@1) and ``mrr``, each with ``prefix`` (``sampled_`` for the sampled-negative protocol).
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0 or (ranks < 1).any():
        raise EmptySplit("ranks_to_metrics needs at least one rank, each ≥ 1 (1 = best).")
    values: dict[str, float] = {}
    for k in cutoffs:
        hit = ranks <= k
        values[f"{prefix}hr_at_{k}"] = float(hit.mean())
        if k > 1:
            values[f"{prefix}ndcg_at_{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1), 0.0).mean())
    values[f"{prefix}mrr"] = float((1.0 / ranks).mean())
    return values


def sample_negatives(popularity: np.ndarray, seen: sp.csr_matrix, n: int = 100, seed: int = 42) -> np.ndarray:
    """users × ``n`` distinct item indices per row of ``seen``, none of them seen by that user, drawn
    with probability proportional to ``popularity`` (Sun et al. 2019, Section 4.2; He et al. 2017 draw
    uniformly). The same arguments always give the same sample.

    Successive sampling: draws with replacement, repeats and seen items rejected, the first ``n``
    distinct kept in draw order; rows still short draw again.
    """
    popularity = np.asarray(popularity, dtype=np.float64)
    seen = sp.csr_matrix(seen)
    n_items = len(popularity)
    if (seen.getnnz(axis=1) + n > np.count_nonzero(popularity)).any():
        raise InvalidConfig(
            f"cannot sample {n} negatives: a user has seen too many of the {np.count_nonzero(popularity)} "
            "items with positive popularity; lower the number of negatives."
        )
    p = popularity / popularity.sum()
    cdf = np.cumsum(p)
    rng = np.random.default_rng(seed)
    out = np.full((seen.shape[0], n), -1, dtype=np.int64)
    for row in range(seen.shape[0]):
        taken = set(seen.indices[seen.indptr[row] : seen.indptr[row + 1]].tolist())
        filled = 0
        while filled < n:
            draws = np.minimum(
                np.searchsorted(cdf, rng.random(2 * (n - filled) + 8), side="right"), n_items - 1
            )
            for item in draws.tolist():
                if item not in taken:
                    taken.add(item)
                    out[row, filled] = item
                    filled += 1
                    if filled == n:
                        break
    return out
