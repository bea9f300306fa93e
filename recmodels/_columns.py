"""The canonical interaction table and column checks shared by every step."""

from collections.abc import Iterable

import pandas as pd

from recmodels.errors import MissingColumns

USER, ITEM, RATING, TIMESTAMP = "user_id", "item_id", "rating", "timestamp"
INTERACTION_COLUMNS = (USER, ITEM, RATING, TIMESTAMP)
RECOMMENDATION_COLUMNS = (USER, ITEM, "score", "rank")


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str = "interactions") -> None:
    """Raise :class:`MissingColumns` naming every absent column and the expected schema."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MissingColumns(
            f"{what} lacks column(s) {missing}; it has {list(df.columns)}. "
            f"Rename your columns to {list(columns)} (raw ids as integers)."
        )
