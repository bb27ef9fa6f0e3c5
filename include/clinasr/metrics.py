"""Scoring shared by evaluation, the gate and drift monitoring (pure Python: both runtimes import it).

- WER over normalised text (the same normaliser as the references, :mod:`clinasr.textnorm`).
- Strict keyword error rate (KER): a term counts as recognised only when its words appear contiguous and
  in order in the hypothesis ("cefa zolin" is a miss for "cefazolin"); per term category.
- Negation accuracy: a negated reference whose hypothesis lost the negation cue is an error; when the
  term itself survived, the statement now reads as un-negated — a *critical* error, counted apart.
- Phantom terms: a lexicon term (drug, dose, route, frequency) in the hypothesis that the reference does
  not have — an invented medication or dose. Strict KER only counts misses; a transcript that adds a drug
  to "the train leaves at seven" is worse than one that drops one. Counted per 100 utterances on every set.
- Per-slice WER (accent profile, noise band, telephony, origin, domain), term confusions (what a missed term
  was heard as), and bootstrap confidence intervals.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from clinasr.textnorm import normalize

SLICE_KEYS = ("accent_profile", "noise_band", "telephony", "origin", "domain", "tts_engine", "condition")
PHANTOM_CATEGORIES = ("drug", "dosage", "route", "frequency")
_NUMBER_WORDS = frozenset(("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                           "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty "
                           "ninety hundred thousand point half a and").split())


def phantom_inventory(lexicon_path: str | None = None) -> tuple[dict[str, dict[tuple[str, ...], str]], frozenset]:
    """The lexicon's terms that a transcript must never invent, as {first word: {phrase words: category}},
    and the unit words (a unit after a number word is a dose). Longest phrases are matched first."""
    from clinasr.synth.lexicon import load_lexicon

    lex = load_lexicon(lexicon_path)
    if lex.version not in _INVENTORIES:
        _INVENTORIES[lex.version] = _inventory(lex)
    return _INVENTORIES[lex.version]


_INVENTORIES: dict[str, tuple] = {}


def _inventory(lex) -> tuple[dict[str, dict[tuple[str, ...], str]], frozenset]:
    phrases: dict[tuple[str, ...], str] = {}
    for t in [normalize(d) for d in lex.drugs] + list(lex.brands):
        phrases[tuple(t.split())] = "drug"
    for t in lex["routes"]:
        phrases[tuple(normalize(t).split())] = "route"
    for t in lex["frequencies"]:
        phrases[tuple(normalize(t).split())] = "frequency"
    by_first: dict[str, dict[tuple[str, ...], str]] = defaultdict(dict)
    for words, cat in phrases.items():
        if words:
            by_first[words[0]][words] = cat
    units = frozenset(normalize(u) for u in lex["units"])
    return dict(by_first), units


def lexicon_spans(words: list[str], inventory=None) -> list[tuple[int, int, str, str]]:
    """Lexicon terms in normalised ``words`` as ``(start, end, phrase, category)`` word spans. A dose is a unit
    word after number words ("twenty five milligrams"); drugs, routes and frequencies are their lexicon phrases,
    longest match first ("as needed for pain" is one frequency, not "as needed" plus words)."""
    by_first, units = inventory or phantom_inventory()
    found: list[tuple[int, int, str, str]] = []
    i = 0
    while i < len(words):
        best = None
        for phrase, cat in (by_first.get(words[i]) or {}).items():
            if tuple(words[i:i + len(phrase)]) == phrase and (best is None or len(phrase) > len(best[0])):
                best = (phrase, cat)
        if best:
            found.append((i, i + len(best[0]), " ".join(best[0]), best[1]))
            i += len(best[0])
            continue
        if words[i] in units and i > 0 and words[i - 1] in _NUMBER_WORDS - {"a", "and"}:
            j = i - 1
            while j > 0 and words[j - 1] in _NUMBER_WORDS:
                j -= 1
            found.append((j, i + 1, " ".join(words[j:i + 1]), "dosage"))
        i += 1
    return found


def lexicon_terms(text: str, inventory=None) -> Counter:
    """Occurrences of lexicon terms in normalised ``text``: Counter{(phrase, category)} (:func:`lexicon_spans`)."""
    return Counter((phrase, cat) for _, _, phrase, cat in lexicon_spans(text.split(), inventory))


def phantom_terms(ref: str, hyp: str, inventory=None) -> list[tuple[str, str]]:
    """Lexicon terms the hypothesis has more often than the reference (both normalised): what the model
    wrote that nobody said. A wrong dose ("fifty milligrams" for "five milligrams") is a phantom too."""
    extra = lexicon_terms(hyp, inventory) - lexicon_terms(ref, inventory)
    return [t for t, n in sorted(extra.items()) for _ in range(n)]


def align(ref: list[str], hyp: list[str]) -> list[tuple[str, str | None, str | None]]:
    """Levenshtein alignment: [(op, ref_word, hyp_word)] with op in ok|sub|del|ins.

    Among the alignments with the fewest edits it keeps the one with the most matches, so that
    "patient taking war farin" aligns "taking" with "taking" (a deletion of "denies") rather than
    substituting every word; confusion tables then show what a term was really heard as."""
    n, m = len(ref), len(hyp)
    # cost of a cell = (edits, -matches): tuples compare edits first, then prefer more matches
    d = [[(0, 0)] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = (i, 0)
    for j in range(m + 1):
        d[0][j] = (j, 0)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            same = ref[i - 1] == hyp[j - 1]
            e, mm = d[i - 1][j - 1]
            diag = (e + (not same), mm - same)
            up = (d[i - 1][j][0] + 1, d[i - 1][j][1])
            left = (d[i][j - 1][0] + 1, d[i][j - 1][1])
            d[i][j] = min(diag, up, left)
    out, i, j = [], n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0:
            same = ref[i - 1] == hyp[j - 1]
            e, mm = d[i - 1][j - 1]
            if d[i][j] == (e + (not same), mm - same):
                out.append(("ok" if same else "sub", ref[i - 1], hyp[j - 1]))
                i, j = i - 1, j - 1
                continue
        if i > 0 and d[i][j] == (d[i - 1][j][0] + 1, d[i - 1][j][1]):
            out.append(("del", ref[i - 1], None))
            i -= 1
        else:
            out.append(("ins", None, hyp[j - 1]))
            j -= 1
    return out[::-1]


def edit_counts(ref: str, hyp: str) -> tuple[int, int]:
    """(word errors, reference words) after normalisation."""
    r, h = normalize(ref).split(), normalize(hyp).split()
    return sum(op != "ok" for op, _, _ in align(r, h)), len(r)


def contains(text: str, phrase: str) -> bool:
    return bool(phrase) and f" {phrase} " in f" {text} "


def heard_as(ref: str, hyp: str, term: str) -> str:
    """The hypothesis words aligned to ``term``'s span in the reference (for confusion tables)."""
    r, h = normalize(ref).split(), normalize(hyp).split()
    t = term.split()
    start = next((i for i in range(len(r) - len(t) + 1) if r[i:i + len(t)] == t), None)
    if start is None:
        return ""
    al = align(r, h)
    ref_pos = [k for k, (_, rw, _) in enumerate(al) if rw is not None]  # alignment index of each ref word
    lo, hi = ref_pos[start], ref_pos[start + len(t) - 1]
    while lo > 0 and al[lo - 1][0] == "ins":  # insertions next to the term belong to how it was heard
        lo -= 1
    while hi + 1 < len(al) and al[hi + 1][0] == "ins":
        hi += 1
    out = [hw for _, _, hw in al[lo:hi + 1] if hw is not None]
    return " ".join(out)


