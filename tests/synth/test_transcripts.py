import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clinasr.synth.lexicon import load_lexicon, load_terms
from clinasr.synth.transcripts import TEMPLATES, GrammarGenerator, generate_transcripts, phi_reasons
from tests.conftest import free_port


@pytest.fixture(scope="module")
def lex():
    return load_lexicon()


def test_grammar_generator_is_deterministic_and_tags_terms(lex):
    terms = load_terms(["warfarin", "levetiracetam"], lex)
    a = [u.to_dict() for u in GrammarGenerator(lex, seed=3).generate(terms, 30)]
    b = [u.to_dict() for u in GrammarGenerator(lex, seed=3).generate(terms, 30)]
    c = [u.to_dict() for u in GrammarGenerator(lex, seed=4).generate(terms, 30)]
    assert a == b and a != c
    for u in a:
        assert f" {u['term']} " in f" {u['text']} "
        assert {"term": u["term"], "category": "drug"} in u["terms"]
        assert u["text"] == u["text"].lower() and not any(ch.isdigit() for ch in u["text"])
        if u["negated"]:
            assert f" {u['negation_cue']} " in f" {u['text']} "
    assert any(u["negated"] for u in a) and any(not u["negated"] for u in a)
    assert any(t["category"] == "dosage" for u in a for t in u["terms"])


def test_template_families_are_disjoint(lex):
    terms = load_terms(["metformin"], lex)
    train = {u.template_id for u in GrammarGenerator(lex, 0, "a").generate(terms, 60)}
    held = {u.template_id for u in GrammarGenerator(lex, 0, "b").generate(terms, 60)}
    assert train and held and not train & held
    assert all(TEMPLATES[t][0] == "b" for t in held)


@pytest.mark.parametrize("text, reason", [
    ("call him at 555-123-4567 about warfarin", "phone number"),
    ("MRN 00123 on apixaban", "record number"),
    ("date of birth is in the chart", "date"),
    ("Mr. Johnson takes lasix", "named person"),
    ("send to jo@example.org", "email"),
    ("lives at 12 Oak Street", "address"),
])
def test_phi_detection(text, reason):
    assert reason in phi_reasons(text)


def test_clinical_text_is_not_flagged():
    assert phi_reasons("patient denies taking warfarin five milligrams twice daily") == []


def test_duplicates_are_dropped_and_counted(lex):
    terms = load_terms(["aspirin"], lex)
    res = generate_transcripts(lex, terms, per_term=400, seed=1)
    texts = [u.text for u in res["utterances"]]
    assert len(texts) == len(set(texts))
    assert res["dropped"].get("duplicate", 0) > 0
    assert len(texts) + res["dropped"]["duplicate"] == 400


class _FakeLLM(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat-completions endpoint on loopback that replies from a script."""
    replies: list[str] = []
    prompts: list[str] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeLLM.prompts.append(body["messages"][0]["content"])
        reply = _FakeLLM.replies.pop(0) if _FakeLLM.replies else "um give warfarin five milligrams by mouth now"
        out = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
               "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}]}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def fake_llm():
    port = free_port()
    srv = ThreadingHTTPServer(("127.0.0.1", port), _FakeLLM)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _FakeLLM.prompts.clear()
    yield f"http://127.0.0.1:{port}/v1"
    srv.shutdown()


def test_llm_generator_validates_replies(lex, fake_llm, tmp_path):
    _FakeLLM.replies[:] = [
        "Call Mr. Smith at 555-123-4567 about warfarin",        # PHI -> rejected
        "Patient takes metoprolol fifty milligrams daily",        # term missing -> rejected
        "warfarin",                                              # too short -> rejected
        "The patient denies taking warfarin 5 mg twice daily",   # accepted, normalised
    ]
    terms = load_terms(["warfarin"], lex)
    res = generate_transcripts(lex, terms, 1, generator="llm", seed=0, cache_dir=tmp_path / "cache",
                               llm={"base_url": fake_llm, "model": "tiny", "max_attempts": 4, "requests_per_minute": 0})
    [u] = res["utterances"]
    assert u.text == "the patient denies taking warfarin five milligrams twice daily"
    assert u.negated and u.negation_cue == "denies"
    assert u.generator == "llm:tiny"
    assert res["dropped"] == {"phi: phone number, named person": 1, "term missing": 1, "length": 1}
    assert "warfarin" in _FakeLLM.prompts[0]
    # the cache answers a repeated request without calling the endpoint
    n = len(_FakeLLM.prompts)
    again = generate_transcripts(lex, terms, 1, generator="llm", seed=0, cache_dir=tmp_path / "cache",
                                 llm={"base_url": fake_llm, "model": "tiny", "max_attempts": 4, "requests_per_minute": 0})
    assert [x.text for x in again["utterances"]] == [u.text] and len(_FakeLLM.prompts) == n


def test_unreachable_llm_is_a_clear_error(lex):
    terms = load_terms(["warfarin"], lex)
    with pytest.raises(RuntimeError, match="LLM endpoint .* failed"):
        generate_transcripts(lex, terms, 1, generator="llm",
                             llm={"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "m", "timeout": 2})


def test_llm_generator_needs_endpoint(lex):
    with pytest.raises(ValueError, match="base_url"):
        generate_transcripts(lex, load_terms(["warfarin"], lex), 1, generator="llm", llm={})
