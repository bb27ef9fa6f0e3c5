"""Build a synthetic clinical speech dataset: transcripts -> TTS across accents -> augmentation ->
NeMo manifests with provenance fields, a text-disjoint validation split, a quarantine list and a
dataset card.

Layout of a dataset directory (what is staged to S3 as a snapshot)::

    audio/<utt_id>.wav            16 kHz mono PCM16
    train_manifest.jsonl          NeMo JSONL (audio_filepath relative to the manifest)
    val_manifest.jsonl
    quarantine.jsonl              every dropped row with its reason
    dataset_card.json / .md       counts, hours, per-accent and per-term coverage, drop reasons
    coverage.png                  per-accent / per-term / duration plots

Re-running is idempotent: rendered rows are cached under ``rows/`` (outside the snapshot) and reused.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import yaml

from clinasr import audio as A
from clinasr.settings import REPO_ROOT, repo_path

DEFAULT_CONFIG = REPO_ROOT / "configs" / "synthesis.yaml"
TTS_ATTEMPTS = 2
POOL_RESTARTS = 3


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """A synthesis config (default configs/synthesis.yaml; a relative path is the repository's, as checked-in configs
    and the data stage's voice sets name them: ``settings.repo_path``) with ``overrides`` merged in."""
    cfg = yaml.safe_load(repo_path(path or DEFAULT_CONFIG).read_text())
    for k, v in (overrides or {}).items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


# ---- worker side --------------------------------------------------------------------------------
_BABBLE: list[np.ndarray] = []


def _init_worker(babble_path: str | None) -> None:
    global _BABBLE
    if babble_path and Path(babble_path).exists():
        bank = np.load(babble_path, allow_pickle=False)
        _BABBLE = [bank[k] for k in bank.files]


def render_row(utt: dict, voice: dict, cfg: dict, out_dir: str, augment_on: bool, seed: int) -> dict:
    """Render one utterance; returns a manifest row or a quarantine entry (``{"quarantine": reason}``)."""
    from clinasr.synth import augment as G
    from clinasr.synth import pronounce, tts

    v = tts.Voice(**voice)
    prons = pronounce.load(cfg.get("pronunciations") or pronounce.DEFAULT_PATH)
    spoken, overridden = pronounce.apply(utt["text"], v.engine, prons)
    rng = random.Random(f"{seed}|{utt['utt_id']}|voice")
    lim = cfg["limits"]
    error = None
    for attempt in range(TTS_ATTEMPTS):  # engines fail transiently now and then: retry, then quarantine
        try:
            x, params = tts.render(spoken, v, rng, cfg.get("voice_variation", {}))
            A.check(x, A.TARGET_SR, lim["min_duration_s"], lim["max_duration_s"], lim["min_rms"])
            break
        except (tts.TTSError, A.AudioError) as e:
            error = str(e)
        except Exception as e:  # an engine crash on one row must not end the run
            error = f"{type(e).__name__}: {e}"
    else:
        return {"utt_id": utt["utt_id"], "quarantine": f"{error} (after {TTS_ATTEMPTS} attempts)", "voice": v.voice_id,
                "stage": "tts"}
    applied: list[dict] = []
    if augment_on:
        aug_seed = int(hashlib.sha256(f"{seed}|{utt['utt_id']}|aug".encode()).hexdigest()[:8], 16)
        x, applied = G.augment(x, cfg["augmentation"], aug_seed, _BABBLE)
        try:
            A.check(x, A.TARGET_SR, lim["min_duration_s"], lim["max_duration_s"], lim["min_rms"] / 4)
        except A.AudioError as e:
            return {"utt_id": utt["utt_id"], "quarantine": f"after augmentation: {e}", "voice": v.voice_id,
                    "stage": "augment"}
    rel = f"audio/{utt['utt_id']}.wav"
    A.write_wav(Path(out_dir) / rel, x)
    return {
        "audio_filepath": rel, "duration": round(len(x) / A.TARGET_SR, 3), "text": utt["text"],
        "origin": "synthetic", "domain": utt.get("domain", "clinical"), "generator": utt["generator"],
        "template_id": utt["template_id"],
        "voice": v.voice_id, "accent_profile": v.accent_profile, "voice_params": params,
        "augmentations": applied, "noise_band": G.noise_band(applied),
        "telephony": any(a["type"] == "telephony" for a in applied), "seed": seed,
        "lexicon_version": utt["lexicon_version"], "term": utt["term"], "terms": utt["terms"],
        "negated": utt["negated"], "negation_cue": utt["negation_cue"], "utt_id": utt["utt_id"],
        **pronounce.provenance(overridden, prons),
    }


# ---- orchestration ------------------------------------------------------------------------------
def _assign_voices(utts: list[dict], voices: dict, mix: dict, seed: int) -> list[dict]:
    from clinasr.synth.tts import pick_voice

    out = []
    for u in utts:
        v = pick_voice(random.Random(f"{seed}|{u['utt_id']}|pick"), voices, mix)
        out.append({"engine": v.engine, "voice": v.voice, "accent_profile": v.accent_profile})
    return out


def _babble_bank(path: Path, voices: dict, cfg: dict, seed: int) -> None:
    """A few utterances of assorted voices, rendered once: the babble noise source."""
    if path.exists():
        return
    from clinasr.synth import tts

    lines = ["the patient in bed four needs a new line", "can someone call pharmacy about the order",
             "vitals are stable on the last check", "we are waiting on the labs from this morning",
             "please page the resident on call", "the family is asking about discharge"]
    flat = [v for vs in voices.values() for v in vs if v.engine == "espeak"] or [v for vs in voices.values() for v in vs]
    bank = {}
    for i, line in enumerate(lines):
        v = flat[i % len(flat)]
        try:
            bank[f"b{i}"], _ = tts.render(line, v, random.Random(seed + i), cfg.get("voice_variation", {}))
        except Exception:
            continue
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **bank)


