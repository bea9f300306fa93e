"""TensorFlow backend of VAE-CF (the seed): the Mult-VAE of :mod:`recmodels.vae_cf` (math there).

As in NVIDIA's optimised VAE-CF: training batches come from a ``tf.data`` pipeline that slices rows of
the encoder-input CSR matrix (L2-normalised rows, or binary ones) into ``tf.SparseTensor``\\ s (no
dense users × items input), the first Dense layer consumes them as a sparse embedding lookup, and with
Horovod each worker trains on its share of every global batch, averaging gradients with
``DistributedGradientTape`` after an initial broadcast of the weights from rank 0, with the learning
rate multiplied by the number of workers. ``use_amp`` gives the layers Keras' mixed-precision policy
(``mixed_float16`` with dynamic loss scaling on GPU, ``mixed_bfloat16`` on CPU, where float16 is ~100×
slower); the softmax and the loss stay in float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from recmodels.errors import GPUUnavailable
from recmodels.vae_cf import VAECFConfig, sparse_parts

SPARSE_INPUT = tf.SparseTensorSpec([None, None], tf.float32)
TRAIN_ELEMENT = (
    tf.TensorSpec([None, 2], tf.int64),
    tf.TensorSpec([None], tf.float32),
    tf.TensorSpec([2], tf.int64),
    tf.TensorSpec([], tf.float32),
)


class MultVAE(tf.Module):
    """Encoder [n_items, *hidden, 2·latent] (sparse first layer) and decoder [latent, *hidden[::-1], n_items]."""

    def __init__(self, n_items: int, hidden_dims: tuple[int, ...], policy: str, seed: int) -> None:
        super().__init__(name="mult_vae")
        *hidden, latent = hidden_dims

        def dense(units: int, activation: str | None, index: int) -> tf.keras.layers.Dense:
            return tf.keras.layers.Dense(
                units,
                activation=activation,
                dtype=policy,
                kernel_initializer=tf.keras.initializers.GlorotUniform(seed + index),
                bias_initializer=tf.keras.initializers.TruncatedNormal(stddev=0.001, seed=seed + index),
            )

        encoder = [*hidden, 2 * latent]
        decoder = [*hidden[::-1], n_items]
        self.encoder = [dense(d, "tanh" if i < len(hidden) else None, i) for i, d in enumerate(encoder)]
        self.decoder = [
            dense(d, "tanh" if i < len(hidden) else None, len(encoder) + i) for i, d in enumerate(decoder)
        ]
        self.encoder[0].build((None, n_items))
        for layer, fan_in in zip(self.encoder[1:], encoder[:-1], strict=True):
            layer.build((None, fan_in))
        for layer, fan_in in zip(self.decoder, [latent, *decoder[:-1]], strict=True):
            layer.build((None, fan_in))

    def kernels(self) -> list[tf.Variable]:
        """The matrices under the L2 penalty (not the biases)."""
        return [layer.kernel for layer in self.encoder + self.decoder]

    def encode(self, x: tf.SparseTensor) -> tuple[tf.Tensor, tf.Tensor]:
        h: Any = x
        for layer in self.encoder:
            h = layer(h)
        mu, logvar = tf.split(tf.cast(h, tf.float32), 2, axis=1)
        return mu, logvar

    def decode(self, z: tf.Tensor) -> tf.Tensor:
        for layer in self.decoder:
            z = layer(z)
        return tf.cast(z, tf.float32)

    @tf.function(input_signature=[SPARSE_INPUT])
    def logits(self, x: tf.SparseTensor) -> tf.Tensor:
        """Scores of all items for rows of encoder input (z = μ, no dropout)."""
        return self.decode(self.encode(x)[0])

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 2], tf.int64, name="indices"),
            tf.TensorSpec([None], tf.float32, name="values"),
            tf.TensorSpec([2], tf.int64, name="dense_shape"),
        ]
    )
    def serve(self, indices: tf.Tensor, values: tf.Tensor, dense_shape: tf.Tensor) -> dict[str, tf.Tensor]:
        """SavedModel signature: COO parts of user rows as the encoder reads them (L2-normalised,
        binary where the logged ``normalize_input`` is false) → item logits."""
        return {"logits": self.logits(tf.SparseTensor(indices, values, dense_shape))}


class TFVAE:
    """The backend object :func:`recmodels.vae_cf.make_backend` returns for ``backend="tf"``."""

    def __init__(self, config: VAECFConfig, train: sp.csr_matrix, horovod: bool) -> None:
        self.config, self.train = config, train
        self.hvd: Any = None
        self.rank, self.world_size = 0, 1
        if horovod:
            import horovod.tensorflow as hvd

            hvd.init()
            self.hvd, self.rank, self.world_size = hvd, hvd.rank(), hvd.size()
        gpus = tf.config.list_physical_devices("GPU")
        if config.device in ("cuda", "gpu") and not gpus:
            raise GPUUnavailable(f"device={config.device!r} was asked for but TensorFlow sees no GPU.")
        on_gpu = bool(gpus) and config.device != "cpu"
        if on_gpu and horovod:  # one GPU per worker, before TensorFlow's runtime starts
            tf.config.set_visible_devices(gpus[self.hvd.local_rank()], "GPU")
        self.device = "/GPU:0" if on_gpu else "/CPU:0"
        policy = ("mixed_float16" if on_gpu else "mixed_bfloat16") if config.use_amp else "float32"
        with tf.device(self.device):
            self.model = MultVAE(train.shape[1], config.hidden_dims, policy, config.seed)
            optimizer = tf.keras.optimizers.Adam(
                config.lr * self.world_size, beta_1=config.beta1, beta_2=config.beta2, jit_compile=False
            )
            self.loss_scaling = policy == "mixed_float16"
            self.optimizer = (
                tf.keras.mixed_precision.LossScaleOptimizer(optimizer) if self.loss_scaling else optimizer
            )
            self.rng = tf.random.Generator.from_seed(config.seed * 1_000_003 + self.rank)
        if horovod:
            self.hvd.broadcast_variables(self.model.trainable_variables, root_rank=0)

    @tf.function(input_signature=[SPARSE_INPUT, tf.TensorSpec([], tf.float32)])
    def _step(self, x: tf.SparseTensor, beta: tf.Tensor) -> tf.Tensor:
        keep = self.config.keep_prob
        mask = tf.cast(self.rng.uniform(tf.shape(x.values)) < keep, tf.float32)
        dropped = tf.SparseTensor(x.indices, x.values * mask / keep, x.dense_shape)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            mu, logvar = self.model.encode(dropped)
            z = mu + tf.exp(0.5 * logvar) * self.rng.normal(tf.shape(mu))
            logits = self.model.decode(z)
            # Multinomial log-likelihood of the raw binary row: Σ_i x_ui (logit_ui − logsumexp_u).
            lse = tf.gather(tf.reduce_logsumexp(logits, axis=1), x.indices[:, 0])
            users = tf.cast(x.dense_shape[0], tf.float32)
            nll = tf.reduce_sum(lse - tf.gather_nd(logits, x.indices)) / users
            kl = tf.reduce_mean(tf.reduce_sum(0.5 * (-logvar + tf.exp(logvar) + tf.square(mu) - 1), axis=1))
            l2 = tf.add_n([tf.reduce_sum(tf.square(w)) for w in self.model.kernels()])
            loss = nll + beta * kl + self.config.lam * l2
            scaled = self.optimizer.get_scaled_loss(loss) if self.loss_scaling else loss
        if self.hvd is not None:
            tape = self.hvd.DistributedGradientTape(tape, sparse_as_dense=True)
        grads = tape.gradient(scaled, variables)
        if self.loss_scaling:
            grads = self.optimizer.get_unscaled_gradients(grads)
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    def train_epoch(self, steps: list[tuple[np.ndarray, float]]) -> np.ndarray:
        def batches():
            for rows, beta in steps:
                yield (*sparse_parts(self.train, rows), np.float32(beta))

        dataset = tf.data.Dataset.from_generator(batches, output_signature=TRAIN_ELEMENT).prefetch(2)
        total = tf.constant(0.0)
        with tf.device(self.device):
            for indices, values, shape, beta in dataset:
                loss = self._step(tf.SparseTensor(indices, values, shape), beta)
                total += loss * tf.cast(shape[0], tf.float32)
        return np.array([float(total), sum(len(rows) for rows, _ in steps)], dtype=np.float64)

    def logits(self, inputs: sp.csr_matrix) -> np.ndarray:
        indices, values, shape = sparse_parts(inputs, np.arange(inputs.shape[0]))
        with tf.device(self.device):
            return self.model.logits(tf.SparseTensor(indices, values, shape)).numpy()

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        if self.hvd is None:
            return values
        return self.hvd.allreduce(tf.constant(values), op=self.hvd.Sum).numpy()

    def get_weights(self) -> list[np.ndarray]:
        return [v.numpy().copy() for v in self.model.trainable_variables]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        for variable, value in zip(self.model.trainable_variables, weights, strict=True):
            variable.assign(value)

    def _optimizer_variables(self) -> list[tf.Variable]:
        """Adam's step count and moments (built now if no step has run yet, as the first step would)."""
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        with tf.device(self.device):
            inner.build(self.model.trainable_variables)
        return list(self.optimizer.variables)

    def training_state(self) -> dict[str, Any]:
        rng = self.rng.state.numpy().copy()
        return {
            "weights": self.get_weights(),
            "optimizer": [v.numpy().copy() for v in self._optimizer_variables()],
            # Each worker draws its own dropout and noise: every worker's state, rank by rank.
            "rng": self.hvd.allgather_object(rng) if self.hvd is not None else [rng],
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.set_weights(state["weights"])
        for variable, value in zip(self._optimizer_variables(), state["optimizer"], strict=True):
            variable.assign(value)
        self.rng.state.assign(state["rng"][self.rank])

    def save(self, path: Path) -> Path:
        out = path / "saved_model"
        tf.saved_model.save(self.model, str(out), signatures={"serving_default": self.model.serve})
        return out


def build(config: VAECFConfig, train: sp.csr_matrix, horovod: bool = False) -> TFVAE:
    """Entry point used by :func:`recmodels.vae_cf.make_backend`."""
    return TFVAE(config, train, horovod)
