"""Task bodies of dags/clinasr_drift.py (clinasr.tasks.drift): the lexicon review and the retraining request."""

from clinasr import drift
from tests.test_drift import NOW, REF, SENTENCES, policy, write  # noqa: F401 - policy is a fixture


def test_an_unknown_drug_is_proposed_and_enters_the_lexicon_only_after_approval(tmp_path, policy, monkeypatch):
    from clinasr.tasks.drift import record_lexicon_review, retrain_request
    from clinasr.synth.lexicon import load_lexicon

    monkeypatch.setenv("CLINASR_HOME", str(tmp_path / "home"))
    new = "patient started zilebesiran yesterday evening"
    write(tmp_path, [(s, s) for s in SENTENCES * 5] + [("patient started zeal a bees iran yesterday evening", new)] * 3)
    m = drift.measure(drift.load_window(tmp_path, 7, end=NOW), load_lexicon())
    d = drift.decide(m, REF, policy)
    plan = drift.retrain_plan(d, policy, load_lexicon())
    props = plan["proposed_additions"]
    assert [p["term"] for p in props] == ["zilebesiran"] and props[0]["occurrences"] == 3   # "yesterday" is English
    assert "zeal a bees iran" in props[0]["heard_as"]
    measured = {"retrain_conf": {"terms": ", ".join(plan["terms"]), "utterances_per_term": 5, "reason": "drift"},
                "proposed_additions": ["zilebesiran"], "default_terms_used": plan["default_used"]}
    before = load_lexicon().version
    record_lexicon_review({"chosen_options": ["Reject"], "responded_by_user": "rev"}, ["zilebesiran"], "r1")
    assert "zilebesiran" not in load_lexicon().categories() and load_lexicon().version == before
    assert "zilebesiran" not in retrain_request(measured)["terms"]
    record_lexicon_review({"chosen_options": ["Approve"], "responded_by_user": "rev"}, ["zilebesiran"], "r2")
    lex = load_lexicon()
    assert lex.categories()["zilebesiran"] == "drug" and lex.version != before
    conf = retrain_request(measured)
    assert conf["terms"].split(", ")[-1] == "zilebesiran" and "reviewed lexicon additions: zilebesiran" in conf["reason"]
    # the new lexicon version is what a synthetic-data run uses: the new drug is a priority term it can speak
    from clinasr.synth.lexicon import load_terms
    from clinasr.synth.transcripts import generate_transcripts

    gen = generate_transcripts(lex, load_terms(conf["terms"], lex), 2, seed=1)
    assert "zilebesiran" in {u.term for u in gen["utterances"]}
    assert all(u.lexicon_version == lex.version for u in gen["utterances"])
