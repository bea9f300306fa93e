"""ImplicitFactorization's training epoch on the CPU, compiled: the minibatch steps of ``implicit_mf`` in one kernel.

The same algorithm as :func:`recmodels.implicit_mf.minibatch_gradient` followed by
:class:`recmodels.implicit_mf.DenseAdam` for every minibatch (see that module's docstring for the losses
and their gradients), as one numba loop over the epoch's index columns. On the CPU at Spotlight's batch of
256 a tensor-op step is bound by per-operation overhead and by the dense Adam update of every table
element; here the per-positive work runs without dispatch, and the dense update is cheaper at equal
results:

- Adam's second moment is kept as its square root s = √v. A row with no gradient in a step (and
  ``l2 = 0``) then updates as m ← β₁m, s ← √β₂ s, w ← w − lr/(1 − β₁ᵗ) · m / (s/√(1 − β₂ᵗ) + ε): the
  same numbers as ``torch.optim.Adam`` (Kingma & Ba, ICLR 2015) to rounding, without a square root.
  Rows the minibatch touches (all rows when ``l2 > 0``, which adds l2·w to every gradient) take the full
  update, s ← √(β₂s² + (1 − β₂)g²).
- The gradient is accumulated in a dense buffer of which only the touched rows are read and re-zeroed.

Arithmetic is float32 like the tensor path; the results agree with it to float32 rounding (tested),
with the same sampled index tensors, so a seed gives the same training on either path. The kernel runs
on one core: at MovieLens table sizes (10⁴ rows) a step's dense update takes ~0.1 ms, less than a numba
parallel region costs to start (measured: 20–30% slower epochs with ``prange`` on 2 threads). numba
compiles it once per installation (~1 s, cached beside the module) and loads it in ~0.3 s per process,
when the trainer is built (outside the epochs' timings); it releases the GIL while it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

LOSS_CODES = {"pointwise": 0, "bpr": 1, "hinge": 2, "adaptive_hinge": 3}
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, which Spotlight keeps
CHUNK_POSITIVES = 1 << 13  # positives per kernel call (~10 ms of an epoch at the default size, on one core)


@dataclass(eq=False)
class CompiledEpochs:
    """Adam state of ``weight`` (float32, rows × (d + 1), updated in place) and one compiled epoch per call."""

    weight: np.ndarray
    loss: str
    batch_size: int
    learning_rate: float
    weight_decay: float = 0.0
    steps: int = 0
    exp_avg: np.ndarray = field(init=False, repr=False)
    exp_avg_sqrt: np.ndarray = field(init=False, repr=False)
    grad: np.ndarray = field(init=False, repr=False)
    touched: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.exp_avg, self.exp_avg_sqrt, self.grad = (np.zeros_like(self.weight) for _ in range(3))
        self.touched = np.zeros(len(self.weight), np.bool_)
        self.epoch(np.zeros((3, 0), np.int64))  # compile or load the kernel now, outside any timed epoch

    def epoch(self, index: np.ndarray) -> np.ndarray:
        """Minibatch steps over the columns of ``index`` ((2 + n) × rows, int64); each positive's loss.

        The kernel runs ``CHUNK_POSITIVES`` positives (whole minibatches) per call, the same steps as one
        call: between calls Python runs, so Ctrl-C and SIGTERM stop a long epoch within a chunk
        (flows/interrupts.py), not at its end.
        """
        index = np.ascontiguousarray(index)
        losses = np.empty(index.shape[1], np.float32)
        chunk = self.batch_size * max(1, CHUNK_POSITIVES // self.batch_size)
        for begin in range(0, index.shape[1], chunk):
            self.steps = _train_epoch(
                self.weight,
                self.exp_avg,
                self.exp_avg_sqrt,
                self.grad,
                self.touched,
                index,
                begin,
                min(begin + chunk, index.shape[1]),
                self.batch_size,
                LOSS_CODES[self.loss],
                self.learning_rate,
                self.weight_decay,
                self.steps,
                losses,
            )
        return losses


@numba.njit(cache=True, error_model="numpy", inline="always")
def _score(weight: np.ndarray, user: int, item: int) -> np.float32:
    """p_u · q_i + c_i (the user's bias left out)."""
    d = weight.shape[1] - 1
    total = weight[item, d]
    for e in range(d):
        total += weight[user, e] * weight[item, e]
    return total


@numba.njit(cache=True, error_model="numpy", inline="always")
def _sigmoid(x: np.float32) -> np.float32:
    return np.float32(1) / (np.float32(1) + np.exp(-x))


@numba.njit(cache=True, error_model="numpy", nogil=True)
def _train_epoch(
    weight: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sqrt: np.ndarray,
    grad: np.ndarray,
    touched: np.ndarray,
    index: np.ndarray,
    begin: int,
    end: int,
    batch_size: int,
    loss_code: int,
    learning_rate: float,
    weight_decay: float,
    steps: int,
    losses: np.ndarray,
) -> int:
    """The minibatch gradient + dense Adam steps (module docstring) of the minibatches that start at columns
    ``begin``, ``begin + batch_size``, … before ``end``; the Adam step count after them."""
    decay = np.float32(weight_decay)
    for start in range(begin, end, batch_size):
        _accumulate_gradient(weight, grad, touched, index, start, batch_size, loss_code, losses)
        steps += 1
        step_size = np.float32(learning_rate / (1 - BETA1**steps))
        inverse_bias_correction2_sqrt = np.float32(1 / np.sqrt(1 - BETA2**steps))
        _adam_rows(
            weight, exp_avg, exp_avg_sqrt, grad, touched, step_size, inverse_bias_correction2_sqrt, decay
        )
    return steps


@numba.njit(cache=True, error_model="numpy")
def _accumulate_gradient(
    weight: np.ndarray,
    grad: np.ndarray,
    touched: np.ndarray,
    index: np.ndarray,
    start: int,
    batch_size: int,
    loss_code: int,
    losses: np.ndarray,
) -> None:
    """Each loss of the minibatch at columns ``start``… of ``index`` into ``losses``; the gradient of their
    mean added to ``grad``, its rows flagged in ``touched``."""
    one, zero = np.float32(1), np.float32(0)
    stop = min(start + batch_size, index.shape[1])
    scale = np.float32(1.0 / (stop - start))  # ∂(batch mean)/∂(each loss)
    d = weight.shape[1] - 1
    for c in range(start, stop):
        u, i, j = index[0, c], index[1, c], index[2, c]
        positive, negative = _score(weight, u, i), _score(weight, u, j)
        for n in range(3, index.shape[0]):  # adaptive hinge: the highest-scored of the negatives
            score = _score(weight, u, index[n, c])
            if score > negative or score != score:  # a NaN wins, as in torch.max
                negative, j = score, index[n, c]
        if loss_code == 0:  # pointwise: α = ∂/∂ŷ(u,i), β = ∂/∂ŷ(u,j)
            sigmoid_i = _sigmoid(positive + weight[u, d])
            sigmoid_j = _sigmoid(negative + weight[u, d])
            losses[c] = one - sigmoid_i + sigmoid_j
            alpha = -scale * sigmoid_i * (one - sigmoid_i)
            beta = scale * sigmoid_j * (one - sigmoid_j)
            for e in range(d):
                factor = weight[u, e]
                grad[u, e] += alpha * weight[i, e] + beta * weight[j, e]
                grad[i, e] += alpha * factor
                grad[j, e] += beta * factor
            grad[u, d] += alpha + beta
        else:  # pairwise: γ = ∂/∂x, x = ŷ(u,j) − ŷ(u,i)
            x = negative - positive
            if loss_code == 1:
                miss = _sigmoid(x)  # bpr: 1 − σ(ŷ(u,i) − ŷ(u,j))
                losses[c] = miss
                alpha = scale * miss * (one - miss)
            else:
                margin = x + one
                losses[c] = max(margin, zero)
                alpha = scale if margin >= zero else zero
            for e in range(d):
                factor = weight[u, e]
                grad[u, e] += alpha * (weight[j, e] - weight[i, e])
                grad[i, e] -= alpha * factor
                grad[j, e] += alpha * factor
            beta, alpha = alpha, -alpha
        grad[i, d] += alpha
        grad[j, d] += beta
        touched[u] = touched[i] = touched[j] = True


@numba.njit(cache=True, error_model="numpy")
def _adam_rows(
    weight: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sqrt: np.ndarray,
    grad: np.ndarray,
    touched: np.ndarray,
    step_size: np.float32,
    inverse_bias_correction2_sqrt: np.float32,
    decay: np.float32,
) -> None:
    """One Adam update (module docstring) of every row; ``grad`` and ``touched`` are left zeroed."""
    beta1, beta2, eps = np.float32(BETA1), np.float32(BETA2), np.float32(EPS)
    one_minus_beta1, one_minus_beta2 = np.float32(1 - BETA1), np.float32(1 - BETA2)  # as torch rounds them
    sqrt_beta2 = np.float32(np.sqrt(BETA2))
    for row in range(weight.shape[0]):
        if touched[row] or decay > 0:
            for e in range(weight.shape[1]):
                g = grad[row, e] + decay * weight[row, e]
                m = exp_avg[row, e] + one_minus_beta1 * (g - exp_avg[row, e])
                s = np.sqrt(beta2 * exp_avg_sqrt[row, e] * exp_avg_sqrt[row, e] + one_minus_beta2 * g * g)
                exp_avg[row, e], exp_avg_sqrt[row, e], grad[row, e] = m, s, 0
                weight[row, e] -= step_size * m / (s * inverse_bias_correction2_sqrt + eps)
            touched[row] = False
        else:
            for e in range(weight.shape[1]):
                m, s = beta1 * exp_avg[row, e], sqrt_beta2 * exp_avg_sqrt[row, e]
                exp_avg[row, e], exp_avg_sqrt[row, e] = m, s
                weight[row, e] -= step_size * m / (s * inverse_bias_correction2_sqrt + eps)
