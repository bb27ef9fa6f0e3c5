"""Distillation from the base on the replay rows (trainer option distill_from_base, clinasr.training.distill)."""

from __future__ import annotations

import json

import pytest

from clinasr.training import distill
from clinasr.training.data import _dataset_cfg
from clinasr.training.train import TrainingError, train

pytestmark = pytest.mark.ml


def test_lattice_kl_is_the_kl_over_valid_cells_per_label_position():
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    B, T, U1, V, D = 3, 5, 4, 6, 3
    t, s = torch.randn(B, T, U1, V + D, generator=g), torch.randn(B, T, U1, V + D, generator=g)
    enc, tgt = torch.tensor([5, 3, 1]), torch.tensor([3, 1, 0])
    got = distill.lattice_kl(t, s, enc, tgt, D)
    for b in range(B):   # by hand: cell by cell
        total = 0.0
        for i in range(int(enc[b])):
            for u in range(int(tgt[b]) + 1):
                for part in (slice(0, V), slice(V, V + D)):
                    pt, ps = F.log_softmax(t[b, i, u, part], -1), F.log_softmax(s[b, i, u, part], -1)
                    total += float((pt.exp() * (pt - ps)).sum())
        assert got[b].item() == pytest.approx(total / (int(tgt[b]) + 1), rel=1e-5)
    assert torch.allclose(distill.lattice_kl(t, t, enc, tgt, D), torch.zeros(B), atol=1e-6)   # same model: nothing
    s2 = s.clone()
    s2[2, 1:] = 100.0          # cells past a row's lengths do not count
    s2[1, :, 2:] = -5.0
    assert torch.allclose(distill.lattice_kl(t, s2, enc, tgt, D), got)
    no_dur = distill.lattice_kl(t[..., :V], s[..., :V], enc, tgt, 0)   # plain RNN-T: tokens only
    assert (no_dur < got).all()


def test_only_training_batches_of_a_distilling_run_carry_sample_ids():
    on = {"batch_size": 4, "distill_from_base": 1.0}
    assert _dataset_cfg("m.jsonl", on, True)["return_sample_id"] is True
    assert "return_sample_id" not in _dataset_cfg("m.jsonl", on, False)                    # validation
    assert "return_sample_id" not in _dataset_cfg("m.jsonl", {"batch_size": 4}, True)       # off by default


def test_bad_settings_stop_before_training(tmp_path):
    rows = tmp_path / "train.jsonl"
    rows.write_text(json.dumps({"audio_filepath": "/a.wav", "domain": "clinical"}) + "\n")
    assert distill.distill_from_base(object(), {}, rows) == 0                               # off: the model untouched
    with pytest.raises(TrainingError, match="has none"):
        distill.distill_from_base(object(), {"distill_from_base": 1.0}, rows)
    with pytest.raises(TrainingError, match="non-negative"):
        distill.distill_from_base(object(), {"distill_from_base": -1}, rows)
    with pytest.raises(TrainingError, match="lhotse"):
        distill.distill_from_base(object(), {"distill_from_base": 1.0, "batch_duration": 60}, rows)
    with pytest.raises(TrainingError, match="fused joint"):
        distill.distill_from_base(object(), {"distill_from_base": 1.0, "joint_fused_batch_size": 16}, rows)


def test_a_fine_tune_distils_on_its_replay_rows_only(tiny_dataset, replay_set, tmp_path, monkeypatch):
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    from clinasr.experiment import FASTCONFORMER_BASE as BASE_MODEL

    seen = []
    real = distill.lattice_kl

    def spy(teacher_logits, student_logits, enc_lens, target_lens, n_durations):
        out = real(teacher_logits, student_logits, enc_lens, target_lens, n_durations)
        seen.append({"rows": teacher_logits.shape[0], "n_durations": n_durations, "kl": out.detach()})
        return out

    monkeypatch.setattr(distill, "lattice_kl", spy)
    logs = []
    base = EncDecRNNTBPEModel.restore_from(str(BASE_MODEL), map_location="cpu").state_dict()
    r = train({"dataset": str(tiny_dataset), "output_dir": str(tmp_path / "run"), "mlflow": {"enabled": False},
               "base": {"nemo": str(BASE_MODEL)}, "replay_source": str(replay_set),
               "trainer": "configs/trainer/cpu_finetune.yaml",
               "trainer_overrides": {"max_steps": 4, "val_check_interval": 4, "checkpoint_every_n_steps": 4,
                                     "batch_size": 4, "replay": {"ratio": 1.0}, "distill_from_base": 1.0,
                                     "keep_batch_norm_statistics": True}},
              log=logs.append)
    general = sum(json.loads(x)["domain"] == "general"
                  for x in (tmp_path / "run" / "data" / "train_manifest.jsonl").read_text().splitlines())
    assert any(f"distilled from the base on {general} general-English rows" in m for m in logs)
    assert seen and all(0 < s["rows"] <= 4 and s["n_durations"] == 5 for s in seen)
    assert any(s["rows"] < 4 for s in seen)                       # the clinical rows of a batch are not distilled
    assert all(bool((s["kl"] >= 0).all()) for s in seen) and r["metrics"]["distill_kl"] > 0
    # the base's copy is no part of the model: the saved .nemo has the base's parameters and buffers, no more
    tuned_model = EncDecRNNTBPEModel.restore_from(r["nemo_path"], map_location="cpu")
    tuned = tuned_model.state_dict()
    assert set(tuned) == set(base)
    # the default config's step levers ran (cpu_finetune.yaml) and the saved model keeps the base's front-end setting
    assert r["levers"] == {"fused_adam": True, "subsampling_conv_chunking_factor": 2}
    assert tuned_model.cfg.encoder.get("subsampling_conv_chunking_factor", 1) == 1
    assert tuned_model.encoder.pre_encode.subsampling_conv_chunking_factor == 1
    # keep_batch_norm_statistics: every encoder batch norm kept the base's statistics while its scale moved
    import torch

    stats = [k for k in base if k.startswith("encoder.layers.") and k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(tuned[k], base[k]) for k in stats)
    assert any("batch-norm layers keep the base's running statistics" in m for m in logs)
    scales = [k.replace("running_mean", "weight") for k in stats if k.endswith("running_mean") and ".layers.5." in k]
    assert scales and any(not torch.equal(tuned[k], base[k]) for k in scales)


def test_distillation_needs_a_base_whose_outputs_it_can_match(tiny_dataset, replay_set, tmp_path):
    with pytest.raises(TrainingError, match="needs a base"):
        train({"dataset": str(tiny_dataset), "output_dir": str(tmp_path / "run"), "mlflow": {"enabled": False},
               "base": {"config": "configs/model/fastconformer_tdt_tiny.yaml"}, "replay_source": str(replay_set),
               "trainer": "configs/trainer/cpu_demo.yaml",
               "trainer_overrides": {"max_steps": 1, "replay": {"set": "general_replay", "ratio": 1.0},
                                     "distill_from_base": 1.0}})
