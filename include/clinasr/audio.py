"""Audio I/O shared by synthesis, evaluation and serving: decode, validate, resample to 16 kHz mono."""

from __future__ import annotations

import io
import subprocess
from math import gcd
from pathlib import Path

import numpy as np

TARGET_SR = 16000


class AudioError(ValueError):
    """Audio that cannot be used; the message says why (empty, corrupt, silent, too long ...)."""


def resample(x: np.ndarray, sr: int, target: int = TARGET_SR) -> np.ndarray:
    if sr == target:
        return x.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(sr, target)
    return resample_poly(x, target // g, sr // g).astype(np.float32)


def to_mono(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=1) if x.ndim == 2 else x


def decode_bytes(data: bytes, target_sr: int = TARGET_SR) -> np.ndarray:
    """Decode any format libsndfile reads (wav, flac, ogg, mp3 with libsndfile>=1.1); others via ffmpeg."""
    if not data:
        raise AudioError("empty audio file")
    import soundfile as sf

    try:
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except Exception:
        x, sr = _ffmpeg_decode(data, target_sr), target_sr
    x = to_mono(np.asarray(x, dtype=np.float32))
    if x.size == 0:
        raise AudioError("audio has no samples")
    return resample(x, sr, target_sr)


def _ffmpeg_decode(data: bytes, sr: int) -> np.ndarray:
    try:
        r = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", "pipe:0", "-f", "f32le", "-ac", "1",
                            "-ar", str(sr), "pipe:1"], input=data, capture_output=True, timeout=120)
    except FileNotFoundError:
        raise AudioError("cannot decode this format (ffmpeg is not installed)") from None
    if r.returncode != 0 or not r.stdout:
        raise AudioError("not decodable audio (corrupt, truncated or not an audio format)")
    return np.frombuffer(r.stdout, dtype=np.float32).copy()


def load(path: str | Path, target_sr: int = TARGET_SR) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise AudioError(f"audio file not found: {p}")
    return decode_bytes(p.read_bytes(), target_sr)


def check(x: np.ndarray, sr: int = TARGET_SR, min_s: float = 0.1, max_s: float = 60.0, min_rms: float = 1e-4) -> None:
    if not np.all(np.isfinite(x)):
        raise AudioError("audio contains NaN/inf samples")
    dur = len(x) / sr
    if dur < min_s:
        raise AudioError(f"audio too short ({dur:.2f}s < {min_s}s)")
    if dur > max_s:
        raise AudioError(f"audio too long ({dur:.1f}s > {max_s}s)")
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    if rms < min_rms:
        raise AudioError(f"audio is silent (rms {rms:.1e})")


def write_wav(path: str | Path, x: np.ndarray, sr: int = TARGET_SR) -> None:
    import soundfile as sf

    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 0.999:
        x = x * (0.999 / peak)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype="PCM_16")


def probe_rate(data: bytes) -> int | None:
    """The sample rate an upload was recorded at (before resampling), when libsndfile can read its header."""
    import soundfile as sf

    try:
        return int(sf.info(io.BytesIO(data)).samplerate)
    except Exception:
        return None


def stats(x: np.ndarray, sr: int = TARGET_SR) -> dict:
    """Audio-condition summary for drift monitoring: duration, level (dBFS) and a rough SNR estimate
    (loud frames vs quiet frames, 20 ms frames, 90th vs 10th percentile energy)."""
    dur = len(x) / sr
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    n = sr // 50
    frames = x[: len(x) // n * n].reshape(-1, n) if len(x) >= n else x.reshape(1, -1)
    e = np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-12
    snr = float(10 * np.log10(np.percentile(e, 90) / np.percentile(e, 10))) if len(e) > 1 else 0.0
    return {"duration_s": round(dur, 3), "level_dbfs": round(20 * np.log10(max(rms, 1e-9)), 2), "snr_db": round(snr, 2)}
