"""Where the service's traces go: off, any OTLP endpoint, or (default) the platform's MLflow experiment."""

from mlflow import MlflowClient

from clinasr.tracing import EXPERIMENT, resolve_exporter


def test_tracing_off_an_otlp_endpoint_or_the_platforms_mlflow(mlflow_server):
    assert resolve_exporter({"CLINASR_TRACING": "0", "MLFLOW_TRACKING_URI": mlflow_server})[0] is None
    assert resolve_exporter({})[0] is None                         # nothing configured: off, and it says why
    assert "no http(s) MLFLOW_TRACKING_URI" in resolve_exporter({"MLFLOW_TRACKING_URI": "file:///tmp/x"})[2]
    endpoint, headers, where = resolve_exporter({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces",
                                                 "MLFLOW_TRACKING_URI": mlflow_server})
    assert endpoint == "http://collector:4318/v1/traces" and headers == {} and "OTLP" in where   # OTEL_* wins
    endpoint, headers, where = resolve_exporter({"MLFLOW_TRACKING_URI": mlflow_server + "/"})
    exp = MlflowClient(mlflow_server).get_experiment_by_name(EXPERIMENT)          # created on first use
    assert endpoint == f"{mlflow_server}/v1/traces" and headers == {"x-mlflow-experiment-id": exp.experiment_id}
    assert resolve_exporter({"MLFLOW_TRACKING_URI": mlflow_server})[1] == headers  # found again, not duplicated
