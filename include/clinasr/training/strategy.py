"""How a run trains (ML runtime): the Lightning strategy and process layout (:func:`choose_strategy`: DDP,
DeepSpeed ZeRO-2, CPU fallbacks, torchrun), and the trainer options that adjust the model or its optimiser
before and after fitting: DeepSpeed's CPU Adam, a lower encoder learning rate, SpecAugment off, activation
checkpointing, frozen encoder layers, a pull towards the base weights (L2-SP), merging with the base weights
(WiSE-FT), and the TDT loss after a vocabulary change."""

from __future__ import annotations

import copy
import json

from clinasr.mlenv import launched_processes
from clinasr.settings import REPO_ROOT
from clinasr.training.common import TrainingError, deep_merge


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
        # trainer option deepspeed_overrides: deep-merged over the checked-in JSON (bucket sizes, overlap, ...)
        ds_cfg = _deepspeed_cfg(tcfg)
        # DeepSpeed's throughput logging wants a clip count; Lightning reads it off the loader's batch sampler, which
        # fixed-duration (lhotse) loaders do not have ('NoneType' object has no attribute 'batch_size')
        ds_cfg.setdefault("train_micro_batch_size_per_gpu", int(tcfg.get("batch_size", 1)))
        return _deepspeed_strategy(ds_cfg, log), "gpu", n, nodes
    if (want == "ddp" and n > 1) or world > 1:
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(gradient_as_bucket_view=True), "gpu", n, nodes
    return "auto", "gpu", 1, 1


def _deepspeed_strategy(ds_cfg: dict, log):
    """Lightning's DeepSpeedStrategy that also resumes a single-file checkpoint (a run on another strategy, or a
    ZeRO-2 checkpoint of another GPU count converted by clinasr.training.checkpoints): its weights, fp32 masters
    and Adam state go into this run's partitions. DeepSpeed's own directories load as before."""
    from pathlib import Path

    from lightning.pytorch.strategies import DeepSpeedStrategy

    class ClinasrDeepSpeed(DeepSpeedStrategy):
        def load_checkpoint(self, checkpoint_path, *args, **kwargs):
            if not Path(checkpoint_path).is_file():
                return super().load_checkpoint(checkpoint_path, *args, **kwargs)
            import torch

            from clinasr.training.checkpoints import load_full_into_zero

            ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
            module = self.lightning_module
            n = load_full_into_zero(self.deepspeed_engine.optimizer, module, ckpt, strict=module.strict_loading)
            log(f"[train] {checkpoint_path} loaded into ZeRO-2 over {self.world_size} GPU(s): weights"
                f"{f', Adam state of {n} parameters' if n else ' only (no Adam state in it: Adam restarts)'}")
            return ckpt

    return ClinasrDeepSpeed(config=ds_cfg)


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


def encoder_param_groups(model_cfg: dict | None, tcfg: dict) -> dict | None:
    """Trainer option ``encoder_lr_scale: s``: NeMo's ``optim_param_groups`` puts the encoder in its own
    parameter group at s x the base learning rate (decoder and joint keep it)."""
    s = tcfg.get("encoder_lr_scale")
    if s is None or float(s) == 1.0 or not model_cfg or "optim" not in model_cfg:
        return model_cfg
    cfg = copy.deepcopy(model_cfg)
    cfg["optim_param_groups"] = {"encoder": {"lr": float(cfg["optim"]["lr"]) * float(s)}}
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
    return _freeze(model, [m for m in [getattr(model.encoder, "pre_encode", None), *layers[:n]] if m is not None])


def _freeze(model, modules: list) -> int:
    """No gradients and eval mode (:func:`_keep_in_eval`) for ``modules``. Returns the number of frozen parameters."""
    count = 0
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
            count += p.numel()
    _keep_in_eval(model, modules)
    return count


def _keep_in_eval(model, modules: list) -> None:
    """Eval mode for ``modules`` for the whole run: they join ``model._clinasr_frozen``, which the trainer's callback
    puts back in eval mode after Lightning's train()."""
    for m in modules:
        m.eval()
    model._clinasr_frozen = [*getattr(model, "_clinasr_frozen", ()), *modules]


