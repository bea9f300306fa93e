"""PyTorch backend of VAE-CF: the Mult-VAE of :mod:`recmodels.vae_cf` (math there) in one process.

The training matrix (the encoder input: L2-normalised rows, or binary ones) lives on the device as CSR
arrays; each step gathers its users' rows there and feeds them to the first layer as an
``embedding_bag`` (a sparse × dense product), so no dense users × items input is ever built. Mixed precision: ``torch.autocast`` with float16 and a gradient
scaler on CUDA, bfloat16 on CPU; the log-softmax, the loss and the KL term are computed in float32.
"""

from __future__ import annotations

import copy
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from recmodels.errors import GPUUnavailable
from recmodels.vae_cf import VAECFConfig


class MultVAE(nn.Module):
    """Encoder [n_items, *hidden, 2·latent] with a sparse first layer; decoder [latent, *hidden[::-1], n_items]."""

    def __init__(self, n_items: int, hidden_dims: tuple[int, ...], generator: torch.Generator) -> None:
        super().__init__()
        *hidden, latent = hidden_dims
        encoder = [n_items, *hidden, 2 * latent]
        decoder = [latent, *hidden[::-1], n_items]
        self.input_weight = nn.Parameter(torch.empty(n_items, encoder[1]))
        self.input_bias = nn.Parameter(torch.empty(encoder[1]))
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(encoder[1:]))
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(decoder))
        # Glorot-uniform weights and N(0, 0.001²) biases, as in the seed (truncated normal there).
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.trunc_normal_(param, std=0.001, a=-0.002, b=0.002, generator=generator)
            else:
                nn.init.xavier_uniform_(param, generator=generator)

    def weights(self) -> list[torch.Tensor]:
        """The matrices under the L2 penalty (not the biases)."""
        return [p for name, p in self.named_parameters() if not name.endswith("bias")]

    def encode(
        self, cols: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        h = F.embedding_bag(cols, self.input_weight, offsets, mode="sum", per_sample_weights=values)
        h = h + self.input_bias
        for layer in self.encoder:
            h = layer(torch.tanh(h))
        mu, logvar = h.float().chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.decoder):
            z = layer(z if i == 0 else torch.tanh(z))
        return z


class TorchVAE:
    """The backend object :func:`recmodels.vae_cf.make_backend` returns for ``backend="torch"``."""

    rank = 0
    world_size = 1

    def __init__(self, config: VAECFConfig, train: sp.csr_matrix) -> None:
        self.config = config
        self.device = _device(config.device)
        self.generator = torch.Generator(self.device).manual_seed(config.seed)
        init = torch.Generator().manual_seed(config.seed)
        self.model = MultVAE(train.shape[1], config.hidden_dims, init).to(self.device)
        cuda = self.device.type == "cuda"
        self.amp_dtype = torch.float16 if cuda else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.use_amp and cuda)
        # λ‖W‖² enters as Adam's weight decay 2λ on the weights: the same gradient, applied inside the
        # fused kernel instead of a square, a sum and their backward pass over every weight each step.
        weights = self.model.weights()
        biases = [p for name, p in self.model.named_parameters() if name.endswith("bias")]
        self.optimizer = torch.optim.Adam(
            [{"params": weights, "weight_decay": 2 * config.lam}, {"params": biases}],
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            fused=True,
        )
        self.indptr = train.indptr.astype(np.int64)
        self.csr = tuple(
            torch.as_tensor(a, device=self.device)
            for a in (self.indptr, train.indices.astype(np.int64), train.data.astype(np.float32))
        )

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.config.use_amp)

    def _gather(self, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        """(columns, bag offsets, values, row of each non-zero) of the training rows ``rows``, on device."""
        lengths = self.indptr[rows + 1] - self.indptr[rows]
        indptr, indices, data = self.csr
        dev_rows = torch.as_tensor(rows, device=self.device)
        dev_lengths = torch.as_tensor(lengths, device=self.device)
        offsets = torch.cumsum(dev_lengths, 0) - dev_lengths
        row_of = torch.repeat_interleave(
            torch.arange(len(rows), device=self.device), dev_lengths, output_size=int(lengths.sum())
        )
        position = indptr[dev_rows][row_of] + torch.arange(len(row_of), device=self.device) - offsets[row_of]
        return indices[position], offsets, data[position], row_of

    def train_epoch(self, steps: list[tuple[np.ndarray, float]]) -> np.ndarray:
        self.model.train()
        total = torch.zeros((), device=self.device)
        keep = self.config.keep_prob
        for rows, beta in steps:
            cols, offsets, values, row_of = self._gather(rows)
            dropped = values * (torch.rand(values.shape, generator=self.generator, device=self.device) < keep)
            with self._autocast():
                mu, logvar = self.model.encode(cols, offsets, dropped / keep)
                noise = torch.randn(mu.shape, generator=self.generator, device=self.device)
                logits = self.model.decode(mu + torch.exp(0.5 * logvar) * noise).float()
            # Multinomial log-likelihood of the raw binary row: Σ_i x_ui (logit_ui − logsumexp_u).
            nll = (torch.logsumexp(logits, dim=1)[row_of] - logits[row_of, cols]).sum() / len(rows)
            kl = (0.5 * (-logvar + logvar.exp() + mu.square() - 1)).sum(dim=1).mean()
            loss = nll + beta * kl
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            with torch.no_grad():  # the penalty's value, before the step, for the reported loss
                l2 = sum(torch.linalg.vector_norm(w).square() for w in self.model.weights())
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += (loss.detach() + self.config.lam * l2) * len(rows)
        return np.array([total.item(), sum(len(rows) for rows, _ in steps)], dtype=np.float64)

    @torch.no_grad()
    def logits(self, inputs: sp.csr_matrix) -> np.ndarray:
        self.model.eval()
        offsets, cols = (
            torch.as_tensor(a.astype(np.int64), device=self.device)
            for a in (inputs.indptr[:-1], inputs.indices)
        )
        values = torch.as_tensor(inputs.data.astype(np.float32), device=self.device)
        with self._autocast():
            mu, _ = self.model.encode(cols, offsets, values)
            logits = self.model.decode(mu)
        return logits.float().cpu().numpy()

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        return values

    def get_weights(self) -> list[np.ndarray]:
        return [p.detach().cpu().numpy().copy() for p in self.model.parameters()]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        with torch.no_grad():
            for param, value in zip(self.model.parameters(), weights, strict=True):
                param.copy_(torch.as_tensor(value))

    def training_state(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "generator": self.generator.get_state(),
            }
        )

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])

    def save(self, path: Path) -> Path:
        out = path / "state_dict.pt"
        torch.save(self.model.state_dict(), out)
        return out


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GPUUnavailable(f"device={name!r} was asked for but torch sees no CUDA GPU; use device='cpu'.")
    return device


def build(config: VAECFConfig, train: sp.csr_matrix, horovod: bool = False) -> TorchVAE:
    """Entry point used by :func:`recmodels.vae_cf.make_backend` (``horovod`` is rejected before this)."""
    return TorchVAE(config, train)
