"""Session-based next-item transformers: GPT-2 (causal LM) and XLNet (masked LM) from Hugging Face
``transformers``, built from config (no downloaded weights), as in NVIDIA Transformers4Rec's session
pipeline (Moreira et al., "Transformers4Rec", RecSys 2021, the GPT-2/XLNet rows of its e-commerce tables).

A session is a sequence of item indices ``x_1..x_L`` (L ≤ ``max_len``). Inputs are the item embedding
``E[x_t]`` plus a learned absolute position embedding ``P[t]`` (GPT-2's own ``wpe``; XLNet, whose
attention is relative, gets ``P`` added to its input). The transformer's output ``h_t`` scores every item
``j`` as ``z_tj = h_t · E[j] + b_j`` (``tie_weights``: the output layer is the item embedding,
Transformers4Rec's ``weight_tying``) or ``z_t = W h_t + b`` (a linear head), trained with the softmax
cross-entropy over all items:

- ``gpt2`` (causal LM): ``L = -Σ_{t<L} log softmax(z_t)[x_{t+1}]`` — the next item at every position;
  scoring a session reads ``z`` at its last position.
- ``xlnet`` (masked LM, bidirectional attention): each position is replaced by a [MASK] token with
  probability ``mlm_probability`` (at least one per session; the last item too with probability
  ``mask_last_probability``), ``L = -Σ_{masked t} log softmax(z_t)[x_t]``; scoring appends one [MASK]
  after the session and reads ``z`` there ("evaluation masks only the last item").

The vocabulary holds the ``n_items`` items, then padding (``n_items``, also bos/eos) and [MASK]
(``n_items + 1``), so the config's special token ids lie inside it. ``update`` fine-tunes the same
network (and its Adam state) on each new window for ``epochs`` passes. ``precision`` ``bf16``/``fp16``
runs forward passes under autocast (fp16 with a gradient scaler on CUDA).

Defaults (5 epochs a window, batch 128, learning rate 3e-3, d_model 64, 2 layers, dropout 0.2, tied output)
come from a small search on ml-100k (benchmarks/README.md, "session protocol"), with 3 replayed windows:
on data this small the schedule and replay matter more than size. The search was cut short by a
saturated machine: one seed, evaluated windows (not held-out ones); see the README for what it shows.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recmodels.checkpoint import STATE_FORMAT, check_state
from recmodels.errors import GPUUnavailable, InvalidConfig, MissingExtra, NotFitted

try:
    import torch
    import transformers
    from torch import nn
except ImportError as _missing:  # one line, naming the extra
    raise MissingExtra(
        f"gpt2/xlnet need the 'transformers' extra ({_missing.name} is not installed): "
        "pip install -e '.[torch,transformers]'"
    ) from None

transformers.logging.set_verbosity_error()


@dataclass(frozen=True)
class TransformerConfig:
    """Architecture, training schedule and precision of a session transformer."""

    architecture: Literal["gpt2", "xlnet"] = "gpt2"
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 2
    dropout: float = 0.2
    max_len: int = 20
    tie_weights: bool = True
    mlm_probability: float = 0.3
    mask_last_probability: float = 0.5
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ("gpt2", "xlnet"):
            raise InvalidConfig(f"architecture={self.architecture!r}: use 'gpt2' or 'xlnet'")
        if self.d_model % self.n_head:
            raise InvalidConfig(f"d_model={self.d_model} is not a multiple of n_head={self.n_head}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise InvalidConfig(f"precision={self.precision!r}: use fp32, bf16 or fp16")
        if not 0 < self.mlm_probability < 1:
            raise InvalidConfig(f"mlm_probability={self.mlm_probability}: it must be in (0, 1)")


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when present, else CPU; ``cuda`` without a GPU raises GPUUnavailable."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GPUUnavailable(f"device={device!r} but torch sees no CUDA device; use device='cpu' or 'auto'")
    return torch.device(device)


class SessionTransformerNet(nn.Module):
    """Item embedding → GPT-2 or XLNet blocks → scores over items (tied or linear head)."""

    def __init__(self, n_items: int, config: TransformerConfig) -> None:
        super().__init__()
        self.n_items, self.config = n_items, config
        self.pad, self.mask = n_items, n_items + 1
        vocab = n_items + 2
        self.items = nn.Embedding(vocab, config.d_model, padding_idx=self.pad)
        nn.init.normal_(self.items.weight, std=0.02)
        special = {"bos_token_id": self.pad, "eos_token_id": self.pad, "pad_token_id": self.pad}
        if config.architecture == "gpt2":
            hf_config = transformers.GPT2Config(
                vocab_size=vocab,
                n_positions=config.max_len,
                n_embd=config.d_model,
                n_layer=config.n_layer,
                n_head=config.n_head,
                resid_pdrop=config.dropout,
                embd_pdrop=config.dropout,
                attn_pdrop=config.dropout,
                **special,
            )
            self.body = transformers.GPT2Model(hf_config)
            self.positions = None
        else:
            hf_config = transformers.XLNetConfig(
                vocab_size=vocab,
                d_model=config.d_model,
                n_layer=config.n_layer,
                n_head=config.n_head,
                d_inner=4 * config.d_model,
                dropout=config.dropout,
                attn_type="bi",
                mem_len=None,
                **special,
            )
            self.body = transformers.XLNetModel(hf_config)
            self.positions = nn.Embedding(config.max_len, config.d_model)
            nn.init.normal_(self.positions.weight, std=0.02)
        self.body.set_input_embeddings(self.items)  # one item table: input, and output when tied
        self.head = None if config.tie_weights else nn.Linear(config.d_model, n_items, bias=False)
        self.bias = nn.Parameter(torch.zeros(n_items))

    def hidden(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        if self.positions is None:
            return self.body(input_ids=ids, attention_mask=attention).last_hidden_state
        embedded = self.items(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))
        return self.body(inputs_embeds=embedded, attention_mask=attention).last_hidden_state

    def forward(self, ids: torch.Tensor, attention: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """Item scores at the ``selected`` positions (a boolean mask over ``ids``)."""
        return self.logits(self.hidden(ids, attention)[selected])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over the ``n_items`` items (never the padding or [MASK] tokens)."""
        if self.head is not None:
            return self.head(hidden) + self.bias
        return hidden @ self.items.weight[: self.n_items].T + self.bias


