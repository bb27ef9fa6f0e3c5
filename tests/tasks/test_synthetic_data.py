"""Task bodies of dags/clinasr_synthetic_data.py (clinasr.tasks.synthetic_data): the DAG's Params, as the
form sends them, become the typed request the data stage runs; the reviewer's decision lands in provenance."""

import pytest

from clinasr.tasks.synthetic_data import dataset_request, record_qa_decision

FORM = {"terms": "warfarin, apixaban", "utterances_per_term": "3", "generator": "llm", "llm_base_url": "http://llm:8000/v1",
        "llm_model": None, "template_family": "a", "seed": "7", "val_fraction": "0.15", "augment": False,
        "accent_profiles": [], "workers": "2", "real_manifest": "", "real_ratio": "5"}


def test_params_become_a_typed_request():
    r = dataset_request(FORM)
    assert (r.utterances_per_term, r.seed, r.val_fraction, r.workers, r.real_ratio) == (3, 7, 0.15, 2, 5.0)
    assert r.terms == "warfarin, apixaban" and r.augment is False
    assert r.accent_profiles is None and r.real_manifest is None          # empty form fields mean "the default"
    assert r.llm == {"base_url": "http://llm:8000/v1"}                      # unset fields are not passed on
    with pytest.raises(ValueError, match="template_family 'b'"):
        dataset_request({**FORM, "template_family": "b"}).validate()      # the held-out shapes are never trained on


def test_the_voice_set_is_a_checked_in_config_sent_to_the_ml_stage_and_recorded_in_the_card(tmp_path, monkeypatch):
    """Param ``synthesis``: a named voice set; the ML stage gets its config file and the card its name and hash;
    the default keeps the ids requests had before it was a choice, so retries of older runs still find their work."""
    import hashlib
    import json

    from clinasr import datasets
    from clinasr.settings import REPO_ROOT

    r = dataset_request(FORM)
    assert r.synthesis == "default"
    k = dataset_request({**FORM, "synthesis": "kokoro"})
    k.validate()
    old_blob = json.dumps({f: v for f, v in r.__dict__.items() if f not in ("llm", "synthesis")}, sort_keys=True, default=str)
    assert r.build_id() == hashlib.sha256((old_blob + json.dumps("")).encode()).hexdigest()[:12] != k.build_id()
    with pytest.raises(ValueError, match="not a voice set; choose one of default, kokoro"):
        dataset_request({**FORM, "synthesis": "configs/experiment/base_multi.yaml"}).validate()

    sent = []
    monkeypatch.setattr("clinasr.mlenv.run_stage", lambda stage, args, *a, **kw: sent.append((stage, args)) or
                        {"dataset_dir": str(tmp_path / "ds")})
    t = {"transcripts": "t.jsonl", "generator": "grammar", "lexicon_version": "1", "terms": [], "dropped": {},
         "unknown_terms": []}
    datasets.synthesize(k, t, tmp_path)
    datasets.qa_sample(k, t, tmp_path)
    (_, syn), (_, qa) = sent
    cfg = datasets.SYNTHESIS_CONFIGS["kokoro"]
    assert syn["config"] == qa["config"] == cfg        # the repository's path: the ML runtime resolves it in its copy
    assert syn["meta"]["synthesis_config"] == {
        "name": "kokoro", "path": cfg, "sha256": hashlib.sha256((REPO_ROOT / cfg).read_bytes()).hexdigest()}


def test_the_reviewers_decision_is_declared_for_provenance(clinasr_home, monkeypatch):
    declared = []
    monkeypatch.setattr("clinasr.tasks.synthetic_data.declare", lambda **f: declared.append(f))
    record_qa_decision({"chosen_options": ["Approve"], "responded_by_user": "rev", "responded_at": "2026-11-30"},
                       {"page": "s3://b/qa/x/qa.html"})
    assert declared == [{"inputs": [{"uri": "s3://b/qa/x/qa.html", "kind": "qa-sample"}],
                         "qa_review": {"decision": "Approve", "by": "rev", "at": "2026-11-30", "error": None}}]
