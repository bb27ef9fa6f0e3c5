"""Training launch backends behind one interface: ``local`` (default), ``sagemaker``, ``ec2``.

Every backend runs the same entry point, ``clinasr ml-stage train`` with the same JSON arguments:
locally through :mod:`clinasr.mlenv`, on AWS as the command of the ML image (docker/Dockerfile.ml).
The AWS requests are built by pure functions (:func:`sagemaker_request`, :func:`ec2_request`) so the
exact request each backend sends is reviewed and tested; :func:`launch` sends them with boto3.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field

from clinasr.settings import Settings


@dataclass
class AWSLaunchConfig:
    image_uri: str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/clinasr-ml:0.1.0"
    role_arn: str = "arn:aws:iam::123456789012:role/clinasr-sagemaker"
    instance_type: str = "ml.p4d.24xlarge"       # EC2: p4d.24xlarge
    instance_count: int = 1                       # 1..8 nodes
    output_uri: str = "s3://clinasr/training"
    checkpoint_uri: str | None = None             # default: <output_uri>/<job>/checkpoints
    volume_gb: int = 200
    max_runtime_s: int = 3 * 24 * 3600
    spot: bool = False
    max_wait_s: int | None = None                 # spot: >= max_runtime_s
    kms_key_id: str | None = None
    subnets: list[str] = field(default_factory=list)
    security_groups: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=lambda: {"project": "clinasr"})
    # EC2 only
    ami_id: str = "ami-0123456789abcdef0"         # a Deep Learning AMI with Docker + NVIDIA runtime
    launch_template: str | None = None
    instance_profile_arn: str | None = None
    placement_group: str | None = None            # a cluster placement group: multi-node NCCL over EFA needs one

    def validate(self) -> None:
        if not 1 <= self.instance_count <= 8:
            raise ValueError("instance_count must be within 1..8")
        if self.spot and (self.max_wait_s or 0) < self.max_runtime_s:
            raise ValueError("spot training needs max_wait_s >= max_runtime_s")


def job_name(dataset_uri: str, run_key: str, prefix: str = "clinasr-ft") -> str:
    """Deterministic, <= 63 chars, [a-zA-Z0-9-]: the same Airflow run (and its retries) gets the same name."""
    digest = hashlib.sha256(f"{dataset_uri}|{run_key}".encode()).hexdigest()[:12]
    snap = re.sub(r"[^a-zA-Z0-9]", "", dataset_uri.rstrip("/").split("/")[-1])[:12]
    return f"{prefix}-{snap}-{digest}"[:63].strip("-")


def container_args(train_args: dict) -> list[str]:
    """The ML image's command: the same stage, its arguments inline (base64 JSON)."""
    blob = base64.b64encode(json.dumps(train_args, sort_keys=True).encode()).decode()
    return ["ml-stage-inline", "train", "--args-b64", blob]


SM_RESOURCE_CONFIG = "/opt/ml/input/config/resourceconfig.json"   # SageMaker's cluster layout, on every instance


def sagemaker_torchrun(stage_argv: list[str], resource_config: dict, nproc_per_node: int,
                       master_addr: str | None = None, master_port: int = 29500) -> list[str]:
    """The command that makes a multi-instance SageMaker job one training: SageMaker starts the container once
    per instance, so each instance starts torchrun with its own node rank (its place in ``hosts``), the first
    host as the rendezvous, and ``nproc_per_node`` processes (8 on a p4d); global rank 0 alone tracks, saves
    and registers (see ``train``)."""
    hosts, me = list(resource_config.get("hosts") or []), resource_config.get("current_host")
    if not hosts or me not in hosts:
        raise ValueError(f"SageMaker resource config names no current host among its hosts: {resource_config}")
    return ["torchrun", "--nnodes", str(len(hosts)), "--nproc-per-node", str(nproc_per_node),
            "--node-rank", str(hosts.index(me)), "--master-addr", master_addr or hosts[0], "--master-port", str(master_port),
            "-m", "clinasr.cli", *stage_argv]


