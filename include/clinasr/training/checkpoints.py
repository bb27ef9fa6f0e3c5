"""Resuming across strategies and GPU counts (ML runtime).

Two checkpoint forms reach a resume:

- **Lightning's single file** (strategy ``auto`` / ``ddp``): full weights, the optimizer's state, step, LR schedule.
  DDP resumes it on any number of GPUs as it is.
- **DeepSpeed ZeRO-2's directory** (``last.ckpt/`` holding ``latest``, ``checkpoint/mp_rank_00_model_states.pt`` and
  one ``zero_pp_rank_<r>_mp_rank_00_optim_states.pt`` per GPU): the fp32 master weights and Adam's moments are
  *partitioned* over the GPUs that wrote it. DeepSpeed 0.19 loads it only on the same number of GPUs ("Automatic
  adjustment of ZeRO's optimizer state partitioning with a new world size is not currently supported"), and
  Lightning's other strategies cannot read a directory at all.

:func:`resume_path` picks what a run resumes from. A ZeRO-2 directory that the run cannot load as it is (another
GPU count, or a strategy other than DeepSpeed) is converted once into the full single-file form
(:func:`zero_to_full`: DeepSpeed's own ``zero_to_fp32`` merge for the weights, the same merge for Adam's
moments, Lightning's step, loops and LR schedule) and the run resumes from that. The other way, a single-file
checkpoint resumed under ZeRO-2 (on any GPU count) is loaded into the engine's partitions by
:func:`load_full_into_zero` (weights, fp32 masters and Adam's moments). Nothing is lost on the way: weights,
moments, step and schedule all continue. Where the conversion cannot run (DeepSpeed missing, not ZeRO stage 1/2,
no disk), the run stops with a message naming the conversion commands.
"""

from __future__ import annotations

import re
from pathlib import Path

from clinasr.training.common import TrainingError

FULL_OPTIMIZER_KEY = "clinasr_full_optimizer"    # {"step": float, "state": {param name: {"exp_avg": t, ...}}}
# DeepSpeed's own entries in its model-states file; the rest is Lightning's checkpoint (loops, schedulers, ...)
_DEEPSPEED_KEYS = {"module", "optimizer", "lr_scheduler", "csr_tensor_module_names", "skipped_steps", "global_steps",
                   "dp_world_size", "mp_world_size", "buffer_names", "param_shapes", "frozen_param_shapes",
                   "frozen_param_fragments", "shared_params", "ds_config", "ds_version", "data_sampler",
                   "random_ltd", "sparse_tensor_module_names", "ds_autotp_uc_info"}


def describe(path: Path) -> dict:
    """``{"format": "lightning"}`` for a file; for a DeepSpeed checkpoint directory ``{"format": "deepspeed",
    "tag", "dir", "model_states", "optim_files", "world_size"}`` (world size: the GPUs that wrote it)."""
    path = Path(path)
    if not path.is_dir():
        return {"format": "lightning", "path": path}
    tag = (path / "latest").read_text().strip() if (path / "latest").is_file() else "checkpoint"
    d = path / tag
    optim = sorted(d.glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt"),
                   key=lambda p: int(re.search(r"zero_pp_rank_(\d+)_", p.name).group(1)))
    return {"format": "deepspeed", "path": path, "tag": tag, "dir": d, "model_states": d / "mp_rank_00_model_states.pt",
            "optim_files": optim, "world_size": len(optim)}


def loads(path: Path) -> bool:
    """Whether a checkpoint (file or DeepSpeed directory) reads back: every file it needs opens (memory-mapped)."""
    import torch

    info = describe(path)
    files = [path] if info["format"] == "lightning" else [info["model_states"], *info["optim_files"]]
    if info["format"] == "deepspeed" and not info["optim_files"]:
        return False
    try:
        for f in files:
            torch.load(f, map_location="cpu", weights_only=False, mmap=True)
        return True
    except Exception:
        return False


