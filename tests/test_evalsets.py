"""Evaluation sets (orchestration side): what decides a rebuild, which voices training may not use, and
how the gate finds a set — failing closed, naming it, when it is missing or stale. Real object store (the
loopback S3 server)."""

import copy
import json

import pytest
import yaml

from clinasr import evalsets
from clinasr.settings import REPO_ROOT


@pytest.fixture
def cfg():
    return evalsets.load_config()


def test_the_config_hash_changes_with_what_the_audio_depends_on_and_only_then(cfg, tmp_path):
    h = {n: evalsets.config_hash(cfg, n) for n in evalsets.names(cfg)}
    assert len(set(h.values())) == 3 and all(len(v) == 16 for v in h.values())
    assert evalsets.config_hash(copy.deepcopy(cfg), "general_heldout") == h["general_heldout"]   # deterministic
    more = copy.deepcopy(cfg)
    more["sets"]["clinical_heldout"]["per_term"] += 1
    assert evalsets.config_hash(more, "clinical_heldout") != h["clinical_heldout"]
    assert evalsets.config_hash(more, "general_heldout") == h["general_heldout"]       # other sets keep theirs
    voices = copy.deepcopy(cfg)
    voices["heldout"]["voices"]["regional"].pop()
    assert evalsets.config_hash(voices, "general_heldout") != h["general_heldout"]
    assert evalsets.config_hash(voices, "general_replay") == h["general_replay"]     # replay speaks training voices
    text = tmp_path / "everyday.txt"
    text.write_text("the bus was late again today\n")
    other = copy.deepcopy(cfg)
    other["sets"]["general_heldout"]["text"] = str(text)
    before = evalsets.config_hash(other, "general_heldout")
    text.write_text("the bus was late again this morning\n")
    assert evalsets.config_hash(other, "general_heldout") != before                   # the text's content counts


def test_training_data_may_not_speak_in_held_out_voices_or_engines(cfg):
    from clinasr.synth.pipeline import load_config

    synth = load_config()
    evalsets.check_training_voices(synth, cfg=cfg)      # the shipped training voices are clean
    ids, engines = evalsets.heldout_voices(cfg)
    assert "espeak:roa/pt-br" in ids and engines == {"piper"}
    bad = copy.deepcopy(synth)
    bad["accent_profiles"]["regional"].append({"engine": "espeak", "voice": "gmw/en-029"})
    with pytest.raises(evalsets.EvalSetError, match="held-out voices for training data: espeak:gmw/en-029"):
        evalsets.check_training_voices(bad, cfg=cfg)
    evalsets.check_training_voices(bad, ["native"], cfg=cfg)   # a profile not synthesised is no problem
    piper = copy.deepcopy(synth)
    piper["accent_profiles"]["native"].append({"engine": "piper", "voice": "some_other_piper_voice"})
    with pytest.raises(evalsets.EvalSetError, match="piper:some_other_piper_voice"):   # the whole engine is held out
        evalsets.check_training_voices(piper, cfg=cfg)


def test_everyday_sentences_share_nothing_with_training_text_and_name_no_term(cfg):
    from clinasr.synth import general

    sents = evalsets.eval_sentences(cfg["sets"]["general_heldout"]["text"])
    assert len(sents) >= 80 and evalsets.check_general_text(sents)["overlap_with_training_text"] == 0
    with pytest.raises(evalsets.EvalSetError, match="in the base model's training text"):
        evalsets.check_general_text(sents + [general.load()[0]])
    with pytest.raises(evalsets.EvalSetError, match="name a lexicon term"):
        evalsets.check_general_text(sents + ["he walks the dog every morning"])   # a frequency


def test_the_data_stage_refuses_held_out_sentence_shapes():
    from clinasr.datasets import DatasetRequest

    with pytest.raises(ValueError, match="family 'b' is reserved for the clinical held-out"):
        DatasetRequest(template_family="b").validate()


