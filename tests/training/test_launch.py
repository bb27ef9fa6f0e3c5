"""Launch backends: the exact requests sent to SageMaker and EC2, checked against moto's server (no real AWS)."""

import base64
import json

import boto3
import pytest

from clinasr.training.launch import (AWSLaunchConfig, ec2_request, job_name, launch, sagemaker_request, terminate_ec2,
                                     wait_for_job)

ARGS = {"base": {"nemo": "s3://clinasr/models/base.nemo"}, "trainer": "configs/trainer/gpu_finetune.yaml",
        "mlflow": {"experiment": "clinasr", "register_as": "clinasr-asr"}}
DS = "s3://clinasr/datasets/7d2ad7891918e2d3c9bc"


def test_job_names_are_deterministic_short_and_valid():
    a = job_name(DS, "manual__2026-11-25T02:45:39+00:00")
    assert a == job_name(DS, "manual__2026-11-25T02:45:39+00:00") != job_name(DS, "other")
    assert len(a) <= 63 and all(c.isalnum() or c == "-" for c in a)


def test_sagemaker_request_shape():
    cfg = AWSLaunchConfig(instance_count=2, spot=True, max_wait_s=4 * 24 * 3600, kms_key_id="arn:aws:kms:k",
                          subnets=["subnet-1"], security_groups=["sg-1"])
    req = sagemaker_request("job-1", DS, ARGS, cfg)
    assert req["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == DS + "/"
    assert req["ResourceConfig"] == {"InstanceType": "ml.p4d.24xlarge", "InstanceCount": 2, "VolumeSizeInGB": 200,
                                     "VolumeKmsKeyId": "arn:aws:kms:k"}
    assert req["CheckpointConfig"]["S3Uri"] == "s3://clinasr/training/job-1/checkpoints"
    assert req["EnableManagedSpotTraining"] and req["StoppingCondition"]["MaxWaitTimeInSeconds"] >= req["StoppingCondition"]["MaxRuntimeInSeconds"]
    assert req["VpcConfig"]["Subnets"] == ["subnet-1"] and req["EnableInterContainerTrafficEncryption"]
    spec = req["AlgorithmSpecification"]
    assert spec["ContainerArguments"][:2] == ["ml-stage-inline", "train"]
    inner = json.loads(base64.b64decode(spec["ContainerArguments"][3]))
    assert inner["dataset"] == "/opt/ml/input/data/train" and inner["resume"] is True and inner["base"] == ARGS["base"]


@pytest.mark.parametrize("bad, why", [(dict(instance_count=9), r"instance_count must be within 1\.\.8"),
                                      (dict(spot=True, max_wait_s=10), "spot training needs max_wait_s >= max_runtime_s")])
def test_bad_launch_config_is_rejected(bad, why):
    with pytest.raises(ValueError, match=why):
        sagemaker_request("j", DS, ARGS, AWSLaunchConfig(**bad))


def test_ec2_request_shape():
    req = ec2_request("job-2", DS, ARGS, AWSLaunchConfig(instance_type="ml.p4d.24xlarge", instance_count=8,
                                                         placement_group="clinasr-cluster"))
    assert req["Placement"] == {"GroupName": "clinasr-cluster"}
    assert "Placement" not in ec2_request("job-3", DS, ARGS, AWSLaunchConfig())
    assert req["MinCount"] == req["MaxCount"] == 8 and req["InstanceType"] == "p4d.24xlarge"
    assert req["InstanceInitiatedShutdownBehavior"] == "terminate" and req["ClientToken"] == "job-2"
    ud = req["UserData"]
    assert "--nnodes 8" in ud and "--rdzv-endpoint $MASTER:29400" in ud and "shutdown -h now" in ud
    assert f"aws s3 sync {DS}/ /data/dataset/" in ud
    assert {"Key": "clinasr-job", "Value": "job-2"} in req["TagSpecifications"][0]["Tags"]
    assert req["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True


@pytest.fixture
def aws(aws_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_server)     # moto's server answers every AWS API
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_sagemaker_backend_sends_the_request_and_is_idempotent(aws):
    cfg = AWSLaunchConfig()
    h = launch("sagemaker", ARGS, DS, "run-1", aws=cfg)
    again = launch("sagemaker", ARGS, DS, "run-1", aws=cfg)      # a task retry
    assert h == again
    job = boto3.client("sagemaker").describe_training_job(TrainingJobName=h["job_name"])
    assert job["AlgorithmSpecification"]["TrainingImage"] == cfg.image_uri
    assert job["ResourceConfig"]["InstanceType"] == "ml.p4d.24xlarge"


def test_ec2_backend_launches_tags_and_cleans_up(aws):
    h = launch("ec2", ARGS, DS, "run-2", aws=AWSLaunchConfig(instance_count=2))
    assert len(h["instance_ids"]) == 2
    assert sorted(terminate_ec2(h["job_name"])) == sorted(h["instance_ids"])
    states = boto3.client("ec2").describe_instances(InstanceIds=h["instance_ids"])
    assert {i["State"]["Name"] for r in states["Reservations"] for i in r["Instances"]} <= {"shutting-down", "terminated"}


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown launch backend"):
        launch("k8s", ARGS, DS, "r")


def test_waiting_for_a_sagemaker_job(aws):
    h = launch("sagemaker", ARGS, DS, "run-3", aws=AWSLaunchConfig())
    done = wait_for_job(h, poll_s=0.1, timeout_s=30, log=lambda m: None)
    assert done["status"] == "Completed"


def test_ec2_instances_are_terminated_when_waiting_fails(aws):
    h = launch("ec2", ARGS, DS, "run-4", aws=AWSLaunchConfig(instance_count=2))
    with pytest.raises(TimeoutError, match=r"EC2 job .* still running after 0s"):
        wait_for_job(h, poll_s=0.1, timeout_s=0.2, log=lambda m: None)
    states = boto3.client("ec2").describe_instances(InstanceIds=h["instance_ids"])
    assert {i["State"]["Name"] for r in states["Reservations"] for i in r["Instances"]} <= {"shutting-down", "terminated"}