def score_rows(rows: list[dict]) -> dict:
    """rows: manifest rows (text, terms, negated, negation_cue, slice fields) with a ``hypothesis`` each."""
    if not rows:
        raise ValueError("nothing to score: no rows with hypotheses")
    errs = words = 0
    term_total, term_miss = Counter(), Counter()
    per_term_total, per_term_miss = Counter(), Counter()
    confusions: Counter = Counter()
    neg_total = neg_ok = neg_critical = 0
    slices: dict[str, dict[str, list[int]]] = {k: defaultdict(lambda: [0, 0, 0, 0, 0]) for k in SLICE_KEYS}
    per_row = []
    inventory = phantom_inventory()
    phantoms: Counter = Counter()
    for r in rows:
        hyp_n = normalize(r.get("hypothesis", ""))
        invented = phantom_terms(normalize(r["text"]), hyp_n, inventory)
        phantoms.update(invented)
        e, w = edit_counts(r["text"], hyp_n)
        errs, words = errs + e, words + w
        misses = 0
        for t in r.get("terms") or []:
            term_total[t["category"]] += 1
            per_term_total[t["term"]] += 1
            if not contains(hyp_n, t["term"]):
                term_miss[t["category"]] += 1
                per_term_miss[t["term"]] += 1
                misses += 1
                confusions[(t["term"], heard_as(r["text"], hyp_n, t["term"]) or "<nothing>")] += 1
        neg_error = None
        if r.get("negated"):
            neg_total += 1
            neg_error = not contains(hyp_n, r.get("negation_cue") or "")
            neg_ok += not neg_error
            if neg_error and r.get("term") and contains(hyp_n, r["term"]):
                neg_critical += 1
        if r.get("voice") and "tts_engine" not in r:   # "espeak:gmw/en-us" -> engine slice "espeak"
            r = {**r, "tts_engine": str(r["voice"]).split(":", 1)[0]}
        for k in SLICE_KEYS:
            if k in r:
                s = slices[k][str(r[k])]
                s[0] += e
                s[1] += w
                s[2] += len(r.get("terms") or [])
                s[3] += misses
                s[4] += len(invented)
        per_row.append({"utt_id": r.get("utt_id"), "errors": e, "words": w, "term_misses": misses,
                        "terms": len(r.get("terms") or []), "negation_error": neg_error, "phantoms": len(invented),
                        "engine": r.get("tts_engine")})   # paired comparisons per synthesiser (held-out engine)
    n_terms = sum(term_total.values())
    n_phantoms = sum(phantoms.values())
    return {
        "utterances": len(rows),
        "wer": errs / max(words, 1),
        "ker": sum(term_miss.values()) / n_terms if n_terms else None,
        "ker_by_category": {c: term_miss[c] / term_total[c] for c in sorted(term_total)},
        "ker_by_term": {t: per_term_miss[t] / per_term_total[t] for t in sorted(per_term_total)},
        "terms_scored": n_terms,
        "negation_accuracy": neg_ok / neg_total if neg_total else None,
        "negated_utterances": neg_total,
        "critical_negation_errors": neg_critical,
        # per slice: WER, and where the slice has terms, KER; phantom terms of the slice's utterances
        "slices": {k: {v: {"wer": ew[0] / max(ew[1], 1), "words": ew[1], "terms": ew[2],
                           "ker": ew[3] / ew[2] if ew[2] else None, "phantoms": ew[4]} for v, ew in sorted(d.items())}
                   for k, d in slices.items() if d},
        "confusions": [{"term": t, "heard_as": h, "count": c} for (t, h), c in confusions.most_common(50)],
        "phantom_terms": {
            "count": n_phantoms, "per_100_utterances": 100.0 * n_phantoms / len(rows),
            "utterances_with_phantoms": sum(1 for p in per_row if p["phantoms"]),
            "by_category": {c: sum(n for (_, cat), n in phantoms.items() if cat == c) for c in PHANTOM_CATEGORIES},
            "top": [{"term": t, "category": c, "count": n} for (t, c), n in phantoms.most_common(20)]},
        "per_row": per_row,
    }