def keep_batch_norm_statistics(model, tcfg: dict) -> int:
    """Trainer option ``keep_batch_norm_statistics: true``: every batch-norm layer of the encoder normalises with the
    base model's running statistics during fine-tuning (eval mode; its scale and shift still learn). Estimated on
    batches of 8 clips of the fine-tune's few voices, the statistics drift towards them: putting the base's back
    into the default fine-tune after training raised term accuracy on unseen espeak-ng voices 0.625 -> 0.664 and
    lowered everyday-English WER 0.463 -> 0.459 (docs/benchmarks.md). Returns the number of such layers."""
    if not tcfg.get("keep_batch_norm_statistics"):
        return 0
    import torch

    norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    _keep_in_eval(model, norms)
    return len(norms)


def freeze_prediction_network(model, tcfg: dict) -> int:
    """Trainer option ``freeze_prediction_network: true``: the transducer's prediction network (NeMo's
    ``decoder``, the part that models which token follows which) keeps the base model's weights and eval mode;
    the encoder (beyond any frozen layers) and the joint learn the new words. Returns the frozen parameter count."""
    if not tcfg.get("freeze_prediction_network"):
        return 0
    decoder = getattr(model, "decoder", None)
    if decoder is None:
        raise TrainingError("freeze_prediction_network: the model has no prediction network (decoder)")
    return _freeze(model, [decoder])


def anchor_to_base(model, base_state: dict | None, tcfg: dict) -> int:
    """Trainer option ``anchor_to_base: w`` (w > 0): a pull of every trainable parameter towards the weights the
    fine-tune started from (Li et al., "Explicit inductive bias for transfer learning with convolutional
    networks", L2-SP). Where the merge with the base (``merge_with_base``) interpolates once after training, the
    pull acts during it: the model looks for the clinical words near the base. ``anchor_mode``:

    ``loss`` (default)  the training loss gains ``w/2 * sum((theta - theta_base)^2)`` (the penalty is logged as
                        ``anchor_penalty``; ``train_loss`` stays the transducer loss alone). Under Adam the
                        penalty's gradient is rescaled per parameter like the loss's.
    ``decay``           decoupled, as AdamW decouples weight decay: before each step every parameter moves
                        ``lr * w`` of the way back to its base value (``theta -= lr * w * (theta - theta_base)``,
                        lr of its parameter group), whatever Adam does with the gradients. Not under DeepSpeed
                        (its fp32 master weights would overwrite the pull).

    Call it after freezing (frozen parameters are not pulled). Returns the number of parameters pulled."""
    w = tcfg.get("anchor_to_base")
    if not w:
        return 0
    w, mode = float(w), tcfg.get("anchor_mode", "loss")
    if w < 0:
        raise TrainingError(f"anchor_to_base must be a non-negative weight (got {w})")
    if mode not in ("loss", "decay"):
        raise TrainingError(f"anchor_mode must be loss or decay (got {mode!r})")
    if mode == "decay" and tcfg.get("strategy") == "deepspeed_stage_2":
        raise TrainingError("anchor_mode decay moves the module's weights between steps: not with deepspeed_stage_2 "
                            "(its fp32 master weights overwrite them); use anchor_mode loss")
    if base_state is None:
        raise TrainingError("anchor_to_base needs a base model to pull towards (base nemo: or pretrained:)")
    import torch

    pairs = [(p, base_state[n].detach().clone()) for n, p in model.named_parameters()
             if p.requires_grad and n in base_state and base_state[n].shape == p.shape]
    if not pairs:
        return 0
    step = model.training_step

    def training_step(*args, **kwargs):
        if pairs[0][1].device != pairs[0][0].device:   # Lightning moved the model after this call (a GPU)
            pairs[:] = [(p, a.to(p.device)) for p, a in pairs]
        if mode == "decay":
            lr = {id(p): g["lr"] for opt in model.trainer.optimizers for g in opt.param_groups for p in g["params"]}
            with torch.no_grad():
                for p, a in pairs:
                    p.add_(p - a.to(p.dtype), alpha=-lr.get(id(p), 0.0) * w)
            return step(*args, **kwargs)
        out = step(*args, **kwargs)
        penalty = torch.stack([(p - a.to(p.dtype)).pow(2).sum() for p, a in pairs]).sum()
        model.log("anchor_penalty", penalty.detach())
        out["loss"] = out["loss"] + 0.5 * w * penalty
        return out

    model.training_step = training_step   # an instance attribute: the .nemo and checkpoints are unchanged
    return sum(p.numel() for p, _ in pairs)


