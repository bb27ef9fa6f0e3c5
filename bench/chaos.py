"""Kill every platform service once (SIGKILL, as a crash or an OOM kill would) while flywheel DAG runs are in
flight, restart it the way a supervisor would (`clinasr platform up` starts what is down), and count what
survived: runs that still finished, objects lost from the store, and whether the provenance chain and its
locked mirror still verify.

    .venv/orch/bin/python bench/chaos.py        (~20 min on 2 cores; its own CLINASR_HOME and ports)

Small runs (2 drugs × 3 utterances, 20 training steps, the test-size evaluation sets) so that each kill lands
inside a task. Writes bench/results/chaos.{json,md}.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))

from clinasr.platform import free_port  # noqa: E402



def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="clinasr-chaos-"))
    os.environ.update(CLINASR_HOME=str(home), CLINASR_EVALSETS_CONFIG=str(REPO / "tests/data/evalsets-small.yaml"),
                      **{k: str(free_port()) for k in ("CLINASR_AIRFLOW_PORT", "CLINASR_MLFLOW_PORT", "CLINASR_S3_PORT",
                                                        "CLINASR_SERVE_PORT", "CLINASR_AWS_PORT")})
    for k in ("CLINASR_S3_ENDPOINT", "MLFLOW_TRACKING_URI", "CLINASR_BUCKET"):
        os.environ.pop(k, None)
    from clinasr import platform as P
    from clinasr import provenance as V
    from clinasr.airflow_api import AirflowClient
    from clinasr.settings import Settings
    from clinasr.store import ObjectStore

    s = Settings.from_env()
    os.environ.update(CLINASR_S3_ENDPOINT=s.s3_endpoint, MLFLOW_TRACKING_URI=s.mlflow_uri)
    t_start = time.time()
    P.up(s, log=lambda m: None)
    client = AirflowClient(s.airflow_url, "admin", P.airflow_admin_password(s), timeout=120)
    for d in ("clinasr_evaluation_sets", "clinasr_synthetic_data", "clinasr_training", "clinasr_evaluate_promote"):
        client.wait_for_dag(d)
    client.pause("clinasr_training")          # each DAG is triggered explicitly, with a kill scheduled inside it
    client.pause("clinasr_evaluate_promote")
    store = ObjectStore(s)
    events = []

    def objects() -> set[str]:
        return set(store.list_keys(f"s3://{s.bucket}/")) | {f"provenance-bucket/{k}" for k in
                                                           store.list_keys(f"s3://{s.provenance_bucket}/")}

    def kill_later(service: str, after_s: float):
        def go():
            time.sleep(after_s)
            pid = P.running_pid(s, service)
            if pid:
                os.killpg(pid, signal.SIGKILL)
            t = time.time()
            time.sleep(3)
            P.up(s, log=lambda m: None)           # the supervisor: starts what is down
            events.append({"service": service, "killed_at_s": round(t - t_start), "pid": pid,
                           "restart_s": round(time.time() - t, 1), "running_again": bool(P.running_pid(s, service))})
        th = threading.Thread(target=go)
        th.start()
        return th

    def wait(dag, run_id, timeout=1800):
        """The run's final state; the API server may be the one killed: keep asking until it answers."""
        import requests

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                return client.wait(dag, run_id, timeout=max(1, deadline - time.time()), log=lambda m: None)["state"]
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(5)
        return "timeout"

    def run(dag, conf, kills):
        before = objects()
        client.pause(dag, False)
        run_id = client.trigger(dag, conf)
        threads = [kill_later(svc, after) for svc, after in kills]
        for th in threads:
            th.join()
        state = wait(dag, run_id)
        lost = sorted(before - objects())
        tries = {t["task_id"]: t.get("try_number") for t in client.task_instances(dag, run_id)}
        return {"dag": dag, "run_id": run_id, "state": state, "killed": [k for k, _ in kills], "objects_lost": lost,
                "retried_tasks": {k: v for k, v in tries.items() if (v or 1) > 1}}

    runs = [run("clinasr_evaluation_sets", {}, [("s3", 15), ("airflow-scheduler", 40)])]
    runs.append(run("clinasr_synthetic_data", {"terms": "warfarin, apixaban", "utterances_per_term": 3, "seed": 5,
                                               "accent_profiles": ["native"]},
                    [("airflow-dag-processor", 5), ("s3", 30), ("airflow-api-server", 60)]))
    snap = client.xcom("clinasr_synthetic_data", runs[-1]["run_id"], "stage_snapshot")
    runs.append(run("clinasr_training", {"dataset_uri": snap["uri"], "max_steps": 20, "register_as": "clinasr-chaos"},
                    [("mlflow", 20), ("airflow-triggerer", 30), ("aws", 35)]))
    runs.append(run("clinasr_evaluate_promote", {"model_name": "clinasr-chaos", "reference_models": [],
                                                 "override_reason": "chaos bench: promote whatever the gate says"},
                    [("serve", 10), ("s3", 60), ("mlflow", 120)]))
    ok = V.verify(V.ProvenanceLog(s).records()) == []
    mirror = V.verify_mirror(V.ProvenanceLog(s))
    P.down(s, log=lambda m: None)
    P.up(s, only=["s3"], log=lambda m: None)     # and a full restart of the store at the end: everything still there
    after_restart = V.verify_mirror(V.ProvenanceLog(s))
    P.down(s, log=lambda m: None)
    result = {"runs": runs, "kills": events, "chain_intact": ok, "mirror_problems": mirror,
              "mirror_problems_after_full_restart": after_restart, "seconds": round(time.time() - t_start),
              "home": str(home)}
    out = REPO / "bench" / "results" / "chaos"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    md = ["| DAG run | services killed (SIGKILL) during it | run state | tasks retried | objects lost |", "|---|---|---|---|---|"]
    for r in runs:
        md.append(f"| {r['dag']} | {', '.join(r['killed'])} | {r['state']} | "
                  f"{', '.join(f'{k} (try {v})' for k, v in r['retried_tasks'].items()) or '-'} | {len(r['objects_lost'])} |")
    md.append(f"\nkills: {len(events)}, services running again after `platform up`: "
              f"{sum(e['running_again'] for e in events)}/{len(events)}; runs recovered: "
              f"{sum(r['state'] == 'success' for r in runs)}/{len(runs)}; objects lost: {sum(len(r['objects_lost']) for r in runs)}; "
              f"provenance chain intact: {ok}; mirror problems: {len(mirror)} (after a full restart: {len(after_restart)}); "
              f"{result['seconds']} s")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if all(r["state"] == "success" for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
