"""General-English sentences for the base model, and the synthesis pool surviving dead workers."""

import json
import os
from pathlib import Path

import pytest

from clinasr.synth import general
from clinasr.synth.lexicon import load_lexicon
from clinasr.textnorm import normalize

pytestmark = pytest.mark.ml


def test_shipped_sentences_are_normalised_prose_without_clinical_drugs():
    sents = general.load()
    assert len(sents) > 5000
    assert len(set(sents)) == len(sents)
    lex = load_lexicon()
    drugs = {normalize(d) for d in lex.drugs} | set(lex.brands)
    for s in sents:
        assert s == normalize(s) and 4 <= len(s.split()) <= 30
        assert not any(ch.isdigit() or ch in "_()[]{}=<>/" for ch in s), s
    text = " " + " ".join(sents) + " "
    assert not [d for d in drugs if f" {d} " in text]


def test_sentences_from_drops_code_and_keeps_prose():
    doc = ("Return the number of items in the container.\n\n    >>> len(x)\n    3\n\n"
           "The value must be an integer; see foo_bar() for details.\n\n- a list item that is long enough here")
    assert general.sentences_from(doc) == ["return the number of items in the container", "the value must be an integer"]


def test_utterances_use_every_sentence_before_repeating_and_are_deterministic(tmp_path):
    p = tmp_path / "g.txt.gz"
    import gzip

    p.write_bytes(gzip.compress(b"# header\none two three four\nfive six seven eight\nnine ten eleven twelve\n"))
    u = general.utterances(7, seed=3, path=p)
    assert [x["text"] for x in u[:3]] and len({x["text"] for x in u[:3]}) == 3
    assert len({x["utt_id"] for x in u}) == 7
    assert u == general.utterances(7, seed=3, path=p)
    assert u != general.utterances(7, seed=4, path=p)
    assert all(x["generator"] == general.GENERATOR and x["terms"] == [] and not x["negated"] for x in u)
    assert u[0]["lexicon_version"] == general.source_version(p)


def crash_once(u, v, config, out_dir, augment_on, seed):
    """A render function whose first call kills its worker process (as a native TTS crash does)."""
    marker = Path(config["marker"])
    if config.get("always") or not marker.exists():
        marker.write_text("crashed")
        os._exit(1)
    return {"utt_id": u["utt_id"], "audio_filepath": f"audio/{u['utt_id']}.wav", "text": u["text"]}


@pytest.mark.parametrize("always", [False, True])
def test_dead_worker_sends_rows_to_a_fresh_pool_then_quarantines(tmp_path, always):
    from clinasr.synth import pipeline
    from tqdm import tqdm

    todo = [({"utt_id": f"u{i}", "text": f"row {i}"}, {}) for i in range(6)]
    rows, quarantine = [], []
    cfg = {"marker": str(tmp_path / "marker"), "always": always}
    pipeline._render_all(todo, cfg, tmp_path, tmp_path, False, 0, 2, None, rows, quarantine, tqdm(disable=True),
                         render=crash_once)
    if always:   # every pool dies: every row is quarantined with the reason, none lost, nothing cached
        assert rows == [] and sorted(q["utt_id"] for q in quarantine) == [f"u{i}" for i in range(6)]
        assert all("worker failed" in q["quarantine"] and "pool restarts" in q["quarantine"] for q in quarantine)
        assert not list(tmp_path.glob("u*.json"))
    else:        # the first pool died: its rows were rendered by the next one
        assert quarantine == [] and sorted(r["utt_id"] for r in rows) == [f"u{i}" for i in range(6)]
        assert json.loads((tmp_path / "u0.json").read_text())["utt_id"] == "u0"


# ---- the v2 text (issue 21): WordNet examples + fortunes + CPython sentences -------------------------------------
WORDNET_LINE = ('00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 021 * 00005041 v 0000 '
                '02 + 02 00 + 08 00 | draw air into, and expel out of, the lungs; "I can breathe better when the air '
                'is clean"; "The patient is respiring"; "she breathed a sigh of relief as the 3 kids came home"  \n')


