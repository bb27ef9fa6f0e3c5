"""Reading lineage: the HTML page (rendered in a real headless Chromium) and OpenLineage events."""

import http.server
import json
import re
import threading

import pytest

from clinasr import lineage
from clinasr import provenance as V
from tests.conftest import chromium



@pytest.fixture
def records(s3_env):
    """A miniature flywheel: transcripts -> dataset -> model -> promotion -> endpoint, plus a failed task."""
    log = V.ProvenanceLog(s3_env)
    steps = [("clinasr_synthetic_data", "transcripts", [], ["file:///w/transcripts.jsonl"], {"origin": "synthetic", "lexicon_version": "lex-1"}),
             ("clinasr_synthetic_data", "stage_snapshot", ["file:///w/transcripts.jsonl"], ["s3://b/datasets/d1"], {}),
             ("clinasr_training", "candidate", ["s3://b/datasets/d1"], ["models:/asr/1"], {}),
             ("clinasr_evaluate_promote", "promote", ["models:/asr/1"], ["models:/asr@production"], {}),
             ("clinasr_evaluate_promote", "deploy", ["models:/asr/1"], ["http://127.0.0.1:18000/v1/audio/transcriptions"], {})]
    for i, (dag, task, ins, outs, origin) in enumerate(steps):
        log.append(log.new_record(dag_id=dag, run_id=f"run{i}", task_id=task, try_number=1, state="success",
                                  triggering_user="alice", params={"seed": 7}, origin=origin,
                                  inputs=[V.artifact(u) for u in ins], outputs=[V.artifact(u) for u in outs]))
    log.append(log.new_record(dag_id="clinasr_training", run_id="run9", task_id="candidate", try_number=1, state="failed",
                              error="TrainingError: loss is nan", inputs=[V.artifact("s3://b/datasets/d1")], outputs=[]))
    return log.records()


def test_page_answers_where_a_model_came_from_and_what_used_it(records):
    page = lineage.page(records, "models:/asr/1")
    assert "Provenance chain intact: 6 records" in page
    up, down = page.split("<h2>What used it</h2>")
    for node in ("s3://b/datasets/d1", "file:///w/transcripts.jsonl", "clinasr_synthetic_data › transcripts"):
        assert node in up
    assert "lex-1" in up and "alice" in up
    assert "models:/asr@production" in down and "clinasr_evaluate_promote › deploy" in down
    # every in-page link has its target
    ids = set(re.findall(r'id="([^"]+)"', page))
    assert set(re.findall(r'href="#([^"]+)"', page)) <= ids
    dataset_page = lineage.page(records, "s3://b/datasets/d1")       # forward: which models used dataset D?
    assert "models:/asr/1" in dataset_page.split("<h2>What used it</h2>")[1]
    assert "loss is nan" in dataset_page                              # the failed attempt is there too


def test_a_broken_chain_is_shown_on_the_page(records):
    records[2]["params"]["seed"] = 8
    assert "PROVENANCE CHAIN BROKEN" in lineage.page(records, "models:/asr/1")
    with pytest.raises(KeyError, match="models:/nope/1 is not in the provenance records"):
        lineage.page(records, "models:/nope/1")


def test_openlineage_events_are_spec_shaped_and_reach_an_http_endpoint(records):
    events = lineage.to_dicts(lineage.openlineage_events(records))
    assert len(events) == len(records)
    e = next(x for x in events if x["job"]["name"] == "clinasr_training.candidate" and x["eventType"] == "COMPLETE")
    assert e["schemaURL"].startswith("https://openlineage.io/spec/") and e["job"]["namespace"] == "clinasr"
    assert e["inputs"][0]["namespace"] == "s3://b" and e["inputs"][0]["name"] == "datasets/d1"
    assert e["outputs"][0] == {**e["outputs"][0], "namespace": "mlflow", "name": "asr/1"}
    assert e["run"]["facets"]["clinasr_provenance"]["recordHash"] == records[2]["hash"]
    assert any(x["eventType"] == "FAIL" for x in events)
    got = []

    class Marquez(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            got.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(201)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Marquez)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        n = lineage.emit(lineage.openlineage_events(records), f"http://127.0.0.1:{srv.server_address[1]}")
    finally:
        srv.shutdown()
    assert n == len(records) and len(got) == n and {p for p, _ in got} == {"/api/v1/lineage"}
    assert [b["run"]["runId"] for _, b in got] == [x["run"]["runId"] for x in events]


@pytest.mark.parametrize("which", ["lineage", "gate"])
def test_pages_render_in_a_real_headless_browser(records, tmp_path, which):
    if which == "lineage":
        html_text = lineage.page(records, "models:/asr/1")
    else:
        from tests.test_gate import BAD, PERFECT, report

        from clinasr.gate import decide, load_gate, render_html

        cand, base = report(*BAD), report(*PERFECT)
        html_text = render_html(decide(cand, base, load_gate()), cand, base, "Gate report")
    page = tmp_path / f"{which}.html"
    page.write_text(html_text)
    dom = chromium(page.as_uri(), tmp_path, "--dump-dom").stdout
    assert "</html>" in dom
    ids = set(re.findall(r'id="([^"]+)"', dom))
    assert set(re.findall(r'href="#([^"]+)"', dom)) <= ids           # links work in the rendered page
    if which == "gate":
        assert "Decision: REJECT" in dom and dom.count("<img") == 2
    shot = tmp_path / f"{which}.png"
    r = chromium(page.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1200,1600")
    assert shot.exists() and shot.stat().st_size > 20_000, r.stderr[-1000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
