"""BERT4Rec: Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder Representations
from Transformer", CIKM 2019, with its item embeddings in TorchRec as in the seed (TorchRec's
``examples/bert4rec``). The network, loss and training are :mod:`recmodels.sequential`'s; this file
defines the cloze task.

Training (Section 3.6): in each window of L = ``max_len`` items every item is replaced by the [mask]
token with probability ρ = ``mask_prob`` (the seed's 0.2; a window where none was drawn masks its last
item), and the loss is the cross-entropy of the original items at the masked positions only

    loss = (1/|T|) Σ_{t∈T} −log softmax(ŷ_t)[v_t],   T = masked positions,

attention being bidirectional (every position sees every non-padding position). Inference
(Section 3.6, "append the special token [mask] to the end of user's behaviour sequence"): the last
L − 1 items followed by [mask], whose scores ŷ_L rank the next item.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recmodels.errors import InvalidConfig
from recmodels.sequences import UserSequences, last_items
from recmodels.sequential import SequentialRecommender, torch


class BERT4Rec(SequentialRecommender):
    """Bidirectional transformer trained by the cloze task; see the module docstring."""

    name = "bert4rec"
    causal = False
    activation = "gelu"
    norm_first = False

    def __init__(self, mask_prob: float = 0.2, **params: Any) -> None:
        if not 0 < mask_prob < 1:
            raise InvalidConfig(f"mask_prob={mask_prob} must be in (0, 1); the paper and the seed use 0.2.")
        self.mask_prob = mask_prob
        super().__init__(**params)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "mask_prob": self.mask_prob}

    @property
    def mask_code(self) -> int:
        return len(self.items_) + 1

    def training_batch(self, windows: Any, generator: Any) -> tuple[Any, Any, Any]:
        real = windows != 0
        masked = (torch.rand(windows.shape, generator=generator) < self.mask_prob) & real
        masked[:, -1] |= ~masked.any(dim=1)  # the last position always holds an item (left padding)
        codes = torch.where(masked, torch.full_like(windows, self.mask_code), windows)
        return codes, masked, windows

    def inference_input(self, sequences: UserSequences) -> np.ndarray:
        history = last_items(sequences, self.config.max_len - 1)
        return np.concatenate([history, np.full((len(history), 1), self.mask_code, np.int64)], axis=1)
