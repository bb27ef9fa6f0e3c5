"""Drift monitoring: served traffic + clinician feedback vs the production model's values at promotion."""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator
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
3. **lexicon_choice** / **approve_lexicon** — words clinicians wrote that the lexicon does not know (a new drug)
   are *proposed* additions in the report; a reviewer approves or rejects them under *Required actions*. Approved
   words enter the lexicon (a new lexicon version) before the retraining; the decision, who and when go into
   provenance. No proposals: no review.
4. **retrain_request** → **retrain** — triggers **clinasr_synthetic_data** with what the feedback shows: every
   drifted term (drugs, frequencies, routes), the drugs missed most often even below the per-term floor, and the
   approved additions, at most `max_retrain_terms`; when nothing specific drifted, the policy's explicit
   `default_retrain_terms` (the report says so). Its dataset Asset then starts training and evaluation.
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
        "utterances_per_term": Param(80, type="integer", minimum=1, maximum=5000,
                                     description="size of the drift-triggered dataset per drifted term"),
        "dry_run": Param(False, type="boolean", description="measure and report only; never trigger retraining"),
    },
)
def clinasr_drift():
    @task(multiple_outputs=True)
    def measure(params=None, run_id=None) -> dict:
        from clinasr.tasks.drift import measure_drift

        return measure_drift(params, run_id)

    @task.short_circuit
    def should_retrain(status: str, params=None) -> bool:
        return status == "drift" and not params["dry_run"]

    @task.branch
    def lexicon_choice(proposed: list) -> str:
        return "approve_lexicon" if proposed else "no_lexicon_review"

    class LexiconApproval(ApprovalOperator):
        """Approval of proposed lexicon additions; approved terms are added, and the decision is recorded."""

        def execute_complete(self, context, event):
            from clinasr.tasks.drift import record_lexicon_review

            proposed = (context["ti"].xcom_pull(task_ids="measure", key="proposed_additions") or [])
            record_lexicon_review(event, proposed, context["run_id"])
            return super().execute_complete(context=context, event=event)

    # none_failed: after an approval, a rejection (the reviewed marker is skipped) or no review at all
    @task(trigger_rule="none_failed")
    def retrain_request(measured: dict) -> dict:
        from clinasr.tasks.drift import retrain_request as build

        return build(measured)

    m = measure()
    approve = LexiconApproval(
        task_id="approve_lexicon", subject="New words in clinicians' corrections: add them to the lexicon?",
        body="The drift report {{ ti.xcom_pull(task_ids='measure', key='report') }} proposes these lexicon additions "
             "(words clinicians wrote that the lexicon does not know): "
             "{{ ti.xcom_pull(task_ids='measure', key='proposed_additions') }}. Approve: they enter the lexicon and the "
             "retraining covers them; Reject: the retraining goes on without them.")
    choice = lexicon_choice(m["proposed_additions"])
    no_review = EmptyOperator(task_id="no_lexicon_review")
    # Reject skips the approval's direct downstream only: this marker, not the retraining
    reviewed = EmptyOperator(task_id="lexicon_reviewed")
    request = retrain_request(m)
    retrain = TriggerDagRunOperator(task_id="retrain", trigger_dag_id="clinasr_synthetic_data", conf=request,
                                    wait_for_completion=False)
    should_retrain(m["status"]) >> choice >> [approve, no_review]
    approve >> reviewed
    [reviewed, no_review] >> request >> retrain


clinasr_drift()
