"""Where does a live (WebSocket) session stop? Starts the service on one device with the shipped base model and
opens /v1/realtime before the model is ready, after it is ready and after an HTTP transcription, then dumps the
service's thread stacks (faulthandler on SIGUSR1, installed by a sitecustomize in SHADOW_DIR if given).

    python bench/ws_probe.py cuda|cpu [--model M] [--wav W]

Issue 23's GPU run (2026-12-01, one H200, torch 2.11, uvicorn 0.54, websockets 17.4, FastAPI 0.165, h11 +
websockets-sansio, uvloop hidden): cpu -> every handshake opens; cuda -> opens before the model is loaded (and is
refused with "no model is loaded yet"), then every handshake times out (40 s) once the model sits on the GPU, while
HTTP transcriptions keep answering (200, 80 ms); the event loop is idle in select() during the hang. The
cause is not established (bench/results/streaming_gpu.json)."""
import argparse
import glob
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("device", choices=["cuda", "cpu"])
    ap.add_argument("--model", default=str(REPO / "models" / "clinasr-base-en-multi" / "model.nemo"))
    ap.add_argument("--wav", help="a 16 kHz WAV for the HTTP transcription (default: the first under .gpusets/)")
    ap.add_argument("--port", type=int, default=18900)
    ap.add_argument("--log", default="/tmp/ws_probe_{device}.log")
    a = ap.parse_args()
    env = {**os.environ, "CLINASR_SERVE_API_KEY": "k", "CLINASR_TRACING": "0", "CLINASR_SERVE_RECORD_TRAFFIC": "0",
           "CLINASR_SERVE_WORK_DIR": f"/tmp/ws_probe_{a.device}",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("SHADOW_DIR"), os.environ.get("PYTHONPATH"),
                                                       str(REPO / "include")]))}
    if a.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    log = open(a.log.format(device=a.device), "w")
    p = subprocess.Popen([sys.executable, "-m", "clinasr.serving", "--port", str(a.port), "--model", a.model],
                         env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{a.port}"

    def probe(tag: str, dump: bool = False) -> None:
        t0 = time.time()
        if dump:   # the service's stacks 3 s into the handshake
            threading.Timer(3.0, lambda: os.killpg(p.pid, signal.SIGUSR1)).start()
        try:
            with connect(url.replace("http", "ws") + "/v1/realtime", additional_headers={"Authorization": "Bearer k"},
                         open_timeout=40, proxy=None) as c:
                print(a.device, tag, "OPEN", round(time.time() - t0, 2), c.recv(timeout=5)[:120], flush=True)
        except Exception as e:
            print(a.device, tag, "FAIL", round(time.time() - t0, 2), type(e).__name__, str(e)[:200], flush=True)

    try:
        for _ in range(300):
            try:
                requests.get(url + "/health/live", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.2)
        probe("before-ready")
        while requests.get(url + "/health/ready", timeout=5).status_code != 200:
            time.sleep(0.3)
        probe("after-ready", dump=True)
        wav = a.wav or sorted(glob.glob(str(REPO / ".gpusets" / "**" / "*.wav"), recursive=True))[0]
        with open(wav, "rb") as f:
            r = requests.post(url + "/v1/audio/transcriptions", headers={"Authorization": "Bearer k"},
                              files={"file": ("a.wav", f)}, data={"model": "x"}, timeout=30)
        print(a.device, "http transcription", r.status_code, r.text[:100], flush=True)
        probe("after-http")
    finally:
        os.killpg(p.pid, 15)
        p.wait(20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