def sagemaker_request(name: str, dataset_uri: str, train_args: dict, cfg: AWSLaunchConfig) -> dict:
    """The CreateTrainingJob request (also the ``config`` of Airflow's SageMakerTrainingOperator)."""
    cfg.validate()
    ckpt = cfg.checkpoint_uri or f"{cfg.output_uri.rstrip('/')}/{name}/checkpoints"
    args = {**train_args, "dataset": "/opt/ml/input/data/train", "output_dir": "/opt/ml/checkpoints", "resume": True}
    req = {
        "TrainingJobName": name,
        "RoleArn": cfg.role_arn,
        "AlgorithmSpecification": {"TrainingImage": cfg.image_uri, "TrainingInputMode": "FastFile",
                                   "ContainerEntrypoint": ["clinasr"], "ContainerArguments": container_args(args)},
        "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": dataset_uri.rstrip("/") + "/", "S3DataDistributionType": "FullyReplicated"}}}],
        "OutputDataConfig": {"S3OutputPath": cfg.output_uri},
        "CheckpointConfig": {"S3Uri": ckpt, "LocalPath": "/opt/ml/checkpoints"},
        "ResourceConfig": {"InstanceType": cfg.instance_type, "InstanceCount": cfg.instance_count,
                           "VolumeSizeInGB": cfg.volume_gb},
        "StoppingCondition": {"MaxRuntimeInSeconds": cfg.max_runtime_s},
        "EnableManagedSpotTraining": cfg.spot,
        "Environment": {"MLFLOW_TRACKING_URI": train_args.get("mlflow", {}).get("tracking_uri", ""),
                        "NCCL_DEBUG": "WARN"},
        "Tags": [{"Key": k, "Value": v} for k, v in sorted(cfg.tags.items())],
    }
    if cfg.spot:
        req["StoppingCondition"]["MaxWaitTimeInSeconds"] = cfg.max_wait_s
    if cfg.kms_key_id:
        req["OutputDataConfig"]["KmsKeyId"] = cfg.kms_key_id
        req["ResourceConfig"]["VolumeKmsKeyId"] = cfg.kms_key_id
    if cfg.subnets:
        req["VpcConfig"] = {"Subnets": cfg.subnets, "SecurityGroupIds": cfg.security_groups}
        req["EnableNetworkIsolation"] = False
        req["EnableInterContainerTrafficEncryption"] = cfg.instance_count > 1
    return req


def ec2_user_data(name: str, dataset_uri: str, train_args: dict, cfg: AWSLaunchConfig) -> str:
    """Boot script for each p4d node: pull the ML image, rendezvous on node 0 (EC2 tag lookup), run torchrun
    across nodes, upload outputs to S3, and terminate the instance whatever happened."""
    args = {**train_args, "dataset": "/data/dataset", "output_dir": "/data/out", "resume": True}
    inline = " ".join(shlex.quote(a) for a in container_args(args))
    out = f"{cfg.output_uri.rstrip('/')}/{name}"
    return f"""#!/bin/bash
set -uo pipefail
trap 'aws s3 sync /data/out {out}/ --sse aws:kms; shutdown -h now' EXIT
TOKEN=$(curl -s -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
MD() {{ curl -s -H "X-aws-ec2-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/$1; }}
REGION=$(MD placement/region); ME=$(MD instance-id)
# node rank = position of this instance among the job's instances sorted by launch index
IDS=$(aws ec2 describe-instances --region $REGION --filters Name=tag:clinasr-job,Values={name} \\
      Name=instance-state-name,Values=pending,running --query 'Reservations[].Instances[].[AmiLaunchIndex,InstanceId,PrivateIpAddress]' --output text | sort -n)
RANK=$(echo "$IDS" | awk -v me=$ME '$2==me{{print NR-1}}'); MASTER=$(echo "$IDS" | head -1 | awk '{{print $3}}')
mkdir -p /data/dataset /data/out
aws s3 sync {dataset_uri.rstrip('/')}/ /data/dataset/
aws s3 sync {out}/checkpoints/ /data/out/checkpoints/ || true
aws ecr get-login-password --region $REGION | docker login --username AWS --password-stdin {cfg.image_uri.split('/')[0]}
docker run --gpus all --network host --ipc host -v /data:/data -e NCCL_SOCKET_IFNAME=ens -e FI_PROVIDER=efa -e FI_EFA_USE_DEVICE_RDMA=1 \\
  --entrypoint torchrun {cfg.image_uri} --nnodes {cfg.instance_count} --nproc-per-node 8 --node-rank $RANK \\
  --rdzv-backend c10d --rdzv-endpoint $MASTER:29400 --rdzv-id {name} -m clinasr.cli {inline}
"""


def ec2_request(name: str, dataset_uri: str, train_args: dict, cfg: AWSLaunchConfig) -> dict:
    """The RunInstances request: N p4d nodes, tagged with the job name, terminating on shutdown."""
    cfg.validate()
    tags = [{"Key": k, "Value": v} for k, v in sorted({**cfg.tags, "clinasr-job": name, "Name": name}.items())]
    req = {
        "MinCount": cfg.instance_count, "MaxCount": cfg.instance_count,
        "InstanceType": cfg.instance_type.removeprefix("ml."),
        "UserData": ec2_user_data(name, dataset_uri, train_args, cfg),
        "InstanceInitiatedShutdownBehavior": "terminate",
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": cfg.volume_gb, "VolumeType": "gp3",
                                                                    "Encrypted": True, **({"KmsKeyId": cfg.kms_key_id} if cfg.kms_key_id else {})}}],
        "ClientToken": name,  # idempotent: a retried task does not start a second fleet
    }
    if cfg.launch_template:
        req["LaunchTemplate"] = {"LaunchTemplateName": cfg.launch_template}
    else:
        req["ImageId"] = cfg.ami_id
    if cfg.instance_profile_arn:
        req["IamInstanceProfile"] = {"Arn": cfg.instance_profile_arn}
    if cfg.subnets:
        req["NetworkInterfaces"] = [{"DeviceIndex": 0, "SubnetId": cfg.subnets[0], "Groups": cfg.security_groups,
                                     "InterfaceType": "efa"}]
    if cfg.placement_group:
        req["Placement"] = {"GroupName": cfg.placement_group}
    if cfg.spot:
        req["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time"}}
    return req


