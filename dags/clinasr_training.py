"""Fine-tuning: NeMo FastConformer-TDT on the latest dataset snapshot; registers a candidate in MLflow."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, task

DATASET_ASSET = Asset(name="clinasr_dataset", uri="s3://clinasr/datasets")
CANDIDATE_ASSET = Asset(name="clinasr_candidate_model", uri="mlflow://clinasr-asr/candidate")

DOC = """
### Fine-tuning (NeMo FastConformer-TDT)
Runs whenever **clinasr_dataset** is updated (the synthetic-data DAG) and from the UI. Trains on the
snapshot named by the triggering asset event (or the `dataset_uri` Param), logs params, metrics,
configs and TensorBoard logs to MLflow, and registers the resulting `.nemo` as a new version of the
model with the alias **candidate**, which updates the **clinasr_candidate_model** Asset.

- `base`: `config:<yaml>` (build a small model from config: CPU demo), `nemo:<path|s3://|models:/name@alias>`
  or `pretrained:nvidia/parakeet-tdt-0.6b-v2` (needs a reachable model hub).
- `backend`: `local` (ML runtime on this machine), `sagemaker` (training job) or `ec2` (p4d nodes).
- Checkpoints every N steps; a retried task resumes from the last one.
"""


@dag(
    dag_id="clinasr_training",
    schedule=[DATASET_ASSET],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["clinasr", "training"],
    doc_md=DOC,
    default_args={"owner": "clinasr-ml", "retries": 1, "retry_delay": timedelta(minutes=1)},
    params={
        "dataset_uri": Param(None, type=["string", "null"],
                             description="s3:// snapshot (default: the one in the triggering asset event)"),
        "base": Param("config:configs/model/fastconformer_tdt_tiny.yaml", type="string",
                      pattern=r"^(config|nemo|pretrained):.+$"),
        "trainer_config": Param("configs/trainer/cpu_demo.yaml", type="string"),
        "max_steps": Param(300, type="integer", minimum=1),
        "batch_size": Param(8, type="integer", minimum=1, maximum=512),
        "backend": Param("local", enum=["local", "sagemaker", "ec2"]),
        "instance_count": Param(1, type="integer", minimum=1, maximum=8),
        "register_as": Param("clinasr-asr", type="string", pattern=r"^[A-Za-z0-9_.-]+$"),
        "seed": Param(0, type="integer", minimum=0),
    },
)
def clinasr_training():
    @task
    def resolve_dataset(params=None, triggering_asset_events=None) -> str:
        from clinasr.airflow_support import resolve_dataset_uri

        return resolve_dataset_uri(params, triggering_asset_events, DATASET_ASSET)

    @task(execution_timeout=timedelta(hours=72), outlets=[CANDIDATE_ASSET])
    def train(dataset_uri: str, params=None, run_id=None, outlet_events=None) -> dict:
        from clinasr.airflow_support import run_training

        result = run_training(dataset_uri, params, run_id)
        if result.get("model_version"):
            outlet_events[CANDIDATE_ASSET].extra = {"model_uri": result["model_uri"], "dataset_uri": dataset_uri}
        return result

    train(resolve_dataset())


clinasr_training()