def split_by_text(rows: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Text-disjoint split: every row of a given sentence lands on the same side. User datasets keep 0.10-0.20
    (``DatasetRequest``); a corpus of 100 h (the base model's) needs a smaller share for a validation set of
    thousands of rows."""
    if not 0.01 <= val_fraction <= 0.2:
        raise ValueError(f"val_fraction must be within 0.01-0.20 (got {val_fraction})")

    def h(t: str) -> float:
        return int(hashlib.sha256(f"{seed}|{t}".encode()).hexdigest()[:12], 16) / 16**12

    texts = sorted({r["text"] for r in rows}, key=h)
    n_val = max(1, round(len(texts) * val_fraction)) if len(texts) > 1 else 0
    val_texts = set(texts[:n_val])
    return [r for r in rows if r["text"] not in val_texts], [r for r in rows if r["text"] in val_texts]


def mix_real(real_manifest: str, n_synthetic: int, ratio: float, out_dir: Path, quarantine: list) -> list[dict]:
    """Rows of a user's real, de-identified manifest, at synthetic:real = ratio:1.

    A row needs ``deidentified: true`` (the de-identification attestation); its audio is checked and
    resampled into the dataset. Real transcripts are never logged or written to the quarantine file.
    """
    if ratio <= 0:
        raise ValueError("real_ratio (synthetic:real) must be positive")
    want = max(1, int(n_synthetic / ratio))
    rows = []
    base = Path(real_manifest).parent
    for i, line in enumerate(Path(real_manifest).read_text().splitlines()):
        if len(rows) >= want:
            break
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            if not r.get("deidentified"):
                raise ValueError("no de-identification attestation (deidentified: true)")
            text = r["text"]
            p = Path(r["audio_filepath"])
            x = A.load(p if p.is_absolute() else base / p)
            A.check(x, A.TARGET_SR, 0.2, 30.0, 1e-4)
        except (ValueError, KeyError, A.AudioError, json.JSONDecodeError) as e:
            quarantine.append({"utt_id": f"real-{i}", "origin": "real", "quarantine": f"line {i + 1}: {e}", "stage": "real"})
            continue
        from clinasr.textnorm import normalize

        uid = "real-" + hashlib.sha256(line.encode()).hexdigest()[:16]
        rel = f"audio/{uid}.wav"
        A.write_wav(out_dir / rel, x)
        rows.append({"audio_filepath": rel, "duration": round(len(x) / A.TARGET_SR, 3), "text": normalize(text),
                     "origin": "real", "generator": "human", "voice": r.get("speaker", "unknown"),
                     "accent_profile": r.get("accent_profile", "real"), "augmentations": [], "noise_band": "real",
                     "domain": r.get("domain", "clinical"),
                     "telephony": False, "deidentified": True, "source_manifest": str(real_manifest), "utt_id": uid,
                     "terms": [], "term": None, "negated": None, "negation_cue": None})
    return rows


def write_manifest(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def dataset_card(out_dir: Path, train: list[dict], val: list[dict], quarantine: list[dict], meta: dict) -> dict:
    rows = train + val
    by = lambda key: {k: sum(1 for r in rows if r.get(key) == k) for k in sorted({str(r.get(key)) for r in rows})}  # noqa: E731
    per_term: dict[str, int] = {}
    for r in rows:
        if r.get("term"):
            per_term[r["term"]] = per_term.get(r["term"], 0) + 1
    reasons: dict[str, int] = {}
    for q in quarantine:
        key = q["quarantine"].split(":")[0][:80]
        reasons[key] = reasons.get(key, 0) + 1
    card = {
        **meta,
        "counts": {"train": len(train), "val": len(val), "quarantined": len(quarantine),
                   "synthetic": sum(r["origin"] == "synthetic" for r in rows), "real": sum(r["origin"] == "real" for r in rows)},
        "hours": {"train": round(sum(r["duration"] for r in train) / 3600, 4),
                  "val": round(sum(r["duration"] for r in val) / 3600, 4)},
        "per_accent_profile": {k: v for k, v in by("accent_profile").items()},
        "per_voice": by("voice"), "per_noise_band": by("noise_band"), "per_term": per_term,
        "negated_rows": sum(1 for r in rows if r.get("negated")),
        "dropped": {"quarantine_reasons": reasons, **meta.get("dropped", {})},
    }
    (out_dir / "dataset_card.json").write_text(json.dumps(card, indent=1))
    md = [f"# Dataset card — {meta.get('name', out_dir.name)}", "",
          f"- rows: {card['counts']['train']} train / {card['counts']['val']} validation "
          f"({card['hours']['train'] * 60:.1f} / {card['hours']['val'] * 60:.1f} minutes)",
          f"- origin: {card['counts']['synthetic']} synthetic, {card['counts']['real']} real",
          f"- generator: {meta.get('generator')}, seed {meta.get('seed')}, lexicon {meta.get('lexicon_version')}",
          f"- quarantined: {len(quarantine)} ({', '.join(f'{k}: {v}' for k, v in reasons.items()) or 'none'})",
          f"- dropped before synthesis: {meta.get('dropped') or 'none'}", "", "## Accent profiles", ""]
    md += [f"- {k}: {v}" for k, v in card["per_accent_profile"].items()]
    md += ["", "## Terms (utterances per priority term)", ""] + [f"- {k}: {v}" for k, v in sorted(per_term.items())]
    md += ["", "![coverage](coverage.png)", ""]
    (out_dir / "dataset_card.md").write_text("\n".join(md))
    _plot_card(out_dir / "coverage.png", card, rows)
    return card


def _plot_card(path: Path, card: dict, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    acc = card["per_accent_profile"]
    ax[0].bar(list(acc), list(acc.values()), color="#4477aa")
    ax[0].set_title("utterances per accent profile")
    terms = sorted(card["per_term"].items(), key=lambda kv: -kv[1])[:25]
    ax[1].barh([t for t, _ in terms][::-1], [n for _, n in terms][::-1], color="#66ccee")
    ax[1].set_title("utterances per priority term (top 25)")
    ax[1].tick_params(axis="y", labelsize=7)
    ax[2].hist([r["duration"] for r in rows], bins=20, color="#228833")
    ax[2].set_title("duration (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def build_dataset(out_dir: Path, utterances: list[dict], *, config: dict, seed: int = 0, workers: int = 2,
                  val_fraction: float = 0.15, augment_on: bool = True, accent_profiles: list[str] | None = None,
                  real_manifest: str | None = None, real_ratio: float = 5.0, meta: dict | None = None,
                  cache_dir: Path | None = None, progress: bool = True) -> dict:
    from clinasr.synth import tts

    out_dir = Path(out_dir)
    cache = Path(cache_dir or out_dir.parent / f".{out_dir.name}-rows")
    out_dir.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    if not utterances:
        raise ValueError("no transcripts to synthesise (empty term list or every transcript was dropped)")
    voices, voice_problems = tts.check_voices(tts.voices_from_config(config, accent_profiles))
    if not voices:
        raise ValueError("no usable voice: " + "; ".join(voice_problems))
    mix = {k: v for k, v in config["accent_mix"].items() if k in voices}
    picks = _assign_voices(utterances, voices, mix, seed)
    babble_path = cache / "babble_bank.npz"
    if augment_on:
        _babble_bank(babble_path, voices, config, seed)

    rows, quarantine, todo = [], [], []
    for u, v in zip(utterances, picks):
        cached = cache / f"{u['utt_id']}.json"
        if cached.exists() and (("quarantine" in (r := json.loads(cached.read_text())))
                                or (out_dir / r["audio_filepath"]).exists()):
            (quarantine if "quarantine" in r else rows).append(r)
        else:
            todo.append((u, v))
    bar = _progress(len(utterances), len(utterances) - len(todo), progress)
    if todo:
        _render_all(todo, config, out_dir, cache, augment_on, seed, workers, babble_path, rows, quarantine, bar)
    bar.close()
    if real_manifest:
        rows += mix_real(real_manifest, len(rows), real_ratio, out_dir, quarantine)
    if not rows:
        raise ValueError(_all_quarantined(out_dir, quarantine))
    rows.sort(key=lambda r: r["utt_id"])
    train, val = split_by_text(rows, val_fraction, seed)
    write_manifest(out_dir / "train_manifest.jsonl", train)
    write_manifest(out_dir / "val_manifest.jsonl", val)
    write_manifest(out_dir / "quarantine.jsonl", sorted(quarantine, key=lambda q: q["utt_id"]))
    meta = {**(meta or {}), "seed": seed, "augmentation": augment_on, "val_fraction": val_fraction,
            "voices_unavailable": voice_problems}
    card = dataset_card(out_dir, train, val, quarantine, meta)
    # stale audio from an earlier attempt with other parameters must not enter the snapshot
    keep = {r["audio_filepath"] for r in rows}
    for p in (out_dir / "audio").glob("*.wav"):
        if f"audio/{p.name}" not in keep:
            p.unlink()
    return {"dataset_dir": str(out_dir), "train_manifest": str(out_dir / "train_manifest.jsonl"),
            "val_manifest": str(out_dir / "val_manifest.jsonl"), "card": card}


def _all_quarantined(out_dir: Path, quarantine: list[dict]) -> str:
    """Nothing was rendered: keep the quarantine file (it says why, row by row), remove the manifests of an earlier
    build (a stale dataset must not pass for this one) and return the error: the count, the commonest reasons and
    where the file is."""
    import re

    path = out_dir / "quarantine.jsonl"
    write_manifest(path, sorted(quarantine, key=lambda q: q["utt_id"]))
    for stale in ("train_manifest.jsonl", "val_manifest.jsonl", "dataset_card.json", "dataset_card.md"):
        (out_dir / stale).unlink(missing_ok=True)
    reasons: dict[str, int] = {}
    for q in quarantine:    # numbers vary row by row ("audio too long (3.1s > 0.5s)"): one reason, counted once
        key = re.sub(r"\d+(\.\d+)?", "N", q["quarantine"])[:120]
        reasons[key] = reasons.get(key, 0) + 1
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
    return (f"every utterance was quarantined ({len(quarantine)}), so there is no dataset: "
            + "; ".join(f"{n} x {k!r}" for k, n in top) + (f"; {len(reasons) - 3} other reasons" if len(reasons) > 3 else "")
            + f" — every row and its reason: {path}")


def _render_all(todo, config, out_dir, cache, augment_on, seed, workers, babble_path, rows, quarantine, bar,
                render=None) -> None:
    """Render rows in worker processes. A worker that dies (a native crash in a TTS engine) breaks the
    whole pool and fails every queued row with it; those rows go to a fresh pool, up to POOL_RESTARTS times,
    and only then are quarantined ("worker failed"). Nothing a dead worker lost is cached: a retry
    re-renders it."""
    # spawn, not fork: the TTS engines hold native state (espeak callbacks, onnxruntime threads)
    # that does not survive a fork of a parent that has used them.
    import multiprocessing as mp
    from concurrent.futures.process import BrokenProcessPool

    pending, why = list(todo), ""
    for _ in range(POOL_RESTARTS + 1):
        lost = []
        with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(str(babble_path) if augment_on else None,)) as pool:
            futs = {pool.submit(render or render_row, u, v, config, str(out_dir), augment_on, seed): (u, v) for u, v in pending}
            for f in as_completed(futs):
                u, v = futs[f]
                try:
                    r = f.result()
                except BrokenProcessPool as e:
                    lost.append((u, v))
                    why = str(e) or "a worker process died"
                    continue
                except Exception as e:  # the row's task failed in a way render_row did not catch
                    r = {"utt_id": u["utt_id"], "quarantine": f"worker failed: {type(e).__name__}: {e}", "stage": "tts"}
                else:  # cache only what the row itself decided: a retry re-renders rows a dead worker lost
                    (cache / f"{u['utt_id']}.json").write_text(json.dumps(r))
                (quarantine if "quarantine" in r else rows).append(r)
                bar.update(1)
        if not lost:
            return
        pending = lost
    for u, _ in pending:
        quarantine.append({"utt_id": u["utt_id"], "quarantine": f"worker failed: {why} ({POOL_RESTARTS} pool restarts)",
                           "stage": "tts"})
        bar.update(1)


def _progress(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="synthesising", unit="utt", disable=not enabled, mininterval=2.0)


def build_dataset_stage(args: dict) -> dict:
    """ML-runtime entry point (``clinasr ml-stage synthesize``): training data, so the held-out voices and
    engine of the evaluation sets are refused (clinasr.evalsets)."""
    from clinasr.evalsets import check_training_voices

    transcripts = [json.loads(line) for line in Path(args["transcripts"]).read_text().splitlines() if line.strip()]
    cfg = load_config(args.get("config"), args.get("config_overrides"))
    check_training_voices(cfg, args.get("accent_profiles"))
    out = build_dataset(Path(args["out_dir"]), transcripts, config=cfg, seed=int(args.get("seed", 0)),
                        workers=int(args.get("workers", 2)), val_fraction=float(args.get("val_fraction", 0.15)),
                        augment_on=bool(args.get("augment", True)), accent_profiles=args.get("accent_profiles"),
                        real_manifest=args.get("real_manifest"), real_ratio=float(args.get("real_ratio", 5.0)),
                        meta=args.get("meta"))
    return out


def clean(out_dir: Path) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(out_dir.parent / f".{out_dir.name}-rows", ignore_errors=True)
