"""A vectorised pure-torch TDT (Token-and-Duration Transducer) loss, for training on CPU.

NeMo's TDT loss runs only on CUDA (its numba kernel raises "TDT is not yet implemented for non CUDA
computation"; the reference ``TDTLossPytorch`` hard-codes ``.cuda()`` and loops over B, T and U in
Python). This module computes the same forward variable (Eq. 7 of Xu et al. 2023, arXiv:2304.06795)
looping over time only:

* arcs from earlier frames (durations > 0) are summed with one ``logsumexp`` per frame over all u;
* duration-0 label arcs inside a frame form the recurrence alpha_u = logaddexp(A_u, alpha_{u-1} + c_{u-1}),
  solved in closed form with a cumulative sum and ``logcumsumexp``.

Gradients come from autograd. ``sigma`` is logit under-normalisation (subtracted from label
log-probs); ``omega`` mixes in the conventional RNN-T loss on the label logits:
``loss = (1 - omega) * tdt + omega * rnnt``. It plugs into NeMo's loss slot (same call signature as
NeMo's losses) via :func:`install_cpu_tdt_loss` only when the model is not on a GPU; on GPU NeMo's own
loss is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG = -1.0e4  # "impossible" in log space; finite so that gradients stay finite


def _forward(blank_arcs, label_arcs, act_lens, label_lens):
    """Log-likelihood per batch element.

    blank_arcs: list of (duration > 0, weight [B, T, U+1]) — blank emitted at (t, u), jumps to (t + d, u)
    label_arcs: list of (duration >= 0, weight [B, T, U])  — label u+1 emitted at (t, u), to (t + d, u + 1)
    """
    ref = blank_arcs[0][1]
    B, T, U1 = ref.shape
    alphas: list[torch.Tensor] = []
    zero_label = [w for d, w in label_arcs if d == 0]
    for t in range(T):
        terms = []
        if t == 0:
            init = torch.full((B, U1), NEG, dtype=ref.dtype, device=ref.device)
            init[:, 0] = 0.0
            terms.append(init)
        for d, w in blank_arcs:
            if t - d >= 0:
                terms.append(alphas[t - d] + w[:, t - d])
        for d, w in label_arcs:
            if d > 0 and t - d >= 0:
                terms.append(F.pad(alphas[t - d][:, :-1] + w[:, t - d], (1, 0), value=NEG))
        if not terms:  # no arc reaches frame t (e.g. durations [0, 2, 4] at t = 1)
            a = torch.full((B, U1), NEG, dtype=ref.dtype, device=ref.device)
        else:
            a = torch.logsumexp(torch.stack(terms), 0) if len(terms) > 1 else terms[0]
        if zero_label:
            c = zero_label[0][:, t] if len(zero_label) == 1 else torch.logsumexp(torch.stack([w[:, t] for w in zero_label]), 0)
            cp = F.pad(torch.cumsum(c, 1), (1, 0))          # C'_u = sum_{j<u} c_j
            a = cp + torch.logcumsumexp(a - cp, dim=1)
        alphas.append(a)
    alpha = torch.stack(alphas, 1)                          # [B, T, U+1]
    b_idx = torch.arange(B, device=ref.device)
    finals = []
    for d, w in blank_arcs:
        t_idx = act_lens - d
        ok = t_idx >= 0
        t_c = t_idx.clamp(min=0)
        v = alpha[b_idx, t_c, label_lens] + w[b_idx, t_c, label_lens]
        finals.append(torch.where(ok, v, torch.full_like(v, NEG)))
    return torch.logsumexp(torch.stack(finals), 0)


def tdt_log_likelihood(acts, labels, act_lens, label_lens, blank: int, durations: list[int], sigma: float = 0.0):
    """acts: [B, T, U+1, V+1+len(durations)] joint logits (label logits first, then duration logits)."""
    nd = len(durations)
    lp = torch.log_softmax(acts[..., :-nd], -1) - sigma
    dp = torch.log_softmax(acts[..., -nd:], -1)
    U = lp.shape[2] - 1
    lab = labels[:, :U].long().clamp(min=0)
    emit = torch.gather(lp[:, :, :U, :], 3, lab[:, None, :, None].expand(-1, lp.shape[1], -1, 1)).squeeze(3)
    blank_lp = lp[..., blank]
    blank_arcs = [(d, blank_lp + dp[..., n]) for n, d in enumerate(durations) if d > 0]
    label_arcs = [(d, emit + dp[:, :, :U, n]) for n, d in enumerate(durations)]
    return _forward(blank_arcs, label_arcs, act_lens.long(), label_lens.long())


def rnnt_log_likelihood(label_acts, labels, act_lens, label_lens, blank: int, sigma: float = 0.0):
    """Conventional RNN-T on label logits [B, T, U+1, V+1]: blank advances one frame, labels none."""
    lp = torch.log_softmax(label_acts, -1) - sigma
    U = lp.shape[2] - 1
    lab = labels[:, :U].long().clamp(min=0)
    emit = torch.gather(lp[:, :, :U, :], 3, lab[:, None, :, None].expand(-1, lp.shape[1], -1, 1)).squeeze(3)
    return _forward([(1, lp[..., blank])], [(0, emit)], act_lens.long(), label_lens.long())


class TDTLossCPU(torch.nn.Module):
    """Drop-in for NeMo's TDT loss object (``RNNTLoss._loss``): returns per-utterance negative
    log-likelihoods when ``reduction`` is None (how NeMo's ``RNNTLoss`` calls it)."""

    def __init__(self, blank: int, durations: list[int], sigma: float = 0.0, omega: float = 0.0,
                 reduction: str | None = "mean_batch"):
        super().__init__()
        if not durations or durations[0] != 0 or sorted(durations) != list(durations):
            raise ValueError(f"TDT durations must be ascending and start at 0 (got {durations})")
        self.blank, self.durations, self.sigma, self.omega, self.reduction = blank, list(durations), sigma, omega, reduction

    def forward(self, acts, labels, act_lens, label_lens):
        acts = acts.float()
        nll = -tdt_log_likelihood(acts, labels, act_lens, label_lens, self.blank, self.durations, self.sigma)
        if self.omega > 0:
            rnnt = -rnnt_log_likelihood(acts[..., : -len(self.durations)], labels, act_lens, label_lens, self.blank,
                                        self.sigma)
            nll = (1 - self.omega) * nll + self.omega * rnnt
        if self.reduction == "mean_batch":
            return nll.mean()
        if self.reduction == "sum":
            return nll.sum()
        if self.reduction == "mean":
            return (nll / label_lens.clamp(min=1)).mean()
        if self.reduction == "mean_volume":
            return nll.sum() / label_lens.sum().clamp(min=1)
        return nll


def install_cpu_tdt_loss(model, device: str, prefer_torch: bool = False) -> str | None:
    """Replace NeMo's CUDA-only TDT loss with :class:`TDTLossCPU` when training off-GPU, or on a GPU too with
    ``prefer_torch`` (trainer option ``tdt_loss: torch``: a cross-check of NeMo's kernel; on an H200 it trained the
    same way, bench/results/recipes-gpu-h200-decoding.md).

    Returns a reason string when it swapped the loss (logged by the trainer), else None.
    """
    cfg = model.cfg.get("loss", {})
    if cfg.get("loss_name") not in ("tdt", "tdt_pytorch") or (device == "cuda" and not prefer_torch):
        return None
    kw = cfg.get("tdt_kwargs", {})
    model.loss._loss = TDTLossCPU(blank=model.loss._blank, durations=list(kw.get("durations", [0, 1, 2, 3, 4])),
                                  sigma=float(kw.get("sigma", 0.0)), omega=float(kw.get("omega", 0.0)))
    if device == "cuda":
        return "tdt_loss torch: clinasr's vectorised pure-torch TDT loss on the GPU (NeMo's CUDA kernel is the default)"
    return "no CUDA device: NeMo's TDT loss is CUDA-only, using clinasr's vectorised pure-torch TDT loss"
