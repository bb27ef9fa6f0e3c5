"""An OpenAI-compatible transcription service (ML runtime): ``POST /v1/audio/transcriptions``.

Any OpenAI client works unchanged (``client.audio.transcriptions.create(model=..., file=...)``), also with
``stream=True``: server-sent ``transcript.text.delta`` events from chunked, stateful transducer decoding of the
upload, then ``transcript.text.done``. Live audio goes over the WebSocket ``/v1/realtime`` (16 kHz PCM16 in,
OpenAI realtime-transcription events out: partial deltas, then each utterance's final text with word timings). The
service holds one model (:class:`clinasr.inference.Transcriber`, GPU when present, CPU otherwise),
batches concurrent requests into micro-batches (``max_batch`` items or ``max_wait_ms``), and switches
models atomically on ``POST /admin/reload``: the new model is loaded and warmed up beside the old one,
which keeps serving until the switch, and keeps serving for good if the new one fails to load.

Operations: ``/health/live``, ``/health/ready`` (ready only once a model is loaded and warm),
``/metrics`` (Prometheus: latency, time to first delta, final latency, real-time factor), ``X-Request-ID``,
``X-Model-Version`` and ``X-Trace-ID`` headers, OpenTelemetry spans per request (:mod:`clinasr.tracing`: to
MLflow's trace store by default), JSON logs without transcript text or audio, optional Bearer API key, upload
size limit, CORS off unless origins are configured.

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
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.websockets import WebSocketDisconnect

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
    # streaming (stream=true and /v1/realtime): each step decodes `stream_chunk_s` of new audio with
    # `stream_left_s` of left context and waits for `stream_right_s` of look-ahead, so the first text can come
    # after chunk + look-ahead = 0.64 s of speech; the chunk then doubles, up to `live_max_chunk_s` for live audio
    # and `upload_max_chunk_s` for uploads (less re-encoded context per second). bench/bench_streaming.py measures
    # these against offline decoding on the held-out sets (docs/serving.md)
    stream_chunk_s: float = 0.32
    stream_left_s: float = 2.0
    stream_right_s: float = 0.32
    live_max_chunk_s: float = 0.96
    upload_max_chunk_s: float = 7.68
    max_streams: int = 32                    # concurrent /v1/realtime sessions; more are refused (try again later)
    vad_silence_ms: float = 600.0            # server VAD: this much silence after speech ends an utterance
    vad_threshold_db: float = -40.0          # 20 ms frames louder than this (dBFS) are speech
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
                  max_audio_s=float(env("CLINASR_SERVE_MAX_AUDIO_S") or 2 * 3600),
                  stream_chunk_s=float(env("CLINASR_STREAM_CHUNK_S") or 0.32),
                  stream_left_s=float(env("CLINASR_STREAM_LEFT_S") or 2.0),
                  stream_right_s=float(env("CLINASR_STREAM_RIGHT_S") or 0.32),
                  live_max_chunk_s=float(env("CLINASR_STREAM_LIVE_MAX_CHUNK_S") or 0.96),
                  max_streams=int(env("CLINASR_SERVE_MAX_STREAMS") or 32),
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
@dataclass
class Done:
    """A batched item's result, the model version that produced it and when its batch ran (perf_counter)."""
    result: object
    version: str
    started: float
    took: float
    batch: int