def trained_minutes(path: Path) -> float:
    """Training wall-clock minutes a checkpoint has behind it (Lightning's ``Timer`` state: ``max_time`` counts
    them on resume); 0 where there is no checkpoint or no timer state."""
    import torch

    info = describe(path)
    f = info["path"] if info["format"] == "lightning" else info["model_states"]
    try:
        ck = torch.load(f, map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        return 0.0
    timer = next((v for k, v in (ck.get("callbacks") or {}).items() if str(k).startswith("Timer")), None) or {}
    return float((timer.get("time_elapsed") or {}).get("train", 0.0)) / 60


def convert_hint(path: Path) -> str:
    return (f"convert it to a single file with DeepSpeed's script, `python {path}/zero_to_fp32.py {path} full.pt` "
            f"(weights only), or with Lightning, `python -c \"from lightning.pytorch.utilities.deepspeed import "
            f"convert_zero_checkpoint_to_fp32_state_dict as c; c('{path}', 'full.ckpt')\"` (weights, step and schedule; "
            "Adam restarts), and resume from that file; or resume on the GPU count that wrote it")


def resume_path(last: Path, deepspeed_run: bool, world: int, work: Path, log) -> Path:
    """The checkpoint this run resumes from: ``last`` itself when the run loads it as it is, else the full
    single-file conversion of a ZeRO-2 directory (written under ``work/resume``, once per process)."""
    info = describe(last)
    if info["format"] == "lightning":
        if deepspeed_run:
            log(f"[train] resuming a single-file checkpoint under DeepSpeed ZeRO-2 on {world} GPU(s): weights, Adam "
                "state, step and LR schedule are loaded into the partitions")
        return last
    saved = info["world_size"]
    if deepspeed_run and saved == world:
        return last
    why = (f"it was written by {saved} GPU(s) and this run has {world} (DeepSpeed cannot re-partition it)"
           if deepspeed_run else f"this run does not use DeepSpeed (it was written by ZeRO-2 on {saved} GPU(s))")
    out = Path(work) / "resume" / "full.ckpt"
    try:
        stats = zero_to_full(last, out)
    except TrainingError:
        raise
    except Exception as e:
        raise TrainingError(f"cannot resume {last}: {why}, and converting it failed ({type(e).__name__}: {e}). "
                            f"To continue, {convert_hint(last)}.") from None
    log(f"[train] {last} is a DeepSpeed ZeRO-2 checkpoint that {why}: converted to a full checkpoint {out} "
        f"({stats['params']} parameters with Adam state, step {stats['global_step']}) and resuming from it")
    return out


def zero_to_full(ckpt: Path, out: Path) -> dict:
    """A DeepSpeed ZeRO-1/2 checkpoint directory (Lightning's layout) as one Lightning checkpoint file: the fp32
    master weights (DeepSpeed's ``zero_to_fp32`` merge), Adam's moments merged the same way and keyed by parameter
    name (``FULL_OPTIMIZER_KEY``; Lightning's own ``optimizer_states`` is left empty, since the parameter order of
    a fresh optimizer is only known once it exists), and Lightning's step, loops and LR schedulers."""
    import math

    import torch

    try:
        from deepspeed.checkpoint.constants import (BASE_OPTIMIZER_STATE, BASE_OPTIMIZER_STATE_STEP, GROUP_PADDINGS,
                                                    PARAM_ALIGNMENT_PADDINGS, PARAM_SHAPES, ZERO_STAGE)
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError as e:
        raise TrainingError(f"{ckpt} is a DeepSpeed checkpoint and DeepSpeed is not installed here ({e})") from None
    info = describe(ckpt)
    if info["format"] != "deepspeed" or not info["optim_files"] or not info["model_states"].is_file():
        raise TrainingError(f"{ckpt} is not a complete DeepSpeed checkpoint (no model states or optimizer shards)")
    client = torch.load(info["model_states"], map_location="cpu", weights_only=False, mmap=True)
    shards = [torch.load(f, map_location="cpu", weights_only=False, mmap=True)["optimizer_state_dict"]
              for f in info["optim_files"]]
    if shards[0].get(ZERO_STAGE, 0) > 2:
        raise TrainingError(f"{ckpt} is a ZeRO stage-{shards[0][ZERO_STAGE]} checkpoint; only stages 1 and 2 convert here")
    weights = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=info["tag"])
    strip = (lambda k: k[len("_forward_module."):] if k.startswith("_forward_module.") else k)  # noqa: E731
    weights = {strip(k): v.contiguous() for k, v in weights.items()}

    # Adam's moments: each group's state is flat and partitioned over the ranks like the fp32 masters; rigid (default)
    # shards keep the last rank's padding, elastic ones do not. Concatenated without padding and cut in parameter
    # order (with the per-parameter alignment padding, if any), exactly as zero_to_fp32 cuts the weights.
    shapes = client[PARAM_SHAPES]
    align = shards[0].get(PARAM_ALIGNMENT_PADDINGS)
    state: dict[str, dict] = {}
    step = None
    for g, group_shapes in enumerate(shapes):
        per_rank = []
        for sd in shards:
            base = sd[BASE_OPTIMIZER_STATE]
            if isinstance(base, dict):       # rigid: torch's state_dict of the flat partition (one param per group)
                st = dict(base["state"][g])
                pad = sd[GROUP_PADDINGS][g] if sd.get(GROUP_PADDINGS) else 0
                st = {k: (v[:v.numel() - pad] if pad and torch.is_tensor(v) and v.dim() == 1 else v) for k, v in st.items()}
            else:                             # elastic: already without padding
                st = dict(base[g])
            if BASE_OPTIMIZER_STATE_STEP in sd and "step" not in st:
                st["step"] = sd[BASE_OPTIMIZER_STATE_STEP]
            per_rank.append(st)
        keys = [k for k, v in per_rank[0].items() if torch.is_tensor(v) and v.dim() == 1 and v.numel() > 1]
        if step is None and "step" in per_rank[0]:
            s = per_rank[0]["step"]
            step = float(s.item() if torch.is_tensor(s) else s)
        flat = {k: torch.cat([st[k].float() for st in per_rank]) for k in keys}
        offset = 0
        for j, (name, shape) in enumerate(group_shapes.items()):
            n = math.prod(shape)
            state[strip(name)] = {k: flat[k].narrow(0, offset, n).view(tuple(shape)).clone() for k in keys}
            offset += n + (align[g][j] if align else 0)
        total = next(iter(flat.values())).numel() if flat else offset
        align_to = 2 * len(shards)      # zero_to_fp32's sanity check: equal up to ZeRO-2's 2 x world alignment
        if flat and math.ceil(total / align_to) != math.ceil(offset / align_to):
            raise TrainingError(f"{ckpt}: optimizer shards of group {g} hold {total} values for {offset} parameters")
    missing = [k for k in state if k not in weights]
    if missing:
        raise TrainingError(f"{ckpt}: optimizer state for parameters the weights lack: {missing[:3]}")
    full = {k: v for k, v in client.items() if k not in _DEEPSPEED_KEYS}
    full.update({"state_dict": weights, "optimizer_states": [],
                 FULL_OPTIMIZER_KEY: {"step": step, "state": state, "source": f"DeepSpeed ZeRO-2, {len(shards)} GPU(s)"}})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    torch.save(full, tmp)
    tmp.replace(out)
    return {"params": len(state), "global_step": full.get("global_step"), "world_size": len(shards)}


