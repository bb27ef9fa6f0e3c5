"""Re-save a .nemo as a plain float32 .nemo in a clean interpreter (GPU machine, bench/gpu_base.sh and
bench/recipes_gpu.sh): torch 2.11 there failed to restore the shipped float16 file inside a training process, and
a file re-saved with the espeak-ng environment exported failed to restore at all, so the scripts call this first.
``clinasr.nemo_fixes.apply()`` admits the Whisper-encoder bases (v5+: ``clinasr.encoders.WhisperEncoder`` as a
config ``_target_``), which NeMo refuses otherwise. An n-gram LM the source carries (clinasr.lm; the shipped base
since 2026-12-03) is put back into the copy: NeMo's ``save_to`` writes only what NeMo knows.

    python3 bench/resave_fp32.py models/clinasr-base-en-multi/model.nemo /tmp/base_fp32.nemo
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    from nemo.collections.asr.models import ASRModel

    from clinasr import lm, nemo_fixes

    nemo_fixes.apply()
    ASRModel.restore_from(args[0], map_location="cpu").save_to(args[1])
    if lm.copy_lm(args[0], args[1]) is not None:
        print(f"{args[1]}: the n-gram LM of {args[0]} carried over")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
