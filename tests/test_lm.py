"""The subword n-gram LM (clinasr.lm): a real Kneser-Ney distribution, an ARPA file that NeMo's own reader scores as we
do, embedded in a .nemo that the Transcriber, the service's streaming path and a fine-tune carry on."""

import json
import math
import tarfile

import pytest
import soundfile as sf

from clinasr import lm

pytestmark = pytest.mark.ml

CORPUS = [[1, 2, 3], [1, 2, 4, 5], [2, 3, 5], [4, 5, 1, 2, 3], [3, 3, 2], [5], [1, 2, 3, 4]]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_history_has_a_distribution_that_sums_to_one(order):
    m = lm.kneser_ney(CORPUS, order=order)
    vocab = [g[0] for g in m[1] if g[0] != lm.BOS]          # tokens, </s> and <unk>
    assert {1, 2, 3, 4, 5, lm.EOS, lm.UNK} == set(vocab)
    histories = [()] + [g for n in range(1, order) for g in m[n] if lm.EOS not in g]
    for h in histories:
        total = sum(10 ** lm.log10_prob(m, h, w) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-6), (h, total)
    # seen continuations beat unseen ones after a frequent history
    if order >= 2:
        assert lm.log10_prob(m, (1,), 2) > lm.log10_prob(m, (1,), 5)


def test_nemo_reads_the_arpa_file_and_scores_as_we_do(tmp_path):
    from nemo.collections.asr.parts.submodules.ngram_lm.ngram_lm_batched import NGramGPULanguageModel
    import torch

    m = lm.kneser_ney(CORPUS, order=3)
    arpa = lm.write_arpa(m, tmp_path / "lm.arpa")
    head = arpa.read_text().splitlines()
    assert head[0] == "\\data\\" and head[1] == f"ngram 1={len(m[1])}"
    nemo_lm = NGramGPULanguageModel.from_arpa(arpa, vocab_size=6, normalize_unk=False, use_triton=False)
    for sent in ([1, 2, 3], [2, 3, 5, 1], [5, 5, 0]):     # 0: a token the text never had
        ours = [lm.log10_prob(m, (lm.BOS, *sent[:i]), t) * math.log(10) for i, t in enumerate(sent)]
        theirs = nemo_lm.score_sentences(torch.tensor([sent]), bos=True)[0].tolist()
        assert theirs == pytest.approx(ours, abs=1e-4), sent


def test_bad_lm_input_is_refused_with_a_reason(tmp_path):
    with pytest.raises(lm.LMError, match="no non-empty sentence"):
        lm.kneser_ney([[], []])
    with pytest.raises(lm.LMError, match="order must be"):
        lm.kneser_ney(CORPUS, order=0)
    with pytest.raises(lm.LMError, match="not found"):
        lm.texts_from(tmp_path / "missing.txt")
    with pytest.raises(lm.LMError, match="model not found"):
        lm.build_stage({"model": str(tmp_path / "none.nemo"), "texts": [], "out": str(tmp_path / "o.nemo")})
    (tmp_path / "junk.nemo").write_bytes(b"not a tar")
    with pytest.raises(lm.LMError, match="not a .nemo"):
        lm.build_stage({"model": str(tmp_path / "junk.nemo"), "texts": [], "out": str(tmp_path / "o.nemo")})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"audio_filepath": "a.wav"}\n')
    with pytest.raises(lm.LMError, match="line 2"):
        lm.texts_from(bad)


