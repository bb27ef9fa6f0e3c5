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


def resolve_dataset_uri(params: dict, triggering_asset_events, asset) -> str:
    """The dataset to train on: the Param if given, else the newest triggering asset event's snapshot."""
    if params.get("dataset_uri"):
        return params["dataset_uri"]
    events = list((triggering_asset_events or {}).get(asset, []) if triggering_asset_events else [])
    for ev in reversed(events):
        if uri := (ev.extra or {}).get("snapshot_uri"):
            return uri
    raise ValueError("no dataset: set the dataset_uri Param or run clinasr_synthetic_data first")


def base_spec(base: str) -> dict:
    kind, _, value = base.partition(":")
    if kind not in ("config", "nemo", "pretrained") or not value:
        raise ValueError(f"base must be config:<yaml>, nemo:<path|s3://|models:/...> or pretrained:<name> (got {base!r})")
    return {kind: value}


def run_training(dataset_uri: str, params: dict, run_id: str) -> dict:
    import os

    from clinasr.training.launch import AWSLaunchConfig, launch, wait_for_job

    settings = Settings.from_env()
    out = work_dir(settings, "clinasr_training", run_id) / "train"
    train_args = {
        "base": base_spec(params["base"]), "trainer": params["trainer_config"], "output_dir": str(out),
        "trainer_overrides": {"max_steps": int(params["max_steps"]), "batch_size": int(params["batch_size"])},
        "seed": int(params["seed"]), "resume": True,
        "mlflow": {"experiment": "clinasr-training", "register_as": params["register_as"],
                   "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI", settings.mlflow_uri),
                   "run_name": f"airflow-{run_id}"[:120],
                   "tags": {"airflow_run_id": run_id, "dataset_uri": dataset_uri}},
    }
    result = launch(params["backend"], train_args, dataset_uri, run_id, settings,
                    AWSLaunchConfig(instance_count=int(params["instance_count"])), log=log.info)
    result = wait_for_job(result, log=log.info)  # AWS jobs: wait here; the job registers its model in MLflow
    if result.get("mlflow_run_id"):
        log.info("MLflow run: %s/#/experiments/%s/runs/%s", settings.mlflow_uri, result.get("mlflow_experiment_id", "0"),
                 result["mlflow_run_id"])
    declare(inputs=[{"uri": dataset_uri, "kind": "dataset"}] + (
                [{"uri": params["base"].split(":", 1)[1], "kind": "base-model"}] if not params["base"].startswith("config:") else []),
            outputs=[{"uri": result["model_uri"], "kind": "model", "sha256": _sha(result.get("nemo_path"))}]
            if result.get("model_uri") else [],
            mlflow={"run_id": result.get("mlflow_run_id"), "model_version": result.get("model_version")})
    return {k: v for k, v in result.items() if k in ("backend", "job_name", "mlflow_run_id", "model_version", "model_uri",
                                                    "global_step", "train_seconds", "metrics", "n_params")}


def _sha(path):
    from pathlib import Path

    if not path or not Path(path).exists():
        return None
    from clinasr.store import sha256_file

    return sha256_file(Path(path))
