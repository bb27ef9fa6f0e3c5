"""The training entry point (ML runtime): NeMo FastConformer-TDT fine-tuning with MLflow tracking.

``train_stage(args)`` is what every launch backend runs (locally through ``clinasr ml-stage train``, in
the ML container on SageMaker/EC2). Arguments (JSON):

    dataset          local dataset dir or s3:// snapshot URI (train_manifest.jsonl, val_manifest.jsonl)
    base             {"config": "configs/model/fastconformer_tdt_tiny.yaml"}   build from config (new tokenizer;
                                                                 the default when no base is given)
                     {"nemo": "<path or s3:// or models:/name@alias>"}           fine-tune a .nemo (its tokenizer is kept;
                                                                 "change_vocabulary": true trains a new one)
                     {"pretrained": "nvidia/parakeet-tdt-0.6b-v2"}               NeMo's from_pretrained (needs a hub)
    trainer          path of a trainer YAML (configs/trainer/*.yaml) plus "overrides"
    output_dir       where checkpoints, TensorBoard logs and the .nemo go
    resume           true: continue from output_dir/checkpoints/last.ckpt if it exists
    checkpoint_uri   optional s3:// prefix: last.ckpt is mirrored there as it is written, and a run whose
                     output_dir has no checkpoint resumes from it (another machine, a lost disk)
    mlflow           {"experiment": ..., "register_as": "clinasr-asr", "tags": {...}}
    seed
    replay_source    optional: the general-English replay set (dataset dir or s3:// snapshot); default: the
                     trainer config's ``replay.set`` resolved through clinasr.evalsets (the current snapshot)

Fine-tuning options in the trainer config that keep what the base model knew (measured in
bench/results/recipes-cpu.md; the default recipe is the one that measurement picked):

    replay: {set: general_replay, ratio: 1.0}   general speech rows per clinical row, in train and val (rows
                                                carry domain: general|clinical; val WER is then a combined score)
                                                + clinical_repeats: k: each clinical training row k times beside k x
                                                as many distinct general rows (each sentence seen 1/k as often)
    freeze_encoder_layers: N                    the preprocessor's sub-sampling and the first N conformer layers
                                                do not train (and stay in eval mode)
    encoder_lr_scale: s                         the trainable encoder layers learn at s x the decoder/joint rate
    freeze_prediction_network: true             the prediction network (decoder) keeps the base's weights
    keep_batch_norm_statistics: true            the encoder's batch-norm layers normalise with the base's running
                                                statistics (their scale and shift still learn)
    anchor_to_base: w                           a pull towards the base weights during training (L2-SP): the loss
                                                gains w/2 * |theta - theta_base|^2, or with anchor_mode: decay each
                                                step moves lr * w of the way back (decoupled, as AdamW's decay)
    average_checkpoints: K                      the saved weights are the mean of the last K checkpoints (the final
                                                weights and the K-1 step checkpoints before them)
    distill_from_base: w                        on the replay rows the loss also gains w x KL(base || fine-tune)
                                                over the transducer lattice (learning without forgetting;
                                                clinasr.training.distill)
    merge_with_base: a                          the saved weights are a*fine-tuned + (1-a)*base (weight-space
                                                ensembling, "WiSE-FT"); 1 or unset: the fine-tuned weights
    tdt_loss: torch                             clinasr's pure-torch TDT loss on a GPU too (default there: NeMo's
                                                CUDA kernel; off-GPU always clinasr's)

Returns the MLflow run id, the registered model version (alias ``candidate``), metrics and paths.

This module is the orchestration (load the model, build the trainer, fit, save, register); its parts live
beside it: ``common`` (TrainingError, load_yaml), ``data`` (manifests, replay, tokenizer, data-loader config),
``strategy`` (strategy and the model/optimiser adjustments of the trainer options, the step levers
``joint_fused_batch_size`` / ``fused_adam`` / ``compile_encoder``), ``checkpoints`` (resuming across strategies
and GPU counts: ZeRO-2 directories and single files) and ``progress`` (callbacks, checkpoint mirror and resume
check, the no-tracking stand-in).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

from clinasr.mlenv import launched_processes
from clinasr.training.checkpoints import average_last_checkpoints, full_optimizer_callback, resume_path
from clinasr.training.common import TrainingError, load_yaml
from clinasr.training.data import _dataset_cfg, prepare_dataset, replay_spec, train_tokenizer
from clinasr.training.distill import distill_from_base
from clinasr.training.progress import (_CheckpointMirror, _finite_loss_callback, _frozen_eval_callback,
                                       _model_checkpoint, _progress_callback, _Tracking, _usable_checkpoint)
from clinasr.training.strategy import (_restore_tdt_loss, _spec_augment_switch, _with_optimizer,
                                       activation_checkpointing, anchor_to_base, choose_strategy, encoder_param_groups,
                                       freeze_encoder_layers, freeze_prediction_network, fused_adam_callback,
                                       keep_batch_norm_statistics,
                                       merge_with_base, step_levers)


def load_base_model(base: dict, model_cfg: dict | None, manifests: dict, tcfg: dict, work: Path, trainer):
    """Build or load the model. Returns (model, description)."""
    from nemo.collections.asr.models import EncDecRNNTBPEModel
    from omegaconf import OmegaConf, open_dict

    from clinasr import nemo_fixes

    nemo_fixes.apply()   # validation decodes on CUDA: NeMo's kernel compile would corrupt b" " (see there)

    if "config" in base:
        cfg = copy.deepcopy(encoder_param_groups(_with_optimizer(model_cfg, tcfg), tcfg))
        tok_dir = train_tokenizer(manifests["train"], int(cfg["tokenizer"]["vocab_size"]), work / "tokenizer",
                                  include_lexicon=bool(cfg["tokenizer"].get("include_lexicon", True)))
        cfg["tokenizer"] = {"dir": str(tok_dir), "type": "bpe"}
        cfg["train_ds"] = _dataset_cfg(manifests["train"], tcfg, True)
        cfg["validation_ds"] = _dataset_cfg(manifests["val"], tcfg, False)
        init = cfg.pop("encoder_init", None)   # read once here; the .nemo carries the weights, not the reference
        model = EncDecRNNTBPEModel(cfg=OmegaConf.create(cfg), trainer=trainer)
        _spec_augment_switch(model, tcfg)
        return model, f"from config {base['config']}" + (init_encoder(model, init) if init else "")
    if "nemo" in base:
        path = resolve_nemo(base["nemo"], work)
        try:
            model = EncDecRNNTBPEModel.restore_from(str(path), map_location="cpu")
        except Exception as e:
            raise TrainingError(f"cannot load base model {base['nemo']}: {type(e).__name__}: {e}") from None
        desc = f"fine-tune of {base['nemo']}"
        model._clinasr_source_nemo = path   # its n-gram LM (clinasr.lm) is rebuilt for the fine-tune
    elif "pretrained" in base:
        try:
            model = EncDecRNNTBPEModel.from_pretrained(base["pretrained"], map_location="cpu")
        except Exception as e:
            raise TrainingError(f"cannot load pretrained {base['pretrained']!r} (no hub reachable? use a .nemo "
                                f"file via base.nemo): {type(e).__name__}: {e}") from None
        desc = f"fine-tune of {base['pretrained']}"
    else:
        raise TrainingError(f"base must name one of config / nemo / pretrained (got {base})")
    model.set_trainer(trainer)
    if base.get("change_vocabulary"):  # default: keep the base tokenizer; decoder/joint are re-initialised
        vocab = int((model_cfg or {}).get("tokenizer", {}).get("vocab_size", model.tokenizer.vocab_size))
        tok_dir = train_tokenizer(manifests["train"], vocab, work / "tokenizer")
        model.change_vocabulary(new_tokenizer_dir=str(tok_dir), new_tokenizer_type="bpe")
        _restore_tdt_loss(model)
        desc += f" with a new {model.tokenizer.vocab_size}-token vocabulary"
        model._clinasr_source_nemo = None   # a base's LM counts its own tokens: it does not fit the new ones
    model_cfg = encoder_param_groups(_with_optimizer(model_cfg, tcfg), tcfg)
    with open_dict(model.cfg):
        for key in ("optim", "spec_augment", "optim_param_groups"):
            if model_cfg and key in model_cfg:
                model.cfg[key] = OmegaConf.create(model_cfg[key])
        # a base's parameter groups are rates in its own optimiser's units (base v5's encoder group: a Noam factor of
        # 0.165, which a fine-tune's AdamW took as a learning rate and diverged): a new optimiser without groups of
        # its own does not inherit them
        if model_cfg and "optim" in model_cfg and "optim_param_groups" not in model_cfg:
            model.cfg.pop("optim_param_groups", None)
    model.setup_training_data(OmegaConf.create(_dataset_cfg(manifests["train"], tcfg, True)))
    model.setup_validation_data(OmegaConf.create(_dataset_cfg(manifests["val"], tcfg, False)))
    if model_cfg and "optim" in model_cfg:
        model.setup_optimization(OmegaConf.create(model_cfg["optim"]))
    _spec_augment_switch(model, tcfg)
    return model, desc


def init_encoder(model, init: dict) -> str:
    """Model config key ``encoder_init: {whisper: NAME}``: the encoder starts from a pretrained Whisper's
    (clinasr.encoders). Returns the description's suffix, naming the weights and their sha256."""
    from clinasr.encoders import EncoderWeightsError

    if set(init) != {"whisper"} or not hasattr(model.encoder, "load_whisper"):
        raise TrainingError(f"encoder_init {init}: only {{whisper: NAME}}, for the encoder "
                            "clinasr.encoders.WhisperEncoder")
    try:
        rec = model.encoder.load_whisper(str(init["whisper"]))
    except EncoderWeightsError as e:
        raise TrainingError(f"encoder_init: {e}") from None
    return f", encoder from Whisper {rec['whisper']} ({rec['parameters']} parameters, sha256 {rec['sha256'][:12]})"