def test_shipped_v2_text_is_large_disjoint_from_evaluation_and_free_of_lexicon_terms():
    from clinasr import metrics
    from clinasr.synth.lexicon import LEXICON_PATH

    sents = general.load(general.TEXT_V2_PATH)
    assert len(sents) >= 50_000
    assert len(set(sents)) == len(sents) and sents == sorted(sents)
    for s in sents:
        words = s.split()
        assert s == normalize(s) and 4 <= len(words) <= 24, s
        assert all(w.replace("'", "").isascii() and w.replace("'", "").isalpha() and len(w) <= 20 for w in words), s
    evals = [normalize(x) for x in general.EVAL_TEXT_PATH.read_text().splitlines()
             if x.strip() and not x.startswith("#")]
    assert len(evals) > 50
    assert not set(evals) & set(sents)
    grams = {" ".join(w[i:i + 6]) for e in evals for w in [e.split()] for i in range(len(w) - 5)}
    assert grams and not [s for s in sents if any(" ".join(s.split()[i:i + 6]) in grams for i in range(len(s.split())))]
    lex = load_lexicon()
    drugs = {normalize(d) for d in lex.drugs} | set(lex.brands)
    text = " " + " \n ".join(sents) + " "
    assert not [d for d in drugs if f" {d} " in text]
    inventory = metrics.phantom_inventory(str(LEXICON_PATH))
    assert not [s for s in sents if metrics.lexicon_terms(s, inventory)][:5]
    import gzip

    header = [x for x in gzip.decompress(general.TEXT_V2_PATH.read_bytes()).decode().splitlines() if x.startswith("#")]
    head = "\n".join(header)
    for needed in ("wordnet-base", "fortunes-min", "WordNet 3.0 licence", "BSD", "PSF License", "write_v2",
                   f"{len(sents)} unique"):
        assert needed in head, needed
    counts = [int(x.split(": ", 1)[1].split()[0]) for x in header if x.startswith("# source ")]
    assert len(counts) == 3 and sum(counts) == len(sents) and min(counts) > 5000
    assert general.load() and general.TEXT_PATH.exists()   # the first text stays as it was


def test_wordnet_extractor_returns_the_quoted_examples_as_spoken_sentences(tmp_path):
    assert general.wordnet_examples(WORDNET_LINE) == [
        "I can breathe better when the air is clean", "The patient is respiring",
        "she breathed a sigh of relief as the 3 kids came home"]
    assert general.wordnet_examples('  16 THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON  \n') == []
    for pos in ("noun", "verb", "adj", "adv"):
        (tmp_path / f"data.{pos}").write_text(WORDNET_LINE if pos == "verb" else "")
    # the example with a digit is not spoken prose; the definition is not used
    assert general.wordnet_sentences(tmp_path) == ["i can breathe better when the air is clean",
                                                   "the patient is respiring"]
    (tmp_path / "data.adv").unlink()
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        general.wordnet_sentences(tmp_path)


def test_fortune_splitter_drops_attributions_and_formatting(tmp_path):
    entry = ("A banker is a fellow who lends you his umbrella when the sun is shining\n"
             "and wants it back when it rains.  Is that fair to you?\n"
             "\t\t-- Mark Twain, \"The Disappearance of Literature\"\n")
    assert general.fortune_sentence_split(entry) == [
        "a banker is a fellow who lends you his umbrella when the sun is shining and wants it back when it rains",
        "is that fair to you"]
    assert general.fortune_sentence_split('"I collected some of their Proverbs..." - Blake, "Heaven and Hell"\n') == [
        "i collected some of their proverbs"]
    assert general.fortune_sentence_split("Dr. Watson said that the game was afoot tonight.\n") == [
        "doctor watson said that the game was afoot tonight"]
    assert general.fortune_sentence_split("B\bBo\bol\bld\bd  words are read as plain words here.\n") == [
        "bold words are read as plain words here"]
    assert general.fortune_sentence_split("Call 555-1234 or see /usr/bin today, my friend.\n") == []
    (tmp_path / "fortunes").write_text("You will meet a tall dark stranger soon.\n%\nToo short.\n%\n"
                                       "Nobody expects the Spanish Inquisition today.\n\t-- Monty Python\n%\n")
    (tmp_path / "fortunes.dat").write_bytes(b"\x00\x01binary index")
    (tmp_path / "art").write_text("Some ascii drawing goes in here now.\n%\n")
    assert general.fortune_sentences(tmp_path) == ["you will meet a tall dark stranger soon",
                                                   "nobody expects the spanish inquisition today"]
    with pytest.raises(FileNotFoundError, match="fortunes"):
        general.fortune_sentences(tmp_path / "absent")


def test_v2_rows_carry_their_own_generator(tmp_path):
    import gzip

    p = tmp_path / general.TEXT_V2_PATH.name
    p.write_bytes(gzip.compress(b"# header\none two three four\nfive six seven eight\n"))
    assert {u["generator"] for u in general.utterances(3, seed=1, path=p)} == {general.GENERATOR_V2}
    assert {u["generator"] for u in general.utterances(2, seed=1)} == {general.GENERATOR}


@pytest.mark.skipif(not (general.WORDNET_DIR / "data.noun").exists() or not (general.FORTUNE_DIR / "fortunes").exists(),
                    reason="needs the Debian packages wordnet-base, fortunes-min and fortunes")
def test_v2_text_rebuilds_to_the_shipped_sentences():
    sents, stats = general.extract_v2()
    assert sents == general.load(general.TEXT_V2_PATH)
    assert sum(stats["kept"].values()) == len(sents)
