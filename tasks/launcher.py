"""The one multi-process launcher for the torch models (DESIGN.md, "Multi-process training").

:func:`launch` starts N worker processes with ``torchrun`` (``python -m torch.distributed.run
--standalone --nproc-per-node N -m <worker module> ...``): one node, a local rendezvous, the usual
``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_*`` environment in each. The worker module (e.g.
:mod:`tasks.sequential_worker`) initialises ``torch.distributed`` (gloo on CPU, nccl on GPU, see
:func:`backend`), trains, and on rank 0 writes ``results.json`` (and whatever else) to its output folder;
:func:`launch` returns that dict, or raises :class:`BenchmarkError` with the failing rank's last lines.

The same job runs on Slurm or Kubernetes through TorchX: ``torchx run -s local_cwd dist.ddp -j 1x2
--script tasks/sequential_worker.py -- <worker args>`` (see ``tasks/torchx_components.py``; torchx is
not a dependency of this project: ``pip install torchx``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recmodels.errors import BenchmarkError, InvalidConfig


def available_processes(device: str = "cpu") -> int:
    """How many worker processes this machine allows: CPU cores this process may use, or GPUs."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.device_count()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_nproc(nproc: int, device: str = "cpu") -> None:
    """InvalidConfig unless 1 ≤ ``nproc`` ≤ :func:`available_processes`."""
    allowed = available_processes(device)
    if not 1 <= nproc <= allowed:
        unit = "GPUs" if device.startswith("cuda") else "CPU cores"
        raise InvalidConfig(
            f"nproc={nproc} but this machine allows 1 to {allowed} worker processes ({allowed} {unit}); "
            f"pass nproc between 1 and {allowed}, or run on a larger machine (torchx, see tasks/launcher.py)."
        )


def backend(device_type: str) -> str:
    """``nccl`` for CUDA ranks, ``gloo`` on the CPU."""
    return "nccl" if device_type == "cuda" else "gloo"


def command(nproc: int, module: str, args: Sequence[str]) -> list[str]:
    """The torchrun command line starting ``nproc`` processes of ``python -m module args``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={nproc}",
        "-m",
        module,
        *args,
    ]


def threads_per_process(nproc: int) -> int:
    """CPU threads each of ``nproc`` workers may use without oversubscribing the cores."""
    return max(1, available_processes() // nproc)


def launch(
    nproc: int,
    module: str,
    args: Sequence[str],
    output: str | Path,
    device: str = "cpu",
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run ``module`` as ``nproc`` torchrun ranks and return rank 0's ``<output>/results.json``."""
    check_nproc(nproc, device)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_process(nproc))}
    # the workers import this checkout's code, as the process that launches them does
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")) if p
    )
    try:
        done = subprocess.run(
            command(nproc, module, args), capture_output=True, text=True, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(
            f"torchrun --nproc-per-node={nproc} {module} ran past {timeout} s; raise the timeout."
        ) from exc
    results = Path(output) / "results.json"
    if done.returncode != 0 or not results.exists():
        raise _failure(done, nproc, module)
    return json.loads(results.read_text())


ERROR_MARK = "benchmark-error: "


def report_error(exc: BenchmarkError) -> None:
    """How a worker reports a user mistake (printed to stderr; :func:`launch` raises it again)."""
    print(f"{ERROR_MARK}{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def _failure(done: subprocess.CompletedProcess[str], nproc: int, module: str) -> BenchmarkError:
    """The workers' own error (same type and one-line message), or one with their last lines."""
    from recmodels import errors

    lines = (done.stdout + done.stderr).splitlines()
    for line in lines:
        if line.startswith(ERROR_MARK):
            kind, _, message = line[len(ERROR_MARK) :].partition(": ")
            error_type = getattr(errors, kind, BenchmarkError)
            return error_type(message) if isinstance(error_type, type) else BenchmarkError(message)
    tail = "\n".join(lines[-15:])
    return BenchmarkError(
        f"torchrun --nproc-per-node={nproc} -m {module} failed (exit {done.returncode}):\n{tail}"
    )
