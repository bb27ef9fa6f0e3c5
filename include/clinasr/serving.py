"""An OpenAI-compatible transcription service (ML runtime): ``POST /v1/audio/transcriptions``.

Any OpenAI client works unchanged (``client.audio.transcriptions.create(model=..., file=...)``). The
service holds one model (:class:`clinasr.inference.Transcriber`, GPU when present, CPU otherwise),
batches concurrent requests into micro-batches (``max_batch`` items or ``max_wait_ms``), and switches
models atomically on ``POST /admin/reload``: the new model is loaded and warmed up beside the old one,
which keeps serving until the switch, and keeps serving for good if the new one fails to load.

Operations: ``/health/live``, ``/health/ready`` (ready only once a model is loaded and warm),
``/metrics`` (Prometheus), ``X-Request-ID`` and ``X-Model-Version`` headers, JSON logs without transcript
text or audio, optional Bearer API key, upload size limit, CORS off unless origins are configured.

Run: ``clinasr serve --model models:/clinasr-asr@production`` (the CLI starts this module in the ML runtime).
"""


import argparse
import asyncio
import hmac
import json
import logging
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from clinasr import audio

log = logging.getLogger("clinasr.serve")

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
LANGUAGES = ("en",)   # what the models are trained for; anything else is an OpenAI-shaped 400


@dataclass
class ServeConfig:
    model: str | None = None                 # .nemo path, s3:// or models:/name@alias; None: wait for a deploy
    api_key: str | None = None               # Bearer token required on /v1/* when set (the platform always sets one)
    admin_key: str | None = None             # for /admin/*; defaults to api_key; with neither, /admin/* is refused
    max_upload_mb: float = 25.0              # OpenAI's own limit
    max_audio_s: float = 2 * 3600.0
    max_batch: int = 8
    max_wait_ms: float = 20.0
    max_chunk_s: float = 30.0
    cors_origins: list[str] = field(default_factory=list)
    work_dir: str = ".run/serve"
    record_traffic: bool = True              # traffic/ + feedback/ under work_dir, for drift monitoring (PHI: 0600)

    @classmethod
    def from_env(cls, **over) -> "ServeConfig":
        env = os.environ.get
        cfg = cls(model=env("CLINASR_SERVE_MODEL") or None, api_key=env("CLINASR_SERVE_API_KEY") or None,
                  admin_key=env("CLINASR_SERVE_ADMIN_KEY") or None,
                  max_upload_mb=float(env("CLINASR_SERVE_MAX_UPLOAD_MB") or 25),
                  max_batch=int(env("CLINASR_SERVE_MAX_BATCH") or 8),
                  max_wait_ms=float(env("CLINASR_SERVE_MAX_WAIT_MS") or 20),
                  cors_origins=[o for o in (env("CLINASR_SERVE_CORS_ORIGINS") or "").split(",") if o],
                  record_traffic=(env("CLINASR_SERVE_RECORD_TRAFFIC") or "1") not in ("0", "false", "no"),
                  work_dir=env("CLINASR_SERVE_WORK_DIR") or str(Path(env("CLINASR_HOME") or ".run") / "serve"))
        for k, v in over.items():
            if v is not None:
                setattr(cfg, k, v)
        return cfg


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# -- model holder: atomic switch ---------------------------------------------------------------------
@dataclass
class Loaded:
    transcriber: object
    ref: str
    version: str
    name: str
    loaded_at: float


def describe_ref(ref: str) -> tuple[str, str]:
    """(model name, version label) for a reference: models:/name/N -> (name, "name/N")."""
    if ref.startswith("models:/"):
        from clinasr import registry

        name, version = registry.resolve(ref)
        return name, f"{name}/{version}"
    p = Path(ref)
    return p.stem, p.name


