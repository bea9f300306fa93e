"""BERT4Rec / SASRec training worker: one rank of ``torchrun`` (started by :func:`tasks.launcher.launch`).

``python -m torch.distributed.run --standalone --nproc-per-node N -m tasks.sequential_worker --model
sasrec --prepared <folder> --output <dir> --params '{"mode": "dmp", "nproc": N}'``: every rank joins the
process group (gloo on CPU, nccl on GPU), reads the leave-one-out sets (train, validation, test), trains
its share (``recmodels.sequential``; dmp shards the item table, ddp replicates it), and takes part in the
evaluation. Rank 0 logs parameters and per-epoch metrics (loss, validation_ndcg_at_10, epoch_seconds,
records_per_second, with ``step``) to MLflow as they come, then the test metrics (full ranking and
``sampled_``), the model (each rank's state: its shard of the table under dmp) and writes
``results.json`` and ``recommendations.parquet`` to ``--output``. Every rank writes
``layout/rank<r>.json`` (item-table rows it holds, and the whole table's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recmodels.errors import BenchmarkError, EmptySplit
from recmodels.registry import create_model
from tasks import storage
from tasks.launcher import backend, report_error, threads_per_process

SEQUENCE_MODELS = ("bert4rec", "sasrec")


def worker_args(
    model: str,
    prepared: str,
    output: str | Path,
    params: dict[str, Any],
    k: int,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    checkpoint_dir: str | Path | None = None,
) -> list[str]:
    """The worker's command-line arguments (for :func:`tasks.launcher.launch`)."""
    args = ["--model", model, "--prepared", prepared, "--output", str(output), "--params", json.dumps(params)]
    args += ["--k", str(k)]
    if tracking_uri and run_id:
        args += ["--tracking-uri", tracking_uri, "--run-id", run_id]
    if checkpoint_dir:
        args += ["--checkpoint-dir", str(checkpoint_dir)]
    return args


def read_leave_one_out(folder: str) -> dict[str, Any]:
    """train, validation and test of a leave-one-out prepared folder (path or URL)."""
    frames = {}
    for name in ("train", "validation", "test"):
        url = storage.join(folder, f"{name}.parquet")
        if not storage.exists(url):
            raise EmptySplit(f"{folder} has no {name}.parquet; bert4rec/sasrec need the leave_one_out split.")
        frames[name] = storage.read_parquet(url)
    return frames


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    import torch
    import torch.distributed as dist

    params = json.loads(args.params)
    model = create_model(args.model, **params)
    device = model._device()
    if not dist.is_initialized():
        dist.init_process_group(backend(device.type))
    rank = dist.get_rank()
    torch.set_num_threads(threads_per_process(dist.get_world_size()))
    frames = read_leave_one_out(args.prepared)
    logger = _EpochLogger(args.tracking_uri, args.run_id) if rank == 0 and args.run_id else None
    if logger is not None:
        logger.params({**model.params(), "world_size": dist.get_world_size()})
    start = time.perf_counter()
    validation = None if args.throughput else frames["validation"]
    model.fit(frames["train"], validation, on_epoch_end=logger, checkpoint_dir=args.checkpoint_dir)
    fit_seconds = time.perf_counter() - start
    output: Path = args.output
    (output / "layout").mkdir(parents=True, exist_ok=True)
    local, total = model.item_table_rows()
    (output / "layout" / f"rank{rank}.json").write_text(
        json.dumps({"rank": rank, "local_rows": local, "rows": total})
    )
    if args.throughput:  # training speed only: no evaluation, no recommendations
        if rank == 0:
            results = {
                "fit_seconds": fit_seconds,
                "world_size": dist.get_world_size(),
                "history": model.history_,
            }
            _write_json(output / "results.json", results)
        return None
    test_metrics = model.evaluate_leave_one_out(frames["test"])
    recs = model.recommend(frames["test"]["user_id"].unique(), k=args.k, exclude_seen=True)
    (output / "model").mkdir(exist_ok=True)
    torch.save(model.wrapped_.state_dict(), output / "model" / f"rank{rank}.pt")
    dist.barrier()
    if rank != 0:
        return None
    results = {
        **test_metrics,
        "fit_seconds": fit_seconds,
        "best_epoch": model.best_epoch_,
        "world_size": dist.get_world_size(),
        "history": model.history_,
        "params": model.params(),
    }
    recs.to_parquet(output / "recommendations.parquet.tmp", index=False)
    os.replace(output / "recommendations.parquet.tmp", output / "recommendations.parquet")
    if logger is not None:
        logger.artifacts(output / "model", "model")
    _write_json(output / "results.json", results)
    return results


def _write_json(path: Path, values: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(values, default=str))
    os.replace(tmp, path)


class _EpochLogger:
    """Rank 0's MLflow logging: parameters once, each epoch's record with ``step`` as it comes."""

    def __init__(self, uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client, self.run_id = MlflowClient(uri), run_id

    def params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in values.items()])

    def __call__(self, record: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(record["epoch"])
        metrics = [Metric(k, float(v), now, step) for k, v in record.items() if k != "epoch"]
        self.client.log_batch(self.run_id, metrics=metrics)

    def artifacts(self, folder: Path, path: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path=path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.sequential_worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", choices=SEQUENCE_MODELS, required=True)
    parser.add_argument("--prepared", required=True, help="leave-one-out prepared folder (path or URL)")
    parser.add_argument(
        "--output", type=Path, required=True, help="folder for results, recommendations, model"
    )
    parser.add_argument("--params", default="{}", help='model parameters as JSON, e.g. \'{"mode": "dmp"}\'')
    parser.add_argument("--k", type=int, default=10, help="recommendations per test user")
    parser.add_argument("--tracking-uri", default=None, help="MLflow URI (rank 0 logs into --run-id)")
    parser.add_argument("--run-id", default=None, help="existing MLflow run to log into")
    parser.add_argument("--checkpoint-dir", default=None, help="per-epoch checkpoints (resumed if present)")
    parser.add_argument("--throughput", action="store_true", help="train only (no validation, no evaluation)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = run(args)
    except BenchmarkError as exc:
        report_error(exc)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if results is not None:
        print(
            json.dumps(
                {k: results[k] for k in ("ndcg_at_10", "hr_at_10", "sampled_ndcg_at_10", "best_epoch")}
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
