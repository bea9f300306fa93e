"""ImplicitFactorization: Spotlight's losses and gradients, learning on MovieLens-100K, the fit/recommend contract."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from recmodels import implicit_mf  # noqa: E402
from recmodels.errors import (  # noqa: E402
    EmptySplit,
    GPUUnavailable,
    InvalidConfig,
    MissingColumns,
    NotFitted,
)
from recmodels.implicit_mf import (  # noqa: E402
    BilinearNet,
    DenseAdam,
    ImplicitFactorization,
    mean_of_batch_means,
    minibatch_gradient,
    minibatches,
    pairwise_loss,
    pointwise_loss,
)
from recmodels.implicit_mf_cpu import CompiledEpochs  # noqa: E402
from recmodels.metrics import map_at_k, ndcg_at_k  # noqa: E402
from recmodels.popularity import Popularity  # noqa: E402
from recmodels.preprocessing import Split, split_random, transpose  # noqa: E402

LOSSES = ("pointwise", "bpr", "hinge", "adaptive_hinge")
CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ml100k(mirror: Path) -> pd.DataFrame:
    return pd.read_csv(
        mirror / "ml-100k" / "u.data", sep="\t", names=["user_id", "item_id", "rating", "timestamp"]
    )


@pytest.fixture(scope="module")
def ml100k_split(ml100k: pd.DataFrame) -> Split:
    return split_random(ml100k, (0.8, 0.2), seed=42)


def small_train() -> pd.DataFrame:
    """4 users × 5 items with raw ids that are not 0..n-1; user 40 has seen every item."""
    pairs = [(10, 7), (10, 8), (20, 8), (20, 9), (20, 11), (30, 7), (30, 12)] + [
        (40, i) for i in (7, 8, 9, 11, 12)
    ]
    users, items = zip(*pairs, strict=True)
    return pd.DataFrame({"user_id": users, "item_id": items, "rating": 1.0, "timestamp": 0})


def spotlight_loss(loss: str, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """spotlight/losses.py, transcribed: negative is (n, B); adaptive hinge takes torch.max over n."""
    if loss == "pointwise":
        return (1.0 - torch.sigmoid(positive) + torch.sigmoid(negative[0])).mean()
    if loss == "bpr":
        return (1.0 - torch.sigmoid(positive - negative[0])).mean()
    highest = negative[0] if loss == "hinge" else torch.max(negative, 0)[0]
    return torch.clamp(highest - positive + 1.0, 0.0).mean()


@pytest.mark.parametrize("loss", LOSSES)
def test_minibatch_gradient_equals_autograd_of_spotlights_bilinear_net(loss: str) -> None:
    """Loss and dense gradient of one minibatch equal autograd through Spotlight's forward and loss.

    Repeated users and items (also an item that is positive and negative) check the accumulation.
    """
    gen = torch.Generator().manual_seed(3)
    n_users, n_items, dim = 4, 6, 5
    weight = torch.randn(n_users + n_items, dim + 1, generator=gen, dtype=torch.float64)
    users = torch.tensor([0, 1, 1, 3, 0, 2])
    positives = n_users + torch.tensor([0, 2, 2, 5, 1, 4])
    n_negatives = 3 if loss == "adaptive_hinge" else 1
    negatives = n_users + torch.randint(0, n_items, (n_negatives, len(users)), generator=gen)
    negatives[0, 0] = positives[0]

    reference = weight.clone().requires_grad_(True)
    p, b = reference[:n_users, :-1], reference[:n_users, -1]
    q, c = reference[n_users:, :-1], reference[n_users:, -1]

    def bilinear(u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:  # spotlight BilinearNet.forward
        return (p[u] * q[i]).sum(-1) + b[u] + c[i]

    expected = spotlight_loss(
        loss, bilinear(users, positives - n_users), bilinear(users, negatives - n_users)
    )
    expected.backward()

    grad = torch.full_like(weight, 99.0)
    start = weight.clone()
    losses = minibatch_gradient(weight, grad, torch.cat([users[None], positives[None], negatives]), loss)
    assert torch.equal(weight, start)  # the in-place arithmetic works on the gathered copy
    assert losses.shape == users.shape
    assert losses.mean().item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(grad, reference.grad, rtol=1e-12, atol=1e-12)


def test_losses_and_derivatives_at_zero_scores_hand_computed() -> None:
    """All scores 0: σ = 1/2, σ' = 1/4, hinge margin 1 (batch of 2, so derivatives are halved)."""
    zero = torch.zeros(2)
    expected = {"bpr": (0.5, 0.125), "hinge": (1.0, 0.5), "adaptive_hinge": (1.0, 0.5)}  # loss, γ
    for loss, (value, gamma) in expected.items():
        got = pairwise_loss(loss, zero)
        assert [got[0].tolist(), got[1].tolist()] == [[value] * 2, [gamma] * 2], loss
    losses, derivative = pointwise_loss(torch.zeros(2, 2))
    assert [losses.tolist(), derivative.tolist()] == [[1.0, 1.0], [[-0.125, -0.125], [0.125, 0.125]]]


