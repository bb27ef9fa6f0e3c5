"""Whisper tiny.en (the leaderboard's reference) with greedy decoding vs faster-whisper's defaults (beam 5,
temperature fallback) on the clinical held-out set: words written per word said, WER, term accuracy, time.
``--compute-types default int8`` also runs the defaults with CTranslate2's int8 weights (the CPU lever).

    .venv/ml/bin/python bench/whisper_decoding.py <clinical_heldout test_manifest.jsonl> [--rows 60]

Writes bench/results/whisper-decoding.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from clinasr import audio, metrics
from clinasr.evaluate import load_rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--rows", type=int, default=60)
    ap.add_argument("--compute-types", nargs="+", default=["default"],
                    help="CTranslate2 compute types for the default decoding (default, int8, float32, ...)")
    ap.add_argument("--skip-greedy", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "whisper-decoding")
    a = ap.parse_args()
    rows, _ = load_rows(a.manifest, a.rows)
    from clinasr.reference import WhisperTranscriber

    greedy = dict(beam_size=1, temperature=0.0, vad_filter=False, without_timestamps=True, condition_on_previous_text=False)
    decodings = {} if a.skip_greedy else {"greedy (beam 1, T=0, old)": ("default", greedy)}
    for ct in a.compute_types:
        decodings["faster-whisper defaults (beam 5, fallback)" + ("" if ct == "default" else f", {ct}")] = (ct, {})
    import ctranslate2

    models: dict = {}   # one loaded model per compute type
    res = {}
    for name, (ct, kw) in decodings.items():
        if ct not in models:
            models[ct] = WhisperTranscriber("tiny.en", compute_type=ct)
        t = models[ct]
        t.transcribe([rows[0]["_audio"]])   # warm-up, not timed
        t0 = time.perf_counter()
        scored = []
        for r in rows:
            ctranslate2.set_random_seed(0)
            segs, _ = t.model.transcribe(r["_audio"], language="en", **kw)
            scored.append({**{k: v for k, v in r.items() if k != "_audio"},
                           "hypothesis": " ".join(s.text.strip() for s in segs).strip()})
        took = time.perf_counter() - t0
        sc = metrics.score_rows(scored)
        said = sum(len(r["text"].split()) for r in scored)
        wrote = sum(len(r["hypothesis"].split()) for r in scored)
        res[name] = {"wer": sc["wer"], "term_accuracy": 1 - sc["ker"] if sc.get("ker") is not None else float("nan"), "words_written_per_word_said": wrote / said,
                     "max_ratio_one_utterance": max(len(r["hypothesis"].split()) / max(1, len(r["text"].split())) for r in scored),
                     "seconds": took, "rows": len(scored)}
        print(name, json.dumps(res[name]))
    base = next(iter(res.values()))["seconds"]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps({"manifest": str(a.manifest), "results": res}, indent=1))
    lines = ["| decoding | WER | term acc | words written / said | worst utterance | time (× first row) |", "|---|---|---|---|---|---|"]
    for name, r in res.items():
        lines.append(f"| {name} | {r['wer']:.3f} | {r['term_accuracy']:.3f} | {r['words_written_per_word_said']:.2f} | "
                     f"{r['max_ratio_one_utterance']:.1f} | {r['seconds']:.0f} s ({r['seconds'] / base:.2f}×) |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