class ModelHolder:
    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.current: Loaded | None = None
        self.previous: Loaded | None = None
        self._reload_lock = threading.Lock()   # one deployment at a time: a second one is refused (409), not queued
        self.loading: str | None = None
        self.last_error: str | None = None

    def load(self, ref: str) -> Loaded:
        """Load + warm up ``ref`` beside the serving model, then switch. On any failure the old model stays."""
        from clinasr.inference import Transcriber
        from clinasr.registry import fetch_model

        if not self._reload_lock.acquire(blocking=False):
            raise APIError(409, f"a model deployment is already in progress (loading {self.loading}); "
                                f"{'still serving ' + self.current.version if self.current else 'no model is loaded yet'}"
                                ": retry once it has finished", "conflict_error", param="model", code="deploy_in_progress")
        try:
            self.loading = ref
            log.info(json.dumps({"event": "model_loading", "ref": ref,
                                 "serving": self.current.version if self.current else None}))
            t0 = time.time()
            name, version = describe_ref(ref)
            if self.current and self.current.version == version:
                return self.current
            dest = Path(self.cfg.work_dir) / "models" / version.replace("/", "_")
            path = fetch_model(ref if not ref.startswith("models:/") else f"models:/{version}", dest)
            t = Transcriber(path, max_chunk_s=self.cfg.max_chunk_s, version=version)
            warm = t.warm_up()
            new = Loaded(t, ref, version, name, time.time())
            self.previous, self.current = self.current, new      # the switch: one reference assignment
            self.last_error = None
            log.info(json.dumps({"event": "model_switched", "version": version, "device": t.device,
                                 "previous": self.previous.version if self.previous else None,
                                 "load_s": round(time.time() - t0, 2), "warmup_s": round(warm, 3)}))
            if self.previous is not None:
                self.previous = Loaded(None, self.previous.ref, self.previous.version, self.previous.name,
                                       self.previous.loaded_at)   # release the old weights after the switch
            return new
        except APIError:
            raise
        except Exception as e:
            self.last_error = f"{type(e).__name__}: {e}"
            log.error(json.dumps({"event": "model_load_failed", "ref": ref, "error": self.last_error[:500],
                                  "serving": self.current.version if self.current else None}))
            raise APIError(422 if self.current else 503, f"could not load {ref}: {self.last_error[:300]}; "
                           f"{'still serving ' + self.current.version if self.current else 'no model is loaded'}",
                           "model_load_error") from None
        finally:
            self.loading = None
            self._reload_lock.release()


# -- micro-batching -----------------------------------------------------------------------------------
class Batcher:
    """Collects concurrent requests into batches of up to ``max_batch`` within ``max_wait_ms``."""

    def __init__(self, holder: ModelHolder, metrics: "Metrics", max_batch: int, max_wait_ms: float):
        self.holder, self.metrics = holder, metrics
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None

    async def submit(self, x: np.ndarray, timestamps: bool) -> tuple[dict, str, float]:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((x, timestamps, fut))
        return await fut

    async def run(self) -> None:
        self.queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            model = self.holder.current      # one model for the whole batch, even if a switch happens now
            try:
                if model is None:
                    raise APIError(503, "no model is loaded yet (waiting for a deployment)", "service_unavailable")
                t0 = time.perf_counter()
                res = await loop.run_in_executor(None, lambda: model.transcriber.transcribe(
                    [b[0] for b in batch], timestamps=any(b[1] for b in batch)))
                took = time.perf_counter() - t0
                if len(res) != len(batch):   # a request without its result would wait for ever
                    raise RuntimeError(f"the model returned {len(res)} results for a batch of {len(batch)}")
                self.metrics.batch_size.observe(len(batch))
                for (_, _, fut), r in zip(batch, res):
                    if not fut.done():
                        fut.set_result((r, model.version, took))
            except Exception as e:
                self._fail(batch, e, model)

    @staticmethod
    def _fail(batch: list, e: Exception, model: "Loaded | None") -> None:
        """Every request of a failed batch gets an OpenAI-shaped error; the loop goes on with the next batch.
        A model failure is a 500 ("server_error"). The exception's text may quote the input, so neither the
        response nor the log carries it: the response names its class, the log its class and where it was raised."""
        if not isinstance(e, APIError):
            import traceback

            where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
            log.error(json.dumps({"event": "inference_failed", "error": type(e).__name__, "batch": len(batch),
                                  "at": f"{Path(where.filename).name}:{where.lineno} in {where.name}" if where else None,
                                  "model_version": model.version if model else None}))
        for _, _, fut in batch:
            if fut.done():
                continue
            fut.set_exception(e if isinstance(e, APIError) else APIError(
                500, f"transcription failed inside the model ({type(e).__name__}, batch of {len(batch)}); "
                     "nothing was transcribed for this request: retry it, and report the X-Request-ID if it persists",
                "server_error", code="inference_failed"))


