"""Request tracing for the transcription service: OpenTelemetry spans, exported over OTLP/HTTP.

By default the spans go to the platform's MLflow server, which ingests OTLP at ``<tracking URI>/v1/traces``
(MLflow >= 3.6, SQL backend) into the experiment ``clinasr-serving`` — a trace per request in the MLflow UI's
*Traces* tab. ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (+ ``OTEL_EXPORTER_OTLP_TRACES_HEADERS``) sends them to any
OTLP endpoint instead (an OpenTelemetry collector, Langfuse's ``/api/public/otel/v1/traces``, ...);
``CLINASR_TRACING=0`` turns tracing off.

Spans carry timings, sizes, the model version and the request id — never transcript text or audio.
A request's spans are recorded after the fact from timings the service already takes (upload, queue, batch,
decode, post-processing), so tracing adds no work on the request path beyond a few clock reads.
"""

from __future__ import annotations

import json
import logging
import os
import time

log = logging.getLogger("clinasr.serve")

EXPERIMENT = "clinasr-serving"


def _mlflow_experiment_id(tracking_uri: str, name: str) -> str:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri)
    exp = c.get_experiment_by_name(name)
    return exp.experiment_id if exp else c.create_experiment(name)


def resolve_exporter(env=os.environ) -> tuple[str | None, dict, str]:
    """(OTLP traces endpoint or None, headers, where) from the environment; ``where`` says it in words."""
    if (env.get("CLINASR_TRACING") or "1").strip().lower() in ("0", "false", "no", "off"):
        return None, {}, "off (CLINASR_TRACING=0)"
    if endpoint := env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return endpoint, {}, f"OTLP {endpoint}"        # headers: the exporter reads OTEL_EXPORTER_OTLP_TRACES_HEADERS
    uri = env.get("MLFLOW_TRACKING_URI") or ""
    if uri.startswith(("http://", "https://")):
        name = env.get("CLINASR_TRACE_EXPERIMENT") or EXPERIMENT
        exp_id = _mlflow_experiment_id(uri, name)
        return f"{uri.rstrip('/')}/v1/traces", {"x-mlflow-experiment-id": exp_id}, f"MLflow {uri} experiment {name} ({exp_id})"
    return None, {}, "off (no OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and no http(s) MLFLOW_TRACKING_URI)"


class Tracer:
    """Owns its own TracerProvider (not the global one MLflow may set), so the service's spans go only where
    the service's configuration says."""

    def __init__(self, endpoint: str | None = None, headers: dict | None = None, service: str = "clinasr-serve"):
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        self.provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self.endpoint = endpoint
        if endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            self.provider.add_span_processor(BatchSpanProcessor(
                OTLPSpanExporter(endpoint=endpoint, headers=headers or None, timeout=10), schedule_delay_millis=1000))
        self.tracer = self.provider.get_tracer("clinasr.serving")

    @classmethod
    def from_env(cls) -> "Tracer":
        try:
            endpoint, headers, where = resolve_exporter()
        except Exception as e:     # MLflow unreachable at start: serve anyway, say so
            endpoint, headers, where = None, {}, f"off (could not reach MLflow for the trace experiment: {type(e).__name__})"
        log.info(json.dumps({"event": "tracing", "export": where}))
        return cls(endpoint, headers)

    def start(self, name: str, carrier: dict | None = None, **attrs) -> "RequestTrace":
        return RequestTrace(self, name, carrier, attrs)

    def shutdown(self) -> None:
        self.provider.shutdown()


def _ns(t_perf: float, anchor: tuple[float, float]) -> int:
    """A perf_counter reading as epoch nanoseconds (anchored once per trace)."""
    return int((anchor[0] + (t_perf - anchor[1])) * 1e9)


class RequestTrace:
    """One request's root span and the child spans recorded into it from (start, end) perf_counter pairs."""

    def __init__(self, tracer: Tracer, name: str, carrier: dict | None, attrs: dict):
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.t = tracer
        self.anchor = (time.time(), time.perf_counter())
        ctx = TraceContextTextMapPropagator().extract(carrier or {})     # a caller's traceparent continues its trace
        self.root = tracer.tracer.start_span(name, context=ctx, start_time=_ns(self.anchor[1], self.anchor),
                                             attributes=_clean(attrs))
        self.ended = False

    @property
    def trace_id(self) -> str:
        return format(self.root.get_span_context().trace_id, "032x")

    def span(self, name: str, t0: float, t1: float, **attrs) -> None:
        from opentelemetry import trace

        s = self.t.tracer.start_span(name, context=trace.set_span_in_context(self.root),
                                     start_time=_ns(t0, self.anchor), attributes=_clean(attrs))
        s.end(end_time=_ns(t1, self.anchor))

    def set(self, **attrs) -> None:
        self.root.set_attributes(_clean(attrs))

    def end(self, error: str | None = None, **attrs) -> None:
        if self.ended:
            return
        from opentelemetry.trace import Status, StatusCode

        self.set(**attrs)
        if error:
            self.root.set_status(Status(StatusCode.ERROR, error))
        self.root.end(end_time=_ns(time.perf_counter(), self.anchor))
        self.ended = True


def _clean(attrs: dict) -> dict:
    return {k: v for k, v in attrs.items() if v is not None and isinstance(v, (str, bool, int, float))}


def find_trace(tracking_uri: str, trace_id: str, spans: set[str] = frozenset(), timeout: float = 60,
               experiment: str = EXPERIMENT):
    """The MLflow trace of a response's ``X-Trace-ID`` once it (and the named spans) arrived, else None.
    Spans are exported in batches about a second apart, so a trace fills in over a moment."""
    from mlflow import MlflowClient

    ml, deadline = MlflowClient(tracking_uri), time.time() + timeout
    while True:
        exp = ml.get_experiment_by_name(experiment)
        trace = next((t for t in ml.search_traces(locations=[exp.experiment_id], max_results=100)
                      if t.info.trace_id == f"tr-{trace_id}"), None) if exp else None
        if trace is not None and spans <= {s.name for s in trace.data.spans}:
            return trace
        if time.time() > deadline:
            return None
        time.sleep(1)


def trace_url(tracking_uri: str, trace: object) -> str:
    """Where a person opens a trace in the MLflow UI."""
    return (f"{tracking_uri.rstrip('/')}/#/experiments/{trace.info.experiment_id}/traces"
            f"?selectedEvaluationId={trace.info.trace_id}")
