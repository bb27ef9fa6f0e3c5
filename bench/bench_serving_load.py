"""Load on the transcription service: throughput, latency percentiles and errors at 1/4/16 concurrent clients.

Starts the real service (``python -m clinasr.serving``: uvicorn, FastAPI, micro-batcher, NeMo model) on
loopback and sends it a bounded number of requests per concurrency level with the official ``openai``
client, each a real synthetic clinical utterance padded with its own audio to ``--clip-s`` seconds.
Loopback only; every level stops after ``--requests`` requests or ``--max-seconds``, whichever comes first.

    .venv/ml/bin/python bench/bench_serving_load.py --model <.nemo> --out bench/results/serving_load_vm.json
    .venv/ml/bin/python bench/bench_serving_load.py --train-tiny        # builds the demo-size model first

The baseline in the same run is the bare model: ``Transcriber.transcribe`` on the same clip, one at a
time, so ``p50 vs bare`` is the serving stack's overhead at concurrency 1.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))

from clinasr.platform import free_port  # noqa: E402



def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def make_clip(seconds: float, work: Path) -> tuple[bytes, np.ndarray]:
    """A real synthetic clinical utterance (espeak-ng through the project's TTS), repeated to ``seconds``."""
    import soundfile as sf

    from clinasr.synth import tts

    x = tts.engine("espeak").synthesize("continue warfarin five milligrams by mouth once daily and no history of "
                                        "bleeding", "gmw/en-us", rate=175, pitch=50)
    reps = int(np.ceil(seconds * 16000 / len(x)))
    x = np.concatenate([x] * reps)[: int(seconds * 16000)].astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue(), x


def train_tiny(work: Path) -> str:
    """The demo-size model (0.6 M parameters) after a few CPU steps on a small real dataset."""
    from clinasr.synth.lexicon import load_lexicon, load_terms
    from clinasr.synth.pipeline import build_dataset, load_config
    from clinasr.synth.transcripts import generate_transcripts
    from clinasr.training.train import train

    lex = load_lexicon()
    res = generate_transcripts(lex, load_terms(["warfarin", "metoprolol"], lex), 10, seed=5)
    ds = work / "dataset"
    build_dataset(ds, [u.to_dict() for u in res["utterances"]], config=load_config(overrides={"accent_mix": {"native": 1.0}}),
                  seed=5, augment_on=False, accent_profiles=["native"], progress=False)
    r = train({"dataset": str(ds), "output_dir": str(work / "model"), "mlflow": {"enabled": False},
               "trainer_overrides": {"max_steps": 20, "val_check_interval": 20, "checkpoint_every_n_steps": 20,
                                     "batch_size": 4}}, log=lambda m: None)
    return r["nemo_path"]


def bare_model(model: str, x: np.ndarray, n: int) -> dict:
    from clinasr.inference import Transcriber

    t = Transcriber(model)
    t.warm_up()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        t.transcribe([x])
        lat.append(time.perf_counter() - t0)
    return {"p50_s": statistics.median(lat), "p95_s": pct(lat, 0.95), "device": t.device}


def run_level(url: str, clip: bytes, clients: int, requests: int, max_s: float) -> dict:
    import openai

    c = openai.OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=120)
    lat, errors, lock = [], [], threading.Lock()
    deadline = time.time() + max_s
    sent = iter(range(requests))

    def worker():
        while time.time() < deadline:
            with lock:
                if next(sent, None) is None:
                    return
            t0 = time.perf_counter()
            try:
                c.audio.transcriptions.create(model="clinasr-asr", file=("clip.wav", clip, "audio/wav"))
                with lock:
                    lat.append(time.perf_counter() - t0)
            except Exception as e:  # counted, never hidden
                with lock:
                    errors.append(f"{type(e).__name__}: {str(e)[:200]}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - t0
    done = len(lat)
    return {"clients": clients, "requests": done + len(errors), "ok": done, "errors": len(errors),
            "error_samples": errors[:3], "wall_s": wall, "throughput_rps": done / wall if wall else 0.0,
            "p50_s": pct(lat, 0.5) if lat else None, "p95_s": pct(lat, 0.95) if lat else None,
            "p99_s": pct(lat, 0.99) if lat else None}


def metric(url: str, name: str) -> float:
    import requests

    total = 0.0
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help=".nemo file to serve")
    p.add_argument("--train-tiny", action="store_true", help="build the demo-size model first (about a minute)")
    p.add_argument("--clients", default="1,4,16", help="concurrency levels")
    p.add_argument("--requests", type=int, default=48, help="requests per level (bounded)")
    p.add_argument("--max-seconds", type=float, default=120, help="time limit per level")
    p.add_argument("--clip-s", type=float, default=10.0)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=20)
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    if not a.model and not a.train_tiny:
        p.error("give --model <.nemo> or --train-tiny")
    import requests

    with tempfile.TemporaryDirectory(prefix="clinasr-load-") as tmp:
        work = Path(tmp)
        model = a.model or train_tiny(work)
        clip, x = make_clip(a.clip_s, work)
        bare = bare_model(model, x, 20)
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO / "include"), "CLINASR_SERVE_WORK_DIR": str(work / "serve"),
               "CLINASR_SERVE_RECORD_TRAFFIC": "0"}
        log = open(work / "serve.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "clinasr.serving", "--port", str(port), "--model", model,
                                 "--max-batch", str(a.max_batch), "--max-wait-ms", str(a.max_wait_ms)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 180
            while True:
                try:
                    if requests.get(f"{url}/health/ready", timeout=2).status_code == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"service did not become ready; see {work / 'serve.log'}:\n"
                                     + (work / "serve.log").read_text()[-2000:])
                time.sleep(0.5)
            run_level(url, clip, 1, 3, 60)   # warm-up, not reported
            levels = []
            for n in [int(v) for v in a.clients.split(",")]:
                b0, r0 = metric(url, "clinasr_batch_size_sum"), metric(url, "clinasr_batch_size_count")
                lv = run_level(url, clip, n, a.requests, a.max_seconds)
                b1, r1 = metric(url, "clinasr_batch_size_sum"), metric(url, "clinasr_batch_size_count")
                lv["mean_batch"] = (b1 - b0) / (r1 - r0) if r1 > r0 else None
                lv["rtfx"] = lv["throughput_rps"] * a.clip_s
                levels.append(lv)
                print(f"clients {n:>2}: {lv['ok']}/{lv['requests']} ok, {lv['errors']} errors, "
                      f"{lv['throughput_rps']:.2f} req/s (RTFx {lv['rtfx']:.1f}), p50 {lv['p50_s']:.3f}s "
                      f"p95 {lv['p95_s']:.3f}s p99 {lv['p99_s']:.3f}s, mean batch {lv['mean_batch'] or 0:.1f}", flush=True)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(30)
            log.close()
    one = levels[0]
    result = {"benchmark": "serving load", "clip_s": a.clip_s, "model": Path(model).name,
              "max_batch": a.max_batch, "max_wait_ms": a.max_wait_ms, "bare_model": bare, "levels": levels,
              "serving_p50_vs_bare": one["p50_s"] / bare["p50_s"] if one["p50_s"] else None,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "date": time.strftime("%Y-%m-%d")}
    print(f"bare model p50 {bare['p50_s']:.3f}s p95 {bare['p95_s']:.3f}s on {bare['device']}; "
          f"serving at 1 client: {result['serving_p50_vs_bare']:.2f}x the bare p50")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1))
    return 0 if all(lv["errors"] == 0 for lv in levels) else 1


if __name__ == "__main__":
    raise SystemExit(main())
