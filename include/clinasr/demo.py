"""``clinasr demo``: bring the local platform up, run the flywheel DAGs through Airflow's REST API
(as a data engineer would from the UI), and print what was produced and where to look."""

from __future__ import annotations

import os
import time

from clinasr import platform as P
from clinasr.airflow_api import AirflowClient
from clinasr.settings import Settings

DEMO_TERMS = "warfarin, levetiracetam, metoprolol tartrate, apixaban, insulin glargine, furosemide, amoxicillin, lisinopril"


def run_demo(quick: bool = False, log=print) -> int:
    s = Settings.from_env()
    os.environ.setdefault("MLFLOW_TRACKING_URI", s.mlflow_uri)
    t0 = time.time()
    log("== 1/6 local platform")
    P.up(s, log=log)
    client = AirflowClient(s.airflow_url, "admin", P.airflow_admin_password(s))
    log("== 2/6 held-out evaluation sets and the replay set (DAG clinasr_evaluation_sets; built once, rebuilt "
        "only when configs/evalsets.yaml changes)")
    client.wait_for_dag("clinasr_evaluation_sets")
    sets_run = client.trigger("clinasr_evaluation_sets", {}, note="clinasr demo")
    if client.wait("clinasr_evaluation_sets", sets_run, timeout=1800, log=log)["state"] != "success":
        log(f"clinasr_evaluation_sets failed: see {s.airflow_url}/dags/clinasr_evaluation_sets/runs")
        return 1
    from clinasr import evalsets

    for st in evalsets.status(settings=s):
        log(f"  {st['name']:<17} {st['state']}  {st.get('uri', '')}")
    log("== 3/6 synthetic clinical speech data (DAG clinasr_synthetic_data)")
    client.wait_for_dag("clinasr_synthetic_data")
    client.wait_for_dag("clinasr_training")
    client.wait_for_dag("clinasr_evaluate_promote")
    earlier_training = {r["dag_run_id"] for r in client.runs("clinasr_training")}
    earlier_eval = {r["dag_run_id"] for r in client.runs("clinasr_evaluate_promote")}
    conf = {"terms": "warfarin, levetiracetam, metoprolol tartrate" if quick else DEMO_TERMS,
            "utterances_per_term": 3 if quick else 12, "seed": 7}

    def succeeded(dag_id: str, run_id: str, timeout: float = 1800) -> bool:
        if client.wait(dag_id, run_id, timeout=timeout, log=log)["state"] == "success":
            return True
        log(f"{dag_id} failed: see {s.airflow_url}/dags/{dag_id}/runs")
        return False

    run_id = client.trigger("clinasr_synthetic_data", conf, note="clinasr demo")
    if not succeeded("clinasr_synthetic_data", run_id):
        return 1
    snap = client.xcom("clinasr_synthetic_data", run_id, "stage_snapshot")
    log("== 4/6 fine-tuning (DAG clinasr_training, started by the dataset Asset event)")
    train_run = client.wait_for_new_run("clinasr_training", earlier_training)
    if not succeeded("clinasr_training", train_run, timeout=3600):
        return 1
    trained = client.xcom("clinasr_training", train_run, "candidate")
    log("== 5/6 evaluation and gate (DAG clinasr_evaluate_promote, started by the candidate Asset event)")
    eval_run = client.wait_for_new_run("clinasr_evaluate_promote", earlier_eval)
    run = client.wait("clinasr_evaluate_promote", eval_run, timeout=1800, log=log)
    gate = _gate_outcome(client, eval_run)
    log(f"gate               {gate}")
    if run["state"] != "success" and "rejected" not in gate:
        log(f"clinasr_evaluate_promote failed: see {s.airflow_url}/dags/clinasr_evaluate_promote/runs")
        return 1
    if run["state"] != "success":
        # a model trained for minutes on a 2-core CPU cannot meet the production gate; the demo shows the
        # override path (an explicit Param with a reason, recorded in provenance and on the model version)
        reason = "demo: toy CPU model promoted to exercise serving and rollback"
        log(f"== 5b/6 promoting over the gate with override_reason={reason!r}")
        eval_run = client.trigger("clinasr_evaluate_promote", {"candidate": trained["model_uri"], "override_reason": reason},
                                  note="clinasr demo override")
        if not succeeded("clinasr_evaluate_promote", eval_run):
            return 1
    promoted = client.xcom("clinasr_evaluate_promote", eval_run, "promote")
    log("== 6/6 summary")
    heard = _transcribe_one(s, snap["uri"])
    log(f"dataset snapshot   {snap['uri']}  ({snap['counts']['train']} train / {snap['counts']['val']} val rows, "
        f"{(snap['hours']['train'] + snap['hours']['val']) * 60:.1f} min of audio)")
    log(f"candidate model    {trained['model_uri']}  ({trained['n_params'] / 1e6:.2f} M parameters, "
        f"{trained['global_step']} steps in {trained['train_seconds']:.0f}s, val WER "
        f"{trained['metrics'].get('val_wer', float('nan')):.3f})")
    log(f"production model   models:/{promoted['name']}/{promoted['production']}  (previous: {promoted['previous']})")
    gate_res = client.xcom("clinasr_evaluate_promote", eval_run, "gate")
    log(f"gate report        {gate_res['report']}")
    from clinasr.gate import leaderboards_text

    log("leaderboards (held-out sets decide; the validation split shares the training voices and is shown only; "
        "reference models are off-the-shelf, for comparison)\n" + leaderboards_text(gate_res.get("leaderboards") or {}))
    log(f"served             {s.serve_url}/v1/audio/transcriptions (OpenAI client), model {heard['version']}")
    log(f"  API key: {s.serve_api_key()}  (Authorization: Bearer ...; kept in {s.home / 'serve' / 'api_key'})")
    log(f"  said:  {heard['reference']}")
    log(f"  heard: {heard['text']}")
    log(f"  streamed (stream=True): first text after {heard['streamed_ttft_s'] or float('nan'):.2f}s; live audio: "
        f"ws://{s.serve_url.split('://', 1)[1]}/v1/realtime (examples/realtime_client.py)")
    log(f"  trace: {heard['trace'] or 'not in MLflow yet (experiment clinasr-serving)'}")
    from clinasr import lineage
    from clinasr.provenance import ProvenanceLog

    page = s.path("lineage") / f"{promoted['name']}-v{promoted['production']}.html"
    page.write_text(lineage.page(ProvenanceLog(s).records(), f"models:/{promoted['name']}/{promoted['production']}"))
    log(f"lineage page       {page}  (where the production model came from; `clinasr provenance page`)")
    log(f"provenance         {s.home / 'provenance' / 'chain.jsonl'}  (`clinasr provenance verify`)")
    log(f"Airflow UI         {s.airflow_url}  user admin / password {P.airflow_admin_password(s)}")
    log(f"MLflow UI          {s.mlflow_uri}")
    log(f"done in {time.time() - t0:.0f}s; stop the platform with `clinasr platform down`")
    return 0