def named_optimizer_state(checkpoint: dict, module) -> dict | None:
    """``{"step", "state": {param name: {"exp_avg": ..., "exp_avg_sq": ...}}}`` from a full checkpoint: a converted
    one's ``FULL_OPTIMIZER_KEY``, or Lightning's ``optimizer_states[0]`` mapped from the optimizer's parameter order
    (NeMo's ``_optimizer_param_groups``, rebuilt the same way from the same config) to names."""
    if checkpoint.get(FULL_OPTIMIZER_KEY):
        return checkpoint[FULL_OPTIMIZER_KEY]
    states = checkpoint.get("optimizer_states") or []
    if states and hasattr(module, "setup_optimizer_param_groups"):
        # rebuilt: the live groups are the optimizer's own dicts, whose params DeepSpeed swapped for flat partitions
        module.setup_optimizer_param_groups()
    groups = getattr(module, "_optimizer_param_groups", None)
    if not states or not groups:
        return None
    names = {id(p): n for n, p in module.named_parameters()}
    order = [names.get(id(p)) for g in groups for p in g["params"]]
    saved = states[0]
    if sum(len(g["params"]) for g in saved["param_groups"]) != len(order):
        return None
    index = [i for g in saved["param_groups"] for i in g["params"]]
    out, step = {}, None
    for i, name in zip(index, order):
        st = saved["state"].get(i)
        if not st or name is None:
            continue
        out[name] = {k: v for k, v in st.items() if k != "step"}
        if step is None and "step" in st:
            step = float(st["step"].item() if hasattr(st["step"], "item") else st["step"])
    return {"step": step, "state": out}


