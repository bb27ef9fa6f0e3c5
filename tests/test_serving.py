"""The transcription service as a user runs it: a real uvicorn process with a real NeMo model, called by
the official ``openai`` client; micro-batching, model switch, bad input, API key, limits, metrics."""

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import openai
import pytest
import requests

from tests.conftest import REPO, _http_service, char_error_rate, free_port

pytestmark = pytest.mark.ml
KEY = "test-key-123"


def _serve(tmp, model=None, **env):
    port = free_port()
    argv = [sys.executable, "-m", "clinasr.serving", "--port", str(port)] + (["--model", str(model)] if model else [])
    return _http_service(argv, "/health/live", port, timeout_s=180, log_path=tmp / "serve.log",
                         env={"PYTHONPATH": str(REPO / "include"), "CLINASR_SERVE_WORK_DIR": str(tmp / "work"), **env})


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    with _serve(tmp, tiny_model, CLINASR_SERVE_API_KEY=KEY, CLINASR_SERVE_MAX_UPLOAD_MB="1",
                CLINASR_SERVE_MAX_WAIT_MS="300") as url:
        _wait_ready(url)
        yield url, tmp / "serve.log"


def _wait_ready(url, timeout=120):
    import time

    deadline = time.time() + timeout
    while requests.get(f"{url}/health/ready", timeout=5).status_code != 200:
        assert time.time() < deadline, "service never became ready"
        time.sleep(0.5)


def client(url, key=KEY):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_openai_client_json_text_and_verbose(server, wav, tiny_model):
    url, _ = server
    c = client(url)
    with open(wav, "rb") as f:
        r = c.audio.transcriptions.with_raw_response.create(model="clinasr-asr", file=f)
    version = r.headers["x-model-version"]
    assert version == "model.nemo" and r.headers["x-request-id"]
    text = r.parse().text
    assert text.strip(), "the model produced no text for a clip it was fine-tuned on"
    with open(wav, "rb") as f:
        assert c.audio.transcriptions.create(model="clinasr-asr", file=f, response_format="text").strip() == text
    with open(wav, "rb") as f:
        v = c.audio.transcriptions.create(model="clinasr-asr", file=f, response_format="verbose_json",
                                          timestamp_granularities=["word", "segment"], language="en", temperature=0)
    assert v.text == text and v.duration > 0.5 and v.language == "en"
    assert v.words and all(w.end >= w.start for w in v.words) and " ".join(w.word for w in v.words) == text
    assert v.segments and v.segments[0].start <= v.segments[-1].end <= v.duration + 0.5
    models = c.models.list()
    assert [m.id for m in models.data] == ["model"]


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitle_formats(server, wav, fmt):
    """Real cues: numbered (srt) or after the WEBVTT header (vtt), well-formed times inside the clip, and together
    the words of the transcript, in order, at the segments' times."""
    import re

    url, _ = server
    c = client(url)
    with open(wav, "rb") as f:
        v = c.audio.transcriptions.create(model="m", file=f, response_format="verbose_json",
                                          timestamp_granularities=["segment"])
    with open(wav, "rb") as f:
        out = c.audio.transcriptions.create(model="m", file=f, response_format=fmt)
    sep = "," if fmt == "srt" else "."
    ts = rf"(\d\d):(\d\d):(\d\d){re.escape(sep)}(\d\d\d)"
    cue = re.compile(rf"(?:(\d+)\n)?{ts} --> {ts}\n(.+)\n")
    if fmt == "vtt":
        assert out.startswith("WEBVTT\n\n")
        out = out[len("WEBVTT\n\n"):]
    else:
        assert "WEBVTT" not in out
    blocks = [b for b in out.split("\n\n") if b.strip()]
    cues = [cue.fullmatch(b + "\n") for b in blocks]
    assert blocks and all(cues), f"not a {fmt} cue: {blocks}"
    secs = lambda g: int(g[0]) * 3600 + int(g[1]) * 60 + int(g[2]) + int(g[3]) / 1000  # noqa: E731
    times = [(secs(m.groups()[1:5]), secs(m.groups()[5:9])) for m in cues]
    assert all(0 <= a <= b <= v.duration + 0.5 for a, b in times)
    assert times == [(pytest.approx(sg.start, abs=1e-3), pytest.approx(sg.end, abs=1e-3)) for sg in v.segments]
    assert " ".join(m.group(10) for m in cues) == v.text and v.text.strip()
    if fmt == "srt":
        assert [int(m.group(1)) for m in cues] == list(range(1, len(cues) + 1))
    else:
        assert all(m.group(1) is None for m in cues)