def test_hinge_derivative_is_one_at_zero_margin_and_zero_below() -> None:
    """torch.clamp's gradient, as Spotlight's hinge losses get it: 1 where 1 + x >= 0, else 0 (÷ B = 4)."""
    losses, gamma = pairwise_loss("hinge", torch.tensor([-3.0, -1.0, 0.0, 2.0]))
    assert losses.tolist() == [0.0, 0.0, 1.0, 3.0]
    assert gamma.tolist() == [0.0, 0.25, 0.25, 0.25]


def test_epoch_loss_is_the_mean_of_minibatch_means() -> None:
    losses = torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0])  # batches of 2: means 2, 6 and 9
    assert mean_of_batch_means(losses, 2) == pytest.approx((2 + 6 + 9) / 3)
    assert mean_of_batch_means(losses[:4], 2) == pytest.approx(4.0)


def test_minibatches_are_contiguous_column_blocks() -> None:
    index = torch.arange(21).view(3, 7)
    blocks = minibatches(index, 3)
    assert [b.tolist() for b in blocks] == [
        index[:, :3].tolist(),
        index[:, 3:6].tolist(),
        index[:, 6:].tolist(),
    ]
    assert all(b.is_contiguous() for b in blocks)
    assert [b.tolist() for b in minibatches(index[:, :6], 3)] == [
        index[:, :3].tolist(),
        index[:, 3:6].tolist(),
    ]


@pytest.mark.parametrize("loss", LOSSES)
def test_bfloat16_batch_arithmetic_stays_close_to_float32(loss: str) -> None:
    gen = torch.Generator().manual_seed(0)
    net = BilinearNet(50, 80, 16, gen)
    items = 6 if loss == "adaptive_hinge" else 2
    index = torch.cat(
        [torch.randint(0, 50, (1, 64), generator=gen), torch.randint(50, 130, (items, 64), generator=gen)]
    )
    exact, mixed = torch.empty_like(net.weight), torch.empty_like(net.weight)
    with torch.no_grad():
        value = minibatch_gradient(net.weight, exact, index, loss)
        value_bf16 = minibatch_gradient(net.weight, mixed, index, loss, torch.bfloat16)
    assert mixed.dtype == torch.float32
    assert value_bf16.float().mean().item() == pytest.approx(value.mean().item(), rel=1e-2)
    torch.testing.assert_close(mixed, exact, rtol=2e-2, atol=1e-4)


@pytest.mark.parametrize("l2", [0.0, 1e-3])
def test_dense_adam_is_torch_adam_with_weight_decay(l2: float) -> None:
    """Spotlight's optimizer: torch.optim.Adam(lr, weight_decay=l2) over every row, at every step."""
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(7, 3, generator=gen)
    reference = torch.nn.Parameter(start.clone())
    torch_adam = torch.optim.Adam([reference], lr=0.05, weight_decay=l2)
    ours = DenseAdam(torch.nn.Parameter(start.clone()), 0.05, l2)
    for _ in range(5):
        grad = torch.randn(7, 3, generator=gen) * (
            torch.rand(7, 1, generator=gen) < 0.5
        )  # rows left untouched
        reference.grad = grad.clone()
        torch_adam.step()
        ours.grad.copy_(grad)
        ours.step()
    torch.testing.assert_close(ours.weight, reference, rtol=1e-6, atol=1e-7)


