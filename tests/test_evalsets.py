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


def test_replay_with_the_clinical_voices_speaks_each_new_voice_at_its_clinical_share(cfg, tmp_path):
    """``with_voices_of``: a replay set speaks the base's voices and, at the share of the rows they have in the clinical
    set's synthesis config, the voices the base lacks (Kokoro in synthesis_clinical_kokoro.yaml), so that no voice is
    heard only in clinical speech. The rows' voices are drawn as the builder draws them."""
    import random

    import yaml

    from clinasr.synth import pipeline, tts

    kokoro_cfg = "configs/experiment/synthesis_clinical_kokoro.yaml"
    clinical = pipeline.load_config(evalsets.REPO_ROOT / kokoro_cfg)
    sl = clinical["accent_profiles"]["second_language"]
    share = clinical["accent_mix"]["second_language"] / sum(clinical["accent_mix"].values()) \
        * sum(v["engine"] == "kokoro" for v in sl) / len(sl)                  # 5 of 9 voices of 30% of the rows
    plain = evalsets.synthesis_config(cfg, evalsets.spec(cfg, "general_replay"), {})
    other = copy.deepcopy(cfg)
    other["replay"]["general_replay"]["with_voices_of"] = kokoro_cfg
    scfg = evalsets.synthesis_config(other, evalsets.spec(other, "general_replay"), {})
    added = scfg["accent_profiles"].pop("second_language_kokoro")
    assert sorted(v["voice"] for v in added) == sorted(v["voice"] for v in sl if v["engine"] == "kokoro")
    assert scfg["accent_profiles"] == plain["accent_profiles"]                 # every voice of the base kept
    mix = scfg["accent_mix"]
    assert mix["second_language_kokoro"] / sum(mix.values()) == pytest.approx(share)
    assert {k: v for k, v in mix.items() if k in plain["accent_mix"]} == plain["accent_mix"]
    assert scfg["voice_variation"]["kokoro_speed"] == clinical["voice_variation"]["kokoro_speed"]
    assert clinical["voice_variation"]["rate"] != plain["voice_variation"]["rate"]
    assert scfg["voice_variation"] == {**plain["voice_variation"], "kokoro_speed": clinical["voice_variation"]["kokoro_speed"]}
    scfg["accent_profiles"]["second_language_kokoro"] = added
    voices = tts.voices_from_config(scfg)
    picks = [tts.pick_voice(random.Random(f"7|{i}|pick"), voices, mix) for i in range(6000)]
    assert sum(v.engine == "kokoro" for v in picks) / len(picks) == pytest.approx(share, abs=0.02)
    # the set is rebuilt when that config's content changes; a config whose voices the base has anyway adds nothing
    assert evalsets.config_hash(other, "general_replay") != evalsets.config_hash(cfg, "general_replay")
    changed = tmp_path / "clinical.yaml"
    changed.write_text(yaml.safe_dump(clinical))
    other["replay"]["general_replay"]["with_voices_of"] = str(changed)
    h = evalsets.config_hash(other, "general_replay")
    changed.write_text(yaml.safe_dump({**clinical, "accent_mix": {**clinical["accent_mix"], "second_language": 0.5}}))
    assert evalsets.config_hash(other, "general_replay") != h
    other["replay"]["general_replay"]["with_voices_of"] = str(tmp_path / "gone.yaml")
    with pytest.raises(evalsets.EvalSetError, match="with_voices_of: the synthesis config .*gone.yaml does not exist"):
        evalsets.config_hash(other, "general_replay")
    other["replay"]["general_replay"]["with_voices_of"] = "configs/synthesis.yaml"
    assert evalsets.synthesis_config(other, evalsets.spec(other, "general_replay"), {})["accent_mix"] == plain["accent_mix"]
    # a held-out voice never reaches training speech through it
    heldout = copy.deepcopy(clinical)
    heldout["accent_profiles"]["second_language"].append({"engine": "espeak", "voice": "roa/pt-br"})
    (tmp_path / "heldout.yaml").write_text(yaml.safe_dump(heldout))
    other["replay"]["general_replay"]["with_voices_of"] = str(tmp_path / "heldout.yaml")
    with pytest.raises(evalsets.EvalSetError, match="roa/pt-br"):
        evalsets.synthesis_config(other, evalsets.spec(other, "general_replay"), {})
    # a config of new voices only would replay none of the base's: refused
    only_new = {**clinical, "accent_profiles": {"second_language": [v for v in sl if v["engine"] == "kokoro"]}}
    (tmp_path / "only_new.yaml").write_text(yaml.safe_dump(only_new))
    other["replay"]["general_replay"]["with_voices_of"] = str(tmp_path / "only_new.yaml")
    with pytest.raises(evalsets.EvalSetError, match="every voice is new to the base"):
        evalsets.synthesis_config(other, evalsets.spec(other, "general_replay"), {})
    ten = {"accent_mix": {"a": 1.0}, "accent_profiles": {"a": [{"engine": "kokoro", "voice": f"v{i}"} for i in range(10)]}}
    with pytest.raises(evalsets.EvalSetError, match="every voice is new"):     # shares that sum to 0.999...
        evalsets.add_voices_of(copy.deepcopy(plain), _yaml(tmp_path / "ten.yaml", ten), cfg)
    # a base voice with no share is not replayed: it is added; a profile name of the base's is never overwritten
    base = copy.deepcopy(plain)
    base["accent_mix"]["regional"] = 0.0
    regional = base["accent_profiles"]["regional"][0]
    src = {"accent_mix": {"native": 1.0, "regional": 1.0},
           "accent_profiles": {"native": [base["accent_profiles"]["native"][0]], "regional": [regional]}}
    out = evalsets.add_voices_of(copy.deepcopy(base), _yaml(tmp_path / "zero.yaml", src), cfg)
    assert out["accent_profiles"][f"regional_{regional['engine']}"] == [regional]
    assert out["accent_mix"][f"regional_{regional['engine']}"] / sum(out["accent_mix"].values()) == pytest.approx(0.5)
    base["accent_profiles"][f"regional_{regional['engine']}"] = []
    with pytest.raises(evalsets.EvalSetError, match="is one of the base's"):
        evalsets.add_voices_of(base, tmp_path / "zero.yaml", cfg)


def _yaml(path, data):
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def test_a_replay_set_is_not_built_without_the_voices_it_adds(cfg, tmp_path):
    """A replay set whose with_voices_of voices cannot speak here (an engine not installed, a voice that does not
    exist) is refused before anything renders: it would otherwise be built without them under a config hash that
    says they are in it."""
    src = {"accent_mix": {"second_language": 1.0},
           "accent_profiles": {"second_language": [{"engine": "espeak", "voice": "gmw/en-us"},
                                                   {"engine": "espeak", "voice": "zz/no-such-voice"}]}}
    other = copy.deepcopy(cfg)
    other["replay"]["general_replay"] = {**other["replay"]["general_replay"], "utterances": 20,
                                         "with_voices_of": str(_yaml(tmp_path / "src.yaml", src))}
    with pytest.raises(evalsets.EvalSetError, match="cannot speak here: .*zz/no-such-voice"):
        evalsets.build_set("general_replay", tmp_path / "set", other, progress=False)
    assert not (tmp_path / "set").exists() or not any((tmp_path / "set").rglob("*.wav"))


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
