"""The local platform: start / stop / status of the embedded services on one machine.

Services (each a process with a pid file and a log under ``$CLINASR_HOME/platform``):

- ``s3``        SeaweedFS's S3 server on 127.0.0.1, objects on disk under ``$CLINASR_HOME/s3`` (they survive
                ``platform down/up`` and a reboot); a generated access key; ``up`` creates the bucket with
                versioning and default encryption, and the provenance bucket with Object Lock
- ``aws``       moto's server: the stand-in for AWS APIs that cannot exist here (SageMaker, EC2), so the
                training DAG's AWS backends run their real request path; never the object store
- ``mlflow``    MLflow tracking server + model registry, SQLite backend, local artifact store
- ``airflow-*`` Airflow 3: api-server (UI + REST), scheduler, dag-processor, triggerer; SQLite
                metadata DB and a project-local AIRFLOW_HOME; DAGs from ``dags/``, plugins from
                ``plugins/``; simple auth manager with a generated admin password.

Production swaps these for docker-compose / managed services (see docker-compose.yaml).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from clinasr.settings import REPO_ROOT, Settings


class PlatformError(RuntimeError):
    """A service could not be started/stopped; the message says what to do."""


@dataclass
class Service:
    name: str
    argv: list[str]
    port: int | None
    health_url: str | None
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 120.0


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def airflow_env(s: Settings) -> dict[str, str]:
    """Environment for every Airflow process (and `airflow` CLI calls) of the local platform."""
    home = s.path("airflow")
    secret_file = home / "secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_hex(32))
    pw_file = home / "simple_auth_manager_passwords.json"
    if not pw_file.exists():
        pw_file.write_text(json.dumps({"admin": secrets.token_urlsafe(12)}))
    secret = secret_file.read_text().strip()
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{s.airflow_url}/execution/",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(pw_file),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "clinasr.settings.AIRFLOW_SQLITE_CONNECT_ARGS",
        "AIRFLOW__API__PORT": str(s.airflow_port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__BASE_URL": s.airflow_url,
        "AIRFLOW__API__SECRET_KEY": secret,
        "AIRFLOW__API_AUTH__JWT_SECRET": secret,
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        # clinasr's own settings, seen by tasks
        "CLINASR_HOME": str(s.home),
        "CLINASR_S3_ENDPOINT": s.s3_endpoint or "",
        "CLINASR_BUCKET": s.bucket,
        "MLFLOW_TRACKING_URI": s.mlflow_uri,
        "CLINASR_ML_PYTHON": s.ml_python,
        "CLINASR_SERVE_PORT": str(s.serve_port),
        "PYTHONPATH": str(REPO_ROOT / "include"),
        "NO_PROXY": "127.0.0.1,localhost",
        # OpenLineage (apache-airflow-providers-openlineage): Airflow's own events, plus clinasr's provenance
        # records as events from the listener, go to CLINASR_OPENLINEAGE_URL (e.g. Marquez) when it is set
        **({"AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "http", "url": os.environ["CLINASR_OPENLINEAGE_URL"]}),
            "AIRFLOW__OPENLINEAGE__NAMESPACE": "clinasr"}
           if os.environ.get("CLINASR_OPENLINEAGE_URL") else {"AIRFLOW__OPENLINEAGE__DISABLED": "True"}),
    }


def airflow_admin_password(s: Settings) -> str:
    airflow_env(s)
    return json.loads((s.home / "airflow" / "simple_auth_manager_passwords.json").read_text())["admin"]


SEAWEEDFS_PORTS = ("s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                   "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc")


def seaweedfs_argv(weed: str, data_dir: Path, s3_port: int, ports_file: Path | None = None) -> list[str]:
    """``weed mini`` (master, volume, filer and S3 gateway in one process) bound to loopback only, no WebDAV,
    admin UI, Iceberg/Lance catalogs or telemetry. Its internal ports are chosen free once and kept in
    ``ports_file`` (re-chosen only when one is taken), so a restart finds the same layout."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ports_file = ports_file or data_dir.parent / "ports.json"
    ports = json.loads(ports_file.read_text()) if ports_file.exists() else {}
    if set(ports) != set(SEAWEEDFS_PORTS) or not all(port_free(p) for p in ports.values()):
        ports = {}
        for name in SEAWEEDFS_PORTS:
            while True:
                p = free_port()
                if p != s3_port and p not in ports.values():
                    ports[name] = p
                    break
        ports_file.write_text(json.dumps(ports, indent=1))
    return [weed, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.port={s3_port}",
            *(f"-{k}={v}" for k, v in ports.items()), "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
            "-s3.port.lance=0", "-master.telemetry=false", "-master.volumeSizeLimitMB=256"]


