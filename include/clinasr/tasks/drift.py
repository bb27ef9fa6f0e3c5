"""Task bodies of ``dags/clinasr_drift.py``: drift measured against the production model's gate report,
the retraining plan, the lexicon review, and the retraining request."""

from __future__ import annotations

from clinasr.settings import Settings
from clinasr.tasks.common import _sha, declare, log, publish_reports, work_dir


def _production_reference(name: str) -> tuple[str | None, dict | None]:
    """(production version, its in-domain evaluation at promotion) from the gate report it was promoted with."""
    import json

    from clinasr import registry
    from clinasr.drift import reference_from_report
    from clinasr.store import ObjectStore

    version = registry.alias_version(name, "production")
    if version is None:
        return None, None
    report = (registry.client().get_model_version(name, version).tags or {}).get("gate_report")
    if not report:
        return version, None
    try:
        gate = json.loads(ObjectStore().get_bytes(report.rsplit(".", 1)[0] + ".json"))
    except (FileNotFoundError, ValueError):
        return version, None
    in_domain = gate["decision"]["in_domain_set"]
    return version, reference_from_report(gate["candidate"]["sets"][in_domain])


def measure_drift(params: dict, run_id: str) -> dict:
    import json

    import mlflow

    from clinasr import drift
    from clinasr.synth.lexicon import load_lexicon

    settings = Settings.from_env()
    policy = drift.load_policy(params["policy"])
    lex = load_lexicon()
    serve_dir = settings.path("serve")
    window = drift.load_window(serve_dir, float(params["window_days"]))
    version, reference = _production_reference(params["model_name"])
    m = drift.measure(window, lex)
    decision = drift.decide(m, reference, policy)
    decision["model"] = f"models:/{params['model_name']}/{version}" if version else None
    if decision["status"] == "drift":
        decision["retraining"] = drift.retrain_plan(decision, policy, lex)
    plan = decision.get("retraining") or {}
    terms = plan.get("terms", [])
    # history (one line per DAG run, idempotent on retries) for the trend plot
    hist_f = settings.path("drift") / "history.jsonl"
    hist = [json.loads(x) for x in hist_f.read_text().splitlines()] if hist_f.exists() else []
    hist = [h for h in hist if h.get("run_id") != run_id] + [{"run_id": run_id, "end": m["window"]["end"], "status": decision["status"],
                                                             "wer": m.get("wer"), "ker": m.get("ker"), "oov_rate": m.get("oov_rate")}]
    hist_f.write_text("".join(json.dumps(h) + "\n" for h in hist))
    out = work_dir(settings, "clinasr_drift", run_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / "drift.json").write_text(json.dumps(decision, indent=1, default=str))
    (out / "drift.html").write_text(drift.render_html(decision, hist, f"Drift report: {params['model_name']}"))
    prefix = f"s3://{settings.bucket}/reports/drift/{m['window']['end'][:10]}-{out.name}"
    outputs = publish_reports(settings, out, ("drift.json", "drift.html"), prefix, "drift-report")
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_experiment("clinasr-drift")
    with mlflow.start_run(run_name=f"drift-{run_id}"[:120], tags={"airflow_run_id": run_id, "status": decision["status"]}):
        mlflow.log_params({"window_days": params["window_days"], "policy_version": policy["version"], "model": decision["model"]})
        mlflow.log_metrics({k: float(v) for k, v in m.items() if k in ("wer", "ker", "oov_rate", "matched_feedback", "requests")
                            and v is not None})
        mlflow.log_artifact(str(out / "drift.json"))
        mlflow.log_artifact(str(out / "drift.html"))
    inputs = [{"uri": str(f), "kind": "served-traffic", "sha256": _sha(f)} for sub in ("traffic", "feedback")
              for f in sorted((serve_dir / sub).glob("*.jsonl")) if f.stem >= m["window"]["start"][:10]]
    declare(inputs=inputs + ([{"uri": decision["model"], "kind": "model"}] if decision["model"] else []), outputs=outputs,
            drift={"status": decision["status"], "reason": decision["reason"], "terms": terms,
                   "default_terms_used": plan.get("default_used"), "retraining_reason": plan.get("reason"),
                   "proposed_additions": [p["term"] for p in plan.get("proposed_additions", [])],
                   "policy_sha256": policy["sha256"]})
    log.info("drift %s: %s; report %s/drift.html", decision["status"], decision["reason"], prefix)
    if plan:
        log.info("retraining set: %s", plan["reason"])
    conf = None
    if decision["status"] == "drift":
        conf = {"terms": ", ".join(terms), "utterances_per_term": int(params["utterances_per_term"]),
                "reason": f"drift ({params['model_name']} v{version}): {decision['reason']}; {plan['reason']}"[:1000]}
    return {"status": decision["status"], "reason": decision["reason"], "report": f"{prefix}/drift.html",
            "terms": terms, "default_terms_used": plan.get("default_used"), "retrain_conf": conf,
            "proposed_additions": [p["term"] for p in plan.get("proposed_additions", [])]}


def record_lexicon_review(event: dict, proposed: list[str], run_id: str) -> None:
    """The reviewer's decision on proposed lexicon additions, who and when, into this task's provenance record;
    approved terms enter the installation's lexicon (a new lexicon version) before the retraining runs."""
    from clinasr.synth.lexicon import add_reviewed_terms, load_lexicon

    decision = (event.get("chosen_options") or [None])[0]
    who = event.get("responded_by_user")
    if isinstance(who, dict):
        who = who.get("name") or who.get("id")
    review = {"decision": decision, "by": who, "at": str(event.get("responded_at")), "proposed": proposed,
              "lexicon_version_before": load_lexicon().version}
    if decision == "Approve" and proposed:
        added = add_reviewed_terms(proposed, by=str(who), source=f"clinasr_drift {run_id}")
        review.update(added=proposed, lexicon_version=added["lexicon_version"])
        declare(outputs=[{"uri": added["path"], "kind": "lexicon-additions", "sha256": _sha(added["path"])}])
    declare(lexicon_review=review)


def retrain_request(measured: dict) -> dict:
    """The synthetic-data run's conf: the drifted terms plus the additions the reviewer accepted (now lexicon
    terms), recorded with the lexicon version the run will use."""
    from clinasr.synth.lexicon import load_lexicon

    lex = load_lexicon()
    known = lex.categories()
    conf = dict(measured["retrain_conf"])
    terms = [t for t in conf["terms"].split(", ") if t]
    accepted = [t for t in measured.get("proposed_additions") or [] if t in known]
    conf["terms"] = ", ".join(dict.fromkeys(terms + accepted))
    if accepted:
        conf["reason"] = f"{conf['reason']}; reviewed lexicon additions: {', '.join(accepted)}"[:1000]
    declare(drift_retraining={"terms": conf["terms"].split(", "), "added_terms": accepted, "lexicon_version": lex.version,
                              "default_terms_used": measured.get("default_terms_used")})
    log.info("retraining on %s (lexicon %s)", conf["terms"], lex.version)
    return conf