def resolve_nemo(ref: str, work: Path) -> Path:
    from clinasr.registry import RegistryError, fetch_model

    try:
        return fetch_model(ref, work / "base")
    except (RegistryError, FileNotFoundError) as e:
        raise TrainingError(f"base model: {e}") from None


def own_text(manifest: str | Path, out: Path) -> Path:
    """The run's own training sentences (not the general-English replay; each row once, however often the
    recipe repeats it) as a text file: what a fine-tune's n-gram LM adds to its base's (clinasr.lm.rebuild)."""
    seen, lines = set(), []
    for line in Path(manifest).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        key = (r.get("utt_id") or r.get("audio_filepath"), r.get("text"))
        if r.get("domain") != "general" and key not in seen and str(r.get("text") or "").strip():
            seen.add(key)
            lines.append(str(r["text"]).strip())
    out.write_text("".join(t + "\n" for t in lines), encoding="utf-8")
    return out


def train(args: dict, log=print, on_trained=None, callbacks: list | None = None) -> dict:
    """One training run (see the module doc for ``args``). ``on_trained(model)`` runs on the trained model before
    it is registered; ``callbacks`` are extra Lightning callbacks."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    out = Path(args["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    tcfg = load_yaml(args.get("trainer", "configs/trainer/cpu_demo.yaml"))
    tcfg.update(args.get("trainer_overrides") or {})
    base = args.get("base") or {"config": "configs/model/fastconformer_tdt_tiny.yaml"}
    # fine-tuning optimiser etc.: the run's model_overrides, else the trainer config's (cpu_finetune.yaml names one)
    overrides = args.get("model_overrides") or tcfg.get("model_overrides")
    model_cfg = load_yaml(base["config"]) if "config" in base else (load_yaml(overrides) if overrides else None)
    seed = int(args.get("seed", 0))
    pl.seed_everything(seed, workers=True)
    strategy, accelerator, devices, nodes = choose_strategy(tcfg, log)
    rank = launched_processes()[2]
    work = out   # rank 0 tracks, saves and registers; other ranks of a multi-process run train in their own dir
    if rank:
        log = lambda m: None   # noqa: E731 — one log per run, not one per process
        args = {**args, "mlflow": {**(args.get("mlflow") or {}), "enabled": False}, "checkpoint_uri": None}
        work = out / f"rank{rank}"
    if k := int(tcfg.get("average_checkpoints") or 0):   # a config error stops the run before any work
        if tcfg.get("strategy") == "deepspeed_stage_2":
            raise TrainingError("average_checkpoints needs single-file checkpoints: not with strategy deepspeed_stage_2")
        if k > int(tcfg.get("keep_last_k", 2)):
            raise TrainingError(f"average_checkpoints {k} needs keep_last_k >= {k} (it is {tcfg.get('keep_last_k', 2)}): "
                                "the run keeps too few step checkpoints to average")
    replay = replay_spec(args, tcfg, log)
    data = prepare_dataset(args["dataset"], work / "data", float(tcfg.get("max_duration", 20.0)), replay)
    log(f"[train] data: {json.dumps(data['report'])}")
    for split, rep in data["report"].items():
        for short in ("general_replay_short", "clinical_repeats_short"):
            if rep.get(short):
                log(f"[train] WARNING {split}: {rep[short]} (grow configs/evalsets.yaml's replay set)")
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    mirror = _CheckpointMirror(args.get("checkpoint_uri"), ckpt_dir, log)
    if args.get("resume", True) and not last.exists():
        mirror.restore()
    if args.get("resume", True) and last.exists():
        _usable_checkpoint(ckpt_dir, log)
    resume = bool(args.get("resume", True)) and last.exists()
    # a ZeRO-2 directory of another GPU count, or resumed by another strategy, goes through its full single-file form
    from lightning.pytorch.strategies import DeepSpeedStrategy

    ckpt_path = (resume_path(last, isinstance(strategy, DeepSpeedStrategy), devices * nodes, work, log)
                 if resume else None)

    mlflow_cfg = args.get("mlflow") or {}
    # benchmarks on machines without a tracking server run with {"enabled": false}: no tracking, no registry
    mlflow = _Tracking() if mlflow_cfg.get("enabled", True) is False else __import__("mlflow")
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:15000"))
    exp = mlflow.set_experiment(mlflow_cfg.get("experiment", "clinasr-training"))
    run_id_file = work / "mlflow_run_id"
    if resume and not run_id_file.exists() and (ckpt_dir / "mlflow_run_id").exists():
        run_id_file.write_text((ckpt_dir / "mlflow_run_id").read_text())
    run_id = run_id_file.read_text().strip() if resume and run_id_file.exists() else None
    run = mlflow.start_run(run_id=run_id, experiment_id=exp.experiment_id,
                           run_name=mlflow_cfg.get("run_name"), tags=mlflow_cfg.get("tags"))
    run_id_file.write_text(run.info.run_id)
    if not rank:
        (ckpt_dir / "mlflow_run_id").parent.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / "mlflow_run_id").write_text(run.info.run_id)   # travels with the checkpoint mirror
    try:
        loggers = [TensorBoardLogger(str(work / "tensorboard"), name="", version="tb")]
        if not isinstance(mlflow, _Tracking):
            class _Logger(MLFlowLogger):
                def log_hyperparams(self, params):   # logged by the first attempt; paths differ on another machine
                    if not resume:
                        super().log_hyperparams(params)

            loggers.append(_Logger(experiment_name=exp.name, run_id=run.info.run_id, tracking_uri=mlflow.get_tracking_uri()))
        ckpt = _model_checkpoint(dirpath=str(ckpt_dir), every_n_train_steps=int(tcfg["checkpoint_every_n_steps"]),
                               save_top_k=int(tcfg.get("keep_last_k", 2)), monitor="step", mode="max",
                               save_last=True, filename="step{step:06d}", auto_insert_metric_name=False)
        # one cadence for the progress line, Lightning's logging and NeMo's training-batch WER (a greedy decode)
        log_every = int(tcfg.get("log_every_n_steps", 10))
        progress = _progress_callback(int(tcfg["max_steps"]), log, every=log_every)
        trainer = pl.Trainer(
            max_steps=int(tcfg["max_steps"]),
            # a wall-clock budget (minutes): training stops there and saves, as at max_steps
            max_time={"minutes": float(tcfg["max_minutes"])} if tcfg.get("max_minutes") else None,
            accelerator=accelerator, devices=devices, num_nodes=nodes, strategy=strategy,
            precision=tcfg.get("precision", "32-true"), accumulate_grad_batches=int(tcfg.get("accumulate_grad_batches", 1)),
            gradient_clip_val=tcfg.get("gradient_clip_val") if tcfg.get("strategy") != "deepspeed_stage_2" else None,
            val_check_interval=min(int(tcfg["val_check_interval"]), int(tcfg["max_steps"])),
            check_val_every_n_epoch=None, log_every_n_steps=log_every, num_sanity_val_steps=0, enable_progress_bar=False,
            enable_model_summary=False, logger=loggers,
            callbacks=[ckpt, progress, mirror.callback(), _frozen_eval_callback(), _finite_loss_callback(),
                       full_optimizer_callback(log), fused_adam_callback(), *(callbacks or [])],
            # the semi-sorted sampler shards by rank itself; Lightning's distributed sampler would replace it
            # (so does lhotse's, for batch_duration)
            default_root_dir=str(out),
            use_distributed_sampler=devices * nodes > 1 and not (tcfg.get("semi_sorted_batching") or tcfg.get("batch_duration")),
        )
        model, base_desc = load_base_model(base, model_cfg, data["manifests"], tcfg, work, trainer)
        from clinasr.training.tdt_loss import install_cpu_tdt_loss

        if reason := install_cpu_tdt_loss(model, "cuda" if accelerator == "gpu" else "cpu",
                                          prefer_torch=tcfg.get("tdt_loss") == "torch"):
            log(f"[train] {reason}")
        if tcfg.get("distill_from_base") and ("config" in base or base.get("change_vocabulary")):
            raise TrainingError("distill_from_base distils the base model's own outputs: it needs a base (nemo: or "
                                "pretrained:) whose vocabulary the fine-tune keeps")
        if n_distilled := distill_from_base(model, tcfg, data["manifests"]["train"]):
            log(f"[train] distilled from the base on {n_distilled} general-English rows: loss + "
                f"{tcfg['distill_from_base']} x KL(base || fine-tune) over the lattice")
        if n_ckpt := activation_checkpointing(model, tcfg):
            log(f"[train] activation checkpointing: {n_ckpt} encoder layers recompute their activations in backward")
        base_state = ({k: v.detach().clone() for k, v in model.state_dict().items()}
                      if (tcfg.get("merge_with_base") is not None or tcfg.get("anchor_to_base")) and "config" not in base
                      else None)
        # fine-tuning levers: nothing to keep when built from scratch, except an encoder that starts pretrained
        pretrained = {"freeze_encoder_layers": bool((model_cfg or {}).get("encoder_init"))}
        for lever in ("freeze_encoder_layers", "freeze_prediction_network"):
            if "config" in base and tcfg.get(lever) and not pretrained.get(lever):
                log(f"[train] {lever} {tcfg[lever]} ignored: the model is built from {base['config']}, there are no "
                    "base weights to keep")
                tcfg[lever] = 0
        if n_frozen := freeze_encoder_layers(model, tcfg):
            log(f"[train] frozen: encoder front end + first {tcfg['freeze_encoder_layers']} layers "
                f"({n_frozen / 1e6:.2f} M parameters keep the weights they start from)")
        if n_norms := keep_batch_norm_statistics(model, tcfg):
            log(f"[train] the encoder's {n_norms} batch-norm layers keep the base's running statistics")
        if n_frozen := freeze_prediction_network(model, tcfg):
            log(f"[train] frozen: the prediction network ({n_frozen / 1e6:.2f} M parameters keep the base's weights)")
        if n_anchored := anchor_to_base(model, base_state, tcfg):
            how = (f"each step moves lr x {tcfg['anchor_to_base']} of the way back" if tcfg.get("anchor_mode") == "decay"
                   else f"loss + {tcfg['anchor_to_base']}/2 x |theta - theta_base|^2")
            log(f"[train] anchored to the base weights: {how}, over {n_anchored / 1e6:.2f} M trainable parameters (L2-SP)")
        levers = step_levers(model, tcfg, accelerator, log)
        if tcfg.get("encoder_lr_scale") is not None:
            log(f"[train] encoder learning rate x{float(tcfg['encoder_lr_scale'])}")
        n_params = sum(p.numel() for p in model.parameters())
        params = {"base": base_desc, "dataset": args["dataset"], "n_params": n_params, "seed": seed,
                  "strategy": str(tcfg.get("strategy")), "accelerator": accelerator, "devices": devices, "nodes": nodes,
                  "resumed": resume, **{f"lever.{k}": v for k, v in levers.items()},
                  **{f"trainer.{k}": v for k, v in tcfg.items()}}
        if not resume:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            mlflow.log_dict(model_cfg or {}, "config/model.yaml")
            mlflow.log_dict(tcfg, "config/trainer.yaml")
            mlflow.log_dict(data["report"], "data/report.json")
        log(f"[train] {base_desc}: {n_params / 1e6:.2f} M parameters, {tcfg['max_steps']} steps on "
            f"{accelerator} x{devices}{f' x {nodes} nodes' if nodes > 1 else ''}"
            f"{' (resuming from ' + str(last) + ')' if resume else ''}")
        t0 = time.time()
        try:
            trainer.fit(model, ckpt_path=str(ckpt_path) if ckpt_path else None)
        except torch.OutOfMemoryError:
            size = f"batch_duration {tcfg['batch_duration']} s" if tcfg.get("batch_duration") else f"batch_size {tcfg['batch_size']}"
            raise TrainingError(f"out of GPU memory at {size}: lower it, set activation_checkpointing: true (on an "
                                "H100: 1,200 s batches in 19 instead of 56 GiB, ~18% slower), raise accumulate_grad_batches, or use strategy "
                                "deepspeed_stage_2 with configs/deepspeed/zero2_offload.json; nothing registered") from None
        elapsed = time.time() - t0
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        metrics.update(progress.steady())
        loss = metrics.get("train_loss", metrics.get("loss", float("nan")))
        if math.isnan(loss) or math.isinf(loss):
            raise TrainingError(f"training loss is {loss}: lower the learning rate or check the data; nothing registered")
        if rank:
            mlflow.end_run()
            return {"rank": rank, "global_step": trainer.global_step, "train_seconds": round(elapsed, 1)}
        if int(tcfg.get("average_checkpoints") or 0) > 1:
            average_last_checkpoints(model, ckpt_dir, int(tcfg["average_checkpoints"]), trainer.global_step, log)
        if (alpha := merge_with_base(model, base_state, tcfg)) is not None:
            log(f"[train] saved weights: {alpha} x fine-tuned + {1 - alpha:.2f} x base (merge_with_base)")
        if (was := getattr(model, "_clinasr_chunking_was", None)) is not None:   # a training-speed setting only
            model.change_subsampling_conv_chunking_factor(int(was))
        nemo_path = out / "model.nemo"
        model.save_to(str(nemo_path))
        from clinasr import lm

        if (src := getattr(model, "_clinasr_source_nemo", None)) and lm.embedded(src) is not None:
            lm.rebuild(src, nemo_path, [own_text(data["manifests"]["train"], work / "lm_text.txt")], log)
        if on_trained:   # e.g. score the trained model in memory (clinasr.experiment), as its .nemo decodes
            model._clinasr_saved_nemo = str(nemo_path)
            on_trained(model)
        mlflow.log_artifact(str(nemo_path), "model")
        if (out / "tensorboard").exists():
            mlflow.log_artifacts(str(out / "tensorboard"), "tensorboard")
        if accelerator == "gpu":
            metrics["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        mlflow.log_metrics({"train_seconds": elapsed, "global_step": trainer.global_step})
        result = {"mlflow_run_id": run.info.run_id, "mlflow_experiment_id": exp.experiment_id, "nemo_path": str(nemo_path), "global_step": trainer.global_step,
                  "metrics": metrics, "train_seconds": round(elapsed, 1), "n_params": n_params,
                  "checkpoint_dir": str(ckpt_dir), "data": data["report"], "dataset": args["dataset"],
                  "levers": levers, "resumed_from": str(ckpt_path) if ckpt_path else None}
        if (name := mlflow_cfg.get("register_as")) and not isinstance(mlflow, _Tracking):
            from clinasr.registry import register_candidate

            result["model_version"] = register_candidate(name, run.info.run_id, "model/model.nemo",
                                                         tags={"dataset": args["dataset"], **(mlflow_cfg.get("tags") or {})})
            result["model_uri"] = f"models:/{name}/{result['model_version']}"
        mlflow.end_run()
        return result
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise


def train_stage(args: dict) -> dict:
    """ML-runtime entry point (``clinasr ml-stage train``)."""
    return train(args)
