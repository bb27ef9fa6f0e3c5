import pytest

from clinasr.synth.lexicon import TermError, load_lexicon, load_terms


def test_lexicon_has_clinical_content():
    lex = load_lexicon()
    assert len(lex.drugs) >= 200
    assert lex.version.startswith("lex-")
    for key in ("units", "routes", "frequencies", "negations", "fillers", "shorthand", "code_switching"):
        assert lex[key], key
    assert lex.brands["lasix"] == "furosemide"


def test_terms_resolve_dedupe_and_report_unknown(tmp_path):
    lex = load_lexicon()
    f = tmp_path / "terms.txt"
    f.write_text("# priority drugs\nWarfarin\nwarfarin\nLasix, notadrug\ntwice daily\n")
    t = load_terms(str(f), lex)
    assert t.terms == ["warfarin", "lasix", "twice daily"]
    assert t.unknown == ["notadrug"]
    assert t.categories == {"warfarin": "drug", "lasix": "drug", "twice daily": "frequency"}


def test_empty_term_list_means_every_drug():
    lex = load_lexicon()
    assert len(load_terms("", lex).terms) == len(lex.drugs)


def test_all_unknown_terms_is_a_clear_error():
    with pytest.raises(TermError, match="none of the priority terms"):
        load_terms(["foo", "bar"], load_lexicon())
