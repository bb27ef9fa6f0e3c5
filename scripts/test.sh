#!/usr/bin/env bash
# Runs the whole test suite: the orchestration-runtime tests, then the ML-runtime tests (tests marked
# `ml`). Each test file runs in exactly one runtime (tests/conftest.py routes them).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
rc=0
echo "== orchestration runtime tests (.venv/orch)"
.venv/orch/bin/python -m pytest -q -p no:cacheprovider "$@" || rc=$?
echo "== ML runtime tests (.venv/ml)"
.venv/ml/bin/python -m pytest -q -p no:cacheprovider "$@" || rc=$?
exit $rc
