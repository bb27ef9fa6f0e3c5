"""Task bodies of ``dags/clinasr_evaluate_promote.py``: the evaluation plan (candidate, baseline, held-out
sets, references), evaluations in the ML runtime, the gate, promotion and the deploy to serving."""

from __future__ import annotations

from pathlib import Path

from clinasr import provenance
from clinasr.settings import Settings
from clinasr.tasks.common import _sha, declare, log, publish_reports, work_dir


def evaluation_plan(params: dict, triggering_asset_events, candidate_asset) -> dict:
    """Which candidate, against which baseline, on which sets."""
    from clinasr import registry
    from clinasr.gate import load_gate

    ref = params.get("candidate")
    if not ref:
        for ev in reversed(list((triggering_asset_events or {}).get(candidate_asset, []) if triggering_asset_events else [])):
            if ref := (ev.extra or {}).get("model_uri"):
                break
    if not ref and not params.get("model_name"):
        raise ValueError("no candidate: set the candidate Param (models:/name/N) or model_name (uses its @candidate alias)")
    ref = ref or f"models:/{params['model_name']}@candidate"
    name, version = registry.resolve(ref)
    if params.get("model_name") and name != params["model_name"]:
        raise ValueError(f"candidate {ref} is not a version of {params['model_name']} (the model_name Param)")
    mv = registry.client().get_model_version(name, version)
    dataset = params.get("dataset_uri") or (mv.tags or {}).get("dataset_uri") or (mv.tags or {}).get("dataset")
    if not dataset:
        raise ValueError(f"{ref} records no dataset: set the dataset_uri Param (its validation split is the in-domain set)")
    prod = registry.alias_version(name, "production")
    if prod == version:
        raise ValueError(f"{ref} is already production: nothing to evaluate")
    # no production yet: the baseline_model Param, else the base model the candidate was fine-tuned from (its tag)
    baseline = f"models:/{name}/{prod}" if prod else (params.get("baseline_model") or (mv.tags or {}).get("base_model") or None)
    held, missing = heldout_sets(dataset, params.get("gate_config") or "configs/gate/default.yaml")
    sets = held + [{"name": "validation", "manifest": dataset}]
    for i, spec in enumerate(params.get("extra_manifests") or []):
        set_name, sep, path = spec.partition("=")
        sets.append({"name": set_name.strip(), "manifest": path.strip()} if sep else {"name": f"extra{i + 1}", "manifest": spec})
    gate = load_gate(params.get("gate_config") or "configs/gate/default.yaml")
    refs = params.get("reference_models")
    if refs is None:   # not given: the gate config's list (versioned with the criteria)
        refs = gate["reference_models"]
    return {"model_name": name, "candidate": f"models:/{name}/{version}", "candidate_version": version,
            "production_version": prod, "baseline": baseline,
            "baseline_kind": "production" if prod else ("base model" if baseline else None),
            "sets": sets, "missing_sets": missing, "dataset_uri": dataset,
            "references": [r.strip() for r in refs if r.strip()],
            "reference_max_utterances": gate["reference_max_utterances"]}


def _dataset_terms(dataset: str) -> list[str] | None:
    """The priority terms a dataset was built for (its card), None for every lexicon drug or no card."""
    import json

    try:
        if dataset.startswith("s3://"):
            from clinasr.store import ObjectStore

            card = json.loads(ObjectStore().get_bytes(f"{dataset.rstrip('/')}/dataset_card.json"))
        else:
            card = json.loads((Path(dataset) / "dataset_card.json").read_text())
    except (FileNotFoundError, ValueError, OSError):
        return None
    return card.get("terms") or None


def heldout_sets(dataset: str, gate_config: str) -> tuple[list[dict], dict[str, str]]:
    """The evaluation sets the gate decides on, resolved to their current snapshots, and the ones that are
    missing or stale ({name: why}: the gate fails closed on them). The clinical held-out set is scored on the
    rows of the candidate's own priority terms."""
    from clinasr import evalsets
    from clinasr.gate import load_gate
    from clinasr.textnorm import normalize

    gate = load_gate(gate_config)
    wanted = [n for n in dict.fromkeys([gate["in_domain_set"], gate.get("general_set"), *gate["required_sets"]])
              if n and n != "validation"]
    cfg = evalsets.load_config()
    sets, missing = [], {}
    terms = _dataset_terms(dataset)
    for name in wanted:
        try:
            entry = evalsets.resolve(name, cfg)
        except evalsets.EvalSetError as e:
            missing[name] = str(e)
            continue
        s = {"name": name, "manifest": entry["uri"], "config_hash": entry["config_hash"]}
        spec_terms = evalsets.spec(cfg, name).get("terms")
        if terms and spec_terms:
            covered = set(map(normalize, spec_terms))
            s["terms"] = [t for t in terms if t in covered]
            if not s["terms"]:
                missing[name] = (f"evaluation set {name!r} covers none of the candidate's priority terms "
                                 f"({', '.join(terms[:8])}): add them to {cfg['path']} (sets.{name}.terms) and rebuild")
                continue
        sets.append(s)
    return sets, missing


