"""Synthetic session data at e-commerce scale (the Transformers4Rec seed's shape: millions of sessions over
500k items), for throughput benchmarks of the session protocol.

Each session starts at an item drawn from a Zipf law over items (exponent ``zipf``), and each next item is,
with probability ``follow``, a small step from the previous one (``prev + U{1..8}`` mod ``n_items``:
sequential structure that models can learn) or else a fresh Zipf draw. Lengths are ``2 + Geometric(p)``
capped at ``max_len`` (mean ≈ ``mean_length``). Sessions are split evenly into ``n_windows`` windows.
Generated vectorised, except for the final split into one array per session (1M sessions: 81 s on a loaded
2-core machine, load average ~12).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recmodels.errors import InvalidConfig
from recmodels.sequences import DAY_SECONDS, SessionData, window_name


def zipf_items(rng: np.random.Generator, n_items: int, size: int, exponent: float) -> np.ndarray:
    """``size`` item indices with P(rank r) ∝ r^-exponent, ranks shuffled over item indices."""
    weights = 1.0 / np.arange(1, n_items + 1) ** exponent
    cumulative = np.cumsum(weights / weights.sum())
    ranks = np.minimum(np.searchsorted(cumulative, rng.random(size)), n_items - 1)
    return rng.permutation(n_items)[ranks]


def synthetic_sessions(
    n_sessions: int,
    n_items: int,
    n_windows: int = 2,
    mean_length: float = 6.0,
    max_len: int = 20,
    follow: float = 0.6,
    zipf: float = 1.05,
    seed: int = 0,
) -> SessionData:
    """Session windows of item indices (``item_index`` list column; ``item_id`` = index)."""
    if n_sessions < n_windows or n_windows < 2 or n_items < 2:
        raise InvalidConfig(
            f"synthetic sessions need n_sessions ≥ n_windows ≥ 2 and n_items ≥ 2; got {n_sessions}, "
            f"{n_windows}, {n_items}"
        )
    rng = np.random.default_rng(seed)
    lengths = np.minimum(2 + rng.geometric(1.0 / max(mean_length - 1.0, 1.0), n_sessions) - 1, max_len)
    total = int(lengths.sum())
    starts = np.zeros(total, dtype=bool)
    starts[np.concatenate([[0], np.cumsum(lengths)[:-1]])] = True
    fresh = zipf_items(rng, n_items, total, zipf)
    steps = rng.integers(1, 9, total)
    jump = starts | (rng.random(total) >= follow)
    # within a run of "follow" events the item is the run's fresh start plus the cumulative steps
    run_id = np.cumsum(jump) - 1
    run_start = np.flatnonzero(jump)
    offsets = np.cumsum(np.where(jump, 0, steps))
    items = (fresh[run_start][run_id] + offsets - offsets[run_start][run_id]) % n_items
    sessions = np.split(items.astype(np.int32), np.cumsum(lengths)[:-1])
    bounds = np.linspace(0, n_sessions, n_windows + 1).astype(int)
    windows = {
        window_name(1_577_836_800 + w * DAY_SECONDS): pd.DataFrame(
            {
                "item_index": sessions[bounds[w] : bounds[w + 1]],
                "item_id": sessions[bounds[w] : bounds[w + 1]],
            }
        )
        for w in range(n_windows)
    }
    return SessionData(windows, np.arange(n_items))
