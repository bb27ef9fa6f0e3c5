"""The synthetic-data stage as three steps, shared by the CLI and the Airflow DAG:

1. :func:`make_transcripts` (orchestration runtime: grammar or LLM text, PHI screening, dedupe),
2. ``synthesize`` in the ML runtime (TTS, augmentation, manifests, card) via :mod:`clinasr.mlenv`,
3. :func:`stage_dataset_snapshot` (content-addressed, encrypted upload to the object store).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from clinasr.settings import Settings, repo_path

# The clinical training set's voice sets (synthesis configs, checked in): ``default`` is the CPU demo's; ``kokoro``
# adds Kokoro-82M, a neural synthesiser, to ~17% of the rows. For GPU fine-tunes it is the measured choice: the
# held-out neural engine's term errors fall by 82-83% instead of 70-74% (docs/benchmarks.md, "Kokoro in the clinical
# data"); it renders ~8x slower on the CPU (bench/voice_set_rate.py), so the demo keeps ``default``.
SYNTHESIS_CONFIGS = {"default": "configs/synthesis.yaml", "kokoro": "configs/experiment/synthesis_clinical_kokoro.yaml"}


@dataclass
class DatasetRequest:
    """What a data engineer asks for (the DAG's Params / the CLI's flags)."""

    terms: list[str] | str | None = None      # priority terms (list, comma string or file); empty: all drugs
    utterances_per_term: int = 100
    generator: str = "grammar"                 # grammar | llm
    template_family: str = "a"                 # a: training shapes (b is the clinical held-out set's, never trained on)
    seed: int = 0
    val_fraction: float = 0.15
    augment: bool = True
    accent_profiles: list[str] | None = None   # default: all profiles in configs/synthesis.yaml
    accent_mix: dict | None = None
    workers: int = 2
    real_manifest: str | None = None
    real_ratio: float = 5.0
    llm: dict = field(default_factory=dict)    # base_url, model, api_key, requests_per_minute
    synthesis: str = "default"                 # the voice set: a SYNTHESIS_CONFIGS name

    def validate(self) -> None:
        if not 1 <= self.utterances_per_term <= 5000:
            raise ValueError("utterances_per_term must be within 1..5000")
        if not 0.1 <= self.val_fraction <= 0.2:
            raise ValueError("val_fraction must be within 0.10..0.20")
        if self.generator not in ("grammar", "llm"):
            raise ValueError("generator must be 'grammar' or 'llm'")
        if self.synthesis not in SYNTHESIS_CONFIGS:
            raise ValueError(f"synthesis {self.synthesis!r} is not a voice set; choose one of "
                             f"{', '.join(SYNTHESIS_CONFIGS)} (configs: {', '.join(SYNTHESIS_CONFIGS.values())})")
        if self.template_family != "a":
            raise ValueError(f"template_family {self.template_family!r}: training data uses family 'a' only; family 'b' "
                             "is reserved for the clinical held-out evaluation set (configs/evalsets.yaml), which "
                             "`clinasr evalsets build` renders")

    def build_id(self) -> str:
        """Deterministic id of this request: a retry of the same request reuses its work directory."""
        # the default voice set is left out, so that the ids of requests made before it was a choice stay the same
        blob = json.dumps({k: v for k, v in self.__dict__.items()
                           if k != "llm" and not (k == "synthesis" and v == "default")}, sort_keys=True, default=str)
        return hashlib.sha256((blob + json.dumps(self.llm.get("model", ""))).encode()).hexdigest()[:12]

    def synthesis_config(self) -> dict:
        """The voice set's config (its path relative to the repository, which the ML runtime resolves against its
        own copy, a container's too), with its sha256 (recorded in the dataset card: which voices made it)."""
        from clinasr.store import sha256_file

        path = SYNTHESIS_CONFIGS[self.synthesis]
        return {"name": self.synthesis, "path": path, "sha256": sha256_file(repo_path(path))}


