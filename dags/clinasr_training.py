"""Fine-tuning: NeMo FastConformer-TDT on the latest dataset snapshot; registers a candidate in MLflow."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTrainingOperator
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
- Every fine-tune replays general English (`replay` in the trainer config, `replay_ratio` here): rows of the
  **general_replay** set (clinasr_evaluation_sets DAG) are mixed into train and validation, so the model
  keeps what its base knew; the plan fails, naming the set, when it has not been built. On those rows the
  fine-tune is also distilled from its base (`distill_from_base`; `replay_ratio` 0 turns both off).
- Checkpoints every N steps; a retried task resumes from the last one (local work dir, or the
  `checkpoint_uri` S3 prefix, which also lets a run on another machine continue).
- Tasks: `plan` builds the job once (a retry sends the same request); `choose_backend` picks
  `train_local`, `train_sagemaker` (the amazon provider's deferrable SageMakerTrainingOperator) or
  `launch_ec2` → `wait_ec2` (sensor, reschedule mode) → `cleanup_ec2` (always: terminates what is left);
  `candidate` records the registered version (AWS jobs register it from the ML container) and
  updates the asset. AWS calls use the Airflow connection `clinasr_aws`.
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
        # the embedded default: the shipped general-English base model (models/clinasr-base-en-multi), fine-tuned on
        # CPU; production: pretrained:nvidia/parakeet-tdt-0.6b-v2 (or its .nemo) with configs/trainer/gpu_finetune.yaml
        "base": Param("nemo:models/clinasr-base-en-multi/model.nemo", type="string",
                      pattern=r"^(config|nemo|pretrained):.+$",
                      description="nemo:<path|s3://|models:/...>, pretrained:<NeMo name> or config:<model yaml> (from scratch)"),
        "trainer_config": Param("configs/trainer/cpu_finetune.yaml", type="string",
                                description="cpu_finetune.yaml (2 CPU cores); gpu_finetune_base.yaml: the same recipe at "
                                            "96 clips a step on one GPU (with max_steps 1500: ~4 min; measured to "
                                            "keep everyday English); "
                                            "gpu_finetune.yaml: Parakeet-scale, DeepSpeed ZeRO-2"),
        # 100 CPU steps (~2 min on 2 cores) keep `make demo` within 15 minutes; the measured recipe runs 600
        "max_steps": Param(100, type="integer", minimum=1),
        "batch_size": Param(None, type=["null", "integer"], minimum=1, maximum=4096,
                            description="clips per batch; empty: the trainer config's (8 on CPU). With fixed-duration "
                                        "batches (gpu_finetune.yaml: 600 s of audio) it caps the clip count"),
        "backend": Param("local", enum=["local", "sagemaker", "ec2"]),
        "instance_count": Param(1, type="integer", minimum=1, maximum=8),
        "register_as": Param("clinasr-asr", type="string", pattern=r"^[A-Za-z0-9_.-]+$"),
        "checkpoint_uri": Param(None, type=["string", "null"], pattern=r"^s3://.+",
                                description="s3:// prefix: checkpoints are mirrored there and a run resumes from it"),
        "replay_ratio": Param(None, type=["null", "number"], minimum=0, maximum=10,
                              description="general-English rows per clinical row (the replay set of "
                                          "configs/evalsets.yaml); empty: the trainer config's; 0: no replay "
                                          "and no distillation from the base"),
        "seed": Param(0, type="integer", minimum=0),
    },
)
def clinasr_training():
    @task
    def resolve_dataset(params=None, triggering_asset_events=None) -> str:
        from clinasr.tasks.training import resolve_dataset_uri

        return resolve_dataset_uri(params, triggering_asset_events, DATASET_ASSET)

    @task(multiple_outputs=True)
    def plan(dataset_uri: str, params=None, run_id=None) -> dict:
        from clinasr.tasks.training import training_plan

        return training_plan(dataset_uri, params, run_id)

    @task.branch
    def choose_backend(p: dict) -> str:
        return {"local": "train_local", "sagemaker": "train_sagemaker", "ec2": "launch_ec2"}[p["backend"]]

    @task(execution_timeout=timedelta(hours=72))
    def train_local(p: dict) -> dict:
        from clinasr.tasks.training import train_local as run

        return run(p)

    @task
    def launch_ec2(p: dict, params=None) -> dict:
        from clinasr.tasks.training import launch_ec2 as run

        return run(p, params)

    @task.sensor(poke_interval=60, timeout=72 * 3600, mode="reschedule")
    def wait_ec2(handle: dict) -> bool:
        from clinasr.tasks.training import ec2_done

        return ec2_done(handle)

    @task(trigger_rule="all_done")
    def cleanup_ec2(handle: dict | None) -> list:
        from clinasr.tasks.training import cleanup_ec2 as run

        return run(handle)

    @task(trigger_rule="none_failed_min_one_success", outlets=[CANDIDATE_ASSET])
    def candidate(p: dict, local_result: dict | None = None, params=None, run_id=None, outlet_events=None) -> dict:
        from clinasr.tasks.training import record_candidate

        result = record_candidate(p, local_result, params, run_id)
        outlet_events[CANDIDATE_ASSET].extra = {"model_uri": result["model_uri"], "dataset_uri": p["dataset_uri"]}
        return result

    p = plan(resolve_dataset())
    local = train_local(p)
    # SageMaker: the amazon provider's operator, deferred to the triggerer while the job runs. A retry starts
    # a job with a timestamped name that resumes from the same S3 checkpoint URI.
    train_sagemaker = SageMakerTrainingOperator(
        task_id="train_sagemaker", config=p["sagemaker_config"], aws_conn_id="clinasr_aws", deferrable=True,
        check_interval=60, action_if_job_exists="timestamp", print_log=False, execution_timeout=timedelta(hours=73))
    handle = launch_ec2(p)
    waited = wait_ec2(handle)
    choose_backend(p) >> [local, train_sagemaker, handle]
    waited >> cleanup_ec2(handle)
    [train_sagemaker, waited] >> candidate(p, local)


clinasr_training()
