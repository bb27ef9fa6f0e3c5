"""Streaming transcription: what chunked decoding costs in accuracy, and its latency under live load.

1. **Accuracy** (``--rows`` per set): each model transcribes the held-out evaluation sets (clinical and everyday
   English: voices, sentence shapes and an engine no training set used) offline — the baseline in the same run —
   and streamed at several (chunk, left context, look-ahead) settings through ``Transcriber.stream_step``, the
   code the service runs. WER, term miss rate (KER) and phantom terms per 100 utterances per setting.
2. **Live load**: the real service (uvicorn + micro-batcher + model) on loopback, 1/4/16 WebSocket clients each
   streaming held-out clips at the pace of speech in 100 ms frames, committing after each clip. Client-side time
   to first text (from the moment the utterance starts, each 100 ms frame sent once it has been spoken) and final latency (from the commit), p50/p95, and the
   service's compute per audio second.

    .venv/ml/bin/python bench/bench_streaming.py --model <candidate .nemo> --base models/clinasr-base-en-multi/model.nemo \\
        --sets <dir with clinical_heldout/ and general_heldout/> --out bench/results/streaming_cpu.json

``--sets`` defaults to the newest evaluation-set copy under .run/work (``make demo`` makes them).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))
sys.path.insert(0, str(REPO))

# (first chunk, left context, look-ahead, largest chunk) in seconds; the chunk doubles after each step up to the
# largest. The 5th and 6th are the service's defaults for live audio and for stream=true uploads (ServeConfig); the
# last is the low-latency live setting (CLINASR_STREAM_CHUNK_S=0.16 CLINASR_STREAM_RIGHT_S=0.08: TTFT 0.35 s on a GPU).
SETTINGS = [(0.48, 4.0, 0.32, 0.48), (0.48, 2.0, 0.32, 0.48), (0.96, 4.0, 0.48, 0.96), (1.92, 4.0, 0.48, 1.92),
            (0.32, 2.0, 0.32, 0.96), (0.32, 2.0, 0.32, 7.68), (0.16, 2.0, 0.08, 0.96)]


def pct(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else None


def find_sets() -> Path:
    found = sorted(REPO.glob(".run/work/clinasr_evaluate_promote/*/candidate"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit("no evaluation sets under .run/work: run `make demo` first, or pass --sets")
    return found[-1]


def load_set(root: Path, name: str, n: int) -> tuple[list[dict], list[np.ndarray]]:
    from clinasr import audio

    man = root / name / "dataset" / "test_manifest.jsonl"
    rows = [json.loads(x) for x in man.read_text().splitlines()][:n]
    return rows, [audio.load(man.parent / r["audio_filepath"]) for r in rows]


def streamed(t, audios: list[np.ndarray], setting: tuple, batch: int = 16) -> tuple[list[str], float]:
    """Every clip fed whole and decoded chunk by chunk (batched across clips), as the service does."""
    texts, t0 = [], time.perf_counter()
    for b in range(0, len(audios), batch):
        states = []
        for x in audios[b:b + batch]:
            st = t.new_stream(*setting[:3], max_chunk_s=setting[3])
            st.feed(x)
            states.append(st)
        while todo := [st for st in states if st.ready(final=True)]:
            t.stream_step([(st, True) for st in todo])
        texts += [st.text.strip() for st in states]
    return texts, time.perf_counter() - t0


def accuracy(models: dict[str, str], sets: Path, n: int) -> list[dict]:
    from tqdm import tqdm

    from clinasr.inference import Transcriber
    from clinasr.metrics import score_rows

    out = []
    data = {name: load_set(sets, name, n) for name in ("clinical_heldout", "general_heldout")}
    jobs = [(m, s, cfg) for m in models for s in data for cfg in [None] + SETTINGS]
    bar = tqdm(jobs, desc="accuracy", unit="run")
    loaded = {}
    for m, s, cfg in bar:
        t = loaded.setdefault(m, Transcriber(models[m]))
        rows, audios = data[s]
        t0 = time.perf_counter()
        if cfg is None:
            texts = [r["text"] for r in t.transcribe(audios)]
            took = time.perf_counter() - t0
        else:
            texts, took = streamed(t, audios, cfg)
        sc = score_rows([{**r, "hypothesis": h} for r, h in zip(rows, texts)])
        audio_s = sum(len(x) for x in audios) / 16000
        out.append({"model": m, "set": s, "mode": "offline" if cfg is None else "streaming",
                    "chunk_s": cfg and cfg[0], "left_s": cfg and cfg[1], "right_s": cfg and cfg[2],
                    "max_chunk_s": cfg and cfg[3],
                    "utterances": len(rows), "wer": round(sc["wer"], 4),
                    "ker": None if sc["ker"] is None else round(sc["ker"], 4),
                    "phantoms_per_100": round(sc["phantom_terms"]["per_100_utterances"], 2),
                    "compute_s_per_audio_s": round(took / audio_s, 4)})
        bar.write(json.dumps(out[-1]))
    return out


def live_client(url: str, key: str, clips: list[np.ndarray], pace: float = 1.0) -> list[dict]:
    from websockets.sync.client import connect

    items = []
    with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, max_size=2**22) as ws:
        json.loads(ws.recv(timeout=30))
        ws.send(json.dumps({"type": "transcription_session.update", "session": {"turn_detection": None}}))
        state = {"first_delta": None}
        done = threading.Event()

        def reader():
            for msg in ws:
                ev = json.loads(msg)
                if ev["type"].endswith("transcription.delta") and state["first_delta"] is None:
                    state["first_delta"] = time.perf_counter()
                elif ev["type"].endswith("transcription.completed"):
                    state["completed"] = time.perf_counter()
                    state["event"] = ev
                    done.set()
                elif ev["type"] == "error":
                    state["error"] = ev["error"]["message"]
                    done.set()

        threading.Thread(target=reader, daemon=True).start()
        for x in clips:
            state.clear()
            state["first_delta"] = None
            done.clear()
            pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
            step = 3200                                   # 100 ms of 16 kHz PCM16
            t0 = time.perf_counter()         # the utterance starts; a frame leaves once it has been "recorded"
            for i in range(0, len(pcm), step):
                time.sleep(max(0.0, t0 + (i + step) / 32000 / pace - time.perf_counter()))
                ws.send(json.dumps({"type": "input_audio_buffer.append",
                                    "audio": base64.b64encode(pcm[i:i + step]).decode()}))
            t_commit = time.perf_counter()
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            ok = done.wait(120)
            items.append({"audio_s": len(x) / 16000, "error": state.get("error") or (None if ok else "timeout"),
                          "ttft_s": state["first_delta"] - t0 if state.get("first_delta") else None,
                          "final_s": state["completed"] - t_commit if state.get("completed") else None,
                          "server_compute_s": (state.get("event") or {}).get("latency", {}).get("compute_s")})
    return items


def live(model: str, sets: Path, levels: list[int], clips_per_client: int) -> list[dict]:
    import tempfile

    from clinasr.platform import free_port
    from tests.conftest import _http_service

    rows, audios = load_set(sets, "clinical_heldout", 64)
    port, key = free_port(), "bench"
    tmp = Path(tempfile.mkdtemp())
    out = []
    argv = [sys.executable, "-m", "clinasr.serving", "--port", str(port), "--model", model]
    with _http_service(argv, "/health/live", port, timeout_s=300, log_path=tmp / "serve.log",
                       # the caller's PYTHONPATH too: on the GPU machine the wheels live in a --target directory
                       env={"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "include"), os.environ.get("PYTHONPATH")])),
                            "CLINASR_SERVE_API_KEY": key, "CLINASR_TRACING": "0",
                            "CLINASR_SERVE_WORK_DIR": str(tmp / "work"), "CLINASR_SERVE_RECORD_TRAFFIC": "0"}) as url:
        import requests

        while requests.get(f"{url}/health/ready", timeout=5).status_code != 200:
            time.sleep(0.5)
        ws = url.replace("http://", "ws://") + "/v1/realtime"
        for n in levels:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                futs = [pool.submit(live_client, ws, key, [audios[(c * clips_per_client + k) % len(audios)]
                                                           for k in range(clips_per_client)]) for c in range(n)]
                items = [i for f in futs for i in f.result()]
            ok = [i for i in items if not i["error"]]
            ttft = [i["ttft_s"] for i in ok if i["ttft_s"] is not None]
            final = [i["final_s"] for i in ok]
            audio_s = sum(i["audio_s"] for i in ok)
            out.append({"streams": n, "utterances": len(items), "errors": len(items) - len(ok),
                        "wall_s": round(time.perf_counter() - t0, 2), "audio_s": round(audio_s, 1),
                        "ttft_p50_s": pct(ttft, 0.5), "ttft_p95_s": pct(ttft, 0.95),
                        "final_p50_s": pct(final, 0.5), "final_p95_s": pct(final, 0.95),
                        "server_compute_per_audio_s": round(sum(i["server_compute_s"] or 0 for i in ok) / max(audio_s, 1e-6), 4)})
            print(json.dumps(out[-1]), flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="streaming accuracy (offline vs chunked) and live WebSocket latency")
    p.add_argument("--model", required=True, help="the fine-tuned .nemo (the candidate)")
    p.add_argument("--base", default=str(REPO / "models" / "clinasr-base-en-multi" / "model.nemo"))
    p.add_argument("--sets", type=Path, help="a directory with clinical_heldout/ and general_heldout/ (default: newest under .run/work)")
    p.add_argument("--rows", type=int, default=40)
    p.add_argument("--levels", default="1,4,16")
    p.add_argument("--clips-per-client", type=int, default=4)
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "streaming_cpu.json")
    a = p.parse_args(argv)
    import torch

    sets = a.sets or find_sets()
    res = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)",
           "machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
           "sets": str(sets), "settings": SETTINGS}
    if not a.skip_accuracy:
        res["accuracy"] = accuracy({"candidate": a.model, "base": a.base}, sets, a.rows)
    elif a.out.exists():          # keep the accuracy part of an earlier run of the same file
        res["accuracy"] = json.loads(a.out.read_text()).get("accuracy")
    res["live"] = live(a.model, sets, [int(x) for x in a.levels.split(",")], a.clips_per_client)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
