"""Early stopping's rule and state on a hand-made validation curve."""

from __future__ import annotations

import numpy as np

from recmodels.early_stopping import EarlyStopping


def _run(scores: list[float], patience: int | None) -> tuple[EarlyStopping, int]:
    selection = EarlyStopping(patience)
    for epoch, score in enumerate(scores, start=1):
        selection.update(epoch, score, lambda epoch=epoch: [np.full(2, epoch)])
        if selection.should_stop(epoch):
            return selection, epoch
    return selection, len(scores)


def test_patience_counts_epochs_since_the_best_and_keeps_its_weights():
    scores = [0.10, 0.30, 0.20, 0.30, 0.25, 0.40, 0.50]  # a tie (epoch 4) is no improvement
    selection, stopped = _run(scores, patience=3)
    assert (stopped, selection.best_epoch, selection.best_score) == (5, 2, 0.30)
    np.testing.assert_array_equal(selection.best_weights[0], [2, 2])
    # Patience 4 waits long enough to see epoch 6 improve, then runs out of epochs.
    selection, stopped = _run(scores, patience=4)
    assert (stopped, selection.best_epoch) == (7, 7)
    # None: the fixed-epoch mode, best epoch still picked.
    selection, stopped = _run([0.3, float("nan"), 0.1, 0.2], patience=None)
    assert (stopped, selection.best_epoch, selection.epochs_since_best(4)) == (4, 1, 3)


def test_state_is_a_snapshot_and_restores_the_selection():
    selection, _ = _run([0.2, 0.3], patience=5)
    state = selection.state()
    selection.best_weights[0][:] = -1  # later training must not change the snapshot
    restored = EarlyStopping.from_state(state)
    assert (restored.patience, restored.best_epoch, restored.best_score) == (5, 2, 0.3)
    np.testing.assert_array_equal(restored.best_weights[0], [2, 2])
    assert not restored.should_stop(6) and restored.should_stop(7)
