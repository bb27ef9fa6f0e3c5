"""Choose a fine-tune's merge weight with the base (WiSE-FT) and its decoding on validation sets, then report the
choice on the test sets it was not chosen on.

    .venv/ml/bin/python bench/choose_merge.py RESULTS.json --dev-clinical clinical_dev --dev-general general_dev \\
        --test-clinical clinical_heldout --test-general general_heldout general_check --out DIR

RESULTS.json is bench/phantom_guard_eval.py's, over fine-tunes named SEED (unmerged) and SEED_mNN (merged at NN/100,
bench/merge_nemo.py), each scored greedily, with its LM and with its LM under the phantom guard, against the base
decoded the same way. Fine-tunes trained on different training sets are named ARM.SEED[_mNN] (e.g. kokoro80.s0): the
candidates are then (training set, weight, decoding), chosen among by the same rule. ``--criterion issue20`` (the CPU recipe's): a (weight, decoding) meets the bounds on a seed when,
on the validation sets, term accuracy on unseen espeak-ng voices is >= 0.70, everyday-English WER rises by at most
0.02 over the base and there is at most 1 phantom term per 100 everyday utterances. ``--criterion issue21`` (the
GPU recipe's flywheel bound): the relative KER reduction against the base is >= 75% on the unseen espeak-ng voices
and on the held-out engine (Piper) each, with the same WER and phantom bounds. The candidates decode as the product
does: greedily, or with the LM under the phantom guard (``--decodings``). The choice: the (weight, decoding) that
meets them on the most seeds, then the highest mean term accuracy (issue20) or the highest mean of the smaller of
the two KER reductions (issue21). Several RESULTS.json (the validation sets scored for every candidate, the test
sets for the chosen one: ``bench/phantom_guard_eval.py --only-sets``) are read as one; a candidate not scored on the
test sets is reported as such, and a model not scored on every validation set is no candidate (the table names it). Writes DIR/choice.json and DIR/choice.md (every candidate on both
validation and test sets, seed by seed).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

# what the product decodes with: greedy, or the model's LM under the phantom guard (the Transcriber puts it on
# whenever a model carries an LM); the LM without the guard is measured but not a candidate
DECODINGS = ("greedy", "lm+guard")
BOUNDS = {"min_term_accuracy": 0.70, "max_general_wer_increase": 0.02, "max_phantoms_per_100": 1.0}
BOUNDS_21 = {"min_ker_reduction_espeak": 0.75, "min_ker_reduction_piper": 0.75, "max_general_wer_increase": 0.02,
             "max_phantoms_per_100": 1.0}
CRITERIA = {"issue20": BOUNDS, "issue21": BOUNDS_21}


def _name(model: str) -> tuple[str, str, float]:
    """(arm, seed, weight) of a model named [ARM.]SEED[_mNN]."""
    arm, _, rest = model.rpartition(".")
    m = re.fullmatch(r"(.+)_m(\d+)", rest)
    return (arm, m.group(1), int(m.group(2)) / 100) if m else (arm, rest, 1.0)


def figures(run: dict, clinical: list[str], general: list[str], criterion: str = "issue20") -> dict:
    """Term accuracy and relative KER reduction per engine on the clinical sets (rows of every clinical set pooled
    by their counts is not possible from the summaries: the mean over sets), the largest WER rise and phantom rate
    over the general sets, and whether they meet ``criterion``'s bounds."""
    acc = [run[s]["term_accuracy_by_engine"].get("espeak") for s in clinical]
    rises = [run[s]["vs_base"]["wer_change"]["estimate"] for s in general]
    ph = [run[s]["phantoms_per_100"] for s in general]
    f = {"term_accuracy_espeak": statistics.fmean(a for a in acc if a is not None),
         "term_accuracy_piper": _mean([run[s]["term_accuracy_by_engine"].get("piper") for s in clinical]),
         **{f"ker_reduction_{e}": _mean([((run[s].get("by_engine") or {}).get(e, {}).get("ker_reduction") or {})
                                         .get("estimate") for s in clinical]) for e in ("espeak", "piper")},
         "general_wer_change": max(rises), "phantoms_per_100": max(ph)}
    b = CRITERIA[criterion]
    common = (f["general_wer_change"] <= b["max_general_wer_increase"]
              and f["phantoms_per_100"] <= b["max_phantoms_per_100"])
    if criterion == "issue20":
        f["meets"] = common and f["term_accuracy_espeak"] >= b["min_term_accuracy"]
    else:   # a set without the engine cannot show the bound met
        f["meets"] = common and all(f[f"ker_reduction_{e}"] is not None and f[f"ker_reduction_{e}"] >= b[f"min_ker_reduction_{e}"]
                                    for e in ("espeak", "piper"))
    f["rank"] = (f["term_accuracy_espeak"] if criterion == "issue20"
                 else min(-1.0 if f[f"ker_reduction_{e}"] is None else f[f"ker_reduction_{e}"] for e in ("espeak", "piper")))
    return f


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def choose(res: dict, dev: tuple[list[str], list[str]], test: tuple[list[str], list[str]],
           decodings: tuple[str, ...] = DECODINGS, criterion: str = "issue20") -> dict:
    cands: dict[tuple[str, float, str], dict] = {}
    unscored: dict[str, list[str]] = {}   # "MODEL DECODING" left out: a validation set it was not scored on
    dev_sets, test_sets = sum(map(list, dev), []), sum(map(list, test), [])
    for key, run in res["runs"].items():
        model, dec = key.split(" ", 1)
        if model == "base" or dec not in decodings:
            continue
        missing = [s for s in dev_sets if s not in run]
        if missing:
            unscored[key] = missing
            continue
        arm, seed, w = _name(model)
        c = cands.setdefault((arm, w, dec), {"arm": arm, "weight": w, "decoding": dec, "seeds": {}})
        scored = all(s in run for s in test_sets)
        c["seeds"][seed] = {"dev": figures(run, *dev, criterion), "test": figures(run, *test, criterion) if scored else None}
    for c in cands.values():
        for part in ("dev", "test"):
            fs = [s[part] for s in c["seeds"].values() if s[part] is not None]
            if not fs:
                c[part] = None
                continue
            c[part] = {"seeds_meeting": sum(f["meets"] for f in fs), "seeds": len(fs),
                       **{k: _mean([f[k] for f in fs]) for k in ("term_accuracy_espeak", "ker_reduction_espeak",
                                                                 "ker_reduction_piper", "general_wer_change",
                                                                 "phantoms_per_100", "rank")}}
    if not cands:
        raise SystemExit("no candidate was scored on every validation set ("
                         + "; ".join(f"{m}: no {', '.join(v)}" for m, v in sorted(unscored.items())) + ")")
    ranked = sorted(cands.values(), key=lambda c: (-c["dev"]["seeds_meeting"], -c["dev"]["rank"]))
    out = {"criterion": criterion, "bounds": CRITERIA[criterion], "dev_sets": dev, "test_sets": test,
           "chosen": {k: ranked[0][k] for k in ("arm", "weight", "decoding") if k != "arm" or ranked[0]["arm"]},
           "candidates": ranked}
    if unscored:
        out["not_candidates"] = unscored
    return out