class Batcher:
    """Collects concurrent work into batches of up to ``max_batch`` within ``max_wait_ms``: whole uploads
    (``submit``) and one chunk of a live stream (``submit_stream``), batched with other work of the same kind
    and model. A stream stays on the model it started with, even across a model switch."""

    def __init__(self, holder: ModelHolder, metrics: "Metrics", max_batch: int, max_wait_ms: float):
        self.holder, self.metrics = holder, metrics
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None

    async def submit(self, x: np.ndarray, timestamps: bool) -> Done:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put(("upload", (x, timestamps), fut, None))
        return await fut

    async def submit_stream(self, model: "Loaded", state, final: bool) -> Done:
        """Decode the next chunk of ``state`` on ``model``; the Done's result is the text it appended."""
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put(("stream", (state, final), fut, model))
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
            current = self.holder.current      # one model for all uploads of the batch, even if a switch happens now
            groups: dict = {}
            for item in batch:
                model = item[3] if item[0] == "stream" else current
                groups.setdefault((item[0], id(model)), (model, []))[1].append(item)
            for (kind, _), (model, items) in groups.items():
                await self._run(loop, kind, model, items)

    async def _run(self, loop, kind: str, model: "Loaded | None", items: list) -> None:
        try:
            if model is None:
                raise APIError(503, "no model is loaded yet (waiting for a deployment)", "service_unavailable")
            t = model.transcriber
            work = [item[1] for item in items]
            call = (lambda: t.stream_step(work)) if kind == "stream" else \
                (lambda: t.transcribe([w[0] for w in work], timestamps=any(w[1] for w in work)))
            stats = getattr(t, "guard_stats", None)
            before = dict(stats) if stats is not None else None
            t0 = time.perf_counter()
            res = await loop.run_in_executor(None, call)
            took = time.perf_counter() - t0
            self.metrics.count_guard(model.version, before, stats)
            if len(res) != len(items):   # a request without its result would wait for ever
                raise RuntimeError(f"the model returned {len(res)} results for a batch of {len(items)}")
            self.metrics.batch_size.observe(len(items))
            for item, r in zip(items, res):
                if not item[2].done():
                    item[2].set_result(Done(r, model.version, t0, took, len(items)))
        except Exception as e:
            self._fail(items, e, model)

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
        for _, _, fut, _ in batch:
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
        lat = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)
        self.ttft = Histogram("clinasr_stream_ttft_seconds", "Streams: time to the first text delta (upload: from the "
                              "request; realtime: from an utterance's first audio)", ["kind"], registry=r, buckets=lat)
        self.final = Histogram("clinasr_stream_final_seconds", "Streams: time to the final text (upload: from the "
                               "request; realtime: from the end of the utterance's audio)", ["kind"], registry=r, buckets=lat)
        self.stream_rtf = Histogram("clinasr_stream_rtf", "Streams: compute seconds per audio second", ["kind"],
                                    registry=r, buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2))
        self.streams = Gauge("clinasr_streams_active", "Open /v1/realtime sessions", registry=r)
        self.guard_chunks = Counter("clinasr_phantom_guard_chunks_total", "Audio chunks decoded with the model's n-gram "
                                    "LM that the phantom guard checked", ["version"], registry=r)
        self.guard_vetoes = Counter("clinasr_phantom_guard_vetoes_total", "Chunks whose LM transcript wrote a drug, "
                                    "dose, route or frequency the greedy reading did not support: the greedy "
                                    "transcript was served", ["version"], registry=r)

    def count_guard(self, version: str, before: dict | None, after: dict | None) -> None:
        """Add a batch's phantom-guard counts (the Transcriber's running ``guard_stats``) to the counters."""
        from clinasr.phantom_guard import counted

        if added := counted(before, after):
            self.guard_chunks.labels(version).inc(added["chunks"])
            self.guard_vetoes.labels(version).inc(added["vetoed"])


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
        self.tracer = None         # set at startup (resolving MLflow's trace experiment may need the network)
        self.streams = 0

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
    from clinasr.tracing import Tracer

    svc.tracer = await asyncio.get_running_loop().run_in_executor(None, Tracer.from_env)
    task = asyncio.create_task(svc.batcher.run())
    loader = asyncio.create_task(svc.initial_load())
    yield
    loader.cancel()
    task.cancel()
    svc.tracer.shutdown()


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
    traced = request.url.path == "/v1/audio/transcriptions" and svc.tracer is not None
    trace = request.state.trace = svc.tracer.start(
        "POST /v1/audio/transcriptions", dict(request.headers), request_id=rid) if traced else None
    try:
        _check_access(request, svc.cfg)
        response = await call_next(request)
    except APIError as e:
        response = JSONResponse(e.body(), status_code=e.status)
    response.headers["X-Request-ID"] = rid
    if trace is not None:
        response.headers["X-Trace-ID"] = trace.trace_id
        if not getattr(request.state, "streaming", False):     # a stream ends its trace when it has sent the last event
            trace.end(error=None if response.status_code < 400 else f"HTTP {response.status_code}",
                      **{"http.status_code": response.status_code,
                         "model.version": getattr(request.state, "model_version", None),
                         "audio.seconds": getattr(request.state, "audio_s", None)})
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
                             "model_version": getattr(request.state, "model_version", None),
                             "stream": getattr(request.state, "streaming", False)}))
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


