"""Real NeMo FastConformer-TDT training on CPU (tiny config): registration, resume, bad input."""

import json

import pytest

from clinasr.training.train import TrainingError, prepare_dataset, train

pytestmark = pytest.mark.ml

STEPS = {"max_steps": 12, "val_check_interval": 6, "checkpoint_every_n_steps": 6, "batch_size": 4, "keep_last_k": 2}


@pytest.fixture
def dataset(tiny_dataset):
    return tiny_dataset


@pytest.fixture
def tracking(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_server


def test_train_registers_a_candidate_and_resumes(dataset, tracking, tmp_path):
    from mlflow import MlflowClient

    logs = []
    args = {"dataset": str(dataset), "output_dir": str(tmp_path / "run"), "trainer_overrides": STEPS,
            "mlflow": {"experiment": "t", "register_as": "clinasr-test"}}
    r = train(args, log=logs.append)
    assert r["global_step"] == 12 and r["n_params"] > 100_000
    assert any("CUDA-only" in m for m in logs) and any("step 12/12" in m for m in logs)
    # steady throughput: steps 5-12 after 3 warm-up intervals, less step 7's (checkpoint and validation after step 6)
    assert r["metrics"]["steady_steps"] == 7 and r["metrics"]["steady_audio_s_per_s"] > 0
    c = MlflowClient(tracking)
    mv = c.get_model_version_by_alias("clinasr-test", "candidate")
    assert mv.version == r["model_version"] and mv.run_id == r["mlflow_run_id"]
    assert mv.tags["dataset"] == str(dataset)
    run = c.get_run(r["mlflow_run_id"])
    assert run.data.params["accelerator"] == "cpu" and "val_wer" in run.data.metrics
    assert {a.path for a in c.list_artifacts(r["mlflow_run_id"])} >= {"model", "config", "tensorboard", "data"}
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and len(ckpts) <= 3

    # resume: a longer run continues from last.ckpt in the same MLflow run — the weights, the optimizer state and
    # the LR schedule position at the start of the resumed run are the checkpoint's, and only 6 steps are run
    import torch

    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    probe = ResumeProbe()
    logs.clear()
    r2 = train({**args, "trainer_overrides": {**STEPS, "max_steps": 18}}, log=logs.append, callbacks=[probe])
    assert r2["global_step"] == 18 and r2["mlflow_run_id"] == r["mlflow_run_id"]
    assert any("resuming from" in m for m in logs)
    assert probe.start_step == saved["global_step"] == 12 and probe.batches == 6
    assert probe.lr_epoch == saved["lr_schedulers"][0]["last_epoch"] == 12
    assert all(torch.equal(probe.weights[k], v) for k, v in saved["state_dict"].items())
    opt = saved["optimizer_states"][0]["state"]
    assert opt and all(torch.equal(probe.optimizer["state"][i]["exp_avg"], st["exp_avg"]) for i, st in opt.items())
    assert c.get_model_version_by_alias("clinasr-test", "candidate").version == r2["model_version"] != r["model_version"]

    # the saved model is the trained one: its weights are those of the final checkpoint (step 18), and NeMo's own
    # transcribe and clinasr's inference path agree on it. (18 steps from a random start transcribe little or
    # nothing: the text is not checked here; tiny_model, fine-tuned from the base model, is checked for text.)
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    from clinasr.inference import Transcriber

    m = EncDecRNNTBPEModel.restore_from(r2["nemo_path"], map_location="cpu")
    final = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 18 and m.state_dict().keys() == final["state_dict"].keys()
    assert all(torch.equal(v, final["state_dict"][k]) for k, v in m.state_dict().items())
    row = json.loads((dataset / "val_manifest.jsonl").read_text().splitlines()[0])
    hyp = m.transcribe([str(dataset / row["audio_filepath"])], batch_size=1, verbose=False)[0]
    from clinasr import audio

    ours = Transcriber(r2["nemo_path"]).transcribe([audio.load(dataset / row["audio_filepath"])])[0]["text"]
    assert (hyp.text if hasattr(hyp, "text") else hyp) == ours

    # fine-tune the registered model (registry reference), keeping its tokenizer, then with a new vocabulary
    ft = train({**args, "output_dir": str(tmp_path / "ft"), "base": {"nemo": "models:/clinasr-test@candidate"},
                "trainer_overrides": {**STEPS, "max_steps": 4}}, log=logs.append)
    assert ft["global_step"] == 4 and ft["n_params"] == r2["n_params"]
    assert any("fine-tune of models:/clinasr-test@candidate" in m for m in logs)
    logs.clear()
    nv = train({**args, "output_dir": str(tmp_path / "nv"), "trainer_overrides": {**STEPS, "max_steps": 2},
                "base": {"nemo": r2["nemo_path"], "change_vocabulary": True},
                "mlflow": {"experiment": "t"}}, log=logs.append)
    assert nv["global_step"] == 2 and any("vocabulary" in m for m in logs)


class ResumeProbe:
    """What the model, optimizer and LR schedule hold when the (resumed) run starts, and how many steps it runs."""

    def __new__(cls):
        import copy

        import lightning.pytorch as pl

        class Probe(pl.Callback):
            batches = 0

            def on_train_start(self, trainer, module):
                self.start_step = trainer.global_step
                self.weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
                self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())
                self.lr_epoch = trainer.lr_scheduler_configs[0].scheduler.last_epoch

            def on_train_batch_end(self, *a):
                self.batches += 1

        return Probe()