def table(ch: dict) -> str:
    i21 = ch.get("criterion") == "issue21"
    bounds = ("relative KER reduction >= 75% on unseen espeak-ng voices and on the held-out engine (Piper) each, "
              if i21 else "term accuracy on unseen espeak-ng voices >= 0.70, ")
    lead = "mean KER reduction espeak / Piper" if i21 else "mean term acc."
    arms = any(c.get("arm") for c in ch["candidates"])   # several training sets (ARM.SEED) compared: a column for it
    chosen = ", ".join(([ch["chosen"]["arm"]] if ch["chosen"].get("arm") else [])
                       + [f"weight {ch['chosen']['weight']}", ch["chosen"]["decoding"]])
    lines = [f"# {'Training set, merge weight' if arms else 'Merge weight'} and decoding chosen on {', '.join(sum(map(list, ch['dev_sets']), []))}, reported on "
             f"{', '.join(sum(map(list, ch['test_sets']), []))}", "",
             f"Bounds ({ch.get('criterion', 'issue20').replace('issue', 'issue ')}): {bounds}everyday-English WER change "
             "<= +0.02 over the base decoded the same way (the largest over the general sets), <= 1 phantom per 100. "
             f"**Chosen: {chosen}.**", "",
             f"| {'training set | ' if arms else ''}weight | decoding | validation: seeds meeting all | {lead} / WER change / phantoms | test: seeds meeting | "
             f"{lead} / WER change / phantoms | test, seed by seed: "
             f"{'KER reduction espeak / Piper' if i21 else 'term acc. espeak (Piper)'}, WER change |",
             "|---" * (8 if arms else 7) + "|"]

    def lead_of(f):
        return (f"{_pct(f['ker_reduction_espeak'])} / {_pct(f['ker_reduction_piper'])}" if i21
                else f"{f['term_accuracy_espeak']:.3f}")

    def summary(p):
        return (f"{p['seeds_meeting']} of {p['seeds']} | "
                f"{lead_of(p)} / {p['general_wer_change']:+.3f} / {p['phantoms_per_100']:.1f}")

    for c in ch["candidates"]:
        t, lead_cols = c["test"], (f"| {c.get('arm') or '—'} " if arms else "") + f"| {c['weight']} | {c['decoding']} "
        if t is None:
            lines.append(f"{lead_cols}| {summary(c['dev'])} | not scored | | |")
            continue
        per = "; ".join(f"{s} {lead_of(f['test'])}" + ("" if i21 else f" ({_fmt(f['test']['term_accuracy_piper'])})")
                        + f", {f['test']['general_wer_change']:+.3f}{' ✓' if f['test']['meets'] else ''}"
                        for s, f in sorted(c["seeds"].items()) if f["test"] is not None)
        lines.append(f"{lead_cols}| {summary(c['dev'])} | {summary(t)} | {per} |")
    if ch.get("not_candidates"):
        lines += ["", "Not candidates (not scored on every validation set): " + "; ".join(
            f"{m} (no {', '.join(v)})" for m, v in sorted(ch["not_candidates"].items())) + "."]
    return "\n".join(lines) + "\n"


