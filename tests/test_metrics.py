import pytest

from clinasr.metrics import align, bootstrap_ci, edit_counts, heard_as, score_rows


def test_alignment_and_wer_use_the_shared_normaliser():
    assert edit_counts("Take 5 mg PO BID", "take five milligrams by mouth twice daily") == (0, 7)
    assert edit_counts("no history of warfarin", "history of warfarin") == (1, 4)
    ops = [op for op, _, _ in align("a b c".split(), "a x c d".split())]
    assert ops == ["ok", "sub", "ok", "ins"]


def test_ker_is_strict():
    row = {"text": "give cefazolin two grams now", "terms": [{"term": "cefazolin", "category": "drug"}]}
    assert score_rows([{**row, "hypothesis": "give cefa zolin two grams now"}])["ker"] == 1.0
    assert score_rows([{**row, "hypothesis": "give cefazolin 2 grams now"}])["ker"] == 0.0


def test_heard_as_finds_the_confusion():
    assert heard_as("patient takes warfarin daily", "patient takes war for in daily", "warfarin") == "war for in"
    assert heard_as("start levetiracetam now", "start now", "levetiracetam") == ""


def _rows():
    neg = {"text": "patient denies taking warfarin", "term": "warfarin", "negated": True, "negation_cue": "denies",
           "terms": [{"term": "warfarin", "category": "drug"}], "accent_profile": "native", "noise_band": "clean",
           "telephony": False, "origin": "synthetic"}
    pos = {"text": "start apixaban five milligrams twice daily", "term": "apixaban", "negated": False,
           "negation_cue": None, "terms": [{"term": "apixaban", "category": "drug"},
                                           {"term": "five milligrams", "category": "dosage"},
                                           {"term": "twice daily", "category": "frequency"}],
           "accent_profile": "second_language", "noise_band": "snr_10_15", "telephony": True, "origin": "synthetic"}
    return neg, pos


def test_negation_errors_and_critical_errors():
    neg, pos = _rows()
    s = score_rows([{**neg, "hypothesis": "patient taking warfarin"}, {**pos, "hypothesis": pos["text"]}])
    assert s["negation_accuracy"] == 0.0 and s["critical_negation_errors"] == 1
    s = score_rows([{**neg, "hypothesis": "patient denies taking the farm"}])
    assert s["negation_accuracy"] == 1.0 and s["critical_negation_errors"] == 0
    s = score_rows([{**neg, "hypothesis": "patient taking the farm"}])
    assert s["critical_negation_errors"] == 0   # negation lost, but so was the term: not read as un-negated


def test_categories_slices_and_confusions():
    neg, pos = _rows()
    s = score_rows([{**neg, "hypothesis": "patient denies taking war for in"},
                    {**pos, "hypothesis": "start apixaban five milligrams twice a day"}])
    assert s["ker_by_category"] == {"dosage": 0.0, "drug": 0.5, "frequency": 1.0}
    assert s["ker"] == pytest.approx(2 / 4)
    assert s["slices"]["accent_profile"]["native"]["wer"] == pytest.approx(3 / 4)
    assert s["slices"]["telephony"]["True"]["wer"] == pytest.approx(2 / 6)
    assert {"term": "warfarin", "heard_as": "war for in", "count": 1} in s["confusions"]


def test_bootstrap_interval_contains_the_point_estimate():
    rows = [{"errors": i % 3, "words": 5, "term_misses": i % 2, "terms": 2} for i in range(60)]
    ci = bootstrap_ci(rows, n=300, seed=1)
    wer = sum(r["errors"] for r in rows) / sum(r["words"] for r in rows)
    assert ci["wer"][0] <= wer <= ci["wer"][1] and ci["wer"][0] < ci["wer"][1]
    assert bootstrap_ci(rows, n=300, seed=1) == ci


def test_no_rows_is_an_error_not_a_pass():
    with pytest.raises(ValueError, match="nothing to score"):
        score_rows([])
