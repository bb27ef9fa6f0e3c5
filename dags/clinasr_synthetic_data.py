"""Synthetic clinical speech data: lexicon -> transcripts -> multi-accent TTS -> augmentation -> manifests -> S3."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Asset, Param, dag, task

DATASET_ASSET = Asset(name="clinasr_dataset", uri="s3://clinasr/datasets")

DOC = """
### Synthetic clinical speech data
Builds a dataset for the priority terms and stages it as an immutable, content-addressed snapshot in the
object store, then updates the **clinasr_dataset** Asset (the training DAG is scheduled on it).

1. **transcripts** — grammar (offline) or LLM generator; PHI-looking text rejected; duplicates dropped
2. with **qa_review** on: **qa_sample** renders every priority term in every accent profile (pronunciation
   overrides from `configs/pronunciations.yaml`, a few augmented copies) to a page with audio players —
   optionally transcribed by `qa_check_model`, flagging terms it does not recognise — and **approve_qa**
   waits for a person (*Required actions* in the UI). Approve: synthesis goes on, and the page is kept
   with the dataset; Reject: nothing is synthesised. The decision, who and when go into provenance.
3. **synthesize** — TTS across accent profiles + augmentation + NeMo manifests + dataset card (ML runtime)
4. **stage_snapshot** — encrypted, content-addressed upload; a retry uploads nothing twice

