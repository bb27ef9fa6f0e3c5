"""Beam search with n-gram fusion on a CPU: NeMo's own path against clinasr.fusion_cpu's cached LM rows, in one process.

For a .nemo that carries an LM (``clinasr lm``), three decodings of the same 10 s clip take turns run by run, so the
VM's drift hits each alike: greedy (the model without its LM), beam + LM as NeMo runs it (``exact_nemo``), and
beam + LM with the LM's rows cached (the Transcriber's default on a CPU). Then both beam paths transcribe a manifest (the
held-out general-English set) and the run checks that they wrote the same words, and reports the WER of each.

    .venv/ml/bin/python bench/bench_fusion_cpu.py MODEL_LM.nemo --clip CLIP.npy --manifest SET/test_manifest.jsonl \\
        --out bench/results/fusion-cpu.json

Prints p50 / p95 per decoding, the ratio of the cached path's to NeMo's, and the LM cache's hits and misses.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a .nemo with an embedded LM (clinasr lm)")
    ap.add_argument("--clip", required=True, help="a 10 s clip as a float32 .npy at 16 kHz")
    ap.add_argument("--manifest", help="a NeMo manifest to transcribe both ways (WER and identical transcripts)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import numpy as np
    import soundfile as sf
    import torch
    from tqdm import tqdm

    from clinasr import fusion_cpu, metrics
    from clinasr.inference import Transcriber

    t0 = time.perf_counter()
    lm_t = Transcriber(a.model, device="cpu")
    load_s = time.perf_counter() - t0
    if lm_t.decoding.get("strategy") == "greedy_batch" and "ngram_lm_alpha" not in lm_t.decoding:
        sys.exit(f"{a.model} carries no LM: build one with `clinasr lm`")
    os.environ["CLINASR_DECODING"] = "greedy"
    greedy_t = Transcriber(a.model, device="cpu")
    del os.environ["CLINASR_DECODING"]

    x = np.load(a.clip)

    def greedy():
        return greedy_t.transcribe([x])[0]["text"]

    def exact():
        with fusion_cpu.exact_nemo():
            return lm_t.transcribe([x])[0]["text"]

    def fast():
        return lm_t.transcribe([x])[0]["text"]

    variants = {"greedy": greedy, "beam_lm_nemo": exact, "beam_lm_cached": fast}
    texts = {k: f() for k, f in variants.items()}   # one untimed call each (warm-up)
    lat = {k: [] for k in variants}
    for _ in tqdm(range(a.runs), desc="turns", unit="turn"):
        for k, f in variants.items():
            s = time.perf_counter()
            f()
            lat[k].append(time.perf_counter() - s)
    caches = [m._clinasr_advance_cache for m in lm_t.offline_decoding.decoding.decoding_computer.fusion_models]
    res = {"model": a.model, "decoding": lm_t.decoding, "torch_threads": torch.get_num_threads(), "load_s": round(load_s, 1),
           "runs": a.runs, "clip": a.clip, "texts": texts,
           "latency": {k: {"p50_s": float(np.percentile(v, 50)), "p95_s": float(np.percentile(v, 95))} for k, v in lat.items()},
           "lm_cache": {"hits": sum(c.hits for c in caches), "misses": sum(c.misses for c in caches),
                        "states": sum(len(c.rows) for c in caches)}}
    res["ratio_p95_cached_vs_nemo"] = res["latency"]["beam_lm_cached"]["p95_s"] / res["latency"]["beam_lm_nemo"]["p95_s"]
    res["ratio_p95_cached_vs_greedy"] = res["latency"]["beam_lm_cached"]["p95_s"] / res["latency"]["greedy"]["p95_s"]

    if a.manifest:
        root = Path(a.manifest).parent
        rows = [json.loads(line) for line in Path(a.manifest).read_text().splitlines() if line.strip()]
        clips = [sf.read(root / r["audio_filepath"] if not Path(r["audio_filepath"]).is_absolute() else r["audio_filepath"],
                         dtype="float32")[0] for r in rows]
        out = {"greedy": [], "beam_lm_nemo": [], "beam_lm_cached": []}
        secs = {}
        for k, t, ctx in (("greedy", greedy_t, None), ("beam_lm_nemo", lm_t, fusion_cpu.exact_nemo),
                          ("beam_lm_cached", lm_t, None)):
            s = time.perf_counter()
            for i in tqdm(range(0, len(clips), 8), desc=k, unit="batch"):
                if ctx:
                    with ctx():
                        out[k] += [r["text"] for r in t.transcribe(clips[i:i + 8])]
                else:
                    out[k] += [r["text"] for r in t.transcribe(clips[i:i + 8])]
            secs[k] = round(time.perf_counter() - s, 1)
        refs = [r["text"] for r in rows]
        res["manifest"] = {"path": a.manifest, "rows": len(rows), "decode_s": secs,
                           "wer": {k: _wer(metrics, refs, v) for k, v in out.items()},
                           "identical_transcripts": sum(p == q for p, q in zip(out["beam_lm_nemo"], out["beam_lm_cached"]))}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    for k, v in res["latency"].items():
        print(f"{k:20s} p50 {v['p50_s']:.3f} s  p95 {v['p95_s']:.3f} s")
    print(f"p95 cached / NeMo: {res['ratio_p95_cached_vs_nemo']:.2f}x; / greedy: {res['ratio_p95_cached_vs_greedy']:.2f}x; "
          f"LM cache {res['lm_cache']}")
    if a.manifest:
        m = res["manifest"]
        print(f"{m['rows']} rows: WER {m['wer']}; identical beam transcripts {m['identical_transcripts']}/{m['rows']}; "
              f"decode s {m['decode_s']}")


def _wer(metrics, refs, hyps) -> float:
    counts = [metrics.edit_counts(r, h) for r, h in zip(refs, hyps)]
    return round(sum(e for e, _ in counts) / max(1, sum(n for _, n in counts)), 4)


if __name__ == "__main__":
    main()
