"""Evaluation (ML runtime): transcribe held-out sets with a model and score them.

``evaluate_stage(args)`` is ``clinasr ml-stage evaluate``. Arguments (JSON):

    model        .nemo path, s3:// URI or registry reference (models:/name@alias, models:/name/N)
    sets         [{"name": "validation", "manifest": <dataset dir | s3:// snapshot | manifest .jsonl>}, ...]
                 a dataset dir or snapshot means its val_manifest.jsonl
    output_dir   hypotheses.jsonl and metrics.json per set go to <output_dir>/<set>/
    max_rows     optional cap per set (in manifest order)

Every manifest row is either scored or counted as skipped with its reason (bad JSON, no text, audio
missing/undecodable/empty/too long); nothing is dropped silently. Latency is measured per utterance
(batch of one, as a served request) after a warm-up; RTFx = audio seconds / compute seconds.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from pathlib import Path

from clinasr import audio, metrics


class EvaluationError(RuntimeError):
    pass


def manifest_path(spec: str, work: Path) -> Path:
    """The manifest file a set refers to (dataset snapshots are fetched; directories mean their val split)."""
    if spec.startswith("s3://"):
        if spec.endswith(".jsonl"):
            raise EvaluationError(f"{spec}: give the dataset snapshot prefix (s3://.../datasets/<id>), not a manifest "
                                  "object: audio paths are relative to the snapshot")
        from clinasr.store import ObjectStore

        try:
            spec = str(ObjectStore().fetch_snapshot(spec, work / "dataset"))
        except FileNotFoundError:
            raise EvaluationError(f"snapshot {spec} is not in the object store (no completion marker): rebuild the "
                                  "dataset or evaluation set it names") from None
    p = Path(spec)
    if p.is_dir():   # an evaluation set is scored whole; a dataset by its validation split
        p = p / "test_manifest.jsonl" if (p / "test_manifest.jsonl").exists() else p / "val_manifest.jsonl"
    if not p.exists():
        raise EvaluationError(f"manifest not found: {p}")
    return p


def load_rows(manifest: Path, max_rows: int | None = None, max_s: float = 600.0,
              terms: list[str] | None = None) -> tuple[list[dict], Counter]:
    """Usable rows (with decoded audio) and a count of skipped rows by reason. ``terms``: score only the rows
    whose priority term is one of these (a candidate is judged on the terms it was trained for)."""
    rows, skipped = [], Counter()
    wanted = set(terms) if terms else None
    for n, line in enumerate(manifest.read_text().splitlines()):
        if not line.strip():
            continue
        if max_rows and len(rows) >= max_rows:
            break
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            skipped["bad JSON line"] += 1
            continue
        if not isinstance(r, dict) or not str(r.get("text", "")).strip():
            skipped["no reference text"] += 1
            continue
        if not r.get("audio_filepath"):
            skipped["no audio_filepath"] += 1
            continue
        if wanted is not None and r.get("term") not in wanted:
            skipped["another priority term"] += 1
            continue
        p = Path(r["audio_filepath"])
        p = p if p.is_absolute() else manifest.parent / p
        try:
            x = audio.load(p)
            audio.check(x, max_s=max_s, min_rms=0.0)
        except audio.AudioError as e:
            skipped[f"audio: {str(e).split(':')[0].split('(')[0].strip()}"] += 1
            continue
        r.setdefault("utt_id", f"{manifest.stem}-{n}")
        rows.append({**r, "_audio": x})
    return rows, skipped


def evaluate_set(t, name: str, manifest: Path, out_dir: Path, max_rows: int | None = None, progress: bool = True,
                 keep_per_row: bool = False, terms: list[str] | None = None) -> dict:
    """Transcribe and score one set; ``keep_per_row`` returns each utterance's error counts too (for paired
    comparisons of two models on the same set; not written to metrics.json)."""
    rows, skipped = load_rows(manifest, max_rows, terms=terms)
    if not rows:
        raise EvaluationError(f"set {name!r} ({manifest}) has no usable rows: {dict(skipped) or 'empty manifest'}")
    from tqdm import tqdm

    lat, audio_s, conds = [], 0.0, []
    for r in tqdm(rows, desc=f"evaluate {name}", unit="utt", disable=not progress, mininterval=5):
        x = r.pop("_audio")
        conds.append(audio.stats(x))
        t0 = time.perf_counter()
        r["hypothesis"] = t.transcribe([x])[0]["text"]
        r["latency_s"] = time.perf_counter() - t0
        lat.append(r["latency_s"])
        audio_s += len(x) / audio.TARGET_SR
    scores = metrics.score_rows(rows)
    per_row = scores.pop("per_row")
    ci = metrics.bootstrap_ci(per_row)
    lat_sorted = sorted(lat)
    latency = {"p50_s": statistics.median(lat), "p95_s": lat_sorted[min(len(lat) - 1, int(0.95 * len(lat)))],
               "rtfx": audio_s / max(sum(lat), 1e-9), "audio_seconds": audio_s, "device": t.device}
    d = out_dir / name
    d.mkdir(parents=True, exist_ok=True)
    keep = ("utt_id", "audio_filepath", "text", "hypothesis", "latency_s", "duration", "accent_profile", "noise_band",
            "telephony", "origin", "domain", "voice", "condition", "term", "negated")
    with open(d / "hypotheses.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in keep if k in r}) + "\n")
    audio_stats = {k: statistics.mean(c[k] for c in conds) for k in conds[0]}
    result = {**scores, "ci": ci, "latency": latency, "audio": audio_stats, "manifest": str(manifest),
              "rows": {"scored": len(rows), "skipped": sum(skipped.values()), "skipped_by_reason": dict(skipped)},
              "hypotheses": str(d / "hypotheses.jsonl")}
    (d / "metrics.json").write_text(json.dumps(result, indent=1))
    return {**result, "per_row": per_row} if keep_per_row else result


def evaluate(args: dict, log=print) -> dict:
    from clinasr.inference import InferenceError
    from clinasr.reference import ReferenceError, is_reference, label, make_transcriber
    from clinasr.registry import RegistryError

    out = Path(args["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    sets = args.get("sets") or []
    if not sets:
        raise EvaluationError("no evaluation sets given")
    names = [s["name"] for s in sets]
    if len(set(names)) != len(names):
        raise EvaluationError(f"evaluation set names must be unique: {names}")
    try:
        t = make_transcriber(args["model"], out / "model", version=str(args.get("model_version", "")))
    except (RegistryError, FileNotFoundError, ReferenceError, InferenceError) as e:
        raise EvaluationError(f"model {args['model']}: {e}") from None
    warm = t.warm_up()
    size = f"{t.n_params / 1e6:.2f} M parameters" if t.n_params else "reference model"
    log(f"[evaluate] {args['model']}: {size} on {t.device} (warm-up {warm:.2f}s)")
    report = {"model": args["model"], "device": t.device, "n_params": t.n_params, "sets": {},
              "reference": is_reference(args["model"]), "label": label(args["model"]) if is_reference(args["model"]) else None}
    for s in sets:
        m = manifest_path(s["manifest"], out / s["name"])
        res = evaluate_set(t, s["name"], m, out, args.get("max_rows"), progress=args.get("progress", True),
                           terms=s.get("terms"))
        res["set_uri"] = s["manifest"]
        if s.get("config_hash"):
            res["config_hash"] = s["config_hash"]
        log(f"[evaluate] {s['name']}: WER {res['wer']:.3f}  KER {res['ker'] if res['ker'] is None else round(res['ker'], 3)}  "
            f"phantom terms {res['phantom_terms']['per_100_utterances']:.1f}/100  "
            f"negation acc {res['negation_accuracy']}  p95 {res['latency']['p95_s'] * 1000:.0f} ms  "
            f"({res['rows']['scored']} scored, {res['rows']['skipped']} skipped {res['rows']['skipped_by_reason']})")
        report["sets"][s["name"]] = res
    (out / "report.json").write_text(json.dumps(report, indent=1))
    report["report_path"] = str(out / "report.json")
    return report


def evaluate_stage(args: dict) -> dict:
    """ML-runtime entry point (``clinasr ml-stage evaluate``)."""
    return evaluate(args)
