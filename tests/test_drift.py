"""Drift signals and policy on traffic/feedback records (the files the transcription service writes)."""

import copy
import json
from datetime import datetime, timedelta, timezone

import pytest

from clinasr import drift
from clinasr.synth.lexicon import load_lexicon

NOW = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
LEX = load_lexicon()
REF = {"wer": 0.10, "ker": 0.05, "ker_by_term": {"warfarin": 0.0, "apixaban": 0.0}, "negation_accuracy": 1.0,
       "audio": {"duration_s": 3.0, "level_dbfs": -25.0, "snr_db": 20.0}}

SENTENCES = ["start apixaban five milligrams twice daily", "patient takes warfarin two milligrams once daily",
             "patient denies taking lisinopril", "continue apixaban five milligrams twice daily"]


def write(serve_dir, pairs, when=NOW - timedelta(hours=1), rate=16000, level=-25.0):
    """pairs: (hypothesis, corrected or None) -> traffic + feedback files as the service writes them."""
    for sub in ("traffic", "feedback"):
        (serve_dir / sub).mkdir(parents=True, exist_ok=True)
    day = when.date().isoformat()
    with open(serve_dir / "traffic" / f"{day}.jsonl", "a") as t, open(serve_dir / "feedback" / f"{day}.jsonl", "a") as f:
        for i, (hyp, ref) in enumerate(pairs):
            rid = f"r{when.timestamp():.0f}-{i}"
            t.write(json.dumps({"ts": when.isoformat(), "request_id": rid, "model_version": "m/1", "hypothesis": hyp,
                                "duration_s": 3.1, "level_dbfs": level, "snr_db": 19.0, "sample_rate": rate}) + "\n")
            if ref is not None:
                f.write(json.dumps({"ts": (when + timedelta(minutes=5)).isoformat(), "request_id": rid,
                                    "corrected_text": ref}) + "\n")


@pytest.fixture
def policy():
    return drift.load_policy()


def run(serve_dir, policy, ref=REF):
    m = drift.measure(drift.load_window(serve_dir, 7, end=NOW), LEX)
    return drift.decide(m, ref, policy)


def test_steady_feedback_is_ok(tmp_path, policy):
    write(tmp_path, [(s, s) for s in SENTENCES * 10])
    d = run(tmp_path, policy)
    assert d["status"] == "ok" and d["drifted_terms"] == [] and d["measured"]["wer"] == 0.0
    assert d["measured"]["matched_feedback"] == 40 and d["measured"]["oov_rate"] == 0.0


def test_a_term_that_drifts_is_named_with_what_it_was_heard_as(tmp_path, policy):
    pairs = [(s.replace("warfarin", "war for in"), s) if "warfarin" in s else (s, s) for s in SENTENCES * 10]
    write(tmp_path, pairs)
    d = run(tmp_path, policy)
    assert d["status"] == "drift" and d["drifted_terms"] == ["warfarin"]
    sig = next(s for s in d["signals"] if s["signal"] == "term 'warfarin' KER")
    assert sig["value"] == 1.0 and "war for in" in sig["detail"]
    assert drift.retrain_terms(d, policy, LEX) == ["warfarin"]
    assert not next(s for s in d["signals"] if s["signal"] == "term 'apixaban' KER")["drifted"]


def test_negation_loss_is_critical(tmp_path, policy):
    pairs = [("patient taking lisinopril", s) if "denies" in s else (s, s) for s in SENTENCES * 10]
    write(tmp_path, pairs)
    d = run(tmp_path, policy)
    bad = {s["signal"] for s in d["signals"] if s["drifted"]}
    assert {"negation accuracy", "critical negation errors"} <= bad and d["status"] == "drift"