def test_a_corrupt_last_checkpoint_falls_back_to_the_newest_that_loads(dataset, tmp_path):
    args = {"dataset": str(dataset), "output_dir": str(tmp_path / "run"), "mlflow": {"enabled": False},
            "trainer_overrides": {**STEPS, "max_steps": 6, "val_check_interval": 3, "checkpoint_every_n_steps": 3}}
    train(args, log=lambda m: None)
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "last.ckpt").write_bytes(b"PK\x03\x04 cut short by a crash")       # a partial write
    (ckpts / "step000006.ckpt").write_bytes(b"also broken")
    logs, probe = [], ResumeProbe()
    r = train({**args, "trainer_overrides": {**args["trainer_overrides"], "max_steps": 9}}, log=logs.append,
              callbacks=[probe])
    assert any("does not load (moved to last.ckpt.corrupt); resuming from step000003.ckpt" in m for m in logs)
    assert probe.start_step == 3 and probe.batches == 6 and r["global_step"] == 9
    assert (ckpts / "last.ckpt.corrupt").read_bytes().endswith(b"cut short by a crash")


def test_bad_inputs_are_clear_errors(dataset, tracking, tmp_path):
    with pytest.raises(TrainingError, match="no train_manifest"):
        prepare_dataset(str(tmp_path), tmp_path / "w", 20)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train_manifest.jsonl").write_text(json.dumps({"audio_filepath": "nope.wav", "duration": 1, "text": "x"}) + "\n")
    (bad / "val_manifest.jsonl").write_text((dataset / "val_manifest.jsonl").read_text())
    with pytest.raises(TrainingError, match="no usable rows .*audio missing"):
        prepare_dataset(str(bad), tmp_path / "w2", 20)
    with pytest.raises(TrainingError, match="base model: model file not found"):
        train({"dataset": str(dataset), "output_dir": str(tmp_path / "o"), "base": {"nemo": str(tmp_path / "x.nemo")},
               "trainer_overrides": STEPS, "mlflow": {"experiment": "t"}}, log=lambda m: None)


def test_a_diverging_run_stops_at_its_first_non_finite_loss_and_registers_nothing(dataset, tracking, tmp_path):
    """A learning rate of 1e30 sends the loss to NaN/inf within a few steps, for real: the run stops there (not at
    max_steps) with an error that says what to change, exports no model.nemo, registers no version and is FAILED
    in MLflow."""
    import re

    from mlflow import MlflowClient

    from clinasr.experiment import BASE_MODEL

    (tmp_path / "diverge.yaml").write_text("optim: {name: adamw, lr: 1.0e+30, betas: [0.9, 0.98]}\n")
    steps = {**STEPS, "max_steps": 40, "val_check_interval": 40, "checkpoint_every_n_steps": 40}
    with pytest.raises(TrainingError, match=r"training loss is (nan|inf|-inf) at step \d+ \(learning rate 1\.00e\+30\)"
                                            r": the run diverged; lower the learning rate.*nothing registered") as e:
        train({"dataset": str(dataset), "output_dir": str(tmp_path / "run"), "base": {"nemo": str(BASE_MODEL)},
               "model_overrides": str(tmp_path / "diverge.yaml"), "trainer_overrides": steps,
               "mlflow": {"experiment": "t-diverge", "register_as": "clinasr-diverged"}}, log=lambda m: None)
    assert int(re.search(r"at step (\d+)", str(e.value)).group(1)) <= 5
    assert not (tmp_path / "run" / "model.nemo").exists()
    c = MlflowClient(tracking)
    assert c.search_model_versions("name='clinasr-diverged'") == []
    [run] = c.search_runs([c.get_experiment_by_name("t-diverge").experiment_id])
    assert run.info.status == "FAILED" and c.list_artifacts(run.info.run_id, "model") == []


