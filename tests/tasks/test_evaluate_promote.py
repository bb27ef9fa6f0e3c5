"""Task bodies of dags/clinasr_evaluate_promote.py (clinasr.tasks.evaluate_promote): the held-out sets the gate
decides on, and a deploy the service refuses after a promotion."""

import json

import pytest
import yaml

from clinasr import evalsets
from clinasr.settings import REPO_ROOT
from tests.test_evalsets import cfg  # noqa: F401 - fixture
from tests.test_registry import reg  # noqa: F401 - fixture


def test_the_gate_plan_fails_closed_and_scores_the_candidates_own_terms(s3_env, cfg, tmp_path, monkeypatch):
    """heldout_sets: a set that is not built is reported missing (the gate then fails on it, naming it); the
    clinical held-out set is scored on the priority terms of the candidate's dataset, and a dataset whose terms
    the set does not cover is a named problem, not a silent pass."""
    from clinasr.tasks.evaluate_promote import heldout_sets
    from clinasr.store import ObjectStore

    small = yaml.safe_load((REPO_ROOT / "tests/data/evalsets-small.yaml").read_text())
    p = tmp_path / "evalsets.yaml"
    p.write_text(yaml.safe_dump(small))
    monkeypatch.setenv("CLINASR_EVALSETS_CONFIG", str(p))
    small = evalsets.load_config()
    d = tmp_path / "set"
    d.mkdir()
    (d / "test_manifest.jsonl").write_text("{}\n")
    snap = ObjectStore(s3_env).stage_snapshot(d, prefix="evalsets/clinical_heldout")
    evalsets.record("clinical_heldout", small, {"uri": snap.uri, "snapshot_id": snap.snapshot_id, "digest": snap.digest},
                    {}, s3_env)
    ds = tmp_path / "dataset"
    ds.mkdir()
    (ds / "dataset_card.json").write_text(json.dumps({"terms": ["warfarin", "lisinopril", "apixaban"]}))
    sets, missing = heldout_sets(str(ds), "configs/gate/default.yaml")
    assert [s["name"] for s in sets] == ["clinical_heldout"] and sets[0]["terms"] == ["warfarin", "apixaban"]
    assert set(missing) == {"general_heldout"} and "has not been built" in missing["general_heldout"]
    (ds / "dataset_card.json").write_text(json.dumps({"terms": ["lisinopril"]}))
    sets, missing = heldout_sets(str(ds), "configs/gate/default.yaml")
    assert "covers none of the candidate's priority terms (lisinopril)" in missing["clinical_heldout"]


def test_a_failed_deploy_after_promotion_rolls_the_registry_back_to_what_is_served(reg, monkeypatch):
    """The service refuses the new production version (as it answers a failed load: 422, old model kept): the
    registry must name what it serves, so production goes back to the previous version and the task fails."""
    import http.server
    import threading

    from airflow.sdk.exceptions import AirflowFailException

    from clinasr.tasks.evaluate_promote import deploy_to_serving

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_POST(self):   # /admin/reload: the model fails to load; the old one keeps serving
            self.send_response(422)
            self.end_headers()
            self.wfile.write(b'{"detail": "cannot load model.nemo: corrupt"}')

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("CLINASR_SERVE_URL", f"http://127.0.0.1:{srv.server_address[1]}")
    monkeypatch.setattr("time.sleep", lambda s: None)
    registry, c, name, (v1, v2, _) = reg
    try:
        registry.promote(name, v1, by="ci", reason="ok")
        registry.promote(name, v2, by="ci", reason="ok")
        with pytest.raises(AirflowFailException, match=f"production rolled back to v{v1}"):
            deploy_to_serving(f"models:/{name}/{v2}")
        assert registry.alias_version(name, "production") == v1
        assert c.get_model_version(name, v2).tags["rollback_reason"].startswith("deploy failed: serving at")
        # the first production version has nothing to go back to: the alias is removed, the version marked
        c.delete_registered_model_alias(name, "production")
        c.delete_registered_model_alias(name, "previous")
        c.set_registered_model_tag(name, "production_history", "[]")
        registry.promote(name, v1, by="ci", reason="ok")
        with pytest.raises(AirflowFailException, match="production alias was removed"):
            deploy_to_serving(f"models:/{name}/{v1}")
        assert registry.alias_version(name, "production") is None
        assert c.get_model_version(name, v1).tags["status"] == "deploy_failed"
    finally:
        srv.shutdown()
