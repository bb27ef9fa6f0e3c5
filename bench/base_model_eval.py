"""Base models side by side on sets none of them trained on (issue 21): the gate's evaluation sets
(configs/evalsets.yaml) split by what the issue bounds — unseen espeak-ng voices vs the held-out engine
(Piper), clean vs noisy (hospital noise at SNR 10-25 dB) on everyday English, and the clinical held-out set —,
with paired bootstrap CIs of each model against the first.

    .venv/ml/bin/python bench/base_model_eval.py --models old=models/clinasr-base-en-small/model.nemo \\
        new=models/clinasr-base-en-multi/model.nemo whisper=whisper:tiny.en [--out bench/results/base-models]

The sets are built here (CPU, ~2 min on 2 cores) into --work and reused while their config is unchanged.
Runs on the same renders combine without scoring again (a model's WER is the same to the last digit in every
run), and a base's card records the flywheel on it (bench/recipes_experiment.py's results.json):

    .venv/ml/bin/python bench/base_model_eval.py --merge bench/results/base-models-v6-card.json \
        bench/results/base-models-v7.json --card models/clinasr-base-en-multi \
        --flywheel bench/results/recipes-cpu-multibase-v7.json [MORE_SEEDS.json] [--flywheel-runs default_1000 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from clinasr import evalsets, metrics  # noqa: E402
from clinasr.experiment import workers  # noqa: E402

# the bounds on the new base (general English, WER)
BOUNDS = {"general/espeak-heldout/clean": 0.25, "general/piper/clean": 0.40,
          "general/espeak-heldout/noisy": 0.35, "general/piper/noisy": 0.50}


# --extra-engines: the everyday-English sentences, clean, in two more synthesiser families that no shipped base
# trained on: Kokoro-82M (neural; Japanese speakers reading English) and SVOX Pico (HMM, its own letter-to-sound).
# The Kokoro voices are the two that configs/experiment/base_multi_v4.yaml holds out of training.
EXTRA_VOICES = {"native": [{"engine": "pico", "voice": "en-US"}],
                "regional": [{"engine": "pico", "voice": "en-GB"}],
                "second_language": [{"engine": "kokoro", "voice": v}
                                    for v in ("jf_nezumi", "jf_tebukuro", "jf_nezumi+jf_tebukuro")]}
EXTRA_MIX = {"native": 0.25, "regional": 0.25, "second_language": 0.5}


def split_sets(work: Path, log, extra_engines: bool = False) -> dict[str, Path]:
    """{part name: manifest}: general_heldout by engine x condition, clinical_heldout by engine; with
    ``extra_engines`` also general_heldout's sentences (clean) in EXTRA_VOICES."""
    import copy

    cfg = evalsets.load_config()
    builds = [("general_heldout", work / "general_heldout", cfg), ("clinical_heldout", work / "clinical_heldout", cfg)]
    if extra_engines:
        extra = copy.deepcopy(cfg)
        extra["heldout"] = {**extra["heldout"], "voices": EXTRA_VOICES, "accent_mix": EXTRA_MIX}
        extra["sets"]["general_heldout"]["conditions"] = {"clean": {"augment": False}}
        builds.append(("general_heldout", work / "general_extra_engines", extra))
    parts: dict[str, list[dict]] = {}
    for name, where, c in builds:
        s = evalsets.build_set(name, where, c, workers=workers(), progress=False, log=log)
        d = Path(s["dir"])
        for line in (d / evalsets.TEST_MANIFEST).read_text().splitlines():
            r = json.loads(line)
            r["audio_filepath"] = str(d / r["audio_filepath"])
            engine = r["voice"].split(":", 1)[0]
            who = engine if engine != "espeak" else "espeak-heldout"
            key = f"general/{who}/{r['condition']}" if name == "general_heldout" else f"clinical/{who}"
            parts.setdefault(key, []).append(r)
    out = {}
    for key, rows in sorted(parts.items()):
        p = work / "parts" / (key.replace("/", "__") + ".jsonl")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[key] = p
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=[], metavar="NAME=SPEC",
                    help="a .nemo path or a reference spec (whisper:tiny.en); the first is the baseline of the CIs")
    ap.add_argument("--work", default="/tmp/clinasr-base-eval")
    ap.add_argument("--out", default="bench/results/base-models")
    ap.add_argument("--card", metavar="DIR", help="a model directory (model_card.json) whose card gets the table; "
                                                   "the model named 'new' is the one it describes")
    ap.add_argument("--extra-engines", action="store_true",
                    help="also score everyday English (clean) in Kokoro-82M and SVOX Pico voices (EXTRA_VOICES)")
    ap.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                    help="earlier runs' results (their .json) on the same sets: their models come first, in order "
                         "(a name already taken is skipped); --models then adds models scored here")
    ap.add_argument("--flywheel", metavar="RESULTS_JSON", nargs="+",
                    help="with --card: bench/recipes_experiment.py results.json files whose fine-tunes of this base the "
                         "card records (base, term accuracy, KER reduction, general-English change with CIs); several "
                         "files (more seeds of one recipe) only when they scored the base alike")
    ap.add_argument("--flywheel-runs", nargs="+", help="the runs of --flywheel to record (default: every fine-tune)")
    a = ap.parse_args(argv)
    if not a.models and not a.merge:
        ap.error("name models to score (--models) or earlier results to combine (--merge)")
    if a.flywheel and not a.card:
        ap.error("--flywheel records the flywheel in a card: give --card")
    if a.merge and not a.models:   # nothing to score: no sets to build
        return finish(merge_results([Path(p) for p in a.merge]), a)
    from clinasr.evaluate import evaluate_set
    from clinasr.reference import make_transcriber

    t0 = time.time()

    def log(m):
        print(f"[{time.time() - t0:5.0f}s] {m}", flush=True)

    work, out = Path(a.work), Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = split_sets(work, log, a.extra_engines)
    results: dict = {"sets": {k: sum(1 for _ in open(p)) for k, p in parts.items()}, "bounds": BOUNDS, "models": {}}
    if a.merge:
        earlier = merge_results([Path(p) for p in a.merge])
        check_same_sets(earlier, results, "these sets")
        results["models"] = earlier["models"]
    per_row: dict = {}
    first = None
    for item in a.models:
        name, _, spec = item.partition("=")
        t = make_transcriber(spec, work / "fetch")
        t.warm_up()
        res, per_row[name] = {}, {}
        for key, manifest in parts.items():
            r = evaluate_set(t, key, manifest, work / "scored" / name, progress=False, keep_per_row=True)
            per_row[name][key] = r.pop("per_row")
            res[key] = {"wer": r["wer"], "ci": r["ci"].get("wer"), "rows": r["rows"]["scored"],
                        "term_accuracy": None if r["ker"] is None else 1 - r["ker"],
                        "phantoms_per_100": r["phantom_terms"]["per_100_utterances"],
                        "latency_p95_s": r["latency"]["p95_s"], "by_voice": by_voice(manifest, per_row[name][key])}
            if first and first != name:
                res[key]["vs_" + first] = metrics.paired_reduction_ci(per_row[first][key], per_row[name][key])
            log(f"{name} {key}: WER {r['wer']:.3f} ({r['rows']['scored']} rows)")
        results["models"][name] = {"spec": spec, "sets": res, "latency_10s_clip": clip_latency(t, work)}
        log(f"{name}: 10 s clip p95 {results['models'][name]['latency_10s_clip']['p95_s']:.3f} s")
        first = first or name
        Path(f"{out}.json").write_text(json.dumps(results, indent=1, default=str))
    return finish(results, a)


