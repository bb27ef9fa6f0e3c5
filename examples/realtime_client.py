"""Stream a WAV file to clinasr's live-dictation WebSocket in real time and print the partial and final text.

    python examples/realtime_client.py recording.wav --url ws://127.0.0.1:18000/v1/realtime --api-key "$KEY"

The audio is sent as 16 kHz PCM16 in 100 ms frames at the pace of speech (``--speed 0`` sends as fast as the
socket takes it), then committed. Partial text is printed as it arrives (dim), each utterance's final text with
its time to first text (TTFT) and its final latency. ``--json`` prints every server event as one JSON line.
Needs ``websockets`` and ``soundfile`` (both in the ML runtime); any sample rate is resampled to 16 kHz.
"""

import argparse
import base64
import json
import os
import sys
import threading
import time

import numpy as np

SR = 16000


def load_pcm16(path: str) -> bytes:
    import soundfile as sf

    x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != SR:     # linear interpolation is enough for an example; the service itself only takes 16 kHz
        n = int(round(len(x) * SR / sr))
        x = np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x).astype(np.float32)
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def stream(path: str, url: str, api_key: str | None, speed: float = 1.0, frame_ms: int = 100,
           as_json: bool = False, out=sys.stdout) -> list[dict]:
    """Send ``path`` over the socket; returns every event the server sent (the last is the final transcript)."""
    from websockets.sync.client import connect

    pcm = load_pcm16(path)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    events: list[dict] = []
    step = SR * 2 * frame_ms // 1000
    with connect(url, additional_headers=headers, max_size=2**22) as ws:
        done = threading.Event()

        def receive():
            client_commit = False    # the server VAD may have ended the last utterance before our commit
            try:
                for msg in ws:
                    ev = json.loads(msg)
                    events.append(ev)
                    show(ev, as_json, out)
                    kind, code = ev["type"], (ev.get("error") or {}).get("code")
                    client_commit |= kind == "input_audio_buffer.committed" and ev.get("by") == "client"
                    if (kind.endswith("input_audio_transcription.completed") and client_commit) or \
                            (code == "input_audio_buffer_commit_empty" and committed.is_set()):
                        break
                    if kind == "error" and code != "input_audio_buffer_commit_empty":
                        break
            finally:
                done.set()

        committed = threading.Event()
        reader = threading.Thread(target=receive, daemon=True)
        reader.start()
        t0 = time.perf_counter()
        for i in range(0, len(pcm), step):
            if done.is_set():
                break
            if speed > 0:      # the pace of speech: a frame leaves once it has been spoken, at its end time
                time.sleep(max(0.0, t0 + (i + step) / (2 * SR) / speed - time.perf_counter()))
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[i:i + step]).decode()}))
        committed.set()
        if not done.is_set():
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        done.wait(timeout=120)
    return events


def show(ev: dict, as_json: bool, out) -> None:
    if as_json:
        print(json.dumps(ev), file=out, flush=True)
        return
    kind = ev["type"]
    if kind.endswith("input_audio_transcription.delta"):
        print(f"\033[2m{ev['delta']}\033[0m", end="", file=out, flush=True)
    elif kind.endswith("input_audio_transcription.completed"):
        lat = ev.get("latency") or {}
        print(f"\n[{ev['item_id']}] {ev['transcript']}   (first text after {lat.get('ttft_s')} s, final "
              f"{lat.get('final_s')} s after the end of its audio)", file=out, flush=True)
    elif kind == "error":
        print(f"\nerror: {ev['error']['message']}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("wav")
    p.add_argument("--url", default=os.environ.get("CLINASR_REALTIME_URL", "ws://127.0.0.1:18000/v1/realtime"))
    p.add_argument("--api-key", default=os.environ.get("CLINASR_SERVE_API_KEY"))
    p.add_argument("--speed", type=float, default=1.0, help="1 = real time, 2 = twice as fast, 0 = no pacing")
    p.add_argument("--json", action="store_true", help="print every server event as a JSON line")
    a = p.parse_args(argv)
    events = stream(a.wav, a.url, a.api_key, a.speed, as_json=a.json)
    errors = [e for e in events if e["type"] == "error" and e["error"].get("code") != "input_audio_buffer_commit_empty"]
    return 0 if any(e["type"].endswith("completed") for e in events) and not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
