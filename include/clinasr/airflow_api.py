"""A small client for Airflow 3's REST API (/api/v2), used by the demo and the tests exactly as the UI
triggers runs: a JWT from /auth/token, then POST /dags/{id}/dagRuns with the run's Params as conf."""

from __future__ import annotations

import time

import requests


class AirflowAPIError(RuntimeError):
    pass


class AirflowClient:
    # longer than the metadata DB's own lock wait (60 s, settings.AIRFLOW_SQLITE_CONNECT_ARGS): a call that meets a
    # busy scheduler waits for it instead of timing out first
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 90):
        self.base, self.timeout = base_url.rstrip("/"), timeout
        r = requests.post(f"{self.base}/auth/token", json={"username": username, "password": password}, timeout=timeout)
        if r.status_code >= 400:
            raise AirflowAPIError(f"Airflow login failed ({r.status_code}): {r.text[:200]}")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    DB_LOCKED_ATTEMPTS = 3

    def _req(self, method: str, path: str, **kw):
        attempts = self.DB_LOCKED_ATTEMPTS
        for attempt in range(1, attempts + 1):
            r = self.session.request(method, f"{self.base}/api/v2{path}", timeout=self.timeout, **kw)
            # a SQLite metadata DB locked past its wait answers 500 "Database error" and rolls the request back
            # (seen on a 2-core machine: the audit-log insert before a trigger waited 60 s): nothing was written,
            # so the same request is sent again
            if r.status_code == 500 and '"Database error"' in r.text and attempt < attempts:
                time.sleep(2 * attempt)
                continue
            if r.status_code >= 400:
                raise AirflowAPIError(f"{method} {path} -> {r.status_code}: {r.text[:500]}")
            return r.json() if r.content else {}

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict:
        deadline = time.time() + timeout
        while True:
            try:
                return self._req("GET", f"/dags/{dag_id}")
            except AirflowAPIError:
                if time.time() > deadline:
                    errors = self._req("GET", "/importErrors").get("import_errors", [])
                    raise AirflowAPIError(f"DAG {dag_id} did not appear in {timeout:.0f}s; import errors: {errors}")
                time.sleep(3)

    def trigger(self, dag_id: str, conf: dict | None = None, note: str | None = None, run_id: str | None = None) -> str:
        body = {"logical_date": None, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        if note:
            body["note"] = note
        return self._req("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self._req("GET", f"/dags/{dag_id}/dagRuns/{requests.utils.quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self._req("GET", f"/dags/{dag_id}/dagRuns/{requests.utils.quote(run_id, safe='')}/taskInstances")["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str):
        q = requests.utils.quote(run_id, safe="")
        return self._req("GET", f"/dags/{dag_id}/dagRuns/{q}/taskInstances/{task_id}/xcomEntries/return_value")["value"]

    def task_log_tail(self, dag_id: str, run_id: str, task_id: str, try_number: int, lines: int = 12) -> list[str]:
        """The last ``lines`` messages of one try of a task's log (what the UI's log view shows), each cut to 300
        characters; an exception's type and message are kept with the line that reported it."""
        q = requests.utils.quote(run_id, safe="")
        content = self._req("GET", f"/dags/{dag_id}/dagRuns/{q}/taskInstances/{task_id}/logs/{try_number}",
                            params={"full_content": "true"}, headers={"Accept": "application/json"}).get("content", [])
        out = []
        for m in content[-lines:]:
            if isinstance(m, dict):
                line = str(m.get("event", ""))
                for err in m.get("error_detail") or []:
                    if isinstance(err, dict):
                        line += f" | {err.get('exc_type')}: {err.get('exc_value')}"
            else:
                line = str(m)
            out.append(line[:300])
        return out

    def diagnose(self, dag_id: str, run_id: str) -> str:
        """Why a run failed: its failed tasks with their tries and the end of each failed task's log, and any
        "state mismatch" the scheduler logged (a task's process exit seen after the task was re-queued, which fails
        or retries the task)."""
        tis = self.task_instances(dag_id, run_id)
        states, tries = {t["task_id"]: t["state"] for t in tis}, {t["task_id"]: t.get("try_number") for t in tis}
        failed = [f"{k} (try {tries.get(k)})" for k, v in states.items() if v in ("failed", "upstream_failed")]
        tails = []
        for k, v in states.items():
            if v == "failed" and tries.get(k):
                try:
                    tails.append(f"\n  log of {k}, try {tries[k]}:" + "".join(
                        f"\n    {line}" for line in self.task_log_tail(dag_id, run_id, k, int(tries[k]))))
                except AirflowAPIError as e:
                    tails.append(f"\n  log of {k} unavailable: {e}")
        try:
            logs = self._req("GET", "/eventLogs", params={"dag_id": dag_id, "run_id": run_id, "event": "state mismatch",
                                                          "limit": 10}).get("event_logs", [])
        except AirflowAPIError as e:
            logs = [{"extra": f"(event log unavailable: {e})"}]
        mismatches = [f"{e.get('task_id')} try {e.get('try_number')}: {str(e.get('extra'))[:300]}" for e in logs]
        return (f"failed tasks: {', '.join(failed) or 'none'}; state mismatches: {len(mismatches)}"
                + "".join(f"\n  {m}" for m in mismatches) + "".join(tails))

    def runs(self, dag_id: str) -> list[dict]:
        return self._req("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "-start_date", "limit": 20})["dag_runs"]

    def stop(self, dag_id: str, run_id: str) -> None:
        """Mark a run failed, as *Mark run as failed* in the UI does: its running tasks are stopped, the rest skipped,
        and it emits no asset event (so it starts nothing downstream)."""
        self._req("PATCH", f"/dags/{dag_id}/dagRuns/{requests.utils.quote(run_id, safe='')}", json={"state": "failed"})

    def stop_active(self, dag_id: str, keep: set[str] = frozenset()) -> list[str]:
        """Stop every queued or running run of ``dag_id`` except those in ``keep``; the ids it stopped."""
        stopped = [r["dag_run_id"] for r in self.runs(dag_id)
                   if r["state"] in ("queued", "running") and r["dag_run_id"] not in keep]
        for run_id in stopped:
            self.stop(dag_id, run_id)
        return stopped

    def pause(self, dag_id: str, paused: bool = True) -> None:
        self._req("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})

    def wait_for_new_run(self, dag_id: str, not_in: set[str], timeout: float = 300) -> str:
        """The id of a run of ``dag_id`` that is not in ``not_in`` (e.g. one an asset event just started)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for r in self.runs(dag_id):
                if r["dag_run_id"] not in not_in:
                    return r["dag_run_id"]
            time.sleep(3)
        raise AirflowAPIError(f"no new run of {dag_id} appeared in {timeout:.0f}s")

    def respond(self, dag_id: str, run_id: str, task_id: str, option: str, timeout: float = 600,
                settle_s: float = 15, follow_s: float = 240) -> dict:
        """Answer a human-in-the-loop task (e.g. approve_qa: "Approve" or "Reject") once it waits for input,
        as a reviewer does under *Required actions* in the UI.

        Airflow 3.3 races a reply that comes within a moment of the pause: the scheduler then sees the pausing
        process's exit after the task was re-queued and retries it, and the retry waits for input again although
        the first try already acted on the answer. A person is never that fast, so this client waits
        ``settle_s`` after the task reaches ``awaiting_input``; and since that has not always been enough, it
        then follows the task for ``follow_s`` (longer than the DAGs' one-minute retry delay plus a slow scheduler's
        loops) and, as the reviewer would when the action reappears, gives the same answer to a retry that waits
        again. (CI, 2 cores: with 5 s / 90 s the race struck the first try and its retry, and the run failed.)"""
        ti = f"/dags/{dag_id}/dagRuns/{requests.utils.quote(run_id, safe='')}/taskInstances/{task_id}"
        deadline = time.time() + timeout
        while self._req("GET", ti).get("state") != "awaiting_input":
            if time.time() > deadline or self.run(dag_id, run_id)["state"] in ("success", "failed"):
                raise AirflowAPIError(f"{dag_id} {run_id}: {task_id} never waited for input")
            time.sleep(2)
        def answer() -> dict:
            return self._req("PATCH", f"{ti}/-1/hitlDetails", json={"chosen_options": [option], "params_input": {}})

        time.sleep(settle_s)
        answered = self._req("GET", ti).get("try_number")
        reply = answer()
        follow, done_since = time.time() + follow_s, None
        while time.time() < follow:
            t = self._req("GET", ti)
            if t.get("state") in ("success", "failed", "skipped", "upstream_failed"):
                done_since = done_since or time.time()
                # finished and still so after the scheduler's next loops: the stale exit event (if any) was seen
                if time.time() - done_since >= 10 or self.run(dag_id, run_id)["state"] in ("success", "failed"):
                    break
            else:
                done_since = None
            if t.get("state") == "awaiting_input" and (t.get("try_number") or 0) > (answered or 0):
                time.sleep(settle_s)
                answered = t["try_number"]
                answer()
            time.sleep(2)
        return reply

    def wait(self, dag_id: str, run_id: str, timeout: float = 1800, log=print) -> dict:
        deadline, last = time.time() + timeout, None
        while time.time() < deadline:
            run = self.run(dag_id, run_id)
            states = {t["task_id"]: t["state"] for t in self.task_instances(dag_id, run_id)}
            summary = ", ".join(f"{k}={v}" for k, v in states.items())
            if summary != last:
                log(f"  [{dag_id}] {run['state']}: {summary}")
                last = summary
            if run["state"] in ("success", "failed"):
                if run["state"] == "failed":
                    run["diagnosis"] = self.diagnose(dag_id, run_id)
                return run
            time.sleep(3)
        others = [r["dag_run_id"] for r in self.runs(dag_id)
                  if r["state"] in ("queued", "running") and r["dag_run_id"] != run_id]
        raise AirflowAPIError(f"{dag_id} run {run_id} did not finish in {timeout:.0f}s (state {run['state']}: {summary}"
                              + (f"; other active runs of this DAG, which may hold its max_active_runs: {others}"
                                 if others else "") + ")")
