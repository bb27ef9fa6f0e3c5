"""Evaluation sets the gate always uses, and the general-English replay source of fine-tunes.

A validation split cut from a training dataset shares its voices and sentence shapes and flatters the
model; the gate decides on sets no training run could have seen (configs/evalsets.yaml):

``clinical_heldout``  priority terms in grammar template family ``b`` (no training set uses it), spoken by
                      held-out espeak-ng voices and a whole held-out TTS engine (Piper).
``general_heldout``   everyday English that no training text contains, held-out voices and engine, each
                      sentence once clean and once in hospital noise: what fine-tuning must not forget,
                      and where a phantom drug is easiest to see.
``general_replay``    general speech in the *training* voices from the base model's own text: mixed into
                      every fine-tune (rows carry ``domain: general``) so it keeps what the base knew.
                      ``with_voices_of: SYNTHESIS_CONFIG`` adds the clinical set's voices the base lacks, at
                      their clinical share (:func:`add_voices_of`; measured, not used by default).

Each set is content-addressed twice: its **config hash** (its part of the YAML plus the text, lexicon,
synthesis config and builder it depends on) decides whether it must be rebuilt; its **snapshot** (the
object store's content-addressed upload) is what is evaluated. An index object
``s3://<bucket>/evalsets/<name>/index/<config hash>.json`` points from one to the other; :func:`resolve`
fails closed, naming the set, when the current config hash has no snapshot (missing, or stale after a
config change).

Pure Python on the orchestration side (hashing, resolving, voice checks); :func:`build_set` runs in the ML
runtime (``clinasr ml-stage evalset``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from clinasr.settings import REPO_ROOT, Settings, load_versioned_yaml, repo_path

DEFAULT_CONFIG = "configs/evalsets.yaml"
BUILDER_VERSION = 3            # bump when build_set changes what it writes: every set is rebuilt (2: rows cached per render config;
                               # 3: reproducible audio, espeak-ng forked per utterance and Piper seeded per row)
TEST_MANIFEST = "test_manifest.jsonl"


class EvalSetError(RuntimeError):
    """An evaluation or replay set is missing, stale or unusable; the message names it and what to run."""


def load_config(path: str | Path | None = None) -> dict:
    """configs/evalsets.yaml, or the file named by CLINASR_EVALSETS_CONFIG (tests use a small one)."""
    import os

    path = path or os.environ.get("CLINASR_EVALSETS_CONFIG") or DEFAULT_CONFIG
    cfg = load_versioned_yaml(path, ("heldout", "sets"), "evaluation-set config", EvalSetError)
    cfg.setdefault("replay", {})
    return cfg


def names(cfg: dict) -> list[str]:
    return list(cfg["sets"]) + list(cfg["replay"])


def spec(cfg: dict, name: str) -> dict:
    if name in cfg["sets"]:
        return {**cfg["sets"][name], "role": "evaluation"}
    if name in cfg["replay"]:
        return {**cfg["replay"][name], "role": "replay"}
    raise EvalSetError(f"no evaluation or replay set {name!r} in {cfg['path']} (known: {', '.join(names(cfg))})")


def _file_sha(path: str | Path, what: str = "text source") -> str:
    from clinasr.store import sha256_file

    p = repo_path(path)
    if not p.exists():
        raise EvalSetError(f"{what} {p} does not exist")
    return sha256_file(p)


def config_hash(cfg: dict, name: str) -> str:
    """What the set's audio depends on: its config, the held-out voices (or, for replay, the training voices),
    its text source, the lexicon, the synthesis config (augmentation, limits) and the builder version."""
    s = spec(cfg, name)
    deps = {"spec": s, "builder": BUILDER_VERSION, "lexicon": shipped_lexicon().version,
            "synthesis": _file_sha(REPO_ROOT / "configs" / "synthesis.yaml")}
    if s["role"] == "evaluation":
        deps["heldout"] = cfg["heldout"]
    if s.get("text"):
        deps["text"] = _file_sha(s["text"])
    if s.get("voices") == "base":
        deps["base_voices"] = {k: _base_config(s).get(k) for k in ("voices", "accent_mix", "voice_variation")}
    if s.get("with_voices_of"):
        deps["with_voices_of"] = _file_sha(s["with_voices_of"], f"{name}: with_voices_of: the synthesis config")
    return hashlib.sha256(json.dumps(deps, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shipped_lexicon():
    """The lexicon the sets are built from: the shipped file, without an installation's reviewed additions (a
    drug a reviewer adds from drift feedback must not silently change, or invalidate, the gate's sets)."""
    from clinasr.synth.lexicon import LEXICON_PATH, load_lexicon

    return load_lexicon(str(LEXICON_PATH))


