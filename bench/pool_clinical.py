"""Relative KER reduction per engine with the rows of several clinical sets pooled: one estimate, and one paired
bootstrap CI, over more utterances than either set holds (issue 21's held-out engine has 42-48 rows a set, so
one set's CI is +-10 points wide).

    .venv/ml/bin/python bench/pool_clinical.py --set clinical_dev=/tmp/choose-dev:MANIFEST \\
        --set clinical_heldout=/tmp/choose-test:MANIFEST --models s0 s1 s2 --out bench/results/pooled.json

Each --set names a bench/phantom_guard_eval.py --out directory that scored it (its scores/NAME_greedy and
scores/NAME_lm hypotheses) and the set's manifest. Every model is read as the product decodes it: its LM under
the phantom guard (``--decoding lm+guard``, the guard applied to the two decodes as phantom_guard_eval does), or
greedy; the base is ``base``. Prints and writes {model: {engine: {estimate, ci, rows}}}.

``--general-set NAME=OUT_DIR:MANIFEST`` (everyday-English sets, as --set) pools those too: per model the WER change
against the base and the phantom terms per 100 utterances, each with a paired bootstrap CI over the pooled
utterances (issue 20's phantom bound has 2-3 phantoms a set to go on, so one set's rate is a coarse estimate).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

import phantom_guard_eval as P  # noqa: E402
from clinasr import metrics  # noqa: E402


def _hyps(out: Path, name: str, dec: str, s: str) -> dict[str, str]:
    scored = P.scores_dir(out, name, dec)
    if not (scored / s).is_dir():
        raise SystemExit(f"{name} was not scored on {s} in {out} ({scored / s} is missing)")
    return P.read_hypotheses(scored, s)


def per_rows(name: str, sets: dict[str, tuple[Path, Path]], decoding: str, inventory) -> list[dict]:
    """``name``'s scored rows over every set, decoded as ``decoding`` says."""
    rows_all = []
    for s, (out, manifest) in sets.items():
        rows = {r["utt_id"]: r for r in map(json.loads, manifest.read_text().splitlines())}
        greedy = _hyps(out, name, "greedy", s)
        hyps = greedy if decoding == "greedy" else P.guarded(_hyps(out, name, "lm", s), greedy, rows, inventory)[0]
        rows_all += P.scored(rows, hyps)["per_row"]
    return rows_all


def pooled(sets: dict[str, tuple[Path, Path]], models: list[str], decoding: str = "lm+guard") -> dict:
    inventory = metrics.phantom_inventory()
    base = per_rows("base", sets, decoding, inventory)
    out = {}
    for m in models:
        by = metrics.paired_reduction_by_engine(base, per_rows(m, sets, decoding, inventory))
        out[m] = {e: {**v["ker_reduction"], "rows": sum(1 for r in base if r.get("engine") == e)} for e, v in by.items()}
    return out


def pooled_general(sets: dict[str, tuple[Path, Path]], models: list[str], decoding: str = "lm+guard") -> dict:
    """{model: {utterances, wer_change, phantoms_per_100, phantoms_per_100_change}} over the pooled general sets:
    estimates with paired bootstrap CIs against the base (the phantom rate's CI from resampling the model's rows)."""
    inventory = metrics.phantom_inventory()
    base = per_rows("base", sets, decoding, inventory)
    out = {}
    for m in models:
        rows = per_rows(m, sets, decoding, inventory)
        paired, phantoms = metrics.paired_reduction_ci(base, rows), sum(r["phantoms"] for r in rows)
        out[m] = {"utterances": paired["utterances"], "wer_change": paired["wer_change"], "phantoms": phantoms,
                  "phantoms_per_100": {"estimate": 100.0 * phantoms / len(rows),
                                       "ci": metrics.bootstrap_ci(rows)["phantoms_per_100"]},
                  "phantoms_per_100_change": paired["phantoms_per_100_change"]}
    return out


def _sets(specs: list[str]) -> dict[str, tuple[Path, Path]]:
    sets = {}
    for s in specs:
        name, _, rest = s.partition("=")
        out, _, manifest = rest.partition(":")
        sets[name] = (Path(out), Path(manifest))
    return sets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", required=True, metavar="NAME=OUT_DIR:MANIFEST")
    ap.add_argument("--general-set", action="append", default=[], metavar="NAME=OUT_DIR:MANIFEST",
                    help="an everyday-English set to pool: WER change and phantoms per 100 with CIs")
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--decoding", choices=["lm+guard", "greedy"], default="lm+guard")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    sets, general = _sets(a.set), _sets(a.general_set)
    res = pooled(sets, a.models, a.decoding)
    for m, by in res.items():
        print(m, "  ".join(f"{e}: {-100 * v['estimate']:.0f}% [{-100 * v['ci'][1]:.0f}, {-100 * v['ci'][0]:.0f}] "
                           f"({v['rows']} rows)" for e, v in by.items()))
    gen = pooled_general(general, a.models, a.decoding) if general else None
    for m, g in (gen or {}).items():
        w, p = g["wer_change"], g["phantoms_per_100"]
        print(f"{m} everyday English ({g['utterances']} utterances): WER {w['estimate']:+.3f} [{w['ci'][0]:+.3f}, "
              f"{w['ci'][1]:+.3f}]  phantoms {g['phantoms']} = {p['estimate']:.2f} per 100 [{p['ci'][0]:.2f}, {p['ci'][1]:.2f}]")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"sets": {k: [str(x) for x in v] for k, v in sets.items()}, "decoding": a.decoding,
                                     "ker_reduction": res,
                                     **({"general_sets": {k: [str(x) for x in v] for k, v in general.items()},
                                         "general": gen} if general else {})}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
