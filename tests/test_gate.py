"""The acceptance gate: each criterion on reports scored by the real metrics library."""

import copy
from pathlib import Path

import pytest

from clinasr.gate import GateError, decide, load_gate, render_html, summary
from clinasr.metrics import score_rows

NEG = {"text": "patient denies taking warfarin", "term": "warfarin", "negated": True, "negation_cue": "denies",
       "terms": [{"term": "warfarin", "category": "drug"}], "accent_profile": "native", "noise_band": "clean",
       "telephony": False, "origin": "synthetic"}
POS = {"text": "start apixaban five milligrams twice daily", "term": "apixaban", "negated": False, "negation_cue": None,
       "terms": [{"term": "apixaban", "category": "drug"}, {"term": "five milligrams", "category": "dosage"},
                 {"term": "twice daily", "category": "frequency"}],
       "accent_profile": "second_language", "noise_band": "snr_10_15", "telephony": True, "origin": "synthetic"}


GENERAL = ["the train to the city leaves at half past seven", "could you pass me the salt and pepper please",
           "we watched the sunset from the top of the hill", "my phone battery is almost empty"]


def _scored(rows: list[dict], p95: float) -> dict:
    m = score_rows(rows)
    m.pop("per_row")
    m.update(rows={"scored": len(rows), "skipped": 0, "skipped_by_reason": {}},
             latency={"p50_s": p95 / 2, "p95_s": p95, "rtfx": 20.0, "device": "cpu"}, ci={"wer": [0, 1]})
    return m


def report(hyp_neg: str, hyp_pos: str, n: int = 10, p95: float = 0.2, model: str = "m",
           general: list[str] | None = None) -> dict:
    """An evaluation report on the gate's sets: the clinical rows on clinical_heldout (and, identical, on the
    validation split), everyday sentences on general_heldout (heard as ``general``; default: perfectly)."""
    rows = [{**NEG, "hypothesis": hyp_neg}, {**POS, "hypothesis": hyp_pos}] * n
    heard = general or GENERAL
    grows = [{"text": t, "hypothesis": h, "utt_id": f"g{i}-{k}", "voice": "espeak:roa/it"}
             for k in range(5) for i, (t, h) in enumerate(zip(GENERAL, heard))]
    return {"model": model, "sets": {"clinical_heldout": _scored(rows, p95), "validation": _scored(rows, p95),
                                     "general_heldout": _scored(grows, p95)}}


PERFECT = (NEG["text"], POS["text"])
BAD = ("patient taking war farin", "start a pixaban five milligram")


@pytest.fixture
def gate():
    return load_gate("configs/gate/default.yaml")


def failing(decision) -> set[str]:
    return {c["criterion"] for c in decision["criteria"] if not c["passed"]}


def test_a_better_candidate_passes_every_criterion(gate):
    d = decide(report(*PERFECT), report(*BAD), gate)
    assert d["passed"] and d["decision"] == "promote" and failing(d) == set()
    rel = next(c for c in d["criteria"] if c["criterion"] == "relative WER reduction")
    assert rel["value"] == pytest.approx(1.0) and rel["threshold"] == 0.30
    assert d["gate"]["version"] == 3 and len(d["gate"]["sha256"]) == 64
    assert {c["set"] for c in d["criteria"]} == {"clinical_heldout", "general_heldout"}
    assert summary(d).startswith("gate passed")


def test_a_worse_candidate_must_be_rejected(gate):
    d = decide(report(*BAD), report(*PERFECT), gate)
    assert not d["passed"] and d["decision"] == "reject"
    assert {"relative WER reduction", "term accuracy (1 - KER)", "negation accuracy",
            "worst slice WER regression"} <= failing(d)
    assert "needs >= 0.3" in summary(d)


def test_small_wer_gain_fails_only_the_relative_criterion(gate):
    base = report(NEG["text"], POS["text"] + " please do it now")   # 4 insertions: WER 0.4
    cand = report(NEG["text"], POS["text"] + " do it now")          # 3 insertions: WER 0.3, only 25% better
    d = decide(cand, base, gate)
    assert failing(d) == {"relative WER reduction"}


