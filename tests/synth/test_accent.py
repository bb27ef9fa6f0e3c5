import random

import numpy as np
import pytest

from clinasr.synth import accent, tts

pytestmark = pytest.mark.ml

TEXT = "the weather is nice so we will have dinner with my brother"


def test_the_sound_changes_rewrite_the_voices_own_phonemes():
    ph = tts.engine("espeak").phonemes(TEXT, "gmw/en-us")
    assert "D" in ph and "3" in ph                     # /D/ and the r-coloured vowel of "weather", "brother"
    stopped = accent.perturb(ph, ["th_stopping"])
    assert "D" not in stopped and "T" not in stopped and stopped.count("d") > ph.count("d")
    assert accent.perturb(ph, ["th_fronting"]).count("v") > ph.count("v")
    assert "3" not in accent.perturb(ph, ["non_rhotic"]).replace("3:", "")
    assert accent.perturb("hi: f'0t hIz", ["h_dropping"]) == "i: f'0t Iz"
    assert accent.perturb("hi: f'0t hIz", ["final_devoicing"]) == "hi: f'0t hIs"
    assert accent.perturb("n'aIs _: b'i:tS", ["final_vowel"]) == "n'aIsi _: b'i:tS"
    # a diphthong's second half is not a vowel of its own
    assert accent.perturb("n'aIs It", ["kit_fleece"]) == "n'aIs i:t"
    assert accent.perturb("g,oUIN bUk", ["foot_goose"]) == "g,oUIN bu:k"


def test_render_says_the_perturbed_phonemes_and_records_the_rules():
    spec = {"rate": [175, 175], "pitch": [50, 50], "accent": {"p": 1.0, "rules": ["th_stopping"], "max_rules": 1}}
    en = tts.Voice(engine="espeak", voice="gmw/en-us", accent_profile="native")
    x, params = tts.render(TEXT, en, random.Random(0), spec)
    plain, plain_params = tts.render(TEXT, en, random.Random(0), {"rate": [175, 175], "pitch": [50, 50]})
    assert params["accent"] == ["th_stopping"] and "accent" not in plain_params
    assert x.size > 0.5 * plain.size and not (x.size == plain.size and np.allclose(x, plain))
    # spoken from the same phonemes by hand: the same utterance (espeak-ng's output differs by a few samples
    # from one call to the next: its random state carries over, docs/benchmarks.md "renders differ")
    ph = accent.perturb(tts.engine("espeak").phonemes(TEXT, "gmw/en-us"), ["th_stopping"])
    by_hand = tts.engine("espeak").synthesize(f"[[{ph}]]", "gmw/en-us", rate=175, pitch=50)
    assert abs(by_hand.size - x.size) < 0.01 * x.size
    # second-language voices keep their own letter rules; pronunciation overrides are left alone
    es = tts.Voice(engine="espeak", voice="roa/es", accent_profile="second_language")
    assert "accent" not in tts.render(TEXT, es, random.Random(0), spec)[1]
    assert "accent" not in tts.render("take [[w'0f@rIn]] daily", en, random.Random(0), spec)[1]


def test_choose_follows_p_and_never_stacks_both_th_rules():
    spec = accent.check({"p": 0.5, "max_rules": 3})
    rng = random.Random(1)
    draws = [accent.choose(rng, spec) for _ in range(2000)]
    share = sum(bool(d) for d in draws) / len(draws)
    assert 0.45 < share < 0.55
    assert all(1 <= len(d) <= 3 and not {"th_stopping", "th_fronting"} <= set(d) for d in draws if d)
    assert {r for d in draws for r in d} == set(accent.RULES)
    assert not any(accent.choose(rng, accent.check({"p": 0})) for _ in range(100))


@pytest.mark.parametrize("spec, message", [({"p": 1.5}, "p must be in"), ({"p": 0.2, "rules": ["lisp"]}, "lisp"),
                                           ({"p": 0.2, "max_rules": 0}, "max_rules")])
def test_a_bad_accent_spec_stops_before_rendering(spec, message):
    from clinasr.experiment import synthesis_config

    with pytest.raises(accent.AccentError, match=message):
        synthesis_config({"native": ["gmw/en-us"]}, {"native": 1.0}, variation={"accent": spec})


def test_only_english_espeak_voices_get_accents():
    assert accent.applies("gmw/en-us") and accent.applies("gmw/en-gb-scotland+f3") and accent.applies("gmw/en")
    assert not accent.applies("roa/es") and not accent.applies("gmw/de")
