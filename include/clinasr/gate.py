"""The acceptance gate: declarative criteria (configs/gate/*.yaml) applied to evaluation reports.

Pure Python (both runtimes). :func:`decide` returns every criterion with its value, threshold, the set it
was judged on and pass/fail; :func:`render_html` writes the human-readable report with every set side by
side for candidate, baseline and references, plots (per-slice WER bars, KER by category) and the term
confusion and phantom-term tables. Missing data never passes: an absent metric or set fails its criterion.

Gate version 3 decides on sets no training run has seen (configs/evalsets.yaml): clinical accuracy on the
clinical held-out set (``in_domain_set``), and on the general-English set (``general_set``) that the
candidate did not forget (``max_general_wer_increase`` over the baseline) and invents no drugs, doses or
routes (``max_phantom_terms_per_100``). The dataset's validation split is scored and shown, never decided on.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone
from pathlib import Path


from clinasr.settings import load_versioned_yaml


class GateError(ValueError):
    pass


KNOWN = {"min_relative_wer_reduction", "min_term_accuracy", "min_negation_accuracy", "max_critical_negation_errors",
         "max_slice_wer_regression", "min_slice_words", "max_latency_p95_s", "min_utterances",
         "min_wer_margin_vs_references", "max_general_wer_increase", "max_phantom_terms_per_100"}


def load_gate(path: str | Path = "configs/gate/default.yaml") -> dict:
    cfg = load_versioned_yaml(path, ("criteria",), "gate config", GateError)
    unknown = set(cfg["criteria"]) - KNOWN
    if unknown:
        raise GateError(f"{Path(cfg['path']).name}: unknown criteria {sorted(unknown)}; known: {sorted(KNOWN)}")
    cfg.setdefault("in_domain_set", "validation")
    cfg.setdefault("general_set", None)
    cfg.setdefault("required_sets", [])
    if {"max_general_wer_increase", "max_phantom_terms_per_100"} & set(cfg["criteria"]) and not cfg["general_set"]:
        raise GateError(f"{Path(cfg['path']).name}: the general-English criteria need `general_set`")
    refs = cfg.setdefault("reference_models", [])
    if not isinstance(refs, list) or not all(isinstance(r, str) and r.strip() for r in refs):
        raise GateError(f"{Path(cfg['path']).name}: reference_models must be a list of model specs "
                        f"(e.g. whisper:tiny.en), got {refs!r}")
    n = cfg.setdefault("reference_max_utterances", None)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise GateError(f"{Path(cfg['path']).name}: reference_max_utterances must be a positive number of rows or "
                        f"null (every row), got {n!r}")
    if n is not None and "min_wer_margin_vs_references" in cfg["criteria"]:
        # the margin compares the candidate's WER on every row with a reference's: both must be on the same rows
        raise GateError(f"{Path(cfg['path']).name}: min_wer_margin_vs_references compares the candidate with the "
                        f"references on the same rows, but reference_max_utterances: {n} scores references on a "
                        "sample: set reference_max_utterances: null to decide on references")
    return cfg


def score_references(specs: list[str], evaluate_one, unavailable: type[Exception], warn=print) -> list[dict]:
    """Evaluation reports of the reference models, ``evaluate_one(index, spec)`` each. One that cannot be
    loaded or run (``unavailable``, e.g. no hub for a pretrained name) becomes a row with its error: a missing
    reference never fails an evaluation."""
    out = []
    for i, spec in enumerate(specs):
        try:
            out.append(evaluate_one(i, spec))
        except unavailable as e:
            warn(f"reference model {spec} not evaluated: {e}")
            out.append({"model": spec, "label": spec, "reference": True, "error": str(e)[-500:], "sets": {}})
    return out


def leaderboard(candidate: dict, baseline: dict | None, references: list[dict] | None, set_name: str,
                baseline_name: str = "baseline") -> list[dict]:
    """One row per model on ``set_name``, best WER first: candidate, baseline and reference models
    (a reference that could not be evaluated is listed last with its error)."""
    rows = []
    for role, rep in [("candidate", candidate), (baseline_name, baseline)] + [("reference", r) for r in references or []]:
        if not rep:
            continue
        m = (rep.get("sets") or {}).get(set_name)
        name = rep.get("label") or str(rep.get("model"))
        if rep.get("error") or not m:
            rows.append({"model": name, "role": role, "error": rep.get("error") or f"no {set_name!r} set"})
            continue
        rows.append({"model": name, "role": role, "wer": m["wer"], "wer_ci": (m.get("ci") or {}).get("wer"),
                     "ker": m.get("ker"), "ker_by_category": m.get("ker_by_category") or {},
                     "negation_accuracy": m.get("negation_accuracy"),
                     "critical_negation_errors": m.get("critical_negation_errors"),
                     "phantoms_per_100": (m.get("phantom_terms") or {}).get("per_100_utterances"),
                     "phantom_guard": m.get("phantom_guard"),
                     "rtfx": (m.get("latency") or {}).get("rtfx"), "p95_s": (m.get("latency") or {}).get("p95_s"),
                     "device": (m.get("latency") or {}).get("device"), "scored": m["rows"]["scored"],
                     "sample": f"{m['sample']['scored']}/{m['sample']['of']}" if m.get("sample") else None})
    return sorted(rows, key=lambda r: (r.get("wer") is None, r.get("wer") or 0.0))


def role_text(row: dict) -> str:
    """'reference (sample 12/45)' for a model scored on a sample of the set's rows (its CI is the sample's)."""
    return row["role"] + (f" (sample {row['sample']})" if row.get("sample") else "")


def phantom_cell(row: dict) -> str:
    """Phantom terms per 100 utterances, with what the phantom guard vetoed when the model decodes with an LM."""
    g = row.get("phantom_guard")
    return _fmt(row.get("phantoms_per_100")) + (f" (guard vetoed {g['vetoed']} of {g['chunks']} chunks)" if g else "")


def leaderboard_text(rows: list[dict]) -> str:
    """The leaderboard as a Markdown table (demo summary, README)."""
    cats = sorted({k for r in rows for k in r.get("ker_by_category") or {}})
    head = ["model", "role", "WER [95% CI]", "KER"] + [f"KER {c}" for c in cats] + ["negation acc.", "phantoms/100", "RTFx"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | {r['role']} | not evaluated: {r['error'][:80]} |" + " |" * (len(head) - 3))
            continue
        ci = " [" + ", ".join(f"{v:.2f}" for v in r["wer_ci"]) + "]" if r.get("wer_ci") else ""
        out.append("| " + " | ".join([r["model"], role_text(r), f"{r['wer']:.3f}{ci}", _fmt(r["ker"])]
                                     + [_fmt(r["ker_by_category"].get(c)) for c in cats]
                                     + [_fmt(r["negation_accuracy"]), phantom_cell(r),
                                        f"{r['rtfx']:.1f} ({r['device']})"]) + " |")
    return "\n".join(out)


def leaderboards(candidate: dict, baseline: dict | None, references: list[dict] | None,
                 baseline_name: str = "baseline") -> dict[str, list[dict]]:
    """One leaderboard per set the candidate was scored on (held-out sets first, the validation split last)."""
    names = sorted((candidate.get("sets") or {}), key=lambda n: (n == "validation", n))
    return {n: leaderboard(candidate, baseline, references, n, baseline_name) for n in names}


def leaderboards_text(boards: dict[str, list[dict]]) -> str:
    return "\n\n".join(f"{name}:\n{leaderboard_text(rows)}" for name, rows in boards.items())


def _crit(name, value, op, threshold, detail="", on=None) -> dict:
    if value is None:
        passed, detail = False, detail or "no data"
    else:
        passed = value >= threshold if op == ">=" else value <= threshold
    return {"criterion": name, "value": value, "op": op, "threshold": threshold, "passed": bool(passed), "detail": detail,
            "set": on}


def decide(candidate: dict, baseline: dict | None, gate: dict, baseline_name: str = "production",
           references: list[dict] | None = None, missing_sets: dict[str, str] | None = None) -> dict:
    """candidate/baseline: evaluation reports ({"sets": {name: metrics}}); baseline None = no baseline model.
    references: evaluation reports of off-the-shelf models; they are judged only when the gate sets
    ``min_wer_margin_vs_references`` (the candidate's WER must be that far below the best reference)."""
    c = gate["criteria"]
    name = gate["in_domain_set"]
    cand = (candidate.get("sets") or {}).get(name)
    base = ((baseline or {}).get("sets") or {}).get(name) if baseline else None
    out = []
    n = cand["rows"]["scored"] if cand else None
    if "min_utterances" in c:
        out.append(_crit("utterances scored", n, ">=", c["min_utterances"],
                         "" if cand else f"the candidate report has no {name!r} set", on=name))
    if cand is None:
        cand = {}
    if baseline is not None and base is None:
        out.append(_crit("baseline evaluated", None, ">=", 1, f"the {baseline_name} report has no {name!r} set", on=name))
    base_wer = base["wer"] if base else 1.0
    if "min_relative_wer_reduction" in c:
        wer = cand.get("wer")
        rel = None if wer is None else (base_wer - wer) / base_wer if base_wer > 0 else (0.0 if wer == 0 else -1.0)
        vs = f"{baseline_name} WER {base_wer:.3f}" if base else "no baseline model: vs transcribing nothing (WER 1.0)"
        out.append(_crit("relative WER reduction", rel, ">=", c["min_relative_wer_reduction"],
                         f"candidate WER {wer:.3f} vs {vs}" if wer is not None else "", on=name))
    if "min_term_accuracy" in c:
        ker = cand.get("ker")
        out.append(_crit("term accuracy (1 - KER)", None if ker is None else 1 - ker, ">=", c["min_term_accuracy"],
                         f"{cand.get('terms_scored', 0)} terms; by category " +
                         ", ".join(f"{k} {1 - v:.2f}" for k, v in (cand.get("ker_by_category") or {}).items())
                         if ker is not None else "no priority terms in the set", on=name))
    if "min_negation_accuracy" in c:
        out.append(_crit("negation accuracy", cand.get("negation_accuracy"), ">=", c["min_negation_accuracy"],
                         f"{cand.get('negated_utterances', 0)} negated utterances" if cand.get("negation_accuracy") is not None
                         else "no negated utterances in the set", on=name))
    if "max_critical_negation_errors" in c:
        out.append(_crit("critical negation errors", cand.get("critical_negation_errors"), "<=",
                         c["max_critical_negation_errors"], "negation lost while the drug name survived", on=name))
    if "max_slice_wer_regression" in c:
        if base is None:
            out.append({"criterion": "worst slice WER regression", "value": None, "op": "<=",
                        "threshold": c["max_slice_wer_regression"], "passed": True,
                        "detail": "not applicable: no baseline model to compare slices with", "set": name})
        else:
            worst, where = None, ""
            for key, vals in (cand.get("slices") or {}).items():
                for v, m in vals.items():
                    b = base.get("slices", {}).get(key, {}).get(v)
                    if not b or min(m["words"], b["words"]) < c.get("min_slice_words", 0):
                        continue
                    d = m["wer"] - b["wer"]
                    if worst is None or d > worst:
                        worst, where = d, f"{key}={v}: {b['wer']:.3f} -> {m['wer']:.3f}"
            out.append(_crit("worst slice WER regression", worst, "<=", c["max_slice_wer_regression"],
                             where or "no slice with enough words in both reports", on=name))
    if "max_latency_p95_s" in c:
        lat = (cand.get("latency") or {}).get("p95_s")
        out.append(_crit("latency p95 (s)", lat, "<=", c["max_latency_p95_s"],
                         f"on {(cand.get('latency') or {}).get('device', '?')}, batch of one", on=name))
    board = leaderboard(candidate, baseline, references, name, baseline_name)
    if "min_wer_margin_vs_references" in c:
        best = next((r for r in board if r["role"] == "reference" and "wer" in r), None)   # the board is sorted by WER
        wer = cand.get("wer")
        if best is not None and best.get("sample"):   # load_gate refuses this; a hand-made gate fails closed
            out.append(_crit("WER margin vs best reference", None, ">=", c["min_wer_margin_vs_references"],
                             f"{best['model']} was scored on a sample ({best['sample']} rows), the candidate on every "
                             "row: set reference_max_utterances: null", on=name))
        elif best is None or wer is None:
            out.append(_crit("WER margin vs best reference", None, ">=", c["min_wer_margin_vs_references"],
                             "no reference model was evaluated" if best is None else "", on=name))
        else:
            out.append(_crit("WER margin vs best reference", best["wer"] - wer, ">=", c["min_wer_margin_vs_references"],
                             f"candidate WER {wer:.3f} vs {best['model']} {best['wer']:.3f}", on=name))
    for req in gate.get("required_sets") or []:
        if req not in (candidate.get("sets") or {}):
            out.insert(0, _crit(f"evaluation set {req} scored", None, ">=", 1,
                                (missing_sets or {}).get(req) or f"the candidate report has no {req!r} set: build the "
                                "evaluation sets (clinasr_evaluation_sets DAG or `clinasr evalsets build`) and "
                                "evaluate again", on=req))
    out += _general_criteria(candidate, baseline, gate, baseline_name)
    passed = all(x["passed"] for x in out) and bool(out)
    return {"passed": passed, "decision": "promote" if passed else "reject", "criteria": out,
            "gate": {"version": gate["version"], "path": gate["path"], "sha256": gate["sha256"]},
            "in_domain_set": name, "general_set": gate.get("general_set"), "baseline": baseline_name if baseline else None,
            "leaderboard": board, "leaderboards": leaderboards(candidate, baseline, references, baseline_name),
            "decided_at": datetime.now(timezone.utc).isoformat()}


def _general_criteria(candidate: dict, baseline: dict | None, gate: dict, baseline_name: str) -> list[dict]:
    """What fine-tuning must not break, on the general-English set: WER may rise at most
    ``max_general_wer_increase`` (absolute) over the baseline; at most ``max_phantom_terms_per_100`` lexicon
    terms the speaker never said."""
    c, g = gate["criteria"], gate.get("general_set")
    out = []
    cand = (candidate.get("sets") or {}).get(g)
    if "max_general_wer_increase" in c:
        base = ((baseline or {}).get("sets") or {}).get(g)
        if cand is None or base is None:
            why = (f"the candidate report has no {g!r} set" if cand is None else
                   f"no baseline to compare with (set baseline_model)" if baseline is None else
                   f"the {baseline_name} report has no {g!r} set")
            out.append(_crit("general-English WER increase", None, "<=", c["max_general_wer_increase"], why, on=g))
        else:
            out.append(_crit("general-English WER increase", cand["wer"] - base["wer"], "<=", c["max_general_wer_increase"],
                             f"candidate WER {cand['wer']:.3f} vs {baseline_name} {base['wer']:.3f}", on=g))
    if "max_phantom_terms_per_100" in c:
        ph = (cand or {}).get("phantom_terms")
        if not ph:
            out.append(_crit("phantom terms per 100 utterances", None, "<=", c["max_phantom_terms_per_100"],
                             f"the candidate report has no {g!r} set" if cand is None else "no phantom-term count", on=g))
        else:
            top = ", ".join(f"{t['term']} ({t['category']}) x{t['count']}" for t in ph["top"][:5])
            out.append(_crit("phantom terms per 100 utterances", ph["per_100_utterances"], "<=",
                             c["max_phantom_terms_per_100"],
                             f"{ph['count']} invented terms in {cand['rows']['scored']} utterances" + (f": {top}" if top else ""),
                             on=g))
    return out


def summary(decision: dict) -> str:
    failed = [x for x in decision["criteria"] if not x["passed"]]
    if not failed:
        return "gate passed: " + "; ".join(f"{x['criterion']} {_fmt(x['value'])}" for x in decision["criteria"])
    # a required set that could not be scored comes first, with why (missing, stale: which config it was built from)
    unscored = [x for x in failed if x["criterion"].startswith("evaluation set ") and x["value"] is None]
    return "gate failed: " + "; ".join(
        [f"{x['criterion'].replace(' scored', '')} not scored: {x['detail']}" for x in unscored]
        + [f"{x['criterion']}{' on ' + x['set'] if x.get('set') else ''} {_fmt(x['value'])} (needs {x['op']} {x['threshold']})"
           for x in failed if x not in unscored])


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plots(candidate: dict, baseline: dict | None, set_name: str) -> dict[str, str]:
    """Per-slice WER bars (candidate vs baseline) and KER by category, as base64 PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cand = candidate["sets"].get(set_name) or {}
    base = ((baseline or {}).get("sets") or {}).get(set_name) or {}
    out = {}
    labels, cv, bv = [], [], []
    for key, vals in (cand.get("slices") or {}).items():
        for v, m in vals.items():
            labels.append(f"{key}={v}")
            cv.append(m["wer"])
            bv.append(base.get("slices", {}).get(key, {}).get(v, {}).get("wer", float("nan")))
    if labels:
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels)), 3.5))
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], cv, 0.4, label="candidate")
        if base:
            ax.bar([x + 0.2 for x in xs], bv, 0.4, label="baseline")
        ax.set_xticks(list(xs), labels, rotation=45, ha="right")
        ax.set_ylabel("WER")
        ax.set_title(f"WER per slice ({set_name})")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        out["slices"] = _png(fig)
    cats = sorted(set(cand.get("ker_by_category") or {}) | set(base.get("ker_by_category") or {}))
    if cats:
        fig, ax = plt.subplots(figsize=(5, 3))
        xs = range(len(cats))
        ax.bar([x - 0.2 for x in xs], [1 - cand.get("ker_by_category", {}).get(k, float("nan")) for k in cats], 0.4,
               label="candidate")
        if base:
            ax.bar([x + 0.2 for x in xs], [1 - base.get("ker_by_category", {}).get(k, float("nan")) for k in cats], 0.4,
                   label="baseline")
        ax.set_xticks(list(xs), cats)
        ax.set_ylim(0, 1)
        ax.set_ylabel("term accuracy")
        ax.set_title("clinical-term accuracy by category")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        out["terms"] = _png(fig)
    return out


def _board_html(set_name: str, board: list[dict], decided: bool) -> str:
    e = html.escape
    cats = sorted({k for r in board for k in r.get("ker_by_category") or {}})
    rows = "".join(
        f"<tr class=role-{e(r['role'].replace(' ', '-'))}><td>{e(r['model'])}</td><td>{e(role_text(r))}</td>"
        + (f"<td colspan={5 + len(cats)}>not evaluated: {e(r['error'])}</td></tr>" if "error" in r else
           f"<td>{r['wer']:.3f} {e(str([round(v, 3) for v in r.get('wer_ci') or []]))}</td><td>{_fmt(r['ker'])}</td>"
           + "".join(f"<td>{_fmt(r['ker_by_category'].get(k))}</td>" for k in cats)
           + f"<td>{_fmt(r['negation_accuracy'])}</td><td>{e(phantom_cell(r))}</td>"
             f"<td>{r['rtfx']:.1f} ({e(str(r['device']))})</td></tr>")
        for r in board)
    return (f"<h3>{e(set_name)}{' (the in-domain set of the decision)' if decided else ''}</h3>"
            f"<table class=leaderboard id=leaderboard-{e(set_name)}><tr><th>model</th><th>role</th><th>WER [95% CI]</th>"
            f"<th>KER</th>" + "".join(f"<th>KER {e(k)}</th>" for k in cats)
            + f"<th>negation acc.</th><th>phantoms / 100 utt.</th><th>RTFx</th></tr>{rows}</table>")


def render_html(decision: dict, candidate: dict, baseline: dict | None, title: str) -> str:
    e = html.escape
    name = decision["in_domain_set"]
    rows = "".join(
        f"<tr class={'pass' if x['passed'] else 'fail'}><td>{e(x['criterion'])}</td><td>{e(_fmt(x['value']))}</td>"
        f"<td>{e(x['op'])} {e(str(x['threshold']))}</td><td>{'PASS' if x['passed'] else 'FAIL'}</td><td>{e(x['detail'])}</td>"
        f"<td>{e(str(x.get('set') or ''))}</td></tr>"
        for x in decision["criteria"])
    sets = "".join(
        f"<tr><td>{e(n)}</td><td>{m['rows']['scored']}</td><td>{m['rows']['skipped']} {e(str(m['rows']['skipped_by_reason'] or ''))}</td>"
        f"<td>{m['wer']:.3f} {e(str([round(v, 3) for v in (m.get('ci') or {}).get('wer') or []]))}</td>"
        f"<td>{_fmt(m.get('ker'))}</td><td>{_fmt(m.get('negation_accuracy'))}</td><td>{m.get('critical_negation_errors')}</td>"
        f"<td>{m['latency']['p50_s'] * 1000:.0f} / {m['latency']['p95_s'] * 1000:.0f}</td><td>{m['latency']['rtfx']:.1f}</td></tr>"
        for who, rep in (("candidate", candidate), ("baseline", baseline)) if rep
        for n, m in [(f"{who}: {k}", v) for k, v in rep["sets"].items()])
    conf = (candidate["sets"].get(name) or {}).get("confusions") or []
    conf_rows = "".join(f"<tr><td>{e(c['term'])}</td><td>{e(c['heard_as'])}</td><td>{c['count']}</td></tr>" for c in conf[:30])
    imgs = "".join(f'<figure><img alt="{k}" src="data:image/png;base64,{v}"></figure>'
                   for k, v in plots(candidate, baseline, name).items())
    boards = decision.get("leaderboards") or ({name: decision["leaderboard"]} if decision.get("leaderboard") else {})
    board_html = "".join(_board_html(set_name, board, set_name == name) for set_name, board in boards.items())
    if board_html:
        board_html = ("<h2>Every set, side by side</h2><p>Held-out sets use voices, a TTS engine and sentence shapes no "
                      "training set used; the validation split shares the training voices and shapes and is shown, "
                      "never decided on. Reference models are off-the-shelf systems scored with the same normaliser "
                      "and metrics; they enter the decision only through <code>min_wer_margin_vs_references</code>. "
                      "A role marked <i>sample n/N</i> was scored on a fixed seeded sample of n of the set's N rows "
                      "(the gate config's <code>reference_max_utterances</code>); its WER and CI are that sample's.</p>"
                      + board_html)
    g = decision.get("general_set")
    ph = ((candidate.get("sets") or {}).get(g) or {}).get("phantom_terms") if g else None
    ph_rows = "".join(f"<tr><td>{e(t['term'])}</td><td>{e(t['category'])}</td><td>{t['count']}</td></tr>"
                      for t in (ph or {}).get("top", []))
    phantom_html = (f"<h2>Phantom terms (candidate, {e(g)})</h2><p>Lexicon terms in the transcript that nobody said: "
                    f"{ph['count']} in total, {ph['per_100_utterances']:.1f} per 100 utterances.</p><table id=phantoms>"
                    f"<tr><th>term</th><th>category</th><th>count</th></tr>{ph_rows or '<tr><td colspan=3>none</td></tr>'}"
                    "</table>") if ph else ""
    verdict = "PROMOTE" if decision["passed"] else "REJECT"
    override = decision.get("override")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.pass td:nth-child(4){{color:#060}}.fail td:nth-child(4){{color:#b00;font-weight:bold}}
.verdict{{font-size:1.4em;font-weight:bold}}figure{{display:inline-block;margin:0 1em}}</style></head><body>
<h1>{e(title)}</h1>
<p class="verdict">Decision: {verdict}{' (override: ' + e(override['reason']) + ' by ' + e(override['by']) + ')' if override else ''}</p>
<p>Candidate <code>{e(str(candidate.get('model')))}</code> vs baseline <code>{e(str((baseline or {}).get('model', 'none')))}</code>
on set <b>{e(name)}</b>; gate <code>{e(decision['gate']['path'])}</code> version {e(str(decision['gate']['version']))}
(sha256 {e(decision['gate']['sha256'][:12])}), decided {e(decision['decided_at'])}.</p>
<h2>Criteria</h2><table><tr><th>criterion</th><th>value</th><th>threshold</th><th>result</th><th>detail</th><th>set</th></tr>{rows}</table>
{board_html}
{phantom_html}
<h2>Evaluation sets</h2><table><tr><th>set</th><th>scored</th><th>skipped</th><th>WER [95% CI]</th><th>KER</th>
<th>negation acc.</th><th>critical neg.</th><th>latency p50/p95 ms</th><th>RTFx</th></tr>{sets}</table>
<h2>Plots</h2>{imgs or '<p>no slices</p>'}
<h2>Term confusions (candidate, {e(name)})</h2><table><tr><th>term</th><th>heard as</th><th>count</th></tr>{conf_rows or '<tr><td colspan=3>none</td></tr>'}</table>
</body></html>"""