def test_resume_from_an_s3_checkpoint_on_another_machine(dataset, tracking, s3_env, tmp_path):
    from clinasr.store import ObjectStore

    store = ObjectStore(s3_env)
    store.ensure_bucket()
    uri = f"s3://{s3_env.bucket}/training/job-1/checkpoints"
    logs = []
    base = {"dataset": str(dataset), "checkpoint_uri": uri, "mlflow": {"experiment": "t-s3"}}
    first = train({**base, "output_dir": str(tmp_path / "machine-a"), "trainer_overrides": {**STEPS, "max_steps": 6}},
                  log=logs.append)
    assert store.exists(f"{uri}/last.ckpt") and store.get_bytes(f"{uri}/mlflow_run_id").decode() == first["mlflow_run_id"]
    logs.clear()
    # a fresh output dir (another machine): the run continues from the mirrored checkpoint, in the same MLflow run
    second = train({**base, "output_dir": str(tmp_path / "machine-b"), "trainer_overrides": STEPS}, log=logs.append)
    assert any("restored last.ckpt" in m for m in logs) and any("resuming from" in m for m in logs)
    assert second["global_step"] == 12 and second["mlflow_run_id"] == first["mlflow_run_id"]
    with pytest.raises(TrainingError, match="s3:// prefix"):
        train({**base, "checkpoint_uri": "/tmp/x", "output_dir": str(tmp_path / "c")}, log=logs.append)


def test_semi_sorted_batching_groups_clips_of_similar_length(dataset, tmp_path):
    """Duration bucketing (trainer option semi_sorted_batching): NeMo's semi-sorted sampler, so batches pad less
    than shuffled ones on the same data, and training runs with it."""
    import torch
    from nemo.collections.asr.models import ASRModel
    from omegaconf import OmegaConf

    from clinasr.training.train import _dataset_cfg

    r = train({"dataset": str(dataset), "output_dir": str(tmp_path / "run"), "mlflow": {"enabled": False},
               "trainer_overrides": {**STEPS, "max_steps": 4, "semi_sorted_batching": True}}, log=lambda m: None)
    assert r["global_step"] == 4
    m = ASRModel.restore_from(r["nemo_path"], map_location="cpu")
    manifest = str(tmp_path / "run" / "data" / "train_manifest.jsonl")

    def mean_spread(opts: dict) -> float:
        torch.manual_seed(0)
        m.setup_training_data(OmegaConf.create(_dataset_cfg(manifest, {"batch_size": 4, **opts}, True)))
        spreads = [float(b[1].max() - b[1].min()) for b in m._train_dl]
        return sum(spreads) / len(spreads)

    assert "use_semi_sorted_batching" not in _dataset_cfg(manifest, {"batch_size": 4}, True)
    assert mean_spread({"semi_sorted_batching": True, "randomization_factor": 0.0}) < 0.7 * mean_spread({})


def test_fixed_duration_batches_pack_audio_seconds_not_clip_counts(dataset, tmp_path):
    """Trainer option batch_duration: lhotse dynamic bucketing, so every training batch holds at most that many
    seconds of audio (short clips make bigger batches), and training runs with it."""
    from itertools import islice

    from nemo.collections.asr.models import ASRModel
    from omegaconf import OmegaConf

    from clinasr.training.train import _dataset_cfg

    opts = {"batch_duration": 6.0, "num_buckets": 2, "batch_size": 64}
    r = train({"dataset": str(dataset), "output_dir": str(tmp_path / "run"), "mlflow": {"enabled": False},
               "trainer_overrides": {**STEPS, "max_steps": 4, **opts, "speed_perturb": True}}, log=lambda m: None)
    assert r["global_step"] == 4
    manifest = str(tmp_path / "run" / "data" / "train_manifest.jsonl")
    m = ASRModel.restore_from(r["nemo_path"], map_location="cpu")

    def batches(seconds: float, **more) -> list[list[float]]:
        m.setup_training_data(OmegaConf.create(_dataset_cfg(manifest, {**opts, "batch_duration": seconds, **more}, True)))
        return [[float(x) / 16000 for x in b[1]] for b in islice(iter(m._train_dl), 12)]

    small, large = batches(6.0), batches(20.0)
    # speed perturbation reaches the lhotse loader: clips of lengths no manifest row has (0.9x / 1.1x copies)
    originals = {round(x, 2) for b in large for x in b}
    perturbed = {round(x, 2) for b in batches(20.0, speed_perturb=True) for x in b}
    assert perturbed - originals, "no perturbed clip lengths"
    # the audio a batch holds follows batch_duration (lhotse's bucket bins, estimated from 8 clips here, let it
    # run over by some); a clip longer than batch_duration alone makes a batch of one
    for b in small:
        assert len(b) == 1 or sum(b) <= 1.25 * 6.0, small
    assert max(len(b) for b in large) > max(len(b) for b in small)
    assert sum(map(len, large)) / len(large) > 1.5 * sum(map(len, small)) / len(small)   # more clips per batch
    assert "use_lhotse" not in _dataset_cfg(manifest, {"batch_size": 4}, True)
    assert "use_lhotse" not in _dataset_cfg(manifest, opts, False)   # validation keeps plain batches


