"""Choose a fine-tune's merge weight with the base (WiSE-FT) and its decoding on validation sets, then report the
choice on the test sets it was not chosen on.

    .venv/ml/bin/python bench/choose_merge.py RESULTS.json --dev-clinical clinical_dev --dev-general general_dev \\
        --test-clinical clinical_heldout --test-general general_heldout general_check --out DIR

RESULTS.json is bench/phantom_guard_eval.py's, over fine-tunes named SEED (unmerged) and SEED_mNN (merged at NN/100,
bench/merge_nemo.py), each scored greedily, with its LM and with its LM under the phantom guard, against the base
decoded the same way. A (weight, decoding) meets issue 20's bounds on a seed when, on the validation sets, term
accuracy on unseen espeak-ng voices is >= 0.70, everyday-English WER rises by at most 0.02 over the base and there is
at most 1 phantom term per 100 everyday utterances. The candidates decode as the product does: greedily, or with the
LM under the phantom guard (``--decodings``). The choice: the (weight, decoding) that meets them on the most
seeds, then the highest mean term accuracy. Writes DIR/choice.json and DIR/choice.md (every candidate on both
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


def _name(model: str) -> tuple[str, float]:
    m = re.fullmatch(r"(.+)_m(\d+)", model)
    return (m.group(1), int(m.group(2)) / 100) if m else (model, 1.0)


def figures(run: dict, clinical: list[str], general: list[str]) -> dict:
    """Term accuracy on unseen espeak-ng voices (rows of every clinical set pooled by their counts is not possible
    from the summaries: the mean over sets), the largest WER rise and phantom rate over the general sets."""
    acc = [run[s]["term_accuracy_by_engine"].get("espeak") for s in clinical]
    rises = [run[s]["vs_base"]["wer_change"]["estimate"] for s in general]
    ph = [run[s]["phantoms_per_100"] for s in general]
    f = {"term_accuracy_espeak": statistics.fmean(a for a in acc if a is not None),
         "term_accuracy_piper": _mean([run[s]["term_accuracy_by_engine"].get("piper") for s in clinical]),
         "general_wer_change": max(rises), "phantoms_per_100": max(ph)}
    f["meets"] = (f["term_accuracy_espeak"] >= BOUNDS["min_term_accuracy"]
                  and f["general_wer_change"] <= BOUNDS["max_general_wer_increase"]
                  and f["phantoms_per_100"] <= BOUNDS["max_phantoms_per_100"])
    return f


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def choose(res: dict, dev: tuple[list[str], list[str]], test: tuple[list[str], list[str]],
           decodings: tuple[str, ...] = DECODINGS) -> dict:
    cands: dict[tuple[float, str], dict] = {}
    for key, run in res["runs"].items():
        model, dec = key.split(" ", 1)
        if model == "base" or dec not in decodings:
            continue
        seed, w = _name(model)
        c = cands.setdefault((w, dec), {"weight": w, "decoding": dec, "seeds": {}})
        c["seeds"][seed] = {"dev": figures(run, *dev), "test": figures(run, *test)}
    for c in cands.values():
        for part in ("dev", "test"):
            fs = [s[part] for s in c["seeds"].values()]
            c[part] = {"seeds_meeting": sum(f["meets"] for f in fs), "seeds": len(fs),
                       **{k: statistics.fmean(f[k] for f in fs) for k in ("term_accuracy_espeak", "general_wer_change",
                                                                          "phantoms_per_100")}}
    ranked = sorted(cands.values(), key=lambda c: (-c["dev"]["seeds_meeting"], -c["dev"]["term_accuracy_espeak"]))
    return {"bounds": BOUNDS, "dev_sets": dev, "test_sets": test, "chosen": {k: ranked[0][k] for k in ("weight", "decoding")},
            "candidates": ranked}


def table(ch: dict) -> str:
    lines = [f"# Merge weight and decoding chosen on {', '.join(sum(map(list, ch['dev_sets']), []))}, reported on "
             f"{', '.join(sum(map(list, ch['test_sets']), []))}", "",
             "Bounds (issue 20): term accuracy on unseen espeak-ng voices >= 0.70, everyday-English WER change <= +0.02 "
             "over the base decoded the same way (the largest over the general sets), <= 1 phantom per 100. "
             f"**Chosen: weight {ch['chosen']['weight']}, {ch['chosen']['decoding']}.**", "",
             "| weight | decoding | validation: seeds meeting all three | mean term acc. / WER change / phantoms | test: seeds meeting | "
             "mean term acc. / WER change / phantoms | test, seed by seed: term acc. espeak (Piper), WER change |",
             "|---|---|---|---|---|---|---|"]
    for c in ch["candidates"]:
        d, t = c["dev"], c["test"]
        per = "; ".join(f"{s} {f['test']['term_accuracy_espeak']:.3f} ({_fmt(f['test']['term_accuracy_piper'])}), "
                        f"{f['test']['general_wer_change']:+.3f}{' ✓' if f['test']['meets'] else ''}"
                        for s, f in sorted(c["seeds"].items()))
        lines.append(f"| {c['weight']} | {c['decoding']} | {d['seeds_meeting']} of {d['seeds']} | "
                     f"{d['term_accuracy_espeak']:.3f} / {d['general_wer_change']:+.3f} / {d['phantoms_per_100']:.1f} | "
                     f"{t['seeds_meeting']} of {t['seeds']} | {t['term_accuracy_espeak']:.3f} / {t['general_wer_change']:+.3f} / "
                     f"{t['phantoms_per_100']:.1f} | {per} |")
    return "\n".join(lines) + "\n"


def _fmt(x):
    return "n/a" if x is None else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="bench/phantom_guard_eval.py's results.json")
    ap.add_argument("--dev-clinical", nargs="+", required=True)
    ap.add_argument("--dev-general", nargs="+", required=True)
    ap.add_argument("--test-clinical", nargs="+", default=["clinical_heldout"])
    ap.add_argument("--test-general", nargs="+", default=["general_heldout"])
    ap.add_argument("--decodings", nargs="+", default=list(DECODINGS), help="the candidates' decodings (default: %(default)s)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    res = json.loads(a.results.read_text())
    missing = [s for s in a.dev_clinical + a.dev_general + a.test_clinical + a.test_general if s not in res["sets"]]
    if missing:
        raise SystemExit(f"{a.results} has no set {', '.join(missing)} (it has {', '.join(res['sets'])})")
    ch = choose(res, (a.dev_clinical, a.dev_general), (a.test_clinical, a.test_general), tuple(a.decodings))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "choice.json").write_text(json.dumps(ch, indent=1))
    (a.out / "choice.md").write_text(table(ch))
    print(table(ch))


if __name__ == "__main__":
    main()