def test_a_set_is_found_only_when_built_from_the_current_config(s3_env, cfg, tmp_path):
    from clinasr.store import ObjectStore

    with pytest.raises(evalsets.EvalSetError, match="'general_heldout' has not been built .*clinasr evalsets build"):
        evalsets.resolve("general_heldout", cfg, s3_env)
    d = tmp_path / "set"
    d.mkdir()
    (d / "test_manifest.jsonl").write_text(json.dumps({"text": "hello there", "audio_filepath": "a.wav"}) + "\n")
    snap = ObjectStore(s3_env).stage_snapshot(d, prefix="evalsets/general_heldout")
    entry = evalsets.record("general_heldout", cfg, {"uri": snap.uri, "snapshot_id": snap.snapshot_id,
                                                     "digest": snap.digest}, {"rows": {"test": 1}}, s3_env)
    got = evalsets.resolve("general_heldout", cfg, s3_env)
    assert got["uri"] == snap.uri and got["config_hash"] == entry["config_hash"] == evalsets.config_hash(cfg, "general_heldout")
    changed = copy.deepcopy(cfg)
    changed["sets"]["general_heldout"]["seed"] = 7
    with pytest.raises(evalsets.EvalSetError, match=f"is stale: it was built from another config \\({entry['config_hash']}"):
        evalsets.resolve("general_heldout", changed, s3_env)
    states = {s["name"]: s["state"] for s in evalsets.status(cfg, s3_env)}
    assert states == {"clinical_heldout": "missing", "general_heldout": "current", "general_replay": "missing"}


def test_the_gate_plan_fails_closed_and_scores_the_candidates_own_terms(s3_env, cfg, tmp_path, monkeypatch):
    """heldout_sets: a set that is not built is reported missing (the gate then fails on it, naming it); the
    clinical held-out set is scored on the priority terms of the candidate's dataset, and a dataset whose terms
    the set does not cover is a named problem, not a silent pass."""
    from clinasr.airflow_support import heldout_sets
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


def test_the_training_plan_resolves_the_replay_set_or_fails_naming_it(s3_env, cfg, tmp_path):
    """Every fine-tune replays general English: the plan carries the replay snapshot (SageMaker/EC2 jobs get
    the URI), and a plan whose replay set is not built fails before any training, naming the set."""
    from clinasr import airflow_support as A
    from clinasr.store import ObjectStore

    params = {"backend": "local", "base": "nemo:models/clinasr-base-en-small/model.nemo",
              "trainer_config": "configs/trainer/cpu_finetune.yaml", "max_steps": 10, "seed": 0,
              "register_as": "clinasr-asr", "instance_count": 1}
    with pytest.raises(ValueError, match="replays 'general_replay' at 1.0:1 but the replay source is not available: "
                                         "evaluation set 'general_replay' has not been built"):
        A.training_plan("s3://b/datasets/x", params, "run-1")
    plan = A.training_plan("s3://b/datasets/x", {**params, "replay_ratio": 0}, "run-1")     # explicitly off
    assert plan["train_args"]["trainer_overrides"]["replay"] == {"ratio": 0} and "replay_source" not in plan["train_args"]
    d = tmp_path / "replay"
    d.mkdir()
    (d / "train_manifest.jsonl").write_text("{}\n")
    snap = ObjectStore(s3_env).stage_snapshot(d, prefix="evalsets/general_replay")
    evalsets.record("general_replay", cfg, {"uri": snap.uri, "snapshot_id": snap.snapshot_id, "digest": snap.digest}, {},
                    s3_env)
    plan = A.training_plan("s3://b/datasets/x", {**params, "replay_ratio": 0.5}, "run-2")
    assert plan["train_args"]["replay_source"] == snap.uri
    assert plan["train_args"]["trainer_overrides"]["replay"] == {"set": "general_replay", "ratio": 0.5}


def test_reviewed_lexicon_additions_do_not_invalidate_the_sets(cfg, tmp_path, monkeypatch):
    from clinasr.synth.lexicon import add_reviewed_terms, load_lexicon

    monkeypatch.setenv("CLINASR_HOME", str(tmp_path))
    before = {n: evalsets.config_hash(cfg, n) for n in evalsets.names(cfg)}
    add_reviewed_terms(["zilebesiran"], by="rev", source="test")
    assert "zilebesiran" in load_lexicon().categories()                    # the installation's lexicon has it ...
    assert {n: evalsets.config_hash(cfg, n) for n in evalsets.names(cfg)} == before   # ... the gate's sets stay current
