"""``clinasr`` — a thin command line over the library (every subcommand has --help).

    clinasr platform up|down|status      the local platform (S3 server, MLflow, Airflow)
    clinasr data build ...               synthetic dataset -> object-store snapshot
    clinasr provenance verify|lineage|page|openlineage   check the chain, read lineage (CLI, HTML, OpenLineage)
    clinasr pronounce TERM               what each TTS engine says for a term (phonemes, clips), with overrides
    clinasr evaluate --model M --manifest X   score a model on held-out sets (optionally gate vs a baseline)
    clinasr lm MODEL --text T --out M2  embed a subword n-gram LM in a model (beam-search fusion)
    clinasr registry show|rollback       model registry aliases (candidate, production, previous); roll back
    clinasr serve --model M              the OpenAI-compatible transcription service (ML runtime)
    clinasr demo                         run the flywheel DAGs through Airflow's REST API
    clinasr ml-stage NAME ...            (internal) run an ML stage in the ML runtime
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_platform(a) -> int:
    from clinasr import platform as P
    from clinasr.settings import Settings

    s = Settings.from_env()
    if a.action == "up":
        P.up(s, only=a.only)
        print(f"\nAirflow UI  {s.airflow_url}  (user admin, password {P.airflow_admin_password(s)})")
        print(f"MLflow UI   {s.mlflow_uri}\nS3 endpoint {s.s3_endpoint}  bucket {s.bucket}")
    elif a.action == "down":
        P.down(s)
    elif a.action == "init":
        P.init_deployment(s)
    else:
        for r in P.status(s):
            print(f"{r['service']:<24} {r['state']:<10} pid={r['pid'] or '-':<8} {r['url']}")
    return 0


def cmd_data_build(a) -> int:
    from clinasr.datasets import DatasetRequest, build_and_stage

    llm = {k: v for k, v in {"base_url": a.llm_base_url, "model": a.llm_model}.items() if v}
    req = DatasetRequest(terms=a.terms, utterances_per_term=a.per_term, generator=a.generator,
                         template_family=a.template_family, seed=a.seed, val_fraction=a.val_fraction,
                         augment=not a.no_augment, workers=a.workers, real_manifest=a.real_manifest,
                         real_ratio=a.real_ratio, accent_profiles=a.accent_profiles, llm=llm, synthesis=a.synthesis)
    res = build_and_stage(req)
    _print_json({"snapshot": res["snapshot"], "card": res["dataset"]["card"]["counts"]})
    return 0


def cmd_ml_stage(a) -> int:
    from clinasr.mlenv import run_stage_in_process

    return run_stage_in_process(a.stage, Path(a.args_json), Path(a.result_json))


def cmd_ml_stage_inline(a) -> int:
    """Container form of ml-stage: arguments inline (base64 JSON), result printed as the last line."""
    import base64
    import tempfile

    from clinasr.mlenv import run_stage_in_process

    if a.stage == "train" and "RANK" not in os.environ:
        argv = _sagemaker_cluster_command(a)
        if argv:
            return subprocess.call(argv)
    with tempfile.TemporaryDirectory() as tmp:
        args_f, res_f = Path(tmp) / "args.json", Path(tmp) / "result.json"
        args_f.write_bytes(base64.b64decode(a.args_b64))
        rc = run_stage_in_process(a.stage, args_f, res_f)
        if res_f.exists():       # under torchrun only global rank 0 writes a result
            print(res_f.read_text())
    return rc


def _sagemaker_cluster_command(a) -> list[str] | None:
    """On SageMaker (its resource config exists) with several instances or GPUs: the torchrun command that
    makes this instance one node of the job (``CLINASR_NPROC_PER_NODE``, ``CLINASR_MASTER_ADDR``/``_PORT``
    override what SageMaker's layout and the GPU count give)."""
    from clinasr.training.launch import SM_RESOURCE_CONFIG, sagemaker_torchrun

    rc_path = Path(os.environ.get("CLINASR_SM_RESOURCECONFIG") or SM_RESOURCE_CONFIG)
    if not rc_path.exists():
        return None
    layout = json.loads(rc_path.read_text())
    nproc = int(os.environ.get("CLINASR_NPROC_PER_NODE") or 0)
    if not nproc:
        import torch

        nproc = max(1, torch.cuda.device_count())
    if len(layout.get("hosts") or []) <= 1 and nproc == 1:
        return None
    argv = sagemaker_torchrun(["ml-stage-inline", "train", "--args-b64", a.args_b64], layout, nproc,
                              os.environ.get("CLINASR_MASTER_ADDR"), int(os.environ.get("CLINASR_MASTER_PORT") or 29500))
    argv[0] = str(Path(sys.executable).parent / "torchrun")
    print(f"SageMaker {layout['current_host']}: node {argv[argv.index('--node-rank') + 1]} of {len(layout['hosts'])}, "
          f"{nproc} processes: {' '.join(argv[:12])} ...", flush=True)
    return argv


def cmd_provenance(a) -> int:
    from clinasr import provenance as V

    log = V.ProvenanceLog()
    recs = log.records()
    if a.action == "verify":
        problems = V.verify(recs)
        if a.mirror and not problems:
            stamps, notes = V.collect_stamps(log.settings)
            for n in notes:
                print("warning: " + n)
            problems = V.verify_mirror(log) + V.verify_stamps(log, stamps)
        if problems:
            print(f"provenance chain BROKEN ({len(recs)} records):")
            for p in problems:
                print("  " + p)
            return 1
        print(f"provenance chain intact: {len(recs)} records, head {recs[-1]['hash'][:16] if recs else '-'}"
              + (f"; mirror and {len(stamps)} stamps agree" if a.mirror else ""))
        return 0
    if a.action == "openlineage":
        from clinasr import lineage

        events = lineage.openlineage_events(recs, a.namespace)
        if a.out:
            Path(a.out).write_text("".join(json.dumps(e) + "\n" for e in lineage.to_dicts(events)))
            print(f"{len(events)} OpenLineage events -> {a.out}")
        if a.url:
            print(f"{lineage.emit(events, a.url)} OpenLineage events sent to {a.url}")
        if not (a.out or a.url):
            print("give --out FILE and/or --url http://marquez:5000", file=sys.stderr)
            return 2
        return 0
    if a.node.startswith("models:/") and "@" in a.node:     # an alias: the version it points at now
        from clinasr import registry

        name, version = registry.resolve(a.node)
        a.node = f"models:/{name}/{version}"
    graph = V.lineage_graph(recs)
    if a.node not in graph["nodes"]:
        matches = [n for n in graph["nodes"] if a.node in n]
        if len(matches) != 1:
            print(f"no single node matches {a.node!r}; candidates: {matches[:20]}", file=sys.stderr)
            return 2
        a.node = matches[0]
    if a.action == "page":
        from clinasr import lineage

        out = Path(a.out or "lineage.html")
        out.write_text(lineage.page(recs, a.node))
        print(f"lineage page for {a.node}: {out.resolve()}")
        return 0
    walk = V.upstream if a.direction == "up" else V.downstream
    print(a.node)
    for n in walk(graph, a.node):
        meta = graph["nodes"][n]
        print(f"  {'<-' if a.direction == 'up' else '->'} {n}  [{meta.get('kind')}]")
    return 0


def cmd_evaluate(a) -> int:
    from clinasr import mlenv
    from clinasr.gate import decide, leaderboards_text, load_gate, render_html, score_references, summary
    from clinasr.settings import Settings
    from clinasr.tasks.evaluate_promote import transcript_cache

    gate = load_gate(a.gate)   # a bad gate config fails before anything is decoded
    sets, missing = [], {}
    for i, spec in enumerate(a.manifest or []):
        name, sep, path = spec.partition("=")
        sets.append({"name": name, "manifest": path} if sep else {"name": "validation" if i == 0 else f"set{i + 1}",
                                                                   "manifest": spec})
    if not a.no_heldout:   # the held-out sets the gate decides on (a missing or stale one fails it, named)
        from clinasr.tasks.evaluate_promote import heldout_sets

        held, missing = heldout_sets(a.terms_from or "", a.gate)
        sets = held + [s for s in sets if s["name"] not in {h["name"] for h in held}]
        for name, why in missing.items():
            print(f"warning: {why}", file=sys.stderr)
    if not sets:
        print("error: no evaluation sets: give --manifest or build the held-out sets (`clinasr evalsets build`)",
              file=sys.stderr)
        return 2
    out = Path(a.out)
    cache = transcript_cache(Settings.from_env())   # transcripts reused across runs (same model, same audio)
    cand = mlenv.run_stage("evaluate", {"model": a.model, "sets": sets, "output_dir": str(out / "candidate"),
                                        "max_rows": a.max_rows, "transcript_cache": cache})
    base = None
    if a.baseline:
        base = mlenv.run_stage("evaluate", {"model": a.baseline, "sets": sets, "output_dir": str(out / "baseline"),
                                            "max_rows": a.max_rows, "transcript_cache": cache})
    refs = score_references([] if a.no_references else (a.reference or gate["reference_models"]),
                            lambda i, spec: mlenv.run_stage("evaluate", {
                                "model": spec, "sets": sets, "max_rows": a.max_rows,
                                "max_utterances": gate["reference_max_utterances"], "transcript_cache": cache,
                                "output_dir": str(out / f"reference-{i + 1}")}),
                            mlenv.StageError, lambda m: print(m, file=sys.stderr))
    if a.no_heldout and gate["in_domain_set"] not in cand["sets"]:
        gate["in_domain_set"], gate["required_sets"] = sets[0]["name"], []
    decision = decide(cand, base, gate, "baseline", refs, missing_sets=missing)
    (out / "gate.json").write_text(json.dumps({"decision": decision, "candidate": cand, "baseline": base,
                                               "references": refs}, indent=1, default=str))
    (out / "gate.html").write_text(render_html(decision, cand, base, f"Gate report: {a.model}"))
    for name, m in cand["sets"].items():
        print(f"{name:<16} WER {m['wer']:.3f}  KER {m['ker'] if m['ker'] is None else round(m['ker'], 3)}  "
              f"negation acc {m['negation_accuracy']}  p95 {m['latency']['p95_s'] * 1000:.0f} ms  "
              f"scored {m['rows']['scored']}, skipped {m['rows']['skipped']} {m['rows']['skipped_by_reason'] or ''}")
    if any(len(b) > 1 for b in decision["leaderboards"].values()):
        print(leaderboards_text(decision["leaderboards"]))
    print(summary(decision))
    print(f"report: {out / 'gate.html'}  hypotheses: {out / 'candidate'}/<set>/hypotheses.jsonl")
    return 0 if decision["passed"] else 3


def cmd_evalsets(a) -> int:
    from clinasr import evalsets
    from clinasr.settings import Settings

    if a.action == "status":
        for st in evalsets.status():
            print(f"{st['name']:<18} {st['state']:<8} config {st['config_hash']}  {st.get('uri') or st.get('error')}")
        return 0
    s = Settings.from_env()
    cfg = evalsets.load_config()
    for name in a.only or evalsets.names(cfg):
        e = evalsets.build_and_stage(name, s.path("work", "evalsets"), s, workers=a.workers, force=a.force)
        print(f"{name:<18} {'built' if e['built'] else 'current'}  config {e['config_hash']}  {e['uri']}")
    return 0


def cmd_pronounce(a) -> int:
    from clinasr import mlenv

    res = mlenv.run_stage("pronounce", {"term": a.term, "out_dir": a.out, "pronunciations": a.pronunciations})
    print(f"{res['term']}: {'override in' if res['has_override'] else 'no override in'} {res['pronunciations']} "
          f"(version {res['version']})")
    for r in res["rows"]:
        print(f"  {r['engine']:<7} {r['source']:<15} {r['phonemes']}\n  {'':<23} clip: {r['clip']}")
    return 0


def cmd_lm(a) -> int:
    from clinasr import mlenv

    for f in (a.model, *a.text):
        if not Path(f).is_file():
            print(f"error: {f}: no such file", file=sys.stderr)
            return 2
    if a.order < 1 or a.beam_size < 1 or a.alpha < 0 or not 0 <= a.phantom_guard <= 1:
        print("error: --order and --beam-size must be at least 1, --alpha at least 0, --phantom-guard in [0, 1]",
              file=sys.stderr)
        return 2

    res = mlenv.run_stage("lm", {"model": a.model, "texts": a.text, "out": a.out, "order": a.order, "alpha": a.alpha,
                                 "beam_size": a.beam_size, "strategy": a.strategy,
                                 "phantom_guard": a.phantom_guard})
    sp = res["spec"]
    print(f"{res['out']}: {sp['order']}-gram LM over {sp['sentences']} sentences ({res['lm_bytes'] / 1e6:.1f} MB "
          f"gzipped), decoding {sp['strategy']}{' beam ' + str(sp['beam_size']) if 'beam_size' in sp else ''} "
          f"alpha {sp['ngram_lm_alpha']}, phantom guard "
          f"{'off' if sp['phantom_guard'] is False else 'at letter similarity ' + str(sp['phantom_guard']['min_similarity'])} "
          f"({res['seconds']} s)")
    return 0


def cmd_registry(a) -> int:
    import getpass

    from clinasr import registry

    if a.action == "rollback":
        if not a.reason:
            print("error: rollback needs --reason (it is recorded on the model versions)", file=sys.stderr)
            return 2
        res = registry.rollback(a.model_name, by=a.by or getpass.getuser(), reason=a.reason)
        if not a.no_deploy:
            from clinasr.deploy import deploy

            try:
                res["deployed"] = deploy(f"models:/{a.model_name}/{res['production']}")["version"]
            except RuntimeError as e:   # the registry is rolled back either way; say what serving did
                res["deployed"] = None
                print(f"warning: {e}", file=sys.stderr)
        _print_json(res)
        return 0
    _print_json({alias: registry.alias_version(a.model_name, alias) for alias in ("candidate", "production", "previous")})
    return 0


def cmd_serve(rest: list[str]) -> int:
    import os

    from clinasr.mlenv import service_command

    argv, env = service_command("serve", rest)
    os.execve(argv[0], argv, {**os.environ, **env})   # replaces this process: signals reach the server


def cmd_demo(a) -> int:
    from clinasr.demo import run_demo

    return run_demo(quick=a.quick)


def build_parser() -> argparse.ArgumentParser:
    from clinasr.datasets import SYNTHESIS_CONFIGS

    p = argparse.ArgumentParser(prog="clinasr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    pl = sub.add_parser("platform", help="start/stop/inspect the local platform",
                        description="Start, stop or inspect the local services (S3 server, MLflow, Airflow).")
    pl.add_argument("action", choices=["up", "down", "status", "init"],
                    help="init: the one-shot setup of a team deployment (metadata DB, pool, connections, buckets; "
                         "docker compose runs it in airflow-init)")
    pl.add_argument("--only", nargs="*", help="service name prefixes, e.g. s3 mlflow airflow")
    pl.set_defaults(fn=cmd_platform)

    d = sub.add_parser("data", help="synthetic clinical speech datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    b = dsub.add_parser("build", help="generate, synthesise and stage a dataset snapshot",
                        description="Transcripts -> TTS across accents -> augmentation -> manifests -> S3 snapshot.")
    b.add_argument("--terms", help="priority terms: comma-separated or a file (default: every drug in the lexicon)")
    b.add_argument("--per-term", type=int, default=5, help="utterances per priority term (default 5)")
    b.add_argument("--generator", choices=["grammar", "llm"], default="grammar")
    b.add_argument("--llm-base-url", help="OpenAI-compatible endpoint for --generator llm")
    b.add_argument("--llm-model", help="model name for --generator llm")
    b.add_argument("--template-family", choices=["a"], default="a",
                   help="sentence shapes: a (training); family b belongs to the clinical held-out evaluation set "
                        "(`clinasr evalsets build`)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--val-fraction", type=float, default=0.15, help="validation share, 0.10-0.20")
    b.add_argument("--no-augment", action="store_true", help="clean TTS audio only")
    b.add_argument("--accent-profiles", nargs="*", help="subset of: native second_language regional")
    b.add_argument("--synthesis", choices=list(SYNTHESIS_CONFIGS), default="default",
                   help="voice set: default (espeak-ng + CMU Flite) or kokoro (+ Kokoro-82M, a neural synthesiser, in "
                        "~17%% of rows; ~8x slower to render on the CPU; the measured choice for GPU fine-tunes) (default: default)")
    b.add_argument("--workers", type=int, default=2, help="parallel TTS workers")
    b.add_argument("--real-manifest", help="NeMo manifest of real de-identified recordings to mix in")
    b.add_argument("--real-ratio", type=float, default=5.0, help="synthetic:real ratio (default 5)")
    b.set_defaults(fn=cmd_data_build)

    m = sub.add_parser("ml-stage", help="(internal) run one ML stage in this interpreter",
                       description="Entry point of the ML runtime; called by clinasr.mlenv and by ML containers.")
    m.add_argument("stage")
    m.add_argument("--args-json", required=True)
    m.add_argument("--result-json", required=True)
    m.set_defaults(fn=cmd_ml_stage)

    mi = sub.add_parser("ml-stage-inline", help="(internal) ml-stage with inline arguments, for containers",
                        description="Entry point of the ML image on SageMaker/EC2: --args-b64 is base64 JSON.")
    mi.add_argument("stage")
    mi.add_argument("--args-b64", required=True)
    mi.set_defaults(fn=cmd_ml_stage_inline)

    v = sub.add_parser("provenance", help="verify the provenance chain, read lineage",
                       description="verify: check the hash chain (and its S3 mirror with --mirror). "
                                   "lineage NODE: what NODE came from (--direction up) or what used it (down). "
                                   "page NODE: the same as an HTML page for a reviewer (--out). "
                                   "openlineage: every record as an OpenLineage event (--out FILE, --url MARQUEZ).")
    v.add_argument("action", choices=["verify", "lineage", "page", "openlineage"])
    v.add_argument("node", nargs="?", default="",
                   help="artifact URI or part of it, e.g. models:/clinasr-asr@production (lineage, page)")
    v.add_argument("--out", help="output file (page, openlineage)")
    v.add_argument("--url", help="OpenLineage endpoint, e.g. http://marquez:5000 (openlineage)")
    v.add_argument("--namespace", default="clinasr", help="OpenLineage job namespace")
    v.add_argument("--direction", choices=["up", "down"], default="up")
    v.add_argument("--mirror", action="store_true",
                   help="also check the object-store copies (Object Lock bucket) and the chain heads stamped on "
                        "registered model versions and gate reports")
    v.set_defaults(fn=cmd_provenance)

    e = sub.add_parser("evaluate", help="score a model on evaluation sets; gate it against a baseline",
                       description="Transcribe each set with MODEL (a .nemo, s3:// URI or models:/name@alias), score "
                                   "WER, clinical-term accuracy, negation, slices and latency, and apply the gate "
                                   "(vs --baseline if given). Exit code 0: gate passed, 3: gate failed.")
    e.add_argument("--model", required=True)
    e.add_argument("--manifest", action="append",
                   help="[name=]dataset dir, s3:// snapshot or manifest .jsonl (repeatable), scored beside the held-out "
                        "sets (with --no-heldout the first is the in-domain set)")
    e.add_argument("--terms-from", help="dataset dir or s3:// snapshot whose priority terms select the clinical "
                                        "held-out rows (default: every term of the set)")
    e.add_argument("--no-heldout", action="store_true",
                   help="score only --manifest sets (the held-out sets of configs/evalsets.yaml are not used: a "
                        "quick look, not a gate decision)")
    e.add_argument("--baseline", help="model to compare with (e.g. models:/clinasr-asr@production)")
    e.add_argument("--gate", default="configs/gate/default.yaml", help="gate criteria YAML")
    e.add_argument("--out", default="eval-report", help="output directory (report, hypotheses)")
    e.add_argument("--max-rows", type=int, help="at most this many rows per set")
    e.add_argument("--reference", action="append",
                   help="off-the-shelf model to score beside MODEL for the leaderboard, e.g. whisper:tiny.en or "
                        "pretrained:nvidia/parakeet-tdt-0.6b-v2 (repeatable; default: the gate config's reference_models)")
    e.add_argument("--no-references", action="store_true", help="score no reference models")
    e.set_defaults(fn=cmd_evaluate)

    es = sub.add_parser("evalsets", help="build or inspect the held-out evaluation sets and the replay set",
                        description="build: render the sets of configs/evalsets.yaml whose config changed (or that were "
                                    "never built), stage each as a snapshot and index it by its config hash. status: "
                                    "which sets are current, stale or missing. The gate fails closed without them.")
    es.add_argument("action", choices=["build", "status"])
    es.add_argument("--only", nargs="*", help="set names (default: every set)")
    es.add_argument("--workers", type=int, default=2, help="parallel TTS workers")
    es.add_argument("--force", action="store_true", help="rebuild even if current")
    es.set_defaults(fn=cmd_evalsets)

    pr = sub.add_parser("pronounce", help="what each TTS engine says for a term, with and without its override",
                        description="Speaks TERM in a carrier sentence with every engine (espeak-ng, Piper), prints "
                                    "the phonemes each says by default and with the override from the pronunciation "
                                    "file, and writes a clip of each (to listen before synthesising a dataset).")
    pr.add_argument("term")
    pr.add_argument("--out", default="pronounce", help="directory for the clips")
    pr.add_argument("--pronunciations", default="configs/pronunciations.yaml", help="pronunciation override file")
    pr.set_defaults(fn=cmd_pronounce)

    lmp = sub.add_parser("lm", help="embed a subword n-gram language model in a .nemo for beam-search fusion",
                         description="Builds an interpolated Kneser-Ney n-gram LM over MODEL's own subword tokens from "
                                     "the sentences of --text (text files, .txt.gz, or NeMo manifests' text) and writes "
                                     "MODEL with it inside to --out. The service, evaluation and the gate then decode "
                                     "with beam search fused with it (CLINASR_DECODING=greedy turns it off); "
                                     "a fine-tune of the model gets it rebuilt from the same sentences (they travel in the "
                                     ".nemo) and its own training transcripts. Measured: better term accuracy, more "
                                     "phantom drugs, which the phantom guard vetoes (docs/benchmarks.md). Never give it "
                                     "evaluation-set text.")
    lmp.add_argument("model", help="the .nemo to give an LM")
    lmp.add_argument("--text", nargs="+", required=True, help="training text: .txt, .txt.gz or manifest .jsonl")
    lmp.add_argument("--out", required=True, help="where to write the model with the LM")
    lmp.add_argument("--order", type=int, default=4, help="n-gram order over subword tokens (default 4)")
    lmp.add_argument("--alpha", type=float, default=0.3, help="LM weight in fusion (default 0.3, measured best of 0.2-1.0)")
    lmp.add_argument("--beam-size", type=int, default=4, help="beam width (default 4)")
    lmp.add_argument("--strategy", default="malsd_batch", choices=["malsd_batch", "greedy_batch"],
                     help="NeMo TDT decoding strategy to fuse the LM into (default malsd_batch)")
    lmp.add_argument("--phantom-guard", type=float, default=0.5, metavar="SIM",
                     help="keep the greedy transcript when the LM writes a drug, dose, route or frequency spelled unlike "
                          "the greedy words it replaced (letter similarity below SIM; default 0.5; 0 turns the guard "
                          "off; clinasr.phantom_guard)")
    lmp.set_defaults(fn=cmd_lm)

    r = sub.add_parser("registry", help="show model aliases or roll production back",
                       description="show: the candidate/production/previous versions. rollback: production goes back "
                                   "to the previous production version (recorded with who and why).")
    r.add_argument("action", choices=["show", "rollback"])
    r.add_argument("--model-name", default="clinasr-asr")
    r.add_argument("--reason", help="why (rollback; required)")
    r.add_argument("--by", help="who (default: this user)")
    r.add_argument("--no-deploy", action="store_true", help="rollback: only move aliases, do not reload serving")
    r.set_defaults(fn=cmd_registry)

    sv = sub.add_parser("serve", help="run the OpenAI-compatible transcription service", add_help=False,
                        description="Starts clinasr.serving in the ML runtime; `clinasr serve --help` lists its options.")
    sv.add_argument("rest", nargs=argparse.REMAINDER)

    de = sub.add_parser("demo", help="run the flywheel DAGs end to end on the local platform",
                        description="Triggers the DAGs through Airflow's REST API (as the UI does), waits, summarises.")
    de.add_argument("--quick", action="store_true", help="smallest dataset (for tests)")
    de.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:          # its options belong to the server (ML runtime)
        return cmd_serve(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args) or 0
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