def make_transcripts(req: DatasetRequest, work_dir: Path) -> dict:
    from clinasr.synth.lexicon import load_lexicon, load_terms
    from clinasr.synth.transcripts import generate_transcripts

    req.validate()
    lex = load_lexicon()
    terms = load_terms(req.terms, lex)
    llm = dict(req.llm)
    res = generate_transcripts(lex, terms, req.utterances_per_term, req.generator, req.seed, req.template_family,
                               llm, cache_dir=work_dir / "llm-cache")
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "transcripts.jsonl"
    path.write_text("".join(json.dumps(u.to_dict()) + "\n" for u in res["utterances"]))
    return {"transcripts": str(path), "count": len(res["utterances"]), "dropped": res["dropped"],
            "unknown_terms": res["unknown_terms"], "generator": res["generator"], "lexicon_version": lex.version,
            "terms": terms.terms}


def qa_sample(req: DatasetRequest, transcripts: dict, work_dir: Path, check_model: str | None = None,
              settings: Settings | None = None, log=print) -> dict:
    """The listen-before-synthesis sample (ML runtime): every priority term x accent profile, rendered as the
    full synthesis will render it, on a page with audio players (``clinasr.synth.qa``)."""
    from clinasr import mlenv

    overrides = {"accent_mix": req.accent_mix} if req.accent_mix else {}
    return mlenv.run_stage("qa", {"transcripts": transcripts["transcripts"], "out_dir": str(work_dir / "qa"),
                                  "seed": req.seed, "accent_profiles": req.accent_profiles,
                                  "config": req.synthesis_config()["path"], "config_overrides": overrides,
                                  "check_model": check_model}, settings, log=log)


def synthesize(req: DatasetRequest, transcripts: dict, work_dir: Path, settings: Settings | None = None,
               log=print) -> dict:
    """Full synthesis (ML runtime). A reviewed QA sample of this run (``<work_dir>/qa``) is kept with the
    dataset, in ``qa/``, so the snapshot holds what the reviewer heard."""
    import shutil

    from clinasr import mlenv

    overrides = {"accent_mix": req.accent_mix} if req.accent_mix else {}
    scfg = req.synthesis_config()
    args = {"transcripts": transcripts["transcripts"], "out_dir": str(work_dir / "dataset"), "seed": req.seed,
            "workers": req.workers, "val_fraction": req.val_fraction, "augment": req.augment,
            "accent_profiles": req.accent_profiles, "config": scfg["path"], "config_overrides": overrides,
            "real_manifest": req.real_manifest, "real_ratio": req.real_ratio,
            "meta": {"name": f"clinasr-{req.build_id()}", "generator": transcripts["generator"],
                     "lexicon_version": transcripts["lexicon_version"], "terms": transcripts["terms"],
                     "template_family": req.template_family,
                     "synthesis_config": scfg,
                     "dropped": {"transcripts": transcripts["dropped"], "unknown_terms": transcripts["unknown_terms"]}}}
    built = mlenv.run_stage("synthesize", args, settings, log=log)
    if (work_dir / "qa" / "qa.json").exists():
        shutil.copytree(work_dir / "qa", Path(built["dataset_dir"]) / "qa", dirs_exist_ok=True)
    return built


def stage_dataset_snapshot(dataset_dir: str | Path, settings: Settings | None = None) -> dict:
    from clinasr.store import ObjectStore

    snap = ObjectStore(settings).stage_snapshot(Path(dataset_dir), prefix="datasets")
    card = json.loads((Path(dataset_dir) / "dataset_card.json").read_text())
    return {"uri": snap.uri, "snapshot_id": snap.snapshot_id, "digest": snap.digest, "files": len(snap.files), "bytes": snap.total_bytes,
            "counts": card["counts"], "hours": card["hours"],
            "train_manifest": f"{snap.uri}/train_manifest.jsonl", "val_manifest": f"{snap.uri}/val_manifest.jsonl"}


def build_and_stage(req: DatasetRequest, settings: Settings | None = None, log=print) -> dict:
    """All three steps in one call (CLI)."""
    settings = settings or Settings.from_env()
    work = settings.path("work", f"dataset-{req.build_id()}")
    t = make_transcripts(req, work)
    log(f"transcripts: {t['count']} kept, dropped {t['dropped'] or 'none'}, unknown terms {t['unknown_terms'] or 'none'}")
    built = synthesize(req, t, work, settings, log)
    snap = stage_dataset_snapshot(built["dataset_dir"], settings)
    return {"transcripts": t, "dataset": built, "snapshot": snap}