def test_term_accuracy_floor(gate):
    d = decide(report(NEG["text"], "start apixaban five milligram twice daily"), report(*BAD), gate)
    assert "term accuracy (1 - KER)" in failing(d)


def test_critical_negation_error_alone_blocks(gate):
    g = copy.deepcopy(gate)
    g["criteria"]["min_negation_accuracy"] = 0.0       # even with no accuracy floor, a critical error blocks
    d = decide(report("patient taking warfarin", POS["text"]), report(*BAD), g)
    assert failing(d) == {"critical negation errors"}


def test_slice_regression_and_latency(gate):
    cand = report(*PERFECT, p95=2.5)
    base = report(*PERFECT)
    # a slice that regresses: make the candidate worse on one accent only
    cand["sets"]["clinical_heldout"]["slices"]["accent_profile"]["native"]["wer"] = 0.2
    d = decide(cand, base, gate)
    assert {"worst slice WER regression", "latency p95 (s)"} <= failing(d)
    detail = next(c for c in d["criteria"] if c["criterion"] == "worst slice WER regression")["detail"]
    assert "accent_profile=native" in detail


def test_missing_data_never_passes(gate):
    d = decide({"model": "m", "sets": {}}, report(*BAD), gate)
    assert not d["passed"] and "utterances scored" in failing(d)
    d = decide(report(*PERFECT, n=2), report(*BAD), gate)      # 4 rows < min_utterances 10
    assert failing(d) == {"utterances scored"}
    d = decide(report(*PERFECT), {"model": "b", "sets": {"other": {}}}, gate)
    assert "baseline evaluated" in failing(d)


def test_without_a_baseline_the_reference_is_transcribing_nothing_and_forgetting_cannot_be_judged(gate):
    d = decide(report(*PERFECT), None, gate)
    assert d["baseline"] is None
    rel = next(c for c in d["criteria"] if c["criterion"] == "relative WER reduction")
    assert "transcribing nothing" in rel["detail"] and rel["passed"]
    # the general-English bound needs a model to compare with: without one the gate fails closed
    assert failing(d) == {"general-English WER increase"}
    assert "no baseline" in next(c for c in d["criteria"] if not c["passed"])["detail"]


def test_the_validation_split_is_shown_but_never_decides(gate):
    """Perfect on the training voices' validation split, poor on the held-out set: rejected."""
    cand, base = report(*BAD), report(*BAD, n=10)
    cand["sets"]["validation"] = report(*PERFECT)["sets"]["validation"]
    base["sets"]["clinical_heldout"]["wer"] = cand["sets"]["clinical_heldout"]["wer"]
    d = decide(cand, base, gate)
    assert not d["passed"] and "term accuracy (1 - KER)" in failing(d)
    assert all(c["set"] != "validation" for c in d["criteria"])
    assert set(d["leaderboards"]) == {"clinical_heldout", "general_heldout", "validation"}
    assert list(d["leaderboards"])[-1] == "validation"


def test_forgetting_everyday_english_rejects_naming_the_set_and_criterion(gate):
    worse = ["the train to the city leaves at half seven", "could you pass the salt and pepper please",
             "we watched the sunset from the top of the hill", "my phone battery is almost empty"]
    d = decide(report(*PERFECT, general=worse), report(*BAD), gate)
    assert failing(d) == {"general-English WER increase"}
    crit = next(c for c in d["criteria"] if c["criterion"] == "general-English WER increase")
    assert crit["set"] == "general_heldout" and crit["value"] == pytest.approx(2 / 35) and crit["threshold"] == 0.02
    assert "general-English WER increase on general_heldout 0.057 (needs <= 0.02)" in summary(d)
    assert decide(report(*PERFECT), report(*BAD), gate)["passed"]   # as good as the baseline on everyday English


