"""Training data (ML runtime): local copies of a dataset's manifests with the rows that can be used
(:func:`prepare_dataset`, mixing in the general-English replay that :func:`replay_spec` resolves), the BPE
tokenizer a model built from config trains on them (:func:`train_tokenizer`), and NeMo's data-loader config
for a split (:func:`_dataset_cfg`: duration bucketing, fixed-duration lhotse batches, speed perturbation)."""

from __future__ import annotations

import json
from pathlib import Path

from clinasr.training.common import TrainingError


def _read_manifest(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _local(dataset: str, dest: Path) -> Path:
    if dataset.startswith("s3://"):
        from clinasr.store import ObjectStore

        return ObjectStore().fetch_snapshot(dataset, dest)
    return Path(dataset)


def prepare_dataset(dataset: str, work: Path, max_duration: float, replay: dict | None = None) -> dict:
    """Local copies of the manifests with absolute audio paths; rows that cannot be used are reported.

    ``replay`` ({"source", "ratio", "seed"[, "clinical_repeats"]}) mixes general-English rows into both splits:
    ``ratio`` of them per clinical row, drawn without repeats from the replay set's own split (its val texts never
    train). ``clinical_repeats: k`` (train split only) lists each clinical row k times, so k times as many distinct
    general rows keep the same ratio: a run of N steps then sees each clinical row as often as before and each
    general sentence 1/k as often (fewer, if the replay set cannot fill k: the report says how many)."""
    local = _local(dataset, work / "dataset")
    replay_dir, fetch_rows = _replay_local(replay["source"], work / "replay") if replay else (None, None)
    out, report = {}, {}
    work.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        src = local / f"{split}_manifest.jsonl"
        if not src.exists():
            raise TrainingError(f"dataset {dataset} has no {split}_manifest.jsonl: build it with `clinasr data build`")
        rows, dropped = _usable_rows(src, local, max_duration)
        rows = [{**r, "domain": r.get("domain", "clinical")} for r in rows]
        if not rows:
            raise TrainingError(f"the {split} split of {dataset} has no usable rows ({dropped or 'empty manifest'})")
        mixed, report_repeats = 0, {}
        if replay_dir is not None:
            general, _ = _usable_rows(replay_dir / f"{split}_manifest.jsonl", replay_dir, max_duration,
                                      fetch_rows.listed if fetch_rows else None)
            if not general:
                raise TrainingError(f"replay source {replay['source']} has no usable {split} rows: rebuild it with "
                                    "`clinasr evalsets build`")
            import random

            ratio, n_clinical = float(replay["ratio"]), len(rows)
            asked = int(replay.get("clinical_repeats") or 1) if split == "train" else 1   # val rows never repeat
            # as many repeats as the replay set can fill at the ratio (at least one)
            repeats = max(1, min(asked, int(len(general) // max(ratio * n_clinical, 1e-9))))
            want = round(ratio * n_clinical * repeats)
            rng = random.Random(f"{replay.get('seed', 0)}|replay|{split}")
            picked = rng.sample(general, min(want, len(general)))
            if fetch_rows:
                fetch_rows(picked)
            rows = rows * repeats + [{**r, "domain": "general"} for r in picked]
            mixed = len(picked)
            if asked > 1:
                report_repeats = {"clinical_repeats": repeats}
                if repeats < asked:
                    report_repeats["clinical_repeats_short"] = (
                        f"clinical rows repeated {repeats}x, not {asked}x: the replay set has {len(general)} {split} "
                        f"rows, {round(ratio * n_clinical * asked)} would keep {ratio:g}:1 at {asked}x")
        dst = work / f"{split}_manifest.jsonl"
        dst.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[split] = str(dst)
        report[split] = {"rows": len(rows), "hours": round(sum(r["duration"] for r in rows) / 3600, 4), "dropped": dropped,
                         "general_replay_rows": mixed, **report_repeats}
        if replay_dir is not None and mixed < want:   # the replay set is smaller than the ratio asks for: say so
            report[split]["general_replay_short"] = (f"{mixed} general rows instead of {want}: the replay set has no more, "
                                                     f"so the mix is {mixed / max(len(rows) - mixed, 1):.2f}:1, not "
                                                     f"{float(replay['ratio']):g}:1")
    return {"manifests": out, "report": report, "local_dir": str(local)}


class _SnapshotRows:
    """The audio of chosen rows of an S3 snapshot, fetched on demand: a fine-tune uses a few hundred to a few
    thousand rows of a 10,000-clip replay set, so only its manifests and those rows' clips are downloaded (each
    checked against the snapshot's sha256 listing)."""

    def __init__(self, uri: str, dest: Path):
        from clinasr.store import ObjectStore

        self.uri, self.dest, self.store = uri.rstrip("/"), dest, ObjectStore()
        self.files = self.store.snapshot_files(self.uri)   # the marker, read and checked once
        self.listed = {f["path"] for f in self.files}
        self.store.fetch_files(self.uri, dest, self.files,
                               [m for m in ("train_manifest.jsonl", "val_manifest.jsonl") if m in self.listed])

    def __call__(self, rows: list[dict]) -> None:
        self.store.fetch_files(self.uri, self.dest, self.files,
                               [Path(r["audio_filepath"]).relative_to(self.dest).as_posix() for r in rows])


def _replay_local(source: str, dest: Path) -> tuple[Path, _SnapshotRows | None]:
    if source.startswith("s3://"):
        return dest, _SnapshotRows(source, dest)
    return Path(source), None


def _usable_rows(src: Path, local: Path, max_duration: float, listed: set[str] | None = None) -> tuple[list[dict], dict]:
    """The rows of a manifest that can be used, absolute paths; ``listed``: the files of a snapshot not yet
    fetched (its rows' audio counts as present when the snapshot has it)."""
    rows, dropped = [], {}
    if not src.exists():
        return rows, dropped
    for r in _read_manifest(src):
        rel = Path(r["audio_filepath"])
        p = rel if rel.is_absolute() else local / rel
        present = p.exists() if listed is None else not rel.is_absolute() and rel.as_posix() in listed
        reason = None
        if not present:
            reason = "audio missing"
        elif r.get("duration", 0) > max_duration:
            reason = f"longer than max_duration {max_duration}s"
        elif not r.get("text", "").strip():
            reason = "empty text"
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        rows.append({**r, "audio_filepath": str(p)})
    return rows, dropped


def replay_spec(args: dict, tcfg: dict, log=print) -> dict | None:
    """The general-English replay of this run, resolved before anything is loaded: a fine-tune whose replay
    source is missing stops here, naming it. None when the trainer config asks for no replay."""
    r = tcfg.get("replay") or {}
    ratio = float(r.get("ratio", 0) or 0)
    if ratio <= 0:
        return None
    source = args.get("replay_source")
    if not source:
        from clinasr.evalsets import EvalSetError, resolve

        name = r.get("set") or "general_replay"
        try:
            source = resolve(name)["uri"]
        except EvalSetError as e:
            raise TrainingError(f"the trainer config replays {name!r} at {ratio}:1 but the replay source is not "
                                f"available: {e} (or set replay.ratio: 0 and distill_from_base: 0 to fine-tune without replay)") from None
    elif not source.startswith("s3://") and not (Path(source) / "train_manifest.jsonl").exists():
        raise TrainingError(f"replay source {source} has no train_manifest.jsonl: build it with `clinasr evalsets build`")
    repeats = r.get("clinical_repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise TrainingError(f"replay.clinical_repeats must be a whole number >= 1, not {r.get('clinical_repeats')!r}")
    log(f"[train] general-English replay: {ratio}:1 from {source}"
        + (f", each clinical row {repeats}x beside {repeats}x as many distinct general rows" if repeats > 1 else ""))
    return {"source": source, "ratio": ratio, "seed": int(args.get("seed", 0)), "clinical_repeats": repeats}


def train_tokenizer(manifest: str, vocab_size: int, out_dir: Path, include_lexicon: bool = True) -> Path:
    """A BPE tokenizer from the training texts; ``include_lexicon`` adds every clinical term so each is
    spellable in few tokens (a general-English base model leaves it out: no clinical term is a token)."""
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    from clinasr.synth.lexicon import load_lexicon
    from clinasr.textnorm import normalize

    out_dir.mkdir(parents=True, exist_ok=True)
    texts = [r["text"] for r in _read_manifest(Path(manifest))]
    if include_lexicon:
        lex = load_lexicon()
        texts += [normalize(t) for t in lex.drugs + lex["frequencies"] + lex["routes"]]  # every term is spellable
    data = out_dir / "text.txt"
    data.write_text("\n".join(texts) + "\n")
    n_chars = len(set("".join(texts)))
    vocab = max(min(vocab_size, len(set(" ".join(texts).split())) + n_chars), n_chars + 4)
    create_spt_model(str(data), vocab, sample_size=-1, do_lower_case=True, tokenizer_type="bpe", output_dir=str(out_dir))
    return out_dir


def _dataset_cfg(manifest: str, tcfg: dict, shuffle: bool) -> dict:
    lhotse = shuffle and bool(tcfg.get("batch_duration"))     # training batches only; validation keeps plain ones
    speed = shuffle and bool(tcfg.get("speed_perturb"))
    return {"manifest_filepath": manifest, "sample_rate": 16000, "batch_size": int(tcfg["batch_size"]),
            "shuffle": shuffle, "num_workers": int(tcfg.get("num_workers", 0)), "pin_memory": False,
            "max_duration": float(tcfg.get("max_duration", 20.0)), "min_duration": 0.1, "trim_silence": False,
            "use_start_end_token": False,
            # the rows' sample ids (their domain, for distill_from_base): training batches of the classic loader
            **({"return_sample_id": True} if shuffle and tcfg.get("distill_from_base") and not lhotse else {}),
            # duration bucketing: NeMo's semi-sorted batch sampler groups clips of similar length (less padding)
            **({"use_semi_sorted_batching": True, "drop_last": False,
                "randomization_factor": float(tcfg.get("randomization_factor", 0.1))}
               if shuffle and tcfg.get("semi_sorted_batching") else {}),
            # fixed-*duration* batches: lhotse dynamic bucketing packs up to batch_duration seconds of audio per
            # batch (batch_size stays a cap on the clip count), so short clips make bigger batches
            **({"use_lhotse": True, "batch_duration": float(tcfg["batch_duration"]), "use_bucketing": True,
                "num_buckets": int(tcfg.get("num_buckets", 10)), "quadratic_duration": tcfg.get("quadratic_duration"),
                "shuffle_buffer_size": int(tcfg.get("shuffle_buffer_size", 2000)),
                "bucket_buffer_size": int(tcfg.get("bucket_buffer_size", 2000)), "shard_seed": "randomized"}
               if lhotse else {}),
            # speed perturbation: NeMo's augmentor on the classic loader; lhotse ignores that key and mixes in
            # 0.9x and 1.1x copies of the cuts itself (perturb_speed)
            **(({"perturb_speed": True} if lhotse else
                {"augmentor": {"speed": {"prob": 0.5, "sr": 16000, "resample_type": "fft",
                                         "min_speed_rate": 0.9, "max_speed_rate": 1.1}}}) if speed else {})}