def _aws(service: str, client=None):
    """A boto3 client; ``client`` is a factory (service -> client), e.g. one built from an Airflow connection."""
    if client is not None:
        return client(service)
    import boto3

    return boto3.client(service)


def launch(backend: str, train_args: dict, dataset_uri: str, run_key: str, settings: Settings | None = None,
           aws: AWSLaunchConfig | None = None, log=print, client=None) -> dict:
    """Start training on ``backend``. local: runs to completion and returns the result; sagemaker/ec2:
    submit and return the job handle. (The training DAG submits SageMaker jobs with the amazon provider's
    deferrable SageMakerTrainingOperator from :func:`sagemaker_request`, and waits for EC2 with a sensor.)"""
    if backend == "local":
        from clinasr import mlenv

        return {"backend": "local", **mlenv.run_stage("train", {**train_args, "dataset": dataset_uri}, settings, log=log)}
    aws = aws or AWSLaunchConfig()
    name = job_name(dataset_uri, run_key)
    if backend == "sagemaker":
        sm = _aws("sagemaker", client)
        from botocore.exceptions import ClientError

        try:
            sm.create_training_job(**sagemaker_request(name, dataset_uri, train_args, aws))
        except ClientError as e:  # a retry of the same run finds its job already there
            if "already exists" not in str(e) and "ResourceInUse" not in str(e):
                raise
        return {"backend": "sagemaker", "job_name": name}
    if backend == "ec2":
        ec2 = _aws("ec2", client)
        r = ec2.run_instances(**ec2_request(name, dataset_uri, train_args, aws))
        return {"backend": "ec2", "job_name": name, "instance_ids": [i["InstanceId"] for i in r["Instances"]]}
    raise ValueError(f"unknown launch backend {backend!r}: use local, sagemaker or ec2")


def wait_for_job(handle: dict, poll_s: float = 60.0, timeout_s: float = 72 * 3600, log=print, client=None) -> dict:
    """Block until an AWS training job ends (the local backend has already ended).

    SageMaker: polls DescribeTrainingJob; a Failed/Stopped job raises with SageMaker's failure reason.
    EC2: polls the job's instances until all have terminated (each node shuts itself down after uploading
    its outputs); on timeout or any error the instances are terminated — they are never left running.
    """
    import time

    if handle["backend"] == "local":
        return handle
    deadline = time.time() + timeout_s
    if handle["backend"] == "sagemaker":
        sm = _aws("sagemaker", client)
        while True:
            job = sm.describe_training_job(TrainingJobName=handle["job_name"])
            status = job["TrainingJobStatus"]
            log(f"[launch] SageMaker job {handle['job_name']}: {status} ({job.get('SecondaryStatus', '')})")
            if status == "Completed":
                return {**handle, "status": status, "model_artifacts": job.get("ModelArtifacts", {}).get("S3ModelArtifacts")}
            if status in ("Failed", "Stopped"):
                raise RuntimeError(f"SageMaker job {handle['job_name']} {status}: {job.get('FailureReason', 'no reason given')}")
            if time.time() > deadline:
                sm.stop_training_job(TrainingJobName=handle["job_name"])
                raise TimeoutError(f"SageMaker job {handle['job_name']} still {status} after {timeout_s:.0f}s: stopped it")
            time.sleep(poll_s)
    if handle["backend"] == "ec2":
        try:
            while True:
                states = ec2_states(handle["instance_ids"], client)
                log(f"[launch] EC2 job {handle['job_name']}: {', '.join(states)}")
                if all(st == "terminated" for st in states):
                    return {**handle, "status": "terminated"}
                if time.time() > deadline:
                    raise TimeoutError(f"EC2 job {handle['job_name']} still running after {timeout_s:.0f}s")
                time.sleep(poll_s)
        except BaseException:
            log(f"[launch] terminating the instances of {handle['job_name']}")
            terminate_ec2(handle["job_name"], client)
            raise
    raise ValueError(f"unknown backend in {handle}")


def ec2_states(instance_ids: list[str], client=None) -> list[str]:
    res = _aws("ec2", client).describe_instances(InstanceIds=instance_ids)
    return [i["State"]["Name"] for r in res["Reservations"] for i in r["Instances"]]


def terminate_ec2(job: str, client=None) -> list[str]:
    """Cleanup for the EC2 backend: terminate every instance of the job (idempotent)."""
    ec2 = _aws("ec2", client)
    res = ec2.describe_instances(Filters=[{"Name": "tag:clinasr-job", "Values": [job]},
                                          {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])
    ids = [i["InstanceId"] for r in res["Reservations"] for i in r["Instances"]]
    if ids:
        ec2.terminate_instances(InstanceIds=ids)
    return ids
