"""Implicit-feedback matrix factorisation trained by negative sampling: Spotlight's ImplicitFactorizationModel.

Model (Koren, Bell & Volinsky, "Matrix factorization techniques for recommender systems", Computer 2009,
as in Spotlight's ``BilinearNet``): user u and item i have d-dimensional factors p_u, q_i and biases b_u, c_i,

    ŷ(u, i) = p_u · q_i + b_u + c_i,

factors drawn from N(0, (1/d)²) (Spotlight's ``ScaledEmbedding``), biases starting at 0 (``ZeroEmbedding``).

Training (Spotlight's ``ImplicitFactorizationModel.fit``): every row of train is a positive pair (u, i);
ratings are ignored and a repeated row counts each time. Each epoch shuffles the rows and cuts them into
minibatches of ``batch_size``. Every positive gets negatives j drawn uniformly from all items (a positive
may be drawn; Spotlight's ``sample_items``): one, or ``num_negatives`` for adaptive hinge. Each minibatch
takes one dense Adam step (Kingma & Ba, ICLR 2015; L2 as ``weight_decay=l2``) on the batch mean of

    pointwise        1 − σ(ŷ(u,i)) + σ(ŷ(u,j))
    bpr              1 − σ(ŷ(u,i) − ŷ(u,j))                  Rendle et al., UAI 2009 (Spotlight's form, no log)
    hinge            max(0, 1 − ŷ(u,i) + ŷ(u,j))
    adaptive_hinge   max(0, 1 − ŷ(u,i) + maxₙ ŷ(u,jₙ))       WARP-like, Weston et al., IJCAI 2011

and the epoch loss is the mean of its minibatch losses. Spotlight's default loss is ``pointwise``; ours,
as the issue asks, is ``bpr``.

Adaptive hinge compares each positive with the user's own n negatives, as ``spotlight.losses`` defines
it; Spotlight's ``_get_multiple_negative_predictions`` reshapes its (user, negative) scores so that a
positive meets negatives scored for neighbouring users of the batch, a bug not reproduced here.

Same algorithm, less work per step: the four tables are one tensor, rows [p_u | b_u] for users then
[q_i | c_i] for items, so a minibatch is one gather, its gradient (written out in
:func:`minibatch_gradient`) one ``index_add_``, and the Adam step one fused kernel. Each epoch builds one
index tensor on the device, (2 + n) × rows int64 (the shuffled users and positives, and negatives from
one ``torch.randint``), so nothing per row or per batch runs in Python beyond the step itself. With
α = ∂loss/∂ŷ(u,i) and β = ∂loss/∂ŷ(u,j) for a triple (u, i, j):

    ∂/∂[p_u | b_u] = α [q_i | 1] + β [q_j | 1],   ∂/∂[q_i | c_i] = α [p_u | 1],   ∂/∂[q_j | c_j] = β [p_u | 1];

adaptive hinge's gradient reaches only the highest-scored of the n negatives, as ``torch.max`` routes it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recmodels._columns import ITEM, USER, require_columns
from recmodels.base import IdIndex, interaction_matrix, recommendations_frame, require_fitted
from recmodels.errors import EmptySplit, GPUUnavailable, InvalidConfig, MissingExtra

try:
    import torch
    from torch.optim.adam import adam
except ImportError:  # the [torch] extra is optional: this module imports, the model refuses to start
    torch = None

Loss = Literal["pointwise", "bpr", "hinge", "adaptive_hinge"]
SCORE_BLOCK_ELEMENTS = 1 << 24  # users × items scores held at once by ``recommend`` (64 MiB in float32)


class BilinearNet(torch.nn.Module if torch is not None else object):
    """Spotlight's ``BilinearNet`` as one table ``weight``: rows [p_u | b_u] of users, then [q_i | c_i]."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_dim: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        weight = torch.zeros(n_users + n_items, embedding_dim + 1, device=device)
        weight[:, :-1].normal_(0.0, 1.0 / embedding_dim, generator=generator)
        self.weight = torch.nn.Parameter(weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """ŷ(u, i) for dense user and item positions (broadcast against each other)."""
        u, i = self.weight[users], self.weight[self.n_users + items]
        return (u[..., :-1] * i[..., :-1]).sum(-1) + u[..., -1] + i[..., -1]

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """ŷ(u, i) of the given dense user positions (rows) for every item (columns)."""
        u, items = self.weight[users], self.weight[self.n_users :]
        return torch.addmm(items[:, -1] + u[:, -1:], u[:, :-1], items[:, :-1].T)


def loss_and_gradients(
    loss: Loss, positive: torch.Tensor, negative: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch-mean ``loss`` of scores ŷ(u,i), ŷ(u,j) and its derivatives α, β with respect to each of them.

    For adaptive hinge, ``negative`` is already the highest negative score of each row.
    """
    n = positive.shape[0]
    if loss == "pointwise":
        sig_pos, sig_neg = torch.sigmoid(positive), torch.sigmoid(negative)
        return (1 - sig_pos + sig_neg).mean(), sig_pos * (sig_pos - 1) / n, sig_neg * (1 - sig_neg) / n
    if loss == "bpr":
        miss = torch.sigmoid(negative - positive)  # 1 − σ(ŷ(u,i) − ŷ(u,j))
        alpha = (miss - 1).mul_(miss).div_(n)
        return miss.mean(), alpha, -alpha
    margin = 1 - positive + negative  # hinge and adaptive hinge; torch.clamp passes the gradient at 0
    alpha = (margin >= 0).to(margin.dtype) / -n
    return margin.clamp(min=0).mean(), alpha, -alpha


def minibatch_gradient(
    weight: torch.Tensor,
    grad: torch.Tensor,
    index: torch.Tensor,
    loss: Loss,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Mean loss of one minibatch; its dense gradient with respect to the table ``weight`` goes to ``grad``.

    ``index`` holds rows of ``weight``, shape (2 + n) × B: the users, their positive items, then n rows of
    negative items (n > 1: adaptive hinge's max). ``compute_dtype`` (e.g. bfloat16) is the precision of
    the batch arithmetic; ``grad`` (``weight``'s shape and dtype) is overwritten.
    """
    flat = index.reshape(-1)
    rows = weight.index_select(0, flat).to(compute_dtype or weight.dtype).view(*index.shape, -1)
    ones = torch.nn.functional.pad(rows[..., :-1], (0, 1), value=1.0)  # [p_u | 1] and [q_i | 1]
    scores = (rows[1:] * ones[0]).sum(-1)  # ŷ − b_u, (1 + n) × B: b_u cancels in the pairwise losses
    if loss == "pointwise":
        scores += rows[0, :, -1]
    if len(scores) > 2:  # adaptive hinge: only the highest-scored negative counts, as torch.max routes it
        hardest = scores[1:].argmax(0, keepdim=True)
        scores = torch.cat([scores[:1], scores[1:].gather(0, hardest)])
        ones = torch.cat([ones[:2], ones[2:].gather(0, hardest[..., None].expand(-1, -1, ones.shape[-1]))])
        flat = torch.cat([index[:2], index[2:].gather(0, hardest)]).view(-1)
    value, alpha, beta = loss_and_gradients(loss, scores[0], scores[1])
    coef = torch.stack([alpha, beta])[..., None]  # ∂loss/∂ŷ of the (user, positive), (user, negative) pairs
    grad_rows = torch.cat([(coef * ones[1:]).sum(0, keepdim=True), coef * ones[0]])
    grad.zero_().index_add_(0, flat, grad_rows.view(len(flat), -1).to(grad.dtype))
    return value.to(grad.dtype)


@dataclass(eq=False)
class DenseAdam:
    """``torch.optim.Adam(weight_decay=...)`` on one tensor, through its fused functional form.

    The same update (Kingma & Ba, ICLR 2015, with L2 added to the gradient) as Spotlight's optimizer,
    without ``Optimizer.step``'s per-call bookkeeping, which costs more than the kernel at small batches.
    """

    weight: torch.Tensor
    learning_rate: float
    weight_decay: float = 0.0
    grad: torch.Tensor = field(init=False)
    exp_avg: torch.Tensor = field(init=False)
    exp_avg_sq: torch.Tensor = field(init=False)
    steps: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.grad, self.exp_avg, self.exp_avg_sq = (torch.zeros_like(self.weight) for _ in range(3))
        self.steps = torch.zeros((), device=self.weight.device)

    def step(self) -> None:
        """Update ``weight`` in place with the gradient in ``grad``."""
        with torch.no_grad():
            adam(
                [self.weight],
                [self.grad],
                [self.exp_avg],
                [self.exp_avg_sq],
                [],
                [self.steps],
                fused=True,
                amsgrad=False,
                beta1=0.9,
                beta2=0.999,
                lr=self.learning_rate,
                weight_decay=self.weight_decay,
                eps=1e-8,
                maximize=False,
            )


@dataclass(eq=False)
class ImplicitFactorization:
    """Spotlight's ImplicitFactorizationModel (module docstring) with its defaults, ``loss`` aside.

    ``device="auto"`` trains on CUDA when it is visible, else on the CPU; ``mixed_precision`` does the
    batch arithmetic in bfloat16 (float32 table and Adam state), meant for GPUs. After ``fit``:
    ``history_`` (one dict per epoch: epoch, loss, epoch_seconds, interactions_per_second) and
    ``module_`` (the trained :class:`BilinearNet`, e.g. for ``mlflow.pytorch.log_model``).
    """

    loss: Loss = "bpr"
    n_iter: int = 10
    embedding_dim: int = 32
    batch_size: int = 256
    learning_rate: float = 1e-2
    l2: float = 0.0
    num_negatives: int = 5
    device: str = "auto"
    seed: int | None = None
    mixed_precision: bool = False

    users_: IdIndex = field(init=False, repr=False)
    items_: IdIndex = field(init=False, repr=False)
    seen_: sp.csr_matrix = field(init=False, repr=False)
    module_: BilinearNet = field(init=False, repr=False)
    history_: list[dict[str, float]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if torch is None:
            raise MissingExtra("implicit_mf needs PyTorch: pip install -e '.[torch]'")
        if self.loss not in get_args(Loss):
            raise InvalidConfig(f"implicit_mf loss={self.loss!r} is unknown; choose from {get_args(Loss)}.")
        for name in ("n_iter", "embedding_dim", "batch_size", "num_negatives"):
            if getattr(self, name) < 1:
                raise InvalidConfig(f"implicit_mf {name}={getattr(self, name)} must be an integer >= 1.")
        if not self.learning_rate > 0:
            raise InvalidConfig(f"implicit_mf learning_rate={self.learning_rate} must be > 0 (Adam's step).")
        if not self.l2 >= 0:
            raise InvalidConfig(f"implicit_mf l2={self.l2} must be >= 0 (Adam's weight_decay).")
        resolve_device(self.device)

    def fit(self, train: pd.DataFrame) -> ImplicitFactorization:
        """Train from scratch on the (user_id, item_id) rows of ``train`` for ``n_iter`` epochs."""
        require_columns(train, (USER, ITEM), "implicit_mf train")
        if train.empty:
            raise EmptySplit("implicit_mf train has no rows; fit on a non-empty train split.")
        device = resolve_device(self.device)
        self.users_, self.items_ = IdIndex.from_values(train[USER]), IdIndex.from_values(train[ITEM])
        self.seen_ = interaction_matrix(train, self.users_, self.items_)
        n_users, n_items = len(self.users_), len(self.items_)
        users = torch.as_tensor(self.users_.positions(train[USER].to_numpy()), device=device)
        items = torch.as_tensor(self.items_.positions(train[ITEM].to_numpy()) + n_users, device=device)
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        self.module_ = BilinearNet(n_users, n_items, self.embedding_dim, generator, device)
        optimizer = DenseAdam(self.module_.weight, self.learning_rate, self.l2)
        self.history_ = []
        for epoch in range(1, self.n_iter + 1):
            start = time.perf_counter()
            loss = self._epoch(optimizer, users, items, generator)
            seconds = time.perf_counter() - start
            if not np.isfinite(loss):
                raise InvalidConfig(
                    f"implicit_mf training diverged: epoch {epoch} loss is {loss}; lower learning_rate "
                    f"(now {self.learning_rate})."
                )
            self.history_.append(
                {
                    "epoch": epoch,
                    "loss": loss,
                    "epoch_seconds": seconds,
                    "interactions_per_second": len(users) / seconds,
                }
            )
        return self

    def _epoch(
        self,
        optimizer: DenseAdam,
        users: torch.Tensor,
        items: torch.Tensor,
        generator: torch.Generator,
    ) -> float:
        """One shuffled pass over the rows; the mean of the minibatch losses (one device sync, at the end)."""
        weight = self.module_.weight
        n_users, n_items = self.module_.n_users, self.module_.n_items
        n_negatives = self.num_negatives if self.loss == "adaptive_hinge" else 1
        compute_dtype = torch.bfloat16 if self.mixed_precision else None
        device = users.device
        order = torch.randperm(len(users), generator=generator, device=device)
        negatives = torch.randint(
            n_users, n_users + n_items, (n_negatives, len(users)), generator=generator, device=device
        )
        index = torch.cat([users[order][None], items[order][None], negatives])  # (2 + n) × rows
        losses = []
        with torch.no_grad():
            for batch in index.split(self.batch_size, dim=1):
                losses.append(minibatch_gradient(weight, optimizer.grad, batch, self.loss, compute_dtype))
                optimizer.step()
        return torch.stack(losses).mean().item()

    def recommend(
        self, users: Iterable[int] | None = None, k: int = 10, exclude_seen: bool = True
    ) -> pd.DataFrame:
        """Top-``k`` items by ŷ for ``users`` (default: all of train's), scored and ranked on the device.

        Unknown users get no rows. Exact score ties keep ``torch.topk``'s order.
        """
        require_fitted(hasattr(self, "module_"), "ImplicitFactorization")
        if k < 1:
            raise InvalidConfig(f"k={k} must be >= 1 (the number of items to return per user).")
        user_ids = (
            self.users_.ids if users is None else pd.unique(np.asarray(list(users), self.users_.ids.dtype))
        )
        rows = self.users_.positions(user_ids)
        user_ids, rows = user_ids[rows >= 0], rows[rows >= 0]
        k = min(k, len(self.items_))
        device = self.module_.weight.device
        block = max(1, SCORE_BLOCK_ELEMENTS // len(self.items_))
        frames = []
        with torch.no_grad():
            for start in range(0, len(rows), block):
                block_rows = rows[start : start + block]
                scores = self.module_.score_all(torch.as_tensor(block_rows, device=device))
                if exclude_seen:
                    seen = self.seen_[block_rows].tocoo()
                    scores[
                        torch.as_tensor(seen.row, device=device), torch.as_tensor(seen.col, device=device)
                    ] = -torch.inf
                values, positions = torch.topk(scores, k, dim=1)
                values, positions = values.cpu().numpy(), positions.cpu().numpy()
                positions[np.isneginf(values)] = -1
                frames.append(
                    recommendations_frame(user_ids[start : start + block], positions, values, self.items_)
                )
        if not frames:
            return recommendations_frame(user_ids, np.empty((0, k), np.int64), np.empty((0, k)), self.items_)
        return pd.concat(frames, ignore_index=True)


def resolve_device(device: str) -> torch.device:
    """``"auto"``: CUDA when visible, else CPU; a CUDA device that is not visible raises GPUUnavailable."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InvalidConfig(
            f"implicit_mf device={device!r} is not a device; use 'auto', 'cpu' or 'cuda'."
        ) from None
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise GPUUnavailable(
            f"implicit_mf device={device!r} but {torch.cuda.device_count()} CUDA GPU(s) are visible; use "
            "device='auto' or 'cpu', or run on a GPU worker."
        )
    return resolved
