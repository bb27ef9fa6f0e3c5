"""Drift monitoring: how is the production model doing on served traffic and clinician feedback?

Inputs (written by the transcription service under ``<serve work dir>``):
  traffic/<date>.jsonl   one record per served request: request id, time, model version, audio
                         conditions (duration, level, SNR estimate, original sample rate) and the
                         hypothesis. It holds transcripts, i.e. PHI: files are created mode 0600.
  feedback/<date>.jsonl  corrected transcripts posted to ``POST /v1/feedback`` with the request id.

:func:`measure` joins feedback to traffic in a time window and computes the signals with the same
metrics library as evaluation (WER, strict KER per term with confusions, negation accuracy and critical
negation errors), plus the out-of-vocabulary rate (corrected words the lexicon has never produced) and
audio-condition shift. :func:`decide` compares them with the values recorded at promotion under the
thresholds of ``configs/drift/*.yaml``. Too little data is "insufficient data", never a drift alarm.
Pure Python: runs in the orchestration runtime.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path


from clinasr import metrics
from clinasr.settings import load_versioned_yaml
from clinasr.textnorm import normalize


class DriftError(ValueError):
    pass


def load_policy(path: str | Path = "configs/drift/default.yaml") -> dict:
    return load_versioned_yaml(path, ("thresholds",), "drift policy", DriftError)


def _read_jsonl(d: Path, start: datetime, end: datetime) -> tuple[list[dict], int]:
    rows, bad = [], 0
    if not d.exists():
        return rows, bad
    day = start.date()
    while day <= end.date():
        f = d / f"{day.isoformat()}.jsonl"
        if f.exists():
            for line in f.read_text().splitlines():
                try:
                    r = json.loads(line)
                    ts = datetime.fromisoformat(r["ts"])
                except (ValueError, KeyError, TypeError):
                    bad += 1
                    continue
                if start <= ts < end:
                    rows.append(r)
        day += timedelta(days=1)
    return rows, bad


def load_window(serve_dir: Path, days: float, end: datetime | None = None) -> dict:
    end = end or datetime.now(timezone.utc)
    start = end - timedelta(days=days)
    traffic, bad_t = _read_jsonl(serve_dir / "traffic", start, end)
    feedback, bad_f = _read_jsonl(serve_dir / "feedback", start - timedelta(days=days), end)  # late feedback counts
    return {"start": start.isoformat(), "end": end.isoformat(), "traffic": traffic, "feedback": feedback,
            "unreadable_lines": bad_t + bad_f}


def measure(window: dict, lexicon) -> dict:
    """Signals for one window (see module doc)."""
    by_id = {t["request_id"]: t for t in window["traffic"]}
    rows, unmatched = [], 0
    for f in window["feedback"]:
        t = by_id.get(f.get("request_id"))
        text = normalize(f.get("corrected_text") or "")
        if t is None or not text:
            unmatched += 1
            continue
        terms, cue = lexicon.annotate(text)
        drug = next((x["term"] for x in terms if x["category"] == "drug"), None)
        rows.append({"utt_id": f["request_id"], "text": text, "hypothesis": t.get("hypothesis", ""), "terms": terms,
                     "negated": cue is not None, "negation_cue": cue, "term": drug})
    out = {"window": {"start": window["start"], "end": window["end"]}, "requests": len(window["traffic"]),
           "feedback": len(window["feedback"]), "matched_feedback": len(rows), "unmatched_feedback": unmatched,
           "unreadable_lines": window["unreadable_lines"]}
    if window["traffic"]:
        tr = window["traffic"]
        out["audio"] = {k: statistics.mean(t[k] for t in tr if t.get(k) is not None)
                        for k in ("duration_s", "level_dbfs", "snr_db") if any(t.get(k) is not None for t in tr)}
        rates = [t.get("sample_rate") for t in tr if t.get("sample_rate")]
        out["audio"]["low_rate_share"] = sum(r < 16000 for r in rates) / len(rates) if rates else 0.0
        out["model_versions"] = sorted({t.get("model_version") or "?" for t in tr})
    if rows:
        s = metrics.score_rows(rows)
        s.pop("per_row")
        vocab = lexicon.vocabulary() | _common_words()
        words = [w for r in rows for w in r["text"].split()]
        oov = [w for w in words if w not in vocab]
        oov_heard: dict[str, list[str]] = {}
        for r in rows:   # what the model wrote where the clinician wrote an unknown word
            for w in r["text"].split():
                if w not in vocab and len(oov_heard.setdefault(w, [])) < 3:
                    h = metrics.heard_as(r["text"], r["hypothesis"], w)
                    if h and h not in oov_heard[w]:
                        oov_heard[w].append(h)
        out.update(wer=s["wer"], ker=s["ker"], ker_by_term=s["ker_by_term"], confusions=s["confusions"],
                   negation_accuracy=s["negation_accuracy"], critical_negation_errors=s["critical_negation_errors"],
                   negated_utterances=s["negated_utterances"], oov_rate=len(oov) / max(len(words), 1),
                   oov_words=sorted(set(oov))[:50], oov_counts=dict(Counter(oov).most_common(100)), oov_heard_as=oov_heard,
                   term_counts={t: sum(1 for r in rows for x in r["terms"] if x["term"] == t) for t in s["ker_by_term"]})
    return out


@lru_cache(maxsize=1)
def _common_words() -> frozenset[str]:
    """The words of the grammar generator's templates (all families), i.e. of the synthetic training data."""
    from clinasr.synth.transcripts import TEMPLATES

    words: set[str] = set()
    for _, template in TEMPLATES.values():
        for piece in (template if isinstance(template, (list, tuple)) else [template]):
            words.update(w for w in normalize(re.sub(r"\{[^}]*\}", " ", str(piece))).split() if w.isalpha())
    return frozenset(words)


