#!/usr/bin/env bash
# The recipe search on the GPU machine (device tool): the same recipes, steps and batch as the 2-core CPU
# measurement (fp32, batch 8), many at once on one GPU, to choose which ones the CPU measurement runs.
# Carry .whl and .espeak (see bench/results/README.md). Piper's voice package is too large to carry, so the
# held-out sets there have the espeak-ng held-out voices only (the card lists the voices used).
#   bash bench/recipes_gpu.sh STEPS RECIPE...
set -uo pipefail
steps=$1; shift
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/include
# torch 2.11 there refuses the shipped half-precision .nemo as weights-only; it is our own file
export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
eval "$(bash scripts/espeak-portable.sh install)"
final=${OUT:-bench/out/recipes-gpu}; out=/tmp/recipes-out; mkdir -p "$out" "$final"
first=$1; shift
# the shipped half-precision .nemo, re-saved as a plain fp32 .nemo in a clean interpreter: restoring the shipped
# file in the experiment's processes failed inside torch 2.11's unpickler there ("'str' object is not callable")
python3 -c "
from nemo.collections.asr.models import ASRModel
ASRModel.restore_from('models/clinasr-base-en-multi/model.nemo', map_location='cpu').save_to('/tmp/base_fp32.nemo')
" > /tmp/convert.log 2>&1 || { tail -20 /tmp/convert.log; exit 5; }
# the first recipe builds the sets and the clinical training set (16 CPU workers) and scores the base
python3 bench/recipes_experiment.py --only "$first" --base /tmp/base_fp32.nemo --steps "$steps" --work /tmp/w2 --out "$out/$first" \
  > "$out/$first.log" 2>&1 || { tail -50 "$out/$first.log"; exit 4; }
grep '\[recipes\]' "$out/$first.log"
for r in "$@"; do   # the rest in parallel, each on its own copy of the work dir
  cp -r /tmp/w2 "/tmp/w_$r"
  OMP_NUM_THREADS=2 python3 bench/recipes_experiment.py --only "$r" --base /tmp/base_fp32.nemo --steps "$steps" --work "/tmp/w_$r" --out "$out/$r" > "$out/$r.log" 2>&1 &
done
wait
for r in "$@"; do grep '\[recipes\] '"$r"'\|Error' "$out/$r.log" | tail -3; done
# one file back: every run's results (the device tool returns at most 8 files)
python3 - "$out" "$final/recipes-gpu.json" "$first" "$@" <<'PY'
import json, sys
from pathlib import Path
from clinasr.experiment import recipes_md
out, dst, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
merged = None
for n in names:
    f = out / n / "results.json"
    if not f.exists():
        print(f"{n}: no results"); continue
    r = json.loads(f.read_text())
    merged = merged or r
    merged["runs"].update(r["runs"])
dst.write_text(json.dumps(merged, indent=1, default=str))
(dst.with_suffix(".md")).write_text(recipes_md(merged))
print(recipes_md(merged))
PY
