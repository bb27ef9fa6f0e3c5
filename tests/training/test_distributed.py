"""The multi-process launch path on CPUs: the same entry point the EC2/SageMaker nodes run under torchrun,
here as 2 processes on one machine with DDP over gloo (real NeMo model, real data, real collectives)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ml


def test_torchrun_two_cpu_processes_train_one_model(tiny_dataset, tmp_path):
    from clinasr.inference import Transcriber

    out = tmp_path / "run"
    args = {"dataset": str(tiny_dataset), "output_dir": str(out), "mlflow": {"enabled": False},
            "trainer_overrides": {"max_steps": 6, "val_check_interval": 6, "checkpoint_every_n_steps": 3,
                                  "batch_size": 2, "strategy": "ddp"}}
    (tmp_path / "args.json").write_text(json.dumps(args))
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    p = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "clinasr.cli", "ml-stage", "train",
                        "--args-json", str(tmp_path / "args.json"), "--result-json", str(tmp_path / "result.json")],
                       capture_output=True, text=True, timeout=900, env=env)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-3000:]
    assert "2 processes (2 per node x 1 nodes): DDP over gloo on CPUs" in log
    assert log.count("[train] step 6/6") == 1                  # one progress log per run, from rank 0
    r = json.loads((tmp_path / "result.json").read_text())      # rank 0's result
    assert r["global_step"] == 6 and Path(r["nemo_path"]).exists()
    assert (out / "checkpoints" / "last.ckpt").exists() and not (out / "rank1" / "model.nemo").exists()
    # both ranks built the same tokenizer from the same data (they must agree on the output vocabulary)
    vocab = sorted(out.glob("**/tokenizer*/vocab.txt"))
    assert len(vocab) == 2 and vocab[0].read_text() == vocab[1].read_text()
    # the exported model is the one the two processes trained: the weights of the step-6 checkpoint, loaded by the
    # inference path (6 steps from a random start transcribe little or nothing: no text is expected of it)
    import torch

    t = Transcriber(r["nemo_path"])
    final = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 6 and t.n_params == r["n_params"]
    state = t.model.state_dict()
    assert state.keys() == final["state_dict"].keys()
    assert all(torch.equal(v, final["state_dict"][k]) for k, v in state.items())


def test_a_two_instance_sagemaker_job_is_one_training(tiny_dataset, tmp_path):
    """SageMaker starts the container once per instance. Two simulated instances (two process groups, each with
    its own /opt/ml/input/config/resourceconfig.json) run the container's exact command; each must become one
    node of a single torchrun job (not two separate trainings), and only global rank 0 saves the model."""
    import base64

    from clinasr.training.launch import container_args, sagemaker_torchrun
    from tests.conftest import free_port

    args = {"dataset": str(tiny_dataset), "output_dir": str(tmp_path / "run"), "mlflow": {"enabled": False},
            "trainer_overrides": {"max_steps": 4, "val_check_interval": 4, "checkpoint_every_n_steps": 4,
                                  "batch_size": 2, "strategy": "ddp"}}
    argv = container_args(args)
    assert json.loads(base64.b64decode(argv[3])) == json.loads(json.dumps(args, sort_keys=True))
    port = free_port()
    procs = []
    for host in ("algo-1", "algo-2"):
        rc = tmp_path / host / "resourceconfig.json"
        rc.parent.mkdir()
        rc.write_text(json.dumps({"current_host": host, "hosts": ["algo-1", "algo-2"], "network_interface_name": "eth0"}))
        env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")},
               "CLINASR_SM_RESOURCECONFIG": str(rc), "CLINASR_NPROC_PER_NODE": "1",
               "CLINASR_MASTER_ADDR": "127.0.0.1",   # SageMaker's hosts resolve "algo-1"; here it is loopback
               "CLINASR_MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "clinasr.cli", *argv], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(x[-2000:] for x in logs)
    assert "SageMaker algo-1: node 0 of 2" in logs[0] and "SageMaker algo-2: node 1 of 2" in logs[1]
    both = "".join(logs)
    assert "2 processes (1 per node x 2 nodes): DDP over gloo on CPUs" in both     # one job of two nodes
    assert both.count("[train] step 4/4") == 1                                      # one progress log: rank 0
    result = json.loads([x for x in logs[0].splitlines() if x.startswith("{")][-1])
    assert result["global_step"] == 4 and Path(result["nemo_path"]).exists()
    assert not (tmp_path / "run" / "rank1" / "model.nemo").exists()                # rank 1 saved no model
    cmd = sagemaker_torchrun(["ml-stage-inline", "train"], {"current_host": "algo-3", "hosts": [f"algo-{i}" for i in range(1, 9)]}, 8)
    assert cmd[cmd.index("--node-rank") + 1] == "2" and cmd[cmd.index("--master-addr") + 1] == "algo-1"
    assert cmd[cmd.index("--nnodes") + 1] == "8" and cmd[cmd.index("--nproc-per-node") + 1] == "8"
    with pytest.raises(ValueError, match="names no current host"):
        sagemaker_torchrun([], {"current_host": "algo-9", "hosts": ["algo-1"]}, 8)