def reference_from_report(report_set: dict) -> dict:
    """What drift compares with: the production model's evaluation on its in-domain set at promotion."""
    return {"wer": report_set.get("wer"), "ker": report_set.get("ker"), "ker_by_term": report_set.get("ker_by_term") or {},
            "negation_accuracy": report_set.get("negation_accuracy"), "audio": report_set.get("audio") or {}}


def _sig(name, value, reference, threshold, drifted, detail="") -> dict:
    return {"signal": name, "value": value, "reference": reference, "threshold": threshold, "drifted": bool(drifted),
            "detail": detail}


def decide(m: dict, reference: dict | None, policy: dict) -> dict:
    th = policy["thresholds"]
    ref = reference or {}
    base = {"policy": {"version": policy["version"], "path": policy["path"], "sha256": policy["sha256"]},
            "measured": m, "reference": ref, "decided_at": datetime.now(timezone.utc).isoformat()}
    if m["matched_feedback"] < th.get("min_feedback", 1):
        why = (f"{m['matched_feedback']} matched feedback items in the window (need {th.get('min_feedback', 1)}); "
               f"{m['requests']} requests, {m['unmatched_feedback']} feedback items without a matching request")
        return {**base, "status": "insufficient data", "reason": why, "signals": [], "drifted_terms": []}
    sig = []
    if ref.get("wer") is not None:
        d = m["wer"] - ref["wer"]
        sig.append(_sig("WER increase", d, ref["wer"], th["max_wer_increase"], d > th["max_wer_increase"],
                        f"WER {m['wer']:.3f} on feedback vs {ref['wer']:.3f} at promotion"))
    if "max_wer" in th:
        sig.append(_sig("WER", m["wer"], None, th["max_wer"], m["wer"] > th["max_wer"]))
    if m.get("ker") is not None and ref.get("ker") is not None:
        d = m["ker"] - ref["ker"]
        sig.append(_sig("KER increase", d, ref["ker"], th["max_ker_increase"], d > th["max_ker_increase"]))
    drifted_terms = []
    for t, k in sorted((m.get("ker_by_term") or {}).items()):
        n = m["term_counts"].get(t, 0)
        if n < th.get("min_term_occurrences", 1):
            continue
        r = (ref.get("ker_by_term") or {}).get(t)
        bad = k > th["max_term_ker"] and (r is None or k - r > th.get("max_term_ker_increase", 0.0))
        if bad:
            drifted_terms.append(t)
        heard = [c["heard_as"] for c in m.get("confusions", []) if c["term"] == t][:3]
        sig.append(_sig(f"term '{t}' KER", k, r, th["max_term_ker"], bad,
                        f"{n} occurrences; heard as {', '.join(heard) or '-'}"))
    if m.get("negation_accuracy") is not None and "min_negation_accuracy" in th:
        sig.append(_sig("negation accuracy", m["negation_accuracy"], ref.get("negation_accuracy"),
                        th["min_negation_accuracy"], m["negation_accuracy"] < th["min_negation_accuracy"],
                        f"{m['negated_utterances']} negated statements"))
    if "max_critical_negation_errors" in th:
        sig.append(_sig("critical negation errors", m.get("critical_negation_errors", 0), None,
                        th["max_critical_negation_errors"], m.get("critical_negation_errors", 0) > th["max_critical_negation_errors"]))
    if "max_oov_rate" in th:
        sig.append(_sig("out-of-vocabulary rate", m["oov_rate"], None, th["max_oov_rate"], m["oov_rate"] > th["max_oov_rate"],
                        f"e.g. {', '.join(m.get('oov_words', [])[:8]) or '-'}"))
    a, ra = m.get("audio") or {}, ref.get("audio") or {}
    for key, lim, label in (("level_dbfs", "max_level_shift_db", "level shift (dB)"), ("snr_db", "max_snr_shift_db", "SNR shift (dB)")):
        if lim in th and a.get(key) is not None and ra.get(key) is not None:
            d = a[key] - ra[key]
            sig.append(_sig(label, d, ra[key], th[lim], abs(d) > th[lim]))
    if "max_duration_ratio" in th and a.get("duration_s") and ra.get("duration_s"):
        ratio = a["duration_s"] / ra["duration_s"]
        sig.append(_sig("duration ratio", ratio, ra["duration_s"], th["max_duration_ratio"],
                        max(ratio, 1 / ratio) > th["max_duration_ratio"]))
    if "max_low_rate_share" in th and "low_rate_share" in a:
        sig.append(_sig("share of uploads below 16 kHz", a["low_rate_share"], None, th["max_low_rate_share"],
                        a["low_rate_share"] > th["max_low_rate_share"]))
    drifted = [s for s in sig if s["drifted"]]
    return {**base, "status": "drift" if drifted else "ok", "signals": sig, "drifted_terms": drifted_terms,
            "reason": "; ".join(f"{s['signal']} {_f(s['value'])} (limit {s['threshold']})" for s in drifted)
            or "all signals within their thresholds"}


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def retrain_plan(decision: dict, policy: dict, lexicon) -> dict:
    """What a drift-triggered retraining targets, and why, term by term:

    1. every drifted term, whatever its category (a frequency or route becomes a priority phrase the grammar
       places in its sentences), worst first;
    2. then the drugs missed most often in the window, ranked by misses, even below ``min_term_occurrences``
       (a drug heard twice and missed twice is news) — at least ``min_missed_for_retraining`` misses;
    3. at most ``max_retrain_terms``. When nothing specific drifted, the policy's explicit
       ``default_retrain_terms`` are used and the plan says so: never an implicit "whole lexicon".

    Returns {"terms", "default_used", "reason", "per_term": [{term, category, occurrences, misses, ker, heard_as,
    drifted, retrain, why}], "proposed_additions"}."""
    m = decision["measured"]
    cats = lexicon.categories()
    limit = int(policy.get("max_retrain_terms", 20))
    min_missed = int(policy.get("min_missed_for_retraining", 2))
    counts, kers = m.get("term_counts") or {}, m.get("ker_by_term") or {}
    heard: dict[str, list[str]] = {}
    for c in m.get("confusions") or []:
        heard.setdefault(c["term"], []).append(f"{c['heard_as']} x{c['count']}")
    rows = []
    for t in sorted(set(counts) | set(kers)):
        n = counts.get(t, 0)
        misses = round((kers.get(t) or 0.0) * n)
        rows.append({"term": t, "category": cats.get(t, "?"), "occurrences": n, "misses": misses, "ker": kers.get(t),
                     "heard_as": heard.get(t, [])[:3], "drifted": t in decision.get("drifted_terms", []),
                     "retrain": False, "why": ""})
    chosen: list[str] = []

    def take(row, why):
        if len(chosen) >= limit:
            row["why"] = f"not taken: the list is full (max_retrain_terms {limit})"
            return
        chosen.append(row["term"])
        row.update(retrain=True, why=why)

    for r in sorted((r for r in rows if r["drifted"]), key=lambda r: (-(r["ker"] or 0), -r["misses"], r["term"])):
        take(r, f"drifted: KER {r['ker']:.2f} over {r['occurrences']} occurrences")
    for r in sorted((r for r in rows if not r["drifted"] and r["category"] == "drug" and r["misses"] >= min_missed),
                    key=lambda r: (-r["misses"], r["term"])):
        take(r, f"missed {r['misses']} of {r['occurrences']} times (below the per-term floor of "
                f"{policy['thresholds'].get('min_term_occurrences', 1)} occurrences for a drift signal)")
    for r in rows:
        if not r["why"]:
            r["why"] = ("recognised" if not r["misses"] else
                        f"missed {r['misses']} of {r['occurrences']}: below min_missed_for_retraining {min_missed}"
                        if r["category"] == "drug" else f"missed {r['misses']} of {r['occurrences']}: not drifted")
    default_used = not chosen
    if default_used:
        chosen = [normalize(t) for t in policy.get("default_retrain_terms") or []][:limit]
        if not chosen:
            raise DriftError(f"{policy['path']}: nothing specific drifted and the policy names no default_retrain_terms; "
                             "add an explicit list (never the whole lexicon)")
        reason = (f"nothing specific drifted ({decision['reason']}): the policy's default_retrain_terms "
                  f"({', '.join(chosen)})")
    else:
        reason = f"{len(chosen)} terms from the feedback: " + ", ".join(chosen)
    return {"terms": chosen, "default_used": default_used, "reason": reason, "per_term": rows,
            "proposed_additions": propose_additions(m, policy, lexicon)}


