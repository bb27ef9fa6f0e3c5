"""Streaming transcription as users run it: the official ``openai`` client with ``stream=True``, the example live
client over the ``/v1/realtime`` WebSocket, bad input on both, the latency metrics, and a request's trace in the
platform's MLflow (a real server) — against a real uvicorn process serving a real NeMo model."""

import json
import subprocess
import sys
import time

import numpy as np
import openai
import pytest
import requests

from tests.conftest import REPO, char_error_rate
from tests.test_serving import KEY, _serve, _wait_ready, client

pytestmark = pytest.mark.ml
MAX_AUDIO_S = 30


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory, mlflow_server):
    tmp = tmp_path_factory.mktemp("stream")
    with _serve(tmp, tiny_model, CLINASR_SERVE_API_KEY=KEY, CLINASR_SERVE_MAX_AUDIO_S=str(MAX_AUDIO_S),
                MLFLOW_TRACKING_URI=mlflow_server) as url:
        _wait_ready(url)
        yield url, tmp / "serve.log", mlflow_server


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/v1/realtime"


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def metric(text: str, name: str) -> float:
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name))


def test_openai_client_streams_deltas_then_done(server, wav):
    url, _, _ = server
    c = client(url)
    with open(wav, "rb") as f:
        events = list(c.audio.transcriptions.create(model="clinasr-asr", file=f, stream=True))
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert events[-1].type == "transcript.text.done" and deltas and all(e.type != "transcript.text.done" for e in events[:-1])
    done = events[-1]
    assert done.text.strip() and "".join(d.delta for d in deltas).strip() == done.text   # appended, never revised
    assert done.usage.output_tokens > 0 and done.usage.input_token_details.audio_tokens > 0
    with open(wav, "rb") as f:
        offline = c.audio.transcriptions.create(model="clinasr-asr", file=f).text
    # chunked decoding of a 2-4 s clip, 0.96 s chunks: the same words up to a spelling of the drug name
    assert char_error_rate(offline, done.text) <= 0.3, (offline, done.text)
    m = requests.get(f"{url}/metrics").text
    assert metric(m, 'clinasr_stream_ttft_seconds_count{kind="upload"}') >= 1
    assert metric(m, 'clinasr_stream_final_seconds_count{kind="upload"}') >= 1


def test_one_chunk_stream_is_the_offline_transcript_and_chunks_carry_the_decoder_state(tiny_model, wav, monkeypatch):
    """The streaming machinery itself: with one chunk as long as the clip, it is offline decoding (same text);
    with small chunks, each chunk continues the previous chunk's hypothesis (the text only grows and the
    tokens of every step are kept). Streaming decodes greedily, so offline decoding here is greedy too (the tiny
    fine-tune inherits the shipped base's n-gram LM, which offline decoding would fuse)."""
    from clinasr import audio
    from clinasr.inference import Transcriber

    monkeypatch.setenv("CLINASR_DECODING", "greedy")

    t = Transcriber(tiny_model)
    x = audio.load(wav)
    offline = t.transcribe([x])[0]["text"]
    st = t.new_stream(chunk_s=60, left_s=0, right_s=0)
    st.feed(x)
    assert st.ready(final=True) and not st.ready(final=False)
    assert t.stream_step([(st, True)])[0] == offline and not st.ready(final=True)

    # small chunks, each encoded with the whole clip as context: the encoder sees what offline decoding sees, so
    # carrying the transducer's state (decoder state, last label, TDT time jump) across chunks gives the offline
    # text exactly (restarting the decoder at each chunk does not: measured 0 of 12 clips then, 12 of 12 now)
    st = t.new_stream(chunk_s=0.48, left_s=60, right_s=60)
    st.feed(x)
    chunks = 0
    while st.ready(final=True):
        t.stream_step([(st, True)])
        chunks += 1
    assert chunks >= 3 and st.text == offline

    st = t.new_stream(chunk_s=0.48, left_s=2.0, right_s=0.32)
    text, steps, tokens = "", 0, []
    for i in range(0, len(x), 1600):                   # 100 ms frames, as a microphone sends them
        st.feed(x[i:i + 1600])
        while st.ready(final=False):
            text += t.stream_step([(st, False)])[0]
            steps += 1
            tokens.append(st.n_tokens)
    while st.ready(final=True):
        text += t.stream_step([(st, True)])[0]
        steps += 1
    assert steps >= len(x) / 16000 / 0.48 - 1 and tokens == sorted(tokens)
    assert text == st.text and text.strip()
    assert len(st.audio) <= st.left + st.chunk + st.right + 1600      # the buffer keeps only what is still needed
    words = t.stream_words(st)
    assert " ".join(w["word"] for w in words) == text.strip()
    assert all(a["start"] <= b["start"] for a, b in zip(words, words[1:])) and words[-1]["end"] <= len(x) / 16000 + 0.5