def test_an_invented_drug_in_everyday_english_rejects(gate):
    """One phantom drug in 20 everyday utterances is 5 per 100: over the bound of 1, though WER barely moved."""
    g = copy.deepcopy(gate)
    g["criteria"]["max_general_wer_increase"] = 0.05
    heard = list(GENERAL)
    heard[1] = "could you pass me the salt and pepper heparin"     # 1 sub: 'please' -> 'heparin', x5 copies
    d = decide(report(*PERFECT, general=heard), report(*BAD), g)
    assert failing(d) == {"phantom terms per 100 utterances"}
    crit = next(c for c in d["criteria"] if c["criterion"] == "phantom terms per 100 utterances")
    assert crit["value"] == pytest.approx(25.0) and "heparin (drug) x5" in crit["detail"]
    page = render_html(d, report(*PERFECT, general=heard), report(*BAD), "Gate report")
    assert "id=phantoms" in page and "heparin" in page


def test_a_missing_or_stale_evaluation_set_fails_closed_with_its_reason(gate):
    cand, base = report(*PERFECT), report(*BAD)
    del cand["sets"]["general_heldout"]
    why = "evaluation set 'general_heldout' is stale: it was built from another config (abc), the current one is def"
    d = decide(cand, base, gate, missing_sets={"general_heldout": why})
    assert not d["passed"] and "evaluation set general_heldout scored" in failing(d)
    first = d["criteria"][0]
    assert first["set"] == "general_heldout" and first["detail"] == why
    assert "phantom terms per 100 utterances" in failing(d)    # and nothing on that set can pass
    # the task's message leads with why the set was not scored
    assert summary(d).startswith(f"gate failed: evaluation set general_heldout not scored: {why}; ")


