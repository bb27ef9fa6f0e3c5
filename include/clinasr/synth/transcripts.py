"""Transcript generation: an offline grammar generator (default) and an LLM generator behind one interface.

Both produce :class:`Utterance` rows whose ``text`` is already normalised (the shared normaliser),
with the target term, the terms of each category present (for KER scoring), the negation flag and the
template/prompt id. PHI-looking text is rejected and counted, never kept; duplicates are dropped
across the whole dataset.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from clinasr.synth.lexicon import Lexicon, TermList
from clinasr.textnorm import normalize, number_to_words


@dataclass
class Utterance:
    utt_id: str
    text: str
    term: str
    terms: list[dict]            # [{"term", "category"}] present in the text, for KER
    negated: bool
    negation_cue: str | None
    generator: str               # grammar | llm:<model>
    template_id: str
    seed: int
    lexicon_version: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- PHI screening --------------------------------------------------------------------------------
_PHI_PATTERNS = {
    "phone number": re.compile(r"\b(\+?1[\s.-]?)?\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b"),
    "ssn": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "record number": re.compile(r"\b(mrn|medical record( number)?|record number|account number)\b[\s#:]*\w*", re.I),
    "date": re.compile(r"\b\d{1,2}/\d{1,2}/\d{2,4}\b|\b(date of birth|dob|born on)\b", re.I),
    "email": re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b"),
    "address": re.compile(r"\b\d+\s+\w+\s+(street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln)\b", re.I),
    "named person": re.compile(r"\b(?i:mr|mrs|ms|miss|dr)\.?\s+[A-Z][a-z]+"),
}


def phi_reasons(text: str) -> list[str]:
    """Why ``text`` looks like it contains PHI (empty list: it does not)."""
    return [name for name, pat in _PHI_PATTERNS.items() if pat.search(text)]


# ---- the grammar generator ----------------------------------------------------------------------
# Family "a" templates are used for training data; family "b" only for held-out evaluation sets, so
# an evaluation can measure generalisation to unseen sentence shapes.
TEMPLATES: dict[str, tuple[str, str]] = {
    "a01": ("a", "{filler} patient takes {drug} {dose} {route} {freq}"),
    "a02": ("a", "start {drug} {dose} {freq}"),
    "a03": ("a", "continue {drug} {dose} {route} {freq}"),
    "a04": ("a", "patient {neg} {drug}"),
    "a05": ("a", "she has been on {drug} for {cond}"),
    "a06": ("a", "increase the {drug} to {dose} {freq}"),
    "a07": ("a", "hold the {drug} tonight {filler} recheck in the morning"),
    "a08": ("a", "{neg} {drug} {filler} because of {cond}"),
    "a09": ("a", "give {drug} {dose} {route} now"),
    "a10": ("a", "take the {drug} uh the {drug} {dose} {freq}"),            # self-repair
    "a11": ("a", "{cs} take {drug} {dose} {freq}"),                          # code-switching
    "a12": ("a", "he takes {drug} {shorthand}"),                             # shorthand read aloud
    "a13": ("a", "{drug} {dose} {route}"),                                   # terse order
    "a14": ("a", "we will {filler} taper the {drug}"),                       # truncated thought
    "b01": ("b", "the patient reports taking {drug} {dose} {freq} at home"),
    "b02": ("b", "plan is to switch to {drug} {dose} {route}"),
    "b03": ("b", "{filler} she {neg} {drug} at this time"),
    "b04": ("b", "prescribed {drug} {dose} {freq} for {cond}"),
    "b05": ("b", "reports no side effects from {drug}"),
    "b06": ("b", "recommend {drug} {dose} {route} {freq} for two weeks"),
}
_NEG_TEMPLATES = {"a04", "a08", "b03"}


def _spoken_dose(amount: float, unit: str) -> str:
    return f"{number_to_words(f'{amount:g}')} {unit}"


class GrammarGenerator:
    """Deterministic given (seed, term list, template family)."""

    name = "grammar"

    def __init__(self, lexicon: Lexicon, seed: int = 0, template_family: str = "a"):
        if template_family not in ("a", "b", "all"):
            raise ValueError("template_family must be 'a' (training), 'b' (held-out) or 'all'")
        self.lex, self.seed = lexicon, seed
        self.templates = {k: v for k, (fam, v) in TEMPLATES.items() if template_family in ("all", fam)}

    def generate(self, terms: TermList, per_term: int) -> Iterable[Utterance]:
        lex = self.lex
        cats = lex.categories()
        for term in terms.terms:
            rng = random.Random(f"{self.seed}|{term}")
            category = terms.categories.get(term, "drug")
            # a frequency or route priority term goes into a template with its slot (every template has {drug})
            slot = {"frequency": "{freq}", "route": "{route}"}.get(category, "{drug}")
            shapes = sorted(k for k, v in self.templates.items() if slot in v) or sorted(self.templates)
            for i in range(per_term):
                tid = rng.choice(shapes)
                tpl = self.templates[tid]
                unit = rng.choice(list(lex["units"]))
                slots = {
                    "drug": term if category == "drug" else normalize(rng.choice(lex.drugs)),
                    "dose": _spoken_dose(rng.choice(lex["dose_amounts"]), unit),
                    "route": rng.choice(lex["routes"]),
                    "freq": term if category == "frequency" else rng.choice(lex["frequencies"]),
                    "neg": rng.choice(lex["negations"]) if tid in _NEG_TEMPLATES else "",
                    "cond": rng.choice(lex["conditions"]),
                    "filler": rng.choice(lex["fillers"]) if rng.random() < 0.4 else "",
                    "cs": rng.choice(lex["code_switching"]),
                    "shorthand": rng.choice(list(lex["shorthand"])),
                }
                if category == "route":
                    slots["route"] = term
                text = normalize(tpl.format(**slots))
                present = [{"term": t, "category": c} for t, c in self._terms_in(text, cats, slots)]
                yield Utterance(
                    utt_id=_utt_id(text, self.seed, i, term), text=text, term=term, terms=present,
                    negated=bool(slots["neg"]), negation_cue=normalize(slots["neg"]) or None, generator=self.name,
                    template_id=tid, seed=self.seed, lexicon_version=lex.version,
                )

    @staticmethod
    def _terms_in(text: str, cats: dict[str, str], slots: dict) -> list[tuple[str, str]]:
        out = []
        for key, cat in (("drug", "drug"), ("freq", "frequency"), ("route", "route")):
            t = normalize(slots[key])
            if t and f" {t} " in f" {text} ":
                out.append((t, cat))
        dose = normalize(slots["dose"])
        if f" {dose} " in f" {text} ":
            out.append((dose, "dosage"))
        return list(dict.fromkeys(out))


def _utt_id(text: str, seed: int, i: int, term: str) -> str:
    return hashlib.sha256(f"{seed}|{term}|{i}|{text}".encode()).hexdigest()[:16]


# ---- the LLM generator ----------------------------------------------------------------------------
PROMPT = ("Write one {min_words}-{max_words} word utterance a clinician might dictate that contains the exact "
          "term '{term}'{extra}. Speak numbers as words. Do not include any names, dates, phone or record "
          "numbers. Reply with the utterance only.")
EDGE_CASES = [" and a dosage in milligrams", " and a dosage in micrograms; include an interjection like 'um'",
              " in a negated statement (for example 'denies taking')", " with a frequency such as 'every eight hours'",
              " and a route of administration", " with a self-correction mid-sentence"]


class LLMGenerator:
    """Any OpenAI-compatible chat-completions endpoint (``base_url``), with caching, retries, a rate
    limit and validation of every reply (term present, length bounds, no PHI)."""

    def __init__(self, lexicon: Lexicon, base_url: str, model: str, api_key: str | None = None, seed: int = 0,
                 cache_dir: Path | None = None, requests_per_minute: float = 60.0, max_attempts: int = 3,
                 min_words: int = 5, max_words: int = 20, timeout: float = 30.0):
        from openai import OpenAI

        self.lex, self.seed, self.model = lexicon, seed, model
        self.name = f"llm:{model}"
        self.client = OpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=timeout, max_retries=2)
        self.cache_dir = cache_dir
        self.min_interval = 60.0 / requests_per_minute if requests_per_minute > 0 else 0.0
        self.max_attempts, self.min_words, self.max_words = max_attempts, min_words, max_words
        self._last = 0.0
        self.rejected: dict[str, int] = {}

    def _cached(self, key: str) -> str | None:
        if self.cache_dir and (p := self.cache_dir / f"{key}.json").exists():
            return json.loads(p.read_text())["reply"]
        return None

    def _complete(self, prompt: str, attempt: int) -> str:
        key = hashlib.sha256(f"{self.model}|{self.seed}|{attempt}|{prompt}".encode()).hexdigest()[:24]
        if (hit := self._cached(key)) is not None:
            return hit
        wait = self._last + self.min_interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last = time.monotonic()
        r = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0.9, seed=self.seed + attempt,
            max_tokens=80)
        reply = (r.choices[0].message.content or "").strip().strip('"')
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            (self.cache_dir / f"{key}.json").write_text(json.dumps({"prompt": prompt, "reply": reply}))
        return reply

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def generate(self, terms: TermList, per_term: int) -> Iterable[Utterance]:
        for term in terms.terms:
            rng = random.Random(f"{self.seed}|{term}")
            for i in range(per_term):
                extra = rng.choice(EDGE_CASES)
                prompt = PROMPT.format(term=term, extra=extra, min_words=self.min_words, max_words=self.max_words)
                for attempt in range(self.max_attempts):
                    reply = self._complete(prompt, attempt)
                    if phi := phi_reasons(reply):
                        self._reject("phi: " + ", ".join(phi))
                        continue
                    text = normalize(reply)
                    n = len(text.split())
                    if not self.min_words <= n <= self.max_words:
                        self._reject("length")
                        continue
                    if f" {term} " not in f" {text} ":
                        self._reject("term missing")
                        continue
                    present, neg = self.lex.annotate(text)
                    yield Utterance(utt_id=_utt_id(text, self.seed, i, term), text=text, term=term, terms=present,
                                    negated=neg is not None, negation_cue=neg, generator=self.name,
                                    template_id=f"prompt:{hashlib.sha256(prompt.encode()).hexdigest()[:8]}",
                                    seed=self.seed, lexicon_version=self.lex.version)
                    break
                else:
                    self._reject("gave up after retries")


def dedupe(utts: Iterable[Utterance]) -> tuple[list[Utterance], int]:
    seen, out, dropped = set(), [], 0
    for u in utts:
        if u.text in seen:
            dropped += 1
            continue
        seen.add(u.text)
        out.append(u)
    return out, dropped


def generate_transcripts(lexicon: Lexicon, terms: TermList, per_term: int, generator: str = "grammar", seed: int = 0,
                         template_family: str = "a", llm: dict | None = None, cache_dir: Path | None = None) -> dict:
    """Generate, screen and dedupe transcripts. Returns utterances plus counts of what was dropped and why."""
    if per_term < 1:
        raise ValueError("per_term must be at least 1")
    if generator == "grammar":
        gen = GrammarGenerator(lexicon, seed=seed, template_family=template_family)
    elif generator == "llm":
        llm = llm or {}
        if not llm.get("base_url") or not llm.get("model"):
            raise ValueError("the llm generator needs llm.base_url and llm.model (any OpenAI-compatible endpoint)")
        gen = LLMGenerator(lexicon, seed=seed, cache_dir=cache_dir, **llm)
    else:
        raise ValueError(f"unknown generator {generator!r}: use 'grammar' or 'llm'")
    try:
        utts = list(gen.generate(terms, per_term))
    except Exception as e:  # an unreachable LLM is reported, not a crash with a half-written dataset
        if generator == "llm":
            raise RuntimeError(f"LLM endpoint {llm.get('base_url')} failed: {type(e).__name__}: {e}") from None
        raise
    screened, phi_dropped = [], 0
    for u in utts:
        if phi_reasons(u.text):
            phi_dropped += 1
        else:
            screened.append(u)
    unique, dup = dedupe(screened)
    dropped = {"duplicate": dup, "phi": phi_dropped, **getattr(gen, "rejected", {})}
    return {"utterances": unique, "dropped": {k: v for k, v in dropped.items() if v},
            "unknown_terms": terms.unknown, "generator": gen.name}