def _tensor_epochs(start: torch.Tensor, index: torch.Tensor, loss: str, l2: float, epochs: int) -> DenseAdam:
    optimizer = DenseAdam(torch.nn.Parameter(start.clone()), 0.05, l2)
    with torch.no_grad():
        for _ in range(epochs):
            for batch in minibatches(index, 32):
                minibatch_gradient(optimizer.weight, optimizer.grad, batch, loss)
                optimizer.step()
    return optimizer


@pytest.mark.parametrize("l2", [0.0, 1e-3])
@pytest.mark.parametrize("loss", LOSSES)
def test_compiled_cpu_epoch_is_the_tensor_steps_to_float32_rounding(loss: str, l2: float) -> None:
    """recmodels.implicit_mf_cpu against minibatch_gradient + DenseAdam on the same index, two epochs (the
    step count carries over) with a last short batch, users and items repeated within batches and rows a
    step does not touch (Adam's moments still decay there): as close to float64 tensor steps as float32
    tensor steps are."""
    gen = torch.Generator().manual_seed(0)
    start = BilinearNet(30, 50, 8, gen).weight.detach()
    items = 6 if loss == "adaptive_hinge" else 2
    index = torch.cat(
        [torch.randint(0, 25, (1, 150), generator=gen), torch.randint(30, 70, (items, 150), generator=gen)]
    )  # users 25..29 and items 70..79 are never drawn
    exact = _tensor_epochs(start.double(), index, loss, l2, 2)
    tensor_error = (_tensor_epochs(start, index, loss, l2, 2).weight.double() - exact.weight).abs().max()
    compiled = CompiledEpochs(start.numpy().copy(), loss, 32, 0.05, l2)
    losses = np.concatenate([compiled.epoch(index.numpy()) for _ in range(2)])

    assert compiled.steps == exact.steps.item() == 10
    assert (
        torch.from_numpy(compiled.weight).double() - exact.weight
    ).abs().max() <= 1.5 * tensor_error + 1e-7
    torch.testing.assert_close(
        torch.from_numpy(compiled.exp_avg).double(), exact.exp_avg, rtol=1e-4, atol=1e-7
    )
    torch.testing.assert_close(
        torch.from_numpy(compiled.exp_avg_sqrt).double() ** 2, exact.exp_avg_sq, rtol=1e-4, atol=1e-10
    )
    assert losses.shape == (300,)  # each positive's loss; the first batch's from the starting weights
    torch.testing.assert_close(
        torch.from_numpy(losses[:32]).double(),
        minibatch_gradient(
            start.double(), torch.empty_like(start.double()), index[:, :32].contiguous(), loss
        ),
        rtol=1e-5,
        atol=1e-6,
    )
    never_drawn = torch.from_numpy(compiled.weight[70:]) == start[70:]
    assert never_drawn.all() if l2 == 0 else not never_drawn[:, :-1].any()  # only weight decay moves them
    assert not compiled.grad.any() and not compiled.touched.any()


