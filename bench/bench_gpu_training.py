"""GPU training benchmark at Parakeet-0.6B scale (random init from configs/model/parakeet_tdt_0.6b.yaml).

Runs clinasr's own training entry point (clinasr.training.train) for a few dozen steps per strategy, each
in its own process, on random-noise audio of 2-12 s with lexicon sentences (no TTS on the GPU machine),
and reports s/step, steady audio-seconds/s (after warm-up, leaving out the step that wrote a checkpoint: see
clinasr.training.progress's Progress.steady) and peak GPU memory, as ratios against --baseline (plain
single-GPU bf16) in the same run. Also checkpoint + resume (a run stopped at N steps continues to 2N from
last.ckpt). Training-batch WER (a greedy decode) runs every log_every_n_steps of gpu_finetune.yaml (50).

    python bench/bench_gpu_training.py --configs plain,zero2,zero2_offload --steps 30 --out $OUT

The step levers of issue 27 are trainer options added to any config with ``+``: ``+fused_adam`` (torch
AdamW(fused=True)), ``+joint_whole`` (the TDT joint + loss over the whole batch instead of sub-batches of 16),
``+compile`` (torch.compile of the encoder layers), e.g. ``--configs plain_duration,plain_duration+fused_adam``.
``--flops-json`` (from ``profile_gpu_step.py --count-flops``) adds MFU: training FLOPs per audio-second x
audio-seconds/s summed over ranks / (ranks x --peak-tflops).

Writes <out>/gpu_training.json. The exact commands used for the committed results are in
bench/results/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

DURATION = {"batch_duration": 600, "num_buckets": 10, "batch_size": 512}
ZERO2 = {"strategy": "deepspeed_stage_2", "deepspeed_config": "configs/deepspeed/zero2.json", "precision": "32-true"}
OFFLOAD = {**ZERO2, "deepspeed_config": "configs/deepspeed/zero2_offload.json"}
CONFIGS = {
    # name: trainer overrides (on top of configs/trainer/gpu_finetune.yaml)
    "plain": {"strategy": "auto", "precision": "bf16-mixed"},
    "plain_sorted": {"strategy": "auto", "precision": "bf16-mixed", "semi_sorted_batching": True},   # duration bucketing
    # fixed-duration batches (lhotse dynamic bucketing): up to 600 s of audio per batch, at most 512 clips
    "plain_duration": {"strategy": "auto", "precision": "bf16-mixed", **DURATION},
    # the same global batch as plain_duration on one GPU, split over two (loss parity between 1 and 2 GPUs)
    "plain_duration_300": {"strategy": "auto", "precision": "bf16-mixed", **DURATION, "batch_duration": 300},
    "plain_duration_1200": {"strategy": "auto", "precision": "bf16-mixed", **DURATION, "batch_duration": 1200},
    # activation checkpointing (each encoder layer recomputes its activations in backward): bigger batches fit
    "plain_ckpt": {"strategy": "auto", "precision": "bf16-mixed", "activation_checkpointing": True},
    "plain_duration_ckpt": {"strategy": "auto", "precision": "bf16-mixed", **DURATION, "batch_duration": 1200,
                            "activation_checkpointing": True},
    "zero2": ZERO2,
    "zero2_offload": OFFLOAD,
    # the same with DeepSpeed's vectorised CPU Adam (its op JIT-builds on first use) instead of torch AdamW
    "zero2_offload_cpuadam": {**OFFLOAD, "optimizer": "cpu_adam"},
    # the ZeRO-2 variants on fixed-duration batches (compare with plain_duration: --baseline plain_duration)
    "zero2_duration": {**ZERO2, **DURATION},
    # on one GPU there is nothing to overlap: no side stream for the (no-op) reduction, larger buckets
    "zero2_duration_tuned": {**ZERO2, **DURATION, "deepspeed_overrides": {"zero_optimization": {
        "overlap_comm": False, "reduce_bucket_size": 200_000_000, "allgather_bucket_size": 200_000_000}}},
    "zero2_offload_cpuadam_duration": {**OFFLOAD, "optimizer": "cpu_adam", **DURATION},
}


LEVERS = {"fused_adam": {"fused_adam": True}, "joint_whole": {"joint_fused_batch_size": "whole"},
          "compile": {"compile_encoder": True}}


def overrides_of(name: str) -> dict:
    """A config's trainer overrides: CONFIGS[base] plus each ``+lever``."""
    base, *levers = name.replace("_resume", "").split("+")
    out = dict(CONFIGS[base])
    for lever in levers:
        out.update(LEVERS[lever])
    return out


