"""The training entry point (ML runtime): NeMo FastConformer-TDT fine-tuning with MLflow tracking.

``train_stage(args)`` is what every launch backend runs (locally through ``clinasr ml-stage train``, in
the ML container on SageMaker/EC2). Arguments (JSON):

    dataset          local dataset dir or s3:// snapshot URI (train_manifest.jsonl, val_manifest.jsonl)
    base             {"config": "configs/model/fastconformer_tdt_tiny.yaml"}   build from config (new tokenizer;
                                                                 the default when no base is given)
                     {"nemo": "<path or s3:// or models:/name@alias>"}           fine-tune a .nemo (its tokenizer is kept;
                                                                 "change_vocabulary": true trains a new one)
                     {"pretrained": "nvidia/parakeet-tdt-0.6b-v2"}               NeMo's from_pretrained (needs a hub)
    trainer          path of a trainer YAML (configs/trainer/*.yaml) plus "overrides"
    output_dir       where checkpoints, TensorBoard logs and the .nemo go
    resume           true: continue from output_dir/checkpoints/last.ckpt if it exists
    checkpoint_uri   optional s3:// prefix: last.ckpt is mirrored there as it is written, and a run whose
                     output_dir has no checkpoint resumes from it (another machine, a lost disk)
    mlflow           {"experiment": ..., "register_as": "clinasr-asr", "tags": {...}}
    seed
    replay_source    optional: the general-English replay set (dataset dir or s3:// snapshot); default: the
                     trainer config's ``replay.set`` resolved through clinasr.evalsets (the current snapshot)

Fine-tuning options in the trainer config that keep what the base model knew (measured in
bench/results/recipes-cpu.md; the default recipe is the one that measurement picked):

    replay: {set: general_replay, ratio: 1.0}   general speech rows per clinical row, in train and val (rows
                                                carry domain: general|clinical; val WER is then a combined score)
    freeze_encoder_layers: N                    the preprocessor's sub-sampling and the first N conformer layers
                                                do not train (and stay in eval mode)
    encoder_lr_scale: s                         the trainable encoder layers learn at s x the decoder/joint rate
    merge_with_base: a                          the saved weights are a*fine-tuned + (1-a)*base (weight-space
                                                ensembling, "WiSE-FT"); 1 or unset: the fine-tuned weights

Returns the MLflow run id, the registered model version (alias ``candidate``), metrics and paths.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import yaml

from clinasr.mlenv import launched_processes
from clinasr.settings import REPO_ROOT


class TrainingError(RuntimeError):
    """Training cannot start or did not produce a usable model; the message says what to change."""


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_yaml(path: str | Path) -> dict:
    """A config file; ``base: other.yaml`` (relative to the file) is deep-merged underneath."""
    p = Path(path)
    if not p.is_absolute():
        p = REPO_ROOT / p
    cfg = yaml.safe_load(p.read_text()) or {}
    if base := cfg.pop("base", None):
        cfg = _merge(load_yaml(p.parent / base), cfg)
    return cfg


def _read_manifest(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _local(dataset: str, dest: Path) -> Path:
    if dataset.startswith("s3://"):
        from clinasr.store import ObjectStore

        return ObjectStore().fetch_snapshot(dataset, dest)
    return Path(dataset)


def prepare_dataset(dataset: str, work: Path, max_duration: float, replay: dict | None = None) -> dict:
    """Local copies of the manifests with absolute audio paths; rows that cannot be used are reported.

    ``replay`` ({"source", "ratio", "seed"}) mixes general-English rows into both splits: ``ratio`` of them per
    clinical row, drawn without repeats from the replay set's own split (its val texts never train)."""
    local = _local(dataset, work / "dataset")
    replay_dir = _local(replay["source"], work / "replay") if replay else None
    out, report = {}, {}
    work.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        src = local / f"{split}_manifest.jsonl"
        if not src.exists():
            raise TrainingError(f"dataset {dataset} has no {split}_manifest.jsonl: build it with `clinasr data build`")
        rows, dropped = _usable_rows(src, local, max_duration)
        rows = [{**r, "domain": r.get("domain", "clinical")} for r in rows]
        if not rows:
            raise TrainingError(f"the {split} split of {dataset} has no usable rows ({dropped or 'empty manifest'})")
        mixed = 0
        if replay_dir is not None:
            general, _ = _usable_rows(replay_dir / f"{split}_manifest.jsonl", replay_dir, max_duration)
            if not general:
                raise TrainingError(f"replay source {replay['source']} has no usable {split} rows: rebuild it with "
                                    "`clinasr evalsets build`")
            import random

            want = round(float(replay["ratio"]) * len(rows))
            rng = random.Random(f"{replay.get('seed', 0)}|replay|{split}")
            picked = rng.sample(general, min(want, len(general)))
            rows += [{**r, "domain": "general"} for r in picked]
            mixed = len(picked)
        dst = work / f"{split}_manifest.jsonl"
        dst.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[split] = str(dst)
        report[split] = {"rows": len(rows), "hours": round(sum(r["duration"] for r in rows) / 3600, 4), "dropped": dropped,
                         "general_replay_rows": mixed}
    return {"manifests": out, "report": report, "local_dir": str(local)}


