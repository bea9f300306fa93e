"""Pure recommender-system library of movielens-benchmark: data, preprocessing, metrics, models.

Nothing here imports Prefect or MLflow. Functions take and return pandas DataFrames, NumPy arrays or
scipy.sparse matrices. Every model has ``fit(train)`` and ``recommend(users, k=10, exclude_seen=True)``.
"""

__version__ = "0.1.0"
