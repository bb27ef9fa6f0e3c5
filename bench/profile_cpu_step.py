"""Where a CPU fine-tuning step's time goes: the default recipe (configs/trainer/cpu_finetune.yaml) on the recipes
experiment's clinical set, timed in parts through the real training code (``clinasr.training.train.train``).

Forward hooks time the front end, each encoder layer, the prediction network, the joint, the loss (transducer loss
+ distillation, of which the base's forward is timed apart); Lightning hooks time backward, the optimiser step and
the data loader (the gap between one batch's end and the next one's start). Steps before ``--skip`` (warm-up) are
not counted. Prints a table (seconds a step, share) and writes it as JSON:

    .venv/ml/bin/python bench/profile_cpu_step.py --work /tmp/clinasr-recipes-v4 --steps 40 \\
        --out bench/out/cpu-step [--set freeze_encoder_layers=3 ...]

``--set key=value`` overrides a trainer option (YAML value), to compare variants of the recipe in the same run of
the machine; run twice and compare the ``total`` rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/clinasr-recipes-v4", help="a recipes experiment's work dir (its sets)")
    ap.add_argument("--dataset", help="a clinical dataset dir (default: <work>/clinical_train)")
    ap.add_argument("--replay", help="the replay set dir (default: <work>/evalsets/general_replay)")
    ap.add_argument("--trainer", default="configs/trainer/cpu_finetune.yaml")
    ap.add_argument("--base", default="models/clinasr-base-en-multi/model.nemo")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps not counted")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="trainer option override")
    ap.add_argument("--out", default="bench/out/cpu-step")
    a = ap.parse_args(argv)

    import torch
    import yaml
    from lightning.pytorch.callbacks import Callback

    from clinasr.training.train import train

    overrides = {"max_steps": a.steps, "val_check_interval": 10 ** 6, "checkpoint_every_n_steps": 10 ** 6,
                 "max_minutes": None}
    for kv in a.set:
        k, v = kv.split("=", 1)
        overrides[k] = yaml.safe_load(v)
    times: dict[str, float] = defaultdict(float)
    state = {"step": 0, "t_end": None}

    def counting() -> bool:   # inside a counted training step (not warm-up, not validation)
        return state["step"] >= a.skip and state.get("in_step", False)

    def timed(module, name):
        def pre(*_):
            state[name] = time.perf_counter()

        def post(*_):
            if counting() and name in state:
                times[name] += time.perf_counter() - state.pop(name)

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    class Parts(Callback):
        def on_fit_start(self, trainer, model):
            timed(model.preprocessor, "preprocessor")
            timed(model.encoder.pre_encode, "encoder front end")

            def shape(module, args, kwargs):   # padded batch size and length, to tell padding from compute
                if counting() and model.training:
                    x = kwargs.get("audio_signal", args[0] if args else None)
                    times["_rows"] += x.shape[0]
                    times["_padded_frames"] += x.shape[0] * x.shape[-1]
                    times["_frames"] += float(kwargs.get("length").sum())
            model.encoder.register_forward_pre_hook(shape, with_kwargs=True)
            for i, layer in enumerate(model.encoder.layers):
                timed(layer, f"encoder layer {i + 1}{' (frozen)' if not any(p.requires_grad for p in layer.parameters()) else ''}")
            timed(model.decoder, "prediction network")
            timed(model.joint, "joint")
            loss_fwd = model.loss.forward
            # the distillation's frozen base (clinasr.training.distill) lives in its loss wrapper's closure
            for cell in getattr(loss_fwd, "__closure__", None) or ():
                if isinstance(cell.cell_contents, torch.nn.ModuleList):
                    for m, name in zip(cell.cell_contents, ("base encoder (distillation)", "base prediction net "
                                                            "(distillation)", "base joint (distillation)")):
                        timed(m, name)

            def loss(*args, **kw):   # the transducer loss (+ the distillation when installed), timed as a whole
                t = time.perf_counter()
                try:
                    return loss_fwd(*args, **kw)
                finally:
                    if counting():
                        times["loss (+ distillation)"] += time.perf_counter() - t
            model.loss.forward = loss

        def on_train_batch_start(self, trainer, model, batch, batch_idx):
            now = time.perf_counter()
            if state["t_end"] is not None and state["step"] >= a.skip:
                times["data loader + Lightning between steps"] += now - state["t_end"]
            state["t_start"] = now
            state["in_step"] = True

        def on_before_backward(self, trainer, model, loss):
            state["t_bwd"] = time.perf_counter()

        def on_after_backward(self, trainer, model):
            if counting():
                times["backward"] += time.perf_counter() - state["t_bwd"]

        def on_before_optimizer_step(self, trainer, model, optimizer):
            state["t_opt"] = time.perf_counter()

        def on_train_batch_end(self, trainer, model, outputs, batch, batch_idx):
            now = time.perf_counter()
            if counting():
                times["optimizer step + clip (and after)"] += now - state["t_opt"]
                times["total"] += now - state["t_start"]
            state["t_end"] = now
            state["step"] += 1
            state["in_step"] = False

    work = Path(a.work)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = train({"dataset": a.dataset or str(work / "clinical_train"), "base": {"nemo": a.base}, "trainer": a.trainer,
                 "trainer_overrides": overrides, "output_dir": str(out / "train"), "resume": False,
                 "replay_source": a.replay or str(work / "evalsets" / "general_replay"), "mlflow": {"enabled": False}},
                callbacks=[Parts()])
    n = max(1, a.steps - a.skip)
    total = times["total"]
    # the data loader's share is measured between steps, outside "total"
    n_rows = times.pop("_rows")
    padding = {"rows_per_step": n_rows / n, "padded_frames_per_row": round(times.pop("_padded_frames") / n_rows, 1),
               "frames_per_row": round(times.pop("_frames") / n_rows, 1)}
    rows = {k: {"seconds_per_step": round(v / n, 4),
                "share_of_step": round(v / total, 3) if total else None} for k, v in times.items()}
    report = {"trainer": a.trainer, "overrides": overrides, "steps_counted": n, "threads": torch.get_num_threads(),
              "train_seconds": res["train_seconds"], "wall_seconds": round(time.time() - t0, 1), "padding": padding, "parts": rows}
    (out / "cpu_step_profile.json").write_text(json.dumps(report, indent=1))
    print(f"student batches: {padding}")
    print(f"{'part':45s} {'s/step':>8s} {'share':>6s}")
    for k, r in sorted(rows.items(), key=lambda kv: -kv[1]["seconds_per_step"]):
        print(f"{k:45s} {r['seconds_per_step']:8.3f} {r['share_of_step'] if r['share_of_step'] is not None else '':>6}")
    return report


if __name__ == "__main__":
    main()
