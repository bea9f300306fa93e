"""The checkpoint contract of recmodels/checkpoint.py, model by model: a fit resumed from the state of an
earlier epoch ends exactly where an uninterrupted fit ends (CPU), and the callback sees every epoch once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recmodels import checkpoint
from recmodels.errors import CheckpointMismatch

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def ml100k(mirror: Path) -> pd.DataFrame:
    return pd.read_csv(
        mirror / "ml-100k" / "u.data", sep="\t", names=["user_id", "item_id", "rating", "timestamp"]
    )


def fit_with_snapshots(model: Any, *args: Any, **kwargs: Any) -> tuple[list[dict], dict[int, bytes]]:
    """Fit, recording every epoch's record and each epoch's state as stored bytes."""
    records: list[dict] = []
    states: dict[int, bytes] = {}

    def on_epoch_end(record: dict) -> None:
        records.append(dict(record))
        states[record["epoch"]] = checkpoint.dumps(model.training_state())

    model.fit(*args, on_epoch_end=on_epoch_end, **kwargs)
    return records, states


@pytest.mark.parametrize("mixed_precision", [False, True], ids=["compiled", "tensor-bf16"])
def test_implicit_mf_resumed_fit_equals_uninterrupted(ml100k: pd.DataFrame, mixed_precision: bool) -> None:
    from recmodels.implicit_mf import ImplicitFactorization

    def model() -> ImplicitFactorization:
        return ImplicitFactorization(n_iter=4, seed=3, device="cpu", mixed_precision=mixed_precision)

    whole = model()
    records, states = fit_with_snapshots(whole, ml100k)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records == whole.history_

    resumed = model()
    later, _ = fit_with_snapshots(resumed, ml100k, resume_from=checkpoint.loads(states[2]))
    assert [r["epoch"] for r in later] == [3, 4]  # only the epochs left
    torch.testing.assert_close(resumed.module_.weight, whole.module_.weight, rtol=0, atol=0)
    assert [r["loss"] for r in resumed.history_] == [r["loss"] for r in whole.history_]
    pd.testing.assert_frame_equal(resumed.recommend(k=10), whole.recommend(k=10))
    # The snapshot taken at epoch 2 did not move with the training that followed it.
    assert checkpoint.loads(states[2])["epoch"] == 2


def test_implicit_mf_refuses_a_state_of_other_parameters(ml100k: pd.DataFrame) -> None:
    from recmodels.implicit_mf import ImplicitFactorization

    model = ImplicitFactorization(n_iter=1, seed=3, device="cpu")
    model.fit(ml100k)
    with pytest.raises(CheckpointMismatch, match="embedding_dim"):
        ImplicitFactorization(n_iter=2, embedding_dim=8, device="cpu").fit(
            ml100k, resume_from=model.training_state()
        )


def test_check_state_names_what_differs() -> None:
    state = {"format": checkpoint.STATE_FORMAT, "model": "m", "n_items": 3}
    checkpoint.check_state(state, "m", n_items=3)
    with pytest.raises(CheckpointMismatch, match="n_items is 3, this fit has 4"):
        checkpoint.check_state(state, "m", n_items=4)
    assert checkpoint.loads(checkpoint.dumps({"a": np.arange(3)}))["a"].tolist() == [0, 1, 2]


@pytest.fixture(scope="module")
def strong_split(ml100k: pd.DataFrame) -> dict[str, pd.DataFrame]:
    from recmodels import preprocessing

    df = preprocessing.filter_min_interactions(preprocessing.to_implicit(ml100k), 5, 0)
    return preprocessing.split_strong_generalization(df, n_heldout_users=90).frames()


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_vae_cf_resumed_fit_equals_uninterrupted(strong_split: dict[str, pd.DataFrame], backend: str) -> None:
    """Validation every 2 epochs keeps a best epoch (its weights in the state); resumed at epoch 3."""
    if backend == "tf":  # two threads, as tests/test_vae_cf.py sets them (TF fixes them when it starts)
        tf = pytest.importorskip(
            "tensorflow", reason="needs the [tf] extra: bash deployments/install_tf_extra.sh"
        )
        if not tf.config.threading.get_intra_op_parallelism_threads():
            tf.config.threading.set_intra_op_parallelism_threads(2)
            tf.config.threading.set_inter_op_parallelism_threads(1)
    from recmodels.vae_cf import VAECF

    data = (strong_split["train"], strong_split["validation_fold_in"], strong_split["validation"])
    config = {"backend": backend, "epochs": 5, "hidden_dims": (100, 20), "validation_step": 2, "seed": 4}
    whole = VAECF(**config)
    records, states = fit_with_snapshots(whole, *data)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]

    resumed = VAECF(**config)
    later, _ = fit_with_snapshots(resumed, *data, resume_from=checkpoint.loads(states[3]))
    assert [r["epoch"] for r in later] == [4, 5]
    assert resumed.best_epoch_ == whole.best_epoch_
    drop = ("epoch_seconds", "users_per_second", "validation_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.history_] == [
        {k: v for k, v in r.items() if k not in drop} for r in whole.history_
    ]
    for a, b in zip(resumed._backend.get_weights(), whole._backend.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    test = (strong_split["test_fold_in"], strong_split["test"])
    assert resumed.evaluate(*test) == whole.evaluate(*test)