def apply_named_state(optimizer, module, named: dict) -> int:
    """Puts Adam's moments and step (by parameter name) into a torch optimizer over ``module``'s parameters, as
    the optimizer would hold them after ``step`` steps. Returns the number of parameters given a state."""
    import torch

    by_id = {id(p): n for n, p in module.named_parameters()}
    count = 0
    for group in optimizer.param_groups:
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            st = named["state"].get(by_id.get(id(p)))
            if st is None:
                continue
            new = {k: v.to(p.device, p.dtype if v.is_floating_point() else v.dtype).clone() for k, v in st.items()}
            new["step"] = torch.tensor(float(named.get("step") or 0.0), dtype=torch.float32,
                                       device=p.device if on_device else "cpu")
            optimizer.state[p] = new
            count += 1
    return count


def full_optimizer_callback(log):
    """Lightning callback for a resumed run. Lightning restores weights, loops and LR schedulers; a run resumed
    from a converted ZeRO-2 checkpoint (not under DeepSpeed) also gets Adam's moments back here, by name; and
    every resumed run starts with each group's learning rate at its restored schedule's (a file loaded into
    ZeRO-2, or a converted one, carries no optimizer param_groups to take it from)."""
    from lightning.pytorch.callbacks import Callback

    class FullOptimizer(Callback):
        def __init__(self):
            self.named, self.resumed = None, False

        def on_load_checkpoint(self, trainer, module, checkpoint):
            self.resumed = True
            self.named = checkpoint.get(FULL_OPTIMIZER_KEY)

        def on_train_start(self, trainer, module):
            if not self.resumed:
                return
            from lightning.pytorch.strategies import DeepSpeedStrategy

            if self.named and trainer.optimizers and not isinstance(trainer.strategy, DeepSpeedStrategy):
                n = apply_named_state(trainer.optimizers[0], module, self.named)
                log(f"[train] Adam state restored for {n} parameters ({self.named.get('source', 'converted')}, "
                    f"step {self.named.get('step')})")
            for cfg in trainer.lr_scheduler_configs:
                for g, lr in zip(cfg.scheduler.optimizer.param_groups, cfg.scheduler.get_last_lr()):
                    g["lr"] = lr
            self.named, self.resumed = None, False

    return FullOptimizer()


def load_full_into_zero(zero_optimizer, module, checkpoint: dict, strict: bool = True) -> int:
    """A full checkpoint's weights and Adam state into a live DeepSpeed ZeRO-1/2 optimizer of any partition count.

    Each group's flat buffer is the one the module's parameters are views of; writing a moment into the parameters
    and reading this rank's partition of the buffer lays the moment out exactly as DeepSpeed partitions its
    state (alignment and padding included). The weights go in last, and the fp32 masters are refreshed from them.
    Returns the number of parameters given Adam state (0: the weights only; Adam restarts)."""
    import torch
    import torch.distributed as dist

    named = named_optimizer_state(checkpoint, module)
    params = dict(module.named_parameters())
    restored = 0
    groups = getattr(zero_optimizer, "bit16_groups", None)
    with torch.no_grad():
        if named and groups is not None:
            names = {id(p): n for n, p in params.items()}
            wanted = [names.get(id(p)) for g in groups for p in g]
            keys = sorted({k for st in named["state"].values() for k, v in st.items() if torch.is_tensor(v) and v.dim() > 0})
            if all(n in named["state"] for n in wanted) and all(p.dtype == torch.float32 for g in groups for p in g):
                base = zero_optimizer.optimizer
                for key in keys:
                    for n in wanted:
                        params[n].copy_(named["state"][n][key].to(params[n].device))
                    for i, flat in enumerate(zero_optimizer.single_partition_of_fp32_groups):
                        rank = dist.get_rank(group=zero_optimizer.real_dp_process_group[i])
                        part = zero_optimizer.parallel_partitioned_bit16_groups[i][rank]
                        st = base.state[flat]
                        if key in st:
                            st[key].copy_(part.to(st[key].device))
                        else:
                            st[key] = part.detach().clone().to(flat.device)
                step = float(named.get("step") or 0.0)
                for group, flat in zip(base.param_groups, zero_optimizer.single_partition_of_fp32_groups):
                    st = base.state[flat]
                    if torch.is_tensor(st.get("step")):
                        st["step"].fill_(step)
                    elif isinstance(base, torch.optim.Optimizer) and type(base).__module__.startswith("torch.optim"):
                        # torch's Adam/AdamW keep the step as a tensor (on the device for fused/capturable)
                        on_device = bool(group.get("fused") or group.get("capturable"))
                        st["step"] = torch.tensor(step, dtype=torch.float32, device=flat.device if on_device else "cpu")
                    else:                     # DeepSpeed's CPU Adam: an int, in the state and the group
                        st["step"] = int(step)
                    if "step" in group:
                        group["step"] = int(step)
                restored = len(wanted)
        missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=strict)
        zero_optimizer.refresh_fp32_params()
    return restored


