"""How a run trains (ML runtime): the Lightning strategy and process layout (:func:`choose_strategy`: DDP,
DeepSpeed ZeRO-2, CPU fallbacks, torchrun), and the trainer options that adjust the model or its optimiser
before and after fitting: DeepSpeed's CPU Adam, a lower encoder learning rate, SpecAugment off, activation
checkpointing, frozen encoder layers, merging with the base weights (WiSE-FT), and the TDT loss after a
vocabulary change."""

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
        from lightning.pytorch.strategies import DeepSpeedStrategy

        ds_cfg = json.loads((REPO_ROOT / tcfg.get("deepspeed_config", "configs/deepspeed/zero2_offload.json")).read_text())
        # trainer option deepspeed_overrides: deep-merged over the checked-in JSON (bucket sizes, overlap, ...)
        ds_cfg = deep_merge(ds_cfg, tcfg.get("deepspeed_overrides") or {})
        # DeepSpeed's throughput logging wants a clip count; Lightning reads it off the loader's batch sampler, which
        # fixed-duration (lhotse) loaders do not have ('NoneType' object has no attribute 'batch_size')
        ds_cfg.setdefault("train_micro_batch_size_per_gpu", int(tcfg.get("batch_size", 1)))
        return DeepSpeedStrategy(config=ds_cfg), "gpu", n, nodes
    if (want == "ddp" and n > 1) or world > 1:
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(gradient_as_bucket_view=True), "gpu", n, nodes
    return "auto", "gpu", 1, 1


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
    frozen = [m for m in [getattr(model.encoder, "pre_encode", None), *layers[:n]] if m is not None]
    count = 0
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
            count += p.numel()
        m.eval()
    model._clinasr_frozen = frozen
    return count


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
