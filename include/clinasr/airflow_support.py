"""Glue between Airflow tasks and the library: Params -> typed requests, per-run work directories,
task logging and provenance declarations. Imported inside tasks only (never at DAG parse time)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from clinasr import provenance
from clinasr.settings import Settings

log = logging.getLogger("clinasr")


def work_dir(settings: Settings, dag_id: str, run_id: str) -> Path:
    """One directory per DAG run: retries of a task reuse it (idempotent), other runs never touch it."""
    return settings.path("work", dag_id, hashlib.sha256(run_id.encode()).hexdigest()[:16])


def dataset_request(params: dict):
    from clinasr.datasets import DatasetRequest

    llm = {k: v for k, v in {"base_url": params.get("llm_base_url"), "model": params.get("llm_model")}.items() if v}
    return DatasetRequest(
        terms=params.get("terms") or None, utterances_per_term=int(params["utterances_per_term"]),
        generator=params["generator"], template_family=params.get("template_family", "a"), seed=int(params["seed"]),
        val_fraction=float(params["val_fraction"]), augment=bool(params["augment"]),
        accent_profiles=params.get("accent_profiles") or None, workers=int(params.get("workers", 2)),
        real_manifest=params.get("real_manifest") or None, real_ratio=float(params.get("real_ratio", 5.0)), llm=llm)


def declare(**fields) -> None:
    provenance.declare(**fields)
