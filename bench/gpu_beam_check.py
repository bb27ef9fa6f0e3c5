"""Beam search with a .nemo's embedded n-gram LM on a CUDA device: the check that clinasr.lm's decoder, which turns
NeMo's CUDA graphs off (they died with "an illegal memory access" on an H200 on 2026-12-03), decodes there and reads
as the same model decoded greedily does.

    python3 bench/gpu_beam_check.py MODEL.nemo WAV_DIR [--n 32] [--out result.json]

Prints and writes: clips decoded, seconds per pass, and how many beam transcripts differ from the greedy ones.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("wav_dir", help="a folder searched recursively for .wav files (16 kHz mono)")
    ap.add_argument("--n", type=int, default=32, help="clips to decode (default 32)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    a = ap.parse_args(argv)

    import torch

    from clinasr.inference import Transcriber

    wavs = sorted(Path(a.wav_dir).rglob("*.wav"))[: a.n]
    if not wavs:
        print(f"no .wav under {a.wav_dir}", file=sys.stderr)
        return 2
    audio = [sf.read(str(p), dtype="float32")[0] for p in wavs]
    t = Transcriber(a.model, device=a.device)
    res = {"model": a.model, "device": a.device, "gpu": torch.cuda.get_device_name(0) if a.device == "cuda" else None,
           "clips": len(audio), "decoding": t.decoding,
           "allow_cuda_graphs": getattr(getattr(getattr(t.offline_decoding, "decoding", None), "decoding_computer",
                                                None), "allow_cuda_graphs", None)}
    t0 = time.perf_counter()
    beam = t.transcribe(audio)
    res["beam_s"] = round(time.perf_counter() - t0, 3)
    # the same audio greedily: the model's own decoder, and no guard (it would decode the same output greedily again)
    t.offline_decoding, t.guard = t.model.decoding, None
    t0 = time.perf_counter()
    greedy = t.transcribe(audio)
    res["greedy_s"] = round(time.perf_counter() - t0, 3)
    beam, greedy = [r["text"] for r in beam], [r["text"] for r in greedy]
    res["differ"] = int(sum(b != g for b, g in zip(beam, greedy)))
    res["empty_beam"] = int(sum(not b.strip() for b in beam))
    res["mean_words"] = float(np.mean([len(b.split()) for b in beam]))
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0 if res["empty_beam"] < len(beam) else 1


if __name__ == "__main__":
    sys.exit(main())