def free_port() -> int:
    """A port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _s3_service(s: Settings) -> Service:
    key, secret = s.local_s3_credentials(create=True)
    d = s.path("s3")
    return Service("s3", seaweedfs_argv(_bin("weed"), d / "data", s.s3_port, d / "ports.json"), s.s3_port,
                   f"http://127.0.0.1:{s.s3_port}/healthz", env={"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret},
                   start_timeout=90)


def services(s: Settings) -> list[Service]:
    mlflow_dir = s.path("mlflow")
    af = airflow_env(s)
    return [
        _s3_service(s),
        Service("aws", [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(s.aws_port)], s.aws_port,
                f"http://127.0.0.1:{s.aws_port}/moto-api/", start_timeout=60),
        Service("mlflow", [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(s.mlflow_port),
                           "--backend-store-uri", f"sqlite:///{mlflow_dir}/mlflow.db",
                           "--artifacts-destination", str(mlflow_dir / "artifacts"), "--workers", "1"],
                s.mlflow_port, f"http://127.0.0.1:{s.mlflow_port}/health", start_timeout=120),
        Service("airflow-api-server", [_bin("airflow"), "api-server", "--port", str(s.airflow_port), "--workers", "1"],
                s.airflow_port, f"{s.airflow_url}/api/v2/monitor/health", env=af, start_timeout=180),
        Service("airflow-scheduler", [_bin("airflow"), "scheduler"], None, None, env=af),
        Service("airflow-dag-processor", [_bin("airflow"), "dag-processor"], None, None, env=af),
        Service("airflow-triggerer", [_bin("airflow"), "triggerer"], None, None, env=af),
        _serve_service(s),
    ]


def _serve_service(s: Settings) -> Service:
    """The transcription service (ML runtime). It starts with the registry's production model if there is
    one, else empty (live, not ready) until the promotion DAG deploys a model."""
    from clinasr.mlenv import service_command

    argv, env = service_command("serve", ["--host", "127.0.0.1", "--port", str(s.serve_port)], s)
    env.update({"CLINASR_HOME": str(s.home), "CLINASR_S3_ENDPOINT": s.s3_endpoint or "", "CLINASR_BUCKET": s.bucket,
                "MLFLOW_TRACKING_URI": s.mlflow_uri, "NO_PROXY": "127.0.0.1,localhost",
                "CLINASR_SERVE_MODEL": os.environ.get("CLINASR_SERVE_MODEL", "models:/clinasr-asr@production"),
                # the service requires a key by default: generated once, read by the deploy task and the demo
                "CLINASR_SERVE_API_KEY": s.serve_api_key(create=True)})
    return Service("serve", argv, s.serve_port, f"http://127.0.0.1:{s.serve_port}/health/live", env=env,
                   start_timeout=240)


# -- process helpers ------------------------------------------------------------------------------
def _pid_file(s: Settings, name: str) -> Path:
    return s.path("platform") / f"{name}.pid"


def _log_file(s: Settings, name: str) -> Path:
    return s.path("platform") / f"{name}.log"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie is not alive (the state follows the command name, which may hold spaces and parentheses)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def running_pid(s: Settings, name: str) -> int | None:
    pf = _pid_file(s, name)
    if not pf.exists():
        return None
    try:
        pid = int(pf.read_text().strip())
    except ValueError:
        return None
    return pid if _alive(pid) else None


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except (urllib.error.URLError, OSError):
        return False


PORT_VARS = {"s3": "CLINASR_S3_PORT", "aws": "CLINASR_AWS_PORT", "mlflow": "CLINASR_MLFLOW_PORT", "airflow-api-server": "CLINASR_AIRFLOW_PORT"}


def start_service(s: Settings, svc: Service, log=print) -> str:
    pid = running_pid(s, svc.name)
    if pid:
        return f"{svc.name}: already running (pid {pid})"
    if svc.port and not port_free(svc.port):
        raise PlatformError(
            f"{svc.name}: port {svc.port} is taken by another program. Stop that program or choose another "
            f"port, e.g. `export {PORT_VARS.get(svc.name, 'CLINASR_..._PORT')}={svc.port + 1}`."
        )
    env = {**os.environ, **svc.env}
    logf = open(_log_file(s, svc.name), "ab")
    proc = subprocess.Popen(svc.argv, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=str(s.home),
                            start_new_session=True)
    _pid_file(s, svc.name).write_text(str(proc.pid))
    if svc.health_url:
        deadline = time.time() + svc.start_timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise PlatformError(f"{svc.name} exited during start (code {proc.returncode}); see {_log_file(s, svc.name)}")
            if _healthy(svc.health_url):
                return f"{svc.name}: started (pid {proc.pid}) {svc.health_url}"
            time.sleep(1)
        raise PlatformError(f"{svc.name} did not become healthy in {svc.start_timeout:.0f}s; see {_log_file(s, svc.name)}")
    time.sleep(1)
    if proc.poll() is not None:
        raise PlatformError(f"{svc.name} exited during start (code {proc.returncode}); see {_log_file(s, svc.name)}")
    return f"{svc.name}: started (pid {proc.pid})"


def stop_service(s: Settings, name: str, timeout: float = 30) -> str:
    pid = running_pid(s, name)
    _pid_file(s, name).unlink(missing_ok=True)
    if not pid:
        return f"{name}: not running"
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return f"{name}: stopped"
    deadline = time.time() + timeout
    while time.time() < deadline and _alive(pid):
        time.sleep(0.3)
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return f"{name}: stopped"


def init_airflow(s: Settings, log=print) -> None:
    """Migrate the metadata DB (once) and create the platform's Airflow connections (every time)."""
    env = {**os.environ, **airflow_env(s)}
    stamp = s.home / "airflow" / ".migrated"
    if not stamp.exists():
        log("airflow: migrating metadata database (first time, ~30 s)")
        r = subprocess.run([_bin("airflow"), "db", "migrate"], env=env, capture_output=True, text=True)
        if r.returncode:
            raise PlatformError(f"airflow db migrate failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        stamp.write_text("ok")
    airflow_objects(s, env)


def airflow_connections(s: Settings, environ=os.environ) -> dict:
    """The Airflow connections clinasr's DAGs use, for ``s``: on the local platform with the embedded store's
    generated key and moto's endpoint for SageMaker/EC2; in a deployment (compose) with the store's key from
    the environment and, with ``CLINASR_AWS_ENDPOINT=aws``, no key for AWS (the role or the team's keys)."""
    conns = {
        "clinasr_s3": {"conn_type": "aws", "extra": {"endpoint_url": s.s3_endpoint or None,
                                                      "region_name": s.aws_region, "bucket": s.bucket}},
        "clinasr_mlflow": {"conn_type": "http", "host": s.mlflow_uri},
        # SageMaker/EC2 for the training DAG. Locally moto's server answers those APIs, so the AWS backends run
        # their real request path against it; a deployment sets CLINASR_AWS_ENDPOINT=aws (the real endpoints).
        # S3 calls through it (the SageMaker operator checks its input channel exists) go to the object store
        # (the provider's per-service endpoint), so locally its key is the store's; moto accepts any key.
        "clinasr_aws": {"conn_type": "aws", "extra": {"endpoint_url": s.aws_endpoint, "region_name": s.aws_region,
                                                       "service_config": {"s3": {"endpoint_url": s.s3_endpoint or None}}},
                        "login": "clinasr-local", "password": "clinasr-local"},
    }
    from clinasr.store import _is_loopback

    if s.s3_endpoint and _is_loopback(s.s3_endpoint):
        key, secret = s.local_s3_credentials(create=True)
        conns["clinasr_s3"].update(login=key, password=secret)
        conns["clinasr_aws"].update(login=key, password=secret)
    elif environ.get("AWS_ACCESS_KEY_ID"):      # a deployment's store (compose): its key, from the environment
        conns["clinasr_s3"].update(login=environ["AWS_ACCESS_KEY_ID"],
                                   password=environ.get("AWS_SECRET_ACCESS_KEY", ""))
        if s.aws_endpoint is None:                # real AWS: the role or the team's own keys, never the store's
            del conns["clinasr_aws"]["login"], conns["clinasr_aws"]["password"]
    return conns


def airflow_objects(s: Settings, env: dict) -> None:
    """The Airflow pool and connections clinasr's DAGs use, created (or updated) through the ``airflow`` CLI
    run with ``env`` (the local platform's, or a container's own)."""
    conns = airflow_connections(s, env)
    r = subprocess.run([_bin("airflow"), "pools", "set", "clinasr_evaluation", "1",
                        "one model evaluation at a time, so each model's latency is measured alone"],
                       env=env, capture_output=True, text=True)
    if r.returncode:
        raise PlatformError(f"creating the Airflow pool clinasr_evaluation failed:\n{r.stderr[-2000:]}")
    f = s.home / "airflow" / "connections.json"          # holds the store's key: owner-only, removed after import
    f.parent.mkdir(parents=True, exist_ok=True)
    f.unlink(missing_ok=True)
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(conns, indent=1))
    try:
        r = subprocess.run([_bin("airflow"), "connections", "import", str(f), "--overwrite"], env=env,
                           capture_output=True, text=True)
    finally:
        f.unlink(missing_ok=True)
    if r.returncode:
        raise PlatformError(f"creating Airflow connections failed:\n{r.stderr[-2000:]}")


