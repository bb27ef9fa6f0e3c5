"""Synthesis rate of the data stage's voice sets (clinasr.datasets.SYNTHESIS_CONFIGS) on this machine: the same
clinical transcripts rendered with each, workers as given, and the ratio to ``default``.

    PYTHONPATH=include .venv/ml/bin/python bench/voice_set_rate.py --workers 2 --out bench/results/voice-set-rate-cpu2.json

``kokoro`` puts Kokoro-82M (int8 ONNX on the CPU) into ~17% of the rows; espeak-ng and Flite render the rest.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

from clinasr.datasets import SYNTHESIS_CONFIGS
from clinasr.synth import pipeline
from clinasr.synth.lexicon import load_lexicon, load_terms
from clinasr.synth.transcripts import generate_transcripts

TERMS = ["warfarin", "apixaban", "metoprolol tartrate", "heparin", "furosemide", "morphine"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-term", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    lex = load_lexicon()
    utts = [u.to_dict() for u in generate_transcripts(lex, load_terms(TERMS, lex), a.per_term, seed=3,
                                                      template_family="a")["utterances"]]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in SYNTHESIS_CONFIGS.items():
            t = time.perf_counter()
            built = pipeline.build_dataset(Path(tmp) / name, utts, config=pipeline.load_config(path), seed=1,
                                           workers=a.workers, meta={"name": f"rate-{name}"}, progress=False)
            wall = time.perf_counter() - t
            audio = 3600 * sum(built["card"]["hours"].values())
            runs.append({"voice_set": name, "config": path, "rows": sum(built["card"]["counts"][k] for k in ("train", "val")),
                         "per_voice_engine": _engines(built["card"]["per_voice"]), "wall_s": round(wall, 1),
                         "audio_s": round(audio, 1), "audio_s_per_wall_s": round(audio / wall, 2)})
    base = runs[0]["audio_s_per_wall_s"]
    for r in runs:
        r["slowdown_vs_default"] = round(base / r["audio_s_per_wall_s"], 2)
        print(f"{r['voice_set']:>8}: {r['rows']} rows, {r['audio_s']:.0f} audio-s in {r['wall_s']:.1f} s = "
              f"{r['audio_s_per_wall_s']:.1f} audio-s/s ({r['slowdown_vs_default']:.2f}x default's time) {r['per_voice_engine']}")
    res = {"what": __doc__.splitlines()[0], "cpus": os.cpu_count(), "workers": a.workers, "per_term": a.per_term,
           "terms": TERMS, "runs": runs}
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")


def _engines(per_voice: dict) -> dict:
    engines: collections.Counter = collections.Counter()
    for v, n in per_voice.items():
        engines[v.split(":")[0]] += n
    return dict(engines)


if __name__ == "__main__":
    main()