def test_compiled_epoch_in_chunks_is_bit_identical_to_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The epoch runs in kernel calls of whole minibatches (so that Ctrl-C is acted on within one: flows/
    interrupts.py): 3 calls of 2 batches and a short one give the same bits as a single call."""
    from recmodels import implicit_mf_cpu

    gen = torch.Generator().manual_seed(1)
    start = BilinearNet(30, 50, 8, gen).weight.detach().numpy()
    index = torch.cat(
        [torch.randint(0, 30, (1, 150), generator=gen), torch.randint(30, 80, (2, 150))]
    ).numpy()
    whole = CompiledEpochs(start.copy(), "bpr", 32, 0.05, 1e-3)
    whole_losses = whole.epoch(index)
    monkeypatch.setattr(implicit_mf_cpu, "CHUNK_POSITIVES", 64)  # 2 minibatches of 32 per call
    chunked = CompiledEpochs(start.copy(), "bpr", 32, 0.05, 1e-3)
    chunked_losses = chunked.epoch(index)
    assert chunked.steps == whole.steps == 5
    np.testing.assert_array_equal(chunked_losses, whole_losses)
    for name in ("weight", "exp_avg", "exp_avg_sqrt"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))


def test_initialisation_follows_spotlight_layers() -> None:
    """ScaledEmbedding: N(0, (1/d)²) factors; ZeroEmbedding: zero biases."""
    net = BilinearNet(300, 500, 8, torch.Generator().manual_seed(0))
    factors = net.weight[:, :-1]
    assert torch.count_nonzero(net.weight[:, -1]) == 0
    assert factors.mean().item() == pytest.approx(0.0, abs=0.005)
    assert factors.std().item() == pytest.approx(1 / 8, rel=0.03)


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_decreases_over_epochs(loss: str, ml100k_split: Split) -> None:
    model = ImplicitFactorization(loss=loss, n_iter=3, batch_size=1024, seed=0, device="cpu").fit(
        ml100k_split.train
    )
    losses = [h["loss"] for h in model.history_]
    assert losses[0] > losses[1] > losses[2], losses
    assert [h["epoch"] for h in model.history_] == [1, 2, 3]
    for h in model.history_:
        assert h["interactions_per_second"] == pytest.approx(len(ml100k_split.train) / h["epoch_seconds"])


def _map_ndcg(model: object, split: Split) -> tuple[float, float]:
    recs = model.recommend(split.test["user_id"].unique(), k=10)
    return map_at_k(recs, split.test), ndcg_at_k(recs, split.test)


def test_beats_popularity_on_movielens_100k(ml100k_split: Split) -> None:
    """Seen in development: MAP@10 0.090 vs 0.053, NDCG@10 0.31 vs 0.22."""
    model = ImplicitFactorization(n_iter=5, batch_size=1024, seed=0, device="cpu").fit(ml100k_split.train)
    map_mf, ndcg_mf = _map_ndcg(model, ml100k_split)
    map_pop, ndcg_pop = _map_ndcg(Popularity().fit(ml100k_split.train), ml100k_split)
    assert map_mf > 1.4 * map_pop
    assert ndcg_mf > 1.2 * ndcg_pop


def test_transposed_run_end_to_end(ml100k: pd.DataFrame) -> None:
    """Items recommend users (the seed's "transpose & split"): valid ids, no seen pairs, beats popularity."""
    split = split_random(transpose(ml100k), (0.8, 0.2), seed=42)
    model = ImplicitFactorization(n_iter=5, batch_size=1024, seed=0, device="cpu").fit(split.train)
    recs = model.recommend(k=10)
    assert set(recs["user_id"]) == set(split.train["user_id"])  # ML items
    assert set(recs["item_id"]) <= set(ml100k["user_id"])  # ML users
    seen = recs.merge(split.train[["user_id", "item_id"]].drop_duplicates(), on=["user_id", "item_id"])
    assert seen.empty
    map_mf, ndcg_mf = _map_ndcg(model, split)
    map_pop, ndcg_pop = _map_ndcg(Popularity().fit(split.train), split)
    assert map_mf > 1.15 * map_pop
    assert ndcg_mf > 1.15 * ndcg_pop


@pytest.fixture(scope="module")
def small_model() -> ImplicitFactorization:
    return ImplicitFactorization(n_iter=2, embedding_dim=4, batch_size=3, seed=1, device="cpu").fit(
        small_train()
    )


def test_recommend_ranks_every_unseen_item_by_the_modules_scores(small_model: ImplicitFactorization) -> None:
    train = small_train()
    recs = small_model.recommend(k=10)
    assert list(recs.columns) == ["user_id", "item_id", "score", "rank"]
    seen = train.groupby("user_id")["item_id"].apply(set)
    for user in (10, 20, 30):
        mine = recs[recs["user_id"] == user]
        assert set(mine["item_id"]) == {7, 8, 9, 11, 12} - seen[user]  # k > unseen: all of them
        assert mine["rank"].tolist() == list(range(1, len(mine) + 1))
        assert mine["score"].is_monotonic_decreasing
        u = torch.tensor(small_model.users_.positions(np.array([user])))
        i = torch.tensor(small_model.items_.positions(mine["item_id"].to_numpy()))
        with torch.no_grad():
            expected = small_model.module_(u, i).double().numpy()
        np.testing.assert_allclose(mine["score"].to_numpy(), expected, rtol=1e-6)
    assert 40 not in set(recs["user_id"])  # has seen everything


def test_recommend_filters_users_and_can_keep_seen(small_model: ImplicitFactorization) -> None:
    recs = small_model.recommend([30, 999, 10, 30], k=2, exclude_seen=False)
    assert recs["user_id"].tolist() == [30, 30, 10, 10]
    assert small_model.recommend([999]).empty
    full = small_model.recommend([40], k=5, exclude_seen=False)
    assert sorted(full["item_id"]) == [7, 8, 9, 11, 12]


def test_recommend_blocks_give_the_same_lists(
    small_model: ImplicitFactorization, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = small_model.recommend(k=3)
    monkeypatch.setattr(implicit_mf, "SCORE_BLOCK_ELEMENTS", 6)  # one user per block
    pd.testing.assert_frame_equal(small_model.recommend(k=3), whole)


def test_same_seed_same_model_other_seed_other_model() -> None:
    def fit(seed: int) -> ImplicitFactorization:
        return ImplicitFactorization(n_iter=2, embedding_dim=4, batch_size=2, seed=seed, device="cpu").fit(
            small_train()
        )

    first, again, other = fit(5), fit(5), fit(6)
    torch.testing.assert_close(first.module_.weight, again.module_.weight, rtol=0, atol=0)
    assert [h["loss"] for h in first.history_] == [h["loss"] for h in again.history_]
    assert not torch.equal(first.module_.weight, other.module_.weight)


def test_module_round_trips_through_torch_save(small_model: ImplicitFactorization, tmp_path: Path) -> None:
    """mlflow.pytorch.log_model pickles the module with torch.save; it must load and score the same."""
    torch.save(small_model.module_, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    users, items = torch.tensor([0, 1, 2]), torch.tensor([4, 0, 3])
    torch.testing.assert_close(loaded(users, items), small_model.module_(users, items))


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"loss": "warp"}, "loss='warp'"),
        ({"n_iter": 0}, "n_iter=0"),
        ({"embedding_dim": 0}, "embedding_dim=0"),
        ({"batch_size": -1}, "batch_size=-1"),
        ({"num_negatives": 0}, "num_negatives=0"),
        ({"learning_rate": 0.0}, "learning_rate=0.0"),
        ({"l2": -1e-3}, "l2=-0.001"),
        ({"device": "gpu:0"}, "device='gpu:0'"),
    ],
)
def test_bad_parameters_raise_invalid_config(params: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidConfig, match=named.replace("(", r"\(")):
        ImplicitFactorization(**params)


