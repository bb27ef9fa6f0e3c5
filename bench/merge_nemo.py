"""Weight-space merge of fine-tuned models with their base, after training (WiSE-FT; the same interpolation as the
trainer option ``merge_with_base``, clinasr.training.strategy.merge_with_base, applied to saved ``.nemo`` files so
that one fine-tune can be scored at several merge weights without training again).

    .venv/ml/bin/python bench/merge_nemo.py --base models/clinasr-base-en-multi/model.nemo --alpha 0.85 \\
        --out /tmp/merged FT1.nemo FT2.nemo ...

Writes OUT/<stem>_m<alpha*100>.nemo: every floating-point tensor that base and fine-tune share (same name and
shape) and that the fine-tune changed becomes alpha x fine-tuned + (1 - alpha) x base; the rest (integer counters, tensors only one side has)
and every other member of the fine-tune's archive (config, tokenizer, an embedded LM) are copied unchanged.
"""
from __future__ import annotations

import argparse
import io
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from clinasr.training.strategy import interpolate  # noqa: E402

WEIGHTS = "model_weights.ckpt"


def _weights(nemo: Path):
    import torch

    with tarfile.open(nemo) as tf:
        for m in tf.getmembers():
            if Path(m.name).name == WEIGHTS:
                return torch.load(io.BytesIO(tf.extractfile(m).read()), map_location="cpu", weights_only=True)
    raise SystemExit(f"{nemo}: no {WEIGHTS} inside (not a .nemo archive?)")


def merge(ft: Path, base_state: dict, alpha: float, out: Path) -> dict:
    import torch

    state = _weights(ft)
    mixed = interpolate(state, base_state, alpha)   # what the fine-tune left as it was stays bit for bit
    kept = len(state) - mixed
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    with tarfile.open(ft) as src, tarfile.open(tmp, "w") as dst:
        for m in src.getmembers():
            if m.isfile() and Path(m.name).name == WEIGHTS:
                info = tarfile.TarInfo(m.name)
                info.size, info.mtime, info.mode = len(data), m.mtime, m.mode
                dst.addfile(info, io.BytesIO(data))
            else:
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    tmp.replace(out)
    return {"out": str(out), "alpha": alpha, "merged_tensors": mixed, "kept_tensors": kept}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, type=Path, help="the base .nemo the fine-tunes started from")
    ap.add_argument("--alpha", required=True, type=float, help="weight of the fine-tune, 0 < alpha <= 1")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("models", nargs="+", type=Path, help="fine-tuned .nemo files")
    a = ap.parse_args()
    if not 0 < a.alpha <= 1:
        ap.error("--alpha must be in (0, 1]")
    base_state = _weights(a.base)
    for ft in a.models:
        r = merge(ft, base_state, a.alpha, a.out / f"{ft.stem}_m{round(a.alpha * 100)}.nemo")
        print(f"{ft.name} -> {r['out']}: {r['merged_tensors']} tensors merged, {r['kept_tensors']} kept")


if __name__ == "__main__":
    main()
