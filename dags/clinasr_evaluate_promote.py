"""Evaluate a candidate against production on the same held-out sets; promote only through the gate."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, task

CANDIDATE_ASSET = Asset(name="clinasr_candidate_model", uri="mlflow://clinasr-asr/candidate")
PRODUCTION_ASSET = Asset(name="clinasr_production_model", uri="mlflow://clinasr-asr/production")
# One evaluation at a time (the platform creates this pool with 1 slot): each model's latency is measured alone,
# not while three evaluations share the machine's cores.
EVAL_POOL = "clinasr_evaluation"

DOC = """
### Evaluate and promote
Runs when training registers a candidate (the **clinasr_candidate_model** Asset) and from the UI.

1. **plan** — the candidate (asset event, the `candidate` Param, or `models:/<name>@candidate`), the
   baseline (the `production` alias; with no production yet the `baseline_model` Param, else the base model
   the candidate was fine-tuned from) and the sets: the held-out evaluation sets of `configs/evalsets.yaml`
   (**clinical_heldout** on the candidate's own priority terms, **general_heldout**: unseen voices, engine and
   sentence shapes, everyday English; built by **clinasr_evaluation_sets** — a missing or stale one is
   recorded and fails the gate, named), the candidate's dataset validation split (shown, never decided on)
   and `extra_manifests` (`name=path` each, e.g. de-identified clinician recordings).
2. **evaluate_candidate**, **evaluate_baseline** — the same sets, in the ML runtime: WER, strict
   clinical-term accuracy by category, negation accuracy and critical negation errors, per-slice WER,
   latency p50/p95 and RTFx, bootstrap CIs; hypotheses saved per utterance. **evaluate_references** scores
   off-the-shelf models (`reference_models`, e.g. Whisper tiny.en) the same way for the report's
   leaderboard (on a fixed sample of `reference_max_utterances` rows per set where the gate config sets it;
   transcripts cached, so the same sets are never decoded twice); they do not enter the decision unless the gate
   config says so.
3. **gate** — the criteria in `gate_config` (versioned YAML, version 3): clinical accuracy, negation and WER
   reduction on the clinical held-out set; on everyday English no WER rise beyond 0.02 over the baseline and
   at most one phantom term (an invented drug, dose, route) per 100 utterances. The report (JSON + HTML with
   every set side by side and plots) goes to
   S3, to the candidate's MLflow run and to provenance. A failed gate rejects the candidate and fails
   here, naming each failing criterion; `override_reason` promotes anyway and is recorded.
4. **promote** — MLflow aliases: `production` → candidate, `previous` → the old production; updates the
   **clinasr_production_model** Asset. Roll back with `clinasr registry rollback`.
5. **deploy** — the transcription service loads and warms up the new version beside the old one and
   switches atomically; a failed load keeps the old model serving and fails this task.
"""


@dag(
    dag_id="clinasr_evaluate_promote",
    schedule=[CANDIDATE_ASSET],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["clinasr", "evaluation", "promotion"],
    doc_md=DOC,
    default_args={"owner": "clinasr-ml", "retries": 1, "retry_delay": timedelta(minutes=1)},
    params={
        "model_name": Param(None, type=["string", "null"], pattern=r"^[A-Za-z0-9_.-]+$",
                            description="registered model (default: the candidate's); alone it means its @candidate"),
        "candidate": Param(None, type=["string", "null"], pattern=r"^models:/.+",
                           description="models:/name/N or models:/name@alias (default: the triggering asset event)"),
        "dataset_uri": Param(None, type=["string", "null"],
                             description="in-domain set: a dataset snapshot (default: the candidate's training dataset)"),
        "extra_manifests": Param([], type="array", items={"type": "string"},
                                 description="more evaluation sets, `name=path/to/manifest.jsonl` each"),
        "baseline_model": Param(None, type=["string", "null"],
                                description="baseline when there is no production yet (.nemo, s3:// or models:/...)"),
        "gate_config": Param("configs/gate/default.yaml", type="string"),
        "reference_models": Param(None, type=["array", "null"], items={"type": "string"},
                                  description="off-the-shelf models scored beside ours for the leaderboard, e.g. "
                                              "whisper:tiny.en, pretrained:nvidia/parakeet-tdt-0.6b-v2 (default: the "
                                              "gate config's reference_models; [] for none)"),
        "override_reason": Param(None, type=["string", "null"],
                                 description="promote even if the gate fails; the reason is recorded (leave empty)"),
        "deploy": Param(True, type="boolean", description="load the new production model into the transcription service"),
    },
)
def clinasr_evaluate_promote():
    @task(multiple_outputs=True)
    def plan(params=None, triggering_asset_events=None) -> dict:
        from clinasr.tasks.evaluate_promote import evaluation_plan

        return evaluation_plan(params, triggering_asset_events, CANDIDATE_ASSET)

    @task(execution_timeout=timedelta(hours=6), pool=EVAL_POOL)
    def evaluate_candidate(p: dict, run_id=None) -> dict:
        from clinasr.tasks.evaluate_promote import evaluate_model

        return evaluate_model(p["candidate"], p["sets"], "candidate", run_id)

    @task(execution_timeout=timedelta(hours=6), pool=EVAL_POOL)
    def evaluate_baseline(p: dict, run_id=None) -> dict | None:
        from clinasr.tasks.evaluate_promote import evaluate_model

        return evaluate_model(p["baseline"], p["sets"], "baseline", run_id) if p["baseline"] else None

    @task(execution_timeout=timedelta(hours=6), pool=EVAL_POOL)
    def evaluate_references(p: dict, run_id=None) -> list[dict]:
        from clinasr.tasks.evaluate_promote import evaluate_references

        return evaluate_references(p["references"], p["sets"], run_id, p.get("reference_max_utterances"))

    @task
    def gate(p: dict, cand: dict, base: dict | None, refs: list[dict], params=None, run_id=None, dag_run=None) -> dict:
        from clinasr.tasks.evaluate_promote import apply_gate

        return apply_gate(p, cand, base, params, run_id, getattr(dag_run, "triggering_user_name", None), refs)

    @task(outlets=[PRODUCTION_ASSET])
    def promote(p: dict, decision: dict, dag_run=None, outlet_events=None) -> dict:
        from clinasr.tasks.evaluate_promote import promote_candidate

        res = promote_candidate(p, decision, getattr(dag_run, "triggering_user_name", None))
        outlet_events[PRODUCTION_ASSET].extra = {"model_uri": f"models:/{p['model_name']}/{res['production']}",
                                                 "previous": res["previous"]}
        return res

    @task(retries=2)
    def deploy(promoted: dict, params=None) -> dict | None:
        from clinasr.tasks.evaluate_promote import deploy_to_serving

        if not params["deploy"]:
            return None
        return deploy_to_serving(f"models:/{promoted['name']}/{promoted['production']}")

    p = plan()
    deploy(promote(p, gate(p, evaluate_candidate(p), evaluate_baseline(p), evaluate_references(p))))


clinasr_evaluate_promote()
