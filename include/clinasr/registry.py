"""The MLflow model registry: the one module that moves model aliases.

Aliases: ``candidate`` (set when training registers a version), ``production`` (set only through the
gate by promotion), ``previous`` (the production version before the last promotion, for rollback).
Each move is recorded as version tags (who, why, when).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path


class RegistryError(RuntimeError):
    pass


def client():
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:15000"))


def register_candidate(name: str, run_id: str, artifact_path: str, tags: dict | None = None) -> str:
    """Register the run's artifact as a new version of ``name`` and point ``candidate`` at it."""
    c = client()
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description="clinasr clinical ASR (NeMo FastConformer-TDT .nemo files)")
    run = c.get_run(run_id)
    source = f"{run.info.artifact_uri}/{artifact_path}"
    mv = c.create_model_version(name, source=source, run_id=run_id,
                                tags={k: str(v) for k, v in (tags or {}).items()})
    c.set_registered_model_alias(name, "candidate", mv.version)
    c.set_model_version_tag(name, mv.version, "registered_at", datetime.now(timezone.utc).isoformat())
    return str(mv.version)


def resolve(ref: str) -> tuple[str, str]:
    """``models:/name@alias`` or ``models:/name/version`` -> (name, version)."""
    if not ref.startswith("models:/"):
        raise RegistryError(f"not a registry reference: {ref!r} (use models:/name@alias or models:/name/N)")
    body = ref[len("models:/"):]
    c = client()
    from mlflow.exceptions import MlflowException

    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            return name, str(c.get_model_version_by_alias(name, alias).version)
        name, version = body.rsplit("/", 1)
        c.get_model_version(name, version)
        return name, version
    except MlflowException as e:
        raise RegistryError(f"{ref} does not exist in the registry: {e.message if hasattr(e, 'message') else e}") from None


def download_model(ref: str, dest: Path) -> Path:
    """Download the .nemo behind a registry reference."""
    import mlflow

    name, version = resolve(ref)
    mv = client().get_model_version(name, version)
    dest.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dest),
                                                tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"))
    p = Path(local)
    if p.is_dir():
        found = sorted(p.rglob("*.nemo"))
        if not found:
            raise RegistryError(f"{ref} has no .nemo file")
        p = found[0]
    return p
