"""What BERT4Rec and SASRec share: the transformer over item sequences, its chunked loss, training with
early stopping (in one process, or one of N torchrun ranks in ``dmp`` or ``ddp`` mode) and scoring.

Network (Sun et al., "BERT4Rec", CIKM 2019, Section 3; Kang & McAuley, "Self-Attentive Sequential
Recommendation", ICDM 2018, Section III). Items are coded 1..n (0 is padding, n + 1 BERT4Rec's [mask]).
A sequence of L codes v₁..v_L becomes

    h⁰_t = Dropout(LayerNorm(E[v_t] + P[t])),   h^l = TransformerBlock(h^{l−1}),   l = 1..layers,

with E the item table (a TorchRec ``EmbeddingCollection``, table ``item_embeddings``, feature ``item``,
so that ``dmp`` can shard it across ranks), P learned positions, and each block multi-head
self-attention and a position-wise feed-forward network of width 4d with residual connections, layer
normalisation and dropout (``nn.TransformerEncoderLayer``; GELU for BERT4Rec, ReLU with pre-norm for
SASRec as in the papers). A query may attend to key s unless s is padding; SASRec also forbids s > t
(causal). Item i's score at position t is

    ŷ_t(i) = h^L_t · W_i + b_i,

W a linear head (``output="linear"``, the seed's TorchRec example) or the item table itself
(``output="tied"``, W_i = E[i], the paper's). The loss is the softmax cross-entropy over all n items at
the training positions T (BERT4Rec: the masked ones; SASRec: every position with a next item):

    loss = (1/|T|) Σ_{t∈T} [ log Σ_{i=1..n} exp ŷ_t(i) − ŷ_t(v*_t) ].

:class:`ChunkedSoftmaxCrossEntropy` computes it and its gradient a block of items at a time, so at most
|T| × chunk logits exist at once (never batch × L × n): the forward keeps a running log-sum-exp, the
backward recomputes each block's logits and uses ∂loss/∂ŷ_t(i) = (softmax_t(i) − [i = v*_t]) / |T|.

Training: Adam (Kingma & Ba 2015) on windows of the train sequences (``recmodels.sequences``), shuffled
each epoch; after each epoch the validation NDCG@10 (full ranking of the validation item from the train
history, the train items excluded) is computed, and training stops after ``patience`` epochs without improvement, keeping the best
epoch's weights. In ``ddp`` mode every rank holds the whole model and gradients are averaged
(``DistributedDataParallel``); in ``dmp`` mode TorchRec's planner shards the item table across ranks
(``DistributedModelParallel``, row-wise by default) and trains it with its fused Adam (fbgemm's CPU
kernels have no fused Adam: on the CPU the sharded table uses fused Adagrad, learning rate
``cpu_table_lr``), combined with the dense Adam of the other parameters (``CombinedOptimizer``). Each rank reads its own share of the windows (``DistributedSampler``).
"""

from __future__ import annotations

import functools
import io
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from recmodels import metrics
from recmodels._columns import ITEM, USER, require_columns
from recmodels.base import IdIndex, recommendations_frame, require_fitted, top_k_dense
from recmodels.checkpoint import STATE_FORMAT, EpochCallback, check_state, dumps, loads
from recmodels.errors import EmptySplit, GPUUnavailable, InvalidConfig, MissingExtra
from recmodels.sequences import UserSequences, append_items, sliding_windows, user_sequences

try:
    import torch
    from torch import nn
except ImportError:  # the torch extra is optional: the module imports, the model refuses to start
    torch = None
    nn = None

Mode = Literal["local", "ddp", "dmp"]
Precision = Literal["fp32", "bf16", "fp16"]
INSTALL = "bash deployments/install_torchrec_extra.sh"
TABLE = "item_embeddings"  # not "items": that would shadow nn.ModuleDict.items in TorchRec's sharder
FEATURE = "item"
LOSS_BLOCK_ELEMENTS = 1 << 23  # rows × items logits held at once by the chunked loss (32 MiB in float32)
SCORE_BLOCK_ELEMENTS = 1 << 24  # users × items scores held at once when ranking