def _usable_rows(src: Path, local: Path, max_duration: float) -> tuple[list[dict], dict]:
    rows, dropped = [], {}
    if not src.exists():
        return rows, dropped
    for r in _read_manifest(src):
        p = Path(r["audio_filepath"])
        p = p if p.is_absolute() else local / p
        reason = None
        if not p.exists():
            reason = "audio missing"
        elif r.get("duration", 0) > max_duration:
            reason = f"longer than max_duration {max_duration}s"
        elif not r.get("text", "").strip():
            reason = "empty text"
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        rows.append({**r, "audio_filepath": str(p)})
    return rows, dropped


def replay_spec(args: dict, tcfg: dict, log=print) -> dict | None:
    """The general-English replay of this run, resolved before anything is loaded: a fine-tune whose replay
    source is missing stops here, naming it. None when the trainer config asks for no replay."""
    r = tcfg.get("replay") or {}
    ratio = float(r.get("ratio", 0) or 0)
    if ratio <= 0:
        return None
    source = args.get("replay_source")
    if not source:
        from clinasr.evalsets import EvalSetError, resolve

        name = r.get("set") or "general_replay"
        try:
            source = resolve(name)["uri"]
        except EvalSetError as e:
            raise TrainingError(f"the trainer config replays {name!r} at {ratio}:1 but the replay source is not "
                                f"available: {e} (or set replay.ratio: 0 to fine-tune without replay)") from None
    elif not source.startswith("s3://") and not (Path(source) / "train_manifest.jsonl").exists():
        raise TrainingError(f"replay source {source} has no train_manifest.jsonl: build it with `clinasr evalsets build`")
    log(f"[train] general-English replay: {ratio}:1 from {source}")
    return {"source": source, "ratio": ratio, "seed": int(args.get("seed", 0))}


def train_tokenizer(manifest: str, vocab_size: int, out_dir: Path, include_lexicon: bool = True) -> Path:
    """A BPE tokenizer from the training texts; ``include_lexicon`` adds every clinical term so each is
    spellable in few tokens (a general-English base model leaves it out: no clinical term is a token)."""
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    from clinasr.synth.lexicon import load_lexicon
    from clinasr.textnorm import normalize

    out_dir.mkdir(parents=True, exist_ok=True)
    texts = [r["text"] for r in _read_manifest(Path(manifest))]
    if include_lexicon:
        lex = load_lexicon()
        texts += [normalize(t) for t in lex.drugs + lex["frequencies"] + lex["routes"]]  # every term is spellable
    data = out_dir / "text.txt"
    data.write_text("\n".join(texts) + "\n")
    n_chars = len(set("".join(texts)))
    vocab = max(min(vocab_size, len(set(" ".join(texts).split())) + n_chars), n_chars + 4)
    create_spt_model(str(data), vocab, sample_size=-1, do_lower_case=True, tokenizer_type="bpe", output_dir=str(out_dir))
    return out_dir


def _dataset_cfg(manifest: str, tcfg: dict, shuffle: bool) -> dict:
    lhotse = shuffle and bool(tcfg.get("batch_duration"))     # training batches only; validation keeps plain ones
    speed = shuffle and bool(tcfg.get("speed_perturb"))
    return {"manifest_filepath": manifest, "sample_rate": 16000, "batch_size": int(tcfg["batch_size"]),
            "shuffle": shuffle, "num_workers": int(tcfg.get("num_workers", 0)), "pin_memory": False,
            "max_duration": float(tcfg.get("max_duration", 20.0)), "min_duration": 0.1, "trim_silence": False,
            "use_start_end_token": False,
            # duration bucketing: NeMo's semi-sorted batch sampler groups clips of similar length (less padding)
            **({"use_semi_sorted_batching": True, "drop_last": False,
                "randomization_factor": float(tcfg.get("randomization_factor", 0.1))}
               if shuffle and tcfg.get("semi_sorted_batching") else {}),
            # fixed-*duration* batches: lhotse dynamic bucketing packs up to batch_duration seconds of audio per
            # batch (batch_size stays a cap on the clip count), so short clips make bigger batches
            **({"use_lhotse": True, "batch_duration": float(tcfg["batch_duration"]), "use_bucketing": True,
                "num_buckets": int(tcfg.get("num_buckets", 10)), "quadratic_duration": tcfg.get("quadratic_duration"),
                "shuffle_buffer_size": int(tcfg.get("shuffle_buffer_size", 2000)),
                "bucket_buffer_size": int(tcfg.get("bucket_buffer_size", 2000)), "shard_seed": "randomized"}
               if lhotse else {}),
            # speed perturbation: NeMo's augmentor on the classic loader; lhotse ignores that key and mixes in
            # 0.9x and 1.1x copies of the cuts itself (perturb_speed)
            **(({"perturb_speed": True} if lhotse else
                {"augmentor": {"speed": {"prob": 0.5, "sr": 16000, "resample_type": "fft",
                                         "min_speed_rate": 0.9, "max_speed_rate": 1.1}}}) if speed else {})}


