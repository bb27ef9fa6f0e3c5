"""Batched NeMo inference shared by evaluation and serving (ML runtime).

A :class:`Transcriber` holds one ``.nemo`` model in eval mode on the GPU when there is one (CPU
otherwise) and transcribes 16 kHz mono float arrays in batches: preprocessor -> encoder -> the model's
own greedy decoding. Audio longer than ``max_chunk_s`` is cut into chunks (with word timestamps shifted
back to the original timeline) and the chunk texts are joined, so memory stays bounded for long uploads.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


class InferenceError(RuntimeError):
    pass


@dataclass
class StreamState:
    """One live stream's decoding state: the audio not yet needed for left context, how far it is decoded, and
    the transducer's partial hypothesis (decoder state + tokens). Text only ever grows: each step appends the
    tokens of one new chunk, so deltas are never revised."""
    chunk: int                       # samples decoded per step (a multiple of the encoder frame)
    left: int                        # samples of left context re-encoded with each chunk
    right: int                       # samples of look-ahead a chunk waits for
    max_chunk: int = 0               # the chunk may grow up to this (uploads: fast first delta, then less overhead)
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    base: int = 0                    # absolute sample index of audio[0]
    decoded: int = 0                 # absolute samples decoded so far
    hyp: object = None
    n_tokens: int = 0
    text: str = ""
    words: list = field(default_factory=list)

    @property
    def received(self) -> int:
        return self.base + len(self.audio)

    def feed(self, x: np.ndarray) -> None:
        self.audio = np.concatenate([self.audio, np.asarray(x, np.float32)])

    def ready(self, final: bool) -> bool:
        """Whether a step can decode: a whole chunk plus its look-ahead has arrived, or the stream ends."""
        pending = self.received - self.decoded
        return pending > 0 if final else pending >= self.chunk + self.right


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

        from clinasr import nemo_fixes

        nemo_fixes.apply()   # before the restore: a model may name clinasr's own encoder
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        path = Path(nemo_path)
        if not path.exists():
            raise InferenceError(f"model file not found: {path}")
        try:   # restored on the CPU, then moved: a direct map_location="cuda" restore of the shipped half-precision
            # .nemo failed inside torch.load on the GPU machine (torch 2.11: "'str' object is not callable"; possibly
            # the b" " corruption that clinasr.nemo_fixes prevents, in a process that had decoded on CUDA before)
            model = ASRModel.restore_from(str(path), map_location="cpu")
        except Exception as e:  # a corrupt or foreign file: say which
            raise InferenceError(f"cannot load {path.name} as a NeMo ASR model: {type(e).__name__}: {e}") from None
        self._setup(model.to(device), device, max_chunk_s, version, bf16_min_batch)
        self._use_embedded_lm(path)

    def _use_embedded_lm(self, path: Path) -> None:
        """Decode offline as the .nemo asks (beam search with its n-gram LM, :mod:`clinasr.lm`); streaming keeps the
        label-looping greedy decoder, which carries state across chunks. ``CLINASR_DECODING=greedy`` turns it off."""
        import tempfile

        from clinasr import lm

        with tempfile.TemporaryDirectory(prefix="clinasr-lm-") as d:   # NeMo reads the ARPA file while it loads
            try:
                cfg, spec = lm.decoding_config(self.model, path, d)
            except lm.LMError as e:
                raise InferenceError(f"{path.name}: {e}") from None
            if cfg is None:
                return
            if self.device == "cpu":   # NeMo's beam search with an LM, minus work whose result it discards
                from clinasr import fusion_cpu

                fusion_cpu.install()
            greedy = self.model.decoding
            self.model.change_decoding_strategy(cfg, verbose=False)
        self.offline_decoding, self.model.decoding = self.model.decoding, greedy
        self.decoding = {k: spec[k] for k in ("strategy", "beam_size", "ngram_lm_alpha", "order") if k in spec}
        from clinasr import phantom_guard

        self.guard = phantom_guard.bound(spec.get("phantom_guard"))   # on unless the spec says false
        if self.guard is not None:
            self.decoding["phantom_guard"] = {"min_similarity": self.guard}

    @classmethod
    def from_model(cls, model, device: str | None = None, max_chunk_s: float = 30.0, version: str = "",
                   bf16_min_batch: int | None = None, decode_as: str | Path | None = None) -> "Transcriber":
        """A Transcriber over an already loaded NeMo ASR model (e.g. from ``from_pretrained``). ``decode_as``: the
        .nemo the model was saved to or changed from (a fine-tune in the process that trained it, a merged copy):
        offline decoding then uses that file's n-gram LM, as a Transcriber of the file would; without it, greedy."""
        import torch

        self = cls.__new__(cls)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._setup(model.to(device), device, max_chunk_s, version, bf16_min_batch)
        if decode_as:
            self._use_embedded_lm(Path(decode_as))
        return self

    def _setup(self, model, device: str, max_chunk_s: float, version: str, bf16_min_batch: int | None) -> None:
        from clinasr import nemo_fixes

        nemo_fixes.apply()     # before the first CUDA decode: NeMo's kernel compile would corrupt b" " (see there)
        self.device = device
        self.decoding = {"strategy": "greedy_batch"}   # what offline transcription decodes with
        self.offline_decoding = model.decoding
        self.guard: float | None = None   # the phantom guard's letter similarity bound, with an LM (_use_embedded_lm)
        self.guard_stats = {"chunks": 0, "vetoed": 0}
        model.eval()
        model.freeze()
        fe = getattr(model.preprocessor, "featurizer", None)
        if fe is not None:
            fe.dither, fe.pad_to = 0.0, 0   # deterministic features at inference
        self.model = model
        self.version = version
        # bf16 autocast of the encoder on a GPU for batches of at least this size: off (0) unless asked for
        # (CLINASR_BF16_MIN_BATCH or bf16_min_batch). It was 16 (measured on an H100 at 617 M parameters: 1.3x at batch
        # 16, 2.7x at 64, 0.63x at batch 1), until a fine-tune trained in fp32 on an H200 decoded everyday English
        # at WER 1.01 under it (tokens repeated: "waaaaaaaaaa") and at 0.387 in fp32, on the GPU and on the CPU
        # alike, where its base scored 0.364 either way (docs/benchmarks.md, "bf16 decoding"). Turn it on for a
        # model only after scoring it both ways.
        env = os.environ.get("CLINASR_BF16_MIN_BATCH")
        self.bf16_min_batch = bf16_min_batch if bf16_min_batch is not None else int(env) if env else 0
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

    # -- streaming: chunked encoding with left context and look-ahead, the transducer's state carried over ------
    def frame_samples(self) -> int:
        """Samples per encoder frame (80 ms for FastConformer: 10 ms hop x 8 subsampling)."""
        return int(round(self.stride_s * SAMPLE_RATE))

    def new_stream(self, chunk_s: float = 1.0, left_s: float = 4.0, right_s: float = 0.5,
                   max_chunk_s: float | None = None) -> StreamState:
        if getattr(self.model.decoding.decoding, "decoding_computer", None) is None:
            raise InferenceError("streaming needs the batched greedy (label-looping) transducer decoder "
                                 f"(decoding strategy greedy_batch); this model uses {type(self.model.decoding.decoding).__name__}")
        f = self.frame_samples()
        frames = lambda s: max(0, int(round(s * SAMPLE_RATE / f))) * f
        chunk = max(f, frames(chunk_s))
        return StreamState(chunk=chunk, left=frames(left_s), right=frames(right_s),
                           max_chunk=max(chunk, frames(max_chunk_s or chunk_s)))

    def stream_step(self, steps: list[tuple[StreamState, bool]]) -> list[str]:
        """Decode one chunk of each stream (batched); ``final`` streams decode what is left without look-ahead.
        Returns the text each step appended (possibly empty)."""
        import torch

        f = self.frame_samples()
        windows, spans = [], []
        for st, final in steps:
            end = min(st.received, st.decoded + st.chunk)
            ahead = min(st.right, st.received - end) if final else st.right
            start = max(st.base, st.decoded - st.left)
            windows.append(st.audio[start - st.base:end + ahead - st.base])
            spans.append(((st.decoded - start) // f, math.ceil((end - st.decoded) / f), end))
        with self._lock, torch.inference_mode():
            lens = torch.tensor([len(w) for w in windows], device=self.device)
            sig = torch.zeros(len(windows), int(lens.max()), device=self.device)
            for k, w in enumerate(windows):
                sig[k, :len(w)] = torch.from_numpy(w)
            enc, enc_len = self.model.forward(input_signal=sig, input_signal_length=lens)
            take = [max(0, min(n, int(enc_len[k]) - a)) for k, (a, n, _) in enumerate(spans)]
            x = torch.zeros(enc.shape[0], enc.shape[1], max(1, max(take)), device=self.device, dtype=enc.dtype)
            for k, (a, _, _) in enumerate(spans):
                x[k, :, :take[k]] = enc[k, :, a:a + take[k]]
            partial = [st.hyp for st, _ in steps]
            if all(h is None for h in partial):
                partial = None
            hyps = self.model.decoding.decoding(encoder_output=x, encoded_lengths=torch.tensor(take, device=self.device),
                                                partial_hypotheses=partial)[0]
        deltas = []
        for (st, _), hyp, (_, _, end) in zip(steps, hyps, spans):
            ids = hyp.y_sequence.tolist() if hasattr(hyp.y_sequence, "tolist") else list(hyp.y_sequence)
            ts = hyp.timestamp.tolist() if hasattr(hyp.timestamp, "tolist") else list(hyp.timestamp or [])
            new_ids, new_ts = ids[st.n_tokens:], ts[st.n_tokens:]
            pieces = self.model.tokenizer.ids_to_tokens(new_ids) if new_ids else []
            delta = "".join(pieces).replace("▁", " ")
            if not st.text:
                delta = delta.lstrip()
            # the label-looping state counts frames from the stream's start: its timestamps are absolute
            self._add_pieces(st.words, pieces, [t * self.stride_s for t in new_ts] if len(new_ts) == len(new_ids)
                             else [st.decoded / SAMPLE_RATE] * len(new_ids))
            st.hyp, st.n_tokens, st.text = hyp, len(ids), st.text + delta
            st.decoded = end
            keep_from = max(st.base, st.decoded - st.left)           # drop audio no later chunk needs
            st.audio, st.base = st.audio[keep_from - st.base:], keep_from
            st.chunk = min(st.max_chunk, st.chunk * 2)
            deltas.append(delta)
        return deltas

    def _add_pieces(self, words: list[dict], pieces: list[str], starts: list[float]) -> None:
        """Extend word timings with sentencepiece pieces ("▁" opens a word) that start at ``starts`` (s)."""
        for piece, start in zip(pieces, starts):
            if piece.startswith("▁") or not words:
                # a new word; a lone "▁" (a space token) opens one that the next pieces fill
                words.append({"word": piece.lstrip("▁"), "start": round(start, 3), "end": round(start + self.stride_s, 3)})
            else:
                words[-1]["word"] += piece
                words[-1]["end"] = round(start + self.stride_s, 3)

    def stream_words(self, st: StreamState) -> list[dict]:
        return [w for w in st.words if w["word"]]

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
                hyps = self.offline_decoding.rnnt_decoder_predictions_tensor(enc, enc_len, return_hypotheses=timestamps)
                if self.guard is not None:   # the greedy reading of the same encoder output vets the LM's terms
                    hyps = self._guarded(hyps, self.model.decoding.rnnt_decoder_predictions_tensor(
                        enc, enc_len, return_hypotheses=timestamps))
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

    def _guarded(self, fused: list, greedy: list) -> list:
        """Per chunk, the fused hypothesis unless it writes a lexicon term the greedy one does not support
        (:mod:`clinasr.phantom_guard`); then the greedy hypothesis, text and timings alike. Counts only, no text,
        reach the stats (logs without PHI)."""
        from clinasr import phantom_guard
        from clinasr.textnorm import normalize

        out = []
        for f, g in zip(fused, greedy):
            f_text, g_text = (h.text if hasattr(h, "text") else str(h) for h in (f, g))
            veto = phantom_guard.vetoes(normalize(f_text), normalize(g_text), self.guard)
            self.guard_stats["chunks"] += 1
            self.guard_stats["vetoed"] += bool(veto)
            out.append(g if veto else f)
        return out

    def _words(self, hyp, offset_s: float) -> list[dict]:
        """Word timings from the hypothesis' token timesteps (frames of ``stride_s`` seconds)."""
        tokens = [int(t) for t in (hyp.y_sequence.tolist() if hasattr(hyp.y_sequence, "tolist") else hyp.y_sequence)]
        steps = hyp.timestamp.tolist() if hasattr(hyp.timestamp, "tolist") else list(hyp.timestamp or [])
        if not tokens or len(steps) != len(tokens):
            return []
        out: list[dict] = []
        self._add_pieces(out, self.model.tokenizer.ids_to_tokens(tokens), [offset_s + s * self.stride_s for s in steps])
        return [w for w in out if w["word"]]
