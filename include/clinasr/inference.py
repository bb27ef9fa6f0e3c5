"""Batched NeMo inference shared by evaluation and serving (ML runtime).

A :class:`Transcriber` holds one ``.nemo`` model in eval mode on the GPU when there is one (CPU
otherwise) and transcribes 16 kHz mono float arrays in batches: preprocessor -> encoder -> the model's
own greedy decoding. Audio longer than ``max_chunk_s`` is cut into chunks (with word timestamps shifted
back to the original timeline) and the chunk texts are joined, so memory stays bounded for long uploads.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


class InferenceError(RuntimeError):
    pass


class WarmUp:
    """``warm_up()`` for anything with ``transcribe(list of 16 kHz arrays)`` (our models and references)."""

    def warm_up(self, seconds: float = 1.0) -> float:
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        self.transcribe([(0.01 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)])
        if getattr(self, "compiled", False):   # a second shape: torch.compile then builds its dynamic-shape graph
            self.transcribe([(0.01 * rng.standard_normal(int(2 * seconds * SAMPLE_RATE))).astype(np.float32)] * 2)
        return time.perf_counter() - t0


class Transcriber(WarmUp):
    def __init__(self, nemo_path: str | Path, device: str | None = None, max_chunk_s: float = 30.0, version: str = "",
                 bf16_min_batch: int | None = None):
        import torch
        from nemo.collections.asr.models import ASRModel

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        path = Path(nemo_path)
        if not path.exists():
            raise InferenceError(f"model file not found: {path}")
        try:   # restored on the CPU, then moved: a direct map_location="cuda" restore of the shipped half-precision
            # .nemo failed inside torch.load on the GPU machine (torch 2.11: "'str' object is not callable")
            model = ASRModel.restore_from(str(path), map_location="cpu")
        except Exception as e:  # a corrupt or foreign file: say which
            raise InferenceError(f"cannot load {path.name} as a NeMo ASR model: {type(e).__name__}: {e}") from None
        self._setup(model.to(device), device, max_chunk_s, version, bf16_min_batch)

    @classmethod
    def from_model(cls, model, device: str | None = None, max_chunk_s: float = 30.0, version: str = "",
                   bf16_min_batch: int | None = None) -> "Transcriber":
        """A Transcriber over an already loaded NeMo ASR model (e.g. from ``from_pretrained``)."""
        import torch

        self = cls.__new__(cls)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._setup(model.to(device), device, max_chunk_s, version, bf16_min_batch)
        return self

    def _setup(self, model, device: str, max_chunk_s: float, version: str, bf16_min_batch: int | None) -> None:
        self.device = device
        model.eval()
        model.freeze()
        fe = getattr(model.preprocessor, "featurizer", None)
        if fe is not None:
            fe.dither, fe.pad_to = 0.0, 0   # deterministic features at inference
        self.model = model
        self.version = version
        # bf16 autocast on a GPU for batches of at least this size (measured on an H100 at 617 M parameters:
        # 1.3x at batch 16, 2.7x at 64, but 0.63x at batch 1 — bench/results/README.md); 0 turns it off
        env = os.environ.get("CLINASR_BF16_MIN_BATCH")
        self.bf16_min_batch = bf16_min_batch if bf16_min_batch is not None else int(env) if env else 16
        self.max_chunk = int(max_chunk_s * SAMPLE_RATE)
        self.stride_s = float(model.cfg.preprocessor.get("window_stride", 0.01)) * int(getattr(model.encoder, "subsampling_factor", 1))
        self.n_params = sum(p.numel() for p in model.parameters())
        # torch.compile of the encoder (CLINASR_COMPILE_ENCODER=1, off by default): 1.39x RTFx at batch 128 and
        # 1.55x at batch 1 on an H100 at 617 M parameters, for minutes of compilation at the first two input
        # shapes (bench/results/README.md) — worth it for a long-running server that warms up before it is ready,
        # not for evaluation jobs and tests. A value other than 1/true names a torch.compile backend (the tests use
        # aot_eager: the same graph capture, minutes less code generation on a CPU)
        flag = os.environ.get("CLINASR_COMPILE_ENCODER", "").strip().lower()
        self.compiled = flag not in ("", "0", "false", "no")
        if self.compiled and not hasattr(model.encoder, "_orig_mod"):
            import torch

            model.encoder = torch.compile(model.encoder, backend="inductor" if flag in ("1", "true", "yes") else flag)
        self._lock = threading.Lock()    # one forward pass at a time per model (callers batch instead)

    def _chunks(self, x: np.ndarray) -> list[np.ndarray]:
        if len(x) <= self.max_chunk:
            return [x]
        return [x[i:i + self.max_chunk] for i in range(0, len(x), self.max_chunk)]

    def transcribe(self, audios: list[np.ndarray], timestamps: bool = False, batch_size: int = 16) -> list[dict]:
        """[{"text": str, "words": [{"word", "start", "end"}] (when timestamps)}] per input array."""
        import torch

        pieces, owner = [], []
        for i, x in enumerate(audios):
            x = np.asarray(x, dtype=np.float32)
            if x.ndim != 1 or x.size == 0:
                raise InferenceError(f"audio {i}: expected a non-empty 1-D 16 kHz array")
            for c in self._chunks(x):
                pieces.append(c)
                owner.append(i)
        texts: list[list[str]] = [[] for _ in audios]
        words: list[list[dict]] = [[] for _ in audios]
        offsets = [0.0] * len(audios)
        with self._lock, torch.inference_mode():
            for b in range(0, len(pieces), batch_size):
                batch = pieces[b:b + batch_size]
                lens = torch.tensor([len(c) for c in batch], device=self.device)
                sig = torch.zeros(len(batch), int(lens.max()), device=self.device)
                for k, c in enumerate(batch):
                    sig[k, :len(c)] = torch.from_numpy(c)
                bf16 = self.device == "cuda" and 0 < self.bf16_min_batch <= len(batch)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                    enc, enc_len = self.model.forward(input_signal=sig, input_signal_length=lens)
                hyps = self.model.decoding.rnnt_decoder_predictions_tensor(enc, enc_len, return_hypotheses=timestamps)
                for k, h in enumerate(hyps):
                    i = owner[b + k]
                    text = h.text if hasattr(h, "text") else str(h)
                    if text:
                        texts[i].append(text)
                    if timestamps:
                        words[i].extend(self._words(h, offsets[i]))
                    offsets[i] += len(batch[k]) / SAMPLE_RATE
        out = []
        for i in range(len(audios)):
            r = {"text": " ".join(t.strip() for t in texts[i] if t.strip())}
            if timestamps:
                r["words"] = words[i]
            out.append(r)
        return out

    def _words(self, hyp, offset_s: float) -> list[dict]:
        """Word timings from the hypothesis' token timesteps (frames of ``stride_s`` seconds)."""
        tokens = [int(t) for t in (hyp.y_sequence.tolist() if hasattr(hyp.y_sequence, "tolist") else hyp.y_sequence)]
        steps = hyp.timestamp.tolist() if hasattr(hyp.timestamp, "tolist") else list(hyp.timestamp or [])
        if not tokens or len(steps) != len(tokens):
            return []
        tok = self.model.tokenizer
        out: list[dict] = []
        for t, step in zip(tokens, steps):
            piece = tok.ids_to_tokens([t])[0]
            start = offset_s + step * self.stride_s
            if piece.startswith("▁") or not out:
                # a new word; a lone "▁" (a space token) opens one that the next pieces fill
                out.append({"word": piece.lstrip("▁"), "start": round(start, 3), "end": round(start + self.stride_s, 3)})
            else:
                out[-1]["word"] += piece
                out[-1]["end"] = round(start + self.stride_s, 3)
        return [w for w in out if w["word"]]
