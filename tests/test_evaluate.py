"""Evaluation in the ML runtime: a real NeMo model transcribes real synthetic audio; bad rows are counted."""

import json
import shutil

import numpy as np
import pytest

from clinasr.evaluate import EvaluationError, evaluate, load_rows

pytestmark = pytest.mark.ml


@pytest.fixture
def messy_manifest(tiny_dataset, tmp_path):
    """The validation split plus one row of each kind of bad input."""
    d = tmp_path / "set"
    d.mkdir()
    rows = [json.loads(x) for x in (tiny_dataset / "val_manifest.jsonl").read_text().splitlines()]
    for r in rows:
        r["audio_filepath"] = str(tiny_dataset / r["audio_filepath"])
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage")
    (d / "empty.wav").write_bytes(b"")
    bad = [{"audio_filepath": "missing.wav", "text": "give warfarin", "duration": 1},
           {"audio_filepath": "corrupt.wav", "text": "give warfarin", "duration": 1},
           {"audio_filepath": "empty.wav", "text": "give warfarin", "duration": 1},
           {"audio_filepath": rows[0]["audio_filepath"], "text": "  ", "duration": 1}]
    lines = [json.dumps(r) for r in rows + bad] + ["{not json"]
    (d / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return d / "manifest.jsonl", len(rows)


def test_bad_rows_are_counted_with_reasons_not_dropped(messy_manifest):
    path, good = messy_manifest
    rows, skipped = load_rows(path)
    assert len(rows) == good
    assert sum(skipped.values()) == 5
    assert skipped["bad JSON line"] == 1 and skipped["no reference text"] == 1
    assert skipped["audio: audio file not found"] == 1 and skipped["audio: empty audio file"] == 1
    assert any(k.startswith("audio: not decodable") for k in skipped)


def test_evaluate_scores_sets_saves_hypotheses_and_measures_latency(tiny_model, tiny_dataset, messy_manifest, tmp_path):
    path, good = messy_manifest
    logs = []
    rep = evaluate({"model": tiny_model, "output_dir": str(tmp_path / "out"), "progress": False,
                    "sets": [{"name": "validation", "manifest": str(tiny_dataset)},
                             {"name": "messy", "manifest": str(path)}]}, log=logs.append)
    v, m = rep["sets"]["validation"], rep["sets"]["messy"]
    assert v["rows"]["scored"] == good and m["rows"]["skipped"] == 5 and m["rows"]["scored"] == good
    assert 0 <= v["wer"] and v["terms_scored"] > 0 and v["ci"]["wer"][0] <= v["wer"] <= v["ci"]["wer"][1]
    assert v["latency"]["p95_s"] >= v["latency"]["p50_s"] > 0 and v["latency"]["rtfx"] > 1
    hyps = [json.loads(x) for x in open(v["hypotheses"])]
    assert len(hyps) == good and all(h["hypothesis"].strip() and h["latency_s"] > 0 for h in hyps)
    assert v["wer"] == m["wer"]      # the same rows, the same deterministic model
    assert json.loads(open(rep["report_path"]).read())["sets"].keys() == {"validation", "messy"}


def test_our_models_transcripts_are_reused_for_the_same_weights_code_and_audio(tiny_model, tiny_dataset, tmp_path,
                                                                               monkeypatch):
    """The production model scored again as a baseline, or a candidate in the override run: the same weights on the
    same audio decode nothing again (no model is loaded) and score the same; other weights, or another decoding
    switch, are another model."""
    import clinasr.inference as inference

    loads = []
    real_init = inference.Transcriber.__init__
    monkeypatch.setattr(inference.Transcriber, "__init__", lambda self, *a, **kw: loads.append(1) or real_init(self, *a, **kw))
    logs = []

    def run(out, model=tiny_model):
        return evaluate({"model": str(model), "output_dir": str(tmp_path / out), "progress": False,
                         "sets": [{"name": "validation", "manifest": str(tiny_dataset)}],
                         "transcript_cache": str(tmp_path / "cache")}, log=logs.append)

    first = run("a")
    assert len(loads) == 1 and not first["sets"]["validation"]["transcripts"]["cached"]
    second = run("b")
    v1, v2 = first["sets"]["validation"], second["sets"]["validation"]
    assert len(loads) == 1 and v2["transcripts"]["cached"] and v2["latency"]["cached"]
    assert v2["wer"] == v1["wer"] and v2["ci"] == v1["ci"] and second["n_params"] == first["n_params"]
    assert [json.loads(x)["hypothesis"] for x in open(v1["hypotheses"])] == \
        [json.loads(x)["hypothesis"] for x in open(v2["hypotheses"])]
    assert f"cached transcripts (key {v1['transcripts']['cache_key']})" in "\n".join(logs)
    copy = tmp_path / "copy.nemo"                      # the same weights under another name: the same model
    shutil.copy(tiny_model, copy)
    assert run("c", copy)["sets"]["validation"]["transcripts"]["cached"] and len(loads) == 1
    with open(copy, "ab") as f:                        # other bytes: another model, decoded afresh
        f.write(b"\0" * 1024)
    assert not run("d", copy)["sets"]["validation"]["transcripts"]["cached"] and len(loads) == 2
    monkeypatch.setenv("CLINASR_DECODING", "greedy")   # another decoding switch: decoded afresh
    assert not run("e")["sets"]["validation"]["transcripts"]["cached"] and len(loads) == 3


def test_evaluation_errors_are_clear(tiny_model, tmp_path):
    with pytest.raises(EvaluationError, match="model .*not found"):
        evaluate({"model": str(tmp_path / "none.nemo"), "output_dir": str(tmp_path),
                  "sets": [{"name": "v", "manifest": str(tmp_path)}]})
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(EvaluationError, match="no usable rows"):
        evaluate({"model": tiny_model, "output_dir": str(tmp_path / "o"), "progress": False,
                  "sets": [{"name": "v", "manifest": str(tmp_path / "empty.jsonl")}]})
    with pytest.raises(EvaluationError, match="no evaluation sets"):
        evaluate({"model": tiny_model, "output_dir": str(tmp_path / "o"), "sets": []})


def test_transcriber_chunks_long_audio_and_gives_word_times(tiny_model, tiny_dataset):
    """Audio longer than max_chunk_s is decoded as several chunks: three different clips, each padded with silence
    to exactly one chunk and played back to back, go through the model as three pieces, and the long transcript is
    the three clips' own transcripts in order, with each clip's word times shifted to where it was played."""
    from clinasr import audio
    from clinasr.inference import InferenceError, Transcriber

    rows = [json.loads(x) for x in ((tiny_dataset / "val_manifest.jsonl").read_text().splitlines()
                                    + (tiny_dataset / "train_manifest.jsonl").read_text().splitlines())]
    clips = [audio.load(tiny_dataset / r["audio_filepath"]) for r in rows]
    chunk_s = 3.0
    n = int(chunk_s * 16000)
    parts = [np.pad(x, (0, n - len(x))) for x in clips if len(x) < n - 8000][:3]   # >= 0.5 s of silence after each
    t = Transcriber(tiny_model, max_chunk_s=chunk_s)
    alone = t.transcribe(parts, timestamps=True)
    assert len(parts) == 3 and all(a["text"].strip() and a["words"] for a in alone)
    assert len({a["text"] for a in alone}) == 3, "pick clips that are transcribed differently"

    pieces = []       # what reaches the model: the lengths of each forward pass's inputs
    forward = t.model.forward
    t.model.forward = lambda **kw: (pieces.append(kw["input_signal_length"].tolist()), forward(**kw))[1]
    long = np.concatenate(parts)
    [out] = t.transcribe([long], timestamps=True)
    t.model.forward = forward
    assert pieces == [[n, n, n]]
    assert out["text"] == " ".join(a["text"] for a in alone)
    shifted = [{**w, "start": round(w["start"] + k * chunk_s, 3), "end": round(w["end"] + k * chunk_s, 3)}
               for k, a in enumerate(alone) for w in a["words"]]
    assert [w["word"] for w in out["words"]] == [w["word"] for w in shifted]
    assert all(abs(w["start"] - s["start"]) < 2e-3 and abs(w["end"] - s["end"]) < 2e-3
               for w, s in zip(out["words"], shifted))
    assert out["words"][-1]["start"] > 2 * chunk_s and out["words"][-1]["end"] <= len(long) / 16000
    starts = [w["start"] for w in out["words"]]
    assert starts == sorted(starts) and all(w["end"] > w["start"] for w in out["words"])

    assert t.transcribe([clips[0]])[0]["text"] == t.transcribe([clips[0]])[0]["text"]     # deterministic
    with pytest.raises(InferenceError, match="non-empty 1-D"):
        t.transcribe([np.zeros((2, 10), dtype=np.float32)])
    bad = tiny_dataset.parent / "bad.nemo"
    shutil.copy(tiny_dataset / rows[0]["audio_filepath"], bad)
    with pytest.raises(InferenceError, match="cannot load bad.nemo"):
        Transcriber(bad)


def test_compiled_encoder_transcribes_as_the_plain_one(tiny_model, tiny_dataset, monkeypatch):
    """CLINASR_COMPILE_ENCODER: the encoder runs through torch.compile, warm-up builds it at two shapes, and
    transcripts equal the uncompiled model's. The aot_eager backend captures the same graph as inductor (the
    default, =1) without its code generation, which takes minutes on this CPU; inductor's speed-up is measured
    on the GPU (bench_inference.py --levers-only)."""
    from clinasr import audio
    from clinasr.inference import Transcriber

    rows = [json.loads(x) for x in (tiny_dataset / "val_manifest.jsonl").read_text().splitlines()[:3]]
    xs = [audio.load(tiny_dataset / r["audio_filepath"]) for r in rows]
    plain = Transcriber(tiny_model)
    assert not plain.compiled
    # bf16 autocast is opt-in: a GPU fine-tune trained in fp32 decoded everyday English at WER 1.01 under it
    assert plain.bf16_min_batch == 0
    monkeypatch.setenv("CLINASR_BF16_MIN_BATCH", "16")
    assert Transcriber.from_model(plain.model).bf16_min_batch == 16
    monkeypatch.delenv("CLINASR_BF16_MIN_BATCH")
    monkeypatch.setenv("CLINASR_COMPILE_ENCODER", "aot_eager")
    fast = Transcriber(tiny_model)
    assert fast.compiled and hasattr(fast.model.encoder, "_orig_mod")
    fast.warm_up()
    assert [r["text"] for r in fast.transcribe(xs, batch_size=3)] == [r["text"] for r in plain.transcribe(xs, batch_size=3)]


def test_a_sample_is_fixed_sized_and_keeps_each_voice_and_noise_band_share():
    """Reference models are scored on a sample (gate config reference_max_utterances): at most n rows, the same
    rows whatever order they come in, each voice and noise band in proportion, and manifest order kept."""
    from clinasr.evaluate import sample_rows

    rows = [{"audio_filepath": f"a/{v}-{b}-{i}.wav", "text": f"row {i}", "voice": v, "noise_band": b}
            for v, count in (("espeak:it", 20), ("piper:joe", 10), ("espeak:pt-br", 10))
            for b in ("clean", "snr_10_15") for i in range(count // 2)]
    picked = sample_rows(rows, 8)
    assert len(picked) == 8 and [r for r in rows if r in picked] == picked          # manifest order
    by_voice = {v: sum(r["voice"] == v for r in picked) for v in ("espeak:it", "piper:joe", "espeak:pt-br")}
    assert by_voice == {"espeak:it": 4, "piper:joe": 2, "espeak:pt-br": 2}
    assert sum(r["noise_band"] == "clean" for r in picked) == 4
    rng = np.random.default_rng(1)
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    assert sorted(r["audio_filepath"] for r in sample_rows(shuffled, 8)) == sorted(r["audio_filepath"] for r in picked)
    assert sample_rows(rows, 8, seed="another") != picked                          # the seed decides which rows
    assert sample_rows(rows, None) == rows and sample_rows(rows, 40) == rows and len(sample_rows(rows, 39)) == 39