def test_word_timings_keep_the_spaces_between_words():
    """A lone "▁" token (SentencePiece's space) opens a new word: "start" + "▁" + "levetiracetam" is two words,
    not "startlevetiracetam" in the subtitles."""
    from types import SimpleNamespace

    from clinasr.inference import Transcriber
    from clinasr.serving import segments_from_words, subtitles

    pieces = ["▁start", "▁", "lev", "et", "ir", "acetam", "▁now"]
    t = Transcriber.__new__(Transcriber)
    t.stride_s = 0.08
    t.model = SimpleNamespace(tokenizer=SimpleNamespace(ids_to_tokens=lambda ids: [pieces[i] for i in ids]))
    hyp = SimpleNamespace(y_sequence=list(range(7)), timestamp=[0, 5, 6, 7, 8, 9, 15])
    words = t._words(hyp, offset_s=1.0)
    assert [w["word"] for w in words] == ["start", "levetiracetam", "now"]
    assert words[1]["start"] == 1.4 and words[1]["end"] == round(1.0 + 10 * 0.08, 3)
    srt = subtitles(segments_from_words(words, "start levetiracetam now", 3.0), "srt")
    assert "start levetiracetam now" in srt


def test_an_unsupported_language_is_an_openai_shaped_400(server, wav):
    url, _ = server
    with pytest.raises(openai.BadRequestError) as e, open(wav, "rb") as f:
        client(url).audio.transcriptions.create(model="m", file=f, language="zz")
    assert e.value.body["param"] == "language" and e.value.body["code"] == "unsupported_language"


def test_admin_endpoints_are_refused_without_a_configured_key(tiny_model, tmp_path):
    with _serve(tmp_path) as url:      # no CLINASR_SERVE_API_KEY / _ADMIN_KEY: /admin/* is never open
        r = requests.post(f"{url}/admin/reload", json={"model": str(tiny_model)})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


@pytest.mark.parametrize("ext", ["flac", "mp3", "ogg"])
def test_upload_formats_are_decoded_and_resampled(server, wav, tmp_path, ext):
    """A 44.1 kHz stereo upload is heard as the 16 kHz mono original: the same duration (not 2.76 times
    longer) and the original's transcript up to a spelling. Resampling 16 -> 44.1 -> 16 kHz is not bit-exact even
    through flac, and a 4-step fine-tune hears the clip's drug name at the edge of two spellings (measured on the
    shipped base v3: "patient stoped warfore in" vs "patient stopped warfuring", CER 0.2); a wrong rate or channel
    layout gives other words."""
    url, _ = server
    c = client(url)
    other = tmp_path / f"a.{ext}"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), "-ar", "44100", "-ac", "2", str(other)], check=True)
    assert subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=sample_rate,channels", "-of", "csv=p=0",
                           str(other)], capture_output=True, text=True, check=True).stdout.strip() == "44100,2"
    with open(wav, "rb") as f:
        original = c.audio.transcriptions.create(model="m", file=f, response_format="verbose_json")
    with open(other, "rb") as f:
        heard = c.audio.transcriptions.create(model="m", file=f, response_format="verbose_json")
    assert original.text.strip()
    assert heard.duration == pytest.approx(original.duration, abs=0.01)      # measured: the same to 0.1 ms
    assert char_error_rate(original.text, heard.text) <= 0.3, (original.text, heard.text)


