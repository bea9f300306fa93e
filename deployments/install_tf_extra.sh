#!/usr/bin/env bash
# Install the [tf] extra (TensorFlow 2.15 + Horovod 0.28.1) into the active Python environment.
#
# Why a script and not just `pip install -e '.[tf]'`: Horovod 0.28.1 (its last release) compiles its
# TensorFlow ops against the TensorFlow that is already installed, so it must be built after it, without
# pip's build isolation and with the framework switches below. It does not build against TensorFlow 2.16+
# nor against torch 2.13 (C++14), hence HOROVOD_WITHOUT_PYTORCH. About 2 minutes on 2 cores; pip caches
# the wheel, so later runs take seconds. Usage (from the repository root, venv active):
#
#   bash deployments/install_tf_extra.sh            # CPU: tensorflow-cpu, Horovod with Gloo
#   TF_PACKAGE='tensorflow[and-cuda]==2.15.1' HOROVOD_GPU_OPERATIONS=NCCL bash deployments/install_tf_extra.sh
set -euo pipefail

TF_PACKAGE="${TF_PACKAGE:-tensorflow-cpu==2.15.1}"
PYTHON="${PYTHON:-python}"

if ! "$PYTHON" -c 'import tensorflow, sys; sys.exit(tensorflow.__version__ != "2.15.1")' 2>/dev/null; then
    "$PYTHON" -m pip install "$TF_PACKAGE"
fi

if ! "$PYTHON" -c 'import horovod.tensorflow' 2>/dev/null; then
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
        "$PYTHON" -m pip install --no-build-isolation horovod==0.28.1
fi

"$PYTHON" -m pip check
"$PYTHON" -c 'import horovod.tensorflow as hvd, tensorflow as tf; print("tf", tf.__version__, "horovod ok")'