def load_base_model(base: dict, model_cfg: dict | None, manifests: dict, tcfg: dict, work: Path, trainer):
    """Build or load the model. Returns (model, description)."""
    from nemo.collections.asr.models import EncDecRNNTBPEModel
    from omegaconf import OmegaConf, open_dict

    if "config" in base:
        cfg = copy.deepcopy(_with_optimizer(model_cfg, tcfg))
        tok_dir = train_tokenizer(manifests["train"], int(cfg["tokenizer"]["vocab_size"]), work / "tokenizer",
                                  include_lexicon=bool(cfg["tokenizer"].get("include_lexicon", True)))
        cfg["tokenizer"] = {"dir": str(tok_dir), "type": "bpe"}
        cfg["train_ds"] = _dataset_cfg(manifests["train"], tcfg, True)
        cfg["validation_ds"] = _dataset_cfg(manifests["val"], tcfg, False)
        model = EncDecRNNTBPEModel(cfg=OmegaConf.create(cfg), trainer=trainer)
        _spec_augment_switch(model, tcfg)
        return model, f"from config {base['config']}"
    if "nemo" in base:
        path = resolve_nemo(base["nemo"], work)
        try:
            model = EncDecRNNTBPEModel.restore_from(str(path), map_location="cpu")
        except Exception as e:
            raise TrainingError(f"cannot load base model {base['nemo']}: {type(e).__name__}: {e}") from None
        desc = f"fine-tune of {base['nemo']}"
    elif "pretrained" in base:
        try:
            model = EncDecRNNTBPEModel.from_pretrained(base["pretrained"], map_location="cpu")
        except Exception as e:
            raise TrainingError(f"cannot load pretrained {base['pretrained']!r} (no hub reachable? use a .nemo "
                                f"file via base.nemo): {type(e).__name__}: {e}") from None
        desc = f"fine-tune of {base['pretrained']}"
    else:
        raise TrainingError(f"base must name one of config / nemo / pretrained (got {base})")
    model.set_trainer(trainer)
    if base.get("change_vocabulary"):  # default: keep the base tokenizer; decoder/joint are re-initialised
        vocab = int((model_cfg or {}).get("tokenizer", {}).get("vocab_size", model.tokenizer.vocab_size))
        tok_dir = train_tokenizer(manifests["train"], vocab, work / "tokenizer")
        model.change_vocabulary(new_tokenizer_dir=str(tok_dir), new_tokenizer_type="bpe")
        _restore_tdt_loss(model)
        desc += f" with a new {model.tokenizer.vocab_size}-token vocabulary"
    model_cfg = encoder_param_groups(_with_optimizer(model_cfg, tcfg), tcfg)
    with open_dict(model.cfg):
        for key in ("optim", "spec_augment", "optim_param_groups"):
            if model_cfg and key in model_cfg:
                model.cfg[key] = OmegaConf.create(model_cfg[key])
    model.setup_training_data(OmegaConf.create(_dataset_cfg(manifests["train"], tcfg, True)))
    model.setup_validation_data(OmegaConf.create(_dataset_cfg(manifests["val"], tcfg, False)))
    if model_cfg and "optim" in model_cfg:
        model.setup_optimization(OmegaConf.create(model_cfg["optim"]))
    _spec_augment_switch(model, tcfg)
    return model, desc


def _with_optimizer(model_cfg: dict | None, tcfg: dict) -> dict | None:
    """Trainer option ``optimizer: cpu_adam`` swaps the model's Adam/AdamW for DeepSpeed's vectorised CPU Adam
    (for ZeRO-Offload: the optimizer step runs on the CPU; its C++ op JIT-builds on first use)."""
    if tcfg.get("optimizer") != "cpu_adam" or not model_cfg or "optim" not in model_cfg:
        return model_cfg
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    from nemo.core.optim.optimizers import AVAILABLE_OPTIMIZERS, register_optimizer

    if "cpu_adam" not in AVAILABLE_OPTIMIZERS:
        from nemo.core.config.optimizers import AdamParams

        register_optimizer("cpu_adam", DeepSpeedCPUAdam, AdamParams())
    cfg = copy.deepcopy(model_cfg)
    cfg["optim"]["name"] = "cpu_adam"
    return cfg


def _spec_augment_switch(model, tcfg: dict) -> None:
    """Trainer option ``spec_augment: false`` trains without SpecAugment (an ablation); default: the model's."""
    if tcfg.get("spec_augment", True) is False:
        model.spec_augmentation = None


