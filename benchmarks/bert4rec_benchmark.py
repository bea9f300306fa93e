"""BERT4Rec / SASRec benchmark (issue 16): leave-one-out accuracy and training throughput.

Accuracy (``accuracy``): k-core 5, ``leave_one_out`` split (last item test, second-to-last validation),
the test item ranked (a) among all items but the user's history (train and validation items; the
product's protocol, names as DESIGN.md), (a') among all items, nothing excluded (``unfiltered_``, the
protocol of RecBole's full sort for sequential models), and (b) among 100 negatives drawn by popularity
(``sampled_``), mean ± std over seeds, for popularity, SAR (Recommenders' defaults) and our
bert4rec/sasrec (early stopping on validation NDCG@10). Models ``recbole-BERT4Rec`` and ``recbole-SASRec``
run RecBole 1.2.1's on the same filtered interactions (RecBole's ``LS: valid_and_test``, order ``TO``,
full ranking, ``MAX_ITEM_LIST_LENGTH`` 50: protocol (a')), installed beside the project, never as a
dependency (``$RECBOLE_REFERENCE`` or ``.venv/recbole-reference``):

    pip install --no-deps --target .venv/recbole-reference recbole==1.2.1
    pip install colorlog colorama texttable tabulate   # what its modules import, none pulls torch

Throughput (``throughput``): train records (windows) per second at the seed's random-data config
(``synthetic-random``: 3,000 users, 500,000 items, 8,000,000 interactions; emb 128, max_len 16,
mask 0.2) for each mode (local, ddp, dmp) and process count, a fixed number of optimizer steps each
(``--steps``), CPU or ``--device cuda``. Prints a table and writes JSON (``--output``).

    python -m benchmarks.bert4rec_benchmark accuracy --sizes 100k,latest-small --seeds 0,1,2
    python -m benchmarks.bert4rec_benchmark throughput --runs local:1,ddp:1,ddp:2,dmp:1,dmp:2
    python -m benchmarks.bert4rec_benchmark throughput --device cuda --runs local:1 --batch-size 1024
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recmodels import metrics, preprocessing
from recmodels.datasets import load_dataset
from recmodels.registry import create_model
from recmodels.synthetic import SYNTHETIC_SHAPES, generate_synthetic

SEED_CONFIG = {"emb_dim": 128, "max_len": 16, "mask_prob": 0.2, "heads": 2, "layers": 2}
RECBOLE_TARGET = Path(
    os.environ.get("RECBOLE_REFERENCE", Path(__file__).resolve().parents[1] / ".venv" / "recbole-reference")
)
FULL = ("hr_at_1", "hr_at_5", "hr_at_10", "ndcg_at_5", "ndcg_at_10", "mrr")


def leave_one_out(size: str) -> preprocessing.Split:
    df = preprocessing.filter_min_interactions(load_dataset(size), 5, 5)
    return preprocessing.split_leave_one_out(df)


def list_ranks(recs: pd.DataFrame, test: pd.DataFrame, depth: int) -> np.ndarray:
    """Rank of each test item in a top-``depth`` list (beyond the list: depth + 1, so HR/NDCG at
    cutoffs ≤ depth are exact and MRR is a lower bound)."""
    merged = test[["user_id", "item_id"]].merge(recs[["user_id", "item_id", "rank"]], how="left")
    return merged["rank"].fillna(depth + 1).to_numpy()


def baseline_metrics(name: str, split: preprocessing.Split, seed: int) -> dict[str, float]:
    """Popularity and SAR (Recommenders' defaults) fitted on train + validation (the test user's
    history, as ours read it), both full-ranking protocols: the user's history excluded (names as
    DESIGN.md) and nothing excluded (``unfiltered_``). Popularity ranks exactly; SAR from its top-100
    (MRR a lower bound)."""
    history = pd.concat([split.train, split.validation], ignore_index=True)
    if name == "popularity":
        items = np.sort(history["item_id"].unique())
        scores = history["item_id"].value_counts().reindex(items).to_numpy(float)
        target = pd.Index(items).get_indexer(split.test["item_id"].to_numpy())
        users = split.test["user_id"].to_numpy()
        table = np.tile(scores, (len(target), 1))
        unfiltered = metrics.target_ranks(table, np.maximum(target, 0))
        seen = history[["user_id", "item_id"]].assign(col=pd.Index(items).get_indexer(history["item_id"]))
        row = pd.Index(users).get_indexer(seen["user_id"])
        table[row, seen["col"].to_numpy()] = -np.inf
        table[np.arange(len(target)), np.maximum(target, 0)] = scores[
            np.maximum(target, 0)
        ]  # never the target
        full = metrics.target_ranks(table, np.maximum(target, 0))
        worst = len(items) + 1
        return metrics.ranks_to_metrics(np.where(target >= 0, full, worst)) | metrics.ranks_to_metrics(
            np.where(target >= 0, unfiltered, worst), prefix="unfiltered_"
        )
    model = create_model(name).fit(history)
    users = split.test["user_id"].unique()
    values = {}
    for exclude, prefix in ((True, ""), (False, "unfiltered_")):
        recs = model.recommend(users, k=100, exclude_seen=exclude)
        values |= metrics.ranks_to_metrics(list_ranks(recs, split.test, 100), prefix=prefix)
    return values


def ours(name: str, split: preprocessing.Split, seed: int, params: dict[str, Any]) -> dict[str, float]:
    model = create_model(name, seed=seed, **params)
    start = time.perf_counter()
    model.fit(split.train, split.validation)
    fit_seconds = time.perf_counter() - start
    values = model.evaluate_leave_one_out(split.test)
    epochs = len(model.history_)
    return values | {
        "fit_seconds": fit_seconds,
        "epochs": epochs,
        "best_epoch": model.best_epoch_ or 0,
        "epoch_seconds": float(np.mean([h["epoch_seconds"] for h in model.history_])),
        "seconds_per_epoch": fit_seconds / max(epochs, 1),
    }


def recbole(name: str, split: preprocessing.Split, seed: int, epochs: int) -> dict[str, float]:
    """RecBole 1.2.1's ``name`` (BERT4Rec or SASRec) on the same interactions, its own leave-one-out."""
    if not RECBOLE_TARGET.exists():
        raise SystemExit(
            f"RecBole is not installed beside the project: see this file's docstring ({RECBOLE_TARGET})"
        )
    sys.path.insert(0, str(RECBOLE_TARGET))
    # RecBole 1.2.1 reloads its best checkpoint with torch.load's pre-2.6 default (weights_only=False)
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model import sequential_recommender
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    frame = pd.concat([split.train, split.validation, split.test])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "loo"
        folder.mkdir()
        atomic = frame.rename(
            columns={"user_id": "user_id:token", "item_id": "item_id:token", "timestamp": "timestamp:float"}
        )[["user_id:token", "item_id:token", "timestamp:float"]]
        atomic.to_csv(folder / "loo.inter", sep="\t", index=False)
        config_dict = {
            "data_path": tmp,
            "seed": seed,
            "reproducibility": True,
            "eval_args": {
                "split": {"LS": "valid_and_test"},
                "order": "TO",
                "mode": "full",
                "group_by": "user",
            },
            "MAX_ITEM_LIST_LENGTH": 50,
            "epochs": epochs,
            "stopping_step": 10,
            "train_neg_sample_args": None,
            "loss_type": "CE",
            "metrics": ["Hit", "NDCG", "MRR"],
            "topk": [1, 5, 10],
            "valid_metric": "NDCG@10",
            "checkpoint_dir": tmp,
            "show_progress": False,
            "device": "cpu",
            "use_gpu": False,
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        }
        model_class = getattr(sequential_recommender, name)
        config = Config(model=model_class, dataset="loo", config_dict=config_dict)
        init_seed(seed, True)
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
        model = model_class(config, train_data.dataset).to(config["device"])
        trainer = Trainer(config, model)
        start = time.perf_counter()
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
        seconds = time.perf_counter() - start
        epochs_run = len(trainer.train_loss_dict)
        test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    # RecBole's full sort of sequential models masks nothing: our ``unfiltered_`` protocol; its MRR is MRR@10
    return {
        "unfiltered_hr_at_1": test["hit@1"],
        "unfiltered_hr_at_5": test["hit@5"],
        "unfiltered_hr_at_10": test["hit@10"],
        "unfiltered_ndcg_at_5": test["ndcg@5"],
        "unfiltered_ndcg_at_10": test["ndcg@10"],
        "unfiltered_mrr_at_10": test["mrr@10"],
        "fit_seconds": seconds,
        "epochs": epochs_run,
        "seconds_per_epoch": seconds / max(epochs_run, 1),  # training + validation, as ours below
    }