def test_new_vocabulary_and_audio_shift(tmp_path, policy):
    oov = "patient started zilebesiran yesterday evening"           # a drug the lexicon does not know
    write(tmp_path, [(s, s) for s in SENTENCES * 5] + [(oov, oov)] * 20, rate=8000, level=-45.0)
    d = run(tmp_path, policy)
    bad = {s["signal"]: s for s in d["signals"] if s["drifted"]}
    assert "out-of-vocabulary rate" in bad and "zilebesiran" in bad["out-of-vocabulary rate"]["detail"]
    assert "level shift (dB)" in bad and bad["level shift (dB)"]["value"] == pytest.approx(-20.0)
    assert "share of uploads below 16 kHz" in bad


def test_wer_increase_against_the_value_at_promotion(tmp_path, policy):
    write(tmp_path, [(s + " uh um okay", s) for s in SENTENCES * 10])
    d = run(tmp_path, policy)
    sig = next(s for s in d["signals"] if s["signal"] == "WER increase")
    assert sig["drifted"] and sig["reference"] == 0.10
    relaxed = copy.deepcopy(policy)
    relaxed["thresholds"]["max_wer_increase"] = 1.0
    assert next(s for s in run(tmp_path, relaxed)["signals"] if s["signal"] == "WER increase")["drifted"] is False


def test_too_little_or_unmatched_feedback_is_insufficient_data_not_an_alarm(tmp_path, policy):
    write(tmp_path, [("garbage", s) for s in SENTENCES[:3]])         # 3 terrible items < min_feedback 20
    (tmp_path / "feedback" / f"{NOW.date()}.jsonl").open("a").write(
        "".join(json.dumps({"ts": (NOW - timedelta(minutes=1)).isoformat(), "request_id": f"nope{i}", "corrected_text": "x"}) + "\n" for i in range(30))
        + "not json\n")
    d = run(tmp_path, policy)
    assert d["status"] == "insufficient data" and d["signals"] == []
    assert d["measured"]["unmatched_feedback"] == 30 and d["measured"]["unreadable_lines"] == 1
    assert "3 matched feedback items" in d["reason"]
    empty = drift.decide(drift.measure(drift.load_window(tmp_path / "none", 7, end=NOW), LEX), REF, policy)
    assert empty["status"] == "insufficient data" and empty["measured"]["requests"] == 0


def test_window_excludes_old_traffic_and_without_reference_only_absolute_signals(tmp_path, policy):
    write(tmp_path, [(s.replace("warfarin", "war for in"), s) for s in SENTENCES * 10], when=NOW - timedelta(days=30))
    write(tmp_path, [(s, s) for s in SENTENCES * 10])
    d = run(tmp_path, policy, ref=None)
    assert d["measured"]["requests"] == 40 and d["status"] == "ok"
    assert not any(s["signal"] == "WER increase" for s in d["signals"])


def test_report_html(tmp_path, policy):
    write(tmp_path, [(s.replace("warfarin", "war for in"), s) for s in SENTENCES * 10])
    d = run(tmp_path, policy)
    page = drift.render_html(d, [{"end": "2026-11-18", "wer": 0.1, "ker": 0.0}, {"end": "2026-11-25", "wer": 0.2, "ker": 0.3}],
                             "Drift")
    assert "Status: DRIFT" in page and page.count("data:image/png;base64,") == 2 and "war for in" in page


