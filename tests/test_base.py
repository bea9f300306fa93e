"""The shared model base: the users × items interaction matrix, checked against a hand-built one."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recmodels.base import IdIndex, interaction_matrix


def test_interaction_matrix_sums_duplicates_drops_unknown_ids_and_is_canonical():
    df = pd.DataFrame({"user_id": [7, 3, 7, 3, 7, 9, 3], "item_id": [20, 10, 10, 10, 20, 10, 99]})
    users, items = IdIndex.from_values([3, 7]), IdIndex.from_values([10, 20])
    values = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
    matrix = interaction_matrix(df, users, items, values=values)
    # user 3: item 10 twice (2 + 8), item 99 unknown; user 7: item 20 twice (1 + 16), item 10 once (4);
    # user 9 unknown.
    np.testing.assert_array_equal(matrix.toarray(), [[10.0, 0.0], [4.0, 17.0]])
    assert matrix.has_canonical_format and matrix.has_sorted_indices
    assert matrix.nnz == 3 and matrix.indices.tolist() == [0, 0, 1]  # each row's columns sorted, once
    counts = interaction_matrix(df, users, items)
    np.testing.assert_array_equal(counts.toarray(), [[2.0, 0.0], [1.0, 2.0]])
