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

On the CPU (float32) an epoch runs as one compiled kernel, ``recmodels.implicit_mf_cpu``, that does the
steps below without per-operation dispatch; on a GPU (and with ``mixed_precision``) they run as tensor
operations. Both take the same sampled index, so a seed trains the same model on either, to rounding.

Same algorithm, less work per step (at batch 256 a step costs a few dozen small tensor operations, so
their number is the cost): the four tables are one tensor, rows [p_u | b_u] for users then [q_i | c_i] for
items, so a minibatch is one gather, its gradient (written out below) one ``index_add_``, and the Adam
step one fused kernel. Each epoch builds one index tensor, (2 + n) × rows int64 (the shuffled users and
positives, and negatives from one ``torch.randint``), cut into contiguous minibatches, so nothing per row
runs in Python. In the gathered copy the user's bias is overwritten by 1, so that one dot product of
[p_u | 1] with an item row gives p_u · q_i + c_i. For the pairwise losses (b_u cancels) with
x = ŷ(u,j) − ŷ(u,i) and γ = ∂loss/∂x:

    ∂/∂[p_u | b_u] = γ [q_j − q_i | 0],   ∂/∂[q_i | c_i] = −γ [p_u | 1],   ∂/∂[q_j | c_j] = γ [p_u | 1],

where adaptive hinge's j is the highest-scored of the n negatives (its gradient reaches only that one,
as ``torch.max`` routes it); for pointwise, with α = ∂loss/∂ŷ(u,i) and β = ∂loss/∂ŷ(u,j):

    ∂/∂[p_u | b_u] = α [q_i | 1] + β [q_j | 1],   ∂/∂[q_i | c_i] = α [p_u | 1],   ∂/∂[q_j | c_j] = β [p_u | 1].
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recmodels._columns import ITEM, USER, require_columns
from recmodels.base import IdIndex, interaction_matrix, recommendations_frame, require_fitted
from recmodels.checkpoint import STATE_FORMAT, EpochCallback, check_state
from recmodels.errors import EmptySplit, GPUUnavailable, InvalidConfig, MissingExtra
from recmodels.implicit_mf_cpu import BETA1, BETA2, EPS, CompiledEpochs

try:
    import torch
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
        factors = torch.empty(n_users + n_items, embedding_dim, device=device)
        factors.normal_(0.0, 1.0 / embedding_dim, generator=generator)
        self.weight = torch.nn.Parameter(torch.nn.functional.pad(factors, (0, 1)))  # biases 0

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """ŷ(u, i) for dense user and item positions (broadcast against each other)."""
        u, i = self.weight[users], self.weight[self.n_users + items]
        return (u[..., :-1] * i[..., :-1]).sum(-1) + u[..., -1] + i[..., -1]

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """ŷ(u, i) of the given dense user positions (rows) for every item (columns)."""
        u, items = self.weight[users], self.weight[self.n_users :]
        return torch.addmm(items[:, -1] + u[:, -1:], u[:, :-1], items[:, :-1].T)


