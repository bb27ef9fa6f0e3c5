"""Inference benchmark: clinasr's Transcriber (the code evaluation and serving run) on one device.

Measures batched RTFx (audio seconds per second of compute) at several batch sizes, per-request latency
p50/p95 for 5/10/30 s clips at batch 1, peak GPU memory, fp32 vs bf16 autocast vs the Transcriber's default (bf16 from batch 16), the encoder's share of
the time, and the HTTP serving stack's overhead (uvicorn + FastAPI + decode + micro-batcher) against the
bare model, all in the same run.

    python bench/bench_inference.py --build-config configs/model/parakeet_tdt_0.6b.yaml --out $OUT   # GPU machine
    python bench/bench_inference.py --nemo model.nemo --batches 1,8 --out /tmp/bench                 # any .nemo
    python bench/bench_inference.py --build-config ... --batches 1,128 --levers-only --out $OUT       # CUDA graphs, compile

``--build-config`` makes a random-init model of that config (one training step on random audio, then
``.nemo``): the encoder cost is the real one for that size, but a random decoder emits a different number
of tokens than a trained one, so decode time is indicative only (reported separately).
Writes <out>/inference.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))


def build_model(config: str, out: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_gpu_training import make_dataset

    from clinasr.training.train import train

    ds = make_dataset(out / "ds", 64)
    r = train({"dataset": str(ds), "output_dir": str(out / "model"), "base": {"config": config},
               "trainer": "configs/trainer/gpu_finetune.yaml", "mlflow": {"enabled": False},
               "trainer_overrides": {"max_steps": 1, "batch_size": 4, "batch_duration": None, "val_check_interval": 10**6,
                                     "checkpoint_every_n_steps": 10**6, "precision": "bf16-mixed", "strategy": "auto"}},
              log=lambda m: None)
    return Path(r["nemo_path"])


def clips(seconds: float, n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [(0.05 * rng.standard_normal(int(seconds * 16000))).astype("float32") for _ in range(n)]


def timed(fn, repeats: int) -> list[float]:
    import torch

    out = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def bench_model(t, batches: list[int], repeats: int, clip_s: float, bf16: bool = False) -> dict:
    """``bf16``: whether the encoder-only timing runs under bf16 autocast (True/False, or the minimum batch)."""
    import contextlib

    import torch

    def ctx(b):
        use = bf16 if isinstance(bf16, bool) else b >= bf16
        return torch.autocast("cuda", dtype=torch.bfloat16) if use else contextlib.nullcontext()

    res = {"rtfx": {}, "latency_batch1": {}, "encoder_share": {}}
    for b in batches:
        xs = clips(clip_s, b)
        t.transcribe(xs, batch_size=b)       # warm-up at this shape
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        times = timed(lambda: t.transcribe(xs, batch_size=b), repeats)
        med = statistics.median(times)
        with ctx(b):
            enc = timed(lambda: _encoder_only(t, xs), repeats)
        res["rtfx"][b] = round(b * clip_s / med, 1)
        res["encoder_share"][b] = round(statistics.median(enc) / med, 3)
        if torch.cuda.is_available():
            res.setdefault("peak_gpu_gib", {})[b] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(f"  batch {b:>4}: {med * 1000:8.1f} ms  RTFx {res['rtfx'][b]:8.1f}  encoder share {res['encoder_share'][b]:.2f}",
              flush=True)
    for secs in (5, 10, 30):
        x = clips(secs, 1, seed=secs)
        t.transcribe(x)
        lat = sorted(timed(lambda: t.transcribe(x), max(repeats * 4, 20)))
        res["latency_batch1"][secs] = {"p50_ms": round(1000 * statistics.median(lat), 1),
                                       "p95_ms": round(1000 * lat[int(0.95 * (len(lat) - 1))], 1)}
        print(f"  {secs:>2} s clip, batch 1: p50 {res['latency_batch1'][secs]['p50_ms']} ms  "
              f"p95 {res['latency_batch1'][secs]['p95_ms']} ms", flush=True)
    return res


def bench_levers(t, clip_s: float, repeats: int, big: int = 128) -> dict:
    """The obvious speed levers on top of the Transcriber's default policy, each against the default in the same
    run: NeMo's CUDA graphs for the greedy TDT decoder (on by default where NeMo supports them; here turned off
    to see what they buy), then torch.compile of the encoder (compile time reported). RTFx at batch ``big`` and
    the batch-1 time for one clip."""
    import torch

    dec = t.model.decoding.decoding
    comp = getattr(dec, "decoding_computer", None) or getattr(dec, "_decoding_computer", None)

    def measure(tag: str) -> dict:
        r = {}
        for b in (1, big):
            xs = clips(clip_s, b, seed=b)
            t.transcribe(xs, batch_size=b)           # warm-up (and compilation) at this shape
            med = statistics.median(timed(lambda: t.transcribe(xs, batch_size=b), repeats * (4 if b == 1 else 1)))
            r[f"batch{b}_ms"] = round(1000 * med, 1)
            r[f"batch{b}_rtfx"] = round(b * clip_s / med, 1)
        r["decoder_cuda_graphs_mode"] = str(getattr(comp, "cuda_graphs_mode", None))
        print(f"  {tag}: {r}", flush=True)
        return r

    res = {"clip_s": clip_s, "default": measure("default")}
    if hasattr(dec, "disable_cuda_graphs"):
        dec.disable_cuda_graphs()
        res["decoder_cuda_graphs_off"] = measure("decoder CUDA graphs off")
        dec.maybe_enable_cuda_graphs()
    try:
        t0 = time.perf_counter()
        t.model.encoder = torch.compile(t.model.encoder)
        res["encoder_compiled"] = measure("torch.compile(encoder)")
        res["encoder_compiled"]["first_calls_s"] = round(time.perf_counter() - t0, 1)   # compiles + the timed runs
    except Exception as e:   # noqa: BLE001 — a lever that does not work here is a result too
        res["encoder_compiled"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(f"  torch.compile(encoder): {res['encoder_compiled']['error']}", flush=True)
    for k in ("decoder_cuda_graphs_off", "encoder_compiled"):
        if "batch1_ms" in res.get(k, {}):
            res[k]["vs_default"] = {f"batch{b}_rtfx": round(res[k][f"batch{b}_rtfx"] / res["default"][f"batch{b}_rtfx"], 2)
                                    for b in (1, big)}
    return res


def _encoder_only(t, xs):
    import torch

    with torch.inference_mode():
        lens = torch.tensor([len(x) for x in xs], device=t.device)
        sig = torch.zeros(len(xs), int(lens.max()), device=t.device)
        for k, x in enumerate(xs):
            sig[k, :len(x)] = torch.from_numpy(x)
        t.model.forward(input_signal=sig, input_signal_length=lens)


def bench_http(nemo: Path, repeats: int, out_dir: Path, clip_s: float = 10.0) -> dict:
    """Latency through the serving stack vs the bare model for the same clip, batch of one."""
    import io
    import socket

    import requests
    import soundfile as sf

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import os

    logf = open(Path(out_dir) / "serve.log", "w")
    path = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1] / "include"), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-m", "clinasr.serving", "--model", str(nemo), "--port", str(port),
                             "--max-wait-ms", "1"], stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": path})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 600
        while True:
            try:
                if requests.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"serving did not become ready: see {out_dir}/serve.log")
            time.sleep(1)
        buf = io.BytesIO()
        sf.write(buf, clips(clip_s, 1, seed=99)[0], 16000, format="WAV", subtype="PCM_16")
        data = buf.getvalue()
        post = lambda: requests.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", data)},  # noqa: E731
                                     data={"model": "m"}, timeout=120).raise_for_status()
        post()
        lat = sorted(timed(post, max(repeats * 4, 20)))
        return {"clip_s": clip_s, "p50_ms": round(1000 * statistics.median(lat), 1),
                "p95_ms": round(1000 * lat[int(0.95 * (len(lat) - 1))], 1)}
    finally:
        proc.terminate()
        proc.wait(30)
        logf.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nemo", help="a .nemo to benchmark")
    p.add_argument("--build-config", help="build a random-init model of this config instead")
    p.add_argument("--batches", default="1,16,64,128")
    p.add_argument("--clip-s", type=float, default=10.0, help="clip length for the batched RTFx runs")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-http", action="store_true")
    p.add_argument("--levers-only", action="store_true",
                   help="only the speed levers (decoder CUDA graphs off, torch.compile of the encoder) vs the default")
    p.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.build_only:
        print("NEMO=" + str(build_model(a.build_config, out / "build")))
        return 0
    if a.nemo:
        nemo = Path(a.nemo)
    else:   # built in its own process: after training in-process, torch.load(weights_only) of the .nemo failed
        r = subprocess.run([sys.executable, __file__, "--build-only", "--build-config", a.build_config, "--out", str(out)],
                           capture_output=True, text=True)
        found = [ln[5:] for ln in r.stdout.splitlines() if ln.startswith("NEMO=")]
        if r.returncode or not found:
            print(r.stdout[-3000:], r.stderr[-3000:])
            return 1
        nemo = Path(found[0])
    import torch

    from clinasr.inference import Transcriber

    batches = [int(b) for b in a.batches.split(",")]
    t = Transcriber(nemo)
    policy = t.bf16_min_batch
    t.bf16_min_batch = 0          # plain fp32 first
    result = {"model": str(a.build_config or a.nemo), "n_params": t.n_params, "device": t.device,
              "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "clip_s": a.clip_s, "repeats": a.repeats}
    print(f"{result['device_name']}: {t.n_params / 1e6:.1f} M parameters", flush=True)
    if a.levers_only:
        t.bf16_min_batch = policy
        result["levers"] = bench_levers(t, a.clip_s, a.repeats, big=max(batches))
        (out / "inference_levers.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result["levers"]))
        return 0
    print("fp32:", flush=True)
    result["fp32"] = bench_model(t, batches, a.repeats, a.clip_s)
    if t.device == "cuda":
        # fp32 above (bf16 off); now the Transcriber's own policy (CLINASR_BF16_MIN_BATCH; 0, the default: fp32)
        print(f"Transcriber default ({f'bf16 from batch {policy}' if policy else 'fp32'}):", flush=True)
        t.bf16_min_batch = policy
        result["default_policy"] = bench_model(t, batches, a.repeats, a.clip_s, bf16=policy or False)
        result["default_policy"]["bf16_min_batch"] = policy
        print("bf16 autocast at every batch size:", flush=True)
        t.bf16_min_batch = 1
        result["bf16_autocast"] = bench_model(t, batches, a.repeats, a.clip_s, bf16=True)
        for b in batches:
            result.setdefault("bf16_speedup", {})[b] = round(result["bf16_autocast"]["rtfx"][b] / result["fp32"]["rtfx"][b], 2)
            result.setdefault("default_policy_speedup", {})[b] = round(result["default_policy"]["rtfx"][b] / result["fp32"]["rtfx"][b], 2)
    if not a.no_http:
        del t
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        result["http"] = bench_http(nemo, a.repeats, out, a.clip_s)
        bare = result["fp32"]["latency_batch1"][int(a.clip_s)] if int(a.clip_s) in (5, 10, 30) else None
        if bare:
            result["http"]["overhead_vs_bare_p50"] = round(result["http"]["p50_ms"] / bare["p50_ms"], 2)
        print(f"HTTP (serving stack), {a.clip_s:.0f} s clip: {result['http']}", flush=True)
    (out / "inference.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
