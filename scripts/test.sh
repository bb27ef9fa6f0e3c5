#!/usr/bin/env bash
# Runs the whole test suite: the orchestration-runtime tests, then the ML-runtime tests (tests marked
# `ml`). Each test file runs in exactly one runtime (tests/conftest.py routes them). Each run lists its ten
# slowest tests, so the suite's budget (well under 30 min on 2 cores) can be watched from CI's log.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
rc=0
echo "== orchestration runtime tests (.venv/orch)"
.venv/orch/bin/python -m pytest -q -p no:cacheprovider --durations=10 "$@" || rc=$?
echo "== ML runtime tests (.venv/ml)"
.venv/ml/bin/python -m pytest -q -p no:cacheprovider --durations=10 "$@" || rc=$?
exit $rc
