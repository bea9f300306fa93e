"""VAE-CF (Mult-VAE, Liang et al. 2018): pipeline pieces by hand, the protocol on MovieLens-100K, both
backends, mixed precision, Horovod with two ``horovodrun --gloo`` workers, the worker's outputs.

The ML-100K split is the paper's strong generalisation (ratings ≥ 4, users with ≥ 5 of them, 94
validation and 94 test users, 20% of each held-out user's items to predict). Models here are small
(hidden 200-50, a few epochs) to stay within seconds on 2 CPU cores; the benchmark runs the full size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from recmodels import metrics, preprocessing
from recmodels._columns import ITEM, USER
from recmodels.base import IdIndex, mask_seen, recommendations_frame, top_k_dense
from recmodels.datasets import load_dataset
from recmodels.errors import EmptySplit, InvalidConfig, NotFitted
from recmodels.popularity import Popularity
from recmodels.vae_cf import (
    VAECF,
    VAECFConfig,
    adapt_to_data,
    anneal_beta,
    binary_matrix,
    encoder_input,
    epoch_batches,
    l2_normalize_rows,
    last_step_at_cap,
    metric_sums,
    sparse_parts,
)

torch.set_num_threads(1)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
SETS = ("train", "validation_fold_in", "validation", "test_fold_in", "test")
# Small enough for seconds per fit on 2 cores, large enough to beat popularity clearly: 10 steps of 75
# users an epoch (min_batch_size=75; the paper's floor of 500 would leave 12 steps in 6 epochs). Its 60
# steps would make a short run (no annealing, no dropout); short_run_steps=0 keeps the paper's path.
SMALL = {
    "hidden_dims": (200, 50),
    "epochs": 6,
    "validation_step": 2,
    "lr": 3e-3,
    "min_batch_size": 75,
    "short_run_steps": 0,
    "seed": 0,
}


def _tf():
    """TensorFlow with two CPU threads, or skip where the [tf] extra is not installed."""
    tf = pytest.importorskip(
        "tensorflow", reason="needs the [tf] extra: bash deployments/install_tf_extra.sh"
    )
    if not tf.config.threading.get_intra_op_parallelism_threads():
        tf.config.threading.set_intra_op_parallelism_threads(2)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


@pytest.fixture(scope="module")
def split(mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    raw = load_dataset("100k", home=tmp_path_factory.mktemp("home"), mirror=mirror)
    df = preprocessing.filter_min_interactions(preprocessing.to_implicit(raw), 5, 0)
    return preprocessing.split_strong_generalization(df).frames()


@pytest.fixture(scope="module")
def prepared(split: dict[str, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("prepared")
    for name in SETS:
        split[name].to_parquet(folder / f"{name}.parquet", index=False)
    return folder


@pytest.fixture(scope="module")
def popularity_ndcg(split: dict[str, pd.DataFrame]) -> float:
    recs = Popularity().fit(split["train"]).recommend_fold_in(split["test_fold_in"], k=100)
    return metrics.ndcg_at_k(recs, split["test"], 100)


@pytest.fixture(scope="module")
def torch_model(split: dict[str, pd.DataFrame]) -> VAECF:
    return VAECF(backend="torch", **SMALL).fit(
        split["train"], split["validation_fold_in"], split["validation"]
    )


@pytest.fixture(scope="module")
def tf_model(split: dict[str, pd.DataFrame]) -> VAECF:
    _tf()
    return VAECF(backend="tf", **SMALL).fit(split["train"], split["validation_fold_in"], split["validation"])


# --- pipeline pieces, by hand -------------------------------------------------------------------------


def test_seed_defaults_and_small_data_rule():
    config = VAECFConfig()
    assert (config.epochs, config.lr, config.batch_size) == (200, 1e-3, 10_000)
    assert (config.total_anneal_steps, config.anneal_cap, config.lam, config.hidden_dims) == (
        200_000,
        0.2,
        0.01,
        (600, 200),
    )
    # ML-100K's 750 training users: 10 batches would hold 75, below the paper's 500, so 2 steps of 375
    # (epoch_batches splits evenly); 200 · 2 = 400 steps, fewer than 1,000: β held at short_run_beta
    # from the second step (T = 1), no input dropout.
    small = adapt_to_data(config, 750)
    assert (small.batch_size, small.total_anneal_steps, small.keep_prob) == (500, 1, 1.0)
    assert [anneal_beta(s, small.total_anneal_steps, small.anneal_cap) for s in (0, 1, 399)] == [0, 0.5, 0.5]
    assert small.lam == pytest.approx(0.01 * 750 / 116_677)
    # Without the short-run part, β reaches 0.2 at the last step (t = 399, steps count from 0) when
    # T = 399 / 0.2 = 1,995 (the seed's 200,000 would stop at β = 0.002), and the paper's dropout stays.
    annealed = adapt_to_data(replace(config, short_run_steps=0), 750)
    assert (annealed.batch_size, annealed.total_anneal_steps, annealed.keep_prob) == (500, 1_995, 0.5)
    assert anneal_beta(399, annealed.total_anneal_steps, annealed.anneal_cap) == 0.2
    assert anneal_beta(398, annealed.total_anneal_steps, annealed.anneal_cap) < 0.2
    # Two workers: 500 users each a step, 1 global step of 1,000 an epoch, 200 in all: T = 199 / 0.2.
    two = adapt_to_data(replace(config, short_run_steps=0), 750, world_size=2)
    assert (two.batch_size, two.total_anneal_steps) == (500, 995)
    assert adapt_to_data(config, 750, world_size=2).total_anneal_steps == 1
    # Without the floor, 10 batches of 75: 2,000 steps (not short), T = 1,999 / 0.2 = 9,995.
    floorless = adapt_to_data(replace(config, min_batch_size=1), 750)
    assert (floorless.batch_size, floorless.total_anneal_steps, floorless.keep_prob) == (75, 9_995, 0.5)
    # 6,040 users (ML-1M): 10 batches of 604, above the floor.
    ml1m = adapt_to_data(config, 6_040)
    assert (ml1m.batch_size, ml1m.total_anneal_steps, ml1m.keep_prob, ml1m.anneal_cap) == (
        604,
        9_995,
        0.5,
        0.2,
    )
    # Four workers take 3 global steps an epoch, 600 in all, but the run is as long as one worker's
    # 2,000: not short, so dropout (which the backend is built with) and annealing stay together.
    ml1m_4 = adapt_to_data(config, 6_040, world_size=4)
    assert (ml1m_4.batch_size, ml1m_4.total_anneal_steps, ml1m_4.keep_prob) == (604, 2_995, 0.5)
    # Whatever the number of workers, a run is short or not as the 1-worker run is: the batch, dropout,
    # β's cap and λ agree with it (only the annealing length follows the global steps).
    for users in (483, 750, 6_040, 116_677):
        one = adapt_to_data(config, users)
        for world_size in (2, 4, 8):
            many = adapt_to_data(config, users, world_size)
            assert (many.batch_size, many.keep_prob, many.anneal_cap, many.lam) == (
                one.batch_size,
                one.keep_prob,
                one.anneal_cap,
                one.lam,
            ), (users, world_size)
    # ML-20M's 116,677 training users keep the seed's batch: 12 steps an epoch, 2,400 in all.
    large = adapt_to_data(config, 116_677)
    assert (large.batch_size, large.total_anneal_steps, large.lam) == (10_000, 11_995, 0.01)
    # A run long enough to reach the cap keeps the configured annealing.
    long_enough = replace(config, total_anneal_steps=1_000, short_run_steps=0)
    assert adapt_to_data(long_enough, 750).total_anneal_steps == 1_000


def test_anneal_beta_is_linear_then_capped():
    assert [anneal_beta(s, 1_000, 0.2) for s in (0, 100, 200, 900)] == [0.0, 0.1, 0.2, 0.2]


@pytest.mark.parametrize("cap", [0.2, 0.3, 0.5, 0.7, 1.0, 0.1 + 0.2])
def test_shortened_annealing_reaches_the_cap_at_the_last_step_not_before(cap: float):
    for steps in [2, 3, 7, 199, 200, 400, 2_000, 2_400, 46_799]:
        total = last_step_at_cap(steps, cap)
        assert anneal_beta(steps - 1, total, cap) == cap, (steps, cap, total)
        # The longest such T: one step more and the last step falls short of the cap.
        assert (steps - 1) / (total + 1) < cap, (steps, cap, total)


def test_epoch_batches_cover_every_user_once_with_equal_step_counts():
    parts = [epoch_batches(23, 5, epoch=3, seed=7, rank=r, world_size=2) for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 3  # ceil(23 / (5 · 2))
    everyone = np.concatenate([rows for part in parts for rows in part])
    assert sorted(everyone.tolist()) == list(range(23))
    assert [len(rows) for rows in parts[0]] == [4, 4, 4] and [len(rows) for rows in parts[1]] == [4, 4, 3]
    same = epoch_batches(23, 5, epoch=3, seed=7, rank=0, world_size=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts[0], same, strict=True))
    other_epoch = epoch_batches(23, 5, epoch=4, seed=7, rank=0, world_size=2)
    assert not np.array_equal(np.concatenate(parts[0]), np.concatenate(other_epoch))


def test_l2_normalised_rows_and_sparse_parts():
    x = sp.csr_matrix(np.array([[1, 1, 0, 1, 1], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]], np.float32))
    normalized = l2_normalize_rows(x)
    np.testing.assert_allclose(normalized.toarray(), [[0.5, 0.5, 0, 0.5, 0.5], [0] * 5, [0, 1, 0, 0, 0]])
    indices, values, shape = sparse_parts(normalized, np.array([2, 0]))
    assert indices.tolist() == [[0, 1], [1, 0], [1, 1], [1, 3], [1, 4]]
    np.testing.assert_allclose(values, [1, 0.5, 0.5, 0.5, 0.5])
    assert shape.tolist() == [2, 5]
    assert encoder_input(x, VAECFConfig(normalize_input=False)) is x  # the binary rows, as cornac feeds
    np.testing.assert_array_equal(encoder_input(x, VAECFConfig()).toarray(), normalized.toarray())


def test_metric_sums_by_hand():
    # 3 users × 120 items. u0 holds out items 0 and 5 and ranks them 1st and 3rd; u1 holds out item 2,
    # ranked 101st (outside every cut-off); u2 holds out nothing and is skipped.
    scores = -np.tile(np.arange(120, dtype=np.float64), (3, 1))
    scores[0, [0, 7, 5]] = [10, 9, 8]
    scores[1, 2] = -1000  # below all others
    scores[1, 119] = -np.inf  # a seen item
    heldout = sp.csr_matrix(([1.0, 1.0, 1.0], ([0, 0, 1], [0, 5, 2])), shape=(3, 120))
    ndcg0 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    expected = [ndcg0, 1.0, 1.0, 2]  # u0: Recall@20 = Recall@50 = 2 / min(R, 2); u1: 0
    np.testing.assert_allclose(metric_sums(scores, heldout), expected)


def test_bad_configs_name_the_problem():
    with pytest.raises(InvalidConfig, match=r"keep_prob=1.5 must be in \(0, 1\]"):
        VAECFConfig(keep_prob=1.5)
    with pytest.raises(InvalidConfig, match="backend='jax' must be 'tf' or 'torch'"):
        VAECF(backend="jax")
    with pytest.raises(InvalidConfig, match="use backend='tf' for Horovod"):
        VAECF(backend="torch").fit(pd.DataFrame({USER: [1, 1], ITEM: [1, 2]}), horovod=True)
    with pytest.raises(NotFitted, match=r"call VAECF\.fit\(train\) first"):
        VAECF(backend="torch").recommend([1])
    with pytest.raises(EmptySplit, match="train has no interactions"):
        VAECF(backend="torch").fit(pd.DataFrame({USER: [], ITEM: []}))


def test_missing_tensorflow_raises_missing_extra_and_torch_still_works():
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "import pandas as pd\n"
        "from recmodels.vae_cf import VAECF\n"
        "df = pd.DataFrame({'user_id': [1, 1, 2, 2], 'item_id': [1, 2, 2, 3]})\n"
        "VAECF(backend='torch', epochs=1, hidden_dims=(4, 2)).fit(df)\n"
        "VAECF(backend='tf').fit(df)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "MissingExtra: vae_cf with backend='tf' needs tensorflow" in out.stderr
    assert "bash deployments/install_tf_extra.sh" in out.stderr


def test_torch_step_equals_adam_on_the_loss_with_its_l2_term():
    """One step of the torch backend (L2 as Adam's weight decay 2λ on the weights, fused kernel) equals
    plain Adam on the objective of the module docstring, λ‖W‖² in the loss, with the same draws."""
    from recmodels._vae_cf_torch import MultVAE, build

    x = sp.csr_matrix(
        np.array([[1, 1, 0, 0, 1, 0, 1], [0, 1, 1, 0, 0, 0, 0], [1, 0, 0, 1, 1, 1, 0]], np.float32)
    )
    config = VAECFConfig(backend="torch", hidden_dims=(8, 4), keep_prob=1.0, lam=0.5, lr=0.01, seed=3)
    backend = build(config, l2_normalize_rows(x))
    # Three steps: Adam's first step is ±lr whatever the gradient's scale; later ones are not.
    loss_sum, users = backend.train_epoch([(np.arange(3), 0.1)] * 3)

    model = MultVAE(7, (8, 4), torch.Generator().manual_seed(3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    draws = torch.Generator().manual_seed(3)
    inputs = l2_normalize_rows(x)
    losses = []
    for _ in range(3):
        torch.rand(x.nnz, generator=draws)  # the backend's dropout draw (keep_prob = 1 keeps all)
        mu, logvar = model.encode(
            torch.as_tensor(inputs.indices.astype(np.int64)),
            torch.as_tensor(inputs.indptr[:-1].astype(np.int64)),
            torch.as_tensor(inputs.data),
        )
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=draws)
        nll = -(torch.as_tensor(x.toarray()) * torch.log_softmax(model.decode(z), dim=1)).sum(dim=1).mean()
        kl = (0.5 * (-logvar + logvar.exp() + mu.square() - 1)).sum(dim=1).mean()
        loss = nll + 0.1 * kl + 0.5 * sum(w.square().sum() for w in model.weights())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert loss_sum / users == pytest.approx(np.mean(losses), rel=1e-5)
    for ours, reference in zip(backend.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


# --- the protocol on MovieLens-100K -------------------------------------------------------------------


def test_torch_beats_popularity_and_keeps_the_best_epoch(torch_model, split, popularity_ndcg):
    test = torch_model.evaluate(split["test_fold_in"], split["test"])
    assert test["ndcg_at_100"] > popularity_ndcg + 0.04, (test, popularity_ndcg)
    validated = [h for h in torch_model.history_ if "validation_ndcg_at_100" in h]
    assert [h["epoch"] for h in validated] == [2, 4, 6]
    best = max(validated, key=lambda h: h["validation_ndcg_at_100"])
    assert torch_model.best_epoch_ == best["epoch"]
    # The kept weights are the best epoch's: re-evaluating validation reproduces its score.
    again = torch_model.evaluate(split["validation_fold_in"], split["validation"])
    assert again["ndcg_at_100"] == pytest.approx(best["validation_ndcg_at_100"], abs=1e-6)
    # The small data rule reaches the backend: its L2 weight is the scaled λ.
    assert torch_model._backend.config.lam == pytest.approx(0.01 * 750 / 116_677)
    losses = [h["loss"] for h in torch_model.history_]
    assert losses[-1] < losses[0]
    assert torch_model.history_[-1]["beta"] == 0.2  # the shortened annealing reaches the cap at the last step


def test_early_stopping_is_the_fixed_run_cut_at_the_plateau(split):
    """With patience, training is the fixed-epoch run's up to the stop (same losses, bit for bit), stops
    at the first epoch ``patience`` epochs after the best so far, and keeps that best epoch's weights."""
    # A learning rate high enough for the validation curve to dip within a few epochs; a short run (β held,
    # no annealing), so that its first epochs do not depend on ``epochs``.
    params = {**SMALL, "epochs": 8, "validation_step": 1, "lr": 3e-2, "short_run_steps": 1_000}
    fixed = VAECF(backend="torch", patience=None, **params).fit(
        split["train"], split["validation_fold_in"], split["validation"]
    )
    early = VAECF(backend="torch", patience=1, **params).fit(
        split["train"], split["validation_fold_in"], split["validation"]
    )
    assert fixed.epochs_trained_ == 8
    curve = [h["validation_ndcg_at_100"] for h in fixed.history_]
    # Where the rule stops on the fixed run's curve: the first epoch that is not a new best.
    stop = next(epoch for epoch in range(2, 9) if curve[epoch - 1] <= max(curve[: epoch - 1]))
    assert early.epochs_trained_ == stop < 8
    assert early.history_ == [
        {**h, "epoch_seconds": e["epoch_seconds"], "users_per_second": e["users_per_second"]}
        | {"validation_seconds": e["validation_seconds"]}
        for h, e in zip(fixed.history_[:stop], early.history_, strict=True)
    ]
    assert early.best_epoch_ == int(np.argmax(curve[:stop])) + 1 == early.selection_.best_epoch
    again = early.evaluate(split["validation_fold_in"], split["validation"])
    assert again["ndcg_at_100"] == pytest.approx(max(curve[:stop]), abs=1e-6)


def test_recommendations_exclude_history_and_match_evaluate(torch_model, split):
    fold_in = split["test_fold_in"]
    recs = torch_model.recommend_fold_in(fold_in, k=100)
    assert list(recs.columns) == [USER, ITEM, "score", "rank"]
    assert recs.groupby(USER).size().eq(100).all() and recs[USER].nunique() == fold_in[USER].nunique()
    assert recs.merge(fold_in[[USER, ITEM]]).empty
    assert (recs.groupby(USER)["score"].diff().dropna() <= 0).all()
    # The DataFrame path (metrics.ndcg_at_k) agrees with the dense path of evaluate().
    dense = torch_model.evaluate(fold_in, split["test"])["ndcg_at_100"]
    assert metrics.ndcg_at_k(recs, split["test"], 100) == pytest.approx(dense, abs=1e-9)
    train = split["train"]
    user = int(train[USER].iloc[0])
    own = torch_model.recommend([user, -5], k=10)
    assert set(own[USER]) == {user} and own[ITEM].isin(train.loc[train[USER] == user, ITEM]).sum() == 0
    with_seen = torch_model.recommend([user], k=10, exclude_seen=False)
    assert with_seen[ITEM].isin(train.loc[train[USER] == user, ITEM]).any()


def test_tf_and_torch_reach_similar_ndcg(tf_model, torch_model, split, popularity_ndcg):
    tf_test = tf_model.evaluate(split["test_fold_in"], split["test"])
    torch_test = torch_model.evaluate(split["test_fold_in"], split["test"])
    assert tf_test["ndcg_at_100"] > popularity_ndcg + 0.04
    assert tf_test["ndcg_at_100"] == pytest.approx(torch_test["ndcg_at_100"], abs=0.03), (tf_test, torch_test)


def test_saved_models_reproduce_the_recommendations(tf_model, torch_model, split, tmp_path):
    tf = _tf()
    from recmodels._vae_cf_torch import MultVAE

    fold_in = split["test_fold_in"]
    users = IdIndex.from_values(fold_in[USER])
    items = IdIndex(np.load(tf_model.save(tmp_path / "tf").parent / "item_ids.npy"))
    seen = binary_matrix(fold_in, users, items)
    config = tf_model.fitted_config_
    assert config.normalize_input == torch_model.fitted_config_.normalize_input
    inputs = encoder_input(seen, config)  # the rows as the logged normalize_input says

    def top_10(scores: np.ndarray) -> pd.DataFrame:
        mask_seen(scores, seen)
        return recommendations_frame(users.ids, *top_k_dense(scores, 10), items)

    serve = tf.saved_model.load(str(tmp_path / "tf" / "saved_model")).signatures["serving_default"]
    parts = dict(
        zip(("indices", "values", "dense_shape"), sparse_parts(inputs, np.arange(len(users))), strict=True)
    )
    served = top_10(serve(**{k: tf.constant(v) for k, v in parts.items()})["logits"].numpy())
    pd.testing.assert_frame_equal(served, tf_model.recommend_fold_in(fold_in, k=10), rtol=1e-5)

    module = MultVAE(len(items), SMALL["hidden_dims"], torch.Generator())
    module.load_state_dict(torch.load(torch_model.save(tmp_path / "torch"), weights_only=True))
    with torch.no_grad():
        mu, _ = module.encode(
            *(
                torch.as_tensor(a)
                for a in (inputs.indices.astype(np.int64), inputs.indptr[:-1].astype(np.int64), inputs.data)
            )
        )
        loaded = top_10(module.decode(mu).numpy())
    pd.testing.assert_frame_equal(loaded, torch_model.recommend_fold_in(fold_in, k=10), rtol=1e-5)


@pytest.mark.parametrize("backend", ["tf", "torch"])
def test_mixed_precision_on_cpu_trains_in_bfloat16(backend, split, popularity_ndcg):
    if backend == "tf":
        _tf()
    model = VAECF(backend=backend, use_amp=True, **SMALL).fit(
        split["train"], split["validation_fold_in"], split["validation"]
    )
    if backend == "tf":
        assert {layer.compute_dtype for layer in model._backend.model.encoder} == {"bfloat16"}
        assert model._backend.model.encoder[0].kernel.dtype == "float32"  # float32 master weights
    else:
        assert model._backend.amp_dtype == torch.bfloat16
    test = model.evaluate(split["test_fold_in"], split["test"])
    assert test["ndcg_at_100"] > popularity_ndcg + 0.03, test


# --- the worker: one process in-process, two under horovodrun ------------------------------------------


def _worker_args(prepared: Path, output: Path, backend: str = "tf") -> list[str]:
    params = json.dumps({**SMALL, "backend": backend})
    return ["--prepared", str(prepared), "--output", str(output), "--params", params]


@pytest.fixture(scope="module")
def one_worker(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    _tf()
    from tasks import vae_cf_worker

    output = tmp_path_factory.mktemp("one")
    uri = f"sqlite:///{output / 'mlflow.db'}"
    assert (
        vae_cf_worker.main([*_worker_args(prepared, output), "--tracking-uri", uri, "--tag", "size=100k"])
        == 0
    )
    return output, uri


def test_worker_writes_results_and_logs_to_mlflow(one_worker, split):
    from mlflow.tracking import MlflowClient

    output, uri = one_worker
    results = json.loads((output / "results.json").read_text())
    assert results["world_size"] == 1 and 1 <= results["best_epoch"] <= 6
    recs = pd.read_parquet(output / "recommendations.parquet")
    assert metrics.ndcg_at_k(recs, split["test"], 100) == pytest.approx(results["ndcg_at_100"], abs=1e-9)
    assert (output / "model" / "saved_model" / "saved_model.pb").exists()
    assert (output / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"

    client = MlflowClient(uri)
    run = client.get_run(results["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["size"] == "100k"
    # The configured batch, and the small data rule's (10 steps of 75 users an epoch) as fitted.*
    assert run.data.params["hidden_dims"] == "(200, 50)" and run.data.params["batch_size"] == "10000"
    assert run.data.params["fitted.batch_size"] == "75" and results["adapted_params"]["batch_size"] == 75
    assert run.data.metrics["ndcg_at_100"] == pytest.approx(results["ndcg_at_100"])
    curve = client.get_metric_history(run.info.run_id, "validation_ndcg_at_100")
    assert sorted(m.step for m in curve) == [2, 4, 6]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 6
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"learning_curve.png", "results.json", "model"} <= artifacts


def test_two_horovod_workers_stop_early_together(prepared, tmp_path):
    """Early stopping under Horovod: both workers leave the training loop at the same epoch (a worker
    still training would wait in an allreduce that never comes), and rank 0 reports the stop."""
    _tf()
    pytest.importorskip(
        "horovod.tensorflow", reason="needs the [tf] extra: bash deployments/install_tf_extra.sh"
    )
    from tasks.vae_cf_worker import command

    params = {**SMALL, "backend": "tf", "epochs": 10, "validation_step": 1, "lr": 3e-2}
    params |= {"short_run_steps": 1_000, "patience": 1}
    args = ["--prepared", str(prepared), "--output", str(tmp_path), "--params", json.dumps(params)]
    out = subprocess.run(
        command(2, [*args, "--threads", "1"]), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    curve = [h["validation_ndcg_at_100"] for h in results["history"]]
    assert results["epochs_trained"] == len(curve) < 10, curve
    assert curve[-1] <= max(curve[:-1]) and curve[:-1] == sorted(curve[:-1]), curve  # the first dip
    assert results["best_epoch"] == len(curve) - 1


def test_two_horovod_workers_match_one(one_worker, prepared, tmp_path):
    _tf()
    pytest.importorskip(
        "horovod.tensorflow", reason="needs the [tf] extra: bash deployments/install_tf_extra.sh"
    )
    from tasks.vae_cf_worker import command

    cmd = command(2, [*_worker_args(prepared, tmp_path), "--threads", "1"])
    assert cmd[:7] == ["horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", sys.executable]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    two = json.loads((tmp_path / "results.json").read_text())
    one = json.loads((one_worker[0] / "results.json").read_text())
    assert two["world_size"] == 2
    # Same split and epochs; twice the global batch at twice the learning rate, half the steps.
    assert two["adapted_params"]["batch_size"] == one["adapted_params"]["batch_size"] == 75
    assert two["ndcg_at_100"] == pytest.approx(one["ndcg_at_100"], abs=0.03), (one, two)
