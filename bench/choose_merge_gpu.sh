#!/usr/bin/env bash
# The merge weight and decoding of the CPU recipe chosen on validation sets, on the GPU machine (device tool), after
# `bench/recipes_gpu.sh prepare 80` and `run 80:default_1000_rep4 80:default_1000_rep4_s1 ...` on the same warm
# machine (its /tmp/w80, /tmp/w_<recipe>_pt80 and /tmp/base_fp32.nemo). The tree with models/, nothing carried:
#   OUT=$OUT bash bench/choose_merge_gpu.sh [WEIGHT...]      (default 0.85 0.7 0.55)
# takes the base's LM (or builds one: clinasr lm's defaults, from its own training text), merges every fine-tune with the base at
# each weight (bench/merge_nemo.py), scores base and fine-tunes greedily, with their LM and under the phantom guard
# (bench/phantom_guard_eval.py; each fine-tune's LM rebuilt as training rebuilds it) on the test sets and on the
# validation sets (clinical_dev: clinical_heldout's config, another seed; general_dev: bench/data/general_dev_en.txt),
# and chooses (bench/choose_merge.py). Piper's voice is not here: every set speaks in the espeak-ng held-out voices.
# Resumable: scores already in /tmp/choose are kept, so a call that ran out of time is simply run again.
set -uo pipefail
[ -d /tmp/site/nemo ] || { echo "no /tmp/site: run bench/recipes_gpu.sh prepare/run first on this warm machine"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD/include PYTHONUNBUFFERED=1 TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 OMP_NUM_THREADS=2
eval "$(bash scripts/espeak-portable.sh install)"
final=${OUT:-bench/out/choose}; mkdir -p "$final" /tmp/ft
weights=${*:-0.85 0.7 0.55}
# the base's own LM: /tmp/base_fp32.nemo carries it (bench/resave_fp32.py keeps it since 2026-12-03); a base
# without one gets clinasr lm's defaults from its own training text
base_lm=/tmp/base_fp32.nemo
if ! python3 -c "import sys; from clinasr import lm; sys.exit(lm.embedded('$base_lm') is None)"; then
  base_lm=/tmp/base_lm.nemo
  [ -f $base_lm ] || python3 - <<'PY' || exit 4
from clinasr import lm
r = lm.build_stage({"model": "/tmp/base_fp32.nemo", "texts": ["include/clinasr/data/general_en_v2.txt.gz"],
                    "out": "/tmp/base_lm.nemo"})   # clinasr lm's defaults: order 4, lm.DEFAULT_DECODING
print("[choose] base LM:", r["spec"]["sentences"], "sentences,", r["seconds"], "s")
PY
fi
pairs=()
for d in /tmp/w_default_1000_rep4*_pt80; do
  r=$(basename "$d"); r=${r#w_}; r=${r%_pt80}; s=${r#default_1000_rep4}; s=${s#_}; s=${s:-s0}
  [ -f "$d/ft_$r/model.nemo" ] || { echo "no $d/ft_$r/model.nemo"; continue; }
  [ -f "/tmp/ft/$s.nemo" ] || cp "$d/ft_$r/model.nemo" "/tmp/ft/$s.nemo"
  pairs+=(--pair "$s=/tmp/ft/$s.nemo")
  for w in $weights; do
    m="/tmp/ft/${s}_m$(python3 -c "print(round($w * 100))").nemo"
    [ -f "$m" ] || python3 bench/merge_nemo.py --base /tmp/base_fp32.nemo --alpha "$w" --out /tmp/ft "/tmp/ft/$s.nemo" > /dev/null || exit 5
    pairs+=(--pair "$(basename "${m%.nemo}")=$m")
  done
done
[ ${#pairs[@]} -gt 0 ] || { echo "no fine-tunes under /tmp/w_default_1000_rep4*_pt80"; exit 6; }
python3 bench/phantom_guard_eval.py --work /tmp/w80 --base greedy=/tmp/base_fp32.nemo lm=$base_lm "${pairs[@]}" \
  --set general_check=bench/data/general_check_en.txt --set general_dev=bench/data/general_dev_en.txt \
  --clinical-set clinical_dev=201 --jobs 8 --out /tmp/choose > /tmp/choose.log 2>&1 || { tail -30 /tmp/choose.log; exit 7; }
python3 bench/choose_merge.py /tmp/choose/results.json --dev-clinical clinical_dev --dev-general general_dev \
  --test-clinical clinical_heldout --test-general general_heldout general_check --out "$final" || exit 8
cp /tmp/choose/results.json "$final/guard-results.json"; cp /tmp/choose/results.md "$final/guard-results.md"
