"""A guard against lexicon terms that an n-gram LM writes and the acoustic model did not hear.

Shallow fusion with an LM that has read clinical text (:mod:`clinasr.lm`, rebuilt for a fine-tune from its
training transcripts) recovers drug names the acoustic model half-heard ("war farin" -> "warfarin") but also
writes drugs into speech that has none: on base v7's GPU fine-tunes, 0.6-2.4 phantom drugs per 100 everyday
utterances against 0 with greedy decoding ("my sister lives in a small village by the sea" -> "... lives in
amlodipine the sea"; docs/benchmarks.md). A clinical transcript that invents a medication is worse than one that
misses it.

The guard compares the fused transcript with the greedy one of the same encoder output. Every lexicon term
(drug, dose, route, frequency; :func:`clinasr.metrics.lexicon_spans`) that the fused text has more often than
the greedy text needs support: either it is spelled like the greedy words it replaced (the words aligned to it,
with the words inserted beside it) at a letter similarity of at least ``min_similarity`` (1 - Levenshtein
distance / the longer length, spaces removed: "warfarin" over "war farin" is 1.0, "amlodipine" over "a small
village by" 0.33), or it stands in clinical context (another supported term in the same transcript: a dose, a
route, a frequency). Everyday speech has no such context; dictation that names a drug mostly does. When a term
has neither, the guard vetoes the fused transcript and the greedy one stands (the whole chunk, so that text and
word timings stay one hypothesis). It needs nothing but the two transcripts and the lexicon.
"""
from __future__ import annotations

from collections import Counter

from clinasr import metrics

DEFAULT_MIN_SIMILARITY = 0.5


def bound(setting) -> float | None:
    """The similarity bound a decoding spec's ``phantom_guard`` asks for: absent (None) is the default, a dict its
    ``min_similarity``, a number itself; False or 0 turns the guard off (None)."""
    if setting is None or isinstance(setting, dict):
        setting = (setting or {}).get("min_similarity", DEFAULT_MIN_SIMILARITY)
    return float(setting) if setting else None


def counted(before: dict | None, after: dict | None) -> dict | None:
    """What a stretch of decoding added to a Transcriber's running ``guard_stats`` ({"chunks", "vetoed"}), or None
    when the guard checked nothing in it (a greedy model, a streaming batch)."""
    if before is None or after is None or after["chunks"] == before["chunks"]:
        return None
    return {k: after[k] - before[k] for k in before}


def similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / the longer length, over the letters of ``a`` and ``b`` without spaces."""
    a, b = a.replace(" ", ""), b.replace(" ", "")
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


def heard_as(fused: list[str], acoustic: list[str], start: int, end: int) -> list[str]:
    """The ``acoustic`` words aligned to ``fused[start:end]``, with the words inserted right before and after it."""
    out: list[str] = []
    i = 0   # index into fused of the next alignment step that consumes a fused word
    for op, f_word, a_word in metrics.align(fused, acoustic):
        if op == "ins":   # an acoustic word with no fused word: inside or at the edge of the span?
            if start <= i <= end:
                out.append(a_word)
            continue
        if start <= i < end and a_word is not None:
            out.append(a_word)
        i += 1
    return out


def vetoes(fused: str, acoustic: str, min_similarity: float = DEFAULT_MIN_SIMILARITY, inventory=None) -> list[dict]:
    """The lexicon terms of ``fused`` that ``acoustic`` does not support: [{term, category, heard, similarity}].

    A term the fused text has more often than the acoustic text is *supported* when it is spelled like the words
    the acoustic text has in its place (:func:`similarity` >= ``min_similarity``) or when it stands in clinical
    context: another term of the fused text that the acoustic text has too, or that is itself spelled like its
    acoustic words. It is vetoed only when neither holds, so two invented terms never vouch for each other."""
    inventory = inventory or metrics.phantom_inventory()
    f_words, a_words = fused.split(), acoustic.split()
    spans = metrics.lexicon_spans(f_words, inventory)
    if not spans:
        return []
    in_acoustic = Counter((p, c) for _, _, p, c in metrics.lexicon_spans(a_words, inventory))
    extra = Counter((p, c) for _, _, p, c in spans) - in_acoustic
    checked = []   # (span, heard, similarity, supported by its own spelling or by the acoustic text)
    for start, end, phrase, cat in spans:
        if (phrase, cat) in extra:
            heard = " ".join(heard_as(f_words, a_words, start, end))
            sim = similarity(phrase, heard)
            checked.append(((start, phrase, cat), heard, sim, sim >= min_similarity))
        else:
            checked.append(((start, phrase, cat), None, 1.0, True))
    out = []
    for (start, phrase, cat), heard, sim, ok in checked:
        if ok or any(other_ok for (s2, _, _), _, _, other_ok in checked if s2 != start):
            continue
        out.append({"term": phrase, "category": cat, "heard": heard, "similarity": round(sim, 3)})
    return out


def choose(fused: str, acoustic: str, min_similarity: float = DEFAULT_MIN_SIMILARITY, inventory=None) -> tuple[str, list[dict]]:
    """The transcript to keep: ``fused`` unless a term in it fails :func:`vetoes`, then ``acoustic``."""
    v = vetoes(fused, acoustic, min_similarity, inventory)
    return (acoustic if v else fused), v