def _sse(event: dict) -> str:
    return f"data: {json.dumps(event)}\n\n"


def _usage(st, audio_s: float, frame_s: float) -> dict:
    """OpenAI's token usage shape for a stream: encoder frames as audio tokens, transducer tokens as output."""
    frames = int(round(audio_s / frame_s))
    return {"type": "tokens", "input_tokens": frames, "output_tokens": st.n_tokens, "total_tokens": frames + st.n_tokens,
            "input_token_details": {"audio_tokens": frames, "text_tokens": 0}, "seconds": round(audio_s, 3)}


async def transcriptions(request: Request):
    svc = _service(request)
    cfg, holder, metrics = svc.cfg, svc.holder, svc.metrics
    trace = getattr(request.state, "trace", None)
    t_in = time.perf_counter()
    form = await request.form()
    upload = form.get("file")
    if upload is None or not hasattr(upload, "read"):
        raise APIError(400, "missing multipart field 'file' (the audio to transcribe)", param="file")
    if not form.get("model"):
        raise APIError(400, "missing field 'model'", param="model")
    fmt = form.get("response_format") or "json"
    if fmt not in FORMATS:
        raise APIError(400, f"response_format must be one of {', '.join(FORMATS)}", param="response_format")
    stream = str(form.get("stream") or "").strip().lower() in ("true", "1")
    if stream and fmt not in ("json", "text"):
        raise APIError(400, "stream=true sends transcript.text.delta events: use response_format json or text",
                       param="stream")
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
    t_read = time.perf_counter()
    if len(data) > cfg.max_upload_mb * 2**20:
        raise APIError(413, f"file exceeds the {cfg.max_upload_mb:g} MB limit", param="file", code="file_too_large")
    try:
        x = await asyncio.get_running_loop().run_in_executor(None, audio.decode_bytes, data)
        audio.check(x, min_s=0.05, max_s=cfg.max_audio_s, min_rms=0.0)
    except audio.AudioError as e:
        raise APIError(400, f"could not use the audio: {e}", param="file", code="invalid_audio") from None
    finally:
        if trace:
            trace.span("upload", t_in, t_read, bytes=len(data))
            trace.span("decode_audio", t_read, time.perf_counter())
    if holder.current is None:
        raise APIError(503, "no model is loaded yet (waiting for a deployment)", "service_unavailable")
    duration = len(x) / audio.TARGET_SR
    if trace:
        trace.set(**{"audio.seconds": round(duration, 3), "response_format": fmt, "stream": stream})
    if stream:
        request.state.streaming = True
        model = holder.current
        request.state.audio_s, request.state.model_version = round(duration, 3), model.version
        return StreamingResponse(_upload_stream(svc, request, model, x, data, t_in), media_type="text/event-stream",
                                 headers={"X-Model-Version": model.version, "Cache-Control": "no-cache"})
    want_words = fmt in ("verbose_json", "srt", "vtt")
    t_sub = time.perf_counter()
    done = await svc.batcher.submit(x, want_words)
    result, version = done.result, done.version
    t_post = time.perf_counter()
    if trace:
        trace.span("queue", t_sub, done.started)
        trace.span("inference", done.started, done.started + done.took, batch_size=done.batch,
                   device=holder.current.transcriber.device if holder.current else None)
    request.state.audio_s, request.state.model_version = round(duration, 3), version
    metrics.audio.inc(duration)
    metrics.rtfx.observe(duration / max(done.took, 1e-6))
    text = result["text"]
    svc.recorder.append("traffic", {"request_id": request.state.rid, "model_version": version,
                                    "sample_rate": audio.probe_rate(data), **audio.stats(x), "hypothesis": text})
    headers = {"X-Model-Version": version}
    if fmt == "text":
        response = PlainTextResponse(text, headers=headers)
    elif fmt == "json":
        response = JSONResponse({"text": text}, headers=headers)
    else:
        segs = segments_from_words(result.get("words", []), text, duration)
        if fmt in ("srt", "vtt"):
            response = PlainTextResponse(subtitles(segs, fmt), headers=headers)
        else:
            body = {"task": "transcribe", "language": language, "duration": round(duration, 3),
                    "text": text, "segments": segs, "model_version": version}
            if "word" in granularities or not granularities:
                body["words"] = result.get("words", [])
            response = JSONResponse(body, headers=headers)
    if trace:
        trace.span("postprocess", t_post, time.perf_counter())
    return response


