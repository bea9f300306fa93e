"""Model selection on a validation score, with early stopping on a plateau.

One object holds everything the selection depends on, so that a checkpoint can store it whole
(:meth:`EarlyStopping.state`) and a resumed fit continue it (:meth:`EarlyStopping.from_state`): the best
validation score so far, its epoch and that epoch's weights, and the patience.

Rule (Prechelt, "Early Stopping — But When?", 1998, the "patience" criterion as Keras'
``EarlyStopping(restore_best_weights=True)`` applies it): after each validation, the weights are kept if
the score is higher than every earlier one; training stops once ``patience`` epochs have passed since
the best epoch without a higher score, and the best epoch's weights are the model. ``patience=None``
never stops (a fixed number of epochs, best epoch still kept). Up to the stop, a run with patience
trains exactly as the fixed-epoch run does, so its pick is the fixed run's whenever the best epoch of
the full run comes before the stop.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EarlyStopping:
    """Best-epoch tracking and the patience rule (module docstring); higher scores are better."""

    patience: int | None = None  # epochs without a better score before stopping; None: never stop
    best_score: float = float("-inf")
    best_epoch: int | None = None
    best_weights: Any = field(default=None, repr=False)  # whatever the model's get_weights returns

    def update(self, epoch: int, score: float, weights: Callable[[], Any]) -> bool:
        """Record ``epoch``'s validation ``score``; keep ``weights()`` (called only then) if it is the best.

        Returns whether it was.
        """
        if not score > self.best_score:  # NaN never counts as better
            return False
        self.best_score, self.best_epoch, self.best_weights = score, epoch, weights()
        return True

    def epochs_since_best(self, epoch: int) -> int:
        """Epochs trained after the best one (``epoch`` itself if none was validated yet)."""
        return epoch - (self.best_epoch or 0)

    def should_stop(self, epoch: int) -> bool:
        """Whether ``patience`` epochs have passed without a better score, as of ``epoch``."""
        return self.patience is not None and self.epochs_since_best(epoch) >= self.patience

    def state(self) -> dict[str, Any]:
        """A snapshot (copies) for a checkpoint: patience, best score, best epoch, best weights."""
        return copy.deepcopy(
            {
                "patience": self.patience,
                "best_score": self.best_score,
                "best_epoch": self.best_epoch,
                "best_weights": self.best_weights,
            }
        )

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EarlyStopping:
        """The object :meth:`state` described."""
        return cls(**copy.deepcopy(state))