# -- traffic and feedback records (drift monitoring) ------------------------------------------------
class Recorder:
    """Appends JSON lines to <work_dir>/<kind>/<UTC date>.jsonl. These files hold transcripts (PHI): they
    are created readable by the service's user only, and are never written to logs."""

    def __init__(self, work_dir: str, enabled: bool):
        self.dir, self.enabled = Path(work_dir), enabled
        self._lock = threading.Lock()

    def append(self, kind: str, record: dict) -> None:
        if not self.enabled:
            return
        from datetime import datetime, timezone

        now = datetime.now(timezone.utc)
        d = self.dir / kind
        d.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"ts": now.isoformat(), **record}) + "\n"
        with self._lock:
            fd = os.open(d / f"{now.date().isoformat()}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)


# -- metrics ------------------------------------------------------------------------------------------
class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("clinasr_requests_total", "Transcription requests by HTTP status", ["status"], registry=r)
        self.latency = Histogram("clinasr_request_seconds", "Request latency (upload to response)", registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120))
        self.audio = Counter("clinasr_audio_seconds_total", "Seconds of audio transcribed", registry=r)
        self.rtfx = Histogram("clinasr_rtfx", "Audio seconds per second of batch compute", registry=r,
                              buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
        self.batch_size = Histogram("clinasr_batch_size", "Requests per inference batch", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32))
        self.model_info = Gauge("clinasr_model_info", "The served model version (value 1)", ["version"], registry=r)
        self.ready = Gauge("clinasr_ready", "1 when a model is loaded and warm", registry=r)


