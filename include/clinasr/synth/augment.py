"""Acoustic augmentation: hospital noise at a random SNR, reverberation, telephony, far-field, speed, gain.

Every noise source is synthesised or made from the dataset's own TTS audio (babble), so nothing has
to be downloaded. Each transform fires with its configured probability; every applied transform and
its parameters are returned so the manifest row records exactly what was done.
"""

from __future__ import annotations

import random

import numpy as np
from scipy.signal import butter, fftconvolve, sosfilt

SR = 16000


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if colour == "white":
        return white
    spec = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1] if n > 1 else 1.0
    spec /= np.sqrt(f) if colour == "pink" else f  # pink 1/f power, brown 1/f^2
    return np.fft.irfft(spec, n)


def hvac_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    mains = rng.choice([50.0, 60.0])
    hum = sum(np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 6))
    rumble = sosfilt(butter(4, 300, "lowpass", fs=SR, output="sos"), rng.standard_normal(n))
    return hum / _rms(hum) + 2 * rumble / _rms(rumble)


def monitor_beeps(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    freq, period, length = rng.choice([880.0, 960.0, 1000.0]), rng.uniform(0.6, 1.2), 0.12
    gate = ((t + rng.uniform(0, period)) % period) < length
    return np.sin(2 * np.pi * freq * t) * gate + 0.05 * rng.standard_normal(n)


def babble(n: int, others: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """3-5 other utterances of the dataset, looped and offset: talk in the background."""
    if not others:
        return coloured_noise(n, "pink", rng)
    out = np.zeros(n)
    for _ in range(int(rng.integers(3, 6))):
        o = others[int(rng.integers(len(others)))]
        o = np.tile(o, int(np.ceil(n / max(len(o), 1))) + 1)
        start = int(rng.integers(0, max(len(o) - n, 1)))
        seg = o[start:start + n]
        out += seg / _rms(seg)
    return out


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    noise = noise[: len(speech)]
    scale = _rms(speech) / (_rms(noise) * 10 ** (snr_db / 20))
    return speech + scale * noise


def measured_snr(speech: np.ndarray, mixed: np.ndarray) -> float:
    return 20 * np.log10(_rms(speech) / _rms(mixed - speech))


def synthetic_rir(rt60: float, rng: np.random.Generator, direct_delay_s: float = 0.002) -> np.ndarray:
    """Exponentially decaying noise tail after a direct path: a room of the given RT60."""
    n = int(SR * rt60 * 1.2)
    t = np.arange(n) / SR
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # -60 dB at rt60
    rir = 0.3 * tail
    rir[int(direct_delay_s * SR)] += 1.0
    return rir / np.max(np.abs(rir))


def reverberate(x: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    y = fftconvolve(x, synthetic_rir(rt60, rng))[: len(x)]
    return y * (_rms(x) / _rms(y))


def mu_law(x: np.ndarray, mu: int = 255) -> np.ndarray:
    """Encode to 8-bit μ-law and decode again: the G.711 codec's quantisation."""
    x = np.clip(x, -1, 1)
    enc = np.round((np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu) + 1) / 2 * mu)
    y = 2 * enc / mu - 1
    return np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu


def telephony(x: np.ndarray) -> np.ndarray:
    """8 kHz narrowband channel: 300-3400 Hz band-pass, μ-law, back to 16 kHz."""
    from scipy.signal import resample_poly

    band = sosfilt(butter(6, [300, 3400], "bandpass", fs=SR, output="sos"), x)
    nb = resample_poly(band, 1, 2)
    peak = max(np.max(np.abs(nb)), 1e-9)
    return resample_poly(mu_law(nb / peak) * peak, 2, 1)[: len(x)]


def far_field(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    y = reverberate(x, float(rng.uniform(0.5, 0.9)), rng)
    y = sosfilt(butter(2, 4000, "lowpass", fs=SR, output="sos"), y)
    return y * 10 ** (-float(rng.uniform(6, 12)) / 20)


def change_speed(x: np.ndarray, factor: float) -> np.ndarray:
    from scipy.signal import resample

    return resample(x, max(int(len(x) / factor), 1))


def augment(x: np.ndarray, cfg: dict, seed: int, others: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[dict]]:
    """Apply the configured transforms (each with its probability) and return what was applied."""
    rnd = random.Random(seed)
    rng = np.random.default_rng(seed)
    applied: list[dict] = []
    y = x.astype(np.float64)

    if (c := cfg.get("speed")) and rnd.random() < c["p"]:
        f = round(rnd.uniform(*c["factor"]), 3)
        y = change_speed(y, f)
        applied.append({"type": "speed", "factor": f})
    if (c := cfg.get("reverb")) and rnd.random() < c["p"]:
        rt60 = round(rnd.uniform(*c["rt60"]), 3)
        y = reverberate(y, rt60, rng)
        applied.append({"type": "reverb", "rt60": rt60})
    if (c := cfg.get("far_field")) and rnd.random() < c["p"]:
        y = far_field(y, rng)
        applied.append({"type": "far_field"})
    if (c := cfg.get("noise")) and rnd.random() < c["p"]:
        kind = rnd.choice(c["types"])
        snr = round(rnd.uniform(*c["snr_db"]), 2)
        n = len(y)
        if kind in ("white", "pink", "brown"):
            noise = coloured_noise(n, kind, rng)
        elif kind == "hvac":
            noise = hvac_noise(n, rng)
        elif kind == "monitor_beeps":
            noise = monitor_beeps(n, rng)
        elif kind == "babble":
            noise = babble(n, others or [], rng)
        else:
            raise ValueError(f"unknown noise type {kind!r}")
        y = mix_at_snr(y, noise, snr)
        applied.append({"type": "noise", "noise": kind, "snr_db": snr})
    if (c := cfg.get("telephony")) and rnd.random() < c["p"]:
        y = telephony(y)
        applied.append({"type": "telephony", "codec": "mu-law", "band_hz": [300, 3400]})
    if (c := cfg.get("gain")) and rnd.random() < c["p"]:
        db = round(rnd.uniform(*c["db"]), 2)
        y = y * 10 ** (db / 20)
        applied.append({"type": "gain", "db": db})
    peak = np.max(np.abs(y)) if len(y) else 0
    if peak > 0.99:  # no clipping: scale down and record it
        y = y * (0.99 / peak)
        applied.append({"type": "peak_normalise"})
    return y.astype(np.float32), applied


def noise_band(applied: list[dict]) -> str:
    """Slice label for evaluation: clean | snr_10_15 | snr_15_20 | snr_20_25 (+ telephony)."""
    for a in applied:
        if a["type"] == "noise":
            lo = int(max(10, min(20, (a["snr_db"] // 5) * 5)))
            return f"snr_{lo}_{lo + 5}"
    return "clean"