def merge_with_base(model, base_state: dict | None, tcfg: dict) -> float | None:
    """Trainer option ``merge_with_base: a`` (0 < a < 1): weight-space ensembling of the fine-tuned model with the
    base it started from (Wortsman et al., "Robust fine-tuning of zero-shot models", WiSE-FT). Interpolating
    the weights keeps much of the base's general ability at a small cost in the new domain. A tensor the fine-tune
    left as the base had it (frozen layers, the batch-norm statistics it keeps) stays bit for bit the base's:
    ``a * x + (1 - a) * x`` is not always ``x`` in floating point."""
    a = tcfg.get("merge_with_base")
    if a is None or float(a) >= 1.0:
        return None
    a = float(a)
    if base_state is None:
        raise TrainingError("merge_with_base needs a base model to merge with (base nemo: or pretrained:)")
    interpolate(model.state_dict(), base_state, a)
    return a


def interpolate(state: dict, base_state: dict, a: float) -> int:
    """In place, every floating-point tensor of ``state`` that ``base_state`` has with the same shape becomes
    ``a * state + (1 - a) * base``, except one equal to the base's, which stays as it is; the rest (integer counters,
    tensors only one side has) is untouched. Returns how many tensors changed. The trainer's merge_with_base and
    bench/merge_nemo.py (saved .nemo files) both merge through it."""
    import torch

    changed = 0
    with torch.no_grad():
        for k, v in state.items():
            b = base_state.get(k)
            if b is not None and torch.is_floating_point(v) and b.shape == v.shape:
                b = b.to(v.device, v.dtype)
                if not torch.equal(v, b):
                    v.copy_(a * v + (1 - a) * b)
                    changed += 1
    return changed


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