def init_deployment(s: Settings | None = None, log=print) -> None:
    """The one-shot init of a team deployment (docker compose's ``airflow-init``), idempotent: the metadata DB,
    the evaluation pool and the connections (the store's key from the environment), then the buckets — data
    (versioned, default encryption), provenance mirror (Object Lock) and MLflow's artifacts."""
    s = s or Settings.from_env()
    log("airflow: migrating the metadata database")
    r = subprocess.run([_bin("airflow"), "db", "migrate"], capture_output=True, text=True)
    if r.returncode:
        raise PlatformError(f"airflow db migrate failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    airflow_objects(s, dict(os.environ))
    log("airflow: pool clinasr_evaluation, connections clinasr_s3, clinasr_mlflow, clinasr_aws")
    log(prepare_buckets(s))
    from clinasr.store import ObjectStore

    artifacts = os.environ.get("CLINASR_MLFLOW_BUCKET", "clinasr-mlflow")
    log(f"s3: MLflow artifact bucket {ObjectStore(s).ensure_bucket(artifacts)}")


def up(s: Settings | None = None, only: list[str] | None = None, log=print) -> None:
    s = s or Settings.from_env()
    svcs = [v for v in services(s) if not only or any(v.name.startswith(o) for o in only)]
    if any(v.name.startswith("airflow") for v in svcs) and not running_pid(s, "airflow-api-server"):
        init_airflow(s, log)
    for svc in svcs:
        msg = start_service(s, svc, log)
        log(msg)
        if svc.name == "s3" and s.s3_endpoint and "already running" not in msg:
            log(prepare_buckets(s))


def prepare_buckets(s: Settings) -> str:
    """The bucket with versioning and default encryption, and the provenance mirror's bucket with Object Lock;
    idempotent (an existing bucket keeps its objects)."""
    from clinasr.store import ObjectStore

    store = ObjectStore(s)
    bucket = store.ensure_bucket()
    store.ensure_default_encryption(bucket)
    lock_bucket = store.ensure_lock_bucket()
    return f"s3: bucket {bucket} (versioned, default encryption {s.sse}); provenance bucket {lock_bucket} (Object Lock)"


def down(s: Settings | None = None, log=print) -> None:
    s = s or Settings.from_env()
    for svc in reversed(services(s)):
        log(stop_service(s, svc.name))


def status(s: Settings | None = None) -> list[dict]:
    s = s or Settings.from_env()
    rows = []
    for svc in services(s):
        pid = running_pid(s, svc.name)
        healthy = bool(pid) and (svc.health_url is None or _healthy(svc.health_url))
        rows.append({"service": svc.name, "pid": pid, "state": "healthy" if healthy else ("unhealthy" if pid else "stopped"),
                     "url": svc.health_url or "", "log": str(_log_file(s, svc.name))})
    return rows
