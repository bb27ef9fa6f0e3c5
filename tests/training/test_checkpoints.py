"""Resuming across strategies and GPU counts (clinasr.training.checkpoints), on CPU with real DeepSpeed ZeRO-2
engines (gloo, under torchrun: tests/training/zero_worker.py) and the real NeMo training loop.

Ground truth is plain torch AdamW on the same data: ZeRO-2 over W processes, each on its 1/W of a global batch,
trains exactly as one process on the whole batch, so its checkpoint, merged, must hold the same weights and Adam
moments, and one more step after loading it into any number of processes must land on the same weights."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def torchrun(n: int, *args: str) -> None:
    import os

    env = {**os.environ, "PYTHONPATH": f"{REPO / 'include'}:{HERE}", "OMP_NUM_THREADS": "1",
           "DS_ACCELERATOR": "cpu"}
    p = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", str(n),
                        str(HERE / "zero_worker.py"), *args], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]


def reference(steps: int):
    """The toy model and its AdamW after ``steps`` steps on the whole batch, one process."""
    sys.path.insert(0, str(HERE))
    import torch
    from zero_worker import CLIP, Toy, batch, loss_of, optimizer

    model = Toy()
    opt = optimizer(model.param_groups())
    for s in range(1, steps + 1):
        opt.zero_grad()
        loss_of(model, batch(s, 0, 1)).backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], CLIP)
        opt.step()
    names = {id(p): n for n, p in model.named_parameters()}
    moments = {names[id(p)]: st for p, st in opt.state.items()}
    return model, opt, moments, torch


@pytest.mark.parametrize("saved_world,load_world,elastic", [(2, 1, False), (1, 2, True)])
def test_a_zero2_checkpoint_merges_exactly_and_resumes_on_another_gpu_count(tmp_path, saved_world, load_world, elastic):
    from clinasr.training.checkpoints import FULL_OPTIMIZER_KEY, describe, loads, zero_to_full

    ck = tmp_path / "last.ckpt"
    torchrun(saved_world, "toy-train", str(ck), "3", "1" if elastic else "0")
    info = describe(ck)
    assert info["format"] == "deepspeed" and info["world_size"] == saved_world and loads(ck)
    model, opt, moments, torch = reference(3)

    full = tmp_path / "full.ckpt"
    stats = zero_to_full(ck, full)
    assert stats == {"params": 5, "global_step": 3, "world_size": saved_world}
    f = torch.load(full, weights_only=False)
    assert f["loops"] == {"marker": 1} and f["optimizer_states"] == []       # Lightning's client state travels
    assert f["state_dict"].keys() == model.state_dict().keys()              # frozen layer and buffer included
    for k, v in model.state_dict().items():
        assert torch.allclose(f["state_dict"][k], v, atol=1e-6), k
    adam = f[FULL_OPTIMIZER_KEY]
    assert adam["step"] == 3 and set(adam["state"]) == set(moments) and "frozen.weight" not in adam["state"]
    for n, st in moments.items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(adam["state"][n][key], st[key], atol=1e-7, rtol=1e-5), (n, key)

    # resume on the other GPU count: the converted file, or (1 -> 2) Lightning's own single-file form, goes into
    # a fresh ZeRO-2 engine's partitions; one more step lands where the reference's 4th step does
    if load_world == 2:
        full = tmp_path / "lightning.ckpt"
        torch.save({"state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()]}, full)
    result = tmp_path / "after.pt"
    torchrun(load_world, "toy-load", str(full), "3", str(result))
    after = torch.load(result, weights_only=False)
    assert after["restored"] == 5
    ref4, _, _, _ = reference(4)
    for k, v in ref4.state_dict().items():
        assert torch.allclose(after["state_dict"][k], v, atol=1e-6), k
    # and without the moments it would not: Adam's first step from zero moments moves each weight by ~lr
    fresh = Toy_after_fresh_adam(model, torch)
    assert any(not torch.allclose(fresh[k], v, atol=1e-4) for k, v in ref4.state_dict().items())


def Toy_after_fresh_adam(model, torch):  # noqa: N802 — the counterfactual: weights loaded, Adam restarted
    import copy

    from zero_worker import CLIP, batch, loss_of, optimizer

    m = copy.deepcopy(model)
    opt = optimizer(m.param_groups())
    opt.zero_grad()
    loss_of(m, batch(4, 0, 1)).backward()
    torch.nn.utils.clip_grad_norm_([p for p in m.parameters() if p.requires_grad], CLIP)
    opt.step()
    return m.state_dict()


def test_resume_path_decides_per_form_and_gpu_count(tmp_path):
    """What a run resumes from: a file as it is (any strategy: DDP reads it, ZeRO-2 loads it into its
    partitions); a ZeRO-2 directory as it is under ZeRO-2 on its own GPU count, else its full conversion; a
    conversion that cannot run stops the run with the commands that convert it."""
    import torch

    from clinasr.training.checkpoints import resume_path
    from clinasr.training.common import TrainingError

    logs = []
    f = tmp_path / "file.ckpt"
    torch.save({"state_dict": {}}, f)
    assert resume_path(f, False, 1, tmp_path, logs.append) == f and not logs
    assert resume_path(f, True, 2, tmp_path, logs.append) == f and "into the partitions" in logs[-1]

    d = tmp_path / "last.ckpt"
    (d / "checkpoint").mkdir(parents=True)
    (d / "latest").write_text("checkpoint")
    for r in range(2):
        torch.save({"optimizer_state_dict": {}}, d / "checkpoint" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
    torch.save({"module": {}}, d / "checkpoint" / "mp_rank_00_model_states.pt")
    assert resume_path(d, True, 2, tmp_path, logs.append) == d
    for deepspeed_run, world, why in [(True, 1, "written by 2 GPU(s) and this run has 1"),
                                      (False, 1, "does not use DeepSpeed")]:
        with pytest.raises(TrainingError) as e:   # this directory is no real checkpoint: the conversion fails
            resume_path(d, deepspeed_run, world, tmp_path, logs.append)
        msg = str(e.value)
        assert why in msg and "zero_to_fp32.py" in msg and "convert_zero_checkpoint_to_fp32_state_dict" in msg


def test_a_deepspeed_directory_is_a_checkpoint_not_a_corrupt_file(tmp_path):
    """The resume check used to torch.load last.ckpt: a ZeRO-2 directory failed it, was moved aside as corrupt and
    the run started over. A complete directory is kept; one missing a shard is moved aside like a broken file."""
    import torch

    from clinasr.training.progress import _usable_checkpoint

    def zero_dir(p, shards=2):
        (p / "checkpoint").mkdir(parents=True)
        (p / "latest").write_text("checkpoint")
        torch.save({"module": {}}, p / "checkpoint" / "mp_rank_00_model_states.pt")
        for r in range(shards):
            torch.save({}, p / "checkpoint" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")

    ck = tmp_path / "checkpoints"
    zero_dir(ck / "last.ckpt")
    logs = []
    _usable_checkpoint(ck, logs.append)
    assert (ck / "last.ckpt" / "latest").exists() and not logs
    (ck / "last.ckpt" / "checkpoint" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"trunc")
    zero_dir(ck / "step000006.ckpt")
    _usable_checkpoint(ck, logs.append)
    assert (ck / "last.ckpt.corrupt").is_dir() and (ck / "last.ckpt" / "latest").exists()
    assert "resuming from step000006.ckpt" in logs[-1]


def test_a_zero2_checkpoint_resumes_in_a_cpu_training_run(tiny_dataset, tmp_path):
    """End to end: a real training run's checkpoint, re-saved as a two-process ZeRO-2 directory, resumes in the
    NeMo training loop without DeepSpeed (here: CPU): converted, then Lightning restores weights, step and LR
    schedule, and Adam's moments come back by name; the resumed run then writes its own single-file last.ckpt."""
    import torch
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    from clinasr.training.train import train

    steps = {"max_steps": 6, "val_check_interval": 6, "checkpoint_every_n_steps": 6, "batch_size": 4, "keep_last_k": 1}
    run = tmp_path / "run"
    args = {"dataset": str(tiny_dataset), "output_dir": str(run), "trainer_overrides": steps, "mlflow": {"enabled": False}}
    r = train(args, log=lambda m: None)
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    model = EncDecRNNTBPEModel.restore_from(r["nemo_path"], map_location="cpu")
    names = tmp_path / "names.json"
    names.write_text(json.dumps([n for n, _ in model.named_parameters()]))
    zero = tmp_path / "zero.ckpt"
    torchrun(2, "mirror", str(last), str(names), str(zero))
    last.unlink()
    zero.rename(last)

    from tests.training.test_train import ResumeProbe

    probe = ResumeProbe()
    logs = []
    r2 = train({**args, "trainer_overrides": {**steps, "max_steps": 9}}, log=logs.append, callbacks=[probe])
    assert r2["global_step"] == 9 and r2["resumed_from"].endswith("resume/full.ckpt")
    assert any("DeepSpeed ZeRO-2 checkpoint that this run does not use DeepSpeed" in m for m in logs)
    assert any("Adam state restored for" in m for m in logs)
    assert probe.start_step == saved["global_step"] == 6 and probe.batches == 3
    assert probe.lr_epoch == saved["lr_schedulers"][0]["last_epoch"] == 6
    for k, v in saved["state_dict"].items():
        assert torch.allclose(probe.weights[k].float(), v.float(), atol=1e-6), k
    opt = saved["optimizer_states"][0]["state"]
    got = probe.optimizer["state"]
    assert len(got) == len(opt)
    for i, st in opt.items():
        assert torch.allclose(got[i]["exp_avg"], st["exp_avg"], atol=1e-7) and float(got[i]["step"]) == float(st["step"])
    assert probe.optimizer["param_groups"][0]["lr"] == saved["optimizer_states"][0]["param_groups"][0]["lr"]
    assert last.is_file()            # the ZeRO-2 directory was replaced by this run's own single file