def accuracy(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    params = json.loads(args.params)
    for size in args.sizes.split(","):
        split = leave_one_out(size)
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in args.models.split(","):
                if name in ("popularity", "sar"):
                    values = baseline_metrics(name, split, seed)
                elif name.startswith("recbole-"):
                    values = recbole(name.removeprefix("recbole-"), split, seed, args.epochs)
                else:
                    values = ours(name, split, seed, {"epochs": args.epochs, **params.get(name, {})})
                rows.append({"size": size, "seed": seed, "model": name, **values})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def summarise(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    numeric = [c for c in frame.columns if c not in ("size", "seed", "model", "mode")]
    grouped = frame.groupby(["size", "model"], sort=False)[numeric]
    mean, std = grouped.mean(), grouped.std().fillna(0.0)
    return mean.round(4).astype(str) + " ± " + std.round(4).astype(str)


def throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    """records/s of each ``mode:nproc`` run on the seed's random-data shape."""
    from tasks.launcher import launch
    from tasks.sequential_worker import worker_args

    shape = SYNTHETIC_SHAPES["synthetic-random"]
    users, items, interactions = shape.n_users, shape.n_items, args.interactions or shape.n_interactions
    folder = Path(args.cache) / f"random-{users}x{items}x{interactions}"
    if not (folder / "test.parquet").exists():
        start = time.perf_counter()
        split = preprocessing.split_leave_one_out(generate_synthetic(users, items, interactions, seed=0))
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("train", "validation", "test"):
            getattr(split, name).to_parquet(folder / f"{name}.parquet", index=False)
        print(f"generated {folder} in {time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    for run in args.runs.split(","):
        mode, nproc = run.split(":")
        params = {
            **SEED_CONFIG,
            "mode": mode,
            "nproc": int(nproc),
            "device": args.device,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "steps_per_epoch": args.steps,
            "precision": args.precision,
        }
        with tempfile.TemporaryDirectory() as out:
            load = os.getloadavg()[0]
            wargs = [*worker_args(args.model, str(folder), out, params, 10), "--throughput"]
            if mode == "local":  # one process, no process group: run the worker's fit in-process
                results = _local_throughput(args.model, folder, params)
            else:
                results = launch(int(nproc), "tasks.sequential_worker", wargs, out, device=args.device)
        history = results["history"]
        timed = history[1:] or history  # the first epoch warms up
        row = {
            "model": args.model,
            "mode": mode,
            "nproc": int(nproc),
            "device": args.device,
            "precision": args.precision,
            "batch_size": args.batch_size,
            "records_per_second": float(np.mean([h["records_per_second"] for h in timed])),
            "load_before": load,
            "load_after": os.getloadavg()[0],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _local_throughput(model_name: str, folder: Path, params: dict[str, Any]) -> dict[str, Any]:
    model = create_model(model_name, **params)
    model.fit(pd.read_parquet(folder / "train.parquet"))
    return {"history": model.history_}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=None, help="JSON file for the rows")
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy")
    acc.add_argument("--sizes", default="100k,latest-small")
    acc.add_argument("--seeds", default="0,1,2")
    acc.add_argument("--models", default="popularity,sar,bert4rec,sasrec")
    acc.add_argument("--epochs", type=int, default=200)
    acc.add_argument("--params", default="{}", help='per-model parameters, e.g. {"sasrec": {"lr": 0.002}}')
    thr = sub.add_parser("throughput")
    thr.add_argument("--model", default="bert4rec")
    thr.add_argument("--runs", default="local:1,ddp:1,ddp:2,dmp:1,dmp:2", help="mode:nproc, comma-separated")
    thr.add_argument("--device", default="cpu")
    thr.add_argument("--precision", default="fp32")
    thr.add_argument("--batch-size", type=int, default=128)
    thr.add_argument("--steps", type=int, default=10, help="optimizer steps per epoch")
    thr.add_argument("--epochs", type=int, default=3, help="epochs (the first is left out as warm-up)")
    thr.add_argument("--interactions", type=int, default=None, help="fewer interactions than the seed's 8M")
    thr.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "bert4rec-benchmark"))
    args = parser.parse_args(argv)
    rows = accuracy(args) if args.command == "accuracy" else throughput(args)
    if args.command == "accuracy":
        print(summarise(rows).to_string())
    else:
        print(pd.DataFrame(rows).to_string(index=False))
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
