"""Fine-tuning that keeps what the base knew (ML runtime, real NeMo on CPU): general-English replay mixed into
both splits, frozen early encoder layers, a lower encoder learning rate, and the weight-space merge with the
base; a fine-tune whose replay source is missing stops before training."""

import json
from pathlib import Path

import pytest

from clinasr import evalsets
from clinasr.settings import REPO_ROOT
from clinasr.training.train import TrainingError, merge_with_base, prepare_dataset, replay_spec, train

pytestmark = pytest.mark.ml
SMALL = REPO_ROOT / "tests" / "data" / "evalsets-small.yaml"


@pytest.fixture(scope="module")
def replay_set(tmp_path_factory):
    """The small config's general_replay set: general sentences in the training voices."""
    out = tmp_path_factory.mktemp("replay") / "general_replay"
    res = evalsets.build_set("general_replay", out, evalsets.load_config(SMALL), workers=2, progress=False,
                             log=lambda m: None)
    return Path(res["dir"])


def _rows(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def test_replay_mixes_general_rows_into_both_splits_at_the_ratio(tiny_dataset, replay_set, tmp_path):
    card = json.loads((replay_set / "evalset_card.json").read_text())
    assert card["role"] == "replay" and not set(card["voices"]) & evalsets.heldout_voices(evalsets.load_config(SMALL))[0]
    res = prepare_dataset(str(tiny_dataset), tmp_path / "d", 20.0, {"source": str(replay_set), "ratio": 1.0, "seed": 3})
    train_rows, val_rows = _rows(Path(res["manifests"]["train"])), _rows(Path(res["manifests"]["val"]))
    clinical = [r for r in train_rows if r["domain"] == "clinical"]
    general = [r for r in train_rows if r["domain"] == "general"]
    n_replay_train = len(_rows(replay_set / "train_manifest.jsonl"))
    assert len(general) == min(len(clinical), n_replay_train) == res["report"]["train"]["general_replay_rows"]
    assert ("general_replay_short" in res["report"]["train"]) == (n_replay_train < len(clinical))
    assert len({r["utt_id"] for r in general}) == len(general)                       # drawn without repeats
    replay_val_texts = {r["text"] for r in _rows(replay_set / "val_manifest.jsonl")}
    assert {r["text"] for r in val_rows if r["domain"] == "general"} <= replay_val_texts   # val from val only
    assert not {r["text"] for r in general} & replay_val_texts
    assert all(Path(r["audio_filepath"]).is_absolute() and Path(r["audio_filepath"]).exists() for r in train_rows)
    again = prepare_dataset(str(tiny_dataset), tmp_path / "e", 20.0, {"source": str(replay_set), "ratio": 1.0, "seed": 3})
    assert _rows(Path(again["manifests"]["train"])) == train_rows                    # deterministic: a retry is the same
    half = prepare_dataset(str(tiny_dataset), tmp_path / "f", 20.0, {"source": str(replay_set), "ratio": 0.5, "seed": 3})
    assert half["report"]["train"]["general_replay_rows"] == round(0.5 * len(clinical))
    # a ratio the replay set cannot fill is capped, and the report says so instead of mixing less in silence
    many = prepare_dataset(str(tiny_dataset), tmp_path / "g", 20.0, {"source": str(replay_set), "ratio": 1000.0, "seed": 3})
    assert many["report"]["train"]["general_replay_rows"] == n_replay_train
    assert f"{n_replay_train} general rows instead of {1000 * len(clinical)}" in many["report"]["train"]["general_replay_short"]


def test_a_missing_replay_source_stops_before_training(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("CLINASR_EVALSETS_CONFIG", str(SMALL))
    tcfg = {"replay": {"set": "general_replay", "ratio": 1.0}}
    with pytest.raises(TrainingError, match="replays 'general_replay' at 1.0:1 but the replay source is not available: "
                                            "evaluation set 'general_replay' has not been built"):
        replay_spec({}, tcfg)
    with pytest.raises(TrainingError, match="has no train_manifest.jsonl"):
        replay_spec({"replay_source": str(tmp_path)}, tcfg)
    assert replay_spec({}, {"replay": {"ratio": 0}}) is None
    logs = []
    with pytest.raises(TrainingError, match="replay source is not available"):
        train({"dataset": str(tmp_path / "nope"), "output_dir": str(tmp_path / "run"), "mlflow": {"enabled": False},
               "trainer_overrides": {"replay": {"set": "general_replay", "ratio": 1.0}}}, log=logs.append)
    assert not any("parameters" in m for m in logs)        # no model was built


def test_frozen_layers_and_prediction_network_keep_the_base_weights_and_the_encoder_learns_slower(tiny_dataset, replay_set, tmp_path,
                                                                                                  monkeypatch):
    import torch
    from nemo.collections.asr.models import EncDecRNNTBPEModel
    from nemo.core.utils import cuda_python_utils

    from clinasr import nemo_fixes

    binding = object()          # training (validation decodes on CUDA) installs the NVRTC fix around the binding
    monkeypatch.setattr(cuda_python_utils, "nvrtc", binding, raising=False)

    from clinasr.experiment import BASE_MODEL

    base = EncDecRNNTBPEModel.restore_from(str(BASE_MODEL), map_location="cpu").state_dict()
    seen = {}

    def on_trained(model):
        opt = model.trainer.optimizers[0]
        seen["groups"] = sorted(g["initial_lr"] for g in opt.param_groups)
        seen["trainable_frozen"] = [n for n, p in model.named_parameters() if p.requires_grad
                                    and (n.startswith("encoder.pre_encode") or n.startswith("encoder.layers.0."))]
        seen["trainable_decoder"] = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("decoder.")]

    logs = []
    r = train({"dataset": str(tiny_dataset), "output_dir": str(tmp_path / "run"), "mlflow": {"enabled": False},
               "base": {"nemo": str(BASE_MODEL)}, "replay_source": str(replay_set),
               "trainer": "configs/trainer/cpu_finetune.yaml",
               "trainer_overrides": {"max_steps": 4, "val_check_interval": 4, "checkpoint_every_n_steps": 4, "batch_size": 4,
                                     "replay": {"ratio": 1.0}, "freeze_encoder_layers": 2, "encoder_lr_scale": 0.1,
                                     "freeze_prediction_network": True, "merge_with_base": None}},
              log=logs.append, on_trained=on_trained)
    assert r["global_step"] == 4 and r["data"]["train"]["general_replay_rows"] > 0
    assert any("frozen: encoder front end + first 2 layers" in m for m in logs)
    assert any("frozen: the prediction network" in m for m in logs)
    assert isinstance(cuda_python_utils.nvrtc, nemo_fixes.SafeNvrtc) and cuda_python_utils.nvrtc._real is binding
    assert seen["trainable_frozen"] == [] and seen["trainable_decoder"] == []
    lo, hi = seen["groups"]
    assert lo == pytest.approx(0.1 * hi)                   # encoder group at 0.1x the decoder/joint rate
    tuned = EncDecRNNTBPEModel.restore_from(r["nemo_path"], map_location="cpu").state_dict()
    frozen = [k for k in base if k.startswith(("encoder.pre_encode.", "encoder.layers.0.", "encoder.layers.1."))]
    assert frozen and all(torch.equal(tuned[k], base[k]) for k in frozen)   # weights and batch-norm statistics
    decoder = [k for k in base if k.startswith("decoder.")]
    assert decoder and all(torch.equal(tuned[k], base[k]) for k in decoder)  # the prediction network too
    moved = [k for k in base if k.startswith("encoder.layers.5.") and torch.is_floating_point(base[k])
             and not torch.equal(tuned[k], base[k])]
    assert moved and any(not torch.equal(tuned[k], base[k]) for k in base if k.startswith("joint."))


def test_merge_with_base_interpolates_every_weight():
    import torch

    class M(torch.nn.Module):
        def __init__(self, v):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.bn = torch.nn.BatchNorm1d(2)
            with torch.no_grad():
                for p in list(self.parameters()) + [self.bn.running_mean]:
                    p.fill_(v)

    base, ft = M(1.0), M(3.0)
    assert merge_with_base(ft, base.state_dict(), {"merge_with_base": 0.25}) == 0.25
    assert torch.allclose(ft.lin.weight, torch.full((2, 3), 0.25 * 3 + 0.75 * 1))
    assert torch.allclose(ft.bn.running_mean, torch.full((2,), 1.5))
    assert ft.bn.num_batches_tracked.dtype == torch.long                 # integer buffers untouched
    assert merge_with_base(ft, base.state_dict(), {}) is None             # off by default
    with pytest.raises(TrainingError, match="needs a base model"):
        merge_with_base(ft, None, {"merge_with_base": 0.5})