STEP_CHECKPOINT = re.compile(r"^step(\d+)\.ckpt$")


def step_checkpoints(ckpt_dir: Path) -> dict[int, Path]:
    """The step checkpoints a run kept (``stepNNNNNN.ckpt`` single files), by step."""
    out = {}
    for p in Path(ckpt_dir).glob("step*.ckpt"):
        if (m := STEP_CHECKPOINT.match(p.name)) and p.is_file():
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def checkpoints_before(ckpt_dir: Path, n: int, step: int) -> list[Path]:
    """The ``n`` latest step checkpoints written before ``step`` (fewer where fewer were kept), oldest first."""
    return [p for s, p in step_checkpoints(ckpt_dir).items() if s < step][-n:] if n > 0 else []


def average_weights(model, paths: list[Path], include_current: bool) -> int:
    """Checkpoint averaging: the model's floating-point weights become the mean of the ``paths`` checkpoints'
    weights (and of its own current weights with ``include_current``); buffers that are not floating point
    (counters) keep the model's. Returns the number of weight sets averaged."""
    import torch

    state = model.state_dict()
    total = {k: v.detach().double().clone() if include_current else torch.zeros_like(v, dtype=torch.float64)
             for k, v in state.items() if torch.is_floating_point(v)}
    for p in paths:
        sd = torch.load(p, map_location="cpu", weights_only=False, mmap=True)["state_dict"]
        missing = [k for k in total if k not in sd or sd[k].shape != state[k].shape]
        if missing:
            raise TrainingError(f"checkpoint {p.name} does not match the model ({len(missing)} weights missing or of "
                                f"another shape, e.g. {missing[0]}): cannot average")
        for k in total:
            total[k] += sd[k].double()
    n = len(paths) + int(include_current)
    if n == 0:
        raise TrainingError("average_weights: nothing to average")
    with torch.no_grad():
        for k, v in total.items():
            state[k].copy_((v / n).to(state[k].dtype))
    return n


def average_last_checkpoints(model, ckpt_dir: Path, k: int, global_step: int, log) -> int:
    """Trainer option ``average_checkpoints: K``: the saved weights are the mean of the final weights and the K-1
    latest step checkpoints written before the final step. Fewer kept than asked: the mean of those there are,
    and the log says so. Returns the number of weight sets averaged."""
    earlier = checkpoints_before(ckpt_dir, k - 1, global_step)
    if len(earlier) < k - 1:
        log(f"[train] average_checkpoints {k}: only {len(earlier)} earlier step checkpoints kept in {ckpt_dir} "
            f"(raise keep_last_k): averaging {len(earlier) + 1} weight sets")
    n = average_weights(model, earlier, include_current=True)
    log(f"[train] saved weights: the mean of the final weights and {', '.join(p.name for p in earlier) or 'nothing else'}")
    return n
