"""clinasr.phantom_guard: a lexicon term the LM wrote and the acoustic model did not hear is vetoed; a term the
acoustic model half-heard, or one in clinical context, stands."""

import pytest

from clinasr import phantom_guard as g


def test_similarity_is_one_minus_the_letter_edit_distance_over_the_longer_length():
    assert g.similarity("warfarin", "war farin") == 1.0
    assert g.similarity("warfarin", "wolfarin") == pytest.approx(1 - 2 / 8)
    assert g.similarity("morphine", "") == 0.0
    assert g.similarity("", "") == 1.0
    assert g.similarity("abc", "xyz") == 0.0


def test_heard_as_is_the_acoustic_words_in_the_terms_place_with_those_inserted_beside_it():
    fused = "my sister lives in amlodipine the sea".split()
    acoustic = "my sister lives in a small village by the sea".split()
    assert g.heard_as(fused, acoustic, 4, 5) == ["a", "small", "village", "by"]
    assert g.heard_as("patient on warfarin daily".split(), "patient on war farin daily".split(), 2, 3) == ["war", "farin"]
    assert g.heard_as("give fentanyl now".split(), "give now".split(), 1, 2) == []


@pytest.mark.parametrize("fused, acoustic", [
    ("my sister lives in amlodipine the sea", "my sister lives in a small village by the sea"),   # everyday speech
    ("the soup needs a little morphine", "the soup needs a little more salt"),
    ("please clopidogrel which is getting code", "please close the window it is getting cold"),
    ("we ordered fentanyl and morphine", "we ordered pizza and watched a film"),   # two inventions vouch for nothing
])
def test_an_invented_term_without_clinical_context_is_vetoed(fused, acoustic):
    text, vetoes = g.choose(fused, acoustic)
    assert text == acoustic
    assert vetoes and all(v["similarity"] < g.DEFAULT_MIN_SIMILARITY for v in vetoes)


@pytest.mark.parametrize("fused, acoustic", [
    ("no history of warfarin", "no history of war farin"),                       # spelled like what was heard
    ("start heparin five thousand units twice daily", "start stacking five thousand units twice daily"),  # context
    ("continue morphine as needed", "continue more feeling as needed"),          # a frequency the acoustic text has
    ("patient takes warfarin", "patient takes warfarin"),                        # nothing added
    ("the train leaves at seven", "the drain leaves at seven"),                 # no lexicon term at all
])
def test_a_term_the_acoustic_model_supports_stands(fused, acoustic):
    assert g.choose(fused, acoustic) == (fused, [])


def test_the_similarity_bound_is_the_knob():
    fused, acoustic = "the soup needs a little morphine", "the soup needs a little more salt"
    assert g.vetoes(fused, acoustic, min_similarity=0.3) == []
    assert [v["term"] for v in g.vetoes(fused, acoustic, min_similarity=0.5)] == ["morphine"]


def test_a_term_added_a_second_time_needs_support_of_its_own():
    fused, acoustic = "warfarin and warfarin", "warfarin and a car"
    assert g.vetoes(fused, acoustic) == []   # the first warfarin is heard: context for the second
    assert [v["term"] for v in g.vetoes("walk to warfarin", "walk to a car")] == ["warfarin"]


def test_a_specs_setting_reads_as_its_bound_or_off():
    assert g.bound(None) == g.DEFAULT_MIN_SIMILARITY and g.bound({}) == g.DEFAULT_MIN_SIMILARITY
    assert g.bound({"min_similarity": 0.7}) == 0.7 and g.bound(0.3) == 0.3
    assert g.bound(False) is None and g.bound(0) is None and g.bound({"min_similarity": 0}) is None
