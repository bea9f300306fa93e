"""SASRec: Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018, on the blocks of
:mod:`recmodels.sequential` (item embeddings in TorchRec, as BERT4Rec's).

Differences from BERT4Rec (Section III): attention is causal (position t sees positions ≤ t), blocks are
pre-norm with ReLU feed-forward layers, and every position predicts the next item: a window of L + 1
items v₁..v_{L+1} gives the input v₁..v_L and the targets v₂..v_{L+1},

    loss = (1/|T|) Σ_{t∈T} −log softmax(ŷ_t)[v_{t+1}],   T = positions whose next item is not padding,

the full softmax cross-entropy (the paper samples one negative per position with a binary loss;
Petrov & Macdonald, RecSys 2023, "gSASRec", show the full softmax is the stronger choice). Inference:
the last L items; the scores at the last position rank the next item.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recmodels.sequences import UserSequences, last_items
from recmodels.sequential import SequentialRecommender


class SASRec(SequentialRecommender):
    """Causal transformer trained on next-item targets at every position; see the module docstring."""

    name = "sasrec"
    causal = True
    activation = "relu"
    norm_first = True

    def window_length(self) -> int:
        return self.config.max_len + 1

    def training_batch(self, windows: Any, generator: Any) -> tuple[Any, Any, Any]:
        codes, target = windows[:, :-1], windows[:, 1:]
        return codes, target != 0, target

    def inference_input(self, sequences: UserSequences) -> np.ndarray:
        return last_items(sequences, self.config.max_len)
