"""Task bodies of ``dags/clinasr_training.py``: the dataset to train on, the training plan decided once per
run (local, SageMaker or EC2), the local run, the EC2 launch/wait/cleanup, and the candidate it registered."""

from __future__ import annotations

from clinasr.settings import Settings
from clinasr.tasks.common import _sha, declare, log, work_dir


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


AWS_CONN_ID = "clinasr_aws"   # SageMaker/EC2 API access (the platform points it at its loopback AWS server)


def aws_client(service: str):
    """A boto3 client from the Airflow AWS connection (credentials, region, endpoint live there)."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=AWS_CONN_ID, client_type=service).get_conn()


def training_plan(dataset_uri: str, params: dict, run_id: str) -> dict:
    """Everything a backend needs, decided once per run (so a retry sends the same job): the stage
    arguments, the deterministic job name, and for SageMaker the full CreateTrainingJob request."""
    import os

    from clinasr.training.launch import AWSLaunchConfig, job_name, sagemaker_request

    settings = Settings.from_env()
    backend = params["backend"]
    name = job_name(dataset_uri, run_id)
    ckpt_uri = params.get("checkpoint_uri") or None
    train_args = {
        "base": base_spec(params["base"]), "trainer": params["trainer_config"],
        "output_dir": str(work_dir(settings, "clinasr_training", run_id) / "train"),
        "trainer_overrides": {"max_steps": int(params["max_steps"]),
                              **({"batch_size": int(params["batch_size"])} if params.get("batch_size") else {})},
        "seed": int(params["seed"]), "resume": True,
        "mlflow": {"experiment": "clinasr-training", "register_as": params["register_as"],
                   "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI", settings.mlflow_uri),
                   "run_name": f"airflow-{run_id}"[:120],
                   "tags": {"airflow_run_id": run_id, "dataset_uri": dataset_uri,
                            # what it was fine-tuned from: the evaluation's baseline while there is no production
                            **({"base_model": params["base"].split(":", 1)[1]} if params["base"].startswith("nemo:") else {})}},
    }
    if ckpt_uri:
        train_args["checkpoint_uri"] = ckpt_uri
    replay = replay_for(params)
    if replay:
        train_args["trainer_overrides"]["replay"] = replay["replay"]
        train_args["replay_source"] = replay["uri"]
    elif params.get("replay_ratio") is not None:   # replay off: so is the distillation on the replay rows
        train_args["trainer_overrides"].update({"replay": {"ratio": 0}, "distill_from_base": 0})
    plan = {"backend": backend, "dataset_uri": dataset_uri, "job_name": name, "train_args": train_args,
            "sagemaker_config": None}
    if backend == "sagemaker":
        aws = AWSLaunchConfig(instance_count=int(params["instance_count"]), checkpoint_uri=ckpt_uri)
        plan["sagemaker_config"] = sagemaker_request(name, dataset_uri, train_args, aws)
    return plan


def replay_for(params: dict) -> dict | None:
    """The run's general-English replay ({"replay": trainer option, "uri": snapshot}), resolved when the run is
    planned: a fine-tune whose replay source is missing fails here, before any training, naming the set."""
    from clinasr import evalsets
    from clinasr.training.train import load_yaml

    replay = dict(load_yaml(params["trainer_config"]).get("replay") or {})
    if params.get("replay_ratio") is not None:
        replay["ratio"] = float(params["replay_ratio"])
    if float(replay.get("ratio", 0) or 0) <= 0:
        return None
    name = replay.setdefault("set", "general_replay")
    try:
        entry = evalsets.resolve(name)
    except evalsets.EvalSetError as e:
        raise ValueError(f"fine-tuning replays {name!r} at {replay['ratio']}:1 but the replay source is not available: "
                         f"{e} (or set the replay_ratio Param to 0)") from None
    return {"replay": replay, "uri": entry["uri"], "config_hash": entry["config_hash"]}


def train_local(plan: dict) -> dict:
    from clinasr.training.launch import launch

    return launch("local", plan["train_args"], plan["dataset_uri"], plan["job_name"], Settings.from_env(), log=log.info)


def launch_ec2(plan: dict, params: dict) -> dict:
    from clinasr.training.launch import AWSLaunchConfig, launch

    return launch("ec2", plan["train_args"], plan["dataset_uri"], plan["job_name"],
                  aws=AWSLaunchConfig(instance_count=int(params["instance_count"]),
                                      checkpoint_uri=plan["train_args"].get("checkpoint_uri")),
                  log=log.info, client=aws_client)


def ec2_done(handle: dict) -> bool:
    from clinasr.training.launch import ec2_states

    states = ec2_states(handle["instance_ids"], client=aws_client)
    log.info("EC2 job %s: %s", handle["job_name"], ", ".join(states))
    return all(st == "terminated" for st in states)


def cleanup_ec2(handle: dict | None) -> list[str]:
    """Always runs after the EC2 branch (also when it was skipped or failed): terminate what is left."""
    from clinasr.training.launch import terminate_ec2

    if not handle:
        return []
    job = handle["job_name"]
    ids = terminate_ec2(job, client=aws_client)
    log.info("EC2 job %s: %s", job, f"terminated {ids}" if ids else "no instance left running")
    return ids


def find_registered_version(register_as: str, run_id: str) -> dict:
    """The model version an AWS job registered (the ML container registers it, tagged with the Airflow run)."""
    from clinasr import registry

    c = registry.client()
    found = c.search_model_versions(f"name = '{register_as}' and tags.airflow_run_id = '{run_id}'")
    if not found:
        raise RuntimeError(f"the training job finished but registered no version of {register_as!r} tagged "
                           f"airflow_run_id={run_id!r} in MLflow: check the job's logs (MLFLOW_TRACKING_URI "
                           "must be reachable from the training instances)")
    mv = max(found, key=lambda v: int(v.version))
    return {"mlflow_run_id": mv.run_id, "model_version": str(mv.version),
            "model_uri": f"models:/{register_as}/{mv.version}"}


def record_candidate(plan: dict, local_result: dict | None, params: dict, run_id: str) -> dict:
    """The candidate of this run, whichever backend trained it; provenance links it to its dataset."""
    settings = Settings.from_env()
    result = dict(local_result or {})
    if plan["backend"] != "local":
        result = {"backend": plan["backend"], "job_name": plan["job_name"],
                  **find_registered_version(params["register_as"], run_id)}
    if not result.get("model_uri"):
        raise RuntimeError("training finished without registering a model (register_as was empty?)")
    if result.get("mlflow_run_id"):
        log.info("MLflow run: %s/#/experiments/%s/runs/%s", settings.mlflow_uri, result.get("mlflow_experiment_id", "0"),
                 result["mlflow_run_id"])
    dataset_uri = plan["dataset_uri"]
    replay = plan["train_args"].get("replay_source")
    declare(inputs=[{"uri": dataset_uri, "kind": "dataset"}] + (
                [{"uri": params["base"].split(":", 1)[1], "kind": "base-model"}] if not params["base"].startswith("config:") else [])
            + ([{"uri": replay, "kind": "replay-set"}] if replay else []),
            outputs=[{"uri": result["model_uri"], "kind": "model", "sha256": _sha(result.get("nemo_path"))}],
            mlflow={"run_id": result.get("mlflow_run_id"), "model_version": result.get("model_version")},
            job={"backend": plan["backend"], "name": plan["job_name"]})
    return {k: v for k, v in result.items() if k in ("backend", "job_name", "mlflow_run_id", "model_version", "model_uri",
                                                    "global_step", "train_seconds", "metrics", "n_params")}