def propose_additions(m: dict, policy: dict, lexicon) -> list[dict]:
    """Words of corrected transcripts the lexicon does not know, that are no everyday English either (not in
    the general-English texts the project ships), heard at least ``min_proposal_occurrences`` times: likely new
    drug names. Only proposals — a reviewer accepts them (the drift DAG's approve_lexicon) before they enter
    the lexicon."""
    words = m.get("oov_counts") or {}
    if not words:
        return []
    everyday = _everyday_words()
    floor = int(policy.get("min_proposal_occurrences", 2))
    out = [{"term": w, "category": "drug", "occurrences": n, "heard_as": (m.get("oov_heard_as") or {}).get(w, [])[:3]}
           for w, n in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))
           if n >= floor and len(w) >= 5 and w.isalpha() and w not in everyday]
    return out[: int(policy.get("max_proposals", 10))]


@lru_cache(maxsize=1)
def _everyday_words() -> frozenset[str]:
    from clinasr import evalsets
    from clinasr.synth import general

    words = {w for s in general.load() for w in s.split()}
    words |= {w for s in evalsets.eval_sentences("include/clinasr/data/eval_general_en.txt") for w in s.split()}
    dictionary = Path("/usr/share/dict/words")   # Debian's wamerican (scripts/setup.sh installs it)
    if dictionary.exists():
        words |= {w.lower() for w in dictionary.read_text(errors="replace").split() if w.isalpha()}
    return frozenset(words)


