#!/usr/bin/env bash
# The GPU check: certification and fine-tuning throughput at the real model sizes -> bench/RESULTS_GPU.md.
#
#   bench/gpu_check.sh              on a machine with a CUDA GPU (about 8 minutes)
#   bench/gpu_check.sh --dry-run    on the CPU: the same code paths on the tiny models
#   make bench-gpu                  the same as the first line
#
# Python: $PYTHON, else .venv/bin/python (made by `make install`), else python3. Packages that Python lacks
# are installed first: from the wheels in the folder $MSDS_WHEELS (machines without internet; into
# $MSDS_SITE, default /tmp/msds-site), else `pip install -e .` from PyPI. Options: bench/gpu_check.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [[ " $* " != *" --dry-run "* && " $* " != *" --help "* && " $* " != *" -h "* ]] \
    && ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU is visible to $PYTHON's torch; run on a GPU machine, or bench/gpu_check.sh --dry-run" >&2
    exit 2
fi
if ! "$PYTHON" -c "import diffusers, timm, lightning, jsonargparse, scipy, statsmodels" 2>/dev/null; then
    if [ -n "${MSDS_WHEELS:-}" ]; then
        site=${MSDS_SITE:-/tmp/msds-site}
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$MSDS_WHEELS"/*.whl
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    else
        "$PYTHON" -m pip install -q -e .
    fi
fi
exec "$PYTHON" bench/gpu_check.py "$@"