def test_speed_perturbation_reaches_either_loader():
    """speed_perturb: NeMo's augmentor on the classic loader, lhotse's perturb_speed on fixed-duration batches (the
    lhotse path ignores the augmentor key: the first H100 duration runs trained without speed perturbation)."""
    from clinasr.training.train import _dataset_cfg

    classic = _dataset_cfg("m.jsonl", {"batch_size": 4, "speed_perturb": True}, True)
    lhotse = _dataset_cfg("m.jsonl", {"batch_size": 64, "batch_duration": 600, "speed_perturb": True}, True)
    assert classic["augmentor"]["speed"]["prob"] > 0 and "perturb_speed" not in classic
    assert lhotse["use_lhotse"] and lhotse["perturb_speed"] is True and "augmentor" not in lhotse
    for cfg in (_dataset_cfg("m.jsonl", {"batch_size": 4, "speed_perturb": True}, False),
                _dataset_cfg("m.jsonl", {"batch_size": 4, "batch_duration": 600}, True)):
        assert "augmentor" not in cfg and "perturb_speed" not in cfg   # validation / not asked for


def test_cpu_adam_option_swaps_in_deepspeeds_cpu_optimizer():
    """Trainer option optimizer: cpu_adam (the ZeRO-Offload fast path) names DeepSpeedCPUAdam in the model's
    optim config and registers it with NeMo. Its step works on the flat fp32 partitions ZeRO-Offload hands it
    (GPU runs: bench_gpu_training.py zero2_offload_cpuadam); on plain module parameters it is not meant to run."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    from nemo.core.optim.optimizers import AVAILABLE_OPTIMIZERS

    from clinasr.training.train import _with_optimizer, load_yaml

    cfg = load_yaml("configs/model/fastconformer_tdt_tiny.yaml")
    assert _with_optimizer(cfg, {}) is cfg
    out = _with_optimizer(cfg, {"optimizer": "cpu_adam"})
    assert out["optim"]["name"] == "cpu_adam" and cfg["optim"]["name"] == "adamw"   # a copy; betas, lr kept
    assert out["optim"]["lr"] == cfg["optim"]["lr"] and AVAILABLE_OPTIMIZERS["cpu_adam"] is DeepSpeedCPUAdam


def test_activation_checkpointing_recomputes_encoder_layers_with_the_same_gradients():
    """Trainer option activation_checkpointing: the encoder keeps far fewer activations for backward, each layer
    runs its forward again in backward, and loss and gradients are those of the plain model, dropout included
    (the RNG state is replayed). Dither and SpecAugment are off: with them on, two plain steps from the same
    torch seed already differ, and both act before the encoder, whichever way it keeps its activations."""
    import torch
    from nemo.collections.asr.models import ASRModel

    from clinasr.experiment import FASTCONFORMER_BASE
    from clinasr.training.train import activation_checkpointing

    model = ASRModel.restore_from(str(FASTCONFORMER_BASE), map_location="cpu")
    model.train()
    model.spec_augmentation = None
    model.preprocessor.eval()
    g = torch.Generator().manual_seed(1)
    signal, lens = torch.randn(2, 32000, generator=g) * 0.05, torch.tensor([32000, 24000])
    calls = []
    model.encoder.layers[0].feed_forward1.register_forward_hook(lambda *a: calls.append(1))

    def step():
        saved = []

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        torch.manual_seed(0)
        model.zero_grad()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            encoded, _ = model.forward(input_signal=signal, input_signal_length=lens)
        loss = encoded.pow(2).mean()
        del calls[:]
        loss.backward()
        grads = [p.grad.clone() for p in model.encoder.parameters() if p.grad is not None]
        return loss.detach(), grads, sum(saved), len(calls)

    loss0, grads0, saved0, recomputed0 = step()
    assert activation_checkpointing(model, {}) == 0
    assert activation_checkpointing(model, {"activation_checkpointing": True}) == len(model.encoder.layers)
    assert activation_checkpointing(model, {"activation_checkpointing": True}) == len(model.encoder.layers)  # idempotent
    loss1, grads1, saved1, recomputed1 = step()
    assert (recomputed0, recomputed1) == (0, 1)        # layer 0 ran again in backward, once
    assert saved1 < 0.5 * saved0, (saved0, saved1)
    assert torch.allclose(loss0, loss1) and len(grads0) == len(grads1)
    for a, b in zip(grads0, grads1):
        assert torch.allclose(a, b)
    with torch.no_grad():                               # inference does not checkpoint
        model.forward(input_signal=signal, input_signal_length=lens)


def test_deepspeed_strategy_names_its_micro_batch(monkeypatch):
    """On a GPU machine ZeRO-2 gets its config with train_micro_batch_size_per_gpu set: Lightning would otherwise
    read it off the loader's batch sampler, which fixed-duration (lhotse) loaders lack (found on the H100).
    Trainer option deepspeed_overrides is deep-merged over the checked-in JSON."""
    import torch
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from clinasr.training.train import choose_strategy

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    strategy, accel, devices, nodes = choose_strategy(
        {"strategy": "deepspeed_stage_2", "deepspeed_config": "configs/deepspeed/zero2.json", "batch_size": 512,
         "batch_duration": 600, "deepspeed_overrides": {"zero_optimization": {"overlap_comm": False}}}, print)
    assert isinstance(strategy, DeepSpeedStrategy) and (accel, devices, nodes) == ("gpu", 1, 1)
    assert strategy.config["train_micro_batch_size_per_gpu"] == 512
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == 2 and zero["overlap_comm"] is False and zero["contiguous_gradients"] is True  # merged


def test_step_levers_are_trainer_options_that_default_to_the_models_behaviour():
    """Issue 27's step levers: fused AdamW reaches the torch optimizer through NeMo's optim config (GPU or CPU) and
    is refused with a reason under ZeRO-Offload; the front end's conv over batch slices gives the same outputs; the TDT joint runs over sub-batches of N clips or the whole batch; the encoder
    layers compile in place (parameter names unchanged) on a GPU and stay eager on CPU. Unset, nothing changes."""
    import torch
    from nemo.collections.asr.models import ASRModel
    from omegaconf import open_dict

    from clinasr.experiment import FASTCONFORMER_BASE
    from clinasr.training.common import TrainingError
    from clinasr.training.strategy import fused_adam_callback, step_levers

    model = ASRModel.restore_from(str(FASTCONFORMER_BASE), map_location="cpu")
    with open_dict(model.cfg):
        model.cfg.optim = {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 1e-3}
    keys = list(model.state_dict())
    logs = []
    assert step_levers(model, {}, "gpu", logs.append) == {} and not logs and "fused" not in model.cfg.optim

    assert step_levers(model, {"fused_adam": True, "strategy": "deepspeed_stage_2",
                               "deepspeed_config": "configs/deepspeed/zero2_offload.json"}, "gpu", logs.append) == {}
    assert "ZeRO-Offload" in logs[-1] and "fused" not in model.cfg.optim
    assert step_levers(model, {"fused_adam": True}, "cpu", logs.append) == {"fused_adam": True}
    cpu_opt, _ = model.setup_optimization(model.cfg.optim)
    assert cpu_opt.defaults["fused"] is True and "on the CPU" in logs[-1]
    p = next(q for q in model.parameters() if q.requires_grad)
    before = p.detach().clone()
    p.grad = torch.ones_like(p)
    cpu_opt.step()                                           # torch's fused CPU kernel runs here
    assert not torch.equal(before, p.detach())
    p.grad = None
    assert step_levers(model, {"fused_adam": True}, "gpu", logs.append) == {"fused_adam": True}
    opt, _ = model.setup_optimization(model.cfg.optim)     # what Lightning's configure_optimizers builds
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    # Lightning refuses to clip with it (it claims to unscale itself) unless there is no GradScaler
    import types

    trainer = types.SimpleNamespace(precision_plugin=types.SimpleNamespace(scaler=None), optimizers=[opt, object()])
    assert opt._step_supports_amp_scaling
    fused_adam_callback().on_train_start(trainer, model)
    assert not opt._step_supports_amp_scaling

    model.eval()
    feats, lens = torch.randn(4, model.cfg.preprocessor.features, 300), torch.tensor([300, 250, 120, 60])
    with torch.no_grad():
        whole, whole_lens = model.encoder(audio_signal=feats, length=lens)
        assert step_levers(model, {"subsampling_conv_chunking_factor": 2}, "cpu", logs.append) == {
            "subsampling_conv_chunking_factor": 2}
        assert model.encoder.pre_encode.subsampling_conv_chunking_factor == 2 and model._clinasr_chunking_was == 1
        sliced, sliced_lens = model.encoder(audio_signal=feats, length=lens)
    assert torch.equal(whole_lens, sliced_lens) and torch.allclose(whole, sliced, atol=1e-5)
    with pytest.raises(TrainingError):
        step_levers(model, {"subsampling_conv_chunking_factor": 0}, "cpu", logs.append)

    joint = model.joint
    with open_dict(model.cfg):
        model.cfg.joint.fuse_loss_wer = True
    joint._fuse_loss_wer, joint._fused_batch_size = True, 16     # as the Parakeet configs have it
    assert step_levers(model, {"joint_fused_batch_size": 32}, "cpu", logs.append) == {"joint_fused_batch_size": 32}
    assert joint._fused_batch_size == 32 == model.cfg.joint.fused_batch_size
    assert step_levers(model, {"joint_fused_batch_size": "whole", "batch_size": 512}, "cpu", logs.append)[
        "joint_fused_batch_size"] == 512 and "whole batch" in logs[-1]
    with pytest.raises(TrainingError):
        step_levers(model, {"joint_fused_batch_size": 0}, "cpu", logs.append)

    assert step_levers(model, {"compile_encoder": True}, "cpu", logs.append) == {} and "not applied on CPU" in logs[-1]
    n = len(model.encoder.layers)
    assert step_levers(model, {"compile_encoder": True}, "gpu", logs.append) == {"compile_encoder": n}
    assert list(model.state_dict()) == keys     # compiled in place: checkpoints and the .nemo keep their names


def test_a_base_trained_with_an_encoder_group_does_not_pass_its_rates_to_a_fine_tune(dataset, tmp_path):
    """encoder_lr_scale applies to a model built from a config too, and its parameter groups (rates in the base's
    own optimiser's units) are not inherited by a fine-tune that sets an optimiser of its own: base v5's encoder
    group (a Noam factor of 0.165) once reached a fine-tune's AdamW as a learning rate and it diverged."""
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    seen = {}

    def groups(tag):
        def on_trained(model):
            seen[tag] = sorted(g["initial_lr"] for g in model.trainer.optimizers[0].param_groups)
            seen[tag + "_cfg"] = model.cfg.get("optim_param_groups")
        return on_trained

    base = train({"dataset": str(dataset), "output_dir": str(tmp_path / "base"), "mlflow": {"enabled": False},
                  "base": {"config": "configs/model/fastconformer_tdt_tiny.yaml"},
                  "trainer_overrides": {**STEPS, "max_steps": 2, "val_check_interval": 2, "checkpoint_every_n_steps": 2,
                                        "encoder_lr_scale": 0.25}}, log=lambda m: None, on_trained=groups("base"))
    lo, hi = seen["base"]
    assert lo == pytest.approx(0.25 * hi) and seen["base_cfg"] is not None
    saved = EncDecRNNTBPEModel.restore_from(base["nemo_path"], map_location="cpu").cfg
    assert saved.get("optim_param_groups") is not None          # the .nemo carries the base's groups ...
    train({"dataset": str(dataset), "output_dir": str(tmp_path / "ft"), "mlflow": {"enabled": False},
           "base": {"nemo": base["nemo_path"]}, "model_overrides": "configs/model/finetune_small.yaml",
           "trainer_overrides": {**STEPS, "max_steps": 2, "val_check_interval": 2, "checkpoint_every_n_steps": 2}},
          log=lambda m: None, on_trained=groups("ft"))
    assert seen["ft"] == [pytest.approx(5e-4)] and seen["ft_cfg"] is None   # ... the fine-tune does not use them