def retrain_terms(decision: dict, policy: dict, lexicon) -> list[str]:
    """The priority terms of :func:`retrain_plan`."""
    return retrain_plan(decision, policy, lexicon)["terms"]


def render_html(decision: dict, history: list[dict], title: str) -> str:
    import base64
    import html
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = html.escape
    imgs = []
    pts = [h for h in history if h.get("wer") is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(6, 3))
        xs = [h["end"][:10] for h in pts]
        ax.plot(xs, [h["wer"] for h in pts], marker="o", label="WER")
        ax.plot(xs, [h["ker"] if h.get("ker") is not None else float("nan") for h in pts], marker="s", label="KER")
        ax.set_title("WER / KER on feedback over time")
        ax.tick_params(axis="x", rotation=45)
        ax.legend()
        imgs.append(fig)
    conf = decision["measured"].get("confusions") or []
    if conf:
        fig, ax = plt.subplots(figsize=(6, 0.35 * min(len(conf), 12) + 1))
        top = conf[:12][::-1]
        ax.barh([f"{c['term']} → {c['heard_as']}" for c in top], [c["count"] for c in top])
        ax.set_title("top term confusions (feedback)")
        imgs.append(fig)
    pngs = []
    for fig in imgs:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        pngs.append(base64.b64encode(buf.getvalue()).decode())
    rows = "".join(f"<tr class={'bad' if s['drifted'] else 'ok'}><td>{e(s['signal'])}</td><td>{e(_f(s['value']))}</td>"
                   f"<td>{e(_f(s['reference']))}</td><td>{e(str(s['threshold']))}</td><td>{'DRIFT' if s['drifted'] else 'ok'}</td>"
                   f"<td>{e(s['detail'])}</td></tr>" for s in decision["signals"])
    m = decision["measured"]
    plan = decision.get("retraining") or {}
    plan_rows = "".join(
        f"<tr class={'bad' if r['drifted'] else 'ok'}><td>{e(r['term'])}</td><td>{e(r['category'])}</td><td>{r['occurrences']}</td>"
        f"<td>{r['misses']}</td><td>{e(', '.join(r['heard_as']) or '-')}</td><td>{'yes' if r['retrain'] else 'no'}</td>"
        f"<td>{e(r['why'])}</td></tr>" for r in plan.get("per_term", []))
    plan_html = (f"<h2>Retraining set</h2><p>{e(plan.get('reason', ''))}</p><table id=retraining><tr><th>term</th>"
                 f"<th>category</th><th>occurrences</th><th>misses</th><th>heard as</th><th>retrained</th><th>why</th></tr>"
                 f"{plan_rows}</table>") if plan else ""
    props = plan.get("proposed_additions") or []
    props_html = ("<h2>Proposed lexicon additions</h2><p>Words clinicians wrote that the lexicon does not know and that "
                  "are not everyday English; they enter the lexicon only when a reviewer approves them "
                  "(<i>approve_lexicon</i> under Required actions).</p><table id=proposals><tr><th>word</th><th>seen</th>"
                  "<th>heard as</th></tr>" + "".join(f"<tr><td>{e(p['term'])}</td><td>{p['occurrences']}</td>"
                                                     f"<td>{e(', '.join(p['heard_as']) or '-')}</td></tr>" for p in props)
                  + "</table>") if props else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
.bad td:nth-child(5){{color:#b00;font-weight:bold}}</style></head><body><h1>{e(title)}</h1>
<p><b>Status: {e(decision['status'].upper())}</b> — {e(decision['reason'])}</p>
<p>Window {e(m['window']['start'])} → {e(m['window']['end'])}: {m['requests']} requests, {m['feedback']} feedback items
({m['matched_feedback']} matched, {m['unmatched_feedback']} without a request); policy {e(decision['policy']['path'])}
v{e(str(decision['policy']['version']))}.</p>
<table><tr><th>signal</th><th>value</th><th>at promotion</th><th>threshold</th><th>result</th><th>detail</th></tr>{rows}</table>
{plan_html}{props_html}
{''.join(f'<figure><img src="data:image/png;base64,{p}"></figure>' for p in pngs)}</body></html>"""
