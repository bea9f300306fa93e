"""The seed PoC's table, re-run with our ImplicitFactorization: each loss × {split, transpose & split}.

The seed (github.com/beeva-enriqueotero/beeva-poc-pytorch-for-recsys, README "Results") trained Spotlight
0.1.3's ImplicitFactorizationModel with ``n_iter=3`` and Spotlight's other defaults on MovieLens-1M after
``random_train_test_split`` (80/20, "split 2/10"), or on the transposed matrix (items as users, "transpose
& split"), and reported MAP, F1 and training time. This script does the same on MovieLens-100K and
latest-small (and times synthetic-1m), for 3 seeds (each seeds both the split and the model), and prints
MAP@10 and F1@10 (:mod:`recmodels.metrics`, seen items excluded) as mean ± std with the training time,
beside the seed's ML-1M figures. Those are for reference only: other data, and other metric code (the
seed's MAP is its notebook's own function, its F1 the mean over users of Spotlight's
``precision_recall_score`` at k=10, over all items, seen ones included).

With ``SPOTLIGHT_SRC`` pointing at a checkout of github.com/maciejkula/spotlight (it is not on PyPI: the
``spotlight`` there is another project), Spotlight itself runs on the same splits with the same
parameters and is scored by the same code. Results: a table on stdout,
``benchmarks/results/implicit_mf_seed_table.json``, and an MLflow run (``$MLFLOW_TRACKING_URI``, else
SQLite in ``benchmarks/results/``) with the table as a PNG. Data come from :func:`load_dataset`
(``$MOVIELENS_MIRROR`` for offline copies)::

    MOVIELENS_MIRROR=../shared/datasets/movielens SPOTLIGHT_SRC=/tmp/spotlight \\
        python -m benchmarks.implicit_mf_seed_table   # from the repository root
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recmodels.base import IdIndex, interaction_matrix, mask_seen, recommendations_frame, top_k_dense
from recmodels.datasets import load_dataset
from recmodels.implicit_mf import ImplicitFactorization
from recmodels.metrics import f1_at_k, map_at_k
from recmodels.preprocessing import Split, split_random, transpose

RESULTS = Path(__file__).resolve().parent / "results"
LOSSES = ("bpr", "adaptive_hinge", "hinge", "pointwise")
PREPARATIONS = ("split", "transpose & split")
K = 10


@dataclass(frozen=True)
class SeedFigure:
    """One row of the seed's ML-1M table: scenario 1, Intel i5-4210U laptop CPU, Spotlight 0.1.3, n_iter=3."""

    map: str
    f1: str
    seconds: str


SEED_ML1M: dict[tuple[str, str], SeedFigure] = {
    ("split", "bpr"): SeedFigure("0.079±0.0005", "0.057±0.0005", "60±1"),
    ("transpose & split", "bpr"): SeedFigure("0.063±0.0005", "0.037±0.001", "64.5±1.5"),
    ("split", "adaptive_hinge"): SeedFigure("0.082", "0.056", "73.5"),
    ("transpose & split", "adaptive_hinge"): SeedFigure("0.061", "0.031", "79.5"),
    ("split", "hinge"): SeedFigure("0.063", "0.039", "81.7"),
    ("transpose & split", "hinge"): SeedFigure("0.052", "0.024", "73.8"),
    ("split", "pointwise"): SeedFigure("0.064", "0.037", "61.8"),
    ("transpose & split", "pointwise"): SeedFigure("0.051", "0.022", "68.9"),
}


class SpotlightModel:
    """Spotlight's ImplicitFactorizationModel behind our fit/recommend interface (dense ids, same top-k)."""

    def __init__(self, seed: int, **params: Any) -> None:
        from spotlight.factorization.implicit import ImplicitFactorizationModel

        self.model = ImplicitFactorizationModel(random_state=np.random.RandomState(seed), **params)

    def fit(self, train: pd.DataFrame) -> SpotlightModel:
        from spotlight.interactions import Interactions

        self.users, self.items = IdIndex.from_values(train["user_id"]), IdIndex.from_values(train["item_id"])
        self.seen = interaction_matrix(train, self.users, self.items)
        interactions = Interactions(
            self.users.positions(train["user_id"].to_numpy()).astype(np.int32),
            self.items.positions(train["item_id"].to_numpy()).astype(np.int32),
            num_users=len(self.users),
            num_items=len(self.items),
        )
        self.model.fit(interactions)
        return self

    def recommend(self, users: Iterable[int], k: int = K) -> pd.DataFrame:
        user_ids = np.asarray(list(users))
        rows = self.users.positions(user_ids)
        user_ids, rows = user_ids[rows >= 0], rows[rows >= 0]
        scores = np.stack([self.model.predict(int(r)) for r in rows]).astype(np.float64)
        mask_seen(scores, self.seen[rows])
        positions, values = top_k_dense(scores, k)
        return recommendations_frame(user_ids, positions, values, self.items)


def prepare(ratings: pd.DataFrame, preparation: str, seed: int) -> Split:
    """The seed's "split 2/10" (random 80/20) of the ratings, or of their transpose."""
    data = transpose(ratings) if preparation == "transpose & split" else ratings
    return split_random(data, (0.8, 0.2), seed=seed)


def run_one(model: Any, split: Split, evaluate: bool) -> dict[str, float]:
    """Fit ``model`` on train; training seconds and, if ``evaluate``, MAP@10 and F1@10 on test."""
    start = time.perf_counter()
    model.fit(split.train)
    result = {"fit_seconds": time.perf_counter() - start}
    if evaluate:
        recs = model.recommend(split.test["user_id"].unique(), k=K)
        result |= {"map_at_10": map_at_k(recs, split.test, K), "f1_at_10": f1_at_k(recs, split.test, K)}
    return result


