"""Where a training step's time goes at Parakeet-0.6B scale: the model alone, then the data loader alone.

Builds the 617 M FastConformer-TDT from configs/model/parakeet_tdt_0.6b.yaml through clinasr's own training
code (tokenizer, model, optimizer settings, activation checkpointing), then runs training steps on batches
that are already on the GPU: random audio with durations drawn uniformly from 2-12 s (as
bench_gpu_training.py's data) and 3.5 random tokens per audio-second. Each step is timed in parts with CUDA
events (preprocessor + SpecAugment, encoder, prediction net, joint + TDT loss, backward, clip + optimizer
step), for variants applied in order (activation checkpointing, once on, stays on):

    b64            batch 64, bf16 autocast, joint in sub-batches of 16 (the config's fused_batch_size)
    b64_fp32       the same without autocast
    b64_joint64    the joint over the whole batch at once
    b64_sorted     clips sorted by length inside the batch, so each joint sub-batch trims its padding
    b64_fusedadam  torch AdamW(fused=True) instead of the default foreach implementation
    dur600         fixed-duration batches as lhotse bucketing makes them: 600 s of clips of similar length
    b64_ckpt       b64_sorted + activation checkpointing (trainer option activation_checkpointing)
    b128_ckpt      batch 128 with it; dur1200_ckpt: 1,200 s of similar-length clips with it
    dur1200 ... dur4800_ckpt   larger duration budgets, without and with checkpointing: the largest that fits

Then the training data loader alone (WAV reading, speed perturbation, collation) at 4 and 12 workers,
with and without speed perturbation, in audio-seconds per second. The gap between the model's ceiling and
bench_gpu_training.py's measured rate is Lightning, logging and the loader.

    python bench/profile_gpu_step.py --out $OUT

Writes <out>/gpu_step_profile.json and <out>/gpu_step_kernels.txt (torch.profiler's top kernels for b64).

``--count-flops`` instead counts a training step's FLOPs per audio-second (torch.utils.flop_counter on one clip
at a time, so no padding is counted: forward, TDT loss and backward; matrix multiplies, convolutions and attention,
not elementwise work), the numerator of MFU. It runs on a CPU in a couple of minutes (the count does not depend
on the device or dtype):

    python bench/profile_gpu_step.py --count-flops --device cpu --out bench/out/flops
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = [
    # name, batch clips (or seconds of audio for dur*), options
    ("b64", 64, {}),
    ("b64_fp32", 64, {"fp32": True}),
    ("b64_joint64", 64, {"fused_batch_size": 64}),
    ("b64_sorted", 64, {"sorted": True}),
    ("b64_fusedadam", 64, {"sorted": True, "fused_adam": True}),
    ("dur600", 600, {"duration": True, "fused_adam": True}),
    ("dur1200", 1200, {"duration": True, "fused_adam": True}),      # the largest batch that fits, without ...
    ("dur1800", 1800, {"duration": True, "fused_adam": True}),
    ("dur2400", 2400, {"duration": True, "fused_adam": True}),
    ("b64_ckpt", 64, {"sorted": True, "fused_adam": True, "ckpt": True}),
    ("b128_ckpt", 128, {"sorted": True, "fused_adam": True, "ckpt": True}),
    ("dur1200_ckpt", 1200, {"duration": True, "fused_adam": True, "ckpt": True}),
    ("dur2400_ckpt", 2400, {"duration": True, "fused_adam": True, "ckpt": True}),   # ... and with checkpointing
    ("dur3600_ckpt", 3600, {"duration": True, "fused_adam": True, "ckpt": True}),
    ("dur4800_ckpt", 4800, {"duration": True, "fused_adam": True, "ckpt": True}),
]
PARTS = ["pre", "encoder", "decoder", "joint_loss", "backward", "optimizer"]


def durations(n_or_seconds: int, opts: dict, rng: random.Random) -> list[float]:
    if not opts.get("duration"):
        d = [rng.uniform(2, 12) for _ in range(n_or_seconds)]
        return sorted(d, reverse=True) if opts.get("sorted") else d
    lo = rng.choice(range(2, 12))          # one 1 s wide bucket, filled to the duration budget
    d = []
    while sum(d) < n_or_seconds - (lo + 1):
        d.append(rng.uniform(lo, lo + 1))
    return sorted(d, reverse=True)


def make_batch(durs: list[float], vocab: int, device: str, gen):
    import torch

    n = [int(x * 16000) for x in durs]
    sig = torch.randn(len(n), max(n), device=device, generator=gen) * 0.05
    for i, k in enumerate(n):
        sig[i, k:] = 0
    u = [max(1, round(3.5 * x)) for x in durs]
    tr = torch.randint(0, vocab - 1, (len(u), max(u)), device=device, generator=gen)
    return sig, torch.tensor(n, device=device), tr, torch.tensor(u, device=device)


class _Clock:
    """CUDA events on a GPU (no synchronisation between parts); wall time on a CPU (--device cpu smoke runs)."""

    def __init__(self, device: str):
        import torch

        self.cuda = device == "cuda"
        self.marks = [torch.cuda.Event(enable_timing=True) for _ in range(len(PARTS) + 1)] if self.cuda else []

    def record(self, i: int) -> None:
        if self.cuda:
            self.marks[i].record()
        else:
            self.marks.append(time.perf_counter())

    def parts(self) -> dict:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return {p: self.marks[i].elapsed_time(self.marks[i + 1]) / 1000 for i, p in enumerate(PARTS)}
        return {p: self.marks[i + 1] - self.marks[i] for i, p in enumerate(PARTS)}


def tdt_loss(model, enc, elen, dec, tr, tlen):
    """The TDT loss the way the model computes it in training: through the fused joint (in sub-batches) or the
    joint's full logits and the loss."""
    if model.joint.fuse_loss_wer:
        return model.joint(encoder_outputs=enc, decoder_outputs=dec, encoder_lengths=elen, transcripts=tr,
                           transcript_lengths=tlen, compute_wer=False)[0]
    return model.loss(log_probs=model.joint(encoder_outputs=enc, decoder_outputs=dec), targets=tr,
                      input_lengths=elen, target_lengths=tlen)


