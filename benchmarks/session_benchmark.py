"""Session protocol benchmark (issue 17): AOD table on ml-100k and ml-latest-small (mean ± std over seeds)
and the transformers' train throughput (sessions/s) on synthetic sessions, on CPU or ``--device cuda``.

    python -m benchmarks.session_benchmark aod --sizes 100k,latest-small --seeds 0,1,2
    python -m benchmarks.session_benchmark throughput --device cpu --n-items 500000 --sessions 20000
    python -m benchmarks.session_benchmark throughput --device cuda --n-items 500000 --sessions 2000000 \
        --batch-size 1024 --precision bf16

Prints a table and writes JSON (``--out``). Model parameters: ``--param gpt2.epochs=8`` (JSON values).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from flows.validation import parse_model_params
from recmodels import datasets, sequences
from recmodels.session_eval import average_over_windows, incremental_evaluation
from recmodels.synthetic_sessions import synthetic_sessions
from tasks.sessions import create_session_model

MIRROR = Path(
    os.environ.get("MOVIELENS_MIRROR", Path(__file__).resolve().parents[2] / "shared/datasets/movielens")
)
FILES = {"100k": ("ml-100k/u.data", "tab"), "latest-small": ("ml-latest-small/ratings.csv", "csv")}
DETERMINISTIC = {"popularity", "item_knn", "session_knn"}


def aod_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    params = parse_model_params(args.param)
    for size in args.sizes.split(","):
        path, fmt = FILES[size]
        config = sequences.SessionConfig(window_days=sequences.default_window_days(size))
        data = sequences.build_sessions(datasets.parse_ratings(MIRROR / path, fmt), config)
        for name in args.models.split(","):
            model_params = dict(params.get(name, {}))
            replay = int(model_params.pop("replay_windows", 0))
            seeds = [0] if name in DETERMINISTIC else [int(s) for s in args.seeds.split(",")]
            results = []
            for seed in seeds:
                model = create_session_model(name, data.n_items, model_params, seed)
                start = time.perf_counter()
                per_window = incremental_evaluation(model, data.windows, replay)
                results.append({**average_over_windows(per_window), "seconds": time.perf_counter() - start})
            row = {"size": size, "model": name, "seeds": len(seeds), "replay_windows": replay, **model_params}
            for key in results[0]:
                values = np.array([r[key] for r in results])
                row[key], row[f"{key}_std"] = (
                    float(values.mean()),
                    float(values.std(ddof=1) if len(values) > 1 else 0.0),
                )
            rows.append(row)
            print(
                f"{size:13s} {name:12s} NDCG@10 {row['aod_ndcg_at_10']:.4f} ± {row['aod_ndcg_at_10_std']:.4f}  "
                f"Recall@10 {row['aod_recall_at_10']:.4f} ± {row['aod_recall_at_10_std']:.4f}  "
                f"MRR@20 {row['aod_mrr_at_20']:.4f}  ({len(seeds)} seeds, {row['seconds']:.0f} s)",
                flush=True,
            )
    return rows


def throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    from recmodels.session_transformer import SessionTransformer, TransformerConfig

    start = time.perf_counter()
    data = synthetic_sessions(args.sessions, args.n_items, n_windows=2, seed=0)
    generate_seconds = time.perf_counter() - start
    train = list(next(iter(data.windows.values()))["item_index"])
    rows = []
    for architecture in args.architectures.split(","):
        config = TransformerConfig(
            architecture=architecture,
            d_model=args.d_model,
            n_layer=args.n_layer,
            n_head=args.n_head,
            max_len=20,
            epochs=1,
            batch_size=args.batch_size,
            precision=args.precision,
            device=args.device,
        )
        model = SessionTransformer(args.n_items, config)
        model.update(train[: args.batch_size * 2], [])  # warm-up: allocations, kernels
        if model.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        start = time.perf_counter()
        model.update(train, [])
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        row = {
            "architecture": architecture,
            "device": str(model.device),
            "n_items": args.n_items,
            "train_sessions": len(train),
            "batch_size": args.batch_size,
            "d_model": args.d_model,
            "n_layer": args.n_layer,
            "precision": args.precision,
            "seconds": seconds,
            "sessions_per_second": len(train) / seconds,
            "generate_seconds": generate_seconds,
            "load_average": os.getloadavg()[0],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    aod = sub.add_parser("aod")
    aod.add_argument("--sizes", default="100k,latest-small")
    aod.add_argument("--models", default="popularity,item_knn,session_knn,gpt2,xlnet")
    aod.add_argument("--seeds", default="0,1,2")
    aod.add_argument("--param", action="append", default=[], metavar="MODEL.NAME=VALUE")
    aod.add_argument("--out", default="benchmarks/results/session_benchmark_aod.json")
    speed = sub.add_parser("throughput")
    speed.add_argument("--device", default="cpu")
    speed.add_argument("--architectures", default="gpt2,xlnet")
    speed.add_argument("--n-items", type=int, default=500_000)
    speed.add_argument("--sessions", type=int, default=20_000)
    speed.add_argument("--batch-size", type=int, default=256)
    speed.add_argument("--d-model", type=int, default=256)
    speed.add_argument("--n-layer", type=int, default=2)
    speed.add_argument("--n-head", type=int, default=4)
    speed.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    speed.add_argument("--out", default="benchmarks/results/session_benchmark_throughput.json")
    args = parser.parse_args()
    rows = aod_table(args) if args.command == "aod" else throughput(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"load_average": os.getloadavg(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