def activation_checkpointing(model, tcfg: dict) -> int:
    """Trainer option ``activation_checkpointing: true``: each encoder layer keeps only its input for the
    backward pass and recomputes its activations there (``torch.utils.checkpoint``, non-reentrant, RNG state
    preserved so dropout masks repeat). Less GPU memory for about one more encoder forward of compute; NeMo's
    Conformer encoder has no switch for it. Returns the number of layers wrapped."""
    if not tcfg.get("activation_checkpointing"):
        return 0
    import torch
    from torch.utils.checkpoint import checkpoint

    layers = list(getattr(model.encoder, "layers", None) or [])
    for layer in layers:
        if getattr(layer, "_clinasr_checkpointed", False):
            continue

        def forward(*a, _forward=layer.forward, **kw):
            if torch.is_grad_enabled():
                return checkpoint(_forward, *a, use_reentrant=False, **kw)
            return _forward(*a, **kw)

        layer.forward = forward          # an instance attribute: state_dict, .nemo and checkpoints are unchanged
        layer._clinasr_checkpointed = True
    return len(layers)


def freeze_encoder_layers(model, tcfg: dict) -> int:
    """Trainer option ``freeze_encoder_layers: N``: the encoder's sub-sampling front end and its first N conformer
    layers keep the base model's weights (no gradients; eval mode, so dropout and batch-norm statistics stay
    as they were). Early layers carry the acoustic features every language shares; the clinical words live in
    the later layers, the prediction network and the joint. Returns the number of frozen parameters."""
    n = int(tcfg.get("freeze_encoder_layers") or 0)
    if n <= 0:
        return 0
    layers = list(getattr(model.encoder, "layers", None) or [])
    if n > len(layers):
        raise TrainingError(f"freeze_encoder_layers {n}: the encoder has only {len(layers)} layers")
    frozen = [m for m in [getattr(model.encoder, "pre_encode", None), *layers[:n]] if m is not None]
    count = 0
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
            count += p.numel()
        m.eval()
    model._clinasr_frozen = frozen
    return count


def _frozen_eval_callback():
    """Lightning puts the whole module in train mode at every epoch (and after validation): frozen layers go
    back to eval mode each time."""
    from lightning.pytorch.callbacks import Callback

    class KeepFrozenEval(Callback):
        def _eval(self, module):
            for m in getattr(module, "_clinasr_frozen", ()):
                m.eval()

        def on_train_epoch_start(self, trainer, module):
            self._eval(module)

        def on_validation_end(self, trainer, module):
            self._eval(module)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 0:
                self._eval(module)

    return KeepFrozenEval()


def _finite_loss_callback():
    """Stops the run at its first non-finite loss, before that step's backward pass: a diverged run (learning rate
    too high, a corrupt clip) otherwise trains on to max_steps on NaN weights. Every process takes the same decision
    (a poisoned batch may reach only one rank), so none is left waiting in a collective."""
    import lightning.pytorch as pl

    class FiniteLoss(pl.Callback):
        def on_before_backward(self, trainer, module, loss):
            value = float(loss.detach())
            if trainer.strategy.reduce_boolean_decision(not math.isfinite(value), all=False):
                lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
                raise TrainingError(
                    f"training loss is {value if not math.isfinite(value) else 'non-finite on another process'} at step "
                    f"{trainer.global_step + 1} (learning rate {lr:.2e}): the run diverged; lower the learning rate or "
                    "check the data, and start from a fresh output_dir (its checkpoints may hold the diverged weights); "
                    "nothing registered")

    return FiniteLoss()


def encoder_param_groups(model_cfg: dict | None, tcfg: dict) -> dict | None:
    """Trainer option ``encoder_lr_scale: s``: NeMo's ``optim_param_groups`` puts the encoder in its own
    parameter group at s x the base learning rate (decoder and joint keep it)."""
    s = tcfg.get("encoder_lr_scale")
    if s is None or float(s) == 1.0 or not model_cfg or "optim" not in model_cfg:
        return model_cfg
    cfg = copy.deepcopy(model_cfg)
    cfg["optim_param_groups"] = {"encoder": {"lr": float(cfg["optim"]["lr"]) * float(s)}}
    return cfg


def merge_with_base(model, base_state: dict | None, tcfg: dict) -> float | None:
    """Trainer option ``merge_with_base: a`` (0 < a < 1): weight-space ensembling of the fine-tuned model with the
    base it started from (Wortsman et al., "Robust fine-tuning of zero-shot models", WiSE-FT). Interpolating
    the weights keeps much of the base's general ability at a small cost in the new domain."""
    a = tcfg.get("merge_with_base")
    if a is None or float(a) >= 1.0:
        return None
    a = float(a)
    if base_state is None:
        raise TrainingError("merge_with_base needs a base model to merge with (base nemo: or pretrained:)")
    import torch

    with torch.no_grad():
        for k, v in model.state_dict().items():
            b = base_state.get(k)
            if b is not None and torch.is_floating_point(v) and b.shape == v.shape:
                v.copy_(a * v + (1 - a) * b.to(v.device, v.dtype))
    return a