@dataclass
class SequentialConfig:
    """Hyper-parameters shared by BERT4Rec and SASRec (defaults: the RecBole protocol of issue 16)."""

    max_len: int = 50
    emb_dim: int = 64
    heads: int = 2
    layers: int = 2
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 100
    patience: int = 5
    window_step: int | None = None  # default max_len // 2
    output: Literal["linear", "tied"] = "linear"
    mode: Mode = "local"
    nproc: int = 1
    sharding_type: Literal["row_wise", "table_wise", "column_wise"] = "row_wise"
    cpu_table_lr: float = 0.05  # dmp on CPU: fbgemm's fused Adagrad for the sharded table (no fused CPU Adam)
    precision: Precision = "fp32"
    device: str = "auto"
    eval_negatives: int = 100
    steps_per_epoch: int | None = (
        None  # cap on optimizer steps per epoch (throughput runs); None: all windows
    )
    seed: int = 42

    def validate(self) -> None:
        if self.max_len < 2:
            raise InvalidConfig(
                f"max_len={self.max_len} is below 2: a sequence model needs max_len ≥ 2, e.g. 50."
            )
        if self.mode not in ("local", "ddp", "dmp"):
            raise InvalidConfig(f"unknown mode {self.mode!r}: use 'local' (one process), 'ddp' or 'dmp'.")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise InvalidConfig(f"unknown precision {self.precision!r}: use 'fp32', 'bf16' or 'fp16'.")
        if self.output not in ("linear", "tied"):
            raise InvalidConfig(f"unknown output {self.output!r}: use 'linear' or 'tied'.")
        if self.nproc < 1:
            raise InvalidConfig(f"nproc={self.nproc} must be ≥ 1.")
        if self.mode == "local" and self.nproc > 1:
            raise InvalidConfig(
                f"nproc={self.nproc} needs mode='ddp' or mode='dmp' (mode 'local' is one process)."
            )
        if self.mode == "dmp" and self.output == "tied":
            raise InvalidConfig(
                "output='tied' needs the whole item table on every rank: use mode='ddp' or output='linear'."
            )
        if self.emb_dim % self.heads:
            raise InvalidConfig(
                f"emb_dim={self.emb_dim} is not divisible by heads={self.heads}; e.g. emb_dim=64, heads=2."
            )
        for name in ("emb_dim", "heads", "layers", "batch_size", "epochs", "patience"):
            if getattr(self, name) < 1:
                raise InvalidConfig(f"{name}={getattr(self, name)} must be ≥ 1.")
        if not 0 <= self.dropout < 1:
            raise InvalidConfig(f"dropout={self.dropout} must be in [0, 1).")