def test_bad_input_gets_openai_shaped_errors(server, wav, tmp_path):
    url, _ = server
    c = client(url)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not audio at all")
    with pytest.raises(openai.BadRequestError) as e, open(bad, "rb") as f:
        c.audio.transcriptions.create(model="m", file=f)
    assert e.value.body["code"] == "invalid_audio" and "could not use the audio" in e.value.body["message"]
    big = tmp_path / "big.wav"
    big.write_bytes(wav.read_bytes() * 20 + b"\0" * (2 * 2**20))
    with pytest.raises(openai.APIStatusError) as e, open(big, "rb") as f:
        c.audio.transcriptions.create(model="m", file=f)
    assert e.value.status_code == 413 and "exceeds the 1 MB limit" in e.value.body["message"]
    with pytest.raises(openai.AuthenticationError), open(wav, "rb") as f:
        client(url, key="wrong").audio.transcriptions.create(model="m", file=f)
    r = requests.post(f"{url}/v1/audio/transcriptions", headers={"Authorization": f"Bearer {KEY}"},
                      files={"file": wav.open("rb")}, data={"model": "m", "response_format": "xml"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    r = requests.post(f"{url}/v1/audio/transcriptions", headers={"Authorization": f"Bearer {KEY}"}, data={"model": "m"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"


def test_concurrent_requests_are_batched_and_measured(server, wav):
    url, log_path = server
    c = client(url)
    texts, errors = [], []

    def one():
        try:
            with open(wav, "rb") as f:
                texts.append(c.audio.transcriptions.create(model="m", file=f).text)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(texts)) == 1        # batching with padding does not change the output
    m = requests.get(f"{url}/metrics").text
    count = float(next(ln.split()[-1] for ln in m.splitlines() if ln.startswith("clinasr_batch_size_count")))
    total = float(next(ln.split()[-1] for ln in m.splitlines() if ln.startswith("clinasr_batch_size_sum")))
    assert total / count > 1.0, "no request shared a batch"
    assert 'clinasr_requests_total{status="200"}' in m and 'clinasr_model_info{version="model.nemo"} 1.0' in m
    assert "clinasr_rtfx_bucket" in m and "clinasr_audio_seconds_total" in m
    # logs are structured and carry no transcript text
    lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    reqs = [x for x in lines if x.get("event") == "transcription"]
    assert reqs and all("request_id" in x and "text" not in x for x in reqs)
    assert texts[0].strip() and texts[0] not in log_path.read_text()


def test_traffic_and_feedback_are_recorded_for_drift_monitoring(server, wav):
    url, log_path = server
    with open(wav, "rb") as f:
        raw = client(url).audio.transcriptions.with_raw_response.create(model="m", file=f)
    rid = raw.headers["x-request-id"]
    work = log_path.parent / "work"
    traffic = [json.loads(x) for f in (work / "traffic").glob("*.jsonl") for x in f.read_text().splitlines()]
    rec = next(t for t in traffic if t["request_id"] == rid)
    assert rec["hypothesis"] == raw.parse().text and rec["sample_rate"] == 16000 and rec["duration_s"] > 0.5
    assert {"level_dbfs", "snr_db", "model_version", "ts"} <= rec.keys()
    assert all((f.stat().st_mode & 0o077) == 0 for f in (work / "traffic").glob("*.jsonl"))   # PHI: owner only
    h = {"Authorization": f"Bearer {KEY}"}
    r = requests.post(f"{url}/v1/feedback", json={"request_id": rid, "corrected_text": "patient denies warfarin"}, headers=h)
    assert r.status_code == 202
    fb = [json.loads(x) for f in (work / "feedback").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert fb[-1]["request_id"] == rid and fb[-1]["corrected_text"] == "patient denies warfarin"
    assert requests.post(f"{url}/v1/feedback", json={"request_id": rid}, headers=h).status_code == 400
    assert requests.post(f"{url}/v1/feedback", json={"request_id": rid, "corrected_text": " "}, headers=h).status_code == 400


class GatedProxy:
    """A TCP proxy in front of the object store. While held, a new connection waits before it is forwarded: a
    deployment from s3:// is then stuck fetching its model, so the test, not the clock, decides how long the new
    model is loading."""

    def __init__(self, target_url: str):
        import socket
        from urllib.parse import urlparse

        u = urlparse(target_url)
        self.target = (u.hostname, u.port)
        self.open, self.waiting = threading.Event(), threading.Event()
        self.open.set()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self):
        self.open.clear()

    def release(self):
        self.open.set()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(conn,), daemon=True).start()

    def _forward(self, conn):
        import socket

        if not self.open.is_set():
            self.waiting.set()
            self.open.wait()
        up = socket.create_connection(self.target)
        for src, dst in ((conn, up), (up, conn)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        import socket

        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def test_deploy_switches_atomically_and_a_failed_load_keeps_the_old_model(tiny_model, wav, tmp_path, s3_env,
                                                                           s3_server):
    """Requests keep flowing across POST /admin/reload: each is answered by the old model or the new one (never an
    error, never no model), the old one answers while the new one loads, each client sees the switch once and
    never back; a second deployment sent while the first is loading is refused (409), not queued. The new model
    comes from the object store through a proxy the test holds shut until it has seen answers and the 409: the
    load cannot finish inside that window however slow or fast the machine is."""
    import time

    from clinasr.store import ObjectStore

    store = ObjectStore(s3_env)
    store.ensure_bucket()
    other = f"s3://{s3_env.bucket}/models/v2.nemo"
    store.put_file(Path(tiny_model), other)
    third = tmp_path / "v3.nemo"
    shutil.copy(tiny_model, third)
    broken = tmp_path / "broken.nemo"
    broken.write_bytes(b"not a model")
    admin = {"Authorization": "Bearer admin-key-1"}
    gate = GatedProxy(s3_server)
    with _serve(tmp_path, CLINASR_SERVE_ADMIN_KEY="admin-key-1",   # no model: live, not ready, 503s
                CLINASR_S3_ENDPOINT=gate.url) as url:
        assert requests.get(f"{url}/health/ready").status_code == 503
        r = requests.post(f"{url}/admin/reload", json={"model": str(tiny_model)})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"     # admin needs its key
        r = requests.post(f"{url}/v1/audio/transcriptions", files={"file": wav.open("rb")}, data={"model": "m"})
        assert r.status_code == 503 and "no model is loaded" in r.json()["error"]["message"]
        r = requests.post(f"{url}/admin/reload", json={"model": str(tiny_model)}, headers=admin, timeout=300)
        assert r.status_code == 200 and r.json() == {"version": "model.nemo", "previous": None, "device": "cpu"}
        assert requests.get(f"{url}/health/ready").json()["model_version"] == "model.nemo"
        r = requests.post(f"{url}/admin/reload", json={"model": str(broken)}, headers=admin, timeout=300)
        assert r.status_code == 422 and "still serving model.nemo" in r.json()["error"]["message"]
        with open(wav, "rb") as f:
            raw = client(url).audio.transcriptions.with_raw_response.create(model="m", file=f)
        assert raw.headers["x-model-version"] == "model.nemo"
        expected = raw.parse().text      # v2 is a copy of v1: both models must give this text
        assert expected.strip()

        stop, answers, failures = threading.Event(), {i: [] for i in range(3)}, []

        def keep_transcribing(i):
            while not stop.is_set():
                try:
                    r = requests.post(f"{url}/v1/audio/transcriptions", files={"file": wav.open("rb")}, timeout=120,
                                      data={"model": "m", "response_format": "verbose_json"})
                except requests.RequestException as e:
                    failures.append(repr(e))
                    return
                if r.status_code != 200:
                    failures.append((r.status_code, r.text[:300]))
                    continue
                answers[i].append((time.monotonic(), r.headers["x-model-version"], r.json()["model_version"],
                                   r.json()["text"]))

        def wait_for(cond, what, timeout=120):
            deadline = time.monotonic() + timeout
            while not cond():
                assert time.monotonic() < deadline and not failures, f"{what}; failures: {failures[:3]}"
                time.sleep(0.05)

        clients = [threading.Thread(target=keep_transcribing, args=(i,), daemon=True) for i in answers]
        for t in clients:
            t.start()
        try:
            wait_for(lambda: all(answers.values()), "the clients got no answers")
            first = {}
            deploy = threading.Thread(target=lambda: first.update(
                r=requests.post(f"{url}/admin/reload", json={"model": other}, headers=admin, timeout=300),
                t=time.monotonic()), daemon=True)
            gate.hold()
            deploy.start()
            started = f'"event": "model_loading", "ref": {json.dumps(other)}'
            wait_for(lambda: started in (tmp_path / "serve.log").read_text(), "the deployment never started loading")
            wait_for(gate.waiting.is_set, "the deployment never asked the object store for its model")
            # the new model is loading and cannot finish until the gate opens
            t_loading = time.monotonic()
            n_loading = {i: len(a) for i, a in answers.items()}
            second = requests.post(f"{url}/admin/reload", json={"model": str(third)}, headers=admin, timeout=300)
            assert second.status_code == 409, f"a deployment sent while another was loading got {second.status_code}"
            err = second.json()["error"]
            assert err["type"] == "conflict_error" and err["code"] == "deploy_in_progress"
            assert f"loading {other}" in err["message"] and "still serving model.nemo" in err["message"]
            # the old model answers while the new one loads (no pause, no "no model" gap): every client is answered
            wait_for(lambda: all(len(answers[i]) >= n_loading[i] + 2 for i in answers),
                     "no answers while the new model was loading")
            assert deploy.is_alive() and not first
            while_loading = [b for i in answers for t, _, b, _ in answers[i] if t > t_loading]
            assert while_loading and set(while_loading) == {"model.nemo"}, while_loading
            gate.release()
            deploy.join(300)
            assert first["r"].status_code == 200, first["r"].text
            assert first["r"].json() == {"version": "v2.nemo", "previous": "model.nemo", "device": "cpu"}
            n_before = {i: len(a) for i, a in answers.items()}
            wait_for(lambda: all(len(answers[i]) >= n_before[i] + 2 for i in answers), "no answers after the switch")
        finally:   # the clients stop even when an assertion failed
            stop.set()
            for t in clients:
                t.join(120)

        assert not failures, failures[:3]
        got = [a for i in answers for a in answers[i]]
        # every answer from the old model or the new one: the body's model_version is the model that decoded it;
        # X-Model-Version is stamped on the way out, so an answer decoded just before the switch may carry the new one
        assert {b for _, _, b, _ in got} == {h for _, h, _, _ in got} == {"model.nemo", "v2.nemo"}
        assert all(text == expected for *_, text in got)
        for i, a in answers.items():      # each client: old, old, ..., new, new — the switch once, never back
            served = [b for _, _, b, _ in a]
            assert served == sorted(served, key=["model.nemo", "v2.nemo"].index) and served[-1] == "v2.nemo", served
        assert requests.get(f"{url}/v1/models").json()["data"][0]["version"] == "v2.nemo"   # v3 was never loaded
        assert requests.post(f"{url}/admin/reload", json={}, headers=admin).status_code == 400


def test_a_model_failure_in_a_batch_is_a_500_for_each_of_its_requests_and_serving_goes_on(tiny_model, wav, tmp_path,
                                                                                            caplog):
    """The app in process (its batcher, error handling and metrics): a model that raises in the middle of a batch
    of three (as a CUDA error would) answers each of the three with an OpenAI-shaped 500 that quotes nothing of
    the exception's text (it may hold the input), logs the failure without it either, and the next request, to a
    working model, is served by the same batcher."""
    import logging
    import time

    from fastapi.testclient import TestClient

    from clinasr.inference import Transcriber
    from clinasr.serving import Loaded, ServeConfig, create_app

    class RaisingModel:
        device, batches = "cpu", []

        def transcribe(self, audios, timestamps=False):
            self.batches.append(len(audios))
            raise RuntimeError("CUDA error: an illegal memory access while decoding 'patient denies warfarin'")

    app = create_app(ServeConfig(work_dir=str(tmp_path / "work"), max_wait_ms=2000, record_traffic=False))
    holder = app.state.holder
    holder.current = Loaded(RaisingModel(), "raising", "raising/1", "raising", time.time())
    caplog.set_level(logging.INFO, logger="clinasr.serve")
    with TestClient(app, raise_server_exceptions=False) as tc:     # as a server answers: an unhandled error is a 500
        def post(results):
            results.append(tc.post("/v1/audio/transcriptions", files={"file": wav.open("rb")}, data={"model": "m"}))

        failed = []
        threads = [threading.Thread(target=post, args=(failed,), daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert RaisingModel.batches == [3]                  # one batch of three requests
        assert [r.status_code for r in failed] == [500] * 3
        for r in failed:
            err = r.json()["error"]
            assert err["type"] == "server_error" and err["code"] == "inference_failed" and err["param"] is None
            assert "transcription failed inside the model (RuntimeError, batch of 3)" in err["message"]
            assert "warfarin" not in r.text and "illegal memory" not in r.text
        logged = [json.loads(m) for m in caplog.messages if '"inference_failed"' in m]
        assert len(logged) == 1 and logged[0]["error"] == "RuntimeError" and logged[0]["batch"] == 3
        assert "test_serving.py" in logged[0]["at"] and not any("warfarin" in m for m in caplog.messages)

        holder.current = Loaded(Transcriber(tiny_model), str(tiny_model), "model.nemo", "model", time.time())
        served = []
        t = threading.Thread(target=post, args=(served,), daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), "the batcher stopped serving after the failed batch"
        assert served[0].status_code == 200 and served[0].json()["text"].strip()
        assert served[0].headers["x-model-version"] == "model.nemo"
        m = tc.get("/metrics").text
        assert 'clinasr_requests_total{status="500"} 3.0' in m and 'clinasr_requests_total{status="200"} 1.0' in m