def evaluate_model(ref: str, sets: list[dict], which: str, run_id: str, **stage_args) -> dict:
    """Score one model on the sets. Its transcripts are cached by model identity and audio (evaluate.TranscriptCache,
    ``<home>/cache/transcripts``; ``CLINASR_TRANSCRIPT_CACHE=0`` turns it off): the production model scored again
    as the next candidate's baseline on the same set snapshots, or a candidate in the override run after a
    rejection, decodes nothing again; scores are recomputed."""
    from clinasr import mlenv

    settings = Settings.from_env()
    stage_args.setdefault("transcript_cache", transcript_cache(settings))
    out = work_dir(settings, "clinasr_evaluate_promote", run_id) / which
    report = mlenv.run_stage("evaluate", {"model": ref, "sets": sets, "output_dir": str(out), "progress": False,
                                          **stage_args}, settings, log=log.info)
    _declare_evaluation(ref, sets, report)
    return report


def _declare_evaluation(ref: str, sets: list[dict], report: dict) -> None:
    """Provenance of one model's evaluation: the model and sets it read, the report it wrote."""
    declare(inputs=[{"uri": ref, "kind": "model"}] + [{"uri": s["manifest"], "kind": "evaluation-set"} for s in sets],
            outputs=[{"uri": report["report_path"], "kind": "evaluation-report", "sha256": _sha(report["report_path"])}])


def evaluate_references(specs: list[str], sets: list[dict], run_id: str,
                        max_utterances: int | None = None) -> list[dict]:
    """Score each off-the-shelf reference model on the same sets (on a fixed sample of at most
    ``max_utterances`` rows per set: the gate config's ``reference_max_utterances``). A reference's transcripts
    are cached under ``<home>/cache/transcripts`` by model identity and audio (evaluate.TranscriptCache):
    the same sets again (the override run after a rejection, the next candidate) decode nothing. A reference that
    cannot be loaded or run (e.g. no hub for a pretrained name) is reported with its error; it never fails the
    evaluation."""
    from clinasr.gate import score_references
    from clinasr.mlenv import StageError

    return score_references(specs, lambda i, spec: evaluate_model(spec, sets, f"reference-{i + 1}", run_id,
                                                                  max_utterances=max_utterances),
                            StageError, log.warning)


def transcript_cache(settings: Settings) -> str | None:
    """Where evaluations keep transcripts for reuse; None when ``CLINASR_TRANSCRIPT_CACHE=0``."""
    import os

    return None if os.environ.get("CLINASR_TRANSCRIPT_CACHE", "1") == "0" else str(settings.path("cache", "transcripts"))