async def _upload_stream(svc: "Service", request: Request, model: Loaded, x: np.ndarray, data: bytes, t_in: float):
    """The events of ``stream=true``: a ``transcript.text.delta`` for every decoded chunk that added text, then
    ``transcript.text.done`` with the whole text and usage. The chunk starts small (a fast first delta) and
    doubles; a failure mid-stream is an OpenAI-shaped ``error`` event, and the stream ends."""
    cfg, metrics, trace = svc.cfg, svc.metrics, getattr(request.state, "trace", None)
    duration = len(x) / audio.TARGET_SR
    first, steps, compute, error = None, 0, 0.0, None
    t_dec = time.perf_counter()
    try:
        st = model.transcriber.new_stream(cfg.stream_chunk_s, cfg.stream_left_s, cfg.stream_right_s,
                                          max_chunk_s=cfg.upload_max_chunk_s)
        st.feed(x)
        while st.ready(final=True):
            done = await svc.batcher.submit_stream(model, st, True)
            steps, compute = steps + 1, compute + done.took
            if done.result:
                if first is None:
                    first = time.perf_counter()
                    metrics.ttft.labels("upload").observe(first - t_in)
                yield _sse({"type": "transcript.text.delta", "delta": done.result})
        text = st.text.strip()
        metrics.final.labels("upload").observe(time.perf_counter() - t_in)
        metrics.stream_rtf.labels("upload").observe(compute / max(duration, 1e-6))
        metrics.audio.inc(duration)
        svc.recorder.append("traffic", {"request_id": request.state.rid, "model_version": model.version, "stream": True,
                                        "sample_rate": audio.probe_rate(data), **audio.stats(x), "hypothesis": text})
        yield _sse({"type": "transcript.text.done", "text": text, "usage": _usage(st, duration, model.transcriber.stride_s)})
    except Exception as e:
        err = e if isinstance(e, APIError) else APIError(500, f"transcription failed inside the model ({type(e).__name__})"
                                                              "; the stream stops here: retry the request", "server_error",
                                                         code="inference_failed")
        error = err.message
        log.error(json.dumps({"event": "stream_failed", "request_id": request.state.rid, "error": type(e).__name__}))
        yield _sse(err.body())
    finally:
        if trace:
            trace.span("stream_decode", t_dec, time.perf_counter(), steps=steps, compute_s=round(compute, 4),
                       ttft_s=round(first - t_in, 4) if first else None)
            trace.end(error=error, **{"http.status_code": 200, "model.version": model.version,
                                      "audio.seconds": round(duration, 3)})


