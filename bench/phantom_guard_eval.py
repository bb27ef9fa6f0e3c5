"""The phantom guard (clinasr.phantom_guard) measured: fine-tunes decoded greedily, with their rebuilt n-gram LM
(beam search, shallow fusion), and with the LM under the guard, on the same held-out sets, beside the base
decoded both ways.

    .venv/ml/bin/python bench/phantom_guard_eval.py --work /tmp/clinasr-recipes-v7 \\
        --base greedy=models/clinasr-base-en-multi/model.nemo lm=BASE_LM.nemo \\
        --pair s0=FT_GREEDY.nemo[,FT_LM.nemo] --pair s1=... \\
        --set general_check=bench/data/general_check_en.txt --out bench/results/phantom-guard-v7b96-1500

Each model is scored once per set (``python -m clinasr.experiment score``, a fresh interpreter; the LM model as
a copy whose decoding spec turns the guard off, so that the LM's own transcripts are kept); the guarded transcript
of each utterance is then :func:`clinasr.phantom_guard.choose` of the LM and greedy transcripts, which is what the
Transcriber does with both decodes of one encoder output (bench/results/flywheel-gpu-v7b96-1500-lmguard.md scored
the guarded models through it: the same figures). The held-out sets come from recipes_experiment.py's --work;
``--set NAME=TEXT`` renders more everyday-English sets from a text file in the held-out voices (general_heldout's
config, another seed); ``--clinical-set NAME=SEED`` renders clinical_heldout's config again with another seed (new
sentences of the held-out template family, the same held-out voices): a validation set to choose settings on
(bench/choose_merge.py) apart from the sets they are reported on. ``--jobs N`` scores N models at once (the GPU
machine). Fine-tunes of one base trained on one clinical set get the same rebuilt LM (the base's LM sentences plus
the same clinical sentences, the same tokenizer): it is estimated once and embedded in each. Writes results.json and results.md: per fine-tune and decoding, term accuracy and the
relative KER reduction per engine against the base decoded the same way, the general WER change with a paired
bootstrap CI, phantom terms per 100 general utterances, and how many vetoes removed a term nobody said.
``--noisy-set NAME=TEXT:DRAWS`` renders an everyday-English set spoken only in noise (SNR 10-25 dB), each sentence
DRAWS times, each draw drawing a held-out voice and noise of its own (independently: two draws may share a voice):
phantom terms come mostly from noisy clips, and a validation set where they show needs many of them.
``--only-sets NAME ...`` scores those sets alone: a choice made on validation sets first (bench/choose_merge.py), then
only the chosen models on the test sets, so that the test sets never see a candidate that was not chosen.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from clinasr import lm, metrics, phantom_guard  # noqa: E402
from clinasr.textnorm import normalize  # noqa: E402


def guard_off(src: Path, dst: Path) -> Path:
    """A copy of an LM model whose decoding spec turns the phantom guard off."""
    if dst.exists():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    if lm.copy_lm(src, src, dst, phantom_guard=False) is None:
        raise SystemExit(f"{src} carries no n-gram LM (clinasr lm --help)")
    return dst


def rebuilt_lm(name: str, ft: Path, base_lm: Path, work: Path, cache: Path, built: dict | None = None) -> Path:
    """``ft`` with its LM rebuilt from ``base_lm``'s sentences and its clinical training sentences (clinasr.lm.rebuild).
    ``built`` (one dict per run): the first rebuild's model, whose LM is embedded as it is in every later fine-tune
    of the same base and clinical set, which would rebuild the same LM."""
    import shutil

    from clinasr.training.train import own_text

    dst = cache / f"{name}_lm.nemo"
    if dst.exists():
        return dst
    cache.mkdir(parents=True, exist_ok=True)
    if built:
        return lm.copy_lm(built["model"], ft, dst)
    shutil.copy(ft, dst)
    text = own_text(work / "clinical_train" / "train_manifest.jsonl", cache / "lm_text.txt")
    if lm.rebuild(base_lm, dst, [text]) is None:
        raise SystemExit(f"{base_lm} has no LM with its sentences to rebuild from")
    if built is not None:
        built["model"] = dst
    return dst


def noisy_conditions(draws: int) -> dict[str, dict]:
    """``draws`` conditions that each speak every sentence once with hospital noise at SNR 10-25 dB (general_heldout's
    noisy condition): each draw picks its own held-out voice and noise per sentence (they key on the utterance id)."""
    from clinasr import evalsets

    noisy = (evalsets.load_config()["sets"]["general_heldout"].get("conditions") or {}).get("noisy")
    if not noisy:
        raise SystemExit("--noisy-set speaks general_heldout's noisy condition, and the evaluation-set config has none")
    return {f"noisy{k + 1}": copy.deepcopy(noisy) for k in range(draws)}


def render_sets(extra: dict[str, str], work: Path, clinical: dict[str, str] | None = None, workers: int = 2,
                noisy: dict[str, tuple[str, int]] | None = None) -> dict[str, Path]:
    """Everyday-English sets from text files, in general_heldout's held-out voices and conditions, clinical sets of
    clinical_heldout's config with other seeds (``clinical``: name -> seed), and everyday-English sets spoken only
    with noise, several draws of each sentence (``noisy``: name -> (text file, draws)): phantom terms come mostly
    from noisy clips, and a validation set of 149 sentences shows 0-1 of them, too few to choose on."""
    from clinasr import evalsets

    out = {}
    names = [*extra, *(clinical or {}), *(noisy or {})]
    clash = sorted({n for n in names if names.count(n) > 1 or n in ("clinical_heldout", "general_heldout")})
    if clash:
        raise SystemExit(f"set names must differ from each other and from the held-out sets: {', '.join(clash)}")
    todo = [(n, "general_heldout", {"text": t}) for n, t in sorted(extra.items())]
    todo += [(n, "clinical_heldout", {"seed": int(seed)}) for n, seed in sorted((clinical or {}).items())]
    # a noisy set's seed does not depend on the other sets asked for (its utterance ids carry its name, so two
    # noisy sets of one text still draw their own voices and noise)
    noisy_seed = int(evalsets.load_config()["sets"]["general_heldout"]["seed"]) + 100
    todo += [(n, "general_heldout", {"text": t, "conditions": noisy_conditions(k), "seed": noisy_seed})
             for n, (t, k) in sorted((noisy or {}).items())]
    for i, (name, like, change) in enumerate(todo):
        cfg = evalsets.load_config()
        s = copy.deepcopy(cfg["sets"][like])
        s["seed"] = int(s["seed"]) + 100 + i
        s.update(change)
        cfg["sets"][name] = s
        d = work / "extra_sets" / name
        if not (d / evalsets.TEST_MANIFEST).exists():
            evalsets.build_set(name, d, cfg, workers=workers, progress=False)
        else:   # a set rendered before under this name must be the set asked for now
            card = json.loads((d / "evalset_card.json").read_text())
            if card.get("config_hash") != evalsets.config_hash(cfg, name):
                raise SystemExit(f"{d} holds another set {name!r} (other text, seed or draws): remove it or choose "
                                 "another name")
        out[name] = d / evalsets.TEST_MANIFEST
        if like == "clinical_heldout":   # another seed draws some of the test set's sentences again: left out
            test = {json.loads(x)["text"] for x in (work / "evalsets" / like / evalsets.TEST_MANIFEST).read_text().splitlines()}
            rows = out[name].read_text().splitlines()
            kept = [x for x in rows if json.loads(x)["text"] not in test]
            out[name] = d / "test_manifest.disjoint.jsonl"
            out[name].write_text("".join(x + "\n" for x in kept))
            print(f"[sets] {name}: {len(rows) - len(kept)} of {len(rows)} rows left out (their sentence is in {like})")
    return out


def _noisy_arg(arg: str) -> tuple[str, str, int]:
    """NAME=TEXT:DRAWS -> (NAME, TEXT, DRAWS)."""
    name, _, rest = arg.partition("=")
    text, _, draws = rest.rpartition(":")
    try:
        n = int(draws)
    except ValueError:
        n = 0
    if not name or not text or n < 1:
        raise SystemExit(f"--noisy-set {arg!r}: expected NAME=TEXT:DRAWS with DRAWS >= 1")
    return name, text, n


def score(model: Path, manifests: dict[str, Path], out: Path, greedy: bool = False) -> dict[str, dict[str, str]]:
    """{set: {utt_id: hypothesis}} of one model (cached in ``out``); ``greedy``: without the LM a model may carry
    (CLINASR_DECODING=greedy; the shipped base and its fine-tunes carry one since 2026-12-03)."""
    import os

    done = out / "scores.json"
    if not done.exists():
        out.mkdir(parents=True, exist_ok=True)
        args = {"model": str(model), "out": str(out), "manifests": {k: str(v) for k, v in manifests.items()}}
        (out / "args.json").write_text(json.dumps(args))
        with open(out / "score.log", "w") as log:
            env = {**os.environ, **({"CLINASR_DECODING": "greedy"} if greedy else {})}
            rc = subprocess.run([sys.executable, "-m", "clinasr.experiment", "score", str(out / "args.json"), str(done)],
                                stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if rc:
            raise SystemExit(f"scoring {model} failed (exit {rc}): {out / 'score.log'}")
    return {name: read_hypotheses(out, name) for name in manifests}


def scores_dir(out: Path, model: str, decoding: str) -> Path:
    """Where a run with ``--out OUT`` keeps one model's transcripts in one decoding (greedy, lm)."""
    return Path(out) / "scores" / f"{model}_{decoding}"


