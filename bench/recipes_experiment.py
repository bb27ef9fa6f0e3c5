"""Fine-tuning recipes against forgetting and phantom drugs (issue 20): the shipped base model fine-tuned on
30 priority drugs by each recipe of configs/experiment/recipes.yaml, scored beside the base on the clinical
and general-English held-out sets (voices, an engine and sentence shapes no training set used).

    python bench/recipes_experiment.py                      # every recipe, the config's CPU budget
    python bench/recipes_experiment.py --only today replay  # some recipes
    python bench/recipes_experiment.py --steps 20 --only replay_freeze   # a quick look (measures nothing)
    python bench/recipes_experiment.py --trained rep4_b32_1000=m.nemo     # score a GPU-trained fine-tune here

Writes results.json / results.md / recipes.log to --out (default bench/out/recipes). Runs in the ML runtime
(.venv/ml/bin/python). Each fine-tune runs in a fresh interpreter and is scored there, in memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from clinasr import experiment  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(experiment.RECIPES_CONFIG))
    ap.add_argument("--out", default=os.environ.get("OUT") or "bench/out/recipes")
    ap.add_argument("--work", default="/tmp/clinasr-recipes", help="sets, checkpoints (large; not returned)")
    ap.add_argument("--only", nargs="*", help="recipe names")
    ap.add_argument("--base", help="the base .nemo (default: the config's, the shipped model)")
    ap.add_argument("--steps", type=int, help="max_steps for every recipe (default: the trainer config's)")
    ap.add_argument("--per-term", type=int, help="clinical training utterances per priority term (default: the config's)")
    ap.add_argument("--synthesis", help="the synthesis config (voices, augmentation) of the clinical training set "
                    "(default: the config's clinical.synthesis, else configs/synthesis.yaml); give it its own --work")
    ap.add_argument("--replay-in-clinical-voices", action="store_true",
                    help="the replay set speaks the clinical set's voices that the base lacks too, each at its share of "
                         "the clinical rows (clinasr.evalsets.add_voices_of): no voice is heard only in clinical speech")
    ap.add_argument("--prepare-only", action="store_true",
                    help="render the sets and the clinical training set into --work, then stop (nothing is trained)")
    ap.add_argument("--base-scores", help="the base's scores on the held-out sets from `python -m clinasr.experiment "
                    "score` (JSON), instead of scoring it here")
    ap.add_argument("--trained", nargs="*", default=[], metavar="[PER_TERM:]RECIPE=MODEL.nemo",
                    help="score fine-tunes trained elsewhere (bench/recipes_gpu.sh RETURN_MODELS) on these sets beside "
                    "the base, on every engine (the GPU machine's sets lack Piper); trains nothing. PER_TERM: the "
                    "model trained on a clinical set of that size (a label)")
    ap.add_argument("--trainer-override", nargs="*", default=[], metavar="KEY=VALUE",
                    help="trainer options for every recipe (values read as YAML), e.g. max_minutes=null")
    ap.add_argument("--no-sweeps", action="store_true",
                    help="score each recipe's final model only (not its merge_sweep / checkpoint_sweep models)")
    experiment.add_decoding_option(ap)
    a = ap.parse_args(argv)
    cfg = yaml.safe_load(Path(a.config).read_text())
    experiment.set_decoding(a.decoding)
    if a.no_sweeps:
        for r in cfg["recipes"].values():
            r.pop("merge_sweep", None)
            r.pop("checkpoint_sweep", None)
    if a.base:
        cfg["base"] = str(Path(a.base).resolve())
    if a.per_term:
        cfg["clinical"]["per_term"] = a.per_term
    if a.synthesis:
        cfg["clinical"]["synthesis"] = a.synthesis
    if a.replay_in_clinical_voices:
        cfg["clinical"]["replay_in_clinical_voices"] = True
        try:
            experiment.recipes_evalsets_config(cfg["clinical"])
        except ValueError as e:
            ap.error(f"--replay-in-clinical-voices: {e}; give --synthesis")
    def pairs(items: list[str], flag: str, form: str) -> dict[str, str]:
        out = {}
        for kv in items:
            k, sep, v = kv.partition("=")
            if not sep:
                ap.error(f"{flag} takes {form} (got {kv!r})")
            out[k] = v
        return out

    trained = {k: Path(v) for k, v in pairs(a.trained, "--trained", "RECIPE=MODEL.nemo").items()}
    tover = {k: yaml.safe_load(v) for k, v in pairs(a.trainer_override, "--trainer-override", "KEY=VALUE").items()}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log_file = open(out / "recipes.log", "a")

    def log(msg: str) -> None:
        line = f"[{time.time() - t0:6.0f}s] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    experiment.phase_recipes(cfg, Path(a.work), out, only=a.only, steps=a.steps, trainer_overrides=tover, log=log,
                             prepare_only=a.prepare_only, base_scores=a.base_scores, trained=trained)
    if a.prepare_only:
        return 0
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
