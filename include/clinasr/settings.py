"""Runtime settings, from environment variables with embedded (one machine, no cloud) defaults.

Every component reads its endpoints from here, so switching a backend to AWS is a matter of
environment (or Airflow connection) values, never of code:

==========================  =====================================  ==========================
variable                    embedded default                       production example
==========================  =====================================  ==========================
CLINASR_HOME                <repo>/.run                            /var/lib/clinasr
CLINASR_S3_ENDPOINT         http://127.0.0.1:<s3 port>             (unset: Amazon S3)
CLINASR_BUCKET              clinasr                                acme-clinasr-prod
CLINASR_SSE                 AES256                                 aws:kms
CLINASR_KMS_KEY_ID          (unset)                                arn:aws:kms:...
MLFLOW_TRACKING_URI         http://127.0.0.1:<mlflow port>         https://mlflow.internal
CLINASR_ML_PYTHON           <repo>/.venv/ml/bin/python             (container entry point)
CLINASR_SERVE_URL           http://127.0.0.1:<serve port>          http://asr.internal:8000
CLINASR_SERVE_API_KEY       (unset: no key)                        a long random token
CLINASR_{AIRFLOW,MLFLOW,S3,SERVE}_PORT   18080, 15000, 19000, 18000
==========================  =====================================  ==========================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{name}={port} is outside 1..65535")
    return port


@dataclass(frozen=True)
class Settings:
    home: Path
    airflow_port: int
    mlflow_port: int
    s3_port: int
    serve_port: int
    s3_endpoint: str | None
    bucket: str
    sse: str
    kms_key_id: str | None
    mlflow_uri: str
    ml_python: str
    aws_region: str

    @classmethod
    def from_env(cls) -> "Settings":
        home = Path(os.environ.get("CLINASR_HOME") or REPO_ROOT / ".run").resolve()
        s3_port = _port("CLINASR_S3_PORT", 19000)
        mlflow_port = _port("CLINASR_MLFLOW_PORT", 15000)
        endpoint = os.environ.get("CLINASR_S3_ENDPOINT", f"http://127.0.0.1:{s3_port}")
        sse = os.environ.get("CLINASR_SSE", "AES256")
        if sse not in ("AES256", "aws:kms", "aws:kms:dsse"):
            raise ValueError(f"CLINASR_SSE={sse!r}: use AES256, aws:kms or aws:kms:dsse")
        return cls(
            home=home,
            airflow_port=_port("CLINASR_AIRFLOW_PORT", 18080),
            mlflow_port=mlflow_port,
            s3_port=s3_port,
            serve_port=_port("CLINASR_SERVE_PORT", 18000),
            s3_endpoint=endpoint or None,  # empty string means "real AWS S3"
            bucket=os.environ.get("CLINASR_BUCKET", "clinasr"),
            sse=sse,
            kms_key_id=os.environ.get("CLINASR_KMS_KEY_ID") or None,
            mlflow_uri=os.environ.get("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{mlflow_port}"),
            ml_python=os.environ.get("CLINASR_ML_PYTHON", str(REPO_ROOT / ".venv" / "ml" / "bin" / "python")),
            aws_region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        )

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"

    @property
    def serve_url(self) -> str:
        return os.environ.get("CLINASR_SERVE_URL") or f"http://127.0.0.1:{self.serve_port}"

    def path(self, *parts: str) -> Path:
        p = self.home.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p


def load_versioned_yaml(path: str | Path, required: tuple[str, ...], what: str, error=ValueError) -> dict:
    """A checked-in policy file (gate, drift): relative to the repo, with `version`, plus its path and sha256
    so every decision records exactly which criteria it applied."""
    import hashlib

    import yaml

    p = Path(path)
    p = p if p.is_absolute() else REPO_ROOT / p
    if not p.exists():
        raise error(f"{what} not found: {p}")
    cfg = yaml.safe_load(p.read_text()) or {}
    missing = [k for k in ("version", *required) if k not in cfg]
    if missing:
        raise error(f"{p.name}: needs {', '.join(f'`{k}`' for k in missing)}")
    cfg["path"], cfg["sha256"] = str(p), hashlib.sha256(p.read_bytes()).hexdigest()
    return cfg


# The local platform's Airflow runs on SQLite: wait up to a minute for a write lock instead of the driver's 5 s,
# so a REST call (e.g. a trigger from the UI) that meets a busy scheduler waits rather than failing with 500
# (AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS names this dict).
AIRFLOW_SQLITE_CONNECT_ARGS = {"timeout": 60}
