"""Scoring shared by evaluation, the gate and drift monitoring (pure Python: both runtimes import it).

- WER over normalised text (the same normaliser as the references, :mod:`clinasr.textnorm`).
- Strict keyword error rate (KER): a term counts as recognised only when its words appear contiguous and
  in order in the hypothesis ("cefa zolin" is a miss for "cefazolin"); per term category.
- Negation accuracy: a negated reference whose hypothesis lost the negation cue is an error; when the
  term itself survived, the statement now reads as un-negated — a *critical* error, counted apart.
- Per-slice WER (accent profile, noise band, telephony, origin), term confusions (what a missed term
  was heard as), and bootstrap confidence intervals.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from clinasr.textnorm import normalize

SLICE_KEYS = ("accent_profile", "noise_band", "telephony", "origin")


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
    slices: dict[str, dict[str, list[int]]] = {k: defaultdict(lambda: [0, 0]) for k in SLICE_KEYS}
    per_row = []
    for r in rows:
        hyp_n = normalize(r.get("hypothesis", ""))
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
        for k in SLICE_KEYS:
            if k in r:
                s = slices[k][str(r[k])]
                s[0] += e
                s[1] += w
        per_row.append({"utt_id": r.get("utt_id"), "errors": e, "words": w, "term_misses": misses,
                        "terms": len(r.get("terms") or []), "negation_error": neg_error})
    n_terms = sum(term_total.values())
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
        "slices": {k: {v: {"wer": ew[0] / max(ew[1], 1), "words": ew[1]} for v, ew in sorted(d.items())}
                   for k, d in slices.items() if d},
        "confusions": [{"term": t, "heard_as": h, "count": c} for (t, h), c in confusions.most_common(50)],
        "per_row": per_row,
    }


def bootstrap_ci(per_row: list[dict], n: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap over utterances for WER and KER."""
    if not per_row:
        return {}
    rng = random.Random(seed)
    wers, kers = [], []
    k = len(per_row)
    for _ in range(n):
        sample = [per_row[rng.randrange(k)] for _ in range(k)]
        w = sum(r["words"] for r in sample)
        wers.append(sum(r["errors"] for r in sample) / max(w, 1))
        t = sum(r["terms"] for r in sample)
        if t:
            kers.append(sum(r["term_misses"] for r in sample) / t)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2

    def pct(xs: list[float]) -> list[float] | None:
        if not xs:
            return None
        xs = sorted(xs)
        return [xs[int(lo * (len(xs) - 1))], xs[int(hi * (len(xs) - 1))]]

    return {"wer": pct(wers), "ker": pct(kers), "level": level, "resamples": n}


def paired_reduction_ci(base: list[dict], cand: list[dict], n: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Relative WER and KER reduction of ``cand`` against ``base`` on the same utterances (``score_rows``'s
    per_row lists, matched by utt_id), with a paired percentile bootstrap: each resample draws utterances
    and scores both models on the same draw. 0.30 means 30% fewer errors than the base."""
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
