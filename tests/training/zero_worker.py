"""A DeepSpeed ZeRO-2 process on CPU (gloo) for tests/training/test_checkpoints.py, started under torchrun.

    toy-train OUT_DIR STEPS ELASTIC        train the toy model STEPS steps and save a ZeRO-2 checkpoint directory
                                           in Lightning's layout (tag "checkpoint", a "latest" file, client state)
    toy-load FULL_FILE STEP0 RESULT        load a full checkpoint into a fresh ZeRO-2 engine (this world size), run
                                           step STEP0 + 1, and write the weights after it (rank 0) to RESULT
    mirror LIGHTNING_CKPT NAMES_JSON OUT   the parameters of a Lightning checkpoint as a ZeRO-2 directory (weights
                                           and Adam state loaded by clinasr's load_full_into_zero), no step

Every rank's batch at step s is ``batch(s, rank, world)``: the ranks split one global batch, so any world size
trains on the same data as one process on the whole batch (the reference the tests compare with).
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn


class Toy(nn.Module):
    """Two optimizer groups of odd sizes (42 and 25 values: ZeRO pads both), a frozen layer and a buffer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(5, 7)
        self.frozen = nn.Linear(7, 7)
        self.frozen.requires_grad_(False)
        self.b = nn.Linear(7, 3)
        self.scale = nn.Parameter(torch.ones(1))
        self.register_buffer("count", torch.tensor([3.0]))

    def forward(self, x):
        return self.scale * self.b(torch.tanh(self.frozen(torch.tanh(self.a(x))))) + self.count

    def setup_optimizer_param_groups(self):     # as NeMo's ModelPT: the groups the optimizer was built from
        self._optimizer_param_groups = self.param_groups()

    def param_groups(self):
        return [{"params": list(self.a.parameters()), "lr": 1e-2},
                {"params": [*self.b.parameters(), self.scale], "lr": 5e-3}]


def optimizer(groups):
    return torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.98), weight_decay=1e-3, foreach=False)


def batch(step: int, rank: int, world: int) -> torch.Tensor:
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(step))
    return x.chunk(world)[rank]


CLIP = 1.0    # as configs/deepspeed/zero2.json; the reference clips the same (global norm of the trainable gradients)


def loss_of(model, x) -> torch.Tensor:
    return model(x).pow(2).mean()


def engine(model, groups, elastic: bool):
    import deepspeed

    cfg = {"train_micro_batch_size_per_gpu": 1, "steps_per_print": 10**9,
           "gradient_clipping": 1.0, "zero_optimization": {"stage": 2, "elastic_checkpoint": elastic}}
    eng, *_ = deepspeed.initialize(model=model, optimizer=optimizer(groups), config=cfg)
    return eng


def main() -> None:
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    mode = sys.argv[1]
    if mode == "toy-train":
        out, steps, elastic = sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
        model = Toy()
        eng = engine(model, model.param_groups(), elastic)
        for s in range(1, steps + 1):
            loss = loss_of(eng, batch(s, rank, world))
            eng.backward(loss)
            eng.step()
        eng.save_checkpoint(out, tag="checkpoint", client_state={"global_step": steps, "epoch": 0,
                                                                  "lr_schedulers": [], "loops": {"marker": 1}})
    elif mode == "toy-load":
        from clinasr.training.checkpoints import load_full_into_zero

        full, step0, result = sys.argv[2], int(sys.argv[3]), sys.argv[4]
        model = Toy()
        model.setup_optimizer_param_groups()
        eng = engine(model, model._optimizer_param_groups, False)
        n = load_full_into_zero(eng.optimizer, model, torch.load(full, weights_only=False))
        loss = loss_of(eng, batch(step0 + 1, rank, world))
        eng.backward(loss)
        eng.step()
        if rank == 0:
            torch.save({"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
                        "restored": n}, result)
    elif mode == "mirror":
        from clinasr.training.checkpoints import load_full_into_zero

        ckpt = torch.load(sys.argv[2], map_location="cpu", weights_only=False)
        names = set(json.loads(open(sys.argv[3]).read()))
        model = nn.Module()
        for key, value in ckpt["state_dict"].items():      # the checkpoint's module tree, rebuilt generically
            *path, leaf = key.split(".")
            m = model
            for part in path:
                if not hasattr(m, part):
                    m.add_module(part, nn.Module())
                m = getattr(m, part)
            if key in names:
                m.register_parameter(leaf, nn.Parameter(value.clone().float()))
            else:
                m.register_buffer(leaf, value.clone())
        groups = [{"params": [p for n, p in model.named_parameters() if n in names]}]
        model._optimizer_param_groups = groups
        eng = engine(model, groups, False)
        named = {"step": None, "state": {}}
        sd = ckpt["optimizer_states"][0]
        # the NeMo model's optimizer order: its parameters in named_parameters order (one group)
        order = json.loads(open(sys.argv[3]).read())
        for i, n in zip([i for g in sd["param_groups"] for i in g["params"]], order):
            if i in sd["state"]:
                named["state"][n] = {k: v for k, v in sd["state"][i].items() if k != "step"}
                named["step"] = float(sd["state"][i]["step"])
        full = {**ckpt, "optimizer_states": [], "clinasr_full_optimizer": named}
        load_full_into_zero(eng.optimizer, model, full)
        client = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer_states")}
        eng.save_checkpoint(sys.argv[4], tag="checkpoint", client_state=client)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