def make_dataset(d: Path, n: int, seed: int = 0) -> Path:
    import numpy as np

    from clinasr.audio import write_wav
    from clinasr.synth.lexicon import load_lexicon, load_terms
    from clinasr.synth.transcripts import GrammarGenerator

    lex = load_lexicon()
    texts = [u.text for u in GrammarGenerator(lex, seed).generate(load_terms(lex.drugs[:40], lex), max(1, n // 40 + 1))]
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    rows = []
    (d / "audio").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        dur = rng.uniform(2, 12)
        write_wav(d / "audio" / f"{i}.wav", (nrng.standard_normal(int(dur * 16000)) * 0.05).astype("float32"))
        rows.append({"audio_filepath": f"audio/{i}.wav", "duration": round(dur, 3), "text": texts[i % len(texts)]})
    (d / "train_manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "val_manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))
    return d


def run_one(name: str, dataset: Path, out: Path, steps: int, batch: int, resume_from: Path | None = None,
            nproc: int = 1, model: str = "configs/model/parakeet_tdt_0.6b.yaml", timeout: float | None = None,
            label: str | None = None, extra: dict | None = None) -> dict:
    # a checkpoint at the end only (a 617 M model's is 7 GB; the throughput figures leave out its interval anyway).
    # Fixed clip counts (--batch) unless the config names a duration, though gpu_finetune.yaml batches by duration;
    # a duration config's own batch_size, the clip cap, wins over --batch
    # no general-English replay here: the data is random noise and the replay set lives in the platform's store
    overrides = {"batch_size": batch, "batch_duration": None, "replay": {"ratio": 0},
                 **overrides_of(name), "max_steps": steps,
                 "val_check_interval": 10**6, "checkpoint_every_n_steps": steps, **(extra or {})}
    name = label or name
    args = {"dataset": str(dataset), "output_dir": str(resume_from or out / name), "trainer": "configs/trainer/gpu_finetune.yaml",
            "trainer_overrides": overrides, "base": {"config": model},
            "mlflow": {"enabled": False}, "resume": resume_from is not None}
    af, rf = out / f"{name}.args.json", out / f"{name}.result.json"
    af.write_text(json.dumps(args))
    t0 = time.time()
    # nproc > 1: one process per GPU under torchrun (DDP or ZeRO-2 across GPUs), clinasr's own entry point
    launcher = ([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", str(nproc)]
                if nproc > 1 else [sys.executable])
    # its own process group, so that a run past --timeout is stopped with everything it started (torchrun's ranks)
    # one process is one GPU: without this, a DeepSpeed config outside torchrun takes every visible GPU (Lightning
    # launches one process per device), so on a 2-GPU machine a "1-GPU" ZeRO-2 row ran on two (found in issue 27)
    env = dict(os.environ)
    if nproc == 1:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    p = subprocess.Popen([*launcher, "-m", "clinasr.cli", "ml-stage", "train", "--args-json", str(af),
                          "--result-json", str(rf)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, env=env)
    try:
        stdout, stderr = p.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        import signal

        os.killpg(p.pid, signal.SIGKILL)
        stdout, stderr = p.communicate()
        timed_out = True
    (out / f"{name}.log").write_text(stdout[-20000:] + stderr[-20000:])
    res = json.loads(rf.read_text()) if rf.exists() else {"error": stderr[-2000:]}
    if timed_out:
        steps_seen = [ln for ln in (stdout + stderr).splitlines() if "[train] step " in ln]
        res = {"error": f"stopped after {timeout:.0f} s (--timeout); last progress: "
                        f"{steps_seen[-1] if steps_seen else 'no step logged'}"}
    res["wall_s"] = round(time.time() - t0, 1)
    res["config"] = name if nproc == 1 else f"{name}@{nproc}gpu"
    res["resume_log"] = [ln for ln in (stdout + stderr).splitlines()
                         if ln.startswith("[train]") and any(w in ln for w in ("resum", "convert", "Adam", "ZeRO-2"))]
    steps_logged = re.findall(r"\[train\] step (\d+)/\d+ loss ([-\d.naninf]+) lr ([-+\d.e]+)", stdout + stderr)
    res["step_losses"] = {int(k): float(v) for k, v, _ in steps_logged}
    res["step_lrs"] = {int(k): float(lr) for k, _, lr in steps_logged}
    res["nproc"] = nproc
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="plain,zero2,zero2_offload")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--utterances", type=int, default=600)
    ap.add_argument("--baseline", default="plain", help="the config the ratios are against")
    ap.add_argument("--resume", action="store_true", help="also: stop plain at steps, resume to 2*steps")
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--keep", action="store_true", help="keep each run's checkpoints and .nemo (default: delete them)")
    ap.add_argument("--model", default="configs/model/parakeet_tdt_0.6b.yaml", help="model config (random init)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per config run; a run past it is stopped")
    ap.add_argument("--flops-json", default=None, help="profile_gpu_step.py --count-flops output: adds MFU")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="per GPU, dense bf16 (H100/H200 SXM: 989)")
    ap.add_argument("--resume-chain", action="store_true",
                    help="resume across strategies and GPU counts (issue 27 item 4): one output_dir, each link resumes "
                         "the previous for --steps more: ZeRO-2 on 2 GPUs -> ZeRO-2 on 1 -> ZeRO-2 on 2 -> plain on 1 -> "
                         "ZeRO-2 on 2 (use a small --model: each link writes a checkpoint); writes resume_chain.json")
    ap.add_argument("--nproc", default="1", help="GPUs (processes) per config, comma list, e.g. 1,2: each config "
                                                  "runs once per count; rates are summed over ranks")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(out / "data", a.utterances)
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    flops = None
    if a.flops_json:
        fj = json.loads(Path(a.flops_json).read_text())
        flops = {"train_flops_per_audio_s": fj["train_flops_per_audio_s_mean"], "source": a.flops_json,
                 "method": "torch.utils.flop_counter on one clip at a time (4, 8, 12 s), forward + loss + backward"}
    versions = {"torch": torch.__version__}
    for mod in ("nemo", "lightning", "deepspeed"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    rows = []

    def report() -> None:
        """Ratios against the baseline; rewritten after every config, so a run cut short keeps what it measured."""
        base = next((r for r in rows if r["config"] == a.baseline and "metrics" in r), None)
        summary = []
        for r in rows:
            m = r.get("metrics", {})
            # rank 0 counts its own batches; with fixed-duration batches every rank's batch holds the same audio,
            # so the job's rate is rank 0's times the number of ranks
            n = r.get("nproc", 1)
            rate = m.get("steady_audio_s_per_s")
            row = {"config": r["config"], "nproc": n, "global_step": r.get("global_step"), "error": r.get("error"),
                   "s_per_step": m.get("median_s_per_step"), "audio_s_per_s": rate * n if rate else None,
                   "audio_s_per_s_per_gpu": rate,
                   "steady_steps": m.get("steady_steps"),
                   "peak_gpu_gib": m.get("peak_gpu_mem_gib"), "n_params": r.get("n_params"), "wall_s": r["wall_s"],
                   "final_loss": m.get("train_loss"), "resumed_from_step": r.get("resumed_from_step"),
                   "levers": r.get("levers"), "overrides": overrides_of(r["config"].split("@")[0])}
            if flops and row["audio_s_per_s"]:
                row["mfu"] = round(flops["train_flops_per_audio_s"] * row["audio_s_per_s"] / (n * a.peak_tflops * 1e12), 4)
            if base and row["audio_s_per_s"]:
                row["throughput_vs_baseline"] = round(row["audio_s_per_s"] / base["metrics"]["steady_audio_s_per_s"], 3)
                row["memory_vs_baseline"] = round(row["peak_gpu_gib"] / base["metrics"]["peak_gpu_mem_gib"], 3)
            one = next((x for x in rows if x["config"] == r["config"].split("@")[0] and "metrics" in x), None)
            if n > 1 and one and row["audio_s_per_s"]:   # scaling efficiency: n-GPU rate / (n x 1-GPU rate)
                row["scaling_efficiency"] = round(row["audio_s_per_s"] / (n * one["metrics"]["steady_audio_s_per_s"]), 3)
            summary.append(row)
        (out / "gpu_training.json").write_text(json.dumps({"device": device, "torch": torch.__version__, "versions": versions,
                                                           "gpus_visible": torch.cuda.device_count(),
                                                           "model": a.model, "steps": a.steps, "batch": a.batch,
                                                           "utterances": a.utterances, "flops": flops,
                                                           "peak_tflops_per_gpu": a.peak_tflops,
                                                           "baseline": a.baseline, "rows": summary}, indent=1))
        print(json.dumps(summary[-1]), flush=True)

    if a.resume_chain:
        chain = out / "chain"
        shutil.rmtree(chain, ignore_errors=True)
        links = [("zero2_duration", 2), ("zero2_duration", 1), ("zero2_duration", 2), ("plain_duration", 1),
                 ("zero2_duration", 2)]
        done = []
        for k, (c, n) in enumerate(links, 1):
            r = run_one(c, ds, out, k * a.steps, a.batch, resume_from=chain, nproc=n, model=a.model,
                        timeout=a.timeout, label=f"link{k}_{c}", extra={"log_every_n_steps": 1})
            prev = done[-1] if done else None
            losses = r.get("step_losses") or {}
            row = {"link": k, "config": c, "nproc": n, "global_step": r.get("global_step"), "error": r.get("error"),
                   "resumed_from": r.get("resumed_from"), "resume_log": r.get("resume_log"), "wall_s": r["wall_s"],
                   "first_step_loss": losses.get(min(losses)) if losses else None,
                   "last_step_loss": losses.get(max(losses)) if losses else None, "step_losses": losses,
                   "mean_loss": round(sum(losses.values()) / len(losses), 3) if losses else None,
                   "step_lrs": r.get("step_lrs"),
                   "checkpoint_form": "directory (DeepSpeed)" if (chain / "checkpoints" / "last.ckpt").is_dir()
                   else "file" if (chain / "checkpoints" / "last.ckpt").exists() else None}
            if prev and prev["last_step_loss"] is not None and row["first_step_loss"] is not None:
                row["loss_jump_at_resume"] = round(row["first_step_loss"] - prev["last_step_loss"], 3)
            done.append(row)
            print(json.dumps({k2: v for k2, v in row.items() if k2 not in ("step_losses", "step_lrs")}), flush=True)
            (out / "resume_chain.json").write_text(json.dumps(
                {"device": device, "versions": versions, "gpus_visible": torch.cuda.device_count(), "model": a.model,
                 "steps_per_link": a.steps, "links": done}, indent=1))
            if r.get("error"):
                break
        return
    for c in filter(None, a.configs.split(",")):
        for n in map(int, a.nproc.split(",")):
            rows.append(run_one(c, ds, out, a.steps, a.batch, nproc=n, model=a.model, timeout=a.timeout))
            report()
            if not (a.keep or (a.resume and c == "plain")):   # a 617 M run leaves ~10 GB (checkpoint + .nemo)
                shutil.rmtree(out / c, ignore_errors=True)
    if a.resume:
        first = next((r for r in rows if r["config"] == "plain"), None) or run_one("plain", ds, out, a.steps, a.batch)
        rows.append(run_one("plain_resume", ds, out, 2 * a.steps, a.batch, resume_from=out / "plain"))
        rows[-1]["resumed_from_step"] = first.get("global_step")
        report()

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
