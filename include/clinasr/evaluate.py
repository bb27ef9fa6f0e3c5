"""Evaluation (ML runtime): transcribe held-out sets with a model and score them.

``evaluate_stage(args)`` is ``clinasr ml-stage evaluate``. Arguments (JSON):

    model        .nemo path, s3:// URI or registry reference (models:/name@alias, models:/name/N)
    sets         [{"name": "validation", "manifest": <dataset dir | s3:// snapshot | manifest .jsonl>}, ...]
                 a dataset dir or snapshot means its val_manifest.jsonl
    output_dir   hypotheses.jsonl and metrics.json per set go to <output_dir>/<set>/
    max_rows     optional cap per set (in manifest order)
    max_utterances   optional: score a fixed seeded sample of at most this many usable rows per set
                     (:func:`sample_rows`; the result's ``sample`` says n of N); the gate config's
                     ``reference_max_utterances`` for reference models
    transcript_cache optional directory: the model's transcripts are kept there and reused when the same model
                     (same weights, decoding, code and packages) decodes the same audio again
                     (:class:`TranscriptCache`); scores are always recomputed from them
                     (``reference_cache``: the same, read for reference models only)

Every manifest row is either scored or counted as skipped with its reason (bad JSON, no text, audio
missing/undecodable/empty/too long); nothing is dropped silently. Latency is measured per utterance
(batch of one, as a served request) after a warm-up; RTFx = audio seconds / compute seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path

from clinasr import audio, metrics, phantom_guard


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


SAMPLE_SEED = "clinasr-sample-1"
SAMPLE_STRATA = ("voice", "noise_band")   # what moves WER most on our sets (a reference's WER spans 0.03-1.1 by voice)


def sample_rows(rows: list[dict], n: int | None, seed: str = SAMPLE_SEED) -> list[dict]:
    """At most ``n`` of ``rows``, the same ones every time for the same rows, stratified: the rows are ordered
    by voice, noise band and a seeded sha256 of (audio path, text), and ``n`` are taken at even steps through
    that order, so every voice and noise band keeps its share of the set (a simple random 12 of 166 once left
    out two of five voices and read WER 0.16 for a set at 0.56). Kept in manifest order."""
    if not n or len(rows) <= n:
        return rows

    def order(r: dict) -> tuple:
        draw = hashlib.sha256(f"{seed}\0{r.get('audio_filepath')}\0{r.get('text')}".encode()).hexdigest()
        return tuple(str(r.get(k, "")) for k in SAMPLE_STRATA) + (draw,)

    ordered = sorted(rows, key=order)
    keep = {id(ordered[int((j + 0.5) * len(ordered) / n)]) for j in range(n)}
    return [r for r in rows if id(r) in keep]


def model_identity(path: Path) -> dict:
    """What decides one of our models' transcripts, read without loading it: the .nemo's sha256 (weights, an embedded
    LM and its decoding spec), the decoding switches of the environment, the source of the code that decodes
    (Transcriber, LM fusion, the phantom guard, the normaliser), package versions and the device."""
    import torch

    from clinasr.reference import package_version as ver
    from clinasr.store import sha256_file

    code = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for mod in ("inference", "lm", "fusion_cpu", "phantom_guard", "textnorm", "nemo_fixes"):
        code.update((here / f"{mod}.py").read_bytes())
    return {"kind": "nemo", "weights_sha256": sha256_file(path), "code_sha256": code.hexdigest(),
            "env": {k: os.environ.get(k) for k in ("CLINASR_DECODING", "CLINASR_BF16_MIN_BATCH")},
            "nemo_toolkit": ver("nemo_toolkit"), "torch": ver("torch"),
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


class TranscriptCache:
    """A model's transcripts of one set, reused when the same model decodes the same audio again (a reference
    model in every evaluation run; the production model, scored as the baseline of each candidate on unchanged
    sets; a candidate scored again in an override run).

    The key is the model's identity (:func:`clinasr.reference.identity` for a reference: spec, weights, decoding
    options, package versions, weight type, device; :func:`model_identity` for ours) and the sha256 of every
    decoded 16 kHz array, in order: another set
    snapshot, another sample or another term selection is another key. Transcripts and per-utterance latency
    are cached, not scores: the normaliser and metrics are re-run on every evaluation, so a change to them
    applies at once and needs no cache version."""

    def __init__(self, directory: str | Path, identity: dict, label: str = ""):
        self.dir, self.identity, self.label = Path(directory), identity, label or identity.get("spec", "model")

    def key(self, audio_sha256: list[str]) -> str:
        return hashlib.sha256(json.dumps({"model": self.identity, "audio": audio_sha256},
                                         sort_keys=True).encode()).hexdigest()[:32]

    def get(self, key: str, audio_sha256: list[str]) -> dict | None:
        try:
            entry = json.loads((self.dir / f"{key}.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return entry if [r["audio_sha256"] for r in entry.get("rows", [])] == audio_sha256 else None

    def put(self, key: str, rows: list[dict], audio_sha256: list[str], device: str, n_params,
            meta: dict | None = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        entry = {"key": key, "identity": self.identity, "device": device, "n_params": n_params, "meta": meta or {},
                 "rows": [{"audio_sha256": h, "utt_id": r.get("utt_id"), "hypothesis": r["hypothesis"],
                           "latency_s": r["latency_s"]} for r, h in zip(rows, audio_sha256)]}
        tmp = self.dir / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(entry))
        tmp.replace(self.dir / f"{key}.json")   # atomic: a concurrent reader sees the whole entry or none


def evaluate_set(t, name: str, manifest: Path, out_dir: Path, max_rows: int | None = None, progress: bool = True,
                 keep_per_row: bool = False, terms: list[str] | None = None, max_utterances: int | None = None,
                 cache: TranscriptCache | None = None, log=print) -> dict:
    """Transcribe and score one set; ``keep_per_row`` returns each utterance's error counts too (for paired
    comparisons of two models on the same set; not written to metrics.json). ``max_utterances``: a fixed
    sample of the usable rows (:func:`sample_rows`). ``cache``: transcripts of the same audio by the same model
    are reused, ``t`` is not called; ``t`` may be loaded lazily (only ``transcribe`` and ``device`` are used)."""
    rows, skipped = load_rows(manifest, max_rows, terms=terms)
    if not rows:
        raise EvaluationError(f"set {name!r} ({manifest}) has no usable rows: {dict(skipped) or 'empty manifest'}")
    usable = len(rows)
    rows = sample_rows(rows, max_utterances)
    from tqdm import tqdm

    conds = [audio.stats(r["_audio"]) for r in rows]
    audio_s = sum(len(r["_audio"]) for r in rows) / audio.TARGET_SR
    hit, key, guard = None, None, None
    if cache is not None:
        shas = [hashlib.sha256(r["_audio"].tobytes()).hexdigest() for r in rows]
        key = cache.key(shas)
        hit = cache.get(key, shas)
    if hit:
        for r, c in zip(rows, hit["rows"]):
            r.pop("_audio")
            r["hypothesis"], r["latency_s"] = c["hypothesis"], c["latency_s"]
        device, n_params = hit["device"], hit["n_params"]
        guard = (hit.get("meta") or {}).get("phantom_guard")
        log(f"[evaluate] {cache.label} on {name}: cached transcripts (key {key}), {len(rows)} utterances not "
            "decoded again, scored afresh")
    else:
        stats = getattr(t, "guard_stats", None)   # the phantom guard's counts (a model with an n-gram LM)
        before = dict(stats) if stats is not None else None
        for r in tqdm(rows, desc=f"evaluate {name}", unit="utt", disable=not progress, mininterval=5):
            x = r.pop("_audio")
            t0 = time.perf_counter()
            r["hypothesis"] = t.transcribe([x])[0]["text"]
            r["latency_s"] = time.perf_counter() - t0
        device, n_params = t.device, getattr(t, "n_params", None)
        guard = phantom_guard.counted(before, stats)
        if cache is not None:
            cache.put(key, rows, shas, device, n_params,
                      {"phantom_guard": guard, "decoding": getattr(t, "decoding", None)})
            log(f"[evaluate] {cache.label} on {name}: decoded, transcripts cached (key {key})")
    lat = [r["latency_s"] for r in rows]
    scores = metrics.score_rows(rows)
    per_row = scores.pop("per_row")
    ci = metrics.bootstrap_ci(per_row)
    lat_sorted = sorted(lat)
    latency = {"p50_s": statistics.median(lat), "p95_s": lat_sorted[min(len(lat) - 1, int(0.95 * len(lat)))],
               "rtfx": audio_s / max(sum(lat), 1e-9), "audio_seconds": audio_s, "device": device}
    if hit:
        latency["cached"] = True   # measured when the transcripts were made
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
    if guard:   # chunks the guard checked, and those where the LM wrote a term the greedy reading did not support
        result["phantom_guard"] = guard
    if len(rows) < usable:   # a sample: the CI above is this sample's
        result["sample"] = {"scored": len(rows), "of": usable, "seed": SAMPLE_SEED}
    if cache is not None:
        result["transcripts"] = {"cache_key": key, "cached": bool(hit), "n_params": n_params}
        if hit and (hit.get("meta") or {}).get("decoding"):
            result["transcripts"]["decoding"] = hit["meta"]["decoding"]
    (d / "metrics.json").write_text(json.dumps(result, indent=1))
    return {**result, "per_row": per_row} if keep_per_row else result


class _Lazy:
    """A transcriber made on first use (``make()``): a reference whose every set is cached is never loaded."""

    def __init__(self, make):
        self._make, self.loaded = make, None

    def __getattr__(self, name):
        if self.loaded is None:
            self.loaded = self._make()
        return getattr(self.loaded, name)


def evaluate(args: dict, log=print) -> dict:
    from clinasr.inference import InferenceError
    from clinasr.reference import ReferenceError, identity, is_reference, label, make_transcriber
    from clinasr.registry import RegistryError, fetch_model

    out = Path(args["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    sets = args.get("sets") or []
    if not sets:
        raise EvaluationError("no evaluation sets given")
    names = [s["name"] for s in sets]
    if len(set(names)) != len(names):
        raise EvaluationError(f"evaluation set names must be unique: {names}")

    ref = is_reference(args["model"])
    source = args["model"]
    if not ref:   # ours: the local file first (its sha256 keys the transcript cache)
        try:
            source = str(fetch_model(args["model"], out / "model"))
        except (RegistryError, FileNotFoundError) as e:
            raise EvaluationError(f"model {args['model']}: {e}") from None

    def load():
        try:
            t = make_transcriber(source, out / "model", version=str(args.get("model_version", "")))
        except (RegistryError, FileNotFoundError, ReferenceError, InferenceError) as e:
            raise EvaluationError(f"model {args['model']}: {e}") from None
        warm = t.warm_up()
        size = f"{t.n_params / 1e6:.2f} M parameters" if t.n_params else "reference model"
        dec = getattr(t, "decoding", None)
        log(f"[evaluate] {args['model']}: {size} on {t.device} (warm-up {warm:.2f}s)"
            + (f", decoding {json.dumps(dec)}" if dec else ""))
        return t

    cache = None
    cache_dir = args.get("transcript_cache") or (args.get("reference_cache") if ref else None)
    if cache_dir:
        try:
            cache = TranscriptCache(cache_dir, identity(args["model"]), label(args["model"])) if ref else \
                TranscriptCache(cache_dir, model_identity(Path(source)), args["model"])
        except ReferenceError as e:
            raise EvaluationError(f"model {args['model']}: {e}") from None
    # with a cache the model is loaded only when a set must be decoded
    t = _Lazy(load) if cache else load()
    report = {"model": args["model"], "sets": {}, "reference": ref, "label": label(args["model"]) if ref else None}
    for s in sets:
        m = manifest_path(s["manifest"], out / s["name"])
        res = evaluate_set(t, s["name"], m, out, args.get("max_rows"), progress=args.get("progress", True),
                           terms=s.get("terms"), max_utterances=args.get("max_utterances"), cache=cache, log=log)
        res["set_uri"] = s["manifest"]
        sampled = f": a fixed sample of {res['sample']['of']} usable rows" if res.get("sample") else ""
        if s.get("config_hash"):
            res["config_hash"] = s["config_hash"]
        log(f"[evaluate] {s['name']}: WER {res['wer']:.3f}  KER {res['ker'] if res['ker'] is None else round(res['ker'], 3)}  "
            f"phantom terms {res['phantom_terms']['per_100_utterances']:.1f}/100  "
            f"negation acc {res['negation_accuracy']}  p95 {res['latency']['p95_s'] * 1000:.0f} ms  "
            + (f"phantom guard {res['phantom_guard']['vetoed']} of {res['phantom_guard']['chunks']} chunks vetoed  "
               if res.get("phantom_guard") else "") +
            f"({res['rows']['scored']} scored{sampled}, {res['rows']['skipped']} skipped {res['rows']['skipped_by_reason']})")
        report["sets"][s["name"]] = res
    if isinstance(t, _Lazy) and t.loaded is None:   # every set from the cache: the model as the cache recorded it
        first = next(iter(report["sets"].values()))
        report.update(device=first["latency"]["device"], n_params=first["transcripts"]["n_params"])
        if first["transcripts"].get("decoding"):
            report["decoding"] = first["transcripts"]["decoding"]
    else:
        report.update(device=t.device, n_params=t.n_params)
        if getattr(t, "decoding", None):
            report["decoding"] = t.decoding   # greedy, or beam search with the model's own n-gram LM (clinasr.lm)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    report["report_path"] = str(out / "report.json")
    return report


def evaluate_stage(args: dict) -> dict:
    """ML-runtime entry point (``clinasr ml-stage evaluate``)."""
    return evaluate(args)
