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
    from clinasr.provenance import ProvenanceLog

    head = ProvenanceLog().head()   # the chain as this version saw it (provenance verify checks it later)
    tags = {**(tags or {}), **({"provenance_head": head} if head else {})}
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


def fetch_model(ref: str, dest: Path) -> Path:
    """A local .nemo for a path, an s3:// URI or a registry reference (models:/name@alias or /version)."""
    if ref.startswith("s3://"):
        from clinasr.store import ObjectStore

        return ObjectStore().download(ref, dest / Path(ref).name)
    if ref.startswith("models:/"):
        return download_model(ref, dest)
    p = Path(ref)
    if not p.exists() and not p.is_absolute():   # repository paths (the shipped base model) work from anywhere
        from clinasr.settings import REPO_ROOT

        p = REPO_ROOT / ref
    if not p.exists():
        raise FileNotFoundError(f"model file not found: {ref}")
    return p


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def alias_version(name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _history(name: str) -> list[str]:
    import json

    tags = client().get_registered_model(name).tags or {}
    return json.loads(tags.get("production_history", "[]"))


def promote(name: str, version: str, by: str, reason: str, report_uri: str | None = None,
            override: bool = False) -> dict:
    """production -> ``version``; the old production becomes ``previous``. ``previous`` is moved first, so a
    failure in between leaves production unchanged (MLflow has no multi-alias transaction). A version the gate
    rejected is promoted only with ``override`` (a recorded override reason)."""
    import json

    from mlflow.exceptions import MlflowException

    c = client()
    try:
        mv = c.get_model_version(name, version)
    except MlflowException:
        raise RegistryError(f"{name} version {version} does not exist") from None
    if (mv.tags or {}).get("status") == "rejected" and not override:
        raise RegistryError(f"{name} v{version} was rejected by the gate ({(mv.tags or {}).get('rejection_reason', '')[:200]}); "
                            "promote it only through an override with a recorded reason")
    old = alias_version(name, "production")
    if old == str(version):
        return {"name": name, "production": old, "previous": alias_version(name, "previous"), "changed": False}
    if old:
        c.set_registered_model_alias(name, "previous", old)
    c.set_registered_model_alias(name, "production", str(version))
    hist = [v for v in _history(name) if v != str(version)] + [str(version)]
    c.set_registered_model_tag(name, "production_history", json.dumps(hist[-50:]))
    for k, v in {"status": "production", "promoted_by": by, "promoted_at": _now(), "promotion_reason": reason,
                 **({"gate_report": report_uri} if report_uri else {})}.items():
        c.set_model_version_tag(name, str(version), k, str(v)[:5000])
    if old:
        c.set_model_version_tag(name, old, "status", "previous")
    return {"name": name, "production": str(version), "previous": old, "changed": True}


def reject(name: str, version: str, by: str, reason: str, report_uri: str | None = None) -> None:
    c = client()
    for k, v in {"status": "rejected", "rejected_by": by, "rejected_at": _now(), "rejection_reason": reason,
                 **({"gate_report": report_uri} if report_uri else {})}.items():
        c.set_model_version_tag(name, str(version), k, str(v)[:5000])


def rollback(name: str, by: str, reason: str) -> dict:
    """Restore the production version before the current one (repeatable along the promotion history)."""
    import json

    c = client()
    cur = alias_version(name, "production")
    if cur is None:
        raise RegistryError(f"{name} has no production version to roll back")
    hist = [v for v in _history(name) if v != cur]
    prev = alias_version(name, "previous") or (hist[-1] if hist else None)
    if prev is None:
        raise RegistryError(f"{name}: no earlier production version to roll back to")
    hist = hist[:hist.index(prev) + 1] if prev in hist else hist + [prev]
    c.set_registered_model_alias(name, "production", prev)
    if len(hist) >= 2:
        c.set_registered_model_alias(name, "previous", hist[-2])
    else:
        c.delete_registered_model_alias(name, "previous")
    c.set_registered_model_tag(name, "production_history", json.dumps(hist))
    for k, v in {"status": "rolled_back", "rolled_back_by": by, "rolled_back_at": _now(), "rollback_reason": reason}.items():
        c.set_model_version_tag(name, cur, k, str(v)[:5000])
    c.set_model_version_tag(name, prev, "status", "production")
    return {"name": name, "production": prev, "rolled_back": cur, "previous": hist[-2] if len(hist) >= 2 else None}