def pairwise_loss(loss: Loss, difference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bpr, hinge or adaptive hinge loss of each x = ŷ(u,j) − ŷ(u,i) and γ = ∂(batch mean)/∂x."""
    scale = difference.new_full((), 1 / difference.shape[0])
    if loss == "bpr":
        miss = torch.sigmoid(difference)  # 1 − σ(ŷ(u,i) − ŷ(u,j))
        return miss, torch.ops.aten.sigmoid_backward(scale, miss)
    margin = difference + 1  # torch.clamp passes the gradient at 0
    return margin.clamp(min=0), scale.where(margin >= 0, 0)


def pointwise_loss(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pointwise loss of each column of ``scores`` [ŷ(u,i); ŷ(u,j)] (2 × B), and [α; β] of the batch mean."""
    sigmoid = torch.sigmoid(scores)
    positive, negative = sigmoid.unbind(0)
    derivative = torch.ops.aten.sigmoid_backward(sigmoid.new_full((), 1 / scores.shape[1]), sigmoid)
    derivative[0].neg_()  # the loss falls as ŷ(u,i) rises
    return (negative - positive).add_(1), derivative


def minibatch_gradient(
    weight: torch.Tensor,
    grad: torch.Tensor,
    index: torch.Tensor,
    loss: Loss,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Each positive's loss in one minibatch; the gradient of their mean by ``weight`` goes to ``grad``.

    ``index`` (contiguous) holds rows of ``weight``, shape (2 + n) × B: the users, their positive items,
    then n rows of negative items (n > 1: adaptive hinge's max). ``compute_dtype`` (e.g. bfloat16) is the
    precision of the batch arithmetic; ``grad`` (``weight``'s shape and dtype) is overwritten.
    """
    rows = torch.embedding(weight, index)  # (2 + n) × B × (d + 1), a copy
    if compute_dtype is not None:
        rows = rows.to(compute_dtype)
    if loss == "pointwise":
        losses, grad_rows, grad_index = _pointwise_rows(rows, index)
    else:
        losses, grad_rows, grad_index = _pairwise_rows(loss, weight, rows, index)
    if compute_dtype is not None:
        grad_rows = grad_rows.to(grad.dtype)
    grad.zero_().index_add_(0, grad_index.view(-1), grad_rows.flatten(0, 1))
    return losses


def _pairwise_rows(
    loss: Loss, weight: torch.Tensor, rows: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Losses, gradient rows and their table rows of a bpr, hinge or adaptive hinge minibatch."""
    user, positive, negative = rows[0], rows[1], rows[2]
    user.select(-1, -1).fill_(1)  # [p_u | 1]
    if rows.shape[0] > 3:  # adaptive hinge: the highest-scored negative of each positive
        scores = torch.linalg.vecdot(rows.narrow(0, 1, rows.shape[0] - 1), user)  # ŷ − b_u, (1 + n) × B
        highest, hardest = scores.narrow(0, 1, rows.shape[0] - 2).max(0)
        difference = highest.sub_(scores[0])
        hardest_items = index.narrow(0, 2, rows.shape[0] - 2).gather(0, hardest.unsqueeze(0)).squeeze(0)
        torch.sub(torch.embedding(weight, hardest_items), positive, out=negative)  # [q_j − q_i | c_j − c_i]
        grad_index = torch.stack([hardest_items, index[1], index[0]])
        rows = rows.narrow(0, 0, 3)
    else:
        difference = torch.linalg.vecdot(negative.sub_(positive), user)  # ŷ(u,j) − ŷ(u,i)
        grad_index = index.flip(0)
    losses, gamma = pairwise_loss(loss, difference)
    negative.select(-1, -1).fill_(0)  # [q_j − q_i | 0]
    torch.neg(user, out=positive)
    return losses, rows.mul_(gamma.unsqueeze(1)), grad_index  # rows of j, i, u


def _pointwise_rows(
    rows: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Losses, gradient rows and their table rows of a pointwise minibatch (``rows`` gathered, 3 × B)."""
    user = rows[0]
    items = rows.narrow(0, 1, 2)
    bias = user.select(-1, -1).clone()
    user.select(-1, -1).fill_(1)  # [p_u | 1]
    losses, derivative = pointwise_loss(torch.linalg.vecdot(items, user).add_(bias))
    items.select(-1, -1).fill_(1)  # [q_i | 1], [q_j | 1]
    coef = derivative.unsqueeze(2)
    user_grad = (coef * items).sum(0)
    torch.mul(coef, user, out=items)
    user.copy_(user_grad)
    return losses, rows, index


@dataclass(eq=False)
class DenseAdam:
    """``torch.optim.Adam(weight_decay=...)`` on one tensor, through the kernel of ``Adam(fused=True)``.

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
    _one: torch.Tensor = field(init=False, repr=False)
    _state: tuple[list[torch.Tensor], ...] = field(init=False, repr=False)
    _hyper: dict[str, float | bool] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.grad, self.exp_avg, self.exp_avg_sq = (torch.zeros_like(self.weight) for _ in range(3))
        self.steps = torch.zeros((), device=self.weight.device)
        self._one = torch.ones((), device=self.weight.device)  # ``steps += 1`` would wrap 1 at every step
        self._state = (
            [self.weight.detach()],
            [self.grad],
            [self.exp_avg],
            [self.exp_avg_sq],
            [],
            [self.steps],
        )
        self._hyper = {
            "lr": self.learning_rate,
            "beta1": BETA1,
            "beta2": BETA2,
            "weight_decay": self.weight_decay,
            "eps": EPS,
            "amsgrad": False,
            "maximize": False,
        }

    def step(self) -> None:
        """Update ``weight`` in place with the gradient in ``grad``."""
        self.steps.add_(self._one)
        torch._fused_adam_(*self._state, **self._hyper)


@dataclass(eq=False)
class ImplicitFactorization:
    """Spotlight's ImplicitFactorizationModel (module docstring) with its defaults, ``loss`` aside.

    ``device="auto"`` trains on CUDA when it is visible, else on the CPU (the compiled epoch);
    ``mixed_precision`` does the batch arithmetic in bfloat16 (float32 table and Adam state) with tensor
    operations, meant for GPUs. After ``fit``:
    ``history_`` (one dict per epoch: epoch, loss, epoch_seconds, interactions_per_second) and
    ``module_`` (the trained :class:`BilinearNet`, e.g. for ``mlflow.pytorch.log_model``).
    Checkpoints: ``fit``'s ``on_epoch_end`` and ``resume_from``, and :meth:`training_state`
    (:mod:`recmodels.checkpoint`).
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
    _generator: torch.Generator = field(init=False, repr=False)
    _optimizer: CompiledEpochs | DenseAdam = field(init=False, repr=False)

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

    def fit(
        self,
        train: pd.DataFrame,
        *,
        on_epoch_end: EpochCallback | None = None,
        resume_from: dict[str, Any] | None = None,
    ) -> ImplicitFactorization:
        """Train on the (user_id, item_id) rows of ``train`` for ``n_iter`` epochs: from scratch, or from
        ``resume_from`` (a :meth:`training_state`), calling ``on_epoch_end`` after each epoch
        (:mod:`recmodels.checkpoint`)."""
        require_columns(train, (USER, ITEM), "implicit_mf train")
        if train.empty:
            raise EmptySplit("implicit_mf train has no rows; fit on a non-empty train split.")
        device = resolve_device(self.device)
        users, self.users_ = _factorize(train[USER])
        items, self.items_ = _factorize(train[ITEM])
        self.seen_ = interaction_matrix(train, self.users_, self.items_)
        n_users, n_items = len(self.users_), len(self.items_)
        pairs = torch.as_tensor(np.stack([users, items + n_users]), device=device)  # table rows, 2 × rows
        self._generator = torch.Generator(device=device)
        if self.seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(self.seed)
        self.module_ = BilinearNet(n_users, n_items, self.embedding_dim, self._generator, device)
        self._optimizer = self._make_optimizer(device)
        self.history_ = []
        if resume_from is not None:
            self._load_state(resume_from)
        train_epoch = self._epoch_trainer()
        for epoch in range(len(self.history_) + 1, self.n_iter + 1):
            start = time.perf_counter()
            loss = mean_of_batch_means(
                train_epoch(self._epoch_index(pairs, self._generator)), self.batch_size
            )
            seconds = time.perf_counter() - start
            if not np.isfinite(loss):
                raise InvalidConfig(
                    f"implicit_mf training diverged: epoch {epoch} loss is {loss}; lower learning_rate "
                    f"(now {self.learning_rate})."
                )
            record = {
                "epoch": epoch,
                "loss": loss,
                "epoch_seconds": seconds,
                "interactions_per_second": len(train) / seconds,
            }
            self.history_.append(record)
            if on_epoch_end is not None:
                on_epoch_end(record)
        return self

    def training_state(self) -> dict[str, Any]:
        """A snapshot of the fit after its last finished epoch (:mod:`recmodels.checkpoint`): the table,
        Adam's moments and step count, the sampling generator's state and the history."""
        require_fitted(hasattr(self, "_optimizer"), "ImplicitFactorization")
        optimizer = self._optimizer
        compiled = isinstance(optimizer, CompiledEpochs)
        return {
            "format": STATE_FORMAT,
            "model": "implicit_mf",
            "n_users": self.module_.n_users,
            "n_items": self.module_.n_items,
            "params": self._state_params(),
            "epoch": len(self.history_),
            "history": [dict(record) for record in self.history_],
            "weight": self.module_.weight.detach().cpu().clone(),
            "exp_avg": torch.as_tensor(optimizer.exp_avg).cpu().clone(),
            # The compiled epoch keeps √v, the tensor path v (implicit_mf_cpu's docstring).
            "exp_avg_sq": None if compiled else optimizer.exp_avg_sq.cpu().clone(),
            "exp_avg_sqrt": torch.as_tensor(optimizer.exp_avg_sqrt).clone() if compiled else None,
            "steps": int(optimizer.steps),
            "generator": self._generator.get_state().clone(),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        check_state(
            state,
            "implicit_mf",
            n_users=self.module_.n_users,
            n_items=self.module_.n_items,
            params=self._state_params(),
        )
        optimizer = self._optimizer
        with torch.no_grad():
            self.module_.weight.copy_(state["weight"])
        if isinstance(optimizer, CompiledEpochs):
            sqrt = state["exp_avg_sqrt"] if state["exp_avg_sqrt"] is not None else state["exp_avg_sq"].sqrt()
            optimizer.exp_avg[:] = state["exp_avg"].numpy()
            optimizer.exp_avg_sqrt[:] = sqrt.numpy()
            optimizer.steps = state["steps"]
        else:
            square = (
                state["exp_avg_sq"] if state["exp_avg_sq"] is not None else state["exp_avg_sqrt"].square()
            )
            optimizer.exp_avg.copy_(state["exp_avg"])
            optimizer.exp_avg_sq.copy_(square)
            optimizer.steps.fill_(state["steps"])
        self._generator.set_state(state["generator"])
        self.history_ = [dict(record) for record in state["history"]]

    def _state_params(self) -> dict[str, Any]:
        """The parameters a checkpoint must share with the fit that resumes it (the device may differ)."""
        return {
            name: getattr(self, name)
            for name in (
                "loss",
                "n_iter",
                "embedding_dim",
                "batch_size",
                "learning_rate",
                "l2",
                "num_negatives",
                "mixed_precision",
            )
        }

    def _epoch_index(self, pairs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """An epoch's (2 + n) × rows table rows: the (user, item) ``pairs`` shuffled, then n negatives each."""
        n_users, n_items = self.module_.n_users, self.module_.n_items
        n_negatives = self.num_negatives if self.loss == "adaptive_hinge" else 1
        rows = pairs.shape[1]
        order = torch.randperm(rows, generator=generator, device=pairs.device)
        negatives = torch.randint(
            n_users, n_users + n_items, (n_negatives, rows), generator=generator, device=pairs.device
        )
        return torch.cat([pairs[:, order], negatives])

    def _make_optimizer(self, device: torch.device) -> CompiledEpochs | DenseAdam:
        """Adam on ``module_``'s table: on the CPU in float32 the compiled epoch of
        ``recmodels.implicit_mf_cpu``, else :class:`DenseAdam` for tensor operations."""
        weight = self.module_.weight
        if device.type == "cpu" and not self.mixed_precision:
            return CompiledEpochs(
                weight.detach().numpy(), self.loss, self.batch_size, self.learning_rate, self.l2
            )
        return DenseAdam(weight, self.learning_rate, self.l2)

    def _epoch_trainer(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function from an epoch's index to each positive's loss, training ``module_`` in place."""
        optimizer = self._optimizer
        if isinstance(optimizer, CompiledEpochs):
            return lambda index: torch.from_numpy(optimizer.epoch(index.numpy()))
        compute_dtype = torch.bfloat16 if self.mixed_precision else None

        def tensor_epoch(index: torch.Tensor) -> torch.Tensor:
            losses = []
            with torch.inference_mode():
                for batch in minibatches(index, self.batch_size):
                    losses.append(
                        minibatch_gradient(optimizer.weight, optimizer.grad, batch, self.loss, compute_dtype)
                    )
                    optimizer.step()
            return torch.cat(losses).float()

        return tensor_epoch

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


def minibatches(index: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The columns of ``index`` cut into consecutive contiguous blocks of ``size`` (the last one shorter)."""
    full = index.shape[1] // size * size
    blocks = index[:, :full].view(len(index), -1, size).transpose(0, 1).contiguous()
    return [*blocks, *([index[:, full:].contiguous()] if full < index.shape[1] else [])]


def mean_of_batch_means(losses: torch.Tensor, size: int) -> float:
    """The mean over minibatches of ``size`` consecutive ``losses`` (the last one shorter) of their mean."""
    full = len(losses) // size * size
    means = losses[:full].view(-1, size).mean(1)
    return torch.cat([means, losses[full:].mean()[None]] if full < len(losses) else [means]).mean().item()


def _factorize(values: pd.Series) -> tuple[np.ndarray, IdIndex]:
    """Dense positions of raw ids and their :class:`IdIndex`, by one hash pass instead of a sort."""
    positions, ids = pd.factorize(values.to_numpy(), sort=True)
    return positions, IdIndex(ids)
