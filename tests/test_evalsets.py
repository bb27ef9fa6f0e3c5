"""Evaluation sets (orchestration side): what decides a rebuild, which voices training may not use, and
how the gate finds a set — failing closed, naming it, when it is missing or stale. Real object store (the
loopback S3 server)."""

import copy
import json

import pytest

from clinasr import evalsets


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


def test_replay_speaks_in_the_base_models_voices_and_follows_its_config(cfg, tmp_path):
    """general_replay replays what the base heard: its voices (engines, variants) from the base config, and a
    change there rebuilds the set; a missing base config is a clear error."""
    import yaml

    from clinasr.experiment import load_config as load_experiment

    s = evalsets.spec(cfg, "general_replay")
    assert s["voices"] == "base"
    scfg = evalsets.synthesis_config(cfg, s, {})
    base = load_experiment(evalsets.REPO_ROOT / s["base_config"])     # its extends: chain resolved
    assert {f"{v['engine']}:{v['voice']}" for v in scfg["accent_profiles"]["native"]} == \
        {v if ":" in v else f"espeak:{v}" for v in base["voices"]["train"]["native"]}
    assert scfg["voice_variation"]["espeak_variants"] == base["voice_variation"]["espeak_variants"]
    evalsets.check_training_voices(scfg, cfg=cfg)      # the base's voices are no held-out ones
    h = evalsets.config_hash(cfg, "general_replay")
    base["voices"]["train"]["native"].pop()
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    other = copy.deepcopy(cfg)
    other["replay"]["general_replay"]["base_config"] = str(tmp_path / "base.yaml")
    assert evalsets.config_hash(other, "general_replay") != h
    other["replay"]["general_replay"]["base_config"] = str(tmp_path / "nope.yaml")
    with pytest.raises(evalsets.EvalSetError, match="nope.yaml, which does not exist"):
        evalsets.config_hash(other, "general_replay")
    # a base config that names only what it changes speaks with its parent's voices too; a broken chain is named
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nvoices: {train: {regional: [gmw/en-us-nyc]}}\n")
    other["replay"]["general_replay"]["base_config"] = str(tmp_path / "child.yaml")
    child = evalsets.synthesis_config(other, evalsets.spec(other, "general_replay"), {})
    assert child["accent_profiles"]["regional"] == [{"engine": "espeak", "voice": "gmw/en-us-nyc"}]
    assert len(child["accent_profiles"]["native"]) == len(base["voices"]["train"]["native"])
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    other["replay"]["general_replay"]["base_config"] = str(tmp_path / "loop.yaml")
    with pytest.raises(evalsets.EvalSetError, match="loop.yaml, which cannot be read: .*comes back to itself"):
        evalsets.config_hash(other, "general_replay")


def test_held_out_sets_speak_the_voices_as_they_are_whatever_the_training_variation(cfg):
    """The training data's espeak-ng variants and Flite variation (configs/synthesis.yaml) never reach the gate's
    sets; rows rendered under another render config are never reused (their cache is keyed by it)."""
    from clinasr.synth import pipeline

    assert pipeline.load_config()["voice_variation"].get("espeak_variants")   # the training data has them
    for name in ("clinical_heldout", "general_heldout"):
        s = evalsets.spec(cfg, name)
        for cond in (s.get("conditions") or {"mixed": {}}).values():
            scfg = evalsets.synthesis_config(cfg, s, cond)
            assert set(scfg["voice_variation"]) <= set(evalsets.HELDOUT_VARIATION)
    s = evalsets.spec(cfg, "clinical_heldout")
    scfg = evalsets.synthesis_config(cfg, s, {})
    k = evalsets._render_key(scfg)
    assert evalsets._render_key(copy.deepcopy(scfg)) == k
    other = copy.deepcopy(scfg)
    other["voice_variation"]["espeak_variants"] = ["f1"]
    assert evalsets._render_key(other) != k
    other = copy.deepcopy(scfg)
    other["augmentation"]["noise"]["p"] = 0.1
    assert evalsets._render_key(other) != k


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


def test_reviewed_lexicon_additions_do_not_invalidate_the_sets(cfg, tmp_path, monkeypatch):
    from clinasr.synth.lexicon import add_reviewed_terms, load_lexicon

    monkeypatch.setenv("CLINASR_HOME", str(tmp_path))
    before = {n: evalsets.config_hash(cfg, n) for n in evalsets.names(cfg)}
    add_reviewed_terms(["zilebesiran"], by="rev", source="test")
    assert "zilebesiran" in load_lexicon().categories()                    # the installation's lexicon has it ...
    assert {n: evalsets.config_hash(cfg, n) for n in evalsets.names(cfg)} == before   # ... the gate's sets stay current
