"""Drift monitoring: served traffic + clinician feedback vs the production model's values at promotion."""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, task

DOC = """
### Drift monitoring and retraining
Runs on a cadence (`CLINASR_DRIFT_SCHEDULE`, default weekly) and from the UI.

1. **measure** — joins the transcription service's traffic records with clinician feedback (corrected
   transcripts posted to `POST /v1/feedback`) over the last `window_days`, and computes WER and KER on
   the feedback, per-term KER with what each term was heard as, negation accuracy and critical negation
   errors, the out-of-vocabulary rate and audio-condition shift (level, SNR, duration, sample rates),
   compared with the production model's evaluation at promotion under `policy` (versioned YAML).
   Fewer matched feedback items than the policy's minimum is **insufficient data**, not an alarm. The
   report (JSON + HTML: trend of WER/KER, top confused terms) goes to S3 and MLflow (`clinasr-drift`).
2. **should_retrain** — only on drift (and not `dry_run`).
3. **retrain** — triggers **clinasr_synthetic_data** with the drifted terms as the priority list and the
   drift reason (recorded in provenance); its dataset Asset then starts training and evaluation.
"""


@dag(
    dag_id="clinasr_drift",
    schedule=os.environ.get("CLINASR_DRIFT_SCHEDULE") or "@weekly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["clinasr", "monitoring", "drift"],
    doc_md=DOC,
    default_args={"owner": "clinasr-ml", "retries": 1, "retry_delay": timedelta(minutes=1)},
    params={
        "model_name": Param("clinasr-asr", type="string", pattern=r"^[A-Za-z0-9_.-]+$"),
        "window_days": Param(7, type="number", minimum=0.01, maximum=90),
        "policy": Param("configs/drift/default.yaml", type="string"),
        "utterances_per_term": Param(40, type="integer", minimum=1, maximum=5000,
                                     description="size of the drift-triggered dataset per drifted term"),
        "dry_run": Param(False, type="boolean", description="measure and report only; never trigger retraining"),
    },
)
def clinasr_drift():
    @task(multiple_outputs=True)
    def measure(params=None, run_id=None) -> dict:
        from clinasr.airflow_support import measure_drift

        return measure_drift(params, run_id)

    @task.short_circuit
    def should_retrain(status: str, params=None) -> bool:
        return status == "drift" and not params["dry_run"]

    m = measure()
    retrain = TriggerDagRunOperator(task_id="retrain", trigger_dag_id="clinasr_synthetic_data", conf=m["retrain_conf"],
                                    wait_for_completion=False)
    should_retrain(m["status"]) >> retrain


clinasr_drift()
