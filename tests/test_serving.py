"""The transcription service as a user runs it: a real uvicorn process with a real NeMo model, called by
the official ``openai`` client; micro-batching, model switch, bad input, API key, limits, metrics."""

import json
import shutil
import subprocess
import sys
import threading

import openai
import pytest
import requests

from tests.conftest import REPO, _http_service, free_port

pytestmark = pytest.mark.ml
KEY = "test-key-123"


@pytest.fixture(scope="module")
def wav(tiny_dataset):
    row = json.loads((tiny_dataset / "val_manifest.jsonl").read_text().splitlines()[0])
    return tiny_dataset / row["audio_filepath"]


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
    assert isinstance(text, str)
    with open(wav, "rb") as f:
        assert c.audio.transcriptions.create(model="clinasr-asr", file=f, response_format="text").strip() == text
    with open(wav, "rb") as f:
        v = c.audio.transcriptions.create(model="clinasr-asr", file=f, response_format="verbose_json",
                                          timestamp_granularities=["word", "segment"], language="en", temperature=0)
    assert v.text == text and v.duration > 0.5 and v.language == "en"
    assert all(w.end >= w.start for w in v.words or []) and " ".join(w.word for w in v.words or []) == text
    if text:
        assert v.segments and v.segments[0].start <= v.segments[-1].end <= v.duration + 0.5
    models = c.models.list()
    assert [m.id for m in models.data] == ["model"]


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitle_formats(server, wav, fmt):
    url, _ = server
    with open(wav, "rb") as f:
        out = client(url).audio.transcriptions.create(model="m", file=f, response_format=fmt)
    assert ("-->" in out) or out.strip() in ("", "WEBVTT")
    assert out.startswith("WEBVTT") if fmt == "vtt" else "WEBVTT" not in out


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
    url, _ = server
    other = tmp_path / f"a.{ext}"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), "-ar", "44100", "-ac", "2", str(other)], check=True)
    with open(other, "rb") as f:
        assert isinstance(client(url).audio.transcriptions.create(model="m", file=f).text, str)


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
    if texts[0].strip():
        assert texts[0] not in log_path.read_text()


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


def test_deploy_switches_atomically_and_a_failed_load_keeps_the_old_model(tiny_model, wav, tmp_path):
    other = tmp_path / "v2.nemo"
    shutil.copy(tiny_model, other)
    broken = tmp_path / "broken.nemo"
    broken.write_bytes(b"not a model")
    admin = {"Authorization": "Bearer admin-key-1"}
    with _serve(tmp_path, CLINASR_SERVE_ADMIN_KEY="admin-key-1") as url:   # no model: live, not ready, 503s
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
        r = requests.post(f"{url}/admin/reload", json={"model": str(other)}, headers=admin, timeout=300)
        assert r.json()["version"] == "v2.nemo" and r.json()["previous"] == "model.nemo"
        assert requests.get(f"{url}/v1/models").json()["data"][0]["version"] == "v2.nemo"
        assert requests.post(f"{url}/admin/reload", json={}, headers=admin).status_code == 400