def mean_std(values: list[float], digits: int) -> str:
    if not values or any(np.isnan(values)):
        return "–"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f}±{spread:.{digits}f}"


def run_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per dataset × preparation × loss: every seed's numbers and their mean ± std."""
    params = {
        "n_iter": args.n_iter,
        "embedding_dim": args.embedding_dim,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
    }
    rows = []
    for dataset in [*args.datasets, *args.timing_datasets]:
        ratings = load_dataset(dataset)
        evaluate = dataset not in args.timing_datasets
        for preparation in PREPARATIONS:
            for loss in args.losses:
                runs: dict[str, list[dict[str, float]]] = {"ours": [], "spotlight": []}
                for seed in args.seeds:
                    split = prepare(ratings, preparation, seed)
                    ours = ImplicitFactorization(loss=loss, seed=seed, device=args.device, **params)
                    runs["ours"].append(run_one(ours, split, evaluate))
                    if args.spotlight and evaluate:  # Spotlight's speed: implicit_mf_speed.py
                        spotlight = SpotlightModel(
                            seed, loss=loss, use_cuda=ours.module_.weight.is_cuda, **params
                        )
                        runs["spotlight"].append(run_one(spotlight, split, evaluate))
                row = {"dataset": dataset, "preparation": preparation, "loss": loss, "runs": runs}
                for who, results in runs.items():
                    for metric, digits in (("map_at_10", 4), ("f1_at_10", 4), ("fit_seconds", 1)):
                        values = [r.get(metric, float("nan")) for r in results]
                        row[f"{who}_{metric}"] = mean_std(values, digits)
                row["seed_ml1m"] = asdict(SEED_ML1M[(preparation, loss)])
                rows.append(row)
                print(format_row(row, args.spotlight), flush=True)
    return rows


COLUMNS = ["dataset", "preparation", "loss", "MAP@10", "F1@10", "train s"]
SPOTLIGHT_COLUMNS = ["Spotlight MAP@10", "Spotlight F1@10", "Spotlight s"]
SEED_COLUMNS = ["seed ML-1M MAP", "seed F1", "seed s"]


def table_cells(row: dict[str, Any], spotlight: bool) -> list[str]:
    cells = [row["dataset"], row["preparation"], row["loss"]]
    cells += [row["ours_map_at_10"], row["ours_f1_at_10"], row["ours_fit_seconds"]]
    if spotlight:
        cells += [row["spotlight_map_at_10"], row["spotlight_f1_at_10"], row["spotlight_fit_seconds"]]
    seed = row["seed_ml1m"]
    return [*cells, seed["map"], seed["f1"], seed["seconds"]]


def format_row(row: dict[str, Any], spotlight: bool) -> str:
    return " | ".join(f"{cell:>17}" for cell in table_cells(row, spotlight))


def header(spotlight: bool) -> list[str]:
    return COLUMNS + (SPOTLIGHT_COLUMNS if spotlight else []) + SEED_COLUMNS


def save_png(rows: list[dict[str, Any]], spotlight: bool, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = header(spotlight)
    fig, ax = plt.subplots(figsize=(0.9 * len(columns), 0.25 * len(rows) + 1.0))
    ax.axis("off")
    table = ax.table(cellText=[table_cells(r, spotlight) for r in rows], colLabels=columns, loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.auto_set_column_width(list(range(len(columns))))
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def log_to_mlflow(rows: list[dict[str, Any]], params: dict[str, Any], json_path: Path, png_path: Path) -> str:
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{RESULTS / 'mlflow.db'}"))
    mlflow.set_experiment("implicit_mf-seed-table")
    with mlflow.start_run(run_name="implicit_mf-seed-table", tags={"model": "implicit_mf"}) as run:
        mlflow.log_params(params)
        for row in rows:
            prefix = f"{row['dataset']}/{row['preparation'].replace(' & ', '_')}/{row['loss']}"
            for who, results in row["runs"].items():
                for metric in ("map_at_10", "f1_at_10", "fit_seconds"):
                    values = [r[metric] for r in results if metric in r]
                    if values:
                        mlflow.log_metric(f"{prefix}/{who}/{metric}", statistics.mean(values))
        mlflow.log_artifact(str(png_path))
        mlflow.log_artifact(str(json_path))
        return run.info.run_id


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["100k", "latest-small"])
    parser.add_argument("--timing-datasets", nargs="*", default=["synthetic-1m"], help="timed, not scored")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n-iter", type=int, default=3, help="the seed's n_iter")
    parser.add_argument("--embedding-dim", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (both models)")
    args = parser.parse_args(argv)
    args.spotlight = bool(os.environ.get("SPOTLIGHT_SRC"))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.spotlight:
        sys.path.insert(0, os.environ["SPOTLIGHT_SRC"])
    torch.set_num_threads(args.threads)
    print(" | ".join(f"{c:>17}" for c in header(args.spotlight)))
    rows = run_table(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    params = {k: v for k, v in vars(args).items()}
    json_path = RESULTS / "implicit_mf_seed_table.json"
    json_path.write_text(json.dumps({"params": params, "rows": rows}, indent=2))
    title = (
        f"ImplicitFactorization, n_iter={args.n_iter}, batch {args.batch_size}, {len(args.seeds)} seeds "
        f"(mean±std); seed columns: Spotlight 0.1.3 on ML-1M, other metric code (reference only)"
    )
    png_path = save_png(rows, args.spotlight, title, RESULTS / "implicit_mf_seed_table.png")
    run_id = log_to_mlflow(rows, params, json_path, png_path)
    print(f"wrote {json_path} and {png_path}; MLflow run {run_id}")


if __name__ == "__main__":
    main()