def require_torchrec(model: str) -> None:
    """MissingExtra naming the install script when torch or TorchRec is not importable."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
    except (ImportError, OSError) as exc:
        raise MissingExtra(f"{model} needs the 'torchrec' extra ({exc}): {INSTALL}") from exc


class ChunkedSoftmaxCrossEntropy(torch.autograd.Function if torch is not None else object):
    """Mean softmax cross-entropy of ``hidden @ weight.T + bias`` against ``target``, items in blocks."""

    @staticmethod
    def forward(ctx: Any, hidden: Any, weight: Any, bias: Any, target: Any, chunk: int) -> Any:
        rows, acc = hidden.shape[0], torch.promote_types(hidden.dtype, torch.float32)
        lse = torch.full((rows,), -math.inf, device=hidden.device, dtype=acc)
        w = weight.to(hidden.dtype)
        for start in range(0, weight.shape[0], chunk):
            logits = (hidden @ w[start : start + chunk].T).to(acc) + bias[start : start + chunk].to(acc)
            lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
        picked = (hidden.to(acc) * weight[target].to(acc)).sum(dim=1) + bias[target].to(acc)
        ctx.save_for_backward(hidden, weight, bias, target, lse)
        ctx.chunk = chunk
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx: Any, grad_output: Any) -> tuple[Any, ...]:
        hidden, weight, bias, target, lse = ctx.saved_tensors
        rows, chunk = hidden.shape[0], ctx.chunk
        acc = torch.promote_types(hidden.dtype, torch.float32)
        scale = grad_output.to(acc) / rows
        w = weight.to(hidden.dtype)
        grad_hidden = torch.zeros(hidden.shape, device=hidden.device, dtype=acc)
        grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=acc)
        grad_bias = torch.zeros(bias.shape, device=bias.device, dtype=acc)
        for start in range(0, weight.shape[0], chunk):
            block = w[start : start + chunk]
            logits = (hidden @ block.T).to(acc) + bias[start : start + chunk].to(acc)
            g = torch.exp(logits - lse[:, None]) * scale  # softmax / |T|
            inside = (target >= start) & (target < start + block.shape[0])
            g[inside.nonzero().squeeze(1), target[inside] - start] -= scale
            grad_hidden += (g.to(hidden.dtype) @ block).to(acc)
            grad_weight[start : start + block.shape[0]] = (g.T.to(hidden.dtype) @ hidden).to(acc)
            grad_bias[start : start + block.shape[0]] = g.sum(dim=0)
        return (
            grad_hidden.to(hidden.dtype),
            grad_weight.to(weight.dtype),
            grad_bias.to(bias.dtype),
            None,
            None,
        )


def chunked_cross_entropy(hidden: Any, weight: Any, bias: Any, target: Any, chunk: int | None = None) -> Any:
    """Mean over rows of −log softmax(hidden @ weight.T + bias)[target], ``chunk`` items at a time.

    ``hidden``: rows × d, ``weight``: n × d, ``bias``: n, ``target``: rows (0..n−1). Equal to
    ``F.cross_entropy(hidden @ weight.T + bias, target)`` (see the module docstring).
    """
    if chunk is None:
        chunk = max(1, LOSS_BLOCK_ELEMENTS // max(1, hidden.shape[0]))
    return ChunkedSoftmaxCrossEntropy.apply(hidden, weight, bias, target, chunk)


class SequenceTransformer(nn.Module if nn is not None else object):
    """Item table (TorchRec EmbeddingCollection) + positions + transformer blocks + output layer."""

    def __init__(
        self, n_items: int, config: SequentialConfig, causal: bool, activation: str, norm_first: bool
    ) -> None:
        super().__init__()
        from torchrec import EmbeddingCollection, EmbeddingConfig

        self.n_items, self.causal, self.heads = n_items, causal, config.heads
        d = config.emb_dim
        std = 0.02  # BERT's truncated-normal initialiser range

        self.item_embedding = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name=TABLE,
                    embedding_dim=d,
                    num_embeddings=n_items + 2,
                    feature_names=[FEATURE],
                    init_fn=functools.partial(nn.init.trunc_normal_, std=std, a=-2 * std, b=2 * std),
                )
            ],
            device=torch.device("cpu"),
        )
        self.position = nn.Embedding(config.max_len, d)
        nn.init.trunc_normal_(self.position.weight, std=std, a=-2 * std, b=2 * std)
        self.norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(config.dropout)
        block = nn.TransformerEncoderLayer(
            d,
            config.heads,
            dim_feedforward=4 * d,
            dropout=config.dropout,
            activation=activation,
            batch_first=True,
            norm_first=norm_first,
        )
        self.blocks = nn.TransformerEncoder(
            block, config.layers, norm=nn.LayerNorm(d) if norm_first else None, enable_nested_tensor=False
        )
        self.tied = config.output == "tied"
        self.head = None if self.tied else nn.Linear(d, n_items)
        self.head_bias = nn.Parameter(torch.zeros(n_items)) if self.tied else None

    def output_layer(self) -> tuple[Any, Any]:
        """(W, b) of the scores ŷ = h · W_i + b_i, rows in item-code order 1..n."""
        if self.tied:
            weight = self.item_embedding.embeddings[TABLE].weight[1 : self.n_items + 1]
            return weight, self.head_bias
        return self.head.weight, self.head.bias

    def encode(self, codes: Any) -> Any:
        """batch × L item codes → batch × L × d hidden states h^L."""
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        batch, length = codes.shape
        features = KeyedJaggedTensor.from_lengths_sync(
            keys=[FEATURE],
            values=codes.reshape(-1),
            lengths=torch.full((batch,), length, dtype=torch.int32, device=codes.device),
        )
        items = self.item_embedding(features)[FEATURE].values().view(batch, length, -1)
        positions = self.position.weight[:length].unsqueeze(0)
        x = self.dropout(self.norm(items + positions))
        return self.blocks(x, mask=self.attention_mask(codes))

    def attention_mask(self, codes: Any) -> Any:
        """(batch·heads) × L × L, True where a query may not attend: padding keys (and later keys if
        causal); each query may always attend to itself, so that no row is wholly masked."""
        length = codes.shape[1]
        blocked = (codes == 0)[:, None, :].expand(-1, length, -1)
        if self.causal:
            later = torch.ones(length, length, dtype=torch.bool, device=codes.device).triu(1)
            blocked = blocked | later
        blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=codes.device)
        return blocked.repeat_interleave(self.heads, dim=0)

    def forward(self, codes: Any, where: Any, target: Any) -> Any:
        """Training loss: cross-entropy of the scores at positions ``where`` (bool, batch × L) against
        the item codes ``target`` there."""
        hidden = self.encode(codes)[where]
        weight, bias = self.output_layer()
        return chunked_cross_entropy(hidden, weight, bias, target - 1)

    def last_scores(self, codes: Any) -> Any:
        """batch × n scores of every item at the last position."""
        hidden = self.encode(codes)[:, -1]
        weight, bias = self.output_layer()
        return (hidden @ weight.to(hidden.dtype).T).float() + bias.float()


@dataclass
class _Distributed:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> _Distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()


class SequentialRecommender:
    """fit / recommend / evaluate_leave_one_out for a :class:`SequenceTransformer` (subclasses define
    the training batches and the inference input)."""

    name = "sequential"
    causal = False
    activation = "gelu"
    norm_first = False

    def __init__(self, **params: Any) -> None:
        self.config = SequentialConfig(**params)
        self.config.validate()
        require_torchrec(self.name)
        self.history_: list[dict[str, float]] = []
        self.best_epoch_: int | None = None
        self.module_: Any = None
        self._fitted = False

    def params(self) -> dict[str, Any]:
        return asdict(self.config)

    # ----------------------------------------------------------------------------------------- data
    def _sequences(self, train: pd.DataFrame) -> UserSequences:
        require_columns(train, (USER, ITEM, "timestamp"), "train")
        if train.empty:
            raise EmptySplit(f"{self.name}.fit got an empty train set; check the split.")
        sequences = user_sequences(train)
        short = int((sequences.lengths < 1).sum())
        if short:
            raise EmptySplit(f"{short} users have no train item; use the leave_one_out split on k-core data.")
        return sequences.map_items(self.items_.positions(sequences.items) + 1)

    def _check_users(self, train: pd.DataFrame, validation: pd.DataFrame | None) -> None:
        """With a validation item, every user needs ≥ 1 train item: 3 interactions with the test item."""
        if validation is None:
            return
        counts = train[USER].value_counts().add(validation[USER].value_counts(), fill_value=0)
        light = counts[counts < 2]
        if len(light):
            raise EmptySplit(
                f"{len(light)} users have fewer than 3 interactions (e.g. user {light.index[0]}: "
                f"{int(light.iloc[0])} in train and validation); {self.name} needs train, validation and "
                "test items per user: filter to at least 3 interactions per user (k-core 5) before the "
                "leave_one_out split."
            )

    # --------------------------------------------------------------------------------------- device
    def _device(self) -> Any:
        requested = self.config.device
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        if requested.startswith("cuda"):
            if not torch.cuda.is_available():
                raise GPUUnavailable(
                    f"device={self.config.device!r} but no CUDA GPU is visible; use device='cpu'."
                )
            if self.config.mode != "local" and requested == "cuda":
                requested = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        device = torch.device(requested)
        if self.config.precision == "fp16" and device.type != "cuda":
            raise InvalidConfig("precision='fp16' needs CUDA; on the CPU use precision='bf16' or 'fp32'.")
        if self.config.precision == "fp16" and self.config.mode == "dmp":
            raise InvalidConfig(
                "precision='fp16' is not supported with mode='dmp' (fused optimizer); use 'bf16'."
            )
        return device

    def _autocast(self) -> Any:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)
        return torch.autocast(self.device_.type, dtype=dtype, enabled=dtype is not None)

    # -------------------------------------------------------------------------------------- training
    def training_batch(self, windows: Any, generator: Any) -> tuple[Any, Any, Any]:
        """(input codes, bool positions, target codes) of a batch of windows; defined by subclasses."""
        raise NotImplementedError

    def inference_input(self, sequences: UserSequences) -> np.ndarray:
        """users × max_len codes whose last position's scores rank the next item; defined by subclasses."""
        raise NotImplementedError

    def window_length(self) -> int:
        return self.config.max_len

    def fit(
        self,
        train: pd.DataFrame,
        validation: pd.DataFrame | None = None,
        *,
        on_epoch_end: EpochCallback | None = None,
        resume_from: dict[str, Any] | None = None,
        checkpoint_dir: str | Path | None = None,
    ) -> SequentialRecommender:
        """Train on ``train`` (early stopping on ``validation``'s NDCG@10 when given); in ``ddp``/``dmp``
        mode this is one rank of an initialised process group (``tasks.launcher`` starts them).

        Keeps the checkpoint contract (:mod:`recmodels.checkpoint`): ``on_epoch_end`` receives each
        epoch's record (epoch, loss, epoch_seconds, records_per_second, validation_ndcg_at_10) and may
        call :meth:`training_state`; ``resume_from`` (such a state) continues the fit after its epoch,
        equal to an uninterrupted fit on the CPU. ``checkpoint_dir`` (the torchrun workers' way) writes
        each rank's state there after each epoch, and a later ``fit`` with the same folder resumes it.
        """
        require_torchrec(self.name)
        cfg = self.config
        self.dist_ = _Distributed.current()
        if cfg.mode != "local" and self.dist_.world_size == 1 and not _dist_initialized():
            raise InvalidConfig(
                f"mode={cfg.mode!r} runs as torchrun ranks: start it through tasks.launcher "
                "(the flow does this), or use mode='local'."
            )
        require_columns(train, (USER, ITEM), "train")
        self._check_users(train, validation)
        self.device_ = self._device()
        self.items_ = IdIndex.from_values(train[ITEM])
        self.train_sequences_ = self._sequences(train)
        self.popularity_ = np.bincount(
            self.items_.positions(train[ITEM].to_numpy()), minlength=len(self.items_)
        )
        self.history_sequences_ = self.train_sequences_
        val_users = val_targets = None
        if validation is not None and len(validation):
            known = self.items_.positions(validation[ITEM].to_numpy()) + 1
            val_users, val_targets = validation[USER].to_numpy(), known
            self.history_sequences_ = append_items(self.train_sequences_, val_users, known)

        torch.manual_seed(cfg.seed)
        network = SequenceTransformer(len(self.items_), cfg, self.causal, self.activation, self.norm_first)
        self.module_, self.wrapped_, self._optimizer = self._distribute(network)
        windows = torch.from_numpy(
            sliding_windows(self.train_sequences_, self.window_length(), cfg.window_step)
        )
        self._scaler = torch.amp.GradScaler(enabled=cfg.precision == "fp16")
        self._selection = {"best": -1.0, "best_epoch": None, "since_best": 0}
        self._best_weights: bytes | None = None
        self.history_ = []
        checkpoint = _checkpoint_path(checkpoint_dir, self.dist_.rank)
        if resume_from is None and checkpoint is not None and checkpoint.exists():
            resume_from = loads(checkpoint.read_bytes())
        if resume_from is not None:
            self._load_state(resume_from)
        for epoch in range(len(self.history_) + 1, cfg.epochs + 1):
            if self._selection["since_best"] >= cfg.patience:
                break
            record = self._train_epoch(windows, self._optimizer, self._scaler, epoch)
            if val_users is not None:
                ranks = self._target_ranks(self.train_sequences_, val_users, val_targets)
                score = metrics.ranks_to_metrics(ranks)["ndcg_at_10"]
                record["validation_ndcg_at_10"] = score
                if score > self._selection["best"]:
                    self._selection.update(best=score, best_epoch=epoch, since_best=0)
                    self._best_weights = _state_bytes(self.wrapped_.state_dict())
                else:
                    self._selection["since_best"] += 1
            self.history_.append(record)
            if checkpoint is not None:
                _write_atomic(dumps(self.training_state()), checkpoint)
            if on_epoch_end is not None:
                on_epoch_end(record)
        if self._best_weights is not None:
            self.wrapped_.load_state_dict(_state_from_bytes(self._best_weights))
        self.best_epoch_ = self._selection["best_epoch"]
        self._fitted = True
        return self

    def training_state(self) -> dict[str, Any]:
        """A snapshot after the last finished epoch (:mod:`recmodels.checkpoint`): this rank's weights
        (its shard of the item table under ``dmp``) and optimizer state, the global torch generator
        (dropout), the history and early stopping's bookkeeping with the best epoch's weights."""
        return {
            "format": STATE_FORMAT,
            "model": self.name,
            "n_items": len(self.items_),
            "n_users": len(self.train_sequences_),
            "params": self._state_params(),
            "epoch": len(self.history_),
            "history": [dict(record) for record in self.history_],
            "weights": _state_bytes(
                {"model": self.wrapped_.state_dict(), "optimizer": self._optimizer.state_dict()}
            ),
            "selection": dict(self._selection),
            "best_weights": self._best_weights,
            "torch_rng": torch.get_rng_state(),
        }

    def _state_params(self) -> dict[str, Any]:
        """The parameters a resumed fit must share with the state's (all but epochs and patience)."""
        return {k: v for k, v in self.params().items() if k not in ("epochs", "patience")}

    def _load_state(self, state: dict[str, Any]) -> None:
        check_state(
            state,
            self.name,
            n_items=len(self.items_),
            n_users=len(self.train_sequences_),
            params=self._state_params(),
        )
        saved = _state_from_bytes(state["weights"])
        self.wrapped_.load_state_dict(saved["model"])
        self._optimizer.load_state_dict(saved["optimizer"])
        self._selection = dict(state["selection"])
        self._best_weights = state["best_weights"]
        self.history_ = [dict(record) for record in state["history"]]
        torch.set_rng_state(state["torch_rng"])

    def _distribute(self, network: Any) -> tuple[Any, Any, Any]:
        """(unwrapped module, module to call, optimizer) for the mode."""
        cfg = self.config
        if cfg.mode == "dmp":
            return self._model_parallel(network)
        network = network.to(self.device_)
        dense = torch.optim.Adam(network.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device_.index] if self.device_.type == "cuda" else None
            wrapped = DistributedDataParallel(network, device_ids=ids)
            return network, wrapped, dense
        return network, network, dense

    def _model_parallel(self, network: Any) -> tuple[Any, Any, Any]:
        """TorchRec DMP: the planner shards the item table (``sharding_type``), trained by fbgemm's fused
        Adam; the dense parameters (replicated, gradients all-reduced) by torch's Adam."""
        import torch.distributed as dist
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from torchrec.distributed.embedding import EmbeddingCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
        from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
        from torchrec.optim.optimizers import in_backward_optimizer_filter

        cfg = self.config
        if self.device_.type == "cuda":
            fused = {"optimizer": EmbOptimType.ADAM, "learning_rate": cfg.lr, "eps": 1e-8}
            fused |= {"beta1": 0.9, "beta2": 0.999, "weight_decay": cfg.weight_decay}
        else:  # fbgemm's CPU kernels have no fused Adam: Adagrad, per coordinate as Adam
            fused = {"optimizer": EmbOptimType.EXACT_ADAGRAD, "learning_rate": cfg.cpu_table_lr, "eps": 1e-8}
        sharder = EmbeddingCollectionSharder(fused_params=fused)
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=self.dist_.world_size, compute_device=self.device_.type),
            constraints={
                TABLE: ParameterConstraints(sharding_types=[cfg.sharding_type], compute_kernels=["fused"])
            },
        )
        plan = planner.collective_plan(network, [sharder], dist.GroupMember.WORLD)
        wrapped = DistributedModelParallel(network, device=self.device_, plan=plan, sharders=[sharder])
        dense = KeyedOptimizerWrapper(
            dict(in_backward_optimizer_filter(wrapped.named_parameters())),
            lambda params: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
        )
        return wrapped.module, wrapped, CombinedOptimizer([wrapped.fused_optimizer, dense])

    def _train_epoch(self, windows: Any, optimizer: Any, scaler: Any, epoch: int) -> dict[str, float]:
        cfg, world = self.config, self.dist_
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(len(windows), generator=generator)
        per_rank = -(-len(windows) // world.world_size)  # DistributedSampler's split: padded, equal shares
        order = torch.cat([order, order[: per_rank * world.world_size - len(order)]])
        mine = order[world.rank :: world.world_size]
        if cfg.steps_per_epoch is not None:
            per_rank = min(per_rank, cfg.steps_per_epoch * cfg.batch_size)
        self.wrapped_.train()
        start, total, steps = time.perf_counter(), 0.0, 0
        for first in range(0, per_rank, cfg.batch_size):
            codes, where, target = self.training_batch(
                windows[mine[first : first + cfg.batch_size]], generator
            )
            codes, where, target = codes.to(self.device_), where.to(self.device_), target.to(self.device_)
            optimizer.zero_grad()
            with self._autocast():
                loss = self.wrapped_(codes, where, target[where])
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach())
            steps += 1
        seconds = time.perf_counter() - start
        loss_mean = _all_mean(total / max(steps, 1), world)
        return {
            "epoch": epoch,
            "loss": loss_mean,
            "epoch_seconds": seconds,
            "records_per_second": per_rank * world.world_size / max(seconds, 1e-9),
        }

    def item_table_rows(self) -> tuple[int, int]:
        """(rows of the item table held by this process, rows of the whole table): under ``dmp`` each
        rank holds only its shard."""
        for key, value in self.wrapped_.state_dict().items():
            if key.endswith(f"{TABLE}.weight"):
                if hasattr(value, "local_shards"):  # a TorchRec ShardedTensor
                    local = sum(shard.tensor.shape[0] for shard in value.local_shards())
                    return local, int(value.size(0))
                return int(value.shape[0]), int(value.shape[0])
        raise KeyError(f"no {TABLE} in the model's state")

    # ---------------------------------------------------------------------------------------- scoring
    def _score_blocks(self, inputs: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row positions, rows × n scores) of this rank's share of ``inputs`` (all ranks run the same
        number of forward passes, as DMP's collectives need)."""
        world = self.dist_
        n_rows = len(inputs)
        share = -(-n_rows // world.world_size)
        mine = np.arange(world.rank * share, min(n_rows, (world.rank + 1) * share))
        block = max(1, min(self.config.batch_size * 4, SCORE_BLOCK_ELEMENTS // max(1, len(self.items_))))
        self.wrapped_.eval()
        with torch.no_grad(), self._autocast():
            for first in range(0, share, block):
                rows = mine[first : first + block]
                batch = inputs[rows] if len(rows) else inputs[:1]
                scores = (
                    self.module_.last_scores(torch.from_numpy(batch).to(self.device_)).float().cpu().numpy()
                )
                if len(rows):
                    yield rows, scores

    def _inputs_for(self, sequences: UserSequences, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inference input rows of ``users`` (raw ids) and whether each is known."""
        position = pd.Index(sequences.users).get_indexer(np.asarray(users))
        known = position >= 0
        inputs = self.inference_input(sequences)
        return inputs[np.where(known, position, 0)], known

    def _target_ranks(
        self,
        sequences: UserSequences,
        users: np.ndarray,
        targets: np.ndarray,
        negatives: np.ndarray | None = None,
        exclude_history: bool = True,
    ) -> np.ndarray:
        """Rank (1 = best) of each user's target code among all items except the user's history items
        (``sequences``; the target itself is never excluded; all items with ``exclude_history=False``),
        or among the target and its row of ``negatives`` (codes); gathered over ranks; users unknown or
        targets unseen in train rank last."""
        inputs, known = self._inputs_for(sequences, users)
        position = pd.Index(sequences.users).get_indexer(np.asarray(users))
        ranks = np.full(len(users), len(self.items_) + 1, dtype=np.int64)
        for rows, scores in self._score_blocks(inputs):
            target = targets[rows] - 1
            valid = known[rows] & (target >= 0)
            target = np.maximum(target, 0)
            if negatives is None and exclude_history:
                _exclude_history(scores, sequences, position[rows], target)
            if negatives is None:
                got = metrics.target_ranks(scores, target)
            else:
                got = metrics.target_ranks(scores, target, candidates=negatives[rows] - 1)
            ranks[rows] = np.where(valid, got, ranks[rows])
        return _gather_min(ranks, self.dist_)

    def evaluate_leave_one_out(self, test: pd.DataFrame) -> dict[str, float]:
        """Metrics of the test item's rank after the user's train history + validation item, three ways.

        Full ranking (names ``hr_at_10``, ``ndcg_at_10``, ``mrr``, ...): among all n items except the
        user's history (train items and validation item; the test item itself is never excluded, even
        where it repeats a history item), as ``recommend(exclude_seen=True)``'s lists. Full ranking with
        nothing excluded (prefix ``unfiltered_``): RecBole's full sort of sequential models. Sampled
        (prefix ``sampled_``; Sun et al. 2019, Section 4.2): among itself and ``eval_negatives`` items the
        user never interacted with, drawn by train popularity with ``seed``.
        """
        require_fitted(self._fitted, self.name)
        require_columns(test, (USER, ITEM), "test")
        users = test[USER].to_numpy()
        targets = self.items_.positions(test[ITEM].to_numpy()) + 1
        full = self._target_ranks(self.history_sequences_, users, targets)
        seen = self._seen_matrix(users, targets)
        negatives = (
            metrics.sample_negatives(self.popularity_, seen, self.config.eval_negatives, self.config.seed) + 1
        )
        sampled = self._target_ranks(self.history_sequences_, users, targets, negatives)
        unfiltered = self._target_ranks(self.history_sequences_, users, targets, exclude_history=False)
        return (
            metrics.ranks_to_metrics(full)
            | metrics.ranks_to_metrics(sampled, prefix="sampled_")
            | metrics.ranks_to_metrics(unfiltered, prefix="unfiltered_")
        )

    def _seen_matrix(self, users: np.ndarray, targets: np.ndarray) -> Any:
        """users × items CSR of each test user's history and test item (excluded from negatives)."""
        import scipy.sparse as sp

        position = pd.Index(self.history_sequences_.users).get_indexer(users)
        lengths = np.where(position >= 0, self.history_sequences_.lengths[np.maximum(position, 0)], 0)
        starts = self.history_sequences_.offsets[np.maximum(position, 0)]
        flat = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(lengths.sum())
        rows = np.r_[np.repeat(np.arange(len(users)), lengths), np.flatnonzero(targets > 0)]
        cols = np.r_[self.history_sequences_.items[flat] - 1, targets[targets > 0] - 1]
        matrix = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(users), len(self.items_)))
        matrix.sum_duplicates()
        return matrix

    def recommend(
        self, users: Iterable[int] | None = None, k: int = 10, exclude_seen: bool = True
    ) -> pd.DataFrame:
        """Top-``k`` items after each user's history (train + validation item); a collective in ddp/dmp."""
        require_fitted(self._fitted, self.name)
        sequences = self.history_sequences_
        user_ids = sequences.users if users is None else np.asarray(list(users))
        inputs, known = self._inputs_for(sequences, user_ids)
        top = np.full((len(user_ids), min(k, len(self.items_))), -1, dtype=np.int64)
        values = np.zeros(top.shape, dtype=np.float32)
        position = pd.Index(sequences.users).get_indexer(user_ids)
        for rows, scores in self._score_blocks(inputs):
            if exclude_seen:
                for row_in_block, row in enumerate(rows):
                    if known[row]:
                        scores[row_in_block, sequences.sequence(position[row]) - 1] = -np.inf
            top[rows], values[rows] = top_k_dense(scores, k)
        top, values = _gather_rows(top, values, self.dist_)
        keep = known
        return recommendations_frame(user_ids[keep], top[keep], values[keep], self.items_)


def _exclude_history(
    scores: np.ndarray, sequences: UserSequences, position: np.ndarray, target: np.ndarray
) -> None:
    """Set each row's history items (codes of ``sequences`` at ``position``; −1: unknown user) to −inf
    in place, except the row's ``target`` column, which is never excluded."""
    for row, (where, keep) in enumerate(zip(position, target, strict=True)):
        if where >= 0:
            kept = scores[row, keep]
            scores[row, sequences.sequence(where) - 1] = -np.inf
            scores[row, keep] = kept


def _dist_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _all_mean(value: float, world: _Distributed) -> float:
    if world.world_size == 1:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world.world_size


def _gather_min(values: np.ndarray, world: _Distributed) -> np.ndarray:
    """Element-wise minimum over ranks (each rank filled its rows; the others hold the maximum)."""
    if world.world_size == 1:
        return values
    import torch.distributed as dist

    tensor = torch.from_numpy(values.copy())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor.numpy()


def _gather_rows(top: np.ndarray, values: np.ndarray, world: _Distributed) -> tuple[np.ndarray, np.ndarray]:
    """Rows filled by each rank (contiguous shares) assembled on every rank."""
    if world.world_size == 1:
        return top, values
    import torch.distributed as dist

    gathered: list[Any] = [None] * world.world_size
    dist.all_gather_object(gathered, (top, values))
    share = -(-len(top) // world.world_size)
    for rank, (rank_top, rank_values) in enumerate(gathered):
        rows = slice(rank * share, (rank + 1) * share)
        top[rows], values[rows] = rank_top[rows], rank_values[rows]
    return top, values


def _state_bytes(values: Any) -> bytes:
    """``values`` (state dicts) as bytes: a copy that later training does not change."""
    buffer = io.BytesIO()
    torch.save(values, buffer)
    return buffer.getvalue()


def _state_from_bytes(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=False)


def _checkpoint_path(folder: str | Path | None, rank: int) -> Path | None:
    if folder is None:
        return None
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path / f"checkpoint-rank{rank}.pt"


def _write_atomic(data: bytes, path: Path) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