# -- live audio: /v1/realtime ------------------------------------------------------------------------------
class Realtime:
    """One WebSocket session of live dictation, with OpenAI's realtime-transcription event names:

    in:  ``input_audio_buffer.append`` {audio: base64 PCM16 LE, 16 kHz mono} (or binary frames of the same PCM),
         ``input_audio_buffer.commit`` (end the utterance now), ``input_audio_buffer.clear``,
         ``transcription_session.update`` {session: {input_audio_format: "pcm16", sample_rate: 16000,
         turn_detection: {"type": "server_vad", "silence_duration_ms": 600} | null}}
    out: ``transcription_session.created``/``.updated``, ``input_audio_buffer.speech_started``/``speech_stopped``
         (server VAD), ``input_audio_buffer.committed``, ``conversation.item.input_audio_transcription.delta``
         (partials, never revised), ``...completed`` (the utterance's text, word timings, latency), ``error``.
    Bad input is an ``error`` event and the session goes on; past the session's audio limit it closes (1009)."""

    FRAME = 320      # 20 ms at 16 kHz: the server VAD's unit

    def __init__(self, svc: "Service", ws: WebSocket, model: Loaded):
        self.svc, self.ws, self.model, self.cfg = svc, ws, model, svc.cfg
        self.session_id = "sess_" + uuid.uuid4().hex[:20]
        self.vad = self._default_vad()
        self.total_s, self.n_items, self.prev_item = 0.0, 0, None
        self._new_item()

    def _new_item(self) -> None:
        self.n_items += 1
        self.item_id = f"item_{self.session_id[5:15]}_{self.n_items}"
        self.st = self.model.transcriber.new_stream(self.cfg.stream_chunk_s, self.cfg.stream_left_s,
                                                    self.cfg.stream_right_s, max_chunk_s=self.cfg.live_max_chunk_s)
        self.t_first_audio = self.t_first_delta = None
        self.speech, self.silence, self.compute = False, 0, 0.0
        self.trace = None

    def _default_vad(self) -> dict:
        return {"type": "server_vad", "silence_duration_ms": self.cfg.vad_silence_ms,
                "threshold_db": self.cfg.vad_threshold_db}

    async def send(self, event: dict) -> None:
        await self.ws.send_text(json.dumps(event))

    async def error(self, message: str, code: str, type_: str = "invalid_request_error") -> None:
        await self.send(_ws_error(message, code, type_))

    def session(self) -> dict:
        return {"id": self.session_id, "object": "realtime.transcription_session", "input_audio_format": "pcm16",
                "sample_rate": audio.TARGET_SR, "model": self.model.version, "turn_detection": self.vad,
                "chunk_ms": round(self.st.chunk / 16), "right_context_ms": round(self.st.right / 16)}

    async def run(self) -> None:
        await self.send({"type": "transcription_session.created", "session": self.session()})
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(msg.get("code", 1000))
            if msg.get("bytes") is not None:
                await self.append(msg["bytes"])
            else:
                await self.handle(msg.get("text"))
            if self.total_s > self.cfg.max_audio_s:
                await self.error(f"this session sent more than {self.cfg.max_audio_s:g} s of audio, the service's limit: "
                                 "open a new session", "audio_limit_exceeded")
                await self.ws.close(code=1009, reason="audio limit exceeded")
                return

    async def handle(self, text: str | None) -> None:
        try:
            event = json.loads(text or "")
            kind = event["type"]
        except (ValueError, KeyError, TypeError):
            await self.error("each text message must be a JSON event with a 'type'", "invalid_event")
            return
        if kind == "input_audio_buffer.append":
            import base64
            import binascii

            try:
                pcm = base64.b64decode(event.get("audio") or "", validate=True)
            except (binascii.Error, ValueError):
                await self.error("'audio' must be base64 of 16-bit little-endian PCM", "invalid_audio")
                return
            await self.append(pcm)
        elif kind == "input_audio_buffer.commit":
            await self.commit(by="client")
        elif kind == "input_audio_buffer.clear":
            self._new_item()
            await self.send({"type": "input_audio_buffer.cleared"})
        elif kind in ("transcription_session.update", "session.update"):
            await self.update(event.get("session") or {})
        else:
            await self.error(f"unknown event type {kind!r}", "unknown_event")

    async def update(self, session: dict) -> None:
        fmt = session.get("input_audio_format", "pcm16")
        rate = session.get("sample_rate", audio.TARGET_SR)
        if isinstance(fmt, dict):                                   # the GA shape {"type": "audio/pcm", "rate": N}
            fmt, rate = fmt.get("type", "audio/pcm"), fmt.get("rate", rate)
        if fmt not in ("pcm16", "audio/pcm") or rate != audio.TARGET_SR:
            await self.error(f"input audio must be 16-bit PCM at {audio.TARGET_SR} Hz mono (got {fmt} at {rate} Hz): "
                             "resample on the client", "unsupported_audio_format")
            return
        if "turn_detection" in session:
            td = session["turn_detection"]
            self.vad = None if td is None else {**(self.vad or self._default_vad()),
                                                **{k: v for k, v in td.items() if k in ("silence_duration_ms", "threshold_db")}}
        await self.send({"type": "transcription_session.updated", "session": self.session()})

    async def append(self, pcm: bytes) -> None:
        if len(pcm) % 2:
            await self.error("PCM16 audio has an even number of bytes; this chunk has an odd number: it was dropped",
                             "invalid_audio")
            return
        if not pcm:
            return
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        if self.t_first_audio is None:
            self.t_first_audio = time.perf_counter()
            if self.svc.tracer:
                self.trace = self.svc.tracer.start("realtime utterance", session_id=self.session_id, item_id=self.item_id,
                                                   **{"model.version": self.model.version})
        self.total_s += len(x) / audio.TARGET_SR
        self.st.feed(x)
        heard_before = self.speech
        ended = self._vad(x)
        if self.speech and not heard_before:
            await self.send({"type": "input_audio_buffer.speech_started", "item_id": self.item_id,
                             "audio_start_ms": int(1000 * (self.st.received - len(x)) / audio.TARGET_SR)})
        while self.st.ready(final=False):
            await self._step(final=False)
        if ended:
            await self.send({"type": "input_audio_buffer.speech_stopped", "item_id": self.item_id,
                             "audio_end_ms": int(1000 * self.st.received / audio.TARGET_SR)})
            await self.commit(by="server_vad")

    def _vad(self, x: np.ndarray) -> bool:
        """Energy VAD over 20 ms frames: True once speech was heard and then ``silence_duration_ms`` of silence."""
        if self.vad is None:
            return False
        ended = False
        for i in range(0, len(x) - self.FRAME + 1, self.FRAME):
            f = x[i:i + self.FRAME]
            loud = 10 * np.log10(float(np.mean(f * f)) + 1e-12) > self.vad["threshold_db"]
            if loud:
                self.speech, self.silence = True, 0
            elif self.speech:
                self.silence += self.FRAME
                if self.silence >= self.vad["silence_duration_ms"] * 16:
                    ended = True
        return ended

    async def _step(self, final: bool) -> None:
        done = await self.svc.batcher.submit_stream(self.model, self.st, final)
        self.compute += done.took
        if done.result:
            if self.t_first_delta is None:
                self.t_first_delta = time.perf_counter()
                self.svc.metrics.ttft.labels("realtime").observe(self.t_first_delta - self.t_first_audio)
            await self.send({"type": "conversation.item.input_audio_transcription.delta", "item_id": self.item_id,
                             "content_index": 0, "delta": done.result})

    async def commit(self, by: str) -> None:
        if self.st.received == 0:
            await self.error("the input audio buffer is empty: append audio before committing",
                             "input_audio_buffer_commit_empty")
            return
        t_commit = time.perf_counter()
        await self.send({"type": "input_audio_buffer.committed", "item_id": self.item_id,
                         "previous_item_id": self.prev_item, "by": by})
        while self.st.ready(final=True):
            await self._step(final=True)
        audio_s = self.st.received / audio.TARGET_SR
        final_s = time.perf_counter() - t_commit
        m = self.svc.metrics
        m.final.labels("realtime").observe(final_s)
        m.stream_rtf.labels("realtime").observe(self.compute / max(audio_s, 1e-6))
        m.audio.inc(audio_s)
        text = self.st.text.strip()
        ttft = self.t_first_delta - self.t_first_audio if self.t_first_delta else None
        await self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": self.item_id,
                         "content_index": 0, "transcript": text, "words": self.model.transcriber.stream_words(self.st),
                         "model_version": self.model.version,
                         "latency": {"ttft_s": round(ttft, 4) if ttft else None, "final_s": round(final_s, 4),
                                     "audio_s": round(audio_s, 3), "compute_s": round(self.compute, 4)}})
        self.svc.recorder.append("traffic", {"request_id": self.item_id, "model_version": self.model.version,
                                             "stream": "realtime", "sample_rate": audio.TARGET_SR,
                                             **audio.stats(self.st.audio),
                                             "hypothesis": text})
        log.info(json.dumps({"event": "realtime_item", "session_id": self.session_id, "item_id": self.item_id,
                             "audio_s": round(audio_s, 3), "ttft_s": round(ttft, 4) if ttft else None,
                             "final_s": round(final_s, 4), "model_version": self.model.version}))
        if self.trace:
            self.trace.end(**{"audio.seconds": round(audio_s, 3), "ttft_s": round(ttft, 4) if ttft else None,
                              "final_s": round(final_s, 4), "compute_s": round(self.compute, 4), "committed_by": by})
        self.prev_item = self.item_id
        self._new_item()

    def drop(self, reason: str) -> None:
        """The client went away: what was not committed is discarded (logged, never transcribed further)."""
        if self.st.received:
            log.info(json.dumps({"event": "realtime_dropped", "session_id": self.session_id, "item_id": self.item_id,
                                 "reason": reason, "audio_s": round(self.st.received / audio.TARGET_SR, 3)}))
        if self.trace:
            self.trace.end(error=f"client disconnected ({reason})")