def apply_gate(plan: dict, candidate: dict, baseline: dict | None, params: dict, run_id: str, user: str | None,
               references: list[dict] | None = None) -> dict:
    """Decide, write the report (JSON + HTML, local, S3, MLflow), tag the version; a failed gate without an
    override rejects the candidate and fails the task with every failing criterion in the message."""
    import json

    from clinasr import registry
    from clinasr.gate import decide, load_gate, render_html, summary

    settings = Settings.from_env()
    gate = load_gate(params["gate_config"])
    decision = decide(candidate, baseline, gate, plan["baseline_kind"] or "production", references,
                      missing_sets=plan.get("missing_sets"))
    override = (params.get("override_reason") or "").strip()
    if override and not decision["passed"]:
        decision["override"] = {"reason": override, "by": user or "unknown", "failed": summary(decision)}
    decision.update(candidate=plan["candidate"], baseline_model=plan["baseline"], dataset_uri=plan["dataset_uri"],
                    provenance_head=provenance.ProvenanceLog(settings).head())
    out = work_dir(settings, "clinasr_evaluate_promote", run_id) / "gate"
    out.mkdir(parents=True, exist_ok=True)
    title = f"Gate report: {plan['model_name']} v{plan['candidate_version']}"
    (out / "gate.json").write_text(json.dumps({"decision": decision, "candidate": candidate, "baseline": baseline,
                                               "references": references or []}, indent=1))
    (out / "gate.html").write_text(render_html(decision, candidate, baseline, title))
    prefix = f"s3://{settings.bucket}/reports/gate/{plan['model_name']}/v{plan['candidate_version']}/{out.parent.name}"
    outputs = publish_reports(settings, out, ("gate.json", "gate.html"), prefix, "gate-report")
    c = registry.client()
    mv = c.get_model_version(plan["model_name"], plan["candidate_version"])
    if mv.run_id:
        c.log_artifact(mv.run_id, str(out / "gate.json"), "gate")
        c.log_artifact(mv.run_id, str(out / "gate.html"), "gate")
        # every set's headline figures on the candidate's run, phantom terms with their top list
        phantoms = {}
        for set_name, m in (candidate.get("sets") or {}).items():
            for key, value in (("wer", m.get("wer")), ("ker", m.get("ker")),
                               ("phantoms_per_100", (m.get("phantom_terms") or {}).get("per_100_utterances"))):
                if value is not None:
                    c.log_metric(mv.run_id, f"eval_{set_name}_{key}", float(value))
            phantoms[set_name] = m.get("phantom_terms")
        (out / "phantom_terms.json").write_text(json.dumps(phantoms, indent=1))
        c.log_artifact(mv.run_id, str(out / "phantom_terms.json"), "gate")
    c.set_model_version_tag(plan["model_name"], plan["candidate_version"], "gate", decision["decision"])
    c.set_model_version_tag(plan["model_name"], plan["candidate_version"], "gate_report", f"{prefix}/gate.html")
    declare(inputs=[{"uri": plan["candidate"], "kind": "model"}] + ([{"uri": plan["baseline"], "kind": "baseline-model"}]
                                                                      if plan["baseline"] else []),
            outputs=outputs, gate={"passed": decision["passed"], "version": gate["version"], "sha256": gate["sha256"],
                                   "override": decision.get("override")})
    log.info("%s; report: %s/gate.html", summary(decision), prefix)
    if not decision["passed"] and not override:
        registry.reject(plan["model_name"], plan["candidate_version"], by=user or "clinasr_evaluate_promote",
                        reason=summary(decision), report_uri=f"{prefix}/gate.html")
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"candidate {plan['candidate']} rejected — {summary(decision)} "
                                   f"(report: {prefix}/gate.html; to promote anyway set override_reason)")
    return {"passed": decision["passed"], "override": decision.get("override"), "summary": summary(decision),
            "report": f"{prefix}/gate.html", "criteria": decision["criteria"], "leaderboard": decision["leaderboard"],
            "leaderboards": decision["leaderboards"]}


def promote_candidate(plan: dict, gate_result: dict, user: str | None) -> dict:
    from clinasr import registry

    reason = gate_result["summary"] if not gate_result.get("override") else f"override: {gate_result['override']['reason']}"
    res = registry.promote(plan["model_name"], plan["candidate_version"], by=user or "clinasr_evaluate_promote",
                           reason=reason, report_uri=gate_result["report"], override=bool(gate_result.get("override")))
    declare(inputs=[{"uri": plan["candidate"], "kind": "model"}, {"uri": gate_result["report"], "kind": "gate-report"}],
            outputs=[{"uri": f"models:/{plan['model_name']}@production", "kind": "model-alias"}],
            promotion={**res, "by": user, "reason": reason})
    log.info("production: %s v%s (previous: %s)", plan["model_name"], res["production"], res["previous"])
    return res


def deploy_to_serving(model_uri: str, attempts: int = 3) -> dict:
    """Load the new production version into the transcription service. If the running service refuses it
    (a failed load: the service keeps the old model), the registry must not say otherwise: production is
    rolled back to the version the service still serves, recorded with the reason, and the task fails. A
    service that is not running is no disagreement: it loads production when it starts."""
    import time

    from clinasr import registry
    from clinasr.deploy import deploy

    name, version = registry.resolve(model_uri)
    for attempt in range(1, attempts + 1):
        try:
            res = deploy(model_uri, Settings.from_env(), log=log.info)
            break
        except RuntimeError as e:
            if "not reachable" in str(e):
                raise
            log.warning("deploy of %s failed (attempt %d/%d): %s", model_uri, attempt, attempts, e)
            if attempt < attempts:
                time.sleep(5 * attempt)
                continue
            why = f"deploy failed: {str(e)[:300]}"
            try:
                back = registry.rollback(name, by="clinasr_evaluate_promote", reason=why)
                done = f"production rolled back to v{back['production']}"
            except registry.RegistryError:   # the first production version: nothing to go back to
                registry.client().delete_registered_model_alias(name, "production")
                registry.client().set_model_version_tag(name, version, "status", "deploy_failed")
                back, done = None, "the production alias was removed (no earlier version)"
            declare(inputs=[{"uri": model_uri, "kind": "model"}], deployment={"failed": why, "rollback": back})
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"{model_uri} could not be deployed ({e}); {done} so that the registry "
                                       "names the model the service serves") from None
    declare(inputs=[{"uri": model_uri, "kind": "model"}],
            outputs=[{"uri": f"{res['url']}/v1/audio/transcriptions", "kind": "endpoint"}], deployment=res)
    return res
