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
    t = Transcriber(r["nemo_path"])
    assert isinstance(t.transcribe([__import__("numpy").zeros(16000, dtype="float32")])[0]["text"], str)