def _ws_error(message: str, code: str, type_: str = "invalid_request_error") -> dict:
    """An ``error`` event: the realtime API's envelope around the same error object as the HTTP API's."""
    return {"type": "error", **APIError(0, message, type_, code=code).body()}


def _ws_key(ws: WebSocket) -> str | None:
    """A Bearer header, or (browsers cannot set headers) the subprotocol ``openai-insecure-api-key.<key>``."""
    auth = ws.headers.get("authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:]
    for proto in ws.scope.get("subprotocols") or []:
        if proto.startswith("openai-insecure-api-key."):
            return proto.split(".", 1)[1]
    return None


async def realtime(ws: WebSocket):
    svc: Service = ws.app.state.service
    cfg = svc.cfg
    subprotocol = "realtime" if "realtime" in (ws.scope.get("subprotocols") or []) else None
    if cfg.api_key and not hmac.compare_digest(_ws_key(ws) or "", cfg.api_key):
        await ws.close(code=1008, reason="invalid or missing API key (Authorization: Bearer <key>)")
        return
    await ws.accept(subprotocol=subprotocol)
    model = svc.holder.current
    refuse = ("no model is loaded yet (waiting for a deployment)" if model is None else
              f"the service holds its limit of {cfg.max_streams} live sessions: retry shortly"
              if svc.streams >= cfg.max_streams else None)
    if refuse:
        await ws.send_text(json.dumps(_ws_error(refuse, "unavailable", "service_unavailable")))
        await ws.close(code=1013, reason="try again later")
        return
    svc.streams += 1
    svc.metrics.streams.set(svc.streams)
    session = None
    try:
        session = Realtime(svc, ws, model)
        await session.run()
    except WebSocketDisconnect as e:
        session and session.drop(f"code {e.code}")
    except Exception as e:    # a failure in one session closes that session only
        log.error(json.dumps({"event": "realtime_failed", "error": type(e).__name__,
                              "session_id": session.session_id if session else None}))
        session and session.drop(type(e).__name__)
        try:
            await ws.send_text(json.dumps(_ws_error(f"transcription failed inside the model ({type(e).__name__}); "
                                                    "the session is closed", "inference_failed", "server_error")))
            await ws.close(code=1011)
        except Exception:
            pass
    finally:
        svc.streams -= 1
        svc.metrics.streams.set(svc.streams)


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
    app.add_api_websocket_route("/v1/realtime", realtime)
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
