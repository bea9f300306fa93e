"""Training speed of ImplicitFactorization: per epoch against Spotlight on the CPU, and throughput on the device.

Goals (GitHub issue 4): per-epoch training at least 5× faster than Spotlight's ImplicitFactorizationModel
on the CPU with the same data and batch size; at least 30M interactions/s for bpr with embedding_dim 64
on one H100.

``compare`` (needs ``SPOTLIGHT_SRC``, a checkout of github.com/maciejkula/spotlight) alternates a one-epoch
fit from scratch of Spotlight and one of ours (our id mapping and seen-items matrix included), same data,
loss, batch size and torch threads, and reports the fastest of ``--repeats`` of each, in wall-clock and in
CPU seconds, and their ratios. It also reports the epoch alone: for Spotlight a second ``fit`` call, which
resumes training for one more epoch, for ours the epoch's ``epoch_seconds``. ``throughput`` trains bpr
with embedding_dim 64 at several batch sizes on ``--device`` and reports interactions/s (the best epoch
after the first, which warms up).
Results go to stdout and ``benchmarks/results/implicit_mf_speed.json``::

    MOVIELENS_MIRROR=../shared/datasets/movielens SPOTLIGHT_SRC=/tmp/spotlight \\
        python -m benchmarks.implicit_mf_speed compare
    python -m benchmarks.implicit_mf_speed throughput --dataset synthetic-10m --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recmodels.base import IdIndex
from recmodels.datasets import load_dataset
from recmodels.implicit_mf import ImplicitFactorization

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fit: Callable[[], Any]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of ``fit()`` (CPU time is steadier on a shared machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fit()
    return time.perf_counter() - wall, time.process_time() - cpu


def spotlight_fit(ratings: pd.DataFrame, loss: str, batch_size: int, seed: int) -> tuple[float, float, float]:
    """Wall and CPU seconds of a one-epoch ``fit`` of Spotlight's model from scratch (its Interactions built
    beforehand), then the wall seconds of a second ``fit``: one more epoch, without initialisation."""
    from spotlight.factorization.implicit import ImplicitFactorizationModel
    from spotlight.interactions import Interactions

    users, items = IdIndex.from_values(ratings["user_id"]), IdIndex.from_values(ratings["item_id"])
    interactions = Interactions(
        users.positions(ratings["user_id"].to_numpy()).astype(np.int32),
        items.positions(ratings["item_id"].to_numpy()).astype(np.int32),
        num_users=len(users),
        num_items=len(items),
    )
    model = ImplicitFactorizationModel(
        loss=loss, n_iter=1, batch_size=batch_size, random_state=np.random.RandomState(seed)
    )
    wall, cpu = timed(partial(model.fit, interactions))
    return wall, cpu, timed(partial(model.fit, interactions))[0]


def ours_fit(ratings: pd.DataFrame, loss: str, batch_size: int, seed: int) -> tuple[float, float, float]:
    """Wall and CPU seconds of a one-epoch ``fit`` of ours from scratch, and its epoch's wall seconds."""
    model = ImplicitFactorization(loss=loss, n_iter=1, batch_size=batch_size, seed=seed, device="cpu")
    wall, cpu = timed(partial(model.fit, ratings))
    return wall, cpu, model.history_[0]["epoch_seconds"]