def _restore_tdt_loss(model) -> None:
    """NeMo 3.0's change_vocabulary rebuilds the loss as a plain RNN-T loss whose blank index counts the
    TDT duration outputs; rebuild it as the model's configured TDT loss with the right blank."""
    from nemo.collections.asr.losses.rnnt import RNNTLoss
    from omegaconf import OmegaConf

    loss_cfg = model.cfg.get("loss", {})
    if loss_cfg.get("loss_name") not in ("tdt", "tdt_pytorch"):
        return
    extra = getattr(model.joint, "num_extra_outputs", 0)
    kwargs = OmegaConf.to_container(loss_cfg.get("tdt_kwargs", {}), resolve=True)
    model.loss = RNNTLoss(num_classes=model.joint.num_classes_with_blank - 1 - extra, loss_name=loss_cfg["loss_name"],
                          loss_kwargs=kwargs, reduction=model.cfg.get("rnnt_reduction", "mean_batch"))
    if getattr(model.joint, "fuse_loss_wer", False):
        model.joint.set_loss(model.loss)


def resolve_nemo(ref: str, work: Path) -> Path:
    from clinasr.registry import RegistryError, fetch_model

    try:
        return fetch_model(ref, work / "base")
    except (RegistryError, FileNotFoundError) as e:
        raise TrainingError(f"base model: {e}") from None