def test_the_s3_mirror_carries_a_deepspeed_directory_and_its_newest_form(s3_env, tmp_path):
    """A ZeRO-2 last.ckpt is a directory: mirrored file by file, restored on another machine with only the shards
    of its newest upload (a 2-GPU directory followed by a 1-GPU one leaves a stale rank-1 shard in the bucket),
    and a later single-file last.ckpt wins over the directory."""
    import shutil

    import torch

    from clinasr.training.checkpoints import describe
    from clinasr.training.progress import _CheckpointMirror

    from clinasr.store import ObjectStore

    ObjectStore(s3_env).ensure_bucket()
    uri = f"s3://{s3_env.bucket}/ckpt/run1"
    src = tmp_path / "a" / "checkpoints"

    def zero_dir(shards):
        last = src / "last.ckpt"
        shutil.rmtree(last, ignore_errors=True)
        (last / "checkpoint").mkdir(parents=True)
        (last / "latest").write_text("checkpoint")
        torch.save({"module": {}}, last / "checkpoint" / "mp_rank_00_model_states.pt")
        for r in range(shards):
            torch.save({"r": r}, last / "checkpoint" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")

    logs = []
    mirror = _CheckpointMirror(uri, src, logs.append)
    zero_dir(2)
    mirror.upload()
    assert "4 files" in logs[-1]
    zero_dir(1)
    mirror.upload()
    dst = tmp_path / "b" / "checkpoints"
    _CheckpointMirror(uri, dst, logs.append).restore()
    assert "a DeepSpeed directory" in logs[-1] and describe(dst / "last.ckpt")["world_size"] == 1

    shutil.rmtree(src / "last.ckpt")
    torch.save({"global_step": 9}, src / "last.ckpt")
    mirror.upload()
    other = tmp_path / "c" / "checkpoints"
    _CheckpointMirror(uri, other, logs.append).restore()
    assert (other / "last.ckpt").is_file()
    assert torch.load(other / "last.ckpt", weights_only=False)["global_step"] == 9
