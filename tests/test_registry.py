"""Promotion and rollback through a real MLflow registry."""

import json

import pytest


@pytest.fixture
def reg(mlflow_server, monkeypatch, request):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    from mlflow import MlflowClient

    from clinasr import registry

    c = MlflowClient(mlflow_server)
    name = "reg-" + request.node.name[-30:].replace("_", "-")
    c.create_registered_model(name)
    run = c.create_run(c.get_experiment_by_name("Default").experiment_id)
    versions = [registry.register_candidate(name, run.info.run_id, "model/model.nemo") for _ in range(3)]
    return registry, c, name, versions


def test_promotion_moves_aliases_and_records_who_and_why(reg):
    registry, c, name, (v1, v2, v3) = reg
    assert registry.alias_version(name, "candidate") == v3 and registry.alias_version(name, "production") is None
    r = registry.promote(name, v1, by="alice", reason="gate passed", report_uri="s3://b/r1.html")
    assert r == {"name": name, "production": v1, "previous": None, "changed": True}
    r = registry.promote(name, v2, by="bob", reason="gate passed")
    assert (registry.alias_version(name, "production"), registry.alias_version(name, "previous")) == (v2, v1)
    tags = c.get_model_version(name, v2).tags
    assert tags["promoted_by"] == "bob" and tags["status"] == "production" and "promoted_at" in tags
    assert c.get_model_version(name, v1).tags["status"] == "previous"
    assert registry.promote(name, v2, by="bob", reason="again")["changed"] is False      # idempotent retry
    assert json.loads(c.get_registered_model(name).tags["production_history"]) == [v1, v2]


def test_rollback_restores_the_previous_production_along_the_history(reg):
    registry, c, name, (v1, v2, v3) = reg
    for v in (v1, v2, v3):
        registry.promote(name, v, by="ci", reason="ok")
    r = registry.rollback(name, by="oncall", reason="WER spike on ward 7")
    assert r["production"] == v2 and r["rolled_back"] == v3 and r["previous"] == v1
    assert c.get_model_version(name, v3).tags["status"] == "rolled_back"
    assert c.get_model_version(name, v3).tags["rollback_reason"] == "WER spike on ward 7"
    r = registry.rollback(name, by="oncall", reason="still bad")
    assert r["production"] == v1 and registry.alias_version(name, "previous") is None
    with pytest.raises(registry.RegistryError, match="no earlier production"):
        registry.rollback(name, by="oncall", reason="again")


def test_reject_and_bad_references(reg):
    registry, c, name, (v1, _, _) = reg
    registry.reject(name, v1, by="gate", reason="gate failed: term accuracy 0.4", report_uri="s3://b/g.html")
    assert c.get_model_version(name, v1).tags["status"] == "rejected"
    with pytest.raises(registry.RegistryError, match="no production version"):
        registry.rollback(name, by="x", reason="y")
    with pytest.raises(registry.RegistryError, match="does not exist"):
        registry.resolve(f"models:/{name}/99")
    with pytest.raises(registry.RegistryError, match="version 99 does not exist"):
        registry.promote(name, "99", by="x", reason="y")
    # a version the gate rejected reaches production only through a recorded override
    with pytest.raises(registry.RegistryError, match=f"v{v1} was rejected by the gate \\(gate failed: term accuracy"):
        registry.promote(name, v1, by="x", reason="looks fine to me")
    assert registry.promote(name, v1, by="x", reason="override: pilot", override=True)["production"] == v1


def test_cli_rollback_needs_a_reason(reg, capsys):
    registry, c, name, (v1, v2, _) = reg
    from clinasr.cli import main

    registry.promote(name, v1, by="ci", reason="ok")
    registry.promote(name, v2, by="ci", reason="ok")
    assert main(["registry", "rollback", "--model-name", name]) == 2
    assert main(["registry", "rollback", "--model-name", name, "--reason", "bad deploy", "--by", "carol", "--no-deploy"]) == 0
    assert json.loads(capsys.readouterr().out)["production"] == v1
    assert main(["registry", "show", "--model-name", name]) == 0


def test_cli_rollback_redeploys_and_says_when_serving_is_down(reg, capsys, monkeypatch):
    registry, c, name, (v1, v2, _) = reg
    from clinasr.cli import main
    from tests.conftest import free_port

    monkeypatch.setenv("CLINASR_SERVE_URL", f"http://127.0.0.1:{free_port()}")     # nothing listens there
    registry.promote(name, v1, by="ci", reason="ok")
    registry.promote(name, v2, by="ci", reason="ok")
    assert main(["registry", "rollback", "--model-name", name, "--reason", "bad deploy"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["deployed"] is None and "not reachable" in out.err
    assert registry.alias_version(name, "production") == v1