class SessionTransformer:
    """GPT-2 / XLNet session recommender of the session protocol (``update`` per window, ``score``)."""

    def __init__(
        self, n_items: int, config: TransformerConfig | None = None, rank: int = 0, world_size: int = 1
    ) -> None:
        self.config = config or TransformerConfig()
        self.n_items, self.rank, self.world_size = n_items, rank, world_size
        self.device = resolve_device(self.config.device)
        if world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.manual_seed(self.config.seed)  # the same initial weights on every rank
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.module_ = SessionTransformerNet(n_items, self.config).to(self.device)
        self.trainer: nn.Module = self.module_
        if world_size > 1:  # DDP: each rank trains on its share of every batch, gradients all-reduced
            self.trainer = nn.parallel.DistributedDataParallel(
                self.module_, find_unused_parameters=self.config.architecture == "xlnet"
            )
        self.optimizer = torch.optim.AdamW(
            self.module_.parameters(), lr=self.config.learning_rate, weight_decay=self.config.weight_decay
        )
        use_scaler = self.config.precision == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.fitted = False
        self.steps = 0
        self.window_losses: list[float] = []  # mean training loss of each update

    def params(self) -> dict[str, Any]:
        return asdict(self.config)

    def training_state(self) -> dict[str, Any]:
        """A copy of everything later updates depend on (the session protocol's checkpoint contract,
        :mod:`recmodels.session_eval`): weights, AdamW and scaler state, the shuffling generator and
        torch's global generators (dropout), the step count and the windows' losses."""
        return {
            "format": STATE_FORMAT,
            "model": self.config.architecture,
            "n_items": self.n_items,
            "weights": {k: v.detach().cpu().clone() for k, v in self.module_.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "steps": self.steps,
            "window_losses": list(self.window_losses),
            "fitted": self.fitted,
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`training_state` of a model of the same architecture and vocabulary."""
        check_state(state, self.config.architecture, n_items=self.n_items)
        self.module_.load_state_dict(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.steps, self.window_losses, self.fitted = (
            state["steps"],
            list(state["window_losses"]),
            state["fitted"],
        )

    # --- batches -----------------------------------------------------------------------------------

    def _pad(self, sessions: Sequence[np.ndarray], length: int) -> torch.Tensor:
        batch = torch.full((len(sessions), length), self.module_.pad, dtype=torch.long)
        for row, session in enumerate(sessions):
            batch[row, : len(session)] = torch.as_tensor(session[-length:], dtype=torch.long)
        return batch

    def _autocast(self) -> Any:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def loss(self, sessions: Sequence[np.ndarray]) -> torch.Tensor:
        """The training loss of one batch of sessions (module docstring)."""
        net = self.module_
        length = max(len(s) for s in sessions)
        ids = self._pad(sessions, length)
        real = ids != net.pad
        if self.config.architecture == "gpt2":
            inputs, targets = ids[:, :-1], ids[:, 1:].clone()
            targets[~real[:, 1:]] = -100
            attention = real[:, :-1]
        else:
            probability = torch.full(ids.shape, self.config.mlm_probability)
            masked = (torch.rand(ids.shape, generator=self.generator) < probability) & real
            lengths = real.sum(1)
            last = torch.rand(len(ids), generator=self.generator) < self.config.mask_last_probability
            masked[torch.arange(len(ids))[last], lengths[last] - 1] = True
            none = ~masked.any(1)  # at least one masked item per session
            pick = (torch.rand(len(ids), generator=self.generator) * lengths).long()
            masked[torch.arange(len(ids))[none], pick[none]] = True
            inputs = ids.masked_fill(masked, net.mask)
            targets = ids.masked_fill(~masked, -100)
            attention = real
        inputs, targets, attention = (t.to(self.device) for t in (inputs, targets, attention))
        selected = targets != -100
        with self._autocast():
            logits = self.trainer(inputs, attention.long(), selected)
        return nn.functional.cross_entropy(logits.float(), targets[selected])

    # --- the protocol ------------------------------------------------------------------------------

    def update(self, window: Sequence[np.ndarray], replay: Sequence[np.ndarray] = ()) -> None:
        """Fine-tune on the window's sessions (and the replayed ones) for ``epochs`` shuffled passes."""
        sessions = [np.asarray(s)[-self.config.max_len :] for s in [*window, *replay] if len(s) >= 2]
        self.module_.train()
        batch_size = self.config.batch_size
        total, count = 0.0, 0
        for _ in range(self.config.epochs):
            order = torch.randperm(len(sessions), generator=self.generator).tolist()  # same on every rank
            if self.world_size > 1:  # every rank takes its share of each global batch, in lockstep
                usable = len(order) // self.world_size * self.world_size or len(order)
                order = order[:usable][self.rank :: self.world_size] or order[:1]
                batch_size = max(1, self.config.batch_size // self.world_size)
            for start in range(0, len(order), batch_size):
                batch = [sessions[i] for i in order[start : start + batch_size]]
                self.optimizer.zero_grad(set_to_none=True)
                loss = self.loss(batch)
                if not math.isfinite(loss.item()):
                    raise InvalidConfig(
                        f"{self.config.architecture}: loss is {loss.item()}; lower learning_rate"
                    )
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.steps += 1
                total, count = total + loss.item(), count + 1
        self.window_losses.append(total / max(count, 1))
        self.fitted = True

    @torch.no_grad()
    def score(self, prefixes: Sequence[np.ndarray]) -> np.ndarray:
        """Scores of every item for each input session (its last ``max_len`` − 1 items for XLNet)."""
        if not self.fitted:
            raise NotFitted(f"{self.config.architecture}: call update() with a window before score()")
        net = self.module_
        net.eval()
        keep = self.config.max_len - (self.config.architecture == "xlnet")
        prefixes = [np.asarray(p)[-keep:] for p in prefixes]
        lengths = torch.tensor([len(p) for p in prefixes])
        if self.config.architecture == "xlnet":
            prefixes = [np.append(p, net.mask) for p in prefixes]
            lengths = lengths + 1
        ids = self._pad(prefixes, int(lengths.max())).to(self.device)
        with self._autocast():
            hidden = net.hidden(ids, (ids != net.pad).long())
            last = hidden[torch.arange(len(ids), device=self.device), lengths.to(self.device) - 1]
            scores = net.logits(last)
        return scores.float().cpu().numpy()

    def save(self, folder: Path) -> None:
        """The network's weights (``model.pt``) and its config (``config.json``)."""
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.module_.state_dict(), folder / "model.pt")
        (folder / "config.json").write_text(json.dumps({"n_items": self.n_items, **asdict(self.config)}))