def compare(args: argparse.Namespace) -> list[dict[str, Any]]:
    sys.path.insert(0, os.environ["SPOTLIGHT_SRC"])
    rows = []
    for dataset in args.datasets:
        ratings = load_dataset(dataset)
        for loss in args.losses:
            spotlight, ours = [], []
            for repeat in range(args.repeats):
                spotlight.append(spotlight_fit(ratings, loss, args.batch_size, repeat))
                ours.append(ours_fit(ratings, loss, args.batch_size, repeat))
            (s_wall, s_cpu, s_epoch), (o_wall, o_cpu, o_epoch) = np.min(spotlight, 0), np.min(ours, 0)
            row = {
                "dataset": dataset,
                "interactions": len(ratings),
                "loss": loss,
                "batch_size": args.batch_size,
                "spotlight_fit_seconds": s_wall,
                "ours_fit_seconds": o_wall,
                "speedup": s_wall / o_wall,
                "spotlight_fit_cpu_seconds": s_cpu,
                "ours_fit_cpu_seconds": o_cpu,
                "speedup_cpu_time": s_cpu / o_cpu,
                "spotlight_epoch_seconds": s_epoch,
                "ours_epoch_seconds": o_epoch,
                "speedup_epoch": s_epoch / o_epoch,
                "load_average": os.getloadavg()[0],
            }
            print(
                f"{dataset:>14} {loss:>15} batch {args.batch_size}, best of {args.repeats}: one-epoch fit: "
                f"Spotlight {s_wall:5.2f} s ({s_cpu:5.2f} s CPU), ours {o_wall:5.2f} s ({o_cpu:5.2f} s CPU): "
                f"{row['speedup']:.1f}× ({row['speedup_cpu_time']:.1f}× in CPU time); epoch alone: "
                f"{s_epoch:5.2f} s vs {o_epoch:5.2f} s: {row['speedup_epoch']:.1f}×; "
                f"load {row['load_average']:.1f}",
                flush=True,
            )
            rows.append(row)
    return rows


def throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    ratings = load_dataset(args.dataset)
    rows = []
    for mixed_precision in sorted({False, args.mixed_precision}):
        for batch_size in args.batch_sizes:
            model = ImplicitFactorization(
                loss="bpr",
                embedding_dim=args.embedding_dim,
                n_iter=args.n_iter,
                batch_size=batch_size,
                learning_rate=args.learning_rate,
                device=args.device,
                seed=0,
                mixed_precision=mixed_precision,
            ).fit(ratings)
            best = max(h["interactions_per_second"] for h in model.history_[1:] or model.history_)
            row = {
                "dataset": args.dataset,
                "device": str(model.module_.weight.device),
                "gpu": torch.cuda.get_device_name() if model.module_.weight.is_cuda else None,
                "embedding_dim": args.embedding_dim,
                "batch_size": batch_size,
                "mixed_precision": mixed_precision,
                "interactions_per_second": best,
                "losses": [h["loss"] for h in model.history_],
            }
            print(
                f"{args.dataset} on {row['gpu'] or row['device']}, bpr d={args.embedding_dim}, batch {batch_size}, "
                f"mixed precision {mixed_precision}: {best / 1e6:.2f}M interactions/s",
                flush=True,
            )
            rows.append(row)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="per-epoch seconds against Spotlight (CPU, needs SPOTLIGHT_SRC)")
    cmp.add_argument("--datasets", nargs="+", default=["100k", "latest-small", "synthetic-1m"])
    cmp.add_argument("--losses", nargs="+", default=["bpr", "adaptive_hinge", "hinge", "pointwise"])
    cmp.add_argument("--batch-size", type=int, default=256)
    cmp.add_argument("--repeats", type=int, default=3)
    thr = sub.add_parser("throughput", help="interactions/s of bpr at several batch sizes")
    thr.add_argument("--dataset", default="synthetic-1m")
    thr.add_argument("--device", default="auto")
    thr.add_argument("--embedding-dim", type=int, default=64)
    thr.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 4096, 65536, 262144])
    thr.add_argument("--learning-rate", type=float, default=1e-2)
    thr.add_argument("--n-iter", type=int, default=3)
    thr.add_argument("--mixed-precision", action="store_true", help="also run with bfloat16 batch arithmetic")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "compare" and not os.environ.get("SPOTLIGHT_SRC"):
        sys.exit("compare needs SPOTLIGHT_SRC: a checkout of github.com/maciejkula/spotlight (not on PyPI).")
    rows = compare(args) if args.command == "compare" else throughput(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"implicit_mf_speed_{args.command}.json"
    path.write_text(json.dumps({"params": vars(args), "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