def step_levers(model, tcfg: dict, accelerator: str, log) -> dict:
    """The training-step levers of issue 27, each a trainer option whose default keeps the model's own behaviour
    (measured in docs/benchmarks.md, "A faster training step"). Applied after the model is built or loaded and
    before Lightning asks it for an optimizer. Returns what was applied (for the run's parameters).

    ``fused_adam: true``            torch AdamW/Adam with ``fused=True`` (one kernel for all parameters, instead of
                                    the multi-tensor ``foreach`` path; CUDA, and on CPU since torch 2.4: 25 -> 8 ms
                                    a step for 7.3 M parameters on 2 cores). With DeepSpeed's CPU Adam or with
                                    ZeRO-Offload it is not applied, and the log says so.
    ``subsampling_conv_chunking_factor: N``  the encoder's convolutional front end runs over N slices of the batch
                                    (NeMo's own option; the same outputs): on 2 CPU cores a batch of 8 clips of 5.4 s
                                    took 0.093 s whole and 0.046 s in two halves (the whole batch's activations
                                    outgrow the cache). The saved model keeps the base's setting.
    ``joint_fused_batch_size: N``   the TDT joint + loss run over sub-batches of N clips (NeMo's
                                    ``joint.fused_batch_size``; the Parakeet configs say 16); ``whole``: over the
                                    whole batch at once (N = the trainer's clip cap ``batch_size``). Unset: the
                                    model's own.
    ``compile_encoder: true``       ``torch.compile`` of each conformer layer's forward (regional compilation, in place:
                                    parameter names, checkpoints and the .nemo stay the same), dynamic shapes; GPU
                                    only (on CPU it is logged and skipped). The first steps pay the compilation.
    """
    from omegaconf import open_dict

    applied: dict = {}
    if tcfg.get("fused_adam"):
        name = str(model.cfg.get("optim", {}).get("name", "")).lower()
        offload = bool(_deepspeed_cfg(tcfg).get("zero_optimization", {}).get("offload_optimizer")) \
            if tcfg.get("strategy") == "deepspeed_stage_2" else False
        why = ("not with optimizer: cpu_adam (DeepSpeed's CPU Adam is already vectorised)" if tcfg.get("optimizer") == "cpu_adam" else
               "not with ZeRO-Offload (the optimizer state lives in host memory)" if offload else
               f"the model's optimizer is {name!r}, not adam/adamw" if name not in ("adam", "adamw") else None)
        with open_dict(model.cfg):
            if why:
                if "optim" in model.cfg:
                    model.cfg.optim.pop("fused", None)
                log(f"[train] fused_adam: not applied: {why}")
            else:
                model.cfg.optim.fused = True      # NeMo passes unknown optim keys to the torch optimizer
                model.cfg.optim.pop("foreach", None)
                applied["fused_adam"] = True
                log(f"[train] fused_adam: torch AdamW(fused=True) on the {'GPU' if accelerator == 'gpu' else 'CPU'}")
    n = tcfg.get("joint_fused_batch_size")
    if n is not None:
        joint = model.joint
        if not getattr(joint, "fuse_loss_wer", False):
            log("[train] joint_fused_batch_size: the model's joint is not fused (fuse_loss_wer false): it already "
                "runs over the whole batch")
        else:
            size = int(tcfg.get("batch_size", 1)) if str(n) == "whole" else int(n)
            if size < 1:
                raise TrainingError(f"joint_fused_batch_size must be a positive number of clips or 'whole' (got {n!r})")
            joint.set_fused_batch_size(size)
            with open_dict(model.cfg):
                model.cfg.joint.fused_batch_size = size
            applied["joint_fused_batch_size"] = size
            log(f"[train] TDT joint + loss over sub-batches of {size} clips"
                f"{' (the whole batch)' if str(n) == 'whole' else ''}")
    if (n := tcfg.get("subsampling_conv_chunking_factor")) is not None:
        if int(n) < 1:
            raise TrainingError(f"subsampling_conv_chunking_factor must be a positive number of slices (got {n!r})")
        if not hasattr(model.encoder, "change_subsampling_conv_chunking_factor"):
            log("[train] subsampling_conv_chunking_factor: not applied (the encoder's front end has no chunking: "
                "only NeMo's ConformerEncoder has)")
        else:
            model._clinasr_chunking_was = model.cfg.encoder.get("subsampling_conv_chunking_factor", 1)
            model.change_subsampling_conv_chunking_factor(int(n))
            applied["subsampling_conv_chunking_factor"] = int(n)
            log(f"[train] the encoder's front end runs over {int(n)} slices of each batch")
    if tcfg.get("compile_encoder"):
        if accelerator != "gpu":
            log("[train] compile_encoder: not applied on CPU (torch.compile pays off on GPUs; eager here)")
        else:
            import torch

            # regional compilation: each conformer layer in place (nn.Module.compile: state_dict keys unchanged). The
            # layers share one code object, so dynamo/inductor compile it once and reuse it, where compiling the
            # whole encoder compiles 24 layers' worth of graph (minutes; 204 s at two shapes for inference)
            layers = list(getattr(model.encoder, "layers", None) or [])
            for layer in layers:
                layer.compile(dynamic=True)
            applied["compile_encoder"] = len(layers)
            log(f"[train] compile_encoder: torch.compile of {len(layers)} encoder layers (inductor, dynamic shapes), "
                f"torch {torch.__version__}")
    return applied


def _deepspeed_cfg(tcfg: dict) -> dict:
    """The run's DeepSpeed config: the checked-in JSON with the trainer's ``deepspeed_overrides`` over it."""
    ds_cfg = json.loads((REPO_ROOT / tcfg.get("deepspeed_config", "configs/deepspeed/zero2_offload.json")).read_text())
    return deep_merge(ds_cfg, tcfg.get("deepspeed_overrides") or {})


def fused_adam_callback():
    """With ``fused_adam``: Lightning refuses gradient clipping with any optimizer that says it unscales gradients
    itself (torch's fused Adam/AdamW set ``_step_supports_amp_scaling``), "HINT: Are you using a 'fused'
    optimizer?" (found on the H200). That only matters with fp16's GradScaler; under bf16 or fp32 there is no
    scaler, so the flag is cleared and Lightning clips as usual. With a scaler the run keeps the refusal."""
    from lightning.pytorch.callbacks import Callback

    class FusedAdamClipping(Callback):
        def on_train_start(self, trainer, module):
            if getattr(trainer.precision_plugin, "scaler", None) is not None:
                return
            for opt in trainer.optimizers:
                if getattr(opt, "defaults", {}).get("fused") and getattr(opt, "_step_supports_amp_scaling", False):
                    opt._step_supports_amp_scaling = False

    return FusedAdamClipping()
