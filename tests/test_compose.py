"""docker-compose.yaml parses and its services, volumes and env wiring are consistent (no Docker engine here)."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _compose():
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def test_official_airflow3_shape():
    svcs = _compose()["services"]
    for name in ("postgres", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                 "airflow-triggerer", "minio", "mlflow"):
        assert name in svcs, name
    env = svcs["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert "postgres" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def test_references_resolve():
    c = _compose()
    svcs, volumes = c["services"], set(c.get("volumes", {}))
    for name, svc in svcs.items():
        for dep in (svc.get("depends_on") or {}):
            assert dep in svcs, f"{name} depends on unknown {dep}"
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (REPO / src).exists(), f"{name} mounts missing {src}"
            else:
                assert src in volumes, f"{name} uses undeclared volume {src}"
        if "build" in svc:
            assert (REPO / svc["build"]["dockerfile"]).exists()
    # include/ must reach the Airflow containers (the official compose mounts only dags/plugins/logs/config)
    mounts = [v.split(":")[1] for v in svcs["airflow-scheduler"]["volumes"]]
    assert "/opt/clinasr/include" in mounts and "/opt/airflow/dags" in mounts and "/opt/airflow/plugins" in mounts


def test_endpoints_point_at_compose_services():
    svcs = _compose()["services"]
    env = svcs["airflow-scheduler"]["environment"]
    assert env["CLINASR_S3_ENDPOINT"].split("//")[1].split(":")[0] in svcs
    assert env["MLFLOW_TRACKING_URI"].split("//")[1].split(":")[0] in svcs
    ml_python = env["CLINASR_ML_PYTHON"]
    dockerfile = (REPO / "docker/Dockerfile.airflow").read_text()
    assert ml_python.startswith("/opt/ml/") and "python -m venv /opt/ml" in dockerfile
    # the MLflow database the server uses is created by the Postgres init script
    assert "CREATE DATABASE mlflow" in (REPO / "docker/postgres-init.sql").read_text()
    assert "/mlflow" in svcs["mlflow"]["command"]


def test_serving_service_runs_the_ml_image_and_airflow_can_reach_it():
    svcs = _compose()["services"]
    serve = svcs["serve"]
    assert serve["build"]["dockerfile"] == "docker/Dockerfile.ml" and serve["command"][0] == "serve"
    assert serve["environment"]["CLINASR_SERVE_MODEL"] == "models:/clinasr-asr@production"
    assert serve["environment"]["MLFLOW_TRACKING_URI"].split("//")[1].split(":")[0] in svcs
    url = svcs["airflow-scheduler"]["environment"]["CLINASR_SERVE_URL"]
    host, port = url.split("//")[1].split(":")
    assert host == "serve" and serve["command"][-1] == port
    assert 'ENTRYPOINT ["clinasr"]' in (REPO / "docker/Dockerfile.ml").read_text()