def bootstrap_ci(per_row: list[dict], n: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap over utterances for WER and KER."""
    if not per_row:
        return {}
    rng = random.Random(seed)
    wers, kers, phantoms = [], [], []
    k = len(per_row)
    for _ in range(n):
        sample = [per_row[rng.randrange(k)] for _ in range(k)]
        w = sum(r["words"] for r in sample)
        wers.append(sum(r["errors"] for r in sample) / max(w, 1))
        phantoms.append(100.0 * sum(r.get("phantoms", 0) for r in sample) / k)
        t = sum(r["terms"] for r in sample)
        if t:
            kers.append(sum(r["term_misses"] for r in sample) / t)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2

    def pct(xs: list[float]) -> list[float] | None:
        if not xs:
            return None
        xs = sorted(xs)
        return [xs[int(lo * (len(xs) - 1))], xs[int(hi * (len(xs) - 1))]]

    return {"wer": pct(wers), "ker": pct(kers), "phantoms_per_100": pct(phantoms), "level": level, "resamples": n}


def paired_reduction_by_engine(base: list[dict], cand: list[dict], **kw) -> dict:
    """:func:`paired_reduction_ci` per synthesiser (``score_rows``'s per_row ``engine``: espeak, piper, ...): the
    held-out engine's reduction apart from the held-out voices' (issue 21 bounds each). Rows without one are left out."""
    engines = sorted({r["engine"] for r in base if r.get("engine")})
    return {e: paired_reduction_ci([r for r in base if r.get("engine") == e], [r for r in cand if r.get("engine") == e], **kw)
            for e in engines}


def paired_reduction_ci(base: list[dict], cand: list[dict], n: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Relative WER and KER reduction of ``cand`` against ``base`` on the same utterances (``score_rows``'s
    per_row lists, matched by utt_id), with a paired percentile bootstrap: each resample draws utterances
    and scores both models on the same draw. 0.30 means 30% fewer errors than the base. Also the absolute
    changes: ``wer_change`` (+0.02: two more errors per 100 words), ``term_accuracy_change`` and
    ``phantoms_per_100_change``."""
    by_id = {r["utt_id"]: r for r in cand}
    pairs = [(b, by_id[b["utt_id"]]) for b in base if b["utt_id"] in by_id]
    if not pairs:
        return {}

    def reductions(sample):
        out = {}
        bw, cw = sum(b["errors"] for b, _ in sample), sum(c["errors"] for _, c in sample)
        out["wer_reduction"] = 1 - cw / bw if bw else None
        bk, ck = sum(b["term_misses"] for b, _ in sample), sum(c["term_misses"] for _, c in sample)
        out["ker_reduction"] = 1 - ck / bk if bk else None
        words = sum(b["words"] for b, _ in sample)
        out["wer_change"] = (cw - bw) / words if words else None   # absolute: +0.02 = two more errors per 100 words
        terms = sum(b["terms"] for b, _ in sample)
        out["term_accuracy_change"] = (bk - ck) / terms if terms else None
        out["phantoms_per_100_change"] = 100.0 * sum(c.get("phantoms", 0) - b.get("phantoms", 0) for b, c in sample) / len(sample)
        return out

    rng = random.Random(seed)
    est = reductions(pairs)
    draws = [reductions([pairs[rng.randrange(len(pairs))] for _ in pairs]) for _ in range(n)]
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    res = {"utterances": len(pairs), "level": level, "resamples": n}
    for k, v in est.items():
        xs = sorted(d[k] for d in draws if d[k] is not None)
        res[k] = None if v is None else {"estimate": v, "ci": [xs[int(lo * (len(xs) - 1))], xs[int(hi * (len(xs) - 1))]]}
    return res
