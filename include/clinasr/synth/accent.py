"""Accent perturbation: English espeak-ng voices speaking with the sound changes of other Englishes (issue 21).

The base models read the espeak-ng voices they trained on well, but an English accent they never heard badly:
base v7 wrote "detrain to decity" for "the train to the city" in espeak-ng's Caribbean English voice, whose
only differences from its US voice are a handful of sound changes (/ð/ said [d], final "-er" said [a]). The
second-language voices teach a model other languages' letter rules, not these. So a fraction of the
training utterances of the *English* espeak-ng voices are spoken from their own phonemes after a few of the
sound changes found across world Englishes and second-language English (Wells, *Accents of English*;
the eWAVE atlas): TH-stopping and TH-fronting, non-rhoticity, h-dropping, final devoicing, a vowel after a
final consonant, the KIT/FLEECE and FOOT/GOOSE mergers, /w/ for /v/. The text is turned into the voice's
phoneme mnemonics (``espeak_TextToPhonemes``), changed, and spoken back as ``[[...]]`` by the same voice.

Configured in ``voice_variation.accent`` of a synthesis/base config::

    accent: {p: 0.4, rules: [th_stopping, non_rhotic, ...], max_rules: 3}

``p`` of the English espeak-ng utterances get 1..max_rules of the rules (chosen per utterance); the manifest
row records which (``voice_params.accent``). Held-out evaluation sets never get it (their variation is
limited to rate, pitch and Piper's length: clinasr.evalsets.HELDOUT_VARIATION).
"""

from __future__ import annotations

import random
import re

# each rule: regex substitutions over espeak-ng's English phoneme mnemonics (phsource/ph_english), words
# separated by spaces, stress marks ' and , before a syllable. Multi-letter phonemes (aI eI OI aU oU I@ e@ U@ 3:
# dZ tS) are protected by the look-arounds.
_END = r"(?=[\s_]|$)"
RULES: dict[str, list[tuple[str, str]]] = {
    "th_stopping": [(r"D", "d"), (r"T", "t")],
    "th_fronting": [(r"T", "f"), (r"D", "v")],
    "non_rhotic": [(r"3(?!:)(?:r-)?", "a"), (r"r-", "")],
    "h_dropping": [(r"(^|\s)([',]?)h", r"\1\2")],
    "final_devoicing": [(r"z" + _END, "s"), (r"d" + _END, "t"), (r"v" + _END, "f"), (r"g" + _END, "k")],
    "final_vowel": [(r"([ptkbdgsz])" + _END, r"\1i")],
    "kit_fleece": [(r"(?<![aeOo])I(?![@2#])", "i:")],
    "foot_goose": [(r"(?<![aoA])U(?!@)", "u:")],
    "w_for_v": [(r"v", "w")],
}
_COMPILED = {k: [(re.compile(p), r) for p, r in subs] for k, subs in RULES.items()}


class AccentError(ValueError):
    pass


def check(spec: dict | None) -> dict | None:
    """The accent spec of a config, validated (None: no accent perturbation)."""
    if not spec:
        return None
    p = spec.get("p", 0)
    if not 0 <= float(p) <= 1:
        raise AccentError(f"voice_variation.accent.p must be in [0, 1], got {p!r}")
    rules = spec.get("rules") or list(RULES)
    unknown = sorted(set(rules) - set(RULES))
    if unknown:
        raise AccentError(f"unknown accent rule(s) {unknown}; known: {sorted(RULES)}")
    n = int(spec.get("max_rules", 3))
    if n < 1:
        raise AccentError(f"voice_variation.accent.max_rules must be >= 1, got {n}")
    return {"p": float(p), "rules": list(rules), "max_rules": n}


def applies(voice: str) -> bool:
    """Only English espeak-ng voices: their phoneme table is the one the rules are written for."""
    lang = voice.lower().split("+")[0].split("/")[-1]
    return lang == "en" or lang.startswith("en-")


def perturb(phonemes: str, rules: list[str]) -> str:
    for name in rules:
        for pat, rep in _COMPILED[name]:
            phonemes = pat.sub(rep, phonemes)
    return phonemes


def choose(rng: random.Random, spec: dict) -> list[str]:
    """The rules for one utterance ([]: spoken as it is)."""
    if rng.random() >= spec["p"]:
        return []
    k = rng.randint(1, min(spec["max_rules"], len(spec["rules"])))
    picked = rng.sample(spec["rules"], k)
    # TH-stopping and TH-fronting both rewrite /T D/: keep the first drawn
    if "th_stopping" in picked and "th_fronting" in picked:
        picked.remove(max(("th_stopping", "th_fronting"), key=picked.index))
    return picked