def finish(results: dict, a) -> int:
    """The results as JSON and a table beside --out, printed, and into --card's card."""
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{a.out}.json").write_text(json.dumps(results, indent=1, default=str))
    Path(f"{a.out}.md").write_text(table(results))
    print(table(results))
    if a.card:
        write_card(Path(a.card), results, a.flywheel, a.flywheel_runs)
    return 0


def check_same_sets(a: dict, b: dict, what: str) -> None:
    """Results combine only when scored on the same parts of the same sets (rows per part)."""
    if a["sets"] != b["sets"]:
        diff = sorted(k for k in set(a["sets"]) | set(b["sets"]) if a["sets"].get(k) != b["sets"].get(k))
        raise SystemExit(f"cannot combine: {what} differ in rows from the earlier results on {', '.join(diff)} "
                         "(another render of the sets: score every model again)")


def merge_results(paths: list[Path]) -> dict:
    """Several runs' results on the same sets as one: models in file order, a name already taken skipped."""
    merged: dict | None = None
    for p in paths:
        r = json.loads(p.read_text())
        if merged is None:
            merged = {"sets": r["sets"], "bounds": r["bounds"], "models": {}, "merged_from": []}
        check_same_sets(merged, r, str(p))
        merged["merged_from"].append(str(p))
        for name, m in r["models"].items():
            had = merged["models"].setdefault(name, m)
            moved = [k for k in had["sets"] if had["sets"][k]["wer"] != m["sets"][k]["wer"]]
            if moved:   # the same name scored again must score the same: else it is another model or render
                raise SystemExit(f"cannot combine: {name} in {p} scores differently from the earlier results on "
                                 f"{', '.join(moved)}")
    return merged


