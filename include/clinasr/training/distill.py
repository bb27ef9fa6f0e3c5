"""Trainer option ``distill_from_base: w`` (ML runtime): on the general-English replay rows, the fine-tune is also
pulled towards what the base model *said*, not only towards the transcript (learning without forgetting, Li &
Hoiem 2017; for transducers, Panchapagesan et al. 2021, "Efficient knowledge distillation for RNN-Transducer
models").

Why: fine-tuning on the replay rows alone, with no clinical row, raised everyday-English WER on held-out voices
by +0.028 (bench/results/recipes-cpu-multibase-v4-replay-only.json) — the transcripts of the replay rows are a
weaker anchor than the base's own output distributions. A pull in weight space (``anchor_to_base``) did not help;
this one acts in function space, on the speech it replays.

How: a frozen copy of the base's encoder, prediction network and joint (taken before training starts, so a resumed
run distils from the same base) runs on the replay rows of each training batch — on the encoder's input, after
SpecAugment, so that only the weights differ — and the loss gains, per batch,

    w * sum over the batch's general rows of  KL(base || fine-tune)  summed over the valid cells (t, u) of the
        transducer lattice, over the token distribution and (TDT) the duration distribution, divided by U + 1
    / the batch size

(so ``w = 1`` weighs a replay row's distillation about as much as its transducer loss). Clinical rows get no
distillation: there the base's distribution is the one to move away from. The rows' domain comes from the
training manifest (``domain: general``, written by the replay mix) through the data loader's sample ids. The copy
lives outside the model's modules: the optimiser, checkpoints and the .nemo never see it. Logged as ``distill_kl``.
"""

from __future__ import annotations

import copy
from pathlib import Path

from clinasr.training.common import TrainingError
from clinasr.training.data import _read_manifest


def lattice_kl(teacher_logits, student_logits, enc_lens, target_lens, n_durations: int):
    """Per row: KL(teacher || student) summed over the valid lattice cells (t < T_b, u <= U_b) of the token
    distribution and, with ``n_durations`` > 0 (TDT), of the duration distribution, divided by U_b + 1.
    Logits are [B, T, U+1, V+1(+D)]; returns [B]."""
    import torch
    import torch.nn.functional as F

    def kl(t, s):
        lt, ls = F.log_softmax(t.float(), -1), F.log_softmax(s.float(), -1)
        return (lt.exp() * (lt - ls)).sum(-1)

    split = teacher_logits.shape[-1] - n_durations
    cells = kl(teacher_logits[..., :split], student_logits[..., :split])
    if n_durations:
        cells = cells + kl(teacher_logits[..., split:], student_logits[..., split:])
    B, T, U1 = cells.shape
    t_ok = torch.arange(T, device=cells.device)[None, :] < enc_lens[:, None]
    u_ok = torch.arange(U1, device=cells.device)[None, :] <= target_lens[:, None]
    valid = (t_ok[:, :, None] & u_ok[:, None, :]).to(cells.dtype)
    return (cells * valid).sum((1, 2)) / (target_lens.to(cells.dtype) + 1)


def distill_from_base(model, tcfg: dict, train_manifest: str | Path) -> int:
    """Install the distillation (see the module doc) on a model loaded from a base, before it trains and before
    anything replaces its layers' forward (activation checkpointing, compilation: a copy would share those
    closures with the model's own layers). Returns the number of general-English rows it will distil on (0: the
    option is off)."""
    w = tcfg.get("distill_from_base")
    if not w:
        return 0
    w = float(w)
    if w < 0:
        raise TrainingError(f"distill_from_base must be a non-negative weight (got {w})")
    if tcfg.get("joint_fused_batch_size") or getattr(getattr(model, "joint", None), "fuse_loss_wer", False):
        raise TrainingError("distill_from_base needs the whole batch's lattice in one loss call: not with the fused "
                            "joint (joint_fused_batch_size), which computes the loss over sub-batches")
    if tcfg.get("batch_duration"):
        raise TrainingError("distill_from_base needs the rows' sample ids, which the fixed-duration (lhotse) loader "
                            "does not return: use batch_size batches (unset batch_duration)")
    domains = {r["audio_filepath"]: r.get("domain", "clinical") for r in _read_manifest(Path(train_manifest))}
    n_general = sum(d == "general" for d in domains.values())
    if not n_general:
        raise TrainingError("distill_from_base distils on the general-English replay rows and this run has none: "
                            "set replay: {set: general_replay, ratio: > 0} in the trainer config, or distill_from_base: 0")
    import torch

    teacher = copy.deepcopy(torch.nn.ModuleList([model.encoder, model.decoder, model.joint])).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    kw = (model.cfg.get("loss") or {}).get("tdt_kwargs") or {}
    n_dur = len(kw.get("durations") or []) if (model.cfg.get("loss") or {}).get("loss_name", "").startswith("tdt") else 0
    state: dict = {}

    def keep_features(module, args, kwargs):   # the encoder's input: the base hears what the fine-tune hears
        if model.training and "general" in state:
            state["features"] = (kwargs["audio_signal"], kwargs["length"])

    model.encoder.register_forward_pre_hook(keep_features, with_kwargs=True)
    step = model.training_step

    def training_step(batch, *args, **kwargs):
        if len(batch) != 5:
            raise TrainingError("distill_from_base: the training batch carries no sample ids (a data loader other "
                                "than NeMo's audio-to-BPE dataset?)")
        ids, batch = batch[4], batch[:4]
        coll = model._train_dl.dataset.manifest_processor.collection
        state["general"] = torch.tensor([domains.get(coll[int(i)].audio_file) == "general" for i in ids])
        try:
            return step(batch, *args, **kwargs)
        finally:
            state.clear()

    loss_forward = model.loss.forward

    def forward(log_probs, targets, input_lengths, target_lengths):
        loss = loss_forward(log_probs=log_probs, targets=targets, input_lengths=input_lengths,
                            target_lengths=target_lengths)
        general = state.get("general")
        if general is None or "features" not in state or not bool(general.any()):
            return loss
        if general.shape[0] != log_probs.shape[0]:
            raise TrainingError(f"distill_from_base: the loss saw {log_probs.shape[0]} rows of a {general.shape[0]}-row "
                                "batch (a fused joint?)")
        idx = general.nonzero().squeeze(1).to(log_probs.device)
        feats, feat_lens = state["features"]
        if next(teacher.parameters()).device != log_probs.device:   # Lightning moved the model after install (a GPU)
            teacher.to(log_probs.device)
        enc, dec, joint = teacher
        with torch.no_grad():
            e, _ = enc(audio_signal=feats[idx], length=feat_lens[idx])
            g, _, _ = dec(targets=targets[idx], target_length=target_lengths[idx])
            t_logits = joint(encoder_outputs=e, decoder_outputs=g)
        s_logits = log_probs[idx]
        if t_logits.shape != s_logits.shape:
            raise TrainingError(f"distill_from_base: the base's lattice {tuple(t_logits.shape)} does not match the "
                                f"fine-tune's {tuple(s_logits.shape)} (a changed vocabulary cannot be distilled)")
        kd = lattice_kl(t_logits, s_logits, input_lengths[idx].long(), target_lengths[idx].long(), n_dur)
        kd = kd.sum() / log_probs.shape[0]
        model.log("distill_kl", kd.detach())
        return loss + w * kd

    model.loss.forward = forward          # instance attributes: the .nemo and checkpoints are unchanged
    model.training_step = training_step
    return n_general
