"""Glue between Airflow tasks and the library: Params -> typed requests, per-run work directories,
task logging and provenance declarations. Imported inside tasks only (never at DAG parse time)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from clinasr import provenance
from clinasr.settings import Settings

log = logging.getLogger("clinasr")


def work_dir(settings: Settings, dag_id: str, run_id: str) -> Path:
    """One directory per DAG run: retries of a task reuse it (idempotent), other runs never touch it."""
    return settings.path("work", dag_id, hashlib.sha256(run_id.encode()).hexdigest()[:16])


def dataset_request(params: dict):
    from clinasr.datasets import DatasetRequest

    llm = {k: v for k, v in {"base_url": params.get("llm_base_url"), "model": params.get("llm_model")}.items() if v}
    return DatasetRequest(
        terms=params.get("terms") or None, utterances_per_term=int(params["utterances_per_term"]),
        generator=params["generator"], template_family=params.get("template_family", "a"), seed=int(params["seed"]),
        val_fraction=float(params["val_fraction"]), augment=bool(params["augment"]),
        accent_profiles=params.get("accent_profiles") or None, workers=int(params.get("workers", 2)),
        real_manifest=params.get("real_manifest") or None, real_ratio=float(params.get("real_ratio", 5.0)), llm=llm)


def declare(**fields) -> None:
    provenance.declare(**fields)


def qa_review_sample(params: dict, transcripts: dict, run_id: str) -> dict:
    """Render the QA sample and publish it (page, clips, JSON) to the object store for the reviewer."""
    from clinasr.datasets import qa_sample

    settings = Settings.from_env()
    work = work_dir(settings, "clinasr_synthetic_data", run_id)
    res = qa_sample(dataset_request(params), transcripts, work, params.get("qa_check_model") or None, settings, log.info)
    qa = Path(res["dir"])
    names = tuple(str(p.relative_to(qa)) for p in sorted(qa.rglob("*")) if p.is_file() and p.parent.name != "model")
    prefix = f"s3://{settings.bucket}/qa/{work.name}"
    outputs = publish_reports(settings, qa, names, prefix, "qa-sample")
    declare(inputs=[{"uri": transcripts["transcripts"], "kind": "transcripts"}],
            outputs=[o for o in outputs if o["uri"].endswith(("qa.html", "qa.json"))],
            qa_sample={"clips": res["clips"], "terms": res["terms"], "flagged_terms": res["flagged_terms"],
                       "check_model": res["check_model"], "pronunciations": res["pronunciations"]})
    return {"page": f"{prefix}/qa.html", "local_page": res["page"], "clips": res["clips"],
            "flagged_terms": res["flagged_terms"], "not_rendered": len(res["not_rendered"])}


def record_qa_decision(event: dict, qa: dict | None) -> None:
    """The reviewer's decision on the QA sample, who and when, into this task's provenance record."""
    declare(inputs=[{"uri": qa["page"], "kind": "qa-sample"}] if qa else [],
            qa_review={"decision": (event.get("chosen_options") or [None])[0], "by": event.get("responded_by_user"),
                       "at": str(event.get("responded_at")), "error": event.get("error_type")})


def resolve_dataset_uri(params: dict, triggering_asset_events, asset) -> str:
    """The dataset to train on: the Param if given, else the newest triggering asset event's snapshot."""
    if params.get("dataset_uri"):
        return params["dataset_uri"]
    events = list((triggering_asset_events or {}).get(asset, []) if triggering_asset_events else [])
    for ev in reversed(events):
        if uri := (ev.extra or {}).get("snapshot_uri"):
            return uri
    raise ValueError("no dataset: set the dataset_uri Param or run clinasr_synthetic_data first")


def base_spec(base: str) -> dict:
    kind, _, value = base.partition(":")
    if kind not in ("config", "nemo", "pretrained") or not value:
        raise ValueError(f"base must be config:<yaml>, nemo:<path|s3://|models:/...> or pretrained:<name> (got {base!r})")
    return {kind: value}


