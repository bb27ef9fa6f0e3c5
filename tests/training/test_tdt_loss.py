"""The CPU TDT loss against NeMo's reference implementations (values and gradients)."""

import pytest
import torch

from clinasr.training.tdt_loss import TDTLossCPU, rnnt_log_likelihood, tdt_log_likelihood

pytestmark = pytest.mark.ml


@pytest.fixture
def no_cuda(monkeypatch):
    # NeMo's reference TDTLossPytorch hard-codes .cuda(); on a CPU machine make that the identity.
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)


def _inputs(seed, B=3, T=7, U=4, V=6, D=5):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(B, T, U + 1, V + 1 + D, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, U), generator=g)
    act_lens = torch.tensor([T, T - 2, T - 1])[:B]
    label_lens = torch.tensor([U, U - 1, 2])[:B]
    return acts, labels, act_lens, label_lens, V


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("durations", [[0, 1, 2, 3, 4], [0, 1, 2], [0, 2, 4]])
@pytest.mark.parametrize("sigma", [0.0, 0.05])
def test_matches_nemo_reference_values_and_gradients(no_cuda, seed, durations, sigma):
    from nemo.collections.asr.losses.rnnt_pytorch import TDTLossPytorch

    acts, labels, act_lens, label_lens, V = _inputs(seed, T=8, D=len(durations))
    if 1 not in durations:  # only even lengths can be covered by durations {0, 2, 4}
        act_lens = torch.tensor([8, 6, 8])
    a1 = acts.clone().requires_grad_(True)
    a2 = acts.clone().requires_grad_(True)
    ours = TDTLossCPU(blank=V, durations=durations, sigma=sigma, reduction=None)
    ref = TDTLossPytorch(blank=V, durations=durations, reduction=None, sigma=sigma)
    l1 = ours(a1, labels, act_lens, label_lens)
    # the reference builds its tables in float32
    l2 = ref(acts=a2, labels=labels, act_lens=act_lens, label_lens=label_lens)
    assert torch.allclose(l1.float(), l2.float(), rtol=1e-4, atol=1e-3), (l1, l2)
    l1.sum().backward()
    l2.sum().backward()
    assert torch.allclose(a1.grad.float(), a2.grad.float(), atol=1e-4)


def test_rnnt_part_matches_nemo_rnnt_reference():
    from nemo.collections.asr.losses.rnnt_pytorch import RNNTLossPytorch

    acts, labels, act_lens, label_lens, V = _inputs(5, D=0)
    label_acts = acts[..., : V + 1]
    ours = -rnnt_log_likelihood(label_acts, labels, act_lens, label_lens, blank=V)
    ref = RNNTLossPytorch(blank=V, reduction="none")(acts=torch.log_softmax(label_acts, -1), labels=labels,
                                                   act_lens=act_lens, label_lens=label_lens)
    assert torch.allclose(ours, ref.to(ours.dtype), rtol=1e-5, atol=1e-4)


def test_omega_mixes_rnnt_and_reductions():
    acts, labels, act_lens, label_lens, V = _inputs(3)
    d = [0, 1, 2, 3, 4]
    tdt = -tdt_log_likelihood(acts, labels, act_lens, label_lens, V, d)
    rnnt = -rnnt_log_likelihood(acts[..., :-5], labels, act_lens, label_lens, V)
    mixed = TDTLossCPU(V, d, omega=0.25, reduction=None)(acts, labels, act_lens, label_lens)
    assert torch.allclose(mixed, (0.75 * tdt + 0.25 * rnnt).float(), atol=1e-4)
    assert torch.isclose(TDTLossCPU(V, d, reduction="mean_batch")(acts, labels, act_lens, label_lens), tdt.float().mean(), atol=1e-4)
    assert torch.isfinite(mixed).all() and (mixed > 0).all()


def test_unreachable_alignment_is_a_huge_loss_not_nan():
    acts, labels, act_lens, label_lens, V = _inputs(4, T=7, D=3)
    loss = TDTLossCPU(V, [0, 2, 4], reduction=None)(acts, labels, torch.tensor([7, 5, 7]), label_lens)
    assert torch.isfinite(loss).all() and (loss > 1000).all()


def test_bad_durations_are_rejected():
    with pytest.raises(ValueError, match="start at 0"):
        TDTLossCPU(blank=3, durations=[1, 2])


def test_long_inputs_are_fast_enough_to_train_on_cpu():
    """Not a timing assertion: the vectorised loss must handle a realistic batch at all (B=8, T=120, U=40)."""
    acts = torch.randn(8, 120, 41, 129 + 5, requires_grad=True)
    labels = torch.randint(0, 128, (8, 40))
    loss = TDTLossCPU(128, [0, 1, 2, 3, 4])(acts, labels, torch.full((8,), 120), torch.full((8,), 40))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(acts.grad).all()


def test_install_swaps_the_loss_off_gpu_and_on_a_gpu_only_when_asked():
    from types import SimpleNamespace

    from clinasr.training.tdt_loss import install_cpu_tdt_loss

    def model():
        cfg = {"loss": {"loss_name": "tdt", "tdt_kwargs": {"durations": [0, 1, 2], "sigma": 0.02, "omega": 0.1}}}
        return SimpleNamespace(cfg=cfg, loss=SimpleNamespace(_loss="nemo", _blank=7))

    m = model()
    assert install_cpu_tdt_loss(m, "cuda") is None and m.loss._loss == "nemo"          # NeMo's kernel on a GPU
    assert "pure-torch TDT loss on the GPU" in install_cpu_tdt_loss(m, "cuda", prefer_torch=True)
    assert isinstance(m.loss._loss, TDTLossCPU)
    m = model()
    assert "no CUDA device" in install_cpu_tdt_loss(m, "cpu") and isinstance(m.loss._loss, TDTLossCPU)
    m = model()
    m.cfg["loss"]["loss_name"] = "default"                                             # an RNN-T model: untouched
    assert install_cpu_tdt_loss(m, "cpu") is None and m.loss._loss == "nemo"
