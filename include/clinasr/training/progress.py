"""What a run reports and keeps as it goes (ML runtime): the Lightning callbacks for the progress line and the
steady-state throughput (:func:`_progress_callback`), the stop at the first non-finite loss, frozen layers kept
in eval mode; the checkpoint side of resuming (a ``last.ckpt`` that does not load is replaced by one that does;
``last.ckpt`` mirrored to and restored from s3://); and :class:`_Tracking`, the stand-in for MLflow when a
run is not tracked."""

from __future__ import annotations

import math
import time
from pathlib import Path

from clinasr.training.common import TrainingError


def _progress_callback(total_steps: int, log, every: int = 10):
    import lightning.pytorch as pl
    import torch

    class Progress(pl.Callback):
        """step/total, loss, learning rate, audio-seconds/s and ETA in the (Airflow task) log and MLflow; and the
        steady-state throughput of the run (:meth:`steady`)."""

        def __init__(self):
            self.t0 = None
            self.audio_s = 0.0
            self.window = (time.time(), 0.0, 0)
            self.last = None
            self.steps: list[tuple[int, float, float]] = []   # (step, seconds since the previous step, audio-s)
            self.interrupted: set[int] = set()   # steps whose interval also holds a checkpoint write or validation

        def on_save_checkpoint(self, trainer, module, checkpoint):
            self.interrupted.add(trainer.global_step + 1)   # written after this step's callbacks: lands in the next

        def on_validation_start(self, trainer, module):
            self.interrupted.add(trainer.global_step + 1)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            now = time.time()
            if self.t0 is None:
                self.t0 = now
            lens = batch[1] if isinstance(batch, (list, tuple)) else None
            audio = float(lens.sum()) / 16000 if lens is not None else 0.0
            self.audio_s += audio
            step = trainer.global_step
            if self.last is not None:
                self.steps.append((step, now - self.last, audio))
            self.last = now
            if step % every == 0 or step == total_steps:
                t, a, s0 = self.window
                rate = (self.audio_s - a) / max(now - t, 1e-6)
                self.window = (now, self.audio_s, step)
                done = max(step, 1)
                eta = (now - self.t0) / done * (total_steps - step)
                loss = outputs["loss"].item() if isinstance(outputs, dict) and "loss" in outputs else float("nan")
                lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
                log(f"[train] step {step}/{total_steps} loss {loss:.3f} lr {lr:.2e} "
                    f"{rate:.1f} audio-s/s ETA {eta:.0f}s")
                stats = {"throughput_audio_s_per_s": rate}
                if torch.cuda.is_available():
                    stats["gpu_mem_gib"] = torch.cuda.memory_allocated() / 2**30
                    stats["gpu_peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                module.log_dict(stats, on_step=True, logger=True)

        def steady(self) -> dict:
            """Throughput once warmed up: the steps after the first 10% (at least 3: CUDA kernel selection, the
            TDT loss's JIT), leaving out the intervals that also wrote a checkpoint or validated. Each step's
            interval includes waiting for data, logging and the periodic training-WER decode."""
            import statistics

            warm = max(3, len(self.steps) // 10)
            kept = [(dt, a) for s, dt, a in self.steps[warm:] if s not in self.interrupted]
            if not kept:
                return {}
            return {"steady_audio_s_per_s": sum(a for _, a in kept) / sum(dt for dt, _ in kept),
                    "median_s_per_step": statistics.median(dt for dt, _ in kept), "steady_steps": len(kept)}

    return Progress()


def _finite_loss_callback():
    """Stops the run at its first non-finite loss, before that step's backward pass: a diverged run (learning rate
    too high, a corrupt clip) otherwise trains on to max_steps on NaN weights. Every process takes the same decision
    (a poisoned batch may reach only one rank), so none is left waiting in a collective."""
    import lightning.pytorch as pl

    class FiniteLoss(pl.Callback):
        def on_before_backward(self, trainer, module, loss):
            value = float(loss.detach())
            if trainer.strategy.reduce_boolean_decision(not math.isfinite(value), all=False):
                lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
                raise TrainingError(
                    f"training loss is {value if not math.isfinite(value) else 'non-finite on another process'} at step "
                    f"{trainer.global_step + 1} (learning rate {lr:.2e}): the run diverged; lower the learning rate or "
                    "check the data, and start from a fresh output_dir (its checkpoints may hold the diverged weights); "
                    "nothing registered")

    return FiniteLoss()


def _frozen_eval_callback():
    """Lightning puts the whole module in train mode at every epoch (and after validation): frozen layers go
    back to eval mode each time."""
    from lightning.pytorch.callbacks import Callback

    class KeepFrozenEval(Callback):
        def _eval(self, module):
            for m in getattr(module, "_clinasr_frozen", ()):
                m.eval()

        def on_train_epoch_start(self, trainer, module):
            self._eval(module)

        def on_validation_end(self, trainer, module):
            self._eval(module)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 0:
                self._eval(module)

    return KeepFrozenEval()


def _usable_checkpoint(ckpt_dir: Path, log) -> None:
    """A ``last.ckpt`` that does not load (a crash mid-write, a truncated copy) is moved aside as
    ``last.ckpt.corrupt`` and the newest periodic checkpoint that loads takes its place; with none, the run
    starts over. Either way the log says so — a resume never fails on a broken file. A DeepSpeed checkpoint is a
    directory: it loads when its model states and every optimizer shard open."""
    import shutil

    from clinasr.training.checkpoints import loads

    last = ckpt_dir / "last.ckpt"
    if loads(last):
        return
    bad = last.with_suffix(".ckpt.corrupt")
    if bad.is_dir():
        shutil.rmtree(bad)
    last.replace(bad)
    for p in sorted(ckpt_dir.glob("step*.ckpt"), reverse=True):
        if loads(p):
            (shutil.copytree if p.is_dir() else shutil.copyfile)(p, last)
            log(f"[train] {last} does not load (moved to {bad.name}); resuming from {p.name} instead")
            return
    log(f"[train] {last} does not load (moved to {bad.name}) and no earlier checkpoint does: starting over")


def _model_checkpoint(**kwargs):
    """Lightning's ModelCheckpoint that can overwrite a checkpoint of the other form: a run resumed across
    strategies (a ZeRO-2 directory into DDP, a single file into ZeRO-2) writes its ``last.ckpt`` where the other
    form lies; the old one is removed first (by rank 0, the others wait), then every rank saves."""
    import shutil

    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.strategies import DeepSpeedStrategy

    class Checkpoint(ModelCheckpoint):
        def _save_checkpoint(self, trainer, filepath):
            p = Path(filepath)
            writes_dir = isinstance(trainer.strategy, DeepSpeedStrategy)
            if trainer.is_global_zero and p.exists() and p.is_dir() != writes_dir:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            trainer.strategy.barrier("clinasr_checkpoint_form")
            super()._save_checkpoint(trainer, filepath)

    return Checkpoint(**kwargs)


class _CheckpointMirror:
    """Keeps ``last.ckpt`` (and the MLflow run id) mirrored at an s3:// prefix, so any machine can resume. A
    DeepSpeed checkpoint is a directory: each of its files goes up, then ``last.ckpt.manifest`` names the current
    form and files (a restore takes only those). Only rank 0 uploads: across several nodes with node-local disks
    the other nodes' optimizer shards are not mirrored.

    Lightning runs ModelCheckpoint after other callbacks, so a checkpoint written at step N is uploaded at
    step N+1 (and at the end of training or on an exception); the upload is skipped when unchanged."""

    def __init__(self, uri: str | None, ckpt_dir: Path, log):
        if uri and not uri.startswith("s3://"):
            raise TrainingError(f"checkpoint_uri must be an s3:// prefix (got {uri!r})")
        self.uri, self.dir, self.log, self._sent = (uri.rstrip("/") if uri else None), ckpt_dir, log, None

    def restore(self) -> None:
        if not self.uri:
            return
        import json

        from clinasr.store import ObjectStore

        store = ObjectStore()
        # last.ckpt.manifest (written after each upload) names the form and files of the newest last.ckpt: a
        # single file, or a DeepSpeed directory (whose older shards may still lie under the prefix)
        manifest = (json.loads(store.get_bytes(f"{self.uri}/last.ckpt.manifest"))
                    if store.exists(f"{self.uri}/last.ckpt.manifest") else {"files": ["last.ckpt"]})
        if not all(store.exists(f"{self.uri}/{f}") for f in manifest["files"]):
            self.log(f"[train] no checkpoint at {self.uri}: starting fresh")
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if store.exists(f"{self.uri}/mlflow_run_id"):
            store.download(f"{self.uri}/mlflow_run_id", self.dir / "mlflow_run_id")
        for f in manifest["files"]:
            store.download(f"{self.uri}/{f}", self.dir / f)
        self.log(f"[train] restored last.ckpt from {self.uri}"
                 f"{' (a DeepSpeed directory)' if manifest.get('form') == 'directory' else ''}")

    def upload(self) -> None:
        last = self.dir / "last.ckpt"
        if not self.uri or not last.exists():
            return
        files = sorted(p for p in last.rglob("*") if p.is_file()) if last.is_dir() else [last]
        stamp = tuple((p.as_posix(), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
        if stamp == self._sent:
            return
        import json

        from clinasr.store import ObjectStore

        t0 = time.time()
        store = ObjectStore()
        if (self.dir / "mlflow_run_id").exists():
            store.put_file(self.dir / "mlflow_run_id", f"{self.uri}/mlflow_run_id")
        rel = [p.relative_to(self.dir).as_posix() for p in files]
        for p, r in zip(files, rel):
            store.put_file(p, f"{self.uri}/{r}")
        store.put_bytes(json.dumps({"form": "directory" if last.is_dir() else "file", "files": rel}).encode(),
                        f"{self.uri}/last.ckpt.manifest")
        self._sent = stamp
        size = sum(s for _, _, s in stamp)
        self.log(f"[train] mirrored last.ckpt ({size / 2**20:.1f} MiB{f', {len(files)} files' if last.is_dir() else ''}) "
                 f"to {self.uri} in {time.time() - t0:.1f}s")

    def callback(self):
        from lightning.pytorch.callbacks import Callback

        mirror = self

        class Mirror(Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if trainer.is_global_zero:
                    mirror.upload()

            def on_train_end(self, trainer, module):
                if trainer.is_global_zero:
                    mirror.upload()

            def on_exception(self, trainer, module, exc):
                if trainer.is_global_zero:
                    mirror.upload()

        return Mirror()


class _Tracking:
    """Stands in for the mlflow module when tracking is disabled (benchmarks): records nothing."""

    class _Obj:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    def __getattr__(self, name):
        return lambda *a, **k: None

    def set_experiment(self, name):
        return self._Obj(experiment_id="0", name=name)

    def start_run(self, **kw):
        return self._Obj(info=self._Obj(run_id="untracked"))