AWS_CONN_ID = "clinasr_aws"   # SageMaker/EC2 API access (the platform points it at its loopback AWS server)


def aws_client(service: str):
    """A boto3 client from the Airflow AWS connection (credentials, region, endpoint live there)."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=AWS_CONN_ID, client_type=service).get_conn()


def training_plan(dataset_uri: str, params: dict, run_id: str) -> dict:
    """Everything a backend needs, decided once per run (so a retry sends the same job): the stage
    arguments, the deterministic job name, and for SageMaker the full CreateTrainingJob request."""
    import os

    from clinasr.training.launch import AWSLaunchConfig, job_name, sagemaker_request

    settings = Settings.from_env()
    backend = params["backend"]
    name = job_name(dataset_uri, run_id)
    ckpt_uri = params.get("checkpoint_uri") or None
    train_args = {
        "base": base_spec(params["base"]), "trainer": params["trainer_config"],
        "output_dir": str(work_dir(settings, "clinasr_training", run_id) / "train"),
        "trainer_overrides": {"max_steps": int(params["max_steps"]),
                              **({"batch_size": int(params["batch_size"])} if params.get("batch_size") else {})},
        "seed": int(params["seed"]), "resume": True,
        "mlflow": {"experiment": "clinasr-training", "register_as": params["register_as"],
                   "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI", settings.mlflow_uri),
                   "run_name": f"airflow-{run_id}"[:120],
                   "tags": {"airflow_run_id": run_id, "dataset_uri": dataset_uri,
                            # what it was fine-tuned from: the evaluation's baseline while there is no production
                            **({"base_model": params["base"].split(":", 1)[1]} if params["base"].startswith("nemo:") else {})}},
    }
    if ckpt_uri:
        train_args["checkpoint_uri"] = ckpt_uri
    replay = replay_for(params)
    if replay:
        train_args["trainer_overrides"]["replay"] = replay["replay"]
        train_args["replay_source"] = replay["uri"]
    elif params.get("replay_ratio") is not None:
        train_args["trainer_overrides"]["replay"] = {"ratio": 0}
    plan = {"backend": backend, "dataset_uri": dataset_uri, "job_name": name, "train_args": train_args,
            "sagemaker_config": None}
    if backend == "sagemaker":
        aws = AWSLaunchConfig(instance_count=int(params["instance_count"]), checkpoint_uri=ckpt_uri)
        plan["sagemaker_config"] = sagemaker_request(name, dataset_uri, train_args, aws)
    return plan


def replay_for(params: dict) -> dict | None:
    """The run's general-English replay ({"replay": trainer option, "uri": snapshot}), resolved when the run is
    planned: a fine-tune whose replay source is missing fails here, before any training, naming the set."""
    from clinasr import evalsets
    from clinasr.training.train import load_yaml

    replay = dict(load_yaml(params["trainer_config"]).get("replay") or {})
    if params.get("replay_ratio") is not None:
        replay["ratio"] = float(params["replay_ratio"])
    if float(replay.get("ratio", 0) or 0) <= 0:
        return None
    name = replay.setdefault("set", "general_replay")
    try:
        entry = evalsets.resolve(name)
    except evalsets.EvalSetError as e:
        raise ValueError(f"fine-tuning replays {name!r} at {replay['ratio']}:1 but the replay source is not available: "
                         f"{e} (or set the replay_ratio Param to 0)") from None
    return {"replay": replay, "uri": entry["uri"], "config_hash": entry["config_hash"]}


def train_local(plan: dict) -> dict:
    from clinasr.training.launch import launch

    return launch("local", plan["train_args"], plan["dataset_uri"], plan["job_name"], Settings.from_env(), log=log.info)


def launch_ec2(plan: dict, params: dict) -> dict:
    from clinasr.training.launch import AWSLaunchConfig, launch

    return launch("ec2", plan["train_args"], plan["dataset_uri"], plan["job_name"],
                  aws=AWSLaunchConfig(instance_count=int(params["instance_count"]),
                                      checkpoint_uri=plan["train_args"].get("checkpoint_uri")),
                  log=log.info, client=aws_client)


def ec2_done(handle: dict) -> bool:
    from clinasr.training.launch import ec2_states

    states = ec2_states(handle["instance_ids"], client=aws_client)
    log.info("EC2 job %s: %s", handle["job_name"], ", ".join(states))
    return all(st == "terminated" for st in states)


def cleanup_ec2(handle: dict | None) -> list[str]:
    """Always runs after the EC2 branch (also when it was skipped or failed): terminate what is left."""
    from clinasr.training.launch import terminate_ec2

    if not handle:
        return []
    job = handle["job_name"]
    ids = terminate_ec2(job, client=aws_client)
    log.info("EC2 job %s: %s", job, f"terminated {ids}" if ids else "no instance left running")
    return ids


def find_registered_version(register_as: str, run_id: str) -> dict:
    """The model version an AWS job registered (the ML container registers it, tagged with the Airflow run)."""
    from clinasr import registry

    c = registry.client()
    found = c.search_model_versions(f"name = '{register_as}' and tags.airflow_run_id = '{run_id}'")
    if not found:
        raise RuntimeError(f"the training job finished but registered no version of {register_as!r} tagged "
                           f"airflow_run_id={run_id!r} in MLflow: check the job's logs (MLFLOW_TRACKING_URI "
                           "must be reachable from the training instances)")
    mv = max(found, key=lambda v: int(v.version))
    return {"mlflow_run_id": mv.run_id, "model_version": str(mv.version),
            "model_uri": f"models:/{register_as}/{mv.version}"}


def record_candidate(plan: dict, local_result: dict | None, params: dict, run_id: str) -> dict:
    """The candidate of this run, whichever backend trained it; provenance links it to its dataset."""
    settings = Settings.from_env()
    result = dict(local_result or {})
    if plan["backend"] != "local":
        result = {"backend": plan["backend"], "job_name": plan["job_name"],
                  **find_registered_version(params["register_as"], run_id)}
    if not result.get("model_uri"):
        raise RuntimeError("training finished without registering a model (register_as was empty?)")
    if result.get("mlflow_run_id"):
        log.info("MLflow run: %s/#/experiments/%s/runs/%s", settings.mlflow_uri, result.get("mlflow_experiment_id", "0"),
                 result["mlflow_run_id"])
    dataset_uri = plan["dataset_uri"]
    replay = plan["train_args"].get("replay_source")
    declare(inputs=[{"uri": dataset_uri, "kind": "dataset"}] + (
                [{"uri": params["base"].split(":", 1)[1], "kind": "base-model"}] if not params["base"].startswith("config:") else [])
            + ([{"uri": replay, "kind": "replay-set"}] if replay else []),
            outputs=[{"uri": result["model_uri"], "kind": "model", "sha256": _sha(result.get("nemo_path"))}],
            mlflow={"run_id": result.get("mlflow_run_id"), "model_version": result.get("model_version")},
            job={"backend": plan["backend"], "name": plan["job_name"]})
    return {k: v for k, v in result.items() if k in ("backend", "job_name", "mlflow_run_id", "model_version", "model_uri",
                                                    "global_step", "train_seconds", "metrics", "n_params")}


def publish_reports(settings: Settings, local_dir: Path, names: tuple[str, ...], prefix: str, kind: str) -> list[dict]:
    """Upload report files to the object store; the provenance outputs (URI, kind, sha256) they become."""
    from clinasr.store import ObjectStore

    store = ObjectStore(settings)
    store.ensure_bucket()
    outputs = []
    for f in names:
        store.put_file(local_dir / f, f"{prefix}/{f}")
        outputs.append({"uri": f"{prefix}/{f}", "kind": kind, "sha256": _sha(local_dir / f)})
    return outputs


def _sha(path):
    from pathlib import Path

    if not path or not Path(path).exists():
        return None
    from clinasr.store import sha256_file

    return sha256_file(Path(path))


# -- evaluate and promote ------------------------------------------------------------------------------
def evaluation_plan(params: dict, triggering_asset_events, candidate_asset) -> dict:
    """Which candidate, against which baseline, on which sets."""
    from clinasr import registry

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
    refs = params.get("reference_models")
    if refs is None:   # not given: the gate config's list (versioned with the criteria)
        from clinasr.gate import load_gate

        refs = load_gate(params.get("gate_config") or "configs/gate/default.yaml")["reference_models"]
    return {"model_name": name, "candidate": f"models:/{name}/{version}", "candidate_version": version,
            "production_version": prod, "baseline": baseline,
            "baseline_kind": "production" if prod else ("base model" if baseline else None),
            "sets": sets, "missing_sets": missing, "dataset_uri": dataset,
            "references": [r.strip() for r in refs if r.strip()]}


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


def evaluate_model(ref: str, sets: list[dict], which: str, run_id: str) -> dict:
    from clinasr import mlenv

    settings = Settings.from_env()
    out = work_dir(settings, "clinasr_evaluate_promote", run_id) / which
    report = mlenv.run_stage("evaluate", {"model": ref, "sets": sets, "output_dir": str(out), "progress": False},
                             settings, log=log.info)
    declare(inputs=[{"uri": ref, "kind": "model"}] + [{"uri": s["manifest"], "kind": "evaluation-set"} for s in sets],
            outputs=[{"uri": report["report_path"], "kind": "evaluation-report", "sha256": _sha(report["report_path"])}])
    return report


def evaluate_references(specs: list[str], sets: list[dict], run_id: str) -> list[dict]:
    """Score each off-the-shelf reference model on the same sets. A reference that cannot be loaded or run
    (e.g. no hub for a pretrained name) is reported with its error; it never fails the evaluation."""
    from clinasr.gate import score_references
    from clinasr.mlenv import StageError

    return score_references(specs, lambda i, spec: _cached_reference(spec, sets, f"reference-{i + 1}", run_id),
                            StageError, log.warning)


# Bump when the way references are scored changes (v2: faster-whisper's default decoding, beam 5 + fallback).
REFERENCE_SCORING_VERSION = 2


def _cached_reference(spec: str, sets: list[dict], which: str, run_id: str) -> dict:
    """A reference model is off-the-shelf and the sets are immutable snapshots: its scores on the same sets are
    reused from an earlier run (e.g. the override run after a rejection) instead of decoding everything again.
    The key is the spec, each set's snapshot URI, config hash and terms, and the scoring version."""
    import json

    key = hashlib.sha256(json.dumps({"spec": spec, "v": REFERENCE_SCORING_VERSION,
                                     "sets": [[s["name"], s["manifest"], s.get("config_hash"), s.get("terms")] for s in sets]},
                                    sort_keys=True).encode()).hexdigest()[:24]
    cache = Settings.from_env().path("cache", "references") / f"{key}.json"
    if cache.exists():
        report = json.loads(cache.read_text())
        if Path(report.get("report_path", "")).exists():
            log.info("reference %s: scores reused from %s (same sets, same scoring)", spec, report["report_path"])
            declare(inputs=[{"uri": spec, "kind": "model"}] + [{"uri": s["manifest"], "kind": "evaluation-set"} for s in sets],
                    outputs=[{"uri": report["report_path"], "kind": "evaluation-report", "sha256": _sha(report["report_path"])}])
            return report
    report = evaluate_model(spec, sets, which, run_id)
    cache.write_text(json.dumps(report))
    return report


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


# -- drift --------------------------------------------------------------------------------------------
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
