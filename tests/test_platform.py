"""The local platform as a user runs it: real S3 server, MLflow and Airflow on loopback; a DAG run
triggered through Airflow's REST API with Params (as the UI does)."""

import json
import os
import socket

import pytest

from clinasr import platform as P
from clinasr.airflow_api import AirflowAPIError, AirflowClient
from clinasr.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.platform


@pytest.fixture(scope="module")
def platform_settings(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("platform")
    ports = {"CLINASR_AIRFLOW_PORT": free_port(), "CLINASR_MLFLOW_PORT": free_port(), "CLINASR_S3_PORT": free_port(),
             "CLINASR_SERVE_PORT": free_port(), "CLINASR_AWS_PORT": free_port()}
    mp.setenv("CLINASR_HOME", str(home))
    for k, v in ports.items():
        mp.setenv(k, str(v))
    for k in ("CLINASR_S3_ENDPOINT", "MLFLOW_TRACKING_URI", "CLINASR_BUCKET"):
        mp.delenv(k, raising=False)
    # the held-out evaluation sets and the replay set, at test size (same voices and engine, few rows)
    mp.setenv("CLINASR_EVALSETS_CONFIG", str(P.REPO_ROOT / "tests" / "data" / "evalsets-small.yaml"))
    s = Settings.from_env()
    mp.setenv("CLINASR_S3_ENDPOINT", s.s3_endpoint)
    mp.setenv("MLFLOW_TRACKING_URI", s.mlflow_uri)
    P.up(s)
    yield s
    P.down(s)
    mp.undo()


def assert_success(run: dict) -> None:
    """A finished run succeeded; if not, the message says which tasks failed and what the scheduler logged."""
    assert run["state"] == "success", f"run {run.get('dag_run_id')} {run['state']}: {run.get('diagnosis')}"


def test_status_and_idempotent_start(platform_settings):
    s = platform_settings
    rows = {r["service"]: r["state"] for r in P.status(s)}
    assert set(rows.values()) == {"healthy"}, rows
    msgs = []
    P.up(s, log=msgs.append)
    assert all("already running" in m for m in msgs)


def step_trigger_dag_through_rest_api_with_params(platform_settings):
    s = platform_settings
    client = AirflowClient(s.airflow_url, "admin", P.airflow_admin_password(s))
    client.wait_for_dag("clinasr_synthetic_data")
    client.wait_for_dag("clinasr_training")
    client.pause("clinasr_training")   # trained explicitly, with few steps, in the next test
    with pytest.raises(AirflowAPIError, match="400|422"):
        client.trigger("clinasr_synthetic_data", {"utterances_per_term": 0})   # the form's validation
    run_id = client.trigger("clinasr_synthetic_data", {"terms": "warfarin, apixaban", "utterances_per_term": 2,
                                                       "seed": 11, "accent_profiles": ["native"]})
    run = client.wait("clinasr_synthetic_data", run_id, timeout=600)
    assert_success(run)
    # what a failed run's message would say, read from the same endpoints (the event log filter must be accepted)
    assert client.diagnose("clinasr_synthetic_data", run_id) == "failed tasks: none; state mismatches: 0"
    tail = client.task_log_tail("clinasr_synthetic_data", run_id, "stage_snapshot", 1)   # what it shows of a failed task
    assert tail and all(isinstance(line, str) and len(line) <= 300 for line in tail), tail
    snap = client.xcom("clinasr_synthetic_data", run_id, "stage_snapshot")
    assert snap["uri"].startswith(f"s3://{s.bucket}/datasets/")
    assert snap["counts"]["train"] + snap["counts"]["val"] == 4
    from clinasr.store import ObjectStore

    card = json.loads(ObjectStore(s).get_bytes(f"{snap['uri']}/dataset_card.json"))
    assert set(card["per_accent_profile"]) == {"native"}
    # the listener wrote one provenance record per task, chained, with who triggered it
    from clinasr import provenance as V

    recs = V.ProvenanceLog(s).records()
    mine = [r for r in recs if r["run_id"] == run_id]
    # (no_review, an EmptyOperator, is marked done by the scheduler without running: it leaves no record)
    assert [r["task_id"] for r in mine] == ["transcripts", "qa_choice", "synthesize", "stage_snapshot"]
    assert V.verify(recs) == [] and V.verify_mirror(V.ProvenanceLog(s)) == []
    assert mine[0]["triggering_user"] == "admin" and mine[0]["params"]["seed"] == 11
    assert any(o["uri"] == snap["uri"] and o["sha256"] == snap["digest"] for o in mine[-1]["outputs"])
    assert snap["uri"] in V.downstream(V.lineage_graph(recs), mine[0]["outputs"][0]["uri"])


def step_qa_review_waits_for_a_person_and_records_the_decision(platform_settings):
    """qa_review on: the QA sample page is published, approve_qa waits for input; Reject stops the run before
    synthesis, Approve lets it finish with the page kept in the snapshot; both decisions are in provenance."""
    from clinasr import provenance as V
    from clinasr.store import ObjectStore

    s = platform_settings
    client = AirflowClient(s.airflow_url, "admin", P.airflow_admin_password(s))
    conf = {"terms": "warfarin, levetiracetam", "utterances_per_term": 2, "seed": 11, "accent_profiles": ["native"],
            "qa_review": True}
    decisions = {}
    for option in ("Reject", "Approve"):      # Approve last: the next test trains on the newest snapshot
        run_id = client.trigger("clinasr_synthetic_data", conf)
        client.respond("clinasr_synthetic_data", run_id, "approve_qa", option)
        run = client.wait("clinasr_synthetic_data", run_id, timeout=600)
        states = {t["task_id"]: t["state"] for t in client.task_instances("clinasr_synthetic_data", run_id)}
        qa = client.xcom("clinasr_synthetic_data", run_id, "qa_sample")
        page = ObjectStore(s).get_bytes(qa["page"]).decode()
        assert "levetiracetam" in page and page.count("<audio") == qa["clips"] == 4   # 2 terms x 1 profile + 2 augmented
        # the try that acted on the answer (Airflow 3.3's HITL race can add a "failed" record of the same try,
        # and a retry that is answered again: AirflowClient.respond)
        rec = [r for r in V.ProvenanceLog(s).records()
               if r["run_id"] == run_id and r["task_id"] == "approve_qa" and "qa_review" in r][0]
        decisions[option] = (run["state"], states, rec)
    state, states, rec = decisions["Reject"]
    assert states["synthesize"] == states["stage_snapshot"] == "skipped" and states["no_review"] == "skipped", states
    assert rec["qa_review"]["decision"] == "Reject" and rec["qa_review"]["by"]
    state, states, rec = decisions["Approve"]
    assert state == "success" and states["stage_snapshot"] == "success", states
    assert rec["qa_review"]["decision"] == "Approve" and rec["inputs"][0]["kind"] == "qa-sample"
    snap = client.xcom("clinasr_synthetic_data", client.runs("clinasr_synthetic_data")[0]["dag_run_id"], "stage_snapshot")
    assert any(k.endswith("qa/qa.html") for k in ObjectStore(s).list_keys(snap["uri"]))
    assert V.verify(V.ProvenanceLog(s).records()) == []


def step_evaluation_sets_are_built_once_staged_and_indexed_by_config(platform_settings):
    """clinasr_evaluation_sets renders the held-out sets and the replay set, stages each as a snapshot indexed by
    its config hash, and records provenance; a second run finds them current and builds nothing."""
    from clinasr import evalsets
    from clinasr import provenance as V
    from clinasr.store import ObjectStore

    s = platform_settings
    client = AirflowClient(s.airflow_url, "admin", P.airflow_admin_password(s))
    client.wait_for_dag("clinasr_evaluation_sets")
    run_id = client.trigger("clinasr_evaluation_sets", {})
    assert_success(client.wait("clinasr_evaluation_sets", run_id, timeout=600))
    states = {st["name"]: st for st in evalsets.status(settings=s)}
    assert {n: st["state"] for n, st in states.items()} == {"clinical_heldout": "current", "general_heldout": "current",
                                                            "general_replay": "current"}
    store = ObjectStore(s)
    card = json.loads(store.get_bytes(f"{states['general_heldout']['uri']}/evalset_card.json"))
    held, _ = evalsets.heldout_voices(evalsets.load_config())
    assert card["rows"] == {"test_manifest.jsonl": 10} and set(card["voices"]) <= held
    recs = [r for r in V.ProvenanceLog(s).records() if r["run_id"] == run_id and r["task_id"] == "build"]
    assert sorted(r["evaluation_set"]["name"] for r in recs) == sorted(states)
    assert all(r["evaluation_set"]["built"] for r in recs) and all(r["outputs"][0]["uri"].startswith("s3://") for r in recs)
    again = client.trigger("clinasr_evaluation_sets", {})
    assert_success(client.wait("clinasr_evaluation_sets", again, timeout=300))
    recs = [r for r in V.ProvenanceLog(s).records() if r["run_id"] == again and r["task_id"] == "build"]
    assert len(recs) == 3 and not any(r["evaluation_set"]["built"] for r in recs)


def step_training_dag_registers_a_candidate(platform_settings):
    s = platform_settings
    client = AirflowClient(s.airflow_url, "admin", P.airflow_admin_password(s))
    runs = client.runs("clinasr_synthetic_data")
    snap = client.xcom("clinasr_synthetic_data", runs[0]["dag_run_id"], "stage_snapshot")
    client.pause("clinasr_training", False)
    run_id = client.trigger("clinasr_training", {"dataset_uri": snap["uri"], "max_steps": 4, "batch_size": 2,
                                                 "register_as": "clinasr-platform-test"})
    run = client.wait("clinasr_training", run_id, timeout=600)
    assert_success(run)
    out = client.xcom("clinasr_training", run_id, "candidate")
    states = {t["task_id"]: t["state"] for t in client.task_instances("clinasr_training", run_id)}
    assert states["train_local"] == "success" and states["train_sagemaker"] == states["launch_ec2"] == "skipped"
    assert out["global_step"] == 4 and out["model_uri"] == f"models:/clinasr-platform-test/{out['model_version']}"
    from mlflow import MlflowClient

    mv = MlflowClient(s.mlflow_uri).get_model_version_by_alias("clinasr-platform-test", "candidate")
    assert mv.version == out["model_version"]
    from clinasr import provenance as V

    rec = [r for r in V.ProvenanceLog(s).records() if r["run_id"] == run_id and r["task_id"] == "candidate"][0]
    assert rec["inputs"][0]["uri"] == snap["uri"] and rec["outputs"][0]["uri"] == out["model_uri"]
    # every fine-tune replays general English: the replay set is an input of the candidate
    replay = [i for i in rec["inputs"] if i["kind"] == "replay-set"]
    assert len(replay) == 1 and replay[0]["uri"].startswith(f"s3://{s.bucket}/evalsets/general_replay/")
    assert rec["mlflow"]["run_id"] == out["mlflow_run_id"] and len(rec["outputs"][0]["sha256"]) == 64
    # lineage: the model goes back to the dataset snapshot and the transcripts it was made from
    up = V.upstream(V.lineage_graph(V.ProvenanceLog(s).records()), out["model_uri"])
    assert snap["uri"] in up and any(u.endswith("transcripts.jsonl") for u in up)


def step_evaluate_promote_dag_rejects_through_the_gate_then_promotes_with_an_override(platform_settings):
    s = platform_settings
    client = AirflowClient(s.airflow_url, "admin", P.airflow_admin_password(s))
    from mlflow import MlflowClient

    from clinasr.store import ObjectStore

    # the candidate Asset event of the training test started an evaluation: a 4-step model must be rejected
    auto = client.wait_for_new_run("clinasr_evaluate_promote", set(), timeout=120)
    run = client.wait("clinasr_evaluate_promote", auto, timeout=600)
    states = {t["task_id"]: t["state"] for t in client.task_instances("clinasr_evaluate_promote", auto)}
    assert run["state"] == "failed" and states["gate"] == "failed" and states["promote"] == "upstream_failed", states
    assert states["evaluate_references"] == "success", states
    ml = MlflowClient(s.mlflow_uri)
    cand = ml.get_model_version_by_alias("clinasr-platform-test", "candidate")
    assert cand.tags["status"] == "rejected" and cand.tags["gate"] == "reject"
    assert "gate failed" in cand.tags["rejection_reason"] and " on clinical_heldout " in cand.tags["rejection_reason"]
    page = ObjectStore(s).get_bytes(cand.tags["gate_report"]).decode()
    assert "Decision: REJECT" in page and "data:image/png;base64," in page
    assert "gate" in {a.path for a in ml.list_artifacts(cand.run_id)}
    metrics = ml.get_run(cand.run_id).data.metrics       # every set's figures, phantom terms included, in MLflow
    assert {"eval_clinical_heldout_wer", "eval_general_heldout_wer", "eval_general_heldout_phantoms_per_100",
            "eval_validation_wer"} <= set(metrics)
    assert "gate/phantom_terms.json" in {a.path for a in ml.list_artifacts(cand.run_id, "gate")}
    # overriding needs an explicit Param with a reason; it is recorded
    # (with a reference model that cannot load here — no hub — beside the packaged Whisper: reported, not fatal)
    run_id = client.trigger("clinasr_evaluate_promote", {"model_name": "clinasr-platform-test",
                                                         "override_reason": "platform test: first production model",
                                                         "reference_models": ["whisper:tiny.en",
                                                                              "pretrained:nvidia/parakeet-tdt-0.6b-v2"]})
    run = client.wait("clinasr_evaluate_promote", run_id, timeout=600)
    assert_success(run)
    gate_out = client.xcom("clinasr_evaluate_promote", run_id, "gate")
    assert list(gate_out["leaderboards"]) == ["clinical_heldout", "general_heldout", "validation"]
    plan = client.xcom("clinasr_evaluate_promote", run_id, "plan")
    assert plan["missing_sets"] == {} and [x["name"] for x in plan["sets"]] == ["clinical_heldout", "general_heldout",
                                                                               "validation"]
    assert plan["sets"][0]["terms"] == ["warfarin", "levetiracetam"]   # the candidate's own priority terms
    board = {r["model"]: r for r in gate_out["leaderboard"]}
    assert board["whisper-tiny.en"]["role"] == "reference" and 0 <= board["whisper-tiny.en"]["wer"]
    assert "cannot load pretrained" in board["pretrained:nvidia/parakeet-tdt-0.6b-v2"]["error"]
    # no production yet: the baseline is the base model the candidate was fine-tuned from (the shipped one)
    assert {r["role"] for r in board.values()} == {"candidate", "base model", "reference"}
    base_row = [r for r in board.values() if r["role"] == "base model"][0]
    assert base_row["model"].endswith("models/clinasr-base-en-multi/model.nemo") and 0 <= base_row["wer"]
    prod = ml.get_model_version_by_alias("clinasr-platform-test", "production")
    assert prod.version == cand.version and prod.tags["promoted_by"] == "admin"
    assert prod.tags["promotion_reason"] == "override: platform test: first production model"
    from clinasr import provenance as V

    gate_rec = [r for r in V.ProvenanceLog(s).records() if r["run_id"] == run_id and r["task_id"] == "gate"][0]
    assert gate_rec["gate"]["override"]["reason"] == "platform test: first production model"
    assert gate_rec["gate"]["override"]["by"] == "admin" and not gate_rec["gate"]["passed"]
    # the deploy task switched the platform's transcription service to the new production version
    import openai
    import requests

    version = f"clinasr-platform-test/{prod.version}"
    assert requests.get(f"{s.serve_url}/health/ready").json()["model_version"] == version
    assert client.xcom("clinasr_evaluate_promote", run_id, "deploy")["version"] == version
    snap_uri = client.xcom("clinasr_synthetic_data", client.runs("clinasr_synthetic_data")[0]["dag_run_id"],
                           "stage_snapshot")["uri"]
    store = ObjectStore(s)
    row = json.loads(store.get_bytes(f"{snap_uri}/val_manifest.jsonl").decode().splitlines()[0])
    audio = store.get_bytes(f"{snap_uri}/{row['audio_filepath']}")
    oa = openai.OpenAI(base_url=f"{s.serve_url}/v1", api_key=s.serve_api_key(), max_retries=0)
    raw = oa.audio.transcriptions.with_raw_response.create(model="clinasr-asr", file=("a.wav", audio))
    assert raw.headers["x-model-version"] == version and isinstance(raw.parse().text, str)
    from clinasr.tracing import find_trace      # the platform's service traces each request into its MLflow

    trace = find_trace(s.mlflow_uri, raw.headers["x-trace-id"], {"inference"}, timeout=60)
    assert trace is not None, "the request's trace did not reach the platform's MLflow"
    root = next(sp for sp in trace.data.spans if sp.parent_id is None)
    assert root.attributes["model.version"] == version and root.attributes["request_id"] == raw.headers["x-request-id"]
    with pytest.raises(openai.AuthenticationError):     # the platform's service requires its generated key
        openai.OpenAI(base_url=f"{s.serve_url}/v1", api_key="guess", max_retries=0).audio.transcriptions.create(
            model="clinasr-asr", file=("a.wav", audio))
    # the chain heads stamped on the candidate version and the gate report are in the chain; the mirror agrees
    from clinasr import provenance as V

    stamps, notes = V.collect_stamps(s)
    assert not notes and any(w.startswith("model version clinasr-platform-test") for w, _ in stamps)
    assert any(w.startswith("gate report") for w, _ in stamps)
    plog = V.ProvenanceLog(s)
    assert V.verify_stamps(plog, stamps) == [] and V.verify_mirror(plog) == []
    # a reviewer's questions, answered for the promoted model: where did it come from, what used the dataset
    from clinasr.cli import main as cli

    page = s.home / "lineage.html"
    assert cli(["provenance", "page", "models:/clinasr-platform-test@production", "--out", str(page)]) == 0
    up, down = page.read_text().split("<h2>What used it</h2>")
    assert snap_uri in up and "transcripts.jsonl" in up and "Provenance chain intact" in up
    assert f"{s.serve_url}/v1/audio/transcriptions" in down and "clinasr_evaluate_promote › promote" in down


def step_drift_dag_retrains_on_a_drifted_term_and_not_on_steady_feedback(platform_settings, tmp_path):
    """Feedback where "warfarin" is misheard triggers clinasr_synthetic_data with warfarin as the priority term;
    steady feedback does not. (The production model here is a 4-step toy that never got warfarin right, so the
    test policy judges terms on their own KER, without the increase-over-promotion condition.)"""
    from datetime import datetime, timedelta, timezone

    import yaml

    from clinasr.tasks.drift import _production_reference

    s = platform_settings
    client = AirflowClient(s.airflow_url, "admin", P.airflow_admin_password(s))
    client.wait_for_dag("clinasr_drift")
    _, ref = _production_reference("clinasr-platform-test")
    assert ref and ref["audio"]["duration_s"] > 0        # recorded from the gate report at promotion
    policy = yaml.safe_load((P.REPO_ROOT / "configs/drift/default.yaml").read_text())
    policy["thresholds"].update(max_term_ker_increase=-1.0, max_wer_increase=1.0, max_ker_increase=1.0)
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    sentences = ["patient takes warfarin two milligrams once daily", "start apixaban five milligrams twice daily"]
    when = datetime.now(timezone.utc) - timedelta(days=1)

    def write(pairs):
        for sub in ("traffic", "feedback"):
            (s.home / "serve" / sub).mkdir(parents=True, exist_ok=True)
        day = when.date().isoformat()
        with open(s.home / "serve" / "traffic" / f"{day}.jsonl", "w") as t, \
                open(s.home / "serve" / "feedback" / f"{day}.jsonl", "w") as f:
            for i, (hyp, said) in enumerate(pairs):
                t.write(json.dumps({"ts": when.isoformat(), "request_id": f"t{i}", "hypothesis": hyp, "sample_rate": 16000,
                                    **ref["audio"]}) + "\n")
                f.write(json.dumps({"ts": when.isoformat(), "request_id": f"t{i}", "corrected_text": said}) + "\n")

    def run_drift():
        before = {r["dag_run_id"] for r in client.runs("clinasr_synthetic_data")}
        run_id = client.trigger("clinasr_drift", {"model_name": "clinasr-platform-test", "window_days": 3,
                                                  "policy": str(tmp_path / "policy.yaml"), "utterances_per_term": 1})
        assert_success(client.wait("clinasr_drift", run_id, timeout=300))
        states = {t["task_id"]: t["state"] for t in client.task_instances("clinasr_drift", run_id)}
        new = [r for r in client.runs("clinasr_synthetic_data") if r["dag_run_id"] not in before]
        return run_id, client.xcom("clinasr_drift", run_id, "measure"), states, new

    write([(x, x) for x in sentences * 15])
    _, m, states, new = run_drift()
    assert m["status"] == "ok" and states["retrain"] == "skipped" and new == []

    write([(x.replace("warfarin", "war for in"), x) for x in sentences * 15])
    run_id, m, states, new = run_drift()
    assert m["status"] == "drift" and m["terms"] == ["warfarin"] and states["retrain"] == "success"
    assert len(new) == 1 and new[0]["conf"]["terms"] == "warfarin" and new[0]["conf"]["reason"].startswith("drift")
    from clinasr import provenance as V

    rec = [r for r in V.ProvenanceLog(s).records() if r["run_id"] == run_id and r["task_id"] == "measure"][0]
    assert rec["drift"]["status"] == "drift" and rec["drift"]["terms"] == ["warfarin"]
    assert any(i["kind"] == "served-traffic" for i in rec["inputs"])
    assert states["approve_lexicon"] == "skipped" and states["no_lexicon_review"] == "success"   # nothing to review

    # a drug the lexicon does not know, in the clinicians' corrections: proposed, and added only on approval
    from clinasr.synth.lexicon import load_lexicon

    new_drug = "patient started zilebesiran yesterday evening"
    write([(x.replace("warfarin", "war for in"), x) for x in sentences * 15]
          + [("patient started zeal a bees iran yesterday evening", new_drug)] * 3)
    before = {r["dag_run_id"] for r in client.runs("clinasr_synthetic_data")}
    run_id = client.trigger("clinasr_drift", {"model_name": "clinasr-platform-test", "window_days": 3,
                                              "policy": str(tmp_path / "policy.yaml"), "utterances_per_term": 1})
    assert "zilebesiran" not in load_lexicon().categories()
    client.respond("clinasr_drift", run_id, "approve_lexicon", "Approve")
    assert_success(client.wait("clinasr_drift", run_id, timeout=300))
    assert client.xcom("clinasr_drift", run_id, "measure")["proposed_additions"] == ["zilebesiran"]
    assert load_lexicon().categories()["zilebesiran"] == "drug"
    new = [r for r in client.runs("clinasr_synthetic_data") if r["dag_run_id"] not in before]
    assert len(new) == 1 and new[0]["conf"]["terms"] == "warfarin, zilebesiran"
    review = [r for r in V.ProvenanceLog(s).records()
              if r["run_id"] == run_id and r["task_id"] == "approve_lexicon" and "lexicon_review" in r][0]
    assert review["lexicon_review"]["decision"] == "Approve" and review["lexicon_review"]["added"] == ["zilebesiran"]
    assert review["lexicon_review"]["lexicon_version"] == load_lexicon().version != review["lexicon_review"]["lexicon_version_before"]
    # the retraining it started is not part of this test: stop it before it makes a dataset that starts a training run
    client.pause("clinasr_synthetic_data")
    for dag_id in ("clinasr_synthetic_data", "clinasr_training"):
        client.stop_active(dag_id)


def step_training_dag_sagemaker_backend_runs_the_providers_operator(platform_settings):
    """backend=sagemaker: the amazon provider's SageMakerTrainingOperator sends our request (to the platform's
    loopback AWS server, through the clinasr_aws connection); the candidate task finds the version the job
    registered. moto accepts the job but runs no container, so this test plays the container's part."""
    import boto3
    from mlflow import MlflowClient

    from clinasr.training.launch import job_name

    s = platform_settings
    client = AirflowClient(s.airflow_url, "admin", P.airflow_admin_password(s))
    done = [r for r in client.runs("clinasr_synthetic_data") if r["state"] == "success"]
    snap = client.xcom("clinasr_synthetic_data", done[0]["dag_run_id"], "stage_snapshot")
    run_id = "manual__sagemaker-backend-test"
    client.pause("clinasr_evaluate_promote")    # the job's "model" is an empty registry entry: nothing to evaluate
    client.stop_active("clinasr_training")      # a retraining an earlier step started would hold max_active_runs=1
    ml = MlflowClient(s.mlflow_uri)
    ml.create_registered_model("clinasr-sm-test")
    job_run = ml.create_run(ml.get_experiment_by_name("Default").experiment_id)
    mv = ml.create_model_version("clinasr-sm-test", f"{job_run.info.artifact_uri}/model/model.nemo", job_run.info.run_id,
                                 tags={"airflow_run_id": run_id})
    client.trigger("clinasr_training", {"dataset_uri": snap["uri"], "backend": "sagemaker", "instance_count": 2,
                                        "register_as": "clinasr-sm-test"}, run_id=run_id)
    run = client.wait("clinasr_training", run_id, timeout=300)
    states = {t["task_id"]: t["state"] for t in client.task_instances("clinasr_training", run_id)}
    assert run["state"] == "success", states
    assert states["train_sagemaker"] == "success" and states["train_local"] == states["launch_ec2"] == "skipped"
    sm = boto3.client("sagemaker", endpoint_url=s.aws_endpoint, region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="x")
    job = sm.describe_training_job(TrainingJobName=job_name(snap["uri"], run_id))
    assert job["ResourceConfig"]["InstanceCount"] == 2
    assert job["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == snap["uri"] + "/"
    out = client.xcom("clinasr_training", run_id, "candidate")
    assert out["backend"] == "sagemaker" and out["model_version"] == str(mv.version)


STEPS = [step_trigger_dag_through_rest_api_with_params, step_qa_review_waits_for_a_person_and_records_the_decision,
         step_evaluation_sets_are_built_once_staged_and_indexed_by_config, step_training_dag_registers_a_candidate,
         step_evaluate_promote_dag_rejects_through_the_gate_then_promotes_with_an_override,
         step_drift_dag_retrains_on_a_drifted_term_and_not_on_steady_feedback,
         step_training_dag_sagemaker_backend_runs_the_providers_operator]


def test_the_flywheel_scenario(platform_settings, tmp_path):
    """The platform's flywheel as one explicit scenario, in the order a data engineer runs it: each step uses what
    the steps before it made (a dataset, the evaluation sets, a candidate, a production model), so they are steps
    of one test, not tests that silently depend on each other's order. A failure names its step."""
    import inspect

    for i, step in enumerate(STEPS, 1):
        args = [platform_settings] + ([tmp_path] if "tmp_path" in inspect.signature(step).parameters else [])
        try:
            step(*args)
        except Exception as e:
            raise AssertionError(f"flywheel step {i}/{len(STEPS)} {step.__name__.removeprefix('step_')} failed: "
                                 f"{type(e).__name__}: {str(e)[:2000]}") from e


def test_port_taken_is_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("CLINASR_HOME", str(tmp_path))
    monkeypatch.delenv("CLINASR_S3_ENDPOINT", raising=False)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        monkeypatch.setenv("CLINASR_S3_PORT", str(blocker.getsockname()[1]))
        s = Settings.from_env()
        with pytest.raises(P.PlatformError, match="port .* is taken .* CLINASR_S3_PORT"):
            P.up(s, only=["s3"])


def test_stopping_twice_is_fine(tmp_path, monkeypatch):
    monkeypatch.setenv("CLINASR_HOME", str(tmp_path))
    monkeypatch.delenv("CLINASR_S3_ENDPOINT", raising=False)     # the module's platform set it: use this one's store
    monkeypatch.setenv("CLINASR_S3_PORT", str(free_port()))
    s = Settings.from_env()
    P.up(s, only=["s3"])
    out = []
    P.down(s, log=out.append)
    P.down(s, log=out.append)
    assert "s3: stopped" in out and out.count("s3: not running") == 1


def test_a_killed_service_is_seen_as_down_even_as_a_zombie_with_spaces_in_its_name():
    """A service killed while the process that started it lives on (the demo, a supervisor) stays a zombie until
    reaped; its command name may hold spaces ("airflow api_server"): it must count as down, so `platform up`
    restarts it (found by bench/chaos.py: the API server was never restarted)."""
    import signal
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "import ctypes, time; ctypes.CDLL(None).prctl(15, b'svc (a) b', 0, 0, 0); "
                                                    "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"ready"
    assert P._alive(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.time() + 10
    while "Z" not in open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] and time.time() < deadline:
        time.sleep(0.05)
    assert not P._alive(child.pid)      # a zombie, not reaped yet
    child.wait()