Leave *terms* empty to cover every drug in the lexicon. The dataset card (counts, hours, coverage plot,
what was dropped and why) is stored with the snapshot.
"""


@dag(
    dag_id="clinasr_synthetic_data",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["clinasr", "data"],
    doc_md=DOC,
    default_args={"owner": "clinasr-data", "retries": 2, "retry_delay": timedelta(seconds=30)},
    params={
        "terms": Param("warfarin, levetiracetam, metoprolol tartrate, insulin glargine, apixaban", type=["string", "null"],
                       description="Priority terms, comma-separated (empty: every drug in the lexicon)"),
        "utterances_per_term": Param(80, type="integer", minimum=1, maximum=5000,
                                     description="more sentences per term teach the term with less forgetting: on 30 "
                                                 "drugs 20/40/80 gave term accuracy 0.59/0.61/0.68 on unseen voices in "
                                                 "the same 600 steps (docs/benchmarks.md)"),
        "generator": Param("grammar", enum=["grammar", "llm"]),
        "llm_base_url": Param(None, type=["string", "null"], description="OpenAI-compatible endpoint (generator=llm)"),
        "llm_model": Param(None, type=["string", "null"]),
        "template_family": Param("a", enum=["a"], description="training sentence shapes; family b is reserved for the "
                                                              "clinical held-out evaluation set (configs/evalsets.yaml)"),
        "seed": Param(0, type="integer", minimum=0),
        "reason": Param(None, type=["string", "null"],
                        description="why this dataset is built (set by drift-triggered retraining; recorded in provenance)"),
        "val_fraction": Param(0.15, type="number", minimum=0.1, maximum=0.2),
        "augment": Param(True, type="boolean"),
        "accent_profiles": Param(["native", "second_language", "regional"], type="array",
                                 items={"enum": ["native", "second_language", "regional"]}),
        "synthesis": Param("default", enum=["default", "kokoro"],
                           description="voice set: default (espeak-ng + CMU Flite; the CPU demo's) or kokoro (+ the "
                                       "Kokoro-82M neural synthesiser in ~17% of rows, ~8x slower to render on a "
                                       "CPU; for GPU fine-tunes it cut a held-out neural engine's term errors by 82% "
                                       "instead of 72%: docs/benchmarks.md)"),
        "workers": Param(2, type="integer", minimum=1, maximum=64),
        "real_manifest": Param(None, type=["string", "null"], description="real de-identified manifest to mix in"),
        "real_ratio": Param(5.0, type="number", exclusiveMinimum=0),
        "qa_review": Param(False, type="boolean",
                           description="listen before synthesis: render a QA sample and wait for approval (approve_qa)"),
        "qa_check_model": Param(None, type=["string", "null"],
                                description="with qa_review: transcribe the sample with this model (e.g. "
                                            "models:/clinasr-asr@production) and flag terms it does not recognise"),
    },
)
def clinasr_synthetic_data():
    @task
    def transcripts(params=None, run_id=None) -> dict:
        from clinasr.tasks.synthetic_data import dataset_request
        from clinasr.tasks.common import declare, work_dir
        from clinasr.datasets import make_transcripts
        from clinasr.settings import Settings

        req = dataset_request(params)
        out = make_transcripts(req, work_dir(Settings.from_env(), "clinasr_synthetic_data", run_id))
        declare(outputs=[{"uri": out["transcripts"], "kind": "transcripts"}],
                origin={"origin": "synthetic", "generator": out["generator"], "seed": req.seed,
                        "lexicon_version": out["lexicon_version"], "terms": out["terms"]})
        return {k: v for k, v in out.items() if k != "terms"} | {"terms": out["terms"][:50]}

    @task.branch
    def qa_choice(params=None) -> str:
        return "qa_sample" if params["qa_review"] else "no_review"

    @task(execution_timeout=timedelta(hours=1))
    def qa_sample(t: dict, params=None, run_id=None) -> dict:
        from clinasr.tasks.synthetic_data import qa_review_sample

        return qa_review_sample(params, t, run_id)

    class QAApproval(ApprovalOperator):
        """Approval of the QA sample; the decision, who and when also go into the provenance record."""

        def execute_complete(self, context, event):
            from clinasr.tasks.synthetic_data import record_qa_decision

            record_qa_decision(event, context["ti"].xcom_pull(task_ids="qa_sample"))
            return super().execute_complete(context=context, event=event)

    @task(execution_timeout=timedelta(hours=6), trigger_rule="none_failed_min_one_success")
    def synthesize(t: dict, params=None, run_id=None) -> dict:
        from clinasr.tasks.synthetic_data import dataset_request
        from clinasr.tasks.common import declare, log, work_dir
        from clinasr.datasets import synthesize as run
        from clinasr.settings import Settings

        req = dataset_request(params)
        built = run(req, t, work_dir(Settings.from_env(), "clinasr_synthetic_data", run_id), log=log.info)
        declare(inputs=[{"uri": t["transcripts"], "kind": "transcripts"}],
                outputs=[{"uri": built["dataset_dir"], "kind": "dataset-local"}],
                origin={"origin": "synthetic", "voices": sorted(built["card"]["per_voice"])})
        return {"dataset_dir": built["dataset_dir"], "counts": built["card"]["counts"]}

    @task(outlets=[DATASET_ASSET])
    def stage_snapshot(built: dict, outlet_events=None) -> dict:
        from clinasr.tasks.common import declare
        from clinasr.datasets import stage_dataset_snapshot

        snap = stage_dataset_snapshot(built["dataset_dir"])
        outlet_events[DATASET_ASSET].extra = {"snapshot_uri": snap["uri"], "snapshot_id": snap["snapshot_id"]}
        declare(inputs=[{"uri": built["dataset_dir"], "kind": "dataset-local"}],
                outputs=[{"uri": snap["uri"], "sha256": snap["digest"], "size": snap["bytes"], "kind": "dataset"}])
        return snap

    t = transcripts()
    choice, qa = qa_choice(), qa_sample(t)
    approve = QAApproval(
        task_id="approve_qa", subject="QA sample: do the priority terms sound right?",
        body="Listen to the QA sample: {{ ti.xcom_pull(task_ids='qa_sample')['page'] }} (local copy: "
             "{{ ti.xcom_pull(task_ids='qa_sample')['local_page'] }}). {{ ti.xcom_pull(task_ids='qa_sample')['clips'] }} "
             "clips; terms the check model did not recognise: "
             "{{ ti.xcom_pull(task_ids='qa_sample')['flagged_terms'] or 'none' }}. Approve to synthesise the dataset; "
             "Reject to stop (then fix configs/pronunciations.yaml, which changes espeak-ng and Piper clips; Flite "
             "clips keep their own pronunciation, drop Flite voices from accent_profiles if they are wrong; and run again).")
    built = synthesize(t)      # after approve_qa, or straight on without a review; skipped on Reject
    no_review = EmptyOperator(task_id="no_review")
    t >> choice >> [qa, no_review]
    no_review >> built
    qa >> approve >> built
    stage_snapshot(built)


clinasr_synthetic_data()