def test_gate_config_is_validated(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text("version: 1\ncriteria:\n  min_wer_redution: 0.3\n")
    with pytest.raises(GateError, match="unknown criteria"):
        load_gate(bad)
    with pytest.raises(GateError, match="not found"):
        load_gate(tmp_path / "nope.yaml")


def test_html_report_has_verdict_criteria_plots_and_confusions(gate):
    cand, base = report(*BAD), report(*PERFECT)
    d = decide(cand, base, gate)
    page = render_html(d, cand, base, "Gate report")
    assert "Decision: REJECT" in page and "relative WER reduction" in page
    assert page.count("data:image/png;base64,") == 2
    assert "war farin" in page                          # the term confusion table


def reference(hyp_neg: str, hyp_pos: str, label: str) -> dict:
    return {**report(hyp_neg, hyp_pos, model=f"whisper:{label}"), "reference": True, "label": label}


def test_reference_models_are_ranked_on_the_leaderboard_but_do_not_decide(gate):
    assert gate["reference_models"] == ["whisper:tiny.en"]
    cand, base = report(NEG["text"], "start a pixaban five milligrams twice daily", model="cand"), report(*BAD, model="prod")
    better_ref = reference(*PERFECT, label="whisper-big")             # an off-the-shelf model that beats ours
    broken = {"model": "pretrained:x", "label": "pretrained:x", "reference": True, "error": "no hub", "sets": {}}
    with_refs = decide(cand, base, gate, references=[better_ref, broken])
    assert with_refs["criteria"] == decide(cand, base, gate)["criteria"]   # the decision ignores references
    board = with_refs["leaderboard"]
    assert [r["model"] for r in board] == ["whisper-big", "cand", "prod", "pretrained:x"]
    assert [r["role"] for r in board] == ["reference", "candidate", "production", "reference"]
    assert board[0]["wer"] == 0.0 and board[1]["wer"] < board[2]["wer"] and board[-1]["error"] == "no hub"
    assert set(board[1]["ker_by_category"]) == {"drug", "dosage", "frequency"}
    page = render_html(with_refs, cand, base, "Gate report")
    assert 'id=leaderboard' in page and "whisper-big" in page and "not evaluated: no hub" in page
    from clinasr.gate import leaderboard_text

    md = leaderboard_text(board).splitlines()
    assert md[0].startswith("| model | role | WER") and "KER drug" in md[0] and len(md) == 2 + len(board)


def test_gate_can_require_beating_the_references(gate):
    g = copy.deepcopy(gate)
    g["criteria"]["min_wer_margin_vs_references"] = 0.0
    cand, base = report(NEG["text"], POS["text"] + " now"), report(*BAD)      # every term right, one insertion
    d = decide(cand, base, g, references=[reference(*PERFECT, label="whisper-big")])
    assert failing(d) == {"WER margin vs best reference"}
    crit = next(c for c in d["criteria"] if c["criterion"] == "WER margin vs best reference")
    assert crit["value"] < 0 and "whisper-big 0.000" in crit["detail"]
    assert decide(cand, base, g, references=[reference(*BAD, label="w")])["passed"]
    assert "WER margin vs best reference" in failing(decide(cand, base, g, references=[]))   # no data never passes


def test_a_sampled_reference_is_labelled_and_cannot_decide(gate, tmp_path):
    """References scored on a sample (reference_max_utterances) say so on every leaderboard; the WER margin
    criterion compares candidate and reference on the same rows, so a gate config that sets both is refused and a
    sampled best reference fails the margin closed."""
    from clinasr.gate import leaderboard_text

    assert gate["reference_max_utterances"] == 15 and "min_wer_margin_vs_references" not in gate["criteria"]
    cand, base = report(*PERFECT, model="cand"), report(*BAD, model="prod")
    ref = reference(*BAD, label="whisper-tiny.en")
    for m in ref["sets"].values():
        m["sample"] = {"scored": 12, "of": m["rows"]["scored"], "seed": "s"}
        m["rows"]["scored"] = 12
    d = decide(cand, base, gate, references=[ref])
    row = next(r for r in d["leaderboard"] if r["model"] == "whisper-tiny.en")
    assert row["role"] == "reference" and row["sample"] == "12/20"
    assert "| whisper-tiny.en | reference (sample 12/20) |" in leaderboard_text(d["leaderboard"])
    assert next(r for r in d["leaderboard"] if r["model"] == "cand")["sample"] is None
    page = render_html(d, cand, base, "Gate report")
    assert page.count("<td>reference (sample 12/20)</td>") == 3 and "sample n/N" in page          # one per set
    src = Path(gate["path"]).read_text()
    both = tmp_path / "both.yaml"
    both.write_text(src.replace("criteria:\n", "criteria:\n  min_wer_margin_vs_references: 0.0\n", 1))
    with pytest.raises(GateError, match="set reference_max_utterances: null to decide on references"):
        load_gate(both)
    both.write_text(both.read_text().replace("reference_max_utterances: 15", "reference_max_utterances: null"))
    assert load_gate(both)["reference_max_utterances"] is None
    g = copy.deepcopy(gate)                           # a gate dict made by hand, not through load_gate
    g["criteria"]["min_wer_margin_vs_references"] = 0.0
    crit = next(c for c in decide(cand, base, g, references=[ref])["criteria"]
                if c["criterion"] == "WER margin vs best reference")
    assert not crit["passed"] and "scored on a sample (12/20 rows)" in crit["detail"]
    for bad in ("0", "-3", "true", "'15'"):
        both.write_text(src.replace("reference_max_utterances: 15", f"reference_max_utterances: {bad}"))
        with pytest.raises(GateError, match="reference_max_utterances must be a positive number"):
            load_gate(both)


def test_reference_list_is_validated(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text("version: 1\ncriteria: {}\nreference_models: whisper:tiny.en\n")
    with pytest.raises(GateError, match="reference_models must be a list"):
        load_gate(bad)


def test_an_unavailable_reference_becomes_a_row_with_its_error():
    from clinasr.gate import score_references

    class Unavailable(Exception):
        pass

    def evaluate_one(i, spec):
        if spec.startswith("pretrained:"):
            raise Unavailable("cannot load pretrained 'x': no hub")
        return reference(*PERFECT, label=f"ref{i}")

    warnings = []
    rows = score_references(["whisper:a", "pretrained:x", "whisper:b"], evaluate_one, Unavailable, warnings.append)
    assert [r.get("label") for r in rows] == ["ref0", "pretrained:x", "ref2"]
    assert rows[1]["error"].endswith("no hub") and rows[1]["sets"] == {} and "pretrained:x" in warnings[0]
    with pytest.raises(KeyError, match="missing"):     # other failures are not hidden
        score_references(["w"], lambda i, s: {}["missing"], Unavailable)
