"""GPT-2 / XLNet session transformers on CPU: they learn a sequential rule that popularity cannot, under
fp32 and bf16 autocast, with tied and untied heads; DDP with 2 gloo processes through the torchrun launcher
keeps the ranks' weights equal; a missing ``transformers`` is a one-line MissingExtra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("transformers", reason="the transformers extra: pip install -e '.[transformers]'")

from recmodels.sequences import SessionData
from recmodels.session_baselines import SessionPopularity
from recmodels.session_eval import incremental_evaluation
from recmodels.session_transformer import SessionTransformer, TransformerConfig
from tasks.launcher import launch
from tasks.prepared import prepared_key
from tasks.sessions import write_session_data

N_ITEMS = 30
SMALL = {"d_model": 32, "n_layer": 1, "n_head": 2, "dropout": 0.0, "batch_size": 32, "learning_rate": 5e-3}


def rule_windows(n_windows: int = 2, per_window: int = 96, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Sessions that walk the items in steps of +1 (mod N_ITEMS) from a random start: the next item is
    determined by the last one, while every item is about as popular as any other."""
    rng = np.random.default_rng(seed)
    windows = {}
    for w in range(n_windows):
        sessions = []
        for _ in range(per_window):
            start, length = rng.integers(N_ITEMS), rng.integers(3, 8)
            sessions.append((start + np.arange(length)) % N_ITEMS)
        windows[f"session_start_date=2000-01-{w + 1:02d}"] = pd.DataFrame({"item_index": sessions})
    return windows


@pytest.mark.parametrize(
    "params",
    [
        {"architecture": "gpt2", "epochs": 8},
        {"architecture": "xlnet", "epochs": 24, "learning_rate": 1e-2, "mlm_probability": 0.2},
        {"architecture": "gpt2", "epochs": 8, "precision": "bf16", "tie_weights": False},
    ],
    ids=["gpt2", "xlnet", "gpt2-bf16-linear-head"],
)
def test_transformers_learn_the_next_item_rule_that_popularity_cannot(params: dict) -> None:
    windows = rule_windows()
    model = SessionTransformer(N_ITEMS, TransformerConfig(**{**SMALL, **params}))
    result = incremental_evaluation(model, windows)
    popularity = incremental_evaluation(SessionPopularity(N_ITEMS), windows)
    assert result["recall_at_10"].iloc[0] > 0.9
    assert popularity["recall_at_10"].iloc[0] < 0.6
    assert all(np.isfinite(model.window_losses))


def test_score_is_deterministic_and_shaped_per_item() -> None:
    model = SessionTransformer(N_ITEMS, TransformerConfig(**SMALL, epochs=1))
    model.update(list(rule_windows(1, 32)["session_start_date=2000-01-01"]["item_index"]), [])
    prefixes = [np.array([1, 2]), np.arange(25) % N_ITEMS]  # longer than max_len: its last items count
    first, second = model.score(prefixes), model.score(prefixes)
    assert first.shape == (2, N_ITEMS) and np.array_equal(first, second)


def test_missing_transformers_is_one_line_missing_extra() -> None:
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "try:\n    import recmodels.session_transformer\n"
        "except Exception as e:\n    print(type(e).__name__, e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600).stdout
    assert out.startswith("MissingExtra gpt2/xlnet need the 'transformers' extra")
    assert "pip install -e '.[torch,transformers]'" in out and out.count("\n") == 1


def test_ddp_with_two_gloo_processes_trains_and_keeps_ranks_in_sync(tmp_path: Path) -> None:
    windows = rule_windows(3, 64)
    for frame in windows.values():
        frame["item_id"] = frame["item_index"]
    params = {"protocol": "test-ddp"}
    prepared = write_session_data(
        str(tmp_path), prepared_key(params), SessionData(windows, np.arange(N_ITEMS)), params
    )
    config = {**SMALL, "architecture": "gpt2", "epochs": 4, "device": "cpu"}
    import json

    result = launch(
        2,
        "tasks.session_transformer_worker",
        ["--output", str(tmp_path / "out"), "--prepared", prepared.folder, "--params", json.dumps(config)],
        tmp_path / "out",
    )
    assert result["world_size"] == 2
    assert result["checksums"][0] == pytest.approx(result["checksums"][1], rel=1e-9)
    losses = result["window_losses"]
    assert len(losses) == 2 and losses[-1] < losses[0]
    assert result["aod"]["aod_recall_at_10"] > 0.5
    assert (tmp_path / "out" / "eval_train_results_dates.csv").exists()
    assert (tmp_path / "out" / "model" / "model.pt").exists()


def _resumed_equals_uninterrupted(make_model, windows: dict[str, pd.DataFrame], stop_after: int) -> None:
    """Run the loop, keep its checkpoint after window ``stop_after`` (stored and read back as the task
    does), resume a fresh model from it: every row equals the uninterrupted loop's (fit_seconds aside)."""
    from recmodels import checkpoint
    from recmodels.session_eval import METRIC_NAMES, loop_state

    rows: list[dict] = []
    saved: list[bytes] = []
    model = make_model()

    def keep(result) -> None:
        rows.append(result.row())
        if result.step == stop_after:
            saved.append(checkpoint.dumps(loop_state(model, rows)))

    full = incremental_evaluation(model, windows, replay_windows=1, on_window=keep)
    resumed = incremental_evaluation(
        make_model(), windows, replay_windows=1, resume_from=checkpoint.loads(saved[0])
    )
    columns = ["step", "train_window", "eval_window", "train_sessions", *METRIC_NAMES]
    assert len(full) == len(windows) - 1 > stop_after
    pd.testing.assert_frame_equal(resumed[columns], full[columns])


@pytest.mark.parametrize("architecture", ["gpt2", "xlnet"])
def test_a_transformer_resumed_from_a_window_checkpoint_equals_the_uninterrupted_loop(
    architecture: str,
) -> None:
    """Dropout on, so torch's global generator is part of the state too."""
    config = TransformerConfig(**{**SMALL, "dropout": 0.2, "epochs": 2, "architecture": architecture})
    _resumed_equals_uninterrupted(
        lambda: SessionTransformer(N_ITEMS, config), rule_windows(4, 48), stop_after=1
    )


def test_baselines_resume_from_a_window_checkpoint() -> None:
    from recmodels.session_baselines import ItemKNN, SessionKNN

    for make in (
        lambda: SessionPopularity(N_ITEMS),
        lambda: ItemKNN(N_ITEMS),
        lambda: SessionKNN(N_ITEMS, k=5),
    ):
        _resumed_equals_uninterrupted(make, rule_windows(4, 48), stop_after=2)


def test_a_checkpoint_of_other_windows_or_another_model_is_refused() -> None:
    from recmodels.errors import CheckpointMismatch
    from recmodels.session_eval import loop_state

    windows = rule_windows(3, 16)
    model = SessionPopularity(N_ITEMS)
    rows = incremental_evaluation(model, windows).to_dict("records")
    state = loop_state(model, rows[:1])
    other = {f"session_start_date=2001-01-{i + 1:02d}": w for i, w in enumerate(windows.values())}
    with pytest.raises(CheckpointMismatch, match="delete the checkpoint"):
        incremental_evaluation(SessionPopularity(N_ITEMS), other, resume_from=state)
    with pytest.raises(CheckpointMismatch, match="SessionPopularity"):
        incremental_evaluation(SessionPopularity(N_ITEMS + 1), windows, resume_from=state)
