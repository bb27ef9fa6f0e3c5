"""The boundary between the orchestration runtime and the ML runtime — the only place that crosses it.

Airflow (packaging>=25) and NeMo (packaging<25 via lightning 2.4) cannot share an interpreter, so
every ML stage runs as ``<ML python> -m clinasr.cli ml-stage <stage>`` with its arguments and result
passed as JSON files. Output streams line by line into the caller's log (the Airflow task log).
Locally the ML python is ``.venv/ml/bin/python`` (``CLINASR_ML_PYTHON``); in production the same
entry point is the container command of the ML image (SageMaker / EC2 / serving), see
``clinasr.launch``.

Stages are registered in :data:`STAGES` as ``module:function`` names so that importing this
module never imports torch.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from clinasr.settings import REPO_ROOT, Settings

STAGES: dict[str, str] = {
    "synthesize": "clinasr.synth.pipeline:build_dataset_stage",
    "train": "clinasr.training.train:train_stage",
    "evaluate": "clinasr.evaluate:evaluate_stage",
    "pronounce": "clinasr.synth.pronounce:pronounce_stage",
    "qa": "clinasr.synth.qa:qa_stage",
    "evalset": "clinasr.evalsets:build_set_stage",
    "lm": "clinasr.lm:build_stage",
}


class StageError(RuntimeError):
    """An ML stage failed; the message carries the stage's own error text."""


def resolve(stage: str) -> Callable[[dict], dict]:
    try:
        target = STAGES[stage]
    except KeyError:
        raise StageError(f"unknown stage {stage!r}; known: {', '.join(sorted(STAGES))}") from None
    mod, fn = target.split(":")
    return getattr(importlib.import_module(mod), fn)


def run_stage(stage: str, args: dict, settings: Settings | None = None, log: Callable[[str], None] = print) -> dict:
    """Run ``stage`` in the ML runtime and return its JSON result."""
    settings = settings or Settings.from_env()
    py = settings.ml_python
    if not Path(py).exists():
        raise StageError(f"the ML runtime's python {py} does not exist: run `scripts/setup.sh` or set CLINASR_ML_PYTHON")
    if stage not in STAGES:
        raise StageError(f"unknown stage {stage!r}; known: {', '.join(sorted(STAGES))}")
    with tempfile.TemporaryDirectory(prefix=f"clinasr-{stage}-") as tmp:
        args_f, result_f = Path(tmp) / "args.json", Path(tmp) / "result.json"
        args_f.write_text(json.dumps(args))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT / "include")}
        # The orchestration venv's variables must not leak into the ML interpreter.
        env.pop("VIRTUAL_ENV", None)
        cmd = [py, "-m", "clinasr.cli", "ml-stage", stage, "--args-json", str(args_f), "--result-json", str(result_f)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            log(line)
            tail = (tail + [line])[-30:]
        rc = proc.wait()
        if rc != 0:
            err = ""
            if result_f.exists():
                err = json.loads(result_f.read_text()).get("error", "")
            raise StageError(f"ML stage {stage!r} failed (exit {rc}): {err or chr(10).join(tail[-10:])}")
        return json.loads(result_f.read_text())


SERVICES = {"serve": "clinasr.serving"}


def service_command(name: str, argv: list[str], settings: Settings | None = None) -> tuple[list[str], dict]:
    """Command line and environment of a long-running ML-runtime service (the transcription server)."""
    settings = settings or Settings.from_env()
    if name not in SERVICES:
        raise StageError(f"unknown ML service {name!r}; known: {', '.join(SERVICES)}")
    env = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT / "include"), "VIRTUAL_ENV": ""}
    return [settings.ml_python, "-m", SERVICES[name], *argv], env


def launched_processes() -> tuple[int, int, int]:
    """(world size, processes per node, global rank) when a stage was started by torchrun (or a SageMaker/EC2
    launcher that sets the same variables), else (1, 1, 0)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)) or world)
    return world, local, int(os.environ.get("RANK", "0") or 0)


def run_stage_in_process(stage: str, args_json: Path, result_json: Path) -> int:
    """ML-runtime side of :func:`run_stage` (called by ``clinasr ml-stage``)."""
    args = json.loads(Path(args_json).read_text())
    try:
        result = resolve(stage)(args)
    except Exception as e:  # the orchestration side reports it; the traceback is in the log above
        import traceback

        traceback.print_exc()
        Path(result_json).write_text(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    if launched_processes()[2] == 0:   # a multi-process (torchrun) stage: rank 0's result stands
        Path(result_json).write_text(json.dumps(result, default=str))
    return 0