def test_example_client_streams_a_wav_over_the_websocket_and_prints_partials(server, wav):
    url, log_path, _ = server
    run = subprocess.run([sys.executable, str(REPO / "examples" / "realtime_client.py"), str(wav), "--url", ws_url(url),
                          "--api-key", KEY, "--speed", "4", "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    events = [json.loads(x) for x in run.stdout.splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "transcription_session.created" and events[0]["session"]["sample_rate"] == 16000
    done = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert done and done[-1]["transcript"].strip()
    for item in done:                      # each utterance's partials add up to its final text
        partial = "".join(e["delta"] for e in events
                          if e["type"].endswith("transcription.delta") and e["item_id"] == item["item_id"])
        assert partial.strip() == item["transcript"]
        assert kinds.index("input_audio_buffer.committed") < kinds.index(item["type"])
        assert item["latency"]["final_s"] >= 0 and item["words"]
    # the same file, printed for a person: partials, then the final line with its latencies
    human = subprocess.run([sys.executable, str(REPO / "examples" / "realtime_client.py"), str(wav), "--url",
                            ws_url(url), "--api-key", KEY, "--speed", "0"], capture_output=True, text=True, timeout=120)
    assert human.returncode == 0 and "first text after" in human.stdout and done[-1]["transcript"] in human.stdout
    m = requests.get(f"{url}/metrics").text
    assert metric(m, 'clinasr_stream_ttft_seconds_count{kind="realtime"}') >= 1
    assert metric(m, 'clinasr_stream_final_seconds_count{kind="realtime"}') >= 2
    assert "clinasr_streams_active 0.0" in m
    assert done[-1]["transcript"] not in log_path.read_text()          # logs carry no transcript text


def test_realtime_bad_input_gets_clear_errors_and_the_service_keeps_serving(server, wav):
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    from clinasr import audio

    url, log_path, _ = server
    auth = {"Authorization": f"Bearer {KEY}"}
    with pytest.raises((InvalidStatus, ConnectionClosed)):       # no key: refused (1008)
        with connect(ws_url(url)) as ws:
            ws.recv(timeout=10)

    def recv_until(ws, kind, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            ev = json.loads(ws.recv(timeout=timeout))
            if ev["type"] == kind:
                return ev
        raise AssertionError(f"no {kind}")

    with connect(ws_url(url), additional_headers=auth) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "transcription_session.created"
        ws.send(json.dumps({"type": "transcription_session.update", "session": {"input_audio_format": "pcm16",
                                                                               "sample_rate": 44100}}))
        err = recv_until(ws, "error")["error"]
        assert err["code"] == "unsupported_audio_format" and "16000 Hz" in err["message"]
        ws.send("not json")
        assert recv_until(ws, "error")["error"]["code"] == "invalid_event"
        ws.send(b"\x01\x02\x03")                                  # half a sample
        assert recv_until(ws, "error")["error"]["code"] == "invalid_audio"
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        assert recv_until(ws, "error")["error"]["code"] == "input_audio_buffer_commit_empty"
        # silence: no speech, no VAD turn; a commit gives a final result (no words), the session goes on
        ws.send(json.dumps({"type": "transcription_session.update", "session": {"turn_detection": None}}))
        assert recv_until(ws, "transcription_session.updated")["session"]["turn_detection"] is None
        ws.send(pcm16(np.zeros(32000, np.float32)))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        assert isinstance(recv_until(ws, "conversation.item.input_audio_transcription.completed")["transcript"], str)
        # after all that, the same session still transcribes speech
        ws.send(pcm16(audio.load(wav)))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        assert recv_until(ws, "conversation.item.input_audio_transcription.completed")["transcript"].strip()

    # a connection dropped mid-utterance (no close frame): the server discards it and keeps serving
    ws = connect(ws_url(url), additional_headers=auth)
    ws.recv(timeout=10)
    ws.send(pcm16(audio.load(wav)[:16000]))
    ws.socket.close()
    # more audio than the service's per-session limit: an error, then the server closes (1009)
    with connect(ws_url(url), additional_headers=auth, max_size=None) as ws:
        ws.recv(timeout=10)
        ws.send(json.dumps({"type": "transcription_session.update", "session": {"turn_detection": None}}))
        second = pcm16(np.zeros(16000, np.float32))
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(MAX_AUDIO_S + 5):
                ws.send(second)
            while True:
                ev = json.loads(ws.recv(timeout=60))
                if ev["type"] == "error":
                    assert ev["error"]["code"] == "audio_limit_exceeded"
        assert closed.value.rcvd.code == 1009
    deadline = time.time() + 30
    while '"realtime_dropped"' not in log_path.read_text():
        assert time.time() < deadline, "the dropped session was not logged"
        time.sleep(0.5)
    with open(wav, "rb") as f:
        assert client(url).audio.transcriptions.create(model="m", file=f).text.strip()
    assert "clinasr_streams_active 0.0" in requests.get(f"{url}/metrics").text


def test_upload_streams_refuse_what_they_cannot_send(server, wav, tmp_path):
    url, _, _ = server
    h = {"Authorization": f"Bearer {KEY}"}
    r = requests.post(f"{url}/v1/audio/transcriptions", headers=h, files={"file": wav.open("rb")},
                      data={"model": "m", "stream": "true", "response_format": "verbose_json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"
    from clinasr import audio

    long = tmp_path / "long.wav"      # longer than the service's audio limit: refused before any event
    audio.write_wav(long, np.zeros(16000 * (MAX_AUDIO_S + 2), np.float32) + 1e-3)
    with pytest.raises(openai.BadRequestError) as e, open(long, "rb") as f:
        list(client(url).audio.transcriptions.create(model="m", file=f, stream=True))
    assert e.value.body["code"] == "invalid_audio"


def test_a_request_trace_lands_in_mlflow_with_its_stages_and_no_transcript(server, wav):
    from clinasr.tracing import find_trace, trace_url

    url, _, tracking = server
    with open(wav, "rb") as f:
        raw = client(url).audio.transcriptions.with_raw_response.create(model="m", file=f)
    trace_id, rid, text = raw.headers["x-trace-id"], raw.headers["x-request-id"], raw.parse().text
    assert len(trace_id) == 32 and text.strip()
    stages = {"POST /v1/audio/transcriptions", "upload", "decode_audio", "queue", "inference", "postprocess"}
    trace = find_trace(tracking, trace_id, stages, timeout=60)
    assert trace is not None, "the request's trace never reached MLflow whole"
    assert trace_url(tracking, trace).startswith(f"{tracking}/#/experiments/{trace.info.experiment_id}/traces")
    spans = {s.name: s for s in trace.data.spans}
    root = spans["POST /v1/audio/transcriptions"]
    assert root.attributes["request_id"] == rid and root.attributes["model.version"] == "model.nemo"
    assert all(spans[n].parent_id == root.span_id for n in ("upload", "queue", "inference"))
    assert spans["inference"].start_time_ns >= spans["queue"].start_time_ns
    assert text not in json.dumps([s.to_dict() for s in trace.data.spans])       # no transcript in a span
