"""One picture of the GPU training figures: audio-seconds per second and peak GPU memory per configuration,
from bench_gpu_training.py's result files (the real training loop) and profile_gpu_step.py's (the model
alone, no Lightning or data loader: the ceiling).

    python bench/plot_gpu_training.py --out bench/results/gpu_training_h100.png \\
        bench/results/gpu_training_h100_b64_vs_dur1200.json bench/results/gpu_training_h100_duration_zero2_ckpt.json \\
        bench/results/gpu_training_h100_duration_offload_cpuadam.json \\
        --ceiling bench/results/gpu_step_profile_h100.json bench/results/gpu_step_profile_h100_largest.json

A configuration measured in several files is drawn from the first file that has it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GOAL = 1000   # audio-s/s per H100 (issue 11)


def rows(files: list[str], table: str = "rows", key: str = "config") -> list[dict]:
    """The measured rows of result files (``rows`` of bench_gpu_training.py, ``variants`` of profile_gpu_step.py)."""
    seen, out = set(), []
    for f in files:
        for r in json.loads(Path(f).read_text())[table]:
            if r.get("audio_s_per_s") and r[key] not in seen:
                seen.add(r[key])
                out.append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="bench_gpu_training.py result files (gpu_training*.json)")
    ap.add_argument("--ceiling", nargs="*", default=[], help="profile_gpu_step.py result files")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("training loop (bench_gpu_training.py)", rows(a.files), "config", "tab:blue")]
    if a.ceiling:
        groups.append(("model alone (profile_gpu_step.py)", rows(a.ceiling, "variants", "variant"), "variant", "tab:gray"))
    n = sum(len(g[1]) for g in groups)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.38 * n + 1.8), sharey=True)
    labels, y = [], 0
    for title, rs, key, color in groups:
        for r in rs:
            ax1.barh(y, r["audio_s_per_s"], color=color, label=title if r is rs[0] else None)
            ax2.barh(y, r["peak_gpu_gib"], color=color)
            ax1.text(r["audio_s_per_s"], y, f" {r['audio_s_per_s']:.0f}", va="center", fontsize=8)
            ax2.text(r["peak_gpu_gib"], y, f" {r['peak_gpu_gib']:.1f}", va="center", fontsize=8)
            labels.append(r[key])
            y += 1
    ax1.axvline(GOAL, color="tab:red", ls="--", lw=1, label=f"goal {GOAL} audio-s/s")
    ax2.axvline(80, color="tab:red", ls="--", lw=1, label="H100 80 GB")
    ax1.set_yticks(range(len(labels)), labels, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("audio-seconds per second (one GPU)")
    ax2.set_xlabel("peak GPU memory, GiB")
    handles = ax1.get_legend_handles_labels()
    h2 = ax2.get_legend_handles_labels()
    fig.legend(handles[0] + h2[0], handles[1] + h2[1], fontsize=8, loc="lower center", ncol=4)
    device = json.loads(Path(a.files[0]).read_text()).get("device", "")
    fig.suptitle(f"617 M FastConformer-TDT training, bf16, {device}", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(a.out, dpi=110)
    print(a.out)


if __name__ == "__main__":
    main()
