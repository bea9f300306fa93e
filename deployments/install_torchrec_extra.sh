#!/usr/bin/env bash
# Install the [torchrec] extra (TorchRec 1.8.0 + FBGEMM 1.8.0) into the active Python environment, for
# recmodels/bert4rec.py and recmodels/sasrec.py.
#
# Why a script and not just `pip install -e '.[torchrec]'`: torchrec 1.8.0 declares `fbgemm-gpu`, whose
# PyPI wheel is the CUDA build (and pulls CUDA libraries); on CPU the same `fbgemm_gpu` package comes as
# the distribution `fbgemm-gpu-cpu`. So the packages that would pull torch or CUDA are installed with
# --no-deps (after the CPU torch), and their own dependencies (none of which needs torch) from the pins
# below, tested together with torch 2.13.0 (CPU), numpy 1.26.4 and 2 gloo ranks under torchrun.
# fbgemm-gpu-cpu 1.9.0 does not load with torch 2.13.0 (undefined symbol); torchrec pins torchmetrics.
#
# `pip check` stays clean: torchrec's wheel is re-packed with its `Requires-Dist: fbgemm-gpu` pointed at
# the FBGEMM distribution actually installed (fbgemm-gpu-cpu on CPU), which provides the same import
# package; nothing else in the wheel changes (`wheel unpack` / `wheel pack` rewrite RECORD's hashes).
# On a GPU machine (CUDA torch already installed) use the CUDA build, with torchrec's metadata as is:
#
#   bash deployments/install_torchrec_extra.sh                                  # CPU
#   FBGEMM_PACKAGE=fbgemm-gpu==1.8.0 bash deployments/install_torchrec_extra.sh # GPU (CUDA torch present)
set -euo pipefail

PYTHON="${PYTHON:-python}"
FBGEMM_PACKAGE="${FBGEMM_PACKAGE:-fbgemm-gpu-cpu==1.8.0}"
TORCHREC_VERSION=1.8.0
DEPS=(
    "numpy>=1.26.4,<2"
    "tqdm>=4.66"
    "pyre-extensions==0.0.32"
    "iopath==0.1.10"
    "cloudpickle>=3"
    "pyvers>=0.2,<0.3"          # tensordict's
    "lightning-utilities>=0.10" # torchmetrics'
)

if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
    echo "install torch first (CPU: pip install torch==2.13.0), so that nothing pulls a CUDA build" >&2
    exit 1
fi

"$PYTHON" -m pip install -q "${DEPS[@]}"
"$PYTHON" -m pip install -q --no-deps "$FBGEMM_PACKAGE" "tensordict==0.15.3" "torchmetrics==1.0.3"

if ! "$PYTHON" -c "import importlib.metadata as m, sys; sys.exit(m.version('torchrec') != '$TORCHREC_VERSION')" 2>/dev/null \
    || ! "$PYTHON" -m pip check >/dev/null 2>&1; then
    fbgemm_name="${FBGEMM_PACKAGE%%[=<>]*}"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    "$PYTHON" -m pip download -q --no-deps -d "$work/download" "torchrec==$TORCHREC_VERSION"
    wheel_file="$(ls "$work"/download/torchrec-*.whl)"
    if [ "$fbgemm_name" != "fbgemm-gpu" ]; then
        "$PYTHON" -m pip install -q "wheel>=0.43"
        "$PYTHON" -m wheel unpack -d "$work/unpacked" "$wheel_file"
        metadata="$(ls "$work"/unpacked/torchrec-*/torchrec-*.dist-info/METADATA)"
        sed -i "s/^Requires-Dist: fbgemm-gpu\$/Requires-Dist: $fbgemm_name==$TORCHREC_VERSION/" "$metadata"
        grep -q "^Requires-Dist: $fbgemm_name==" "$metadata"
        mkdir -p "$work/repacked"
        "$PYTHON" -m wheel pack -d "$work/repacked" "$(dirname "$(dirname "$metadata")")" >/dev/null
        wheel_file="$(ls "$work"/repacked/torchrec-*.whl)"
    fi
    "$PYTHON" -m pip install -q --no-deps --force-reinstall "$wheel_file"
fi

"$PYTHON" -m pip check
"$PYTHON" -c 'import torchrec, fbgemm_gpu, torch; print("torchrec", torchrec.__version__, "torch", torch.__version__, "ok")'