# ---- held-out voices ---------------------------------------------------------------------------------
def heldout_voices(cfg: dict) -> tuple[set[str], set[str]]:
    """(voice ids "engine:voice", engines) that no training set may use."""
    ids = {f"{v['engine']}:{v['voice']}" for vs in cfg["heldout"]["voices"].values() for v in vs}
    return ids, set(cfg["heldout"].get("engines") or [])


def check_training_voices(synthesis_cfg: dict, accent_profiles: list[str] | None = None,
                          cfg: dict | None = None) -> None:
    """Refuse a training-data synthesis config that speaks in a held-out voice or engine: a model that trained
    on them would be judged on what it has heard."""
    cfg = cfg or load_config()
    ids, engines = heldout_voices(cfg)
    bad = sorted({f"{v['engine']}:{v['voice']}" for p, vs in synthesis_cfg["accent_profiles"].items()
                  if not accent_profiles or p in accent_profiles for v in vs
                  if f"{v['engine']}:{v['voice']}" in ids or v["engine"] in engines})
    if bad:
        raise EvalSetError(f"the synthesis config uses held-out voices for training data: {', '.join(bad)}. "
                           f"They are reserved for the evaluation sets ({cfg['path']}: heldout); remove them from "
                           "the accent profiles")


# ---- resolving built sets ------------------------------------------------------------------------------
def index_uri(settings: Settings, name: str, chash: str | None = None) -> str:
    base = f"s3://{settings.bucket}/evalsets/{name}/index"
    return f"{base}/{chash}.json" if chash else base


def resolve(name: str, cfg: dict | None = None, settings: Settings | None = None) -> dict:
    """The snapshot of ``name`` built from the current config: {"name", "uri", "config_hash", ...}.
    Fails closed: a set never built, or built only from an older config, raises :class:`EvalSetError`."""
    from clinasr.store import SNAPSHOT_MARKER, ObjectStore, StoreError

    cfg = cfg or load_config()
    settings = settings or Settings.from_env()
    chash = config_hash(cfg, name)
    store = ObjectStore(settings)
    how = "run the clinasr_evaluation_sets DAG or `clinasr evalsets build`"
    try:
        entry = json.loads(store.get_bytes(index_uri(settings, name, chash)))
    except FileNotFoundError:
        try:
            older = [k.rsplit("/", 1)[-1].removesuffix(".json") for k in store.list_keys(index_uri(settings, name) + "/")]
        except (FileNotFoundError, StoreError):
            older = []
        if older:
            raise EvalSetError(f"evaluation set {name!r} is stale: it was built from another config "
                               f"({', '.join(sorted(older)[:3])}), the current one is {chash} ({cfg['path']}); {how}") from None
        raise EvalSetError(f"evaluation set {name!r} has not been built (config {chash}); {how}") from None
    except StoreError as e:
        if "NoSuchBucket" in str(e):
            raise EvalSetError(f"evaluation set {name!r} has not been built (bucket {settings.bucket} does not exist "
                               f"yet); {how}") from None
        raise EvalSetError(f"evaluation set {name!r}: {e}") from None
    if not store.exists(f"{entry['uri']}/{SNAPSHOT_MARKER}"):
        raise EvalSetError(f"evaluation set {name!r}: its snapshot {entry['uri']} is gone from the object store; {how}")
    return entry


def status(cfg: dict | None = None, settings: Settings | None = None) -> list[dict]:
    cfg = cfg or load_config()
    out = []
    for n in names(cfg):
        try:
            e = resolve(n, cfg, settings)
            out.append({"name": n, "state": "current", **e})
        except EvalSetError as e:
            out.append({"name": n, "state": "stale" if "stale" in str(e) else "missing", "config_hash": config_hash(cfg, n),
                        "error": str(e)})
    return out