def choose_strategy(tcfg: dict, log) -> tuple[object, str, int, int]:
    """(strategy, accelerator, devices per node, nodes). DeepSpeed needs CUDA GPUs — off-GPU it falls back,
    with a reason. Under torchrun the process layout comes from its variables: N processes per node x M nodes
    run DDP (gloo on CPUs, NCCL on GPUs) or DeepSpeed ZeRO-2 across all of them."""
    import torch

    want = tcfg.get("strategy", "auto")
    world, local, _ = launched_processes()
    nodes = max(1, world // max(local, 1))
    if not torch.cuda.is_available():
        if world > 1:
            from lightning.pytorch.strategies import DDPStrategy

            if want not in ("auto", "ddp"):
                log(f"[train] strategy {want!r} needs CUDA GPUs; none here -> DDP over gloo on CPU processes")
            log(f"[train] {world} processes ({local} per node x {nodes} nodes): DDP over gloo on CPUs")
            return DDPStrategy(process_group_backend="gloo"), "cpu", local, nodes
        if want != "auto":
            log(f"[train] strategy {want!r} needs CUDA GPUs; none here -> single-process CPU training")
        return "auto", "cpu", 1, 1
    n = local if world > 1 else torch.cuda.device_count()
    if want == "deepspeed_stage_2":
        from lightning.pytorch.strategies import DeepSpeedStrategy

        ds_cfg = json.loads((REPO_ROOT / tcfg.get("deepspeed_config", "configs/deepspeed/zero2_offload.json")).read_text())
        # trainer option deepspeed_overrides: deep-merged over the checked-in JSON (bucket sizes, overlap, ...)
        ds_cfg = _merge(ds_cfg, tcfg.get("deepspeed_overrides") or {})
        # DeepSpeed's throughput logging wants a clip count; Lightning reads it off the loader's batch sampler, which
        # fixed-duration (lhotse) loaders do not have ('NoneType' object has no attribute 'batch_size')
        ds_cfg.setdefault("train_micro_batch_size_per_gpu", int(tcfg.get("batch_size", 1)))
        return DeepSpeedStrategy(config=ds_cfg), "gpu", n, nodes
    if (want == "ddp" and n > 1) or world > 1:
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(gradient_as_bucket_view=True), "gpu", n, nodes
    return "auto", "gpu", 1, 1


def _progress_callback(total_steps: int, log, every: int = 10):
    import lightning.pytorch as pl
    import torch

    class Progress(pl.Callback):
        """step/total, loss, learning rate, audio-seconds/s and ETA in the (Airflow task) log and MLflow; and the
        steady-state throughput of the run (:meth:`steady`)."""

        def __init__(self):
            self.t0 = None
            self.audio_s = 0.0
            self.window = (time.time(), 0.0, 0)
            self.last = None
            self.steps: list[tuple[int, float, float]] = []   # (step, seconds since the previous step, audio-s)
            self.interrupted: set[int] = set()   # steps whose interval also holds a checkpoint write or validation

        def on_save_checkpoint(self, trainer, module, checkpoint):
            self.interrupted.add(trainer.global_step + 1)   # written after this step's callbacks: lands in the next

        def on_validation_start(self, trainer, module):
            self.interrupted.add(trainer.global_step + 1)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            now = time.time()
            if self.t0 is None:
                self.t0 = now
            lens = batch[1] if isinstance(batch, (list, tuple)) else None
            audio = float(lens.sum()) / 16000 if lens is not None else 0.0
            self.audio_s += audio
            step = trainer.global_step
            if self.last is not None:
                self.steps.append((step, now - self.last, audio))
            self.last = now
            if step % every == 0 or step == total_steps:
                t, a, s0 = self.window
                rate = (self.audio_s - a) / max(now - t, 1e-6)
                self.window = (now, self.audio_s, step)
                done = max(step, 1)
                eta = (now - self.t0) / done * (total_steps - step)
                loss = outputs["loss"].item() if isinstance(outputs, dict) and "loss" in outputs else float("nan")
                lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
                log(f"[train] step {step}/{total_steps} loss {loss:.3f} lr {lr:.2e} "
                    f"{rate:.1f} audio-s/s ETA {eta:.0f}s")
                stats = {"throughput_audio_s_per_s": rate}
                if torch.cuda.is_available():
                    stats["gpu_mem_gib"] = torch.cuda.memory_allocated() / 2**30
                    stats["gpu_peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                module.log_dict(stats, on_step=True, logger=True)

        def steady(self) -> dict:
            """Throughput once warmed up: the steps after the first 10% (at least 3: CUDA kernel selection, the
            TDT loss's JIT), leaving out the intervals that also wrote a checkpoint or validated. Each step's
            interval includes waiting for data, logging and the periodic training-WER decode."""
            import statistics

            warm = max(3, len(self.steps) // 10)
            kept = [(dt, a) for s, dt, a in self.steps[warm:] if s not in self.interrupted]
            if not kept:
                return {}
            return {"steady_audio_s_per_s": sum(a for _, a in kept) / sum(dt for dt, _ in kept),
                    "median_s_per_step": statistics.median(dt for dt, _ in kept), "steady_steps": len(kept)}

    return Progress()


def train(args: dict, log=print, on_trained=None, callbacks: list | None = None) -> dict:
    """One training run (see the module doc for ``args``). ``on_trained(model)`` runs on the trained model before
    it is registered; ``callbacks`` are extra Lightning callbacks."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    out = Path(args["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    tcfg = load_yaml(args.get("trainer", "configs/trainer/cpu_demo.yaml"))
    tcfg.update(args.get("trainer_overrides") or {})
    base = args.get("base") or {"config": "configs/model/fastconformer_tdt_tiny.yaml"}
    # fine-tuning optimiser etc.: the run's model_overrides, else the trainer config's (cpu_finetune.yaml names one)
    overrides = args.get("model_overrides") or tcfg.get("model_overrides")
    model_cfg = load_yaml(base["config"]) if "config" in base else (load_yaml(overrides) if overrides else None)
    seed = int(args.get("seed", 0))
    pl.seed_everything(seed, workers=True)
    strategy, accelerator, devices, nodes = choose_strategy(tcfg, log)
    rank = launched_processes()[2]
    work = out   # rank 0 tracks, saves and registers; other ranks of a multi-process run train in their own dir
    if rank:
        log = lambda m: None   # noqa: E731 — one log per run, not one per process
        args = {**args, "mlflow": {**(args.get("mlflow") or {}), "enabled": False}, "checkpoint_uri": None}
        work = out / f"rank{rank}"
    replay = replay_spec(args, tcfg, log)
    data = prepare_dataset(args["dataset"], work / "data", float(tcfg.get("max_duration", 20.0)), replay)
    log(f"[train] data: {json.dumps(data['report'])}")
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    mirror = _CheckpointMirror(args.get("checkpoint_uri"), ckpt_dir, log)
    if args.get("resume", True) and not last.exists():
        mirror.restore()
    if args.get("resume", True) and last.exists():
        _usable_checkpoint(ckpt_dir, log)
    resume = bool(args.get("resume", True)) and last.exists()

    mlflow_cfg = args.get("mlflow") or {}
    # benchmarks on machines without a tracking server run with {"enabled": false}: no tracking, no registry
    mlflow = _Tracking() if mlflow_cfg.get("enabled", True) is False else __import__("mlflow")
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:15000"))
    exp = mlflow.set_experiment(mlflow_cfg.get("experiment", "clinasr-training"))
    run_id_file = work / "mlflow_run_id"
    if resume and not run_id_file.exists() and (ckpt_dir / "mlflow_run_id").exists():
        run_id_file.write_text((ckpt_dir / "mlflow_run_id").read_text())
    run_id = run_id_file.read_text().strip() if resume and run_id_file.exists() else None
    run = mlflow.start_run(run_id=run_id, experiment_id=exp.experiment_id,
                           run_name=mlflow_cfg.get("run_name"), tags=mlflow_cfg.get("tags"))
    run_id_file.write_text(run.info.run_id)
    if not rank:
        (ckpt_dir / "mlflow_run_id").parent.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / "mlflow_run_id").write_text(run.info.run_id)   # travels with the checkpoint mirror
    try:
        loggers = [TensorBoardLogger(str(work / "tensorboard"), name="", version="tb")]
        if not isinstance(mlflow, _Tracking):
            class _Logger(MLFlowLogger):
                def log_hyperparams(self, params):   # logged by the first attempt; paths differ on another machine
                    if not resume:
                        super().log_hyperparams(params)

            loggers.append(_Logger(experiment_name=exp.name, run_id=run.info.run_id, tracking_uri=mlflow.get_tracking_uri()))
        ckpt = ModelCheckpoint(dirpath=str(ckpt_dir), every_n_train_steps=int(tcfg["checkpoint_every_n_steps"]),
                               save_top_k=int(tcfg.get("keep_last_k", 2)), monitor="step", mode="max",
                               save_last=True, filename="step{step:06d}", auto_insert_metric_name=False)
        # one cadence for the progress line, Lightning's logging and NeMo's training-batch WER (a greedy decode)
        log_every = int(tcfg.get("log_every_n_steps", 10))
        progress = _progress_callback(int(tcfg["max_steps"]), log, every=log_every)
        trainer = pl.Trainer(
            max_steps=int(tcfg["max_steps"]),
            # a wall-clock budget (minutes): training stops there and saves, as at max_steps
            max_time={"minutes": float(tcfg["max_minutes"])} if tcfg.get("max_minutes") else None,
            accelerator=accelerator, devices=devices, num_nodes=nodes, strategy=strategy,
            precision=tcfg.get("precision", "32-true"), accumulate_grad_batches=int(tcfg.get("accumulate_grad_batches", 1)),
            gradient_clip_val=tcfg.get("gradient_clip_val") if tcfg.get("strategy") != "deepspeed_stage_2" else None,
            val_check_interval=min(int(tcfg["val_check_interval"]), int(tcfg["max_steps"])),
            check_val_every_n_epoch=None, log_every_n_steps=log_every, num_sanity_val_steps=0, enable_progress_bar=False,
            enable_model_summary=False, logger=loggers,
            callbacks=[ckpt, progress, mirror.callback(), _frozen_eval_callback(), _finite_loss_callback(),
                       *(callbacks or [])],
            # the semi-sorted sampler shards by rank itself; Lightning's distributed sampler would replace it
            # (so does lhotse's, for batch_duration)
            default_root_dir=str(out),
            use_distributed_sampler=devices * nodes > 1 and not (tcfg.get("semi_sorted_batching") or tcfg.get("batch_duration")),
        )
        model, base_desc = load_base_model(base, model_cfg, data["manifests"], tcfg, work, trainer)
        from clinasr.training.tdt_loss import install_cpu_tdt_loss

        if reason := install_cpu_tdt_loss(model, "cuda" if accelerator == "gpu" else "cpu"):
            log(f"[train] {reason}")
        if n_ckpt := activation_checkpointing(model, tcfg):
            log(f"[train] activation checkpointing: {n_ckpt} encoder layers recompute their activations in backward")
        base_state = ({k: v.detach().clone() for k, v in model.state_dict().items()}
                      if tcfg.get("merge_with_base") is not None and "config" not in base else None)
        if n_frozen := freeze_encoder_layers(model, tcfg):
            log(f"[train] frozen: encoder front end + first {tcfg['freeze_encoder_layers']} layers "
                f"({n_frozen / 1e6:.2f} M parameters keep the base's weights)")
        if tcfg.get("encoder_lr_scale") is not None:
            log(f"[train] encoder learning rate x{float(tcfg['encoder_lr_scale'])}")
        n_params = sum(p.numel() for p in model.parameters())
        params = {"base": base_desc, "dataset": args["dataset"], "n_params": n_params, "seed": seed,
                  "strategy": str(tcfg.get("strategy")), "accelerator": accelerator, "devices": devices, "nodes": nodes,
                  "resumed": resume, **{f"trainer.{k}": v for k, v in tcfg.items()}}
        if not resume:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            mlflow.log_dict(model_cfg or {}, "config/model.yaml")
            mlflow.log_dict(tcfg, "config/trainer.yaml")
            mlflow.log_dict(data["report"], "data/report.json")
        log(f"[train] {base_desc}: {n_params / 1e6:.2f} M parameters, {tcfg['max_steps']} steps on "
            f"{accelerator} x{devices}{f' x {nodes} nodes' if nodes > 1 else ''}"
            f"{' (resuming from ' + str(last) + ')' if resume else ''}")
        t0 = time.time()
        try:
            trainer.fit(model, ckpt_path=str(last) if resume else None)
        except torch.OutOfMemoryError:
            size = f"batch_duration {tcfg['batch_duration']} s" if tcfg.get("batch_duration") else f"batch_size {tcfg['batch_size']}"
            raise TrainingError(f"out of GPU memory at {size}: lower it, set activation_checkpointing: true (on an "
                                "H100: 1,200 s batches in 19 instead of 56 GiB, ~18% slower), raise accumulate_grad_batches, or use strategy "
                                "deepspeed_stage_2 with configs/deepspeed/zero2_offload.json; nothing registered") from None
        elapsed = time.time() - t0
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        metrics.update(progress.steady())
        loss = metrics.get("train_loss", metrics.get("loss", float("nan")))
        if math.isnan(loss) or math.isinf(loss):
            raise TrainingError(f"training loss is {loss}: lower the learning rate or check the data; nothing registered")
        if rank:
            mlflow.end_run()
            return {"rank": rank, "global_step": trainer.global_step, "train_seconds": round(elapsed, 1)}
        if (alpha := merge_with_base(model, base_state, tcfg)) is not None:
            log(f"[train] saved weights: {alpha} x fine-tuned + {1 - alpha:.2f} x base (merge_with_base)")
        nemo_path = out / "model.nemo"
        model.save_to(str(nemo_path))
        if on_trained:   # e.g. score the trained model in memory (clinasr.experiment)
            on_trained(model)
        mlflow.log_artifact(str(nemo_path), "model")
        if (out / "tensorboard").exists():
            mlflow.log_artifacts(str(out / "tensorboard"), "tensorboard")
        if accelerator == "gpu":
            metrics["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        mlflow.log_metrics({"train_seconds": elapsed, "global_step": trainer.global_step})
        result = {"mlflow_run_id": run.info.run_id, "mlflow_experiment_id": exp.experiment_id, "nemo_path": str(nemo_path), "global_step": trainer.global_step,
                  "metrics": metrics, "train_seconds": round(elapsed, 1), "n_params": n_params,
                  "checkpoint_dir": str(ckpt_dir), "data": data["report"], "dataset": args["dataset"]}
        if (name := mlflow_cfg.get("register_as")) and not isinstance(mlflow, _Tracking):
            from clinasr.registry import register_candidate

            result["model_version"] = register_candidate(name, run.info.run_id, "model/model.nemo",
                                                         tags={"dataset": args["dataset"], **(mlflow_cfg.get("tags") or {})})
            result["model_uri"] = f"models:/{name}/{result['model_version']}"
        mlflow.end_run()
        return result
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise


def _usable_checkpoint(ckpt_dir: Path, log) -> None:
    """A ``last.ckpt`` that does not load (a crash mid-write, a truncated copy) is moved aside as
    ``last.ckpt.corrupt`` and the newest periodic checkpoint that loads takes its place; with none, the run
    starts over. Either way the log says so — a resume never fails on a broken file."""
    import shutil

    import torch

    def loads(p: Path) -> bool:
        try:
            torch.load(p, map_location="cpu", weights_only=False, mmap=True)
            return True
        except Exception:
            return False

    last = ckpt_dir / "last.ckpt"
    if loads(last):
        return
    bad = last.with_suffix(".ckpt.corrupt")
    last.replace(bad)
    for p in sorted(ckpt_dir.glob("step*.ckpt"), reverse=True):
        if loads(p):
            shutil.copyfile(p, last)
            log(f"[train] {last} does not load (moved to {bad.name}); resuming from {p.name} instead")
            return
    log(f"[train] {last} does not load (moved to {bad.name}) and no earlier checkpoint does: starting over")


class _CheckpointMirror:
    """Keeps ``last.ckpt`` (and the MLflow run id) mirrored at an s3:// prefix, so any machine can resume.

    Lightning runs ModelCheckpoint after other callbacks, so a checkpoint written at step N is uploaded at
    step N+1 (and at the end of training or on an exception); the upload is skipped when unchanged."""

    def __init__(self, uri: str | None, ckpt_dir: Path, log):
        if uri and not uri.startswith("s3://"):
            raise TrainingError(f"checkpoint_uri must be an s3:// prefix (got {uri!r})")
        self.uri, self.dir, self.log, self._sent = (uri.rstrip("/") if uri else None), ckpt_dir, log, None

    def restore(self) -> None:
        if not self.uri:
            return
        from clinasr.store import ObjectStore

        store = ObjectStore()
        if not store.exists(f"{self.uri}/last.ckpt"):
            self.log(f"[train] no checkpoint at {self.uri}: starting fresh")
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in ("mlflow_run_id", "last.ckpt"):
            if store.exists(f"{self.uri}/{name}"):
                store.download(f"{self.uri}/{name}", self.dir / name)
        self.log(f"[train] restored last.ckpt from {self.uri}")

    def upload(self) -> None:
        last = self.dir / "last.ckpt"
        if not self.uri or not last.exists():
            return
        stamp = (last.stat().st_mtime_ns, last.stat().st_size)
        if stamp == self._sent:
            return
        from clinasr.store import ObjectStore

        t0 = time.time()
        store = ObjectStore()
        if (self.dir / "mlflow_run_id").exists():
            store.put_file(self.dir / "mlflow_run_id", f"{self.uri}/mlflow_run_id")
        store.put_file(last, f"{self.uri}/last.ckpt")
        self._sent = stamp
        self.log(f"[train] mirrored last.ckpt ({stamp[1] / 2**20:.1f} MiB) to {self.uri} in {time.time() - t0:.1f}s")

    def callback(self):
        from lightning.pytorch.callbacks import Callback

        mirror = self

        class Mirror(Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if trainer.is_global_zero:
                    mirror.upload()

            def on_train_end(self, trainer, module):
                if trainer.is_global_zero:
                    mirror.upload()

            def on_exception(self, trainer, module, exc):
                if trainer.is_global_zero:
                    mirror.upload()

        return Mirror()


class _Tracking:
    """Stands in for the mlflow module when tracking is disabled (benchmarks): records nothing."""

    class _Obj:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    def __getattr__(self, name):
        return lambda *a, **k: None

    def set_experiment(self, name):
        return self._Obj(experiment_id="0", name=name)

    def start_run(self, **kw):
        return self._Obj(info=self._Obj(run_id="untracked"))


def train_stage(args: dict) -> dict:
    """ML-runtime entry point (``clinasr ml-stage train``)."""
    return train(args)
