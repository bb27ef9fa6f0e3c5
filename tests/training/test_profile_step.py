"""bench/profile_cpu_step.py: the CPU step profile runs through the real training code and accounts for the step."""

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def test_the_step_profile_times_every_part_of_a_distilled_step(tiny_dataset, replay_set, tmp_path):
    import json

    import profile_cpu_step

    report = profile_cpu_step.main(["--dataset", str(tiny_dataset), "--replay", str(replay_set), "--steps", "4",
                                    "--skip", "1", "--out", str(tmp_path), "--set", "batch_size=4",
                                    "--set", "replay={ratio: 1.0}"])
    parts = report["parts"]
    for name in ("total", "backward", "joint", "encoder front end", "loss (+ distillation)",
                 "base encoder (distillation)", "encoder layer 4", "encoder layer 1 (frozen)"):
        assert parts[name]["seconds_per_step"] > 0, name
    # the parts inside one step add up to no more than the step (the loss includes the base's forward)
    inside = ("preprocessor", "encoder front end", *[k for k in parts if k.startswith("encoder layer")],
              "prediction network", "joint", "loss (+ distillation)", "backward")
    assert sum(parts[k]["seconds_per_step"] for k in inside) <= parts["total"]["seconds_per_step"] * 1.02
    assert report["steps_counted"] == 3 and report["padding"]["rows_per_step"] == 4
    assert report["padding"]["padded_frames_per_row"] >= report["padding"]["frames_per_row"] > 0
    assert json.loads((tmp_path / "cpu_step_profile.json").read_text())["parts"] == parts
