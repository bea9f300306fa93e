"""TorchX component: the BERT4Rec/SASRec torchrun job on Slurm, Kubernetes or locally, as in the seed.

TorchX is not a dependency of this project (``pip install torchx``). The job is the one
:func:`tasks.launcher.launch` runs, ``nproc`` ranks of :mod:`tasks.sequential_worker`, so either

    torchx run -s local_cwd dist.ddp -j 1x2 -m tasks.sequential_worker -- \\
        --model sasrec --prepared <home>/prepared/<key> --output out --params '{"mode": "dmp", "nproc": 2}'

(TorchX's built-in ``dist.ddp``) or this file's component, which fills in the module and the image:

    torchx run -s local_cwd tasks/torchx_components.py:sequential --nnodes 1 --nproc 2 -- \\
        --model sasrec --prepared <folder> --output out --params '{"mode": "dmp", "nproc": 2}'

With ``-s slurm`` or ``-s kubernetes`` the same job goes to a cluster (``--image``: an image with this
project and the torchrec extra, e.g. ``docker/``'s GPU image; ``--gpu 1`` per rank for nccl). The
prepared folder must then be a URL every node reads (``s3://...``, DESIGN.md).
"""

from __future__ import annotations

from typing import Any


def sequential(
    *worker_args: str,
    nnodes: int = 1,
    nproc: int = 2,
    image: str = "movielens-benchmark:latest",
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,  # TorchX's resource argument name
) -> Any:
    """``nnodes`` × ``nproc`` ranks of ``python -m tasks.sequential_worker <worker_args>``."""
    from torchx.components import dist

    return dist.ddp(
        *worker_args,
        m="tasks.sequential_worker",
        j=f"{nnodes}x{nproc}",
        image=image,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        name="sequential",
    )