def test_diverging_training_raises_with_the_fix(ml100k_split: Split) -> None:
    model = ImplicitFactorization(n_iter=1, batch_size=4096, learning_rate=1e30, seed=0, device="cpu")
    with pytest.raises(InvalidConfig, match="lower learning_rate"):
        model.fit(ml100k_split.train)


def test_bad_input_raises() -> None:
    model = ImplicitFactorization(device="cpu")
    with pytest.raises(NotFitted, match="fit"):
        model.recommend()
    with pytest.raises(EmptySplit, match="no rows"):
        model.fit(small_train().iloc[:0])
    with pytest.raises(MissingColumns, match="item_id"):
        model.fit(small_train().drop(columns="item_id"))


@pytest.mark.skipif(CUDA, reason="checks the error raised without CUDA")
def test_cuda_without_gpu_raises_gpu_unavailable() -> None:
    with pytest.raises(GPUUnavailable, match="device='auto' or 'cpu'"):
        ImplicitFactorization(device="cuda")
    assert ImplicitFactorization().fit(small_train()).module_.weight.device.type == "cpu"  # auto


def test_without_torch_the_module_imports_and_the_model_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from recmodels.errors import MissingExtra\n"
        "from recmodels.implicit_mf import ImplicitFactorization\n"
        "try:\n    ImplicitFactorization()\nexcept MissingExtra as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install -e '.[torch]'" in out.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("mixed_precision", [False, True])
def test_gpu_training_matches_cpu_quality(ml100k_split: Split, mixed_precision: bool) -> None:
    params = {"n_iter": 5, "batch_size": 1024, "seed": 0}
    gpu = ImplicitFactorization(device="cuda", mixed_precision=mixed_precision, **params).fit(
        ml100k_split.train
    )
    assert gpu.module_.weight.device.type == "cuda"
    cpu = ImplicitFactorization(device="cpu", **params).fit(ml100k_split.train)
    map_gpu, ndcg_gpu = _map_ndcg(gpu, ml100k_split)
    map_cpu, ndcg_cpu = _map_ndcg(cpu, ml100k_split)
    assert map_gpu == pytest.approx(map_cpu, rel=0.15)
    assert ndcg_gpu == pytest.approx(ndcg_cpu, rel=0.1)
