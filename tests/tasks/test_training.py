"""Task bodies of dags/clinasr_training.py (clinasr.tasks.training): the plan each backend gets, the EC2
launch/wait/cleanup through the Airflow AWS connection (moto's server stands in for EC2), the replay set."""

import base64
import json

import pytest

from clinasr import evalsets
from clinasr.training.launch import AWSLaunchConfig, sagemaker_request
from tests.test_evalsets import cfg  # noqa: F401 - fixture
from tests.training.test_launch import DS


def test_training_dag_ec2_tasks_launch_wait_and_always_clean_up(aws_server, monkeypatch, tmp_path):
    """The functions behind launch_ec2 / wait_ec2 / cleanup_ec2, through the Airflow AWS connection."""
    monkeypatch.setenv("AIRFLOW_CONN_CLINASR_AWS", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": aws_server, "region_name": "us-east-1"}}))
    monkeypatch.setenv("CLINASR_HOME", str(tmp_path))
    from clinasr.tasks import training as A

    params = {"backend": "ec2", "base": "nemo:s3://clinasr/models/base.nemo", "trainer_config": "configs/trainer/gpu_finetune.yaml", "replay_ratio": 0,
              "max_steps": 100, "batch_size": 16, "seed": 0, "register_as": "clinasr-asr", "instance_count": 2,
              "checkpoint_uri": "s3://clinasr/ckpt/run-9"}
    plan = A.training_plan(DS, params, "run-9")
    assert plan["sagemaker_config"] is None and plan["train_args"]["checkpoint_uri"] == "s3://clinasr/ckpt/run-9"
    handle = A.launch_ec2(plan, params)
    assert len(handle["instance_ids"]) == 2 and A.ec2_done(handle) is False
    assert sorted(A.cleanup_ec2(handle)) == sorted(handle["instance_ids"])
    assert A.cleanup_ec2(handle) == [] and A.cleanup_ec2(None) == []     # idempotent; skipped branch


def test_training_plan_for_sagemaker_is_the_operator_config():
    from clinasr.tasks import training as A

    params = {"backend": "sagemaker", "base": "pretrained:nvidia/parakeet-tdt-0.6b-v2", "trainer_config": "configs/trainer/gpu_finetune.yaml", "replay_ratio": 0,
              "max_steps": 100, "batch_size": 16, "seed": 0, "register_as": "clinasr-asr", "instance_count": 4}
    plan = A.training_plan(DS, params, "run-7")
    cfg = plan["sagemaker_config"]
    assert cfg == sagemaker_request(plan["job_name"], DS, plan["train_args"], AWSLaunchConfig(instance_count=4))
    assert cfg["ResourceConfig"]["InstanceCount"] == 4 and plan["job_name"] == A.training_plan(DS, params, "run-7")["job_name"]
    inner = json.loads(base64.b64decode(cfg["AlgorithmSpecification"]["ContainerArguments"][3]))
    assert inner["mlflow"]["tags"]["airflow_run_id"] == "run-7"     # how the DAG finds the version the job registers


def test_the_training_plan_resolves_the_replay_set_or_fails_naming_it(s3_env, cfg, tmp_path):
    """Every fine-tune replays general English: the plan carries the replay snapshot (SageMaker/EC2 jobs get
    the URI), and a plan whose replay set is not built fails before any training, naming the set."""
    from clinasr.tasks import training as A
    from clinasr.store import ObjectStore

    params = {"backend": "local", "base": "nemo:models/clinasr-base-en-multi/model.nemo",
              "trainer_config": "configs/trainer/cpu_finetune.yaml", "max_steps": 10, "seed": 0,
              "register_as": "clinasr-asr", "instance_count": 1}
    with pytest.raises(ValueError, match="replays 'general_replay' at 1.0:1 but the replay source is not available: "
                                         "evaluation set 'general_replay' has not been built"):
        A.training_plan("s3://b/datasets/x", params, "run-1")
    plan = A.training_plan("s3://b/datasets/x", {**params, "replay_ratio": 0}, "run-1")     # explicitly off
    assert plan["train_args"]["trainer_overrides"]["replay"] == {"ratio": 0} and "replay_source" not in plan["train_args"]
    assert plan["train_args"]["trainer_overrides"]["distill_from_base"] == 0   # distils on replay rows: off with them
    d = tmp_path / "replay"
    d.mkdir()
    (d / "train_manifest.jsonl").write_text("{}\n")
    snap = ObjectStore(s3_env).stage_snapshot(d, prefix="evalsets/general_replay")
    evalsets.record("general_replay", cfg, {"uri": snap.uri, "snapshot_id": snap.snapshot_id, "digest": snap.digest}, {},
                    s3_env)
    plan = A.training_plan("s3://b/datasets/x", {**params, "replay_ratio": 0.5}, "run-2")
    assert plan["train_args"]["replay_source"] == snap.uri
    # the Param changes the ratio; the rest of the config's replay (cpu_finetune.yaml's clinical_repeats) stays
    assert plan["train_args"]["trainer_overrides"]["replay"] == {"set": "general_replay", "ratio": 0.5, "clinical_repeats": 4}
