"""torchrun worker of the session transformers (tasks/launcher.py, shared with bert4rec/sasrec): every rank runs the incremental loop
on the prepared session data with DDP gradients; rank 0 writes the per-window results, the model and
``result.json``; every rank writes a checksum of its weights (equal ranks ⇔ DDP kept them in sync)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch.distributed as dist

from recmodels.errors import BenchmarkError
from recmodels.session_eval import average_over_windows, incremental_evaluation
from recmodels.session_transformer import SessionTransformer, TransformerConfig, resolve_device
from tasks.launcher import backend, report_error
from tasks.prepared import PreparedData
from tasks.sessions import read_session_data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True)
    parser.add_argument("--prepared", required=True, help="prepared session folder (with manifest.json)")
    parser.add_argument("--params", default="{}", help="TransformerConfig fields as JSON")
    parser.add_argument("--replay-windows", type=int, default=0)
    args = parser.parse_args()
    config = TransformerConfig(**json.loads(args.params))
    device = resolve_device(config.device)
    dist.init_process_group(backend(device.type))
    rank, world = dist.get_rank(), dist.get_world_size()
    folder = Path(args.prepared)
    data = read_session_data(PreparedData(str(folder), json.loads((folder / "manifest.json").read_text())))
    model = SessionTransformer(data.n_items, config, rank, world)
    per_window = incremental_evaluation(model, data.windows, args.replay_windows)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    checksum = float(sum(p.detach().double().sum().item() for p in model.module_.parameters()))
    (output / f"checksum-{rank}.json").write_text(json.dumps(checksum))
    dist.barrier()
    if rank == 0:
        per_window.to_csv(output / "eval_train_results_dates.csv", index=False)
        model.save(output / "model")
        result = {
            "world_size": world,
            "aod": average_over_windows(per_window),
            "window_losses": model.window_losses,
            "checksums": [json.loads((output / f"checksum-{r}.json").read_text()) for r in range(world)],
        }
        tmp = output / "results.json.tmp"
        tmp.write_text(json.dumps(result))
        tmp.replace(output / "results.json")  # whole or absent: the launcher reads it after exit
    dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as exc:  # a user mistake: one line, raised again by the launcher
        report_error(exc)
        sys.exit(2)