# -- response formatting ------------------------------------------------------------------------------
def segments_from_words(words: list[dict], text: str, duration: float, max_gap_s: float = 0.8,
                        max_len_s: float = 30.0) -> list[dict]:
    segs, cur = [], []
    for w in words:
        if cur and (w["start"] - cur[-1]["end"] > max_gap_s or w["end"] - cur[0]["start"] > max_len_s):
            segs.append(cur)
            cur = []
        cur.append(w)
    if cur:
        segs.append(cur)
    if not segs:
        return [{"id": 0, "seek": 0, "start": 0.0, "end": round(duration, 3), "text": text, "tokens": [],
                 "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 1.0, "no_speech_prob": 0.0}] if text else []
    return [{"id": i, "seek": 0, "start": s[0]["start"], "end": s[-1]["end"], "text": " ".join(w["word"] for w in s),
             "tokens": [], "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 1.0, "no_speech_prob": 0.0}
            for i, s in enumerate(segs)]


def _ts(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def subtitles(segs: list[dict], kind: str) -> str:
    if kind == "srt":
        return "".join(f"{i + 1}\n{_ts(s['start'], ',')} --> {_ts(s['end'], ',')}\n{s['text']}\n\n" for i, s in enumerate(segs))
    return "WEBVTT\n\n" + "".join(f"{_ts(s['start'], '.')} --> {_ts(s['end'], '.')}\n{s['text']}\n\n" for s in segs)


# -- the app: shared state, middleware, routes ---------------------------------------------------------
class Service:
    """What one app serves from, kept on ``app.state.service``: the config, the model holder, the batcher,
    the metrics and the traffic recorder. The middleware and the routes below read it from the request."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.holder, self.metrics = ModelHolder(cfg), Metrics()
        self.recorder = Recorder(cfg.work_dir, cfg.record_traffic)
        self.batcher = Batcher(self.holder, self.metrics, cfg.max_batch, cfg.max_wait_ms)

    def set_model_gauges(self) -> None:
        self.metrics.model_info.clear()
        if self.holder.current:
            self.metrics.model_info.labels(self.holder.current.version).set(1)
        self.metrics.ready.set(1 if self.holder.current else 0)

    async def initial_load(self) -> None:
        if not self.cfg.model:
            log.info(json.dumps({"event": "waiting_for_deploy"}))
            return
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.holder.load, self.cfg.model)
        except APIError as e:
            log.warning(json.dumps({"event": "initial_model_unavailable", "ref": self.cfg.model, "error": e.message[:300]}))
        self.set_model_gauges()


def _service(request: Request) -> Service:
    return request.app.state.service


@asynccontextmanager
async def _lifespan(app: FastAPI):
    svc: Service = app.state.service
    task = asyncio.create_task(svc.batcher.run())
    loader = asyncio.create_task(svc.initial_load())
    yield
    loader.cancel()
    task.cancel()


async def _api_error(request: Request, e: APIError):
    return JSONResponse(e.body(), status_code=e.status)


def _check_access(request: Request, cfg: ServeConfig) -> None:
    """The keys (admin key on /admin/*, API key on /v1/*) and the upload size; raises an APIError."""
    path = request.url.path
    if path.startswith("/admin/"):
        admin_key = cfg.admin_key or cfg.api_key
        if not admin_key:      # loading a model unpickles it: never without a key
            raise APIError(403, "admin endpoints are disabled: start the service with CLINASR_SERVE_ADMIN_KEY "
                                "(or CLINASR_SERVE_API_KEY) set", "invalid_request_error", code="admin_disabled")
        if not hmac.compare_digest(request.headers.get("authorization", ""), f"Bearer {admin_key}"):
            raise APIError(401, "invalid or missing admin key (Authorization: Bearer <key>)",
                           "invalid_request_error", code="invalid_api_key")
    elif cfg.api_key and path.startswith("/v1/"):
        if not hmac.compare_digest(request.headers.get("authorization", ""), f"Bearer {cfg.api_key}"):
            raise APIError(401, "invalid or missing API key (Authorization: Bearer <key>)",
                           "invalid_request_error", code="invalid_api_key")
    if path == "/v1/audio/transcriptions":
        size = int(request.headers.get("content-length") or 0)
        if size > cfg.max_upload_mb * 2**20:
            raise APIError(413, f"upload of {size / 2**20:.1f} MB exceeds the {cfg.max_upload_mb:g} MB limit",
                           param="file", code="file_too_large")


async def _envelope(request: Request, call_next):
    """Every request: access checks, X-Request-ID, X-Model-Version; for transcriptions also the request metrics
    and a PHI-free log line."""
    svc = _service(request)
    rid = request.headers.get("x-request-id") or uuid.uuid4().hex
    request.state.rid = rid
    t0 = time.perf_counter()
    try:
        _check_access(request, svc.cfg)
        response = await call_next(request)
    except APIError as e:
        response = JSONResponse(e.body(), status_code=e.status)
    response.headers["X-Request-ID"] = rid
    holder = svc.holder
    if holder.current and "x-model-version" not in response.headers:   # the endpoint's own (the model that
        response.headers["X-Model-Version"] = holder.current.version      # answered) wins over a later switch
    if request.url.path == "/v1/audio/transcriptions":
        took = time.perf_counter() - t0
        svc.metrics.requests.labels(str(response.status_code)).inc()
        svc.metrics.latency.observe(took)
        # structured, PHI-free: no transcript text, no audio, no file name
        log.info(json.dumps({"event": "transcription", "request_id": rid, "status": response.status_code,
                             "seconds": round(took, 4), "audio_s": getattr(request.state, "audio_s", None),
                             "model_version": getattr(request.state, "model_version", None)}))
    return response


async def live():
    return {"status": "alive"}


async def ready(request: Request):
    holder = _service(request).holder
    if holder.current is None:
        return JSONResponse({"status": "not ready", "reason": holder.last_error or "no model loaded yet"}, 503)
    return {"status": "ready", "model_version": holder.current.version, "device": holder.current.transcriber.device}


async def prom(request: Request):
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(_service(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def models(request: Request):
    data = []
    if c := _service(request).holder.current:
        data.append({"id": c.name, "object": "model", "created": int(c.loaded_at), "owned_by": "clinasr",
                     "version": c.version, "source": c.ref})
    return {"object": "list", "data": data}


async def reload(request: Request):
    svc = _service(request)
    try:
        body = await request.json()
    except Exception:
        body = {}
    ref = (body or {}).get("model")
    if not ref:
        raise APIError(400, "body must be JSON {\"model\": \"models:/name/N | s3://... | /path.nemo\"}", param="model")
    prev = svc.holder.current.version if svc.holder.current else None
    new = await asyncio.get_running_loop().run_in_executor(None, svc.holder.load, ref)
    svc.set_model_gauges()
    return {"version": new.version, "previous": prev, "device": new.transcriber.device}


async def feedback(request: Request):
    """A clinician's corrected transcript for an earlier request (X-Request-ID of its response)."""
    try:
        body = await request.json()
    except Exception:
        body = None
    if not isinstance(body, dict) or not body.get("request_id") or not isinstance(body.get("corrected_text"), str):
        raise APIError(400, 'body must be JSON {"request_id": "...", "corrected_text": "..."}', param="request_id")
    if not body["corrected_text"].strip():
        raise APIError(400, "corrected_text is empty", param="corrected_text")
    _service(request).recorder.append("feedback", {"request_id": str(body["request_id"])[:200],
                                                   "corrected_text": body["corrected_text"][:20000],
                                                   "source": str(body.get("source", ""))[:100]})
    return JSONResponse({"status": "recorded", "request_id": body["request_id"]}, status_code=202)


async def transcriptions(request: Request):
    svc = _service(request)
    cfg, holder, metrics = svc.cfg, svc.holder, svc.metrics
    form = await request.form()
    upload = form.get("file")
    if upload is None or not hasattr(upload, "read"):
        raise APIError(400, "missing multipart field 'file' (the audio to transcribe)", param="file")
    if not form.get("model"):
        raise APIError(400, "missing field 'model'", param="model")
    fmt = form.get("response_format") or "json"
    if fmt not in FORMATS:
        raise APIError(400, f"response_format must be one of {', '.join(FORMATS)}", param="response_format")
    try:
        temperature = float(form.get("temperature") or 0)     # accepted; decoding is greedy
    except ValueError:
        raise APIError(400, "temperature must be a number", param="temperature") from None
    if not 0 <= temperature <= 1:
        raise APIError(400, "temperature must be within 0..1", param="temperature")
    language = (form.get("language") or "en").strip().lower()
    if language not in LANGUAGES:
        raise APIError(400, f"language {language!r} is not supported: this model transcribes English "
                            f"({', '.join(LANGUAGES)}; ISO-639-1)", param="language", code="unsupported_language")
    granularities = form.getlist("timestamp_granularities[]") or form.getlist("timestamp_granularities")
    data = await upload.read()
    if len(data) > cfg.max_upload_mb * 2**20:
        raise APIError(413, f"file exceeds the {cfg.max_upload_mb:g} MB limit", param="file", code="file_too_large")
    try:
        x = await asyncio.get_running_loop().run_in_executor(None, audio.decode_bytes, data)
        audio.check(x, min_s=0.05, max_s=cfg.max_audio_s, min_rms=0.0)
    except audio.AudioError as e:
        raise APIError(400, f"could not use the audio: {e}", param="file", code="invalid_audio") from None
    if holder.current is None:
        raise APIError(503, "no model is loaded yet (waiting for a deployment)", "service_unavailable")
    duration = len(x) / audio.TARGET_SR
    want_words = fmt in ("verbose_json", "srt", "vtt")
    result, version, took = await svc.batcher.submit(x, want_words)
    request.state.audio_s, request.state.model_version = round(duration, 3), version
    metrics.audio.inc(duration)
    metrics.rtfx.observe(duration / max(took, 1e-6))
    text = result["text"]
    svc.recorder.append("traffic", {"request_id": request.state.rid, "model_version": version,
                                    "sample_rate": audio.probe_rate(data), **audio.stats(x), "hypothesis": text})
    headers = {"X-Model-Version": version}
    if fmt == "text":
        return PlainTextResponse(text, headers=headers)
    if fmt == "json":
        return JSONResponse({"text": text}, headers=headers)
    segs = segments_from_words(result.get("words", []), text, duration)
    if fmt in ("srt", "vtt"):
        return PlainTextResponse(subtitles(segs, fmt), headers=headers)
    body = {"task": "transcribe", "language": language, "duration": round(duration, 3),
            "text": text, "segments": segs, "model_version": version}
    if "word" in granularities or not granularities:
        body["words"] = result.get("words", [])
    return JSONResponse(body, headers=headers)


ROUTES = (("GET", "/health/live", live), ("GET", "/health/ready", ready), ("GET", "/metrics", prom),
          ("GET", "/v1/models", models), ("POST", "/admin/reload", reload), ("POST", "/v1/feedback", feedback),
          ("POST", "/v1/audio/transcriptions", transcriptions))


def create_app(cfg: ServeConfig | None = None) -> FastAPI:
    """The service's app: its :class:`Service` on ``app.state`` (also ``holder``, ``metrics`` and ``cfg`` there),
    CORS when origins are configured, the envelope middleware, the OpenAI-shaped error handler and the routes."""
    svc = Service(cfg or ServeConfig.from_env())
    app = FastAPI(title="clinasr transcription", version="1", lifespan=_lifespan,
                  description="OpenAI-compatible speech-to-text for clinical dictation")
    app.state.service = svc
    app.state.holder, app.state.metrics, app.state.cfg = svc.holder, svc.metrics, svc.cfg
    if svc.cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=svc.cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_exception_handler(APIError, _api_error)
    app.middleware("http")(_envelope)
    for method, path, endpoint in ROUTES:
        app.add_api_route(path, endpoint, methods=[method])
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clinasr serve", description="OpenAI-compatible transcription service (ML runtime)")
    p.add_argument("--model", help="models:/name@alias, s3:// or .nemo path (default $CLINASR_SERVE_MODEL; "
                                   "none: start empty and wait for POST /admin/reload)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("CLINASR_SERVE_PORT") or 18000))
    p.add_argument("--max-batch", type=int)
    p.add_argument("--max-wait-ms", type=float)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import uvicorn

    cfg = ServeConfig.from_env(model=a.model, max_batch=a.max_batch, max_wait_ms=a.max_wait_ms)
    uvicorn.run(create_app(cfg), host=a.host, port=a.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