def step(model, opt, batch, fp32: bool) -> dict:
    import torch

    sig, lens, tr, tl = batch
    dev = sig.device.type
    ev = _Clock(dev)
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=not fp32):
        ev.record(0)
        proc, plen = model.preprocessor(input_signal=sig, length=lens)
        proc = model.spec_augmentation(input_spec=proc, length=plen)
        ev.record(1)
        enc, elen = model.encoder(audio_signal=proc, length=plen)
        ev.record(2)
        dec, tlen, _ = model.decoder(targets=tr, target_length=tl)
        ev.record(3)
        loss = tdt_loss(model, enc, elen, dec, tr, tlen)
        ev.record(4)
    loss.backward()
    ev.record(5)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    ev.record(6)
    return ev.parts() | {"loss": float(loss)}


def run_variant(model, name: str, size: int, opts: dict, vocab: int, steps: int, rng, gen, make_opt, dev: str) -> dict:
    import torch

    from clinasr.training.train import activation_checkpointing

    if opts.get("ckpt"):
        activation_checkpointing(model, {"activation_checkpointing": True})
    model.joint.set_fused_batch_size(int(opts.get("fused_batch_size", 16)))
    opt = make_opt(fused=bool(opts.get("fused_adam")))
    if dev == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rows, audio, clips = [], [], []
    try:
        for i in range(steps + 3):
            durs = durations(size, opts, rng)
            t0 = time.perf_counter()
            r = step(model, opt, make_batch(durs, vocab, dev, gen), bool(opts.get("fp32")))
            r["wall"] = time.perf_counter() - t0
            if i >= 3:                       # 3 warm-up steps (kernel selection, numba JIT of the TDT loss)
                rows.append(r)
                audio.append(sum(durs))
                clips.append(len(durs))
    except torch.OutOfMemoryError:
        del opt
        torch.cuda.empty_cache()
        return {"variant": name, "error": "out of GPU memory"}
    med = {p: round(statistics.median(r[p] for r in rows), 4) for p in PARTS + ["wall"]}
    wall = statistics.median(r["wall"] for r in rows)
    out = {"variant": name, "clips_per_batch": round(statistics.mean(clips), 1),
           "audio_s_per_batch": round(statistics.mean(audio), 1), "s_per_step": round(wall, 4),
           "audio_s_per_s": round(statistics.mean(audio) / wall, 1), "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev == "cuda" else None,
           "parts_s": med, "loss": round(rows[-1]["loss"], 3)}
    print(json.dumps(out), flush=True)
    del opt
    return out


