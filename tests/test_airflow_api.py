"""The REST client against a loopback HTTP server that answers like Airflow's API server: a request that met a
locked SQLite metadata DB (500 "Database error", rolled back) is sent again; any other error is raised at once."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clinasr.airflow_api import AirflowAPIError, AirflowClient

DB_ERROR = {"detail": {"reason": "Database error", "statement": "hidden", "orig_error": "hidden",
                       "message": "Serious error when handling your request."}}


@pytest.fixture
def airflow(request):
    """answers: a list of (status, body) for POST /api/v2/dags/d/dagRuns, in order; the posts it received."""
    state = {"answers": [], "posts": 0}

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/auth/token":
                return self._send(201, {"access_token": "t"})
            state["posts"] += 1
            status, body = state["answers"].pop(0)
            self._send(status, body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", state
    srv.shutdown()


def test_a_locked_metadata_db_is_retried_and_the_run_triggered(airflow, monkeypatch):
    url, state = airflow
    monkeypatch.setattr("clinasr.airflow_api.time.sleep", lambda s: None)
    state["answers"] = [(500, DB_ERROR), (200, {"dag_run_id": "r1"})]
    assert AirflowClient(url, "admin", "pw").trigger("d", {}) == "r1"
    assert state["posts"] == 2


def test_other_errors_and_a_db_that_stays_locked_are_raised(airflow, monkeypatch):
    url, state = airflow
    monkeypatch.setattr("clinasr.airflow_api.time.sleep", lambda s: None)
    c = AirflowClient(url, "admin", "pw")
    state["answers"] = [(400, {"detail": "bad conf"})]
    with pytest.raises(AirflowAPIError, match="-> 400: .*bad conf"):
        c.trigger("d", {})
    assert state["posts"] == 1
    state["answers"] = [(500, DB_ERROR)] * 3
    with pytest.raises(AirflowAPIError, match="-> 500: .*Database error"):
        c.trigger("d", {})
    assert state["posts"] == 4
