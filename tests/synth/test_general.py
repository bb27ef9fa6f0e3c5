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
