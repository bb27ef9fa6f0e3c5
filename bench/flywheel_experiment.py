"""The flywheel experiment on one GPU (issue 10): train the embedded base model, then fine-tune it on
synthetic clinical speech and compare on a held-out clinical set, with ablations.

    python bench/flywheel_experiment.py base      [--deadline-minutes 9]   # general data + base model
    python bench/flywheel_experiment.py finetune  [--base models/clinasr-base-en-multi/model.nemo]
    python bench/flywheel_experiment.py base --smoke                        # tiny sizes on CPU (minutes)
    python bench/flywheel_experiment.py base --config configs/experiment/base_multi.yaml [--resume]  # issue 21's base

The GPU machine needs espeak-ng: ``scripts/espeak-portable.sh fetch`` here, then ``scripts/espeak-portable.sh
install`` there (README "The flywheel experiment" has the whole command). Results go to --out ($OUT on the
device tool, else bench/out/flywheel): results.json/.md/.png, the model card and the model in parts of
at most 15 MiB (join with ``cat model.nemo.part* > model.nemo``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from clinasr import experiment  # noqa: E402


def smoke(cfg: dict) -> tuple[dict, dict]:
    """Minutes on a CPU: a few utterances, a handful of steps (checks the whole path, measures nothing)."""
    cfg = copy.deepcopy(cfg)
    cfg["base"].update({"utterances": 48, "shard": 24, "eval_rows": 8})
    if "clinical" in cfg:
        cfg["clinical"]["terms"] = ["warfarin", "metoprolol", "insulin glargine"]
        cfg["clinical"]["train"]["per_term"] = 6
        cfg["clinical"]["heldout"]["per_term"] = 3
    cpu = {"max_steps": 3, "batch_size": 4, "num_workers": 0, "precision": "32-true", "val_check_interval": 3,
           "checkpoint_every_n_steps": 3, "log_every_n_steps": 1}
    return cfg, cpu


def parse_overrides(items: list[str]) -> dict:
    """KEY=VALUE strings -> {KEY: VALUE read as YAML} (``max_minutes=null`` -> None, ``max_steps=100`` -> 100)."""
    out = {}
    for kv in items:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise ValueError(f"--trainer-override takes KEY=VALUE (got {kv!r})")
        out[key] = yaml.safe_load(value)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["base", "finetune"])
    ap.add_argument("--config", default=str(experiment.DEFAULT_CONFIG))
    ap.add_argument("--out", default=os.environ.get("OUT") or "bench/out/flywheel")
    ap.add_argument("--work", default="/tmp/clinasr-flywheel", help="datasets, checkpoints (large; not returned)")
    ap.add_argument("--base", default=str(experiment.BASE_MODEL), help="finetune: the base .nemo")
    ap.add_argument("--deadline-minutes", type=float, default=None,
                    help="base: the whole phase must end by then; training gets what data synthesis leaves")
    ap.add_argument("--only", nargs="*", help="finetune: run only these variants (full and/or ablation names)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU")
    ap.add_argument("--resume", action="store_true",
                    help="base: continue the training an earlier call left in --work (its synthesised rows are reused "
                         "either way); --deadline-minutes then budgets this call's training on top of the earlier calls'")
    ap.add_argument("--init", type=Path, default=None,
                    help="base: start from this .nemo (an earlier base; its tokenizer is kept) instead of from scratch; "
                         "a checkpoint in --work (--resume) still takes precedence")
    ap.add_argument("--data-only", action="store_true",
                    help="base: synthesise (or finish) the general set in --work and stop")
    ap.add_argument("--trainer-override", nargs="*", default=[], metavar="KEY=VALUE",
                    help="trainer options for every run, e.g. precision=32-true num_workers=1 max_minutes=null "
                         "(the same recipe on a CPU); values are read as YAML")
    experiment.add_decoding_option(ap)
    a = ap.parse_args(argv)
    experiment.set_decoding(a.decoding)
    cfg = experiment.load_config(a.config)
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    tover: dict = {}
    if a.smoke:
        cfg, tover = smoke(cfg)
    try:
        tover.update(parse_overrides(a.trainer_override))
    except ValueError as e:
        ap.error(str(e))
    t0 = time.time()
    log_file = open(out / f"{a.phase}.log", "a")

    def log(msg: str) -> None:
        line = f"[{time.time() - t0:6.0f}s] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    if a.phase == "base":
        card = experiment.phase_base(cfg, work, out, a.deadline_minutes, tover, log=log, resume=a.resume,
                                     init=a.init, data_only=a.data_only)
        if a.data_only:
            print(json.dumps(card, default=str))
            return 0
        model = out / "model.nemo"
        if model.stat().st_size > 15 * 2**20:   # the device tool returns files of at most 16 MiB
            experiment.split_file(model)
            model.unlink()
        print(json.dumps({k: card[k] for k in ("n_params", "global_step", "general_heldout")}, default=str)[:2000])
    else:
        res = experiment.phase_finetune(cfg, Path(a.base), work, out, only=a.only, trainer_overrides=tover, log=log)
        print((out / "results.md").read_text())
        print(json.dumps({n: {"wer": r["wer"], "ker": r["ker"], "vs_base": r.get("vs_base")} for n, r in res["runs"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
