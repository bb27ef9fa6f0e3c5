"""clinasr.fusion_cpu: the cached LM rows in NeMo's beam search with n-gram fusion change no transcript, hypothesis or
score, and they are used."""

import pytest
import soundfile as sf

from clinasr import fusion_cpu, lm

pytestmark = pytest.mark.ml


def test_the_advance_cache_returns_what_the_lm_computes(tmp_path):
    import torch
    from nemo.collections.asr.parts.submodules.ngram_lm.ngram_lm_batched import NGramGPULanguageModel

    corpus = [[1, 2, 3], [1, 2, 4, 5], [2, 3, 5], [4, 5, 1, 2, 3], [3, 3, 2], [5], [1, 2, 3, 4]]
    arpa = lm.write_arpa(lm.kneser_ney(corpus, order=3), tmp_path / "lm.arpa")
    nemo_lm = NGramGPULanguageModel.from_arpa(arpa, vocab_size=6, normalize_unk=False, use_triton=False)
    with torch.inference_mode():
        _, reachable = nemo_lm._advance_pytorch(nemo_lm.get_init_states(1, bos=True))
        states = torch.unique(reachable[reachable >= 0])
        cache = fusion_cpu.AdvanceCache(nemo_lm._advance_pytorch, capacity=len(states) + 2)
        gen = torch.Generator().manual_seed(0)
        for _ in range(30):           # repeated states, a batch with duplicates, and a capacity that overflows
            batch = states[torch.randint(len(states), (4,), generator=gen)]
            want_s, want_n = nemo_lm._advance_pytorch(batch)
            got_s, got_n = cache(batch)
            assert torch.equal(got_s, want_s) and torch.equal(got_n, want_n)
    assert cache.hits > 0 and cache.misses > 0 and len(cache.rows) <= cache.capacity


def test_beam_search_with_the_lm_decodes_the_same_with_and_without_the_cache(tiny_model, tiny_dataset, tmp_path):
    import json

    from clinasr.inference import Transcriber

    out = tmp_path / "lm4.nemo"
    lm.build_stage({"model": tiny_model, "out": str(out), "order": 3, "alpha": 0.5, "beam_size": 4,
                    "texts": ["include/clinasr/data/general_en.txt.gz", str(tiny_dataset / "train_manifest.jsonl")]})
    rows = [json.loads(r) for r in (tiny_dataset / "val_manifest.jsonl").read_text().splitlines()][:6]
    clips = [sf.read(tiny_dataset / r["audio_filepath"], dtype="float32")[0] for r in rows]
    t = Transcriber(out, device="cpu")
    assert t.decoding["beam_size"] == 4 and fusion_cpu._installed
    fast = [t.transcribe([x])[0]["text"] for x in clips] + [r["text"] for r in t.transcribe(clips)]
    lms = [m for m in _fusion_models(t)]
    assert lms and all(m._clinasr_advance_cache.hits > 0 for m in lms)
    with fusion_cpu.exact_nemo():
        exact = [t.transcribe([x])[0]["text"] for x in clips] + [r["text"] for r in t.transcribe(clips)]
    assert fast == exact
    assert any(s.strip() for s in fast)
    # below the text: every hypothesis of the beam, its labels and its score, on a batch of clips of unequal length
    import numpy as np
    import torch

    computer = t.offline_decoding.decoding.decoding_computer
    n = max(len(x) for x in clips)
    audio = torch.tensor(np.stack([np.pad(x, (0, n - len(x))) for x in clips]))
    with torch.inference_mode():
        enc, enc_len = t.model.forward(input_signal=audio, input_signal_length=torch.tensor([len(x) for x in clips]))
        enc = enc.transpose(1, 2)
        fast_hyps, _ = computer(x=enc, out_len=enc_len)
        with fusion_cpu.exact_nemo():
            exact_hyps, _ = computer(x=enc, out_len=enc_len)
    assert torch.equal(fast_hyps.transcript_wb, exact_hyps.transcript_wb)
    assert torch.equal(fast_hyps.scores, exact_hyps.scores)


def _fusion_models(t):
    computer = t.offline_decoding.decoding.decoding_computer
    return [m for m in (getattr(computer, "fusion_models", None) or [])]
