"""What the per-utterance fork of the espeak-ng engine costs, and what it buys (clinasr.synth.tts.EspeakEngine,
clinasr.synth.espeak_server).

    .venv/ml/bin/python bench/bench_espeak_fork.py [N] [--out bench/results/espeak-fork.json]

Renders N everyday sentences (default 60) across the training voices twice per mode, the second time in
reverse order: ``isolate=True`` (each utterance in a child forked from an engine that spoke one fixed utterance, the
default) and ``isolate=False`` (every utterance in the one library state, as before). Prints ms per utterance for both,
their ratio, and how many utterances came out sample-identical in both orders: what a pool of synthesis workers,
whose order is scheduling, would reproduce. Each mode in its own process (a plain engine speaking would change the
state the isolated one forks from), the two modes taking turns twice (this VM's speed drifts).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

VOICES = ["gmw/en-us", "gmw/en", "gmw/en-gb-x-rp", "roa/es-419", "inc/hi", "roa/fr", "gmw/de", "gmw/en-gb-scotland",
          "gmw/en-us-nyc", "gmw/en-us+f3", "gmw/en+m2"]


def render(mode: str, n: int) -> dict:
    from clinasr.evalsets import eval_sentences
    from clinasr.synth.tts import EspeakEngine

    rng = random.Random(0)
    sents = eval_sentences("include/clinasr/data/eval_general_en.txt")
    jobs = [(rng.choice(sents), rng.choice(VOICES), rng.randint(150, 200), rng.randint(35, 65)) for _ in range(n)]
    eng = EspeakEngine(isolate=mode == "isolated")
    eng.synthesize("a", "gmw/en")   # start-up out of the timing (the fork server's ~1 s, once per worker)
    times, out = [], [{}, {}]
    for rnd, order in enumerate((range(n), reversed(range(n)))):
        for i in order:
            t0 = time.perf_counter()
            out[rnd][i] = eng.synthesize(*jobs[i]).tobytes()
            times.append(time.perf_counter() - t0)
    return {"ms_per_utterance_median": round(1000 * statistics.median(times), 2),
            "ms_per_utterance_mean": round(1000 * statistics.mean(times), 2),
            "identical_in_both_orders": sum(out[0][i] == out[1][i] for i in range(n))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("n", nargs="?", type=int, default=60)
    ap.add_argument("--out")
    ap.add_argument("--mode", choices=["isolated", "plain"], help=argparse.SUPPRESS)   # one child process
    a = ap.parse_args()
    if a.mode:
        print(json.dumps(render(a.mode, a.n)))
        return
    import subprocess

    runs: dict[str, list[dict]] = {"isolated": [], "plain": []}
    for _ in range(2):
        for mode in runs:
            r = subprocess.run([sys.executable, __file__, str(a.n), "--mode", mode], check=True, capture_output=True, text=True)
            runs[mode].append(json.loads(r.stdout.strip().splitlines()[-1]))
    res = {"utterances": a.n, "runs": runs}
    for mode, rs in runs.items():
        res[mode] = {"ms_per_utterance_mean": round(statistics.mean(r["ms_per_utterance_mean"] for r in rs), 2),
                     "identical_in_both_orders": [r["identical_in_both_orders"] for r in rs]}
    res["isolated_over_plain"] = round(res["isolated"]["ms_per_utterance_mean"] / res["plain"]["ms_per_utterance_mean"], 2)
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
