"""The control of the recipes experiment: the default recipe's fine-tune on the general-English replay rows alone
(no clinical row), scored on the held-out sets with paired CIs against the base — what fine-tuning costs in
everyday English before any drug is learnt (docs/benchmarks.md, "Half of the rise is the cost of fine-tuning at
all"). Needs the sets of an earlier `bench/recipes_experiment.py` run in --work. ML runtime:

    .venv/ml/bin/python bench/replay_only_control.py --work /tmp/clinasr-recipes --out bench/out/replay-only.json
    .venv/ml/bin/python bench/replay_only_control.py --as-default --steps 1000 --base models/clinasr-base-en-multi/model.nemo \
        --work /tmp/clinasr-recipes-v6 --out bench/results/recipes-cpu-multibase-v6-replay-only.json   # base v6
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from clinasr import experiment as E, metrics  # noqa: E402

BASE = Path(__file__).resolve().parents[1] / "models" / "clinasr-base-en-multi" / "model.nemo"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/clinasr-recipes", help="the recipes experiment's work dir (its sets)")
    ap.add_argument("--out", default="bench/out/replay-only.json")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--base", default=str(BASE), help="the base .nemo (default: the shipped one)")
    ap.add_argument("--as-default", action="store_true",
                    help="the default recipe as it is now (distillation and batch-norm statistics as in "
                         "configs/trainer/cpu_finetune.yaml), not as it was when the control was first measured")
    a = ap.parse_args(argv)
    base_nemo = Path(a.base)
    # as first measured (2026-12-01): the recipe before distillation became the default
    then = {} if a.as_default else {"distill_from_base": 0, "keep_batch_norm_statistics": False}
    overrides = {"max_steps": a.steps, "replay": {"ratio": 0}, **then}
    w = Path(a.work)
    man = {n: str(w / "evalsets" / n / "test_manifest.jsonl") for n in ("clinical_heldout", "general_heldout")}
    missing = [m for m in [*man.values(), str(w / "evalsets" / "general_replay" / "train_manifest.jsonl")] if not Path(m).exists()]
    if missing:
        ap.error(f"no sets in {w} ({missing[0]} missing): run bench/recipes_experiment.py --prepare-only --work {w} first")
    t0 = time.time()
    tr = E._train({"dataset": str(w / "evalsets" / "general_replay"), "base": {"nemo": str(base_nemo)},
                   "trainer": "configs/trainer/cpu_finetune.yaml",
                   "trainer_overrides": {**overrides, "max_minutes": 15},
                   "output_dir": str(w / "ft_replay_only"), "seed": 0}, print,
                  score_on={"manifests": man, "out": str(w / "eval"), "name": "replay_only"})
    rows = {k: v.pop("per_row") for k, v in tr["score"].items()}
    base = E._score_in_subprocess(base_nemo, man, w / "eval" / "base_control")
    res = {"base": str(base_nemo), "overrides": overrides,
           "train_seconds": tr["train_seconds"], "global_step": tr["global_step"], "wall": round(time.time() - t0),
           "vs_base": {k: metrics.paired_reduction_ci(base[k]["per_row"], rows[k]) for k in rows},
           **{k: E._scores(v) for k, v in tr["score"].items()}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1, default=str))
    g = res["vs_base"]["general_heldout"]["wer_change"]
    print(f"general-English WER {res['general_heldout']['wer']:.3f}, change {g['estimate']:+.3f} "
          f"[{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}] over the base; written to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
