"""Evaluation sets the gate decides on, and the general-English replay source of fine-tunes."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

DOC = """
### Evaluation and replay sets
Builds the sets in `configs/evalsets.yaml` that no training run may use, so every model is judged on what
it never trained on:

- **clinical_heldout** — the priority terms in sentence shapes no training set uses (template family b),
  spoken by held-out espeak-ng voices and a held-out TTS engine (Piper); the gate's term accuracy,
  negation and WER criteria are judged here, on the candidate's own priority terms.
- **general_heldout** — everyday English that no training text contains, held-out voices and engine, clean
  and in hospital noise: general-English WER may not rise more than the gate allows, and every drug, dose
  or route in its transcripts is a *phantom term*.
- **general_replay** — general speech in the training voices, mixed into every fine-tune (`replay` in the
  trainer config) so the model keeps what its base knew.

Each set is a content-addressed snapshot with a card, indexed by the hash of its config: a run rebuilds only
sets whose config (or text, lexicon, synthesis config) changed and skips the rest. The synthetic-data stage
refuses the held-out voices and engine for training data.
"""


@dag(
    dag_id="clinasr_evaluation_sets",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["clinasr", "evaluation", "data"],
    doc_md=DOC,
    default_args={"owner": "clinasr-ml", "retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "sets": Param([], type="array", items={"type": "string"},
                      description="set names to build (empty: every set in configs/evalsets.yaml)"),
        "force": Param(False, type="boolean", description="rebuild even when the current config already has a snapshot"),
        "workers": Param(2, type="integer", minimum=1, maximum=64),
    },
)
def clinasr_evaluation_sets():
    @task
    def plan(params=None) -> list[str]:
        from clinasr.tasks.evaluation_sets import plan_sets

        return plan_sets(params)

    @task(execution_timeout=timedelta(hours=4), max_active_tis_per_dagrun=1)
    def build(name: str, params=None, run_id=None) -> dict:
        from clinasr.tasks.evaluation_sets import build_set

        return build_set(name, params, run_id)

    build.expand(name=plan())


clinasr_evaluation_sets()