def read_hypotheses(scored: Path, set_name: str) -> dict[str, str]:
    """{utt_id: hypothesis} of one set in a model's scores directory."""
    rows = [json.loads(x) for x in (scored / set_name / "hypotheses.jsonl").read_text().splitlines()]
    return {r["utt_id"]: r["hypothesis"] for r in rows}


def scored(rows: dict[str, dict], hyps: dict[str, str]) -> dict:
    return metrics.score_rows([{**rows[u], "hypothesis": h} for u, h in hyps.items()])


def guarded(fused: dict[str, str], greedy: dict[str, str], rows: dict[str, dict], inventory) -> tuple[dict, dict]:
    """The guard's transcripts and what it vetoed: vetoed terms that the reference has too (lost) or not (phantoms)."""
    out, stats = {}, {"utterances_vetoed": 0, "terms_vetoed": 0, "vetoed_phantoms": 0}
    for u, f in fused.items():
        text, vetoes = phantom_guard.choose(normalize(f), normalize(greedy[u]), inventory=inventory)
        out[u] = text
        stats["utterances_vetoed"] += bool(vetoes)
        for v in vetoes:
            stats["terms_vetoed"] += 1
            stats["vetoed_phantoms"] += not metrics.contains(normalize(rows[u]["text"]), v["term"])
    return out, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="recipes_experiment.py's --work (its held-out sets)")
    ap.add_argument("--base", nargs=2, required=True, metavar=("greedy=BASE.nemo", "lm=BASE_LM.nemo"))
    ap.add_argument("--pair", action="append", required=True, metavar="NAME=GREEDY.nemo[,LM.nemo]",
                    help="a fine-tune: its plain .nemo and the same with its rebuilt LM (without one: rebuilt here "
                         "from --base's LM and the clinical rows of WORK/clinical_train, as training rebuilds it)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=TEXT",
                    help="another everyday-English set rendered from a text file (held-out voices)")
    ap.add_argument("--clinical-set", action="append", default=[], metavar="NAME=SEED",
                    help="another clinical set: clinical_heldout's config with another seed (held-out voices)")
    ap.add_argument("--noisy-set", action="append", default=[], metavar="NAME=TEXT:DRAWS",
                    help="an everyday-English set spoken only with noise (SNR 10-25 dB), DRAWS times per sentence, each "
                         "draw with a held-out voice and noise drawn for it: a validation set on which phantom terms show")
    ap.add_argument("--only-sets", nargs="+", metavar="NAME",
                    help="score these sets only (default: clinical_heldout, general_heldout and every --set/--clinical-set/--noisy-set)")
    ap.add_argument("--jobs", type=int, default=1, help="models scored at once (default 1)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from concurrent.futures import ThreadPoolExecutor

    work, out = Path(a.work), Path(a.out)
    manifests = {n: work / "evalsets" / n / "test_manifest.jsonl" for n in ("clinical_heldout", "general_heldout")}
    clinical_sets = dict(s.split("=", 1) for s in a.clinical_set)
    noisy = {n: (t, int(k)) for n, t, k in (_noisy_arg(x) for x in a.noisy_set)}
    manifests.update(render_sets(dict(s.split("=", 1) for s in a.set), work, clinical_sets, workers=max(2, a.jobs),
                                 noisy=noisy))
    if a.only_sets:
        unknown = sorted(set(a.only_sets) - set(manifests))
        if unknown:
            raise SystemExit(f"--only-sets: no set {', '.join(unknown)} (the sets: {', '.join(manifests)})")
        manifests = {n: p for n, p in manifests.items() if n in a.only_sets}
    rows = {n: {json.loads(x)["utt_id"]: json.loads(x) for x in p.read_text().splitlines()} for n, p in manifests.items()}
    clinical = [n for n in ("clinical_heldout", *sorted(clinical_sets)) if n in manifests]
    general = [n for n in manifests if n not in clinical]
    base = dict(b.split("=", 1) for b in a.base)
    cache = out / "scores"   # the LM copies, beside each scores_dir(out, MODEL, DECODING)
    models = {"base": (Path(base["greedy"]), Path(base["lm"]))}
    built: dict = {}
    for p in a.pair:
        name, paths = p.split("=", 1)
        g, _, f = paths.partition(",")
        models[name] = (Path(g), Path(f) if f else rebuilt_lm(name, Path(g), Path(base["lm"]), work, cache, built))
    inventory = metrics.phantom_inventory()
    jobs = [(name, dec, path) for name, (g, f) in models.items()
            for dec, path in (("greedy", g), ("lm", guard_off(f, cache / f"{name}_lm_guard_off.nemo")))]
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        done = dict(zip([(n, d) for n, d, _ in jobs],
                        pool.map(lambda j: score(j[2], manifests, scores_dir(out, j[0], j[1]), greedy=j[1] == "greedy"), jobs)))
    hyps = {}
    for name in models:
        hyps[name] = {"greedy": done[(name, "greedy")], "lm": done[(name, "lm")]}
        hyps[name]["lm+guard"], guards = {}, {}
        for s in manifests:
            hyps[name]["lm+guard"][s], guards[s] = guarded(hyps[name]["lm"][s], hyps[name]["greedy"][s], rows[s], inventory)
        hyps[name]["guard_stats"] = guards
    results = {"sets": {n: str(p) for n, p in manifests.items()}, "clinical_sets": clinical,
               "models": {k: [str(x) for x in v] for k, v in models.items()},
               "min_similarity": phantom_guard.DEFAULT_MIN_SIMILARITY, "runs": {}}
    for name in models:
        for dec in ("greedy", "lm", "lm+guard"):
            r = {}
            for s in manifests:
                c, b = scored(rows[s], hyps[name][dec][s]), scored(rows[s], hyps["base"][dec][s])
                r[s] = {"wer": c["wer"], "ker": c["ker"], "phantoms_per_100": c["phantom_terms"]["per_100_utterances"],
                        "phantoms": c["phantom_terms"].get("top", []),
                        "vs_base": metrics.paired_reduction_ci(b["per_row"], c["per_row"]),
                        "by_engine": metrics.paired_reduction_by_engine(b["per_row"], c["per_row"]),
                        "term_accuracy_by_engine": {e: 1 - v["ker"] for e, v in _by_engine(rows[s], hyps[name][dec][s]).items()
                                                    if v["ker"] is not None}}
                if dec == "lm+guard":
                    r[s]["guard"] = hyps[name]["guard_stats"][s]
            results["runs"][f"{name} {dec}"] = r
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(table(results, clinical, general))
    print(table(results, clinical, general))


def _by_engine(rows: dict[str, dict], hyps: dict[str, str]) -> dict[str, dict]:
    eng = {}
    for u, h in hyps.items():
        eng.setdefault(str(rows[u].get("voice", "?")).split(":", 1)[0], {})[u] = h
    return {e: scored(rows, hs) for e, hs in eng.items()}


def table(res: dict, clinical: list[str], general: list[str]) -> str:
    """One row per model and decoding: the first clinical set's term accuracy and KER reduction per engine, and
    every general set's WER change and phantoms."""
    cs = f"{clinical[0]}: " if clinical else ""
    head = (f"| model | decoding | {cs}term accuracy espeak / piper | KER reduction espeak / piper [95% CI] | "
            + " | ".join(f"{g}: WER change [95% CI] | phantoms /100" for g in general) + " | vetoes: utterances, terms (of them phantoms) |")
    lines = [f"# The phantom guard (min similarity {res['min_similarity']})", "",
             "Against the base decoded the same way (greedy, with its own LM, with its LM under the guard). Held-out "
             "voices and engine; every set text-disjoint from training.", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for key, r in res["runs"].items():
        name, dec = key.split(" ", 1)
        cl = r[clinical[0]] if clinical else {"term_accuracy_by_engine": {}, "by_engine": {}}
        acc = " / ".join(f"{cl['term_accuracy_by_engine'].get(e, float('nan')):.3f}" for e in ("espeak", "piper"))
        ker = " / ".join(_ci(cl["by_engine"].get(e, {}).get("ker_reduction"), pct=True) for e in ("espeak", "piper"))
        gen = " | ".join(f"{_ci(r[g]['vs_base'].get('wer_change'))} | {r[g]['phantoms_per_100']:.1f}" for g in general)
        v = " ".join(f"{s}: {st['utterances_vetoed']}, {st['terms_vetoed']} ({st['vetoed_phantoms']});"
                     for s, st in ((s, r[s]["guard"]) for s in r if "guard" in r[s]))
        lines.append(f"| {name} | {dec} | {acc} | {ker} | {gen} | {v} |")
    return "\n".join(lines) + "\n"


def _ci(d: dict | None, pct: bool = False) -> str:
    if not d or d.get("estimate") is None:
        return "n/a"
    f = (lambda x: f"{100 * x:+.0f}%") if pct else (lambda x: f"{x:+.3f}")
    return f"{f(d['estimate'])} [{f(d['ci'][0])}, {f(d['ci'][1])}]"


if __name__ == "__main__":
    main()