def _pct(x):
    return "n/a" if x is None else f"{-100 * x:.0f}%"


def combine(results: list[dict]) -> dict:
    """Several phantom_guard_eval results as one: the sets of all, each run's figures per set of all. A set scored in
    two files must be the same set (one manifest path)."""
    out = {"sets": {}, "runs": {}}
    for r in results:
        for name, path in r["sets"].items():
            if out["sets"].setdefault(name, path) != path:
                raise SystemExit(f"set {name} is {out['sets'][name]} in one results file and {path} in another")
        for key, figs in r["runs"].items():
            out["runs"].setdefault(key, {}).update(figs)
    return out


def _fmt(x):
    return "n/a" if x is None else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, nargs="+", help="bench/phantom_guard_eval.py's results.json (several: read as one)")
    ap.add_argument("--dev-clinical", nargs="+", required=True)
    ap.add_argument("--dev-general", nargs="+", required=True)
    ap.add_argument("--test-clinical", nargs="+", default=["clinical_heldout"])
    ap.add_argument("--test-general", nargs="+", default=["general_heldout"])
    ap.add_argument("--decodings", nargs="+", default=list(DECODINGS), help="the candidates' decodings (default: %(default)s)")
    ap.add_argument("--criterion", choices=sorted(CRITERIA), default="issue20",
                    help="issue20: term accuracy on unseen espeak-ng voices (the CPU recipe); issue21: KER reduction on "
                         "both held-out engines (the GPU recipe's flywheel bound) (default: %(default)s)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    res = combine([json.loads(p.read_text()) for p in a.results])
    missing = [s for s in a.dev_clinical + a.dev_general + a.test_clinical + a.test_general if s not in res["sets"]]
    if missing:
        raise SystemExit(f"{' '.join(map(str, a.results))}: no set {', '.join(missing)} (there: {', '.join(res['sets'])})")
    ch = choose(res, (a.dev_clinical, a.dev_general), (a.test_clinical, a.test_general), tuple(a.decodings), a.criterion)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "choice.json").write_text(json.dumps(ch, indent=1))
    (a.out / "choice.md").write_text(table(ch))
    print(table(ch))


if __name__ == "__main__":
    main()