def record(name: str, cfg: dict, snapshot: dict, card: dict, settings: Settings | None = None) -> dict:
    """Point the current config hash at a staged snapshot (idempotent)."""
    from clinasr.store import ObjectStore

    settings = settings or Settings.from_env()
    entry = {"name": name, "uri": snapshot["uri"], "snapshot_id": snapshot["snapshot_id"], "digest": snapshot["digest"],
             "config_hash": config_hash(cfg, name), "config_version": cfg["version"], "role": spec(cfg, name)["role"],
             "rows": card.get("rows"), "hours": card.get("hours"),
             "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    ObjectStore(settings).put_bytes(json.dumps(entry, indent=1).encode(), index_uri(settings, name, entry["config_hash"]))
    return entry


# ---- building (ML runtime) ------------------------------------------------------------------------------
def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def eval_sentences(path: str | Path) -> list[str]:
    from clinasr.textnorm import normalize

    p = repo_path(path)
    if p.suffix == ".gz":
        from clinasr.synth import general

        return general.load(p)
    return [normalize(x) for x in p.read_text().splitlines() if x.strip() and not x.startswith("#")]


def check_general_text(sentences: list[str]) -> dict:
    """An everyday-English evaluation text must share no sentence with any training text (the base model's
    general_en texts, v1 and v2; the clinical grammar cannot produce such sentences) and name no lexicon term (a term in
    the reference would hide a phantom)."""
    from clinasr import metrics
    from clinasr.synth import general

    training = set(general.load()) | (set(general.load(general.TEXT_V2_PATH)) if general.TEXT_V2_PATH.exists() else set())
    overlap = [s for s in sentences if s in training]
    if overlap:
        raise EvalSetError(f"{len(overlap)} general evaluation sentences are in the base model's training text, e.g. "
                           f"{overlap[0]!r}: remove them")
    with_terms = [s for s in sentences if metrics.lexicon_terms(s)]
    if with_terms:
        raise EvalSetError(f"{len(with_terms)} general evaluation sentences name a lexicon term, e.g. {with_terms[0]!r}")
    return {"sentences": len(sentences), "overlap_with_training_text": 0, "lexicon_terms": 0}


def _utterances(s: dict, name: str) -> tuple[list[dict], dict]:
    """Transcript rows for a set, and what the card says about their text."""
    if s["kind"] == "clinical":
        from clinasr.synth.lexicon import load_terms
        from clinasr.synth.transcripts import generate_transcripts

        lex = shipped_lexicon()
        terms = load_terms(s.get("terms"), lex)
        if terms.unknown:
            raise EvalSetError(f"{name}: terms not in the lexicon: {', '.join(terms.unknown)}")
        gen = generate_transcripts(lex, terms, int(s["per_term"]), seed=int(s["seed"]),
                                   template_family=s.get("template_family", "b"))
        utts = [{**u.to_dict(), "domain": "clinical"} for u in gen["utterances"]]
        return utts, {"text": f"grammar templates family {s.get('template_family', 'b')}", "terms": terms.terms,
                      "dropped": gen["dropped"], "lexicon_version": lex.version}
    if s["kind"] == "general":
        from clinasr.synth import general

        path = repo_path(s["text"])
        if s["role"] == "replay":
            utts = general.utterances(int(s.get("utterances", 1000)), seed=int(s["seed"]), path=path)
            info = {"text": str(s["text"]), "source_version": general.source_version(path)}
        else:
            sents = eval_sentences(path)
            info = {"text": str(s["text"]), **check_general_text(sents)}
            sents = sents[: int(s["sentences"])] if s.get("sentences") else sents
            utts = [{"utt_id": hashlib.sha256(f"{name}|{i}|{t}".encode()).hexdigest()[:16], "text": t, "term": None,
                     "terms": [], "negated": False, "negation_cue": None, "generator": f"text:{path.name}",
                     "template_id": "general", "seed": int(s["seed"]), "lexicon_version": "n/a"}
                    for i, t in enumerate(sents)]
        return [{**u, "domain": "general"} for u in utts], info
    raise EvalSetError(f"{name}: kind must be clinical or general (got {s.get('kind')!r})")


HELDOUT_VARIATION = ("rate", "pitch", "piper_length_scale")


def synthesis_config(cfg: dict, s: dict, condition: dict) -> dict:
    from clinasr.synth import pipeline

    scfg = pipeline.load_config()
    if s.get("voices") == "base":   # the base model's own voices and variation (replay of what the base heard)
        from clinasr.synth import tts

        base = _base_config(s)
        scfg["accent_profiles"] = tts.profile_entries(base["voices"]["train"])
        scfg["accent_mix"] = {p: base["accent_mix"].get(p, 1.0) for p in scfg["accent_profiles"]}
        scfg["voice_variation"] = {**scfg.get("voice_variation", {}), **(base.get("voice_variation") or {})}
        if s.get("with_voices_of"):
            add_voices_of(scfg, s["with_voices_of"], cfg)
    elif s.get("voices", "heldout") != "training":
        scfg["accent_profiles"] = {p: list(vs) for p, vs in cfg["heldout"]["voices"].items()}
        scfg["accent_mix"] = dict(cfg["heldout"].get("accent_mix") or {p: 1.0 for p in scfg["accent_profiles"]})
        # the held-out voices as they are: rate, pitch and Piper's length vary, but the training data's espeak-ng
        # variants and Flite variation (configs/synthesis.yaml) must not change what the gate's sets sound like
        scfg["voice_variation"] = {k: v for k, v in (scfg.get("voice_variation") or {}).items() if k in HELDOUT_VARIATION}
    for k, v in (condition.get("augmentation") or {}).items():
        scfg["augmentation"][k] = {**scfg["augmentation"].get(k, {}), **v}
    return scfg


def add_voices_of(scfg: dict, path: str | Path, cfg: dict | None = None) -> dict:
    """Add to a replay set's synthesis config ``scfg`` (the base's voices) the voices of a clinical training set's
    synthesis config (``path``) that the base does not replay, each with the share of the rows it has there.

    A voice that speaks only clinical rows tells a fine-tune the domain: with Kokoro in the clinical rows and not in
    the replay rows, Kokoro's voices never say anything but drugs and doses. Replayed at the same share as in the
    clinical set, an added voice says nothing about the domain (measured with Kokoro: English ~0.01 better, the
    held-out engine's KER 4 points lower; docs/benchmarks.md, "Replay in the clinical voices too"). The added voices
    form one profile per (profile, engine) of the source config, named ``<profile>_<engine>`` (e.g.
    ``second_language_kokoro``), weighted so that P(voice) in the replay equals P(voice) in the clinical set; the
    source config's variation settings of the added engines (``kokoro_speed``) come along, and no other setting:
    the base's voices sound as they did. Returns ``scfg``, changed in place."""
    from clinasr.synth import pipeline

    p = repo_path(path)
    if not p.exists():
        raise EvalSetError(f"with_voices_of: the synthesis config {p} does not exist")
    other = pipeline.load_config(p)
    have = {(e["engine"], e["voice"]) for prof, es in scfg["accent_profiles"].items()
            if float(scfg["accent_mix"].get(prof, 0.0)) > 0 for e in es}   # voices the replay speaks in
    profiles = {prof: es for prof, es in other["accent_profiles"].items() if es}
    total = sum(float(other["accent_mix"].get(prof, 0.0)) for prof in profiles)
    groups: dict[str, list[dict]] = {}
    share: dict[str, float] = {}
    for prof, es in profiles.items():
        each = float(other["accent_mix"].get(prof, 0.0)) / total / len(es) if total else 0.0
        for e in es:
            if (e["engine"], e["voice"]) in have or each <= 0:
                continue
            g = f"{prof}_{e['engine']}"
            if g in scfg["accent_profiles"]:
                raise EvalSetError(f"with_voices_of {path}: the added voices' profile {g!r} is one of the base's")
            groups.setdefault(g, []).append(dict(e))
            share[g] = share.get(g, 0.0) + each
    if not groups:
        return scfg
    added = sum(share.values())
    if 1.0 - added <= 1e-9:
        raise EvalSetError(f"with_voices_of {path}: every voice is new to the base: nothing of the base's voices "
                           "would be replayed")
    check_training_voices({"accent_profiles": groups}, cfg=cfg)
    weight = sum(float(scfg["accent_mix"].get(prof, 0.0)) for prof in scfg["accent_profiles"])
    engines = {e["engine"] for es in groups.values() for e in es}
    for g, es in groups.items():
        scfg["accent_profiles"][g] = es
        scfg["accent_mix"][g] = share[g] / (1.0 - added) * weight
    scfg["voice_variation"].update({k: v for k, v in (other.get("voice_variation") or {}).items()
                                    if k.split("_", 1)[0] in engines})
    return scfg


def _added_voices_unavailable(scfg: dict, s: dict) -> list[str]:
    """The voices ``with_voices_of`` added to a replay set that cannot speak here (their engine not installed): the
    set would be rendered without them under a config hash that says they are in it."""
    from clinasr.synth import tts

    base = _base_config(s)
    profiles = [p for p in scfg["accent_profiles"] if p not in base["voices"]["train"]]
    if not profiles:
        return []
    _, problems = tts.check_voices(tts.voices_from_config(scfg, profiles))
    return problems


def _render_key(scfg: dict) -> str:
    """What a rendered row's audio depends on beyond its text: voices, variation, augmentation, limits and the
    pronunciation overrides. Rows cached under another key are never reused (a set rebuilt after such a change
    renders again instead of mixing old audio into a new hash)."""
    keep = {k: scfg.get(k) for k in ("accent_profiles", "accent_mix", "voice_variation", "augmentation", "limits",
                                     "sample_rate")}
    keep["builder"] = BUILDER_VERSION
    prons = scfg.get("pronunciations")
    keep["pronunciations"] = _file_sha(prons) if prons and repo_path(prons).exists() else prons
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _base_config(s: dict) -> dict:
    """The base model's experiment config that a replay set with ``voices: base`` speaks like (its ``extends:``
    chain resolved: a base config that names only what it changes still has its parent's voices)."""
    from clinasr.experiment import load_config as load_experiment

    p = repo_path(s.get("base_config") or "configs/experiment/base_multi.yaml")
    if not p.exists():
        raise EvalSetError(f"replay voices come from the base model's config {p}, which does not exist")
    try:
        return load_experiment(p)
    except (OSError, ValueError) as e:   # a parent that does not exist, or a chain that comes back to itself
        raise EvalSetError(f"replay voices come from the base model's config {p}, which cannot be read: {e}") from None


def build_set(name: str, out_dir: Path, cfg: dict | None = None, workers: int = 2, progress: bool = True,
              log=print) -> dict:
    """Render a set into ``out_dir`` (idempotent: rendered rows are cached beside it). An evaluation set is
    scored whole (``test_manifest.jsonl``, every condition); a replay set keeps its text-disjoint train/val
    split, so the general part of a fine-tune's validation score never trained."""
    from clinasr.synth import pipeline

    cfg = cfg or load_config()
    s = spec(cfg, name)
    out_dir = Path(out_dir)
    utts, text_info = _utterances(s, name)
    rows: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    conditions, quarantined = {}, 0
    for cond, c in (s.get("conditions") or {"mixed": {"augment": True}}).items():
        scfg = synthesis_config(cfg, s, c)
        missing = _added_voices_unavailable(scfg, s) if s.get("with_voices_of") else []
        if missing:
            raise EvalSetError(f"{name}: the voices of {s['with_voices_of']} cannot speak here: {'; '.join(missing)} "
                               "(install their engine; the set must not be built without them)")
        cutts = [{**u, "utt_id": f"{u['utt_id']}-{cond}"} for u in utts]
        built = pipeline.build_dataset(out_dir / cond, cutts, config=scfg, seed=int(s["seed"]), workers=workers,
                                       val_fraction=0.15, augment_on=bool(c.get("augment", True)),
                                       meta={"name": f"{name}-{cond}", "role": s["role"]}, progress=progress,
                                       cache_dir=out_dir.parent / f".{out_dir.name}-{cond}-rows-{_render_key(scfg)}")
        card = built["card"]
        quarantined += card["counts"]["quarantined"]
        conditions[cond] = {"rows": card["counts"]["train"] + card["counts"]["val"], "quarantined": card["counts"]["quarantined"],
                            "per_voice": card["per_voice"], "augment": bool(c.get("augment", True))}
        for split in ("train", "val"):
            for r in _read(out_dir / cond / f"{split}_manifest.jsonl"):
                r = {**r, "audio_filepath": f"{cond}/{r['audio_filepath']}", "condition": cond, "evalset": name}
                rows["test" if s["role"] == "evaluation" else split].append(r)
            (out_dir / cond / f"{split}_manifest.jsonl").unlink()
        log(f"[evalsets] {name}/{cond}: {conditions[cond]['rows']} utterances, {card['counts']['quarantined']} quarantined")
    manifests = {TEST_MANIFEST: rows["test"]} if s["role"] == "evaluation" else \
        {"train_manifest.jsonl": rows["train"], "val_manifest.jsonl": rows["val"]}
    for fname, rs in manifests.items():
        pipeline.write_manifest(out_dir / fname, rs)
    all_rows = [r for rs in manifests.values() for r in rs]
    if not all_rows:
        raise EvalSetError(f"{name}: every utterance was quarantined ({quarantined})")
    card = {"name": name, "role": s["role"], "config_hash": config_hash(cfg, name), "config": s,
            "config_file": str(cfg["path"]), "config_version": cfg["version"], "builder_version": BUILDER_VERSION,
            "rows": {k: len(v) for k, v in manifests.items()}, "quarantined": quarantined,
            "hours": round(sum(r["duration"] for r in all_rows) / 3600, 4), "conditions": conditions,
            "voices": sorted({r["voice"] for r in all_rows}), "terms": text_info.get("terms"), "text": text_info,
            "heldout": cfg["heldout"] if s["role"] == "evaluation" else None}
    (out_dir / "evalset_card.json").write_text(json.dumps(card, indent=1))
    (out_dir / "evalset_card.md").write_text(card_md(card))
    return {"dir": str(out_dir), "card": card}


def card_md(card: dict) -> str:
    lines = [f"# Evaluation set card — {card['name']} ({card['role']})", "",
             f"- config hash {card['config_hash']} ({card['config_file']} version {card['config_version']}, builder "
             f"{card['builder_version']})",
             f"- rows: {card['rows']}, {card['hours'] * 60:.1f} minutes of audio, {card['quarantined']} quarantined",
             f"- text: {card['text']}",
             f"- voices: {', '.join(card['voices'])}",
             "- conditions: " + "; ".join(f"{k}: {v['rows']} rows, augmentation {'on' if v['augment'] else 'off'}"
                                          for k, v in card["conditions"].items())]
    if card.get("terms"):
        lines.append(f"- priority terms ({len(card['terms'])}): {', '.join(card['terms'])}")
    return "\n".join(lines) + "\n"


def build_set_stage(args: dict) -> dict:
    """ML-runtime entry point (``clinasr ml-stage evalset``)."""
    cfg = load_config(args.get("config"))
    return build_set(args["name"], Path(args["out_dir"]), cfg, workers=int(args.get("workers", 2)),
                     progress=bool(args.get("progress", True)))


def build_and_stage(name: str, work: Path, settings: Settings | None = None, workers: int = 2, force: bool = False,
                    log=print) -> dict:
    """Build ``name`` in the ML runtime unless the current config already has a snapshot; stage it; index it."""
    from clinasr import mlenv
    from clinasr.store import ObjectStore

    settings = settings or Settings.from_env()
    cfg = load_config()
    if not force:
        try:
            entry = resolve(name, cfg, settings)
            log(f"[evalsets] {name}: current ({entry['uri']}, config {entry['config_hash']})")
            return {**entry, "built": False}
        except EvalSetError:
            pass
    out = work / name
    if out.exists():
        shutil.rmtree(out)   # only the rendered-row cache beside it is reused
    res = mlenv.run_stage("evalset", {"name": name, "out_dir": str(out), "workers": workers, "progress": False},
                          settings, log=log)
    snap = ObjectStore(settings).stage_snapshot(Path(res["dir"]), prefix=f"evalsets/{name}")
    entry = record(name, cfg, {"uri": snap.uri, "snapshot_id": snap.snapshot_id, "digest": snap.digest}, res["card"], settings)
    log(f"[evalsets] {name}: built {res['card']['rows']} rows, {res['card']['hours'] * 60:.1f} min -> {snap.uri}")
    return {**entry, "built": True, "card": res["card"]}
