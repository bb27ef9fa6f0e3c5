#!/usr/bin/env bash
# Sets up everything clinasr needs on a Debian machine with Python 3.11, idempotently:
#   1. system packages (espeak-ng and flite for TTS, sox/ffmpeg for audio, libsndfile, chromium for page tests,
#      wamerican: an English word list for drift's lexicon proposals, wordnet-base fortunes-min fortunes:
#      the sources of the general-English text v2, clinasr.synth.general.write_v2),
#   2. the orchestration runtime  .venv/orch  (Airflow 3, MLflow, boto3, openai, moto server),
#   3. the ML runtime             .venv/ml    (torch CPU, NeMo ASR, DeepSpeed, TTS engines).
# The two runtimes cannot be one environment (NeMo pins packaging<25 through lightning 2.4; Airflow 3
# needs packaging>=25). A second run reuses what is installed: each env carries a stamp of the
# requirement files it was built from and is rebuilt only when they change.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${CLINASR_PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_EXTRA_INDEX_URL=
[ -d /opt/wheels ] && export PIP_FIND_LINKS=/opt/wheels   # this machine kind ships the CPU torch wheel there

step() { printf '\n\033[1m[setup] %s\033[0m\n' "$*"; }
pipq() { "$@" 2>&1 | grep -vE "^WARNING: Location|^WARNING: Skipping" || true; return "${PIPESTATUS[0]}"; }

# ---- 1. system packages -------------------------------------------------------------------------
APT_PKGS="espeak-ng flite sox ffmpeg libsndfile1 chromium wamerican wordnet-base fortunes-min fortunes"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  step "installing system packages:$missing"
  if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
    echo "error: need root (or sudo) to install:$missing — install them and re-run." >&2; exit 1
  fi
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
else
  step "system packages present ($APT_PKGS)"
fi

# ---- 2./3. the two Python runtimes --------------------------------------------------------------
build_env() {  # name requirements constraints [extra command]
  local name=$1 req=$2 lock=$3 venv=".venv/$1"
  local stamp
  stamp=$(cat "$req" "$lock" pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
  if [ -f "$venv/.clinasr-stamp" ] && [ "$(cat "$venv/.clinasr-stamp")" = "$stamp" ]; then
    step "$name runtime up to date ($venv)"; return 0
  fi
  step "building the $name runtime in $venv (first time: 2-3 minutes)"
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  pipq "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
  pipq "$venv/bin/python" -m pip install -q -r "$req" -c "$lock"
  if [ "$name" = ml ]; then
    # DeepSpeed ships only an sdist; build it pure-Python (ops are JIT-compiled on GPU machines).
    DS_BUILD_OPS=0 pipq "$venv/bin/python" -m pip install -q --no-build-isolation deepspeed==0.19.8
  fi
  pipq "$venv/bin/python" -m pip install -q --no-deps -e .
  echo "$stamp" > "$venv/.clinasr-stamp"
}
build_env orch requirements.txt constraints/orch.txt
build_env ml requirements-ml.txt constraints/ml.txt
step "ready: orchestration python $ROOT/.venv/orch/bin/python, ML python $ROOT/.venv/ml/bin/python"
