"""Where does a live (WebSocket) session stop? Starts the service on one device with the shipped base model and
opens /v1/realtime before the model is ready, after it is ready and after an HTTP transcription, then dumps the
service's thread stacks (faulthandler on SIGUSR1, installed by a sitecustomize in SHADOW_DIR if given).

    python bench/ws_probe.py cuda|cpu [--model M] [--wav W] [--diagnose]

--diagnose serves through a launcher that logs the realtime handler's entry and accept, uvicorn's upgrade path and
websockets' swallowed handshake error, adds GET /debug/asyncio and /debug/tasks, and ends with a hand-made handshake
and the processes holding the port.

Issue 23's GPU runs (2026-12-01, one H200, torch 2.11, uvicorn 0.54, websockets 17.4): every handshake timed out
once the model had decoded on CUDA. --diagnose found why: uvicorn rebuilt the upgrade request as
"GET\\x00/v1/realtime" and websockets refused it without answering - NeMo's NVRTC kernel compile had written a NUL
into the process's shared b" " (clinasr/nemo_fixes.py, applied wherever a model is loaded, prevents it). With the
fix every handshake opens on CUDA."""
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

# --diagnose: the service started through this launcher instead of `python -m clinasr.serving`, with one more route,
# GET /debug/asyncio, that says from inside the event loop whether asyncio still finds the running loop (uvicorn builds
# each WebSocket protocol with asyncio.get_event_loop() and starts the ASGI app on that loop) and which loop- or
# asyncio-patching modules were imported since start.
LAUNCHER = r"""
import asyncio, sys, uvicorn
from fastapi import WebSocket
from asyncio import events
from clinasr import serving
PAT = ("asyncio", "nest", "uvloop", "trio", "gevent", "eventlet", "tornado", "ipykernel", "zmq", "jupyter")
before = set(sys.modules)
def name(f):
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', repr(f))}"
async def diag():
    try:
        same = asyncio.get_event_loop() is asyncio.get_running_loop()
    except Exception as e:
        same = repr(e)
    return {"get_event_loop_is_running_loop": same, "get_event_loop": name(asyncio.get_event_loop),
            "events._get_running_loop": name(events._get_running_loop), "Task": name(asyncio.Task),
            "nest_patched": bool(getattr(asyncio, "_nest_patched", False)),
            "policy": type(asyncio.get_event_loop_policy()).__name__,
            "new_modules": sorted(m for m in set(sys.modules) - before if any(k in m for k in PAT))}
async def tasks():
    import io
    out = io.StringIO()
    for t in asyncio.all_tasks():
        t.print_stack(limit=12, file=out)
    return {"tasks": out.getvalue()}
_realtime = serving.realtime
async def realtime(ws: WebSocket):
    print("realtime: entered", flush=True)
    orig = ws.accept
    async def accept(*a, **k):
        print("realtime: accepting", flush=True)
        await orig(*a, **k)
        print("realtime: accepted", flush=True)
    ws.accept = accept
    await _realtime(ws)
    print("realtime: returned", flush=True)
serving.realtime = realtime
import faulthandler, signal, importlib
def running():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
def wrap(modname, clsname, meth):
    try:
        cls = getattr(importlib.import_module(modname), clsname)
    except ImportError:
        return
    f = getattr(cls, meth)
    def w(self, *a, **k):
        gl = asyncio.get_event_loop()
        print(f"{clsname}.{meth}: running loop {id(running())} get_event_loop {id(gl)} self.loop "
              f"{id(getattr(self, 'loop', None))}", flush=True)
        return f(self, *a, **k)
    setattr(cls, meth, w)
for m, c in (("uvicorn.protocols.http.h11_impl", "H11Protocol"), ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol")):
    wrap(m, c, "handle_websocket_upgrade")
wrap("uvicorn.protocols.websockets.websockets_sansio_impl", "WebSocketsSansIOProtocol", "handle_connect")
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol as _WS
_dr = _WS.data_received
def data_received(self, data):
    _dr(self, data)
    exc = getattr(self.conn, "handshake_exc", None)
    if exc is not None:   # websockets' parser swallows the error; uvicorn never looks at it
        import traceback
        print("handshake_exc:", "".join(traceback.format_exception(exc)), flush=True)
_WS.data_received = data_received
wrap("uvicorn.protocols.websockets.websockets_impl", "WebSocketProtocol", "connection_made")
wrap("uvicorn.protocols.websockets.wsproto_impl", "WSProtocol", "connection_made")
faulthandler.register(signal.SIGUSR1, all_threads=True)
app = serving.create_app(serving.ServeConfig.from_env(model=sys.argv[1]))
app.add_api_route("/debug/asyncio", diag, methods=["GET"])
app.add_api_route("/debug/tasks", tasks, methods=["GET"])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("device", choices=["cuda", "cpu"])
    ap.add_argument("--model", default=str(REPO / "models" / "clinasr-base-en-multi" / "model.nemo"))
    ap.add_argument("--wav", help="a 16 kHz WAV for the HTTP transcription (default: the first under .gpusets/, else a tone)")
    ap.add_argument("--port", type=int, default=18900)
    ap.add_argument("--log", default="/tmp/ws_probe_{device}.log")
    ap.add_argument("--diagnose", action="store_true", help="serve through LAUNCHER and print GET /debug/asyncio "
                                                              "before and after the model is ready")
    a = ap.parse_args()
    env = {**os.environ, "CLINASR_SERVE_API_KEY": "k", "CLINASR_TRACING": "0", "CLINASR_SERVE_RECORD_TRAFFIC": "0",
           "CLINASR_SERVE_WORK_DIR": f"/tmp/ws_probe_{a.device}",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("SHADOW_DIR"), os.environ.get("PYTHONPATH"),
                                                       str(REPO / "include")]))}
    if a.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    log = open(a.log.format(device=a.device), "w")
    cmd = ([sys.executable, "-c", LAUNCHER, a.model, str(a.port)] if a.diagnose else
           [sys.executable, "-m", "clinasr.serving", "--port", str(a.port), "--model", a.model])
    p = subprocess.Popen(cmd,
                         env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{a.port}"

    def probe(tag: str, dump: bool = False) -> None:
        if a.diagnose:
            print(a.device, tag, "asyncio:", requests.get(url + "/debug/asyncio", headers={"Authorization": "Bearer k"},
                                                           timeout=10).text, flush=True)
        t0 = time.time()
        if dump and a.diagnose:   # the event loop's tasks 3 s into the handshake
            threading.Timer(3.0, lambda: print(a.device, tag, "tasks:", requests.get(
                url + "/debug/tasks", headers={"Authorization": "Bearer k"}, timeout=10).json()["tasks"], flush=True)).start()
        elif dump and os.environ.get("SHADOW_DIR"):   # the service's stacks 3 s into the handshake (SIGUSR1 would
            # kill a service without the sitecustomize's faulthandler)
            threading.Timer(3.0, lambda: os.killpg(p.pid, signal.SIGUSR1)).start()
        try:
            with connect(url.replace("http", "ws") + "/v1/realtime", additional_headers={"Authorization": "Bearer k"},
                         open_timeout=15 if a.diagnose else 40, proxy=None) as c:
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
        wav = a.wav or next(iter(sorted(glob.glob(str(REPO / ".gpusets" / "**" / "*.wav"), recursive=True))), None)
        if wav is None:      # no sets carried: two seconds of a 220 Hz tone
            import math
            import struct
            import wave

            wav = f"/tmp/ws_probe_{a.device}.wav"
            with wave.open(wav, "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
                w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 220 * i / 16000)))
                                       for i in range(32000)))
        with open(wav, "rb") as f:
            r = requests.post(url + "/v1/audio/transcriptions", headers={"Authorization": "Bearer k"},
                              files={"file": ("a.wav", f)}, data={"model": "x"}, timeout=30)
        print(a.device, "http transcription", r.status_code, r.text[:100], flush=True)
        probe("after-http")
        if a.diagnose:   # the same handshake by hand (is it the client?), who holds the port, the service's children
            import base64
            import socket

            with socket.create_connection(("127.0.0.1", a.port), timeout=10) as s:
                s.sendall(("GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer k\r\n"
                           f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n").encode())
                try:
                    print(a.device, "raw handshake:", s.recv(300), flush=True)
                except OSError as e:
                    print(a.device, "raw handshake: no answer", type(e).__name__, flush=True)
            port = f":{a.port:04X} "
            inodes = {line.split()[9]: line.split()[3] for f in ("/proc/net/tcp", "/proc/net/tcp6")
                      for line in open(f).readlines()[1:] if port in line}    # inode -> TCP state (0A: listen)
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    held = [inodes[l[8:-1]] for l in (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(
                        f"/proc/{pid}/fd")) if l.startswith("socket:[") and l[8:-1] in inodes]
                    cmd = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")[:80]
                    pgid = os.getpgid(int(pid))
                except OSError:     # gone meanwhile, or not ours to read
                    continue
                if held or pgid == p.pid:
                    print(a.device, "process", pid, "pgid", pgid, "sockets on the port (state)", held, cmd, flush=True)
    finally:
        os.killpg(p.pid, 15)
        p.wait(20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