def by_voice(manifest: Path, per_row: list[dict]) -> dict:
    """WER per voice of one part (the manifest's ``voice``, e.g. espeak:roa/pt-br): which held-out voice carries a
    set's errors. Words are pooled within a voice, as the set's WER pools them."""
    voice = {}
    for line in Path(manifest).read_text().splitlines():
        r = json.loads(line)
        voice[r["utt_id"]] = r.get("voice") or "?"
    agg: dict = {}
    for r in per_row:
        v = agg.setdefault(voice.get(r["utt_id"], "?"), {"errors": 0, "words": 0, "rows": 0})
        v["errors"] += r["errors"]
        v["words"] += r["words"]
        v["rows"] += 1
    return {k: {"wer": v["errors"] / v["words"] if v["words"] else None, "rows": v["rows"]} for k, v in sorted(agg.items())}


def clip_latency(t, work: Path, runs: int = 20) -> dict:
    """Seconds to transcribe one 10 s clip (one request, this machine's CPU), after a warm-up: p50 / p95."""
    import numpy as np

    from clinasr import audio
    from clinasr.synth import tts

    clip = work / "clip10s.npy"
    if not clip.exists():
        e, parts, n = tts.engine("espeak"), [], 0
        for s in ("the train to the city leaves at half past seven", "please bring a warm coat and an umbrella",
                  "we will meet at the corner of the market square", "after lunch the children played in the garden"):
            parts.append(e.synthesize(s, "gmw/en-us"))
        x = np.concatenate(parts)
        x = np.pad(x, (0, max(0, 10 * audio.TARGET_SR - len(x))))[: 10 * audio.TARGET_SR]
        np.save(clip, x.astype(np.float32))
    x = np.load(clip)
    t.transcribe([x])
    lat = []
    for _ in range(runs):
        t0 = time.perf_counter()
        t.transcribe([x])
        lat.append(time.perf_counter() - t0)
    return {"p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)), "runs": runs}


def flywheel_results(paths: list[str]) -> dict:
    """One recipes results.json, or several (more seeds of a recipe, scored in separate runs) as one: the base's
    figures must agree, otherwise the runs did not score the same sets alike; a run name must not repeat."""
    first = json.loads(Path(paths[0]).read_text())
    base = first["runs"]["base"]
    for p in paths[1:]:
        other = json.loads(Path(p).read_text())
        for k in ("clinical_heldout", "general_heldout"):
            if other["runs"]["base"][k] != base[k]:
                raise SystemExit(f"{p} scored the base differently from {paths[0]} on {k}: not one set of renders")
        dup = (set(other["runs"]) & set(first["runs"])) - {"base"}
        if dup:
            raise SystemExit(f"{p} repeats run {sorted(dup)[0]!r} of an earlier --flywheel file")
        first["runs"].update({n: r for n, r in other["runs"].items() if n != "base"})
    return first


def write_card(model_dir: Path, results: dict, flywheel: list[str] | None = None,
               flywheel_runs: list[str] | None = None) -> None:
    """The card of ``model_dir`` with every model's figures on the held-out sets (JSON and the MD table) and,
    from a recipes results.json, the flywheel on it."""
    import hashlib

    from clinasr.experiment import flywheel_card, model_card_md

    path = model_dir / "model_card.json"
    card = json.loads(path.read_text())
    card["export"]["sha256"] = hashlib.sha256((model_dir / "model.nemo").read_bytes()).hexdigest()
    card["heldout_eval"] = results
    if flywheel:   # one run of the flywheel per machine kind: a GPU record leaves the CPU one in place, and back
        fc = flywheel_card(flywheel_results(flywheel), ", ".join(flywheel), flywheel_runs)
        card[f"flywheel_{fc['where']}"] = fc
    path.write_text(json.dumps(card, indent=1, default=str))
    (model_dir / "MODEL_CARD.md").write_text(
        model_card_md(card) + "\n## On sets no model here trained on (bench/base_model_eval.py)\n\n" + table(results)
        + f"\nsha256 of model.nemo: `{card['export']['sha256']}`.\n")


def table(results: dict) -> str:
    names = list(results["models"])
    keys = list(results["sets"])
    lines = ["| set | rows | bound | " + " | ".join(f"{n} WER" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for k in keys:
        cells = []
        for n in names:
            s = results["models"][n]["sets"][k]
            ci = s.get("ci")
            cells.append(f"{s['wer']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
        bound = results["bounds"].get(k)
        lines.append(f"| {k} | {results['sets'][k]} | {'≤ ' + format(bound, '.2f') if bound else ''} | " + " | ".join(cells) + " |")
    lines.append("| one 10 s clip, p95 seconds (CPU) | | ≤ 1.00 | " + " | ".join(
        f"{results['models'][n]['latency_10s_clip']['p95_s']:.3f}" for n in names) + " |")
    voiced = [k for k in keys if k.startswith("general/espeak-heldout/")
              and any(results["models"][n]["sets"][k].get("by_voice") for n in names)]
    if voiced:   # runs before 2026-12-04 kept no per-voice figures: their cells are blank
        lines += ["", "Everyday English per unseen espeak-ng voice: WER (rows)", "",
                  "| set | voice | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for k in voiced:
            voices = sorted({v for n in names for v in results["models"][n]["sets"][k].get("by_voice") or {}})
            for v in voices:
                cells = []
                for n in names:
                    bv = (results["models"][n]["sets"][k].get("by_voice") or {}).get(v)
                    cells.append("" if not bv or bv["wer"] is None else f"{bv['wer']:.3f} ({bv['rows']})")
                lines.append(f"| {k} | {v} | " + " | ".join(cells) + " |")
    clin = [k for k in keys if k.startswith("clinical/")]
    if clin:
        lines += ["", "Clinical held-out (no model here has heard a drug name): term accuracy / phantom terms per 100",
                  "", "| set | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for k in clin:
            lines.append(f"| {k} | " + " | ".join(
                f"{results['models'][n]['sets'][k]['term_accuracy'] or 0:.3f} / {results['models'][n]['sets'][k]['phantoms_per_100']:.1f}"
                for n in names) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