@pytest.fixture(scope="module")
def lm_model(tiny_model, tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "with_lm.nemo"
    res = lm.build_stage({"model": tiny_model, "out": str(out), "order": 3, "alpha": 0.5, "beam_size": 2,
                          "texts": ["include/clinasr/data/general_en.txt.gz", str(tiny_dataset / "train_manifest.jsonl")]})
    return out, res


def test_the_lm_travels_inside_the_nemo_and_the_transcriber_decodes_with_it(lm_model, tiny_model, wav, monkeypatch):
    from clinasr.inference import Transcriber

    out, res = lm_model
    spec = lm.embedded(out)
    assert spec == res["spec"] and spec["order"] == 3 and spec["strategy"] == "malsd_batch"
    assert [t["path"] for t in spec["texts"]] == ["general_en.txt.gz", "train_manifest.jsonl"]
    # the tiny fine-tune had its own LM already: the shipped base's, rebuilt by training with its clinical sentences
    inherited = lm.embedded(tiny_model)
    assert [t["path"] for t in inherited["texts"]] == ["general_en_v2.txt.gz", "lm_text.txt"] and inherited["order"] == 4
    x = sf.read(wav, dtype="float32")[0]
    t = Transcriber(out, device="cpu")
    assert t.decoding == {"strategy": "malsd_batch", "beam_size": 2, "ngram_lm_alpha": 0.5, "order": 3,
                          "phantom_guard": {"min_similarity": 0.5}}
    assert type(t.offline_decoding.decoding).__name__ != type(t.model.decoding.decoding).__name__
    # NeMo's CUDA-graph beam search died on an H200 (illegal memory access): the beam decoder never uses it
    assert t.offline_decoding.decoding.decoding_computer.allow_cuda_graphs is False
    fused = t.transcribe([x])[0]["text"]
    assert fused.strip()
    st = t.new_stream()                                  # streaming keeps the label-looping greedy decoder
    st.feed(x)
    streamed = ""
    while st.ready(True):
        streamed += t.stream_step([(st, True)])[0]
    assert streamed.strip()
    monkeypatch.setenv("CLINASR_DECODING", "greedy")
    g = Transcriber(out, device="cpu")
    assert g.decoding == {"strategy": "greedy_batch"}
    assert g.transcribe([x])[0]["text"] == Transcriber(tiny_model, device="cpu").transcribe([x])[0]["text"]
    monkeypatch.setenv("CLINASR_DECODING", "beamy")
    with pytest.raises(Exception, match="CLINASR_DECODING"):
        Transcriber(out, device="cpu")


def test_the_phantom_guard_keeps_each_clips_fused_or_greedy_transcript(lm_model, tiny_model, tiny_dataset, tmp_path):
    import json

    from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis

    from clinasr.inference import Transcriber

    out, res = lm_model
    assert res["spec"]["phantom_guard"] == {"min_similarity": 0.5}
    off = tmp_path / "guard_off.nemo"
    r_off = lm.build_stage({"model": tiny_model, "out": str(off), "order": 3, "alpha": 0.5, "beam_size": 2,
                            "phantom_guard": 0, "texts": ["include/clinasr/data/general_en.txt.gz",
                                                          str(tiny_dataset / "train_manifest.jsonl")]})
    assert r_off["spec"]["phantom_guard"] is False
    rows = [json.loads(r) for r in (tiny_dataset / "val_manifest.jsonl").read_text().splitlines()][:6]
    clips = [sf.read(tiny_dataset / r["audio_filepath"], dtype="float32")[0] for r in rows]
    guarded, fused_only, greedy = Transcriber(out, device="cpu"), Transcriber(off, device="cpu"), \
        Transcriber(tiny_model, device="cpu")
    assert guarded.guard == 0.5 and fused_only.guard is None and "phantom_guard" not in fused_only.decoding
    for x in clips:
        got = guarded.transcribe([x])[0]["text"]
        assert got in (fused_only.transcribe([x])[0]["text"], greedy.transcribe([x])[0]["text"])
    assert guarded.guard_stats["chunks"] == len(clips) and fused_only.guard_stats["chunks"] == 0
    # the choice itself, on NeMo's own hypotheses: an invented drug falls back to the greedy reading, text and timings
    f = [Hypothesis(score=0.0, y_sequence=[1, 2], text="we ordered fentanyl"),
         Hypothesis(score=0.0, y_sequence=[3], text="no history of warfarin")]
    gr = [Hypothesis(score=0.0, y_sequence=[4], text="we ordered pizza"),
          Hypothesis(score=0.0, y_sequence=[5], text="no history of war farin")]
    before = dict(guarded.guard_stats)
    assert guarded._guarded(f, gr) == [gr[0], f[1]]
    assert guarded.guard_stats == {"chunks": before["chunks"] + 2, "vetoed": before["vetoed"] + 1}


def test_the_guards_counts_reach_the_evaluation_report_and_the_services_metrics(lm_model, tiny_dataset, tmp_path,
                                                                              monkeypatch):
    """Every chunk the guard checked, and every veto, per evaluation set (metrics.json, the leaderboard) and per served
    model version (Prometheus counters); a greedy model reports none."""
    import threading
    import time

    from fastapi.testclient import TestClient

    from clinasr import evaluate, gate
    from clinasr.inference import Transcriber
    from clinasr.serving import Loaded, Metrics, ServeConfig, create_app

    out, _ = lm_model
    t = Transcriber(out, device="cpu")
    manifest = tiny_dataset / "val_manifest.jsonl"
    n = len(manifest.read_text().splitlines())
    res = evaluate.evaluate_set(t, "val", manifest, tmp_path / "eval", progress=False)
    assert res["phantom_guard"] == {"chunks": res["rows"]["scored"], "vetoed": t.guard_stats["vetoed"]}
    assert res["rows"]["scored"] == n
    assert json.loads((tmp_path / "eval" / "val" / "metrics.json").read_text())["phantom_guard"] == res["phantom_guard"]
    board = gate.leaderboard_text(gate.leaderboards({"model": "cand", "sets": {"val": res}}, None, None)["val"])
    assert f"(guard vetoed {t.guard_stats['vetoed']} of {n} chunks)" in board
    with monkeypatch.context() as mp:
        mp.setenv("CLINASR_DECODING", "greedy")
        greedy = evaluate.evaluate_set(Transcriber(out, device="cpu"), "val", manifest, tmp_path / "eval_greedy",
                                       progress=False)
    assert "phantom_guard" not in greedy
    # transcripts reused from the cache keep the guard's counts and the decoding they were made with
    args = {"model": str(out), "sets": [{"name": "val", "manifest": str(manifest)}], "progress": False,
            "transcript_cache": str(tmp_path / "cache")}
    made = evaluate.evaluate({**args, "output_dir": str(tmp_path / "e1")})
    again = evaluate.evaluate({**args, "output_dir": str(tmp_path / "e2")})
    assert again["sets"]["val"]["transcripts"]["cached"] and not made["sets"]["val"]["transcripts"]["cached"]
    assert again["sets"]["val"]["phantom_guard"] == made["sets"]["val"]["phantom_guard"] == res["phantom_guard"]
    assert again["decoding"] == made["decoding"] == t.decoding and t.decoding["strategy"] == "malsd_batch"

    m = Metrics()
    m.count_guard("v1", {"chunks": 2, "vetoed": 1}, {"chunks": 5, "vetoed": 3})
    m.count_guard("v1", {"chunks": 5, "vetoed": 3}, {"chunks": 5, "vetoed": 3})    # a greedy batch: nothing
    assert m.guard_chunks.labels("v1")._value.get() == 3 and m.guard_vetoes.labels("v1")._value.get() == 2

    app = create_app(ServeConfig(work_dir=str(tmp_path / "work"), max_wait_ms=1, record_traffic=False))
    served = Transcriber(out, device="cpu")
    app.state.holder.current = Loaded(served, str(out), "lm.nemo", "lm", time.time())
    wavs = [tiny_dataset / json.loads(r)["audio_filepath"] for r in manifest.read_text().splitlines()[:3]]
    with TestClient(app) as tc:
        for w in wavs:
            assert tc.post("/v1/audio/transcriptions", files={"file": w.open("rb")}, data={"model": "m"}).status_code == 200
        text = tc.get("/metrics").text
    assert f'clinasr_phantom_guard_chunks_total{{version="lm.nemo"}} {float(len(wavs))}' in text
    assert f'clinasr_phantom_guard_vetoes_total{{version="lm.nemo"}} {float(served.guard_stats["vetoed"])}' in text


def _without(nemo, member, dst):
    """A copy of ``nemo`` without one member."""
    with tarfile.open(nemo) as t_in, tarfile.open(dst, "w:") as t_out:
        for info in t_in.getmembers():
            if info.name != member:
                t_out.addfile(info, t_in.extractfile(info) if info.isfile() else None)
    return dst


def test_a_model_that_names_an_lm_it_lacks_fails_clearly(lm_model, tmp_path):
    from clinasr.inference import InferenceError, Transcriber

    out, _ = lm_model
    broken = _without(out, lm.LM_MEMBER, tmp_path / "broken.nemo")
    with pytest.raises(InferenceError, match="clinasr_lm.arpa.gz"):
        Transcriber(broken, device="cpu")


def _fine_tune(base, dataset, out):
    from clinasr.training.train import train

    logs = []
    r = train({"dataset": str(dataset), "output_dir": str(out), "mlflow": {"enabled": False},
               "base": {"nemo": str(base)}, "model_overrides": "configs/model/finetune_small.yaml",
               "trainer_overrides": {"max_steps": 1, "val_check_interval": 1, "checkpoint_every_n_steps": 1,
                                     "batch_size": 4}}, log=logs.append)
    return r, logs


def test_a_fine_tune_gets_its_base_models_lm_rebuilt_with_its_own_transcripts(lm_model, tiny_dataset, tmp_path):
    out, res = lm_model
    r, logs = _fine_tune(out, tiny_dataset, tmp_path / "ft")
    spec = lm.embedded(r["nemo_path"])
    assert spec, [m for m in logs if "lm" in m.lower()]
    assert {k: spec[k] for k in ("order", "strategy", "beam_size", "ngram_lm_alpha", "phantom_guard")} == \
        {k: res["spec"][k] for k in ("order", "strategy", "beam_size", "ngram_lm_alpha", "phantom_guard")}
    # the base's shipped text again, and the fine-tune's training manifest (its clinical rows and the replay)
    assert spec["texts"][:2] == res["spec"]["texts"]
    # the fine-tune's own clinical sentences, once each (not its replay rows, not its repeats)
    own = [json.loads(line)["text"] for line in (tiny_dataset / "train_manifest.jsonl").read_text().splitlines()]
    assert spec["texts"][2]["path"] == "lm_text.txt" and spec["texts"][2]["sentences"] == len(own)
    assert spec["sentences"] == res["spec"]["sentences"] + spec["texts"][2]["sentences"]
    assert any("LM rebuilt" in m for m in logs)


def test_a_fine_tune_of_a_model_whose_lm_lacks_its_text_decodes_greedily_and_says_so(lm_model, tiny_dataset, tmp_path):
    out, _ = lm_model
    base = _without(out, lm.TEXT_MEMBER, tmp_path / "no_text.nemo")
    r, logs = _fine_tune(base, tiny_dataset, tmp_path / "ft")
    assert lm.embedded(r["nemo_path"]) is None
    assert any("without its sentences" in m and "decodes greedily" in m for m in logs)


def test_an_experiments_fine_tune_scored_in_memory_decodes_as_its_saved_nemo(lm_model, tiny_dataset, tmp_path,
                                                                              monkeypatch):
    """The bench scores a fine-tune in the process that trained it, beside a base scored from its file: both must
    decode alike (the base and its fine-tunes carry an LM since 2026-12-03; before this, the fine-tune in memory was
    decoded greedily against a base decoded with its LM)."""
    from clinasr import experiment
    from clinasr.training.train import train

    out, _ = lm_model
    manifest = tiny_dataset / "val_manifest.jsonl"
    seen = {}

    def on_trained(model):
        seen["saved"] = model._clinasr_saved_nemo
        seen["memory"] = experiment.score(model.eval(), manifest, tmp_path / "memory", "x", lm_from=seen["saved"])
        seen["memory_no_lm"] = experiment.score(model.eval(), manifest, tmp_path / "no_lm", "x")

    train({"dataset": str(tiny_dataset), "output_dir": str(tmp_path / "ft"), "mlflow": {"enabled": False},
           "base": {"nemo": str(out)}, "model_overrides": "configs/model/finetune_small.yaml",
           "trainer_overrides": {"max_steps": 1, "val_check_interval": 1, "checkpoint_every_n_steps": 1,
                                 "batch_size": 4}}, log=lambda m: None, on_trained=on_trained)
    assert lm.embedded(seen["saved"]) is not None
    from_file = experiment.score(seen["saved"], manifest, tmp_path / "file", "x")

    def hyps(res):
        return [json.loads(line)["hypothesis"] for line in open(res["hypotheses"])]

    assert "phantom_guard" in seen["memory"] and "phantom_guard" in from_file   # decoded with the LM, under the guard
    assert hyps(seen["memory"]) == hyps(from_file)
    assert "phantom_guard" not in seen["memory_no_lm"]                          # no .nemo named: greedy
    monkeypatch.setenv("CLINASR_DECODING", "model")   # restored after the test; the bench's --decoding greedy:
    experiment.set_decoding(None)
    assert experiment.decoding() == "model"
    experiment.set_decoding("greedy")
    assert experiment.decoding() == "greedy"
    greedy = experiment.score(seen["saved"], manifest, tmp_path / "greedy", "x")
    assert "phantom_guard" not in greedy and hyps(greedy) == hyps(seen["memory_no_lm"])


def test_a_model_resaved_by_nemo_gets_its_lm_back(lm_model, tmp_path):
    """NeMo's save_to writes only what NeMo knows: bench/resave_fp32.py (the GPU scripts' first step) lost the
    shipped base's LM until copy_lm put it back; a plain source copies nothing."""
    import subprocess
    import sys

    out, res = lm_model
    copy = tmp_path / "fp32.nemo"
    subprocess.run([sys.executable, "bench/resave_fp32.py", str(out), str(copy)], check=True, capture_output=True)
    assert lm.embedded(copy) == res["spec"]
    assert lm._members(copy, lm.OURS)[0] == lm._members(out, lm.OURS)[0]          # the LM and its sentences too
    plain = _without(_without(_without(copy, lm.LM_MEMBER, tmp_path / "a.nemo"), lm.DECODING_MEMBER,
                              tmp_path / "b.nemo"), lm.TEXT_MEMBER, tmp_path / "plain.nemo")
    assert lm.embedded(plain) is None and lm.copy_lm(plain, copy) is None and lm.embedded(copy) == res["spec"]
    off = lm.copy_lm(out, plain, tmp_path / "off.nemo", phantom_guard=False)   # a copy that decodes otherwise
    assert lm.embedded(off) == {**res["spec"], "phantom_guard": False}
    with pytest.raises(lm.LMError, match="lacks"):
        lm.copy_lm(_without(out, lm.TEXT_MEMBER, tmp_path / "no_text.nemo"), plain)


def test_the_gpu_beam_check_decodes_with_the_lm_and_reports_the_graphs_off(lm_model, tiny_dataset, tmp_path):
    """bench/gpu_beam_check.py, the device check of the beam decoder (on the CPU here): it decodes clips beam + LM
    and greedily and reports what it decoded with."""
    import subprocess
    import sys

    out, res = lm_model
    report = tmp_path / "check.json"
    p = subprocess.run([sys.executable, "bench/gpu_beam_check.py", str(out), str(tiny_dataset), "--n", "3",
                        "--device", "cpu", "--out", str(report)], capture_output=True, text=True)
    assert p.returncode in (0, 1), p.stderr[-2000:]   # 1: every beam transcript empty (a tiny model may say nothing)
    r = json.loads(report.read_text())
    assert r["clips"] == 3 and r["allow_cuda_graphs"] is False
    assert r["decoding"]["strategy"] == "malsd_batch" and r["decoding"]["beam_size"] == res["spec"]["beam_size"]
    assert 0 <= r["differ"] <= 3 and (p.returncode == 1) == (r["empty_beam"] == 3)
    empty = subprocess.run([sys.executable, "bench/gpu_beam_check.py", str(out), str(tmp_path / "none"),
                            "--device", "cpu"], capture_output=True, text=True)
    assert empty.returncode == 2 and "no .wav" in empty.stderr