def _gate_outcome(client: AirflowClient, run_id: str) -> str:
    try:
        g = client.xcom("clinasr_evaluate_promote", run_id, "gate")
        return f"passed — {g['summary']}"
    except Exception:   # a failed gate task pushes no XCom: read the decision from the registry instead
        from clinasr import registry

        p = client.xcom("clinasr_evaluate_promote", run_id, "plan")
        tags = registry.client().get_model_version(p["model_name"], p["candidate_version"]).tags
        if tags.get("status") == "rejected":
            return f"rejected — {tags.get('rejection_reason')} (report {tags.get('gate_report')})"
        return "did not decide: see the run's logs"


def _transcribe_one(s: Settings, snapshot_uri: str) -> dict:
    """One synthetic validation utterance through the serving API with the official openai client."""
    import json

    import openai

    from clinasr.store import ObjectStore

    store = ObjectStore(s)
    row = json.loads(store.get_bytes(f"{snapshot_uri}/val_manifest.jsonl").decode().splitlines()[0])
    audio = store.get_bytes(f"{snapshot_uri}/{row['audio_filepath']}")
    client = openai.OpenAI(base_url=f"{s.serve_url}/v1", api_key=s.serve_api_key(), max_retries=2)
    raw = client.audio.transcriptions.with_raw_response.create(model="clinasr-asr", file=("utterance.wav", audio))
    t0, first = time.perf_counter(), None      # the same clip streamed: text deltas as chunks are decoded
    for event in client.audio.transcriptions.create(model="clinasr-asr", file=("utterance.wav", audio), stream=True):
        if event.type == "transcript.text.delta" and first is None:
            first = time.perf_counter() - t0
    from clinasr.tracing import find_trace, trace_url

    trace = find_trace(s.mlflow_uri, raw.headers.get("x-trace-id", ""), {"inference"}, timeout=30)
    return {"reference": row["text"], "text": raw.parse().text, "version": raw.headers.get("x-model-version"),
            "streamed_ttft_s": first, "trace": trace_url(s.mlflow_uri, trace) if trace else None}