def test_retraining_targets_every_drifted_category_and_the_missed_drugs(tmp_path, policy):
    """Two frequency phrases drift and five drugs are each missed twice (below the per-term floor of 5): the
    retraining's priority list holds all seven, and the report says for each term why it is (not) in it."""
    steady = [("patient takes warfarin two milligrams once daily", "patient takes warfarin two milligrams once a day"),
              ("start apixaban five milligrams twice daily", "start apixaban five milligrams twice a day")] * 6
    missed = {"heparin": "happy rin", "tramadol": "tram a doll", "digoxin": "dig ox in", "cefazolin": "cefa zolin",
              "furosemide": "furrow semi"}
    pairs = [(h, s) for s, h in steady]
    for drug, heard in missed.items():
        pairs += [(f"give {heard} now", f"give {drug} now")] * 2
    pairs += [("patient denies taking lisinopril", "patient denies taking lisinopril")] * 4
    write(tmp_path, pairs)
    d = run(tmp_path, policy)
    assert d["status"] == "drift" and set(d["drifted_terms"]) == {"once daily", "twice daily"}
    plan = drift.retrain_plan(d, policy, LEX)
    assert set(plan["terms"]) == {"once daily", "twice daily", *missed} and not plan["default_used"]
    assert set(plan["terms"][:2]) == {"once daily", "twice daily"}        # drifted terms first, then missed drugs
    rows = {r["term"]: r for r in plan["per_term"]}
    assert rows["once daily"]["category"] == "frequency" and rows["once daily"]["why"].startswith("drifted")
    assert rows["heparin"]["misses"] == 2 and rows["heparin"]["occurrences"] == 2 and "happy rin x2" in rows["heparin"]["heard_as"]
    assert "below the per-term floor of 5" in rows["heparin"]["why"] and rows["heparin"]["retrain"]
    assert rows["warfarin"]["why"] == "recognised" and not rows["warfarin"]["retrain"]
    # the list is bounded; what did not fit says so
    small = drift.retrain_plan(d, {**policy, "max_retrain_terms": 3}, LEX)
    assert len(small["terms"]) == 3 and sum("list is full" in r["why"] for r in small["per_term"]) == 4
    page = drift.render_html({**d, "retraining": plan}, [], "Drift report")
    assert "id=retraining" in page and "below the per-term floor" in page


def test_nothing_specific_drifted_uses_the_explicit_default_and_says_so(tmp_path, policy):
    write(tmp_path, [(s, s) for s in SENTENCES * 10], level=-50.0)       # only the audio level moved
    d = run(tmp_path, policy)
    assert d["status"] == "drift" and d["drifted_terms"] == []
    plan = drift.retrain_plan(d, policy, LEX)
    assert plan["default_used"] and plan["terms"] == policy["default_retrain_terms"][:policy["max_retrain_terms"]]
    assert plan["reason"].startswith("nothing specific drifted (level shift")
    with pytest.raises(drift.DriftError, match="no default_retrain_terms"):
        drift.retrain_plan(d, {**policy, "default_retrain_terms": []}, LEX)


def test_ker_increase_snr_shift_and_duration_ratio_each_raise_drift(tmp_path, policy):
    """The signals not exercised elsewhere, each alone: KER up against promotion, SNR shift, longer utterances."""
    def signals(pairs, ref=REF, **write_kw):
        d = tmp_path / f"s{len(list(tmp_path.iterdir()))}"
        write(d, pairs, **write_kw)
        dec = run(d, policy, ref)
        return dec, {s["signal"]: s for s in dec["signals"] if s["drifted"]}

    # KER: one missed term in four sentences' worth (below the per-term floor) still moves the overall KER
    pairs = [(s.replace("apixaban", "a pixie ban"), s) if "continue" in s else (s, s) for s in SENTENCES * 10]
    dec, bad = signals(pairs, ref={**REF, "ker_by_term": {}})
    assert "KER increase" in bad and bad["KER increase"]["value"] == pytest.approx(dec["measured"]["ker"] - REF["ker"])
    # SNR: noisier wards than the evaluation audio
    steady = [(s, s) for s in SENTENCES * 10]
    _, bad = signals(steady, ref={**REF, "audio": {**REF["audio"], "snr_db": 35.0}})
    assert set(bad) == {"SNR shift (dB)"} and bad["SNR shift (dB)"]["value"] == pytest.approx(19.0 - 35.0)
    # duration: dictations ten times as long as the evaluation's utterances
    _, bad = signals(steady, ref={**REF, "audio": {**REF["audio"], "duration_s": 0.3}})
    assert set(bad) == {"duration ratio"} and bad["duration ratio"]["value"] == pytest.approx(3.1 / 0.3)
