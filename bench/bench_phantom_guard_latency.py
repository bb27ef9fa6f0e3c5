"""What the phantom guard costs a served request: one 10 s clip through the Transcriber of a model with an LM, with the
guard (its default) and without (the same model, its spec's phantom_guard false), taking turns in one process.

    .venv/ml/bin/python bench/bench_phantom_guard_latency.py MODEL_LM.nemo CLIP.npy [--runs 20] [--out R.json]

CLIP.npy: float32 16 kHz mono (e.g. bench/base_model_eval.py's clip10s.npy). Prints p50/p95 seconds and the ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import numpy as np

    from clinasr.inference import Transcriber
    from phantom_guard_eval import guard_off

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("clip")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out")
    a = ap.parse_args()
    x = np.load(a.clip).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        ts = {"guard": Transcriber(a.model, device="cpu"), "no_guard": Transcriber(guard_off(Path(a.model), Path(d) / "off.nemo"), device="cpu")}
    assert ts["guard"].guard is not None and ts["no_guard"].guard is None
    for t in ts.values():
        t.transcribe([x]), t.transcribe([x])
    lat: dict[str, list[float]] = {k: [] for k in ts}
    for _ in range(a.runs):
        for k, t in ts.items():
            t0 = time.perf_counter()
            t.transcribe([x])
            lat[k].append(time.perf_counter() - t0)
    p95 = lambda v: sorted(v)[int(0.95 * (len(v) - 1))]   # noqa: E731
    res = {k: {"p50_s": round(statistics.median(v), 3), "p95_s": round(p95(v), 3)} for k, v in lat.items()}
    res["guard_over_no_guard_p95"] = round(res["guard"]["p95_s"] / res["no_guard"]["p95_s"], 2)
    res.update(model=Path(a.model).name, clip_s=round(len(x) / 16000, 2), runs=a.runs)
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