def model_flops_per_audio_s(model) -> float:
    """Training FLOPs per audio-second from the encoder's parameters: 6 x params x frames (12.5 per second after
    8x subsampling of 10 ms features). It leaves out attention scores and the joint; a lower bound for MFU."""
    enc = sum(p.numel() for p in model.encoder.parameters())
    return 6 * enc * 12.5


def count_flops(model, vocab: int, dev: str, seconds=(4.0, 8.0, 12.0)) -> dict:
    """FLOPs of one training step (forward + loss + backward, no optimizer) per clip length, counted by
    torch.utils.flop_counter.FlopCounterMode on a batch of one clip; the slope over the lengths is the
    training cost per audio-second, split into encoder and the rest."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    gen = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for s in seconds:
        batch = make_batch([s], vocab, dev, gen)
        model.zero_grad(set_to_none=True)
        with FlopCounterMode(display=False) as fc:
            sig, lens, tr, tl = batch
            proc, plen = model.preprocessor(input_signal=sig, length=lens)
            enc, elen = model.encoder(audio_signal=proc, length=plen)
            dec, tlen, _ = model.decoder(targets=tr, target_length=tl)
            tdt_loss(model, enc, elen, dec, tr, tlen).backward()
        per_module = fc.get_flop_counts()
        total = fc.get_total_flops()
        encoder = sum(per_module.get("EncDecRNNTBPEModel.encoder", per_module.get("ConformerEncoder", {})).values())
        row = {"seconds": s, "frames": int(elen[0]), "tokens": int(tl[0]), "train_flops": total,
               "encoder_flops": encoder, "by_op": {str(k): v for k, v in per_module.get("Global", {}).items()}}
        print(json.dumps({k: v for k, v in row.items() if k != "by_op"}), flush=True)
        rows.append(row)
    slope = (rows[-1]["train_flops"] - rows[0]["train_flops"]) / (rows[-1]["seconds"] - rows[0]["seconds"])
    enc_slope = (rows[-1]["encoder_flops"] - rows[0]["encoder_flops"]) / (rows[-1]["seconds"] - rows[0]["seconds"])
    mean = sum(r["train_flops"] for r in rows) / sum(r["seconds"] for r in rows)
    return {"clips": rows, "train_flops_per_audio_s_slope": slope, "encoder_flops_per_audio_s_slope": enc_slope,
            "train_flops_per_audio_s_mean": mean,
            "estimate_6_x_encoder_params_x_12.5_frames": model_flops_per_audio_s(model)}


def loader_rates(model, manifest: str, batches: int) -> list[dict]:
    from omegaconf import OmegaConf

    from clinasr.training.train import _dataset_cfg

    out = []
    for workers in (4, 12):
        for speed in (True, False):
            model.setup_training_data(OmegaConf.create(_dataset_cfg(manifest, {"batch_size": 64, "num_workers": workers,
                                                                                "speed_perturb": speed}, True)))
            it = iter(model._train_dl)
            next(it)                          # workers start
            t0, audio, n = time.perf_counter(), 0.0, 0
            for b in it:
                audio += float(b[1].sum()) / 16000
                n += 1
                if n == batches:
                    break
            row = {"num_workers": workers, "speed_perturb": speed, "batch": 64,
                   "audio_s_per_s": round(audio / (time.perf_counter() - t0), 1)}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="measured steps per variant (after 3 warm-up steps)")
    ap.add_argument("--variants", default=",".join(v[0] for v in VARIANTS))
    ap.add_argument("--no-loader", action="store_true", help="skip the data loader measurement")
    ap.add_argument("--utterances", type=int, default=800, help="clips in the loader's dataset")
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--config", default="configs/model/parakeet_tdt_0.6b.yaml")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of the script (use a tiny --config, --scale 0.1)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every variant's batch size")
    ap.add_argument("--count-flops", action="store_true", help="only count a training step's FLOPs per audio-second")
    a = ap.parse_args()
    dev = a.device
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from bench_gpu_training import make_dataset
    from clinasr.training.train import _with_optimizer, load_base_model, load_yaml, prepare_dataset

    ds = make_dataset(out / "data", a.utterances)
    data = prepare_dataset(str(ds), out / "prepared", 20.0)
    tcfg = {"batch_size": 64, "num_workers": 4}
    cfg = load_yaml(a.config)
    model, _ = load_base_model({"config": a.config}, cfg, data["manifests"], tcfg, out / "work", None)
    model = model.to(dev).train()
    from clinasr.training.tdt_loss import install_cpu_tdt_loss

    install_cpu_tdt_loss(model, dev)
    vocab = model.tokenizer.vocab_size
    if a.count_flops:
        import platform

        res = count_flops(model, vocab, dev)
        (out / "gpu_flops.json").write_text(json.dumps(
            {"config": a.config, "device": dev, "machine": platform.machine(), "torch": torch.__version__,
             "n_params": sum(p.numel() for p in model.parameters()),
             "encoder_params": sum(p.numel() for p in model.encoder.parameters()), "vocab": vocab,
             "fused_batch_size": model.joint._fused_batch_size, **res}, indent=1))
        return
    optim = _with_optimizer(cfg, tcfg)["optim"]

    def make_opt(fused: bool):
        return torch.optim.AdamW(model.parameters(), lr=float(optim["lr"]), betas=tuple(optim.get("betas", (0.9, 0.98))),
                                 weight_decay=float(optim.get("weight_decay", 1e-3)), fused=fused, foreach=None if fused else True)

    n_params = sum(p.numel() for p in model.parameters())
    rng, gen = random.Random(0), torch.Generator(device=dev).manual_seed(0)
    wanted = a.variants.split(",")
    rows = []
    for name, size, opts in VARIANTS:
        if name not in wanted:
            continue
        size = max(1, round(size * a.scale))
        if name == "b64" and dev == "cuda":
            opt = make_opt(False)
            for _ in range(3):
                step(model, opt, make_batch(durations(64, {}, rng), vocab, dev, gen), False)
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                step(model, opt, make_batch(durations(64, {}, rng), vocab, dev, gen), False)
            (out / "gpu_step_kernels.txt").write_text(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25))
            del opt, prof
        rows.append(run_variant(model, name, size, opts, vocab, a.steps, rng, gen, make_opt, dev))
    flops = model_flops_per_audio_s(model)
    peak = 989e12   # H100 SXM dense bf16
    for r in rows:
        if r.get("audio_s_per_s"):
            r["mfu_encoder_lower_bound"] = round(flops * r["audio_s_per_s"] / peak, 4)
    loaders = [] if a.no_loader else loader_rates(model, data["manifests"]["train"], 15)
    (out / "gpu_step_profile.json").write_text(json.dumps(
        {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "config": a.config, "torch": torch.__version__, "n_params": n_params, "vocab": vocab,
         "train_flops_per_audio_s_encoder": flops, "steps": a.steps, "variants": rows, "loader": loaders}, indent=1))


if __name__ == "__main__":
    main()
