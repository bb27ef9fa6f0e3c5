"""A subword n-gram language model for shallow fusion in transducer decoding.

The base models learn English from ~100 h of synthetic speech: on an accent they never heard they write
sounds, not words ("we agointed by ch if dewayed a'nice" for "we are going to the beach if the weather is nice").
NeMo's batched TDT decoders (beam search ``malsd_batch``, or greedy) fuse an n-gram LM over the model's own subword
tokens (NGPU-LM, ``ngram_lm_model`` / ``ngram_lm_alpha``), in plain PyTorch on a CPU. Its usual recipe builds the
ARPA file with KenLM's ``lmplz``, a C++ program that no package installs; this module estimates the same kind of
model (interpolated Kneser-Ney, one discount per order from the count-of-counts) in Python from the token ids,
and writes it in the ARPA format NeMo reads: each token id ``t`` as the character ``chr(t + 100)``.

The LM travels inside the model's .nemo (:func:`embed`; ``clinasr lm``), the Transcriber decodes with it offline
(streaming keeps greedy), and a fine-tune gets it rebuilt with its own transcripts (:func:`rebuild`). Measured on
base v7 (docs/benchmarks.md, "Decoding with an n-gram LM"): everyday-English WER 0.385 -> 0.310 (beam 4, alpha
0.3), and on its fine-tunes KER -77..-84% on held-out voices and engine with <= 0.6 phantom drugs per 100 everyday
utterances, but +0.018..+0.028 general WER against the base with its LM. Since 2026-12-03 the shipped base
carries one and the CPU recipe merges its weights with the base at 0.7 (chosen on validation sets; docs/benchmarks.md
"The CPU recipe chosen on validation sets"). On a CPU the Transcriber decodes with :mod:`clinasr.fusion_cpu`'s exact shortcuts (the LM's rows cached per
state): beam 4 + LM at 0.68x NeMo's own time, 1.8x greedy's (bench/results/fusion-cpu-v8.json).
"""
from __future__ import annotations

import gzip
import io
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

TOKEN_OFFSET = 100          # NeMo's DEFAULT_TOKEN_OFFSET (nemo.collections.asr.parts.submodules.ngram_lm.constants)
BOS, EOS, UNK = "<s>", "</s>", "<unk>"


class LMError(ValueError):
    """The text or order cannot make a language model."""


def _discount(counts: Counter) -> float:
    """Kneser-Ney's absolute discount D = n1 / (n1 + 2 n2) from how many n-grams occur once and twice."""
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    if n1 == 0:
        return 0.5
    return min(max(n1 / (n1 + 2 * n2), 0.05), 0.95)


def kneser_ney(sentences: Iterable[Sequence[int]], order: int = 4) -> dict[int, dict[tuple, tuple[float, float]]]:
    """Interpolated Kneser-Ney over token-id sentences: ``{n: {ngram: (log10 p, log10 backoff)}}``.

    The highest order uses raw counts, lower orders continuation counts (how many distinct tokens precede an
    n-gram), except n-grams that open with ``<s>``, which have no left context and keep raw counts."""
    if order < 1:
        raise LMError(f"order must be at least 1, not {order}")
    raw: list[Counter] = [Counter() for _ in range(order + 1)]
    n_sent = 0
    for toks in sentences:
        seq = (BOS, *toks, EOS)
        if len(seq) <= 2:
            continue
        n_sent += 1
        for n in range(1, order + 1):
            for i in range(len(seq) - n + 1):
                raw[n][seq[i:i + n]] += 1
    if n_sent == 0:
        raise LMError("no non-empty sentence to estimate a language model from")
    raw[1].pop((BOS,), None)
    # the counts each order is estimated from
    counts: list[Counter] = [Counter() for _ in range(order + 1)]
    counts[order] = raw[order]
    for n in range(1, order):
        cont = Counter()
        for g in raw[n + 1]:
            cont[g[1:]] += 1
        for g, c in raw[n].items():
            counts[n][g] = c if g[0] == BOS else cont.get(g, 0) or c
    model: dict[int, dict[tuple, list[float]]] = {n: {} for n in range(1, order + 1)}
    # unigrams: continuation probability interpolated with a uniform distribution over the seen tokens
    vocab = [g for g in counts[1]]
    d1 = _discount(counts[1])
    total1 = sum(counts[1].values())
    uniform = 1.0 / (len(vocab) + 1)             # +1: <unk>
    gamma1 = d1 * len(vocab) / total1
    probs: dict[int, dict[tuple, float]] = {1: {}}
    for g in vocab:
        probs[1][g] = max(counts[1][g] - d1, 0.0) / total1 + gamma1 * uniform
    probs[1][(UNK,)] = gamma1 * uniform
    for n in range(2, order + 1):
        d = _discount(counts[n])
        ctx_total: dict[tuple, int] = defaultdict(int)
        ctx_types: dict[tuple, int] = defaultdict(int)
        for g, c in counts[n].items():
            ctx_total[g[:-1]] += c
            ctx_types[g[:-1]] += 1
        probs[n] = {}
        for g, c in counts[n].items():
            h = g[:-1]
            lower = _prob(probs, g[1:])
            probs[n][g] = max(c - d, 0.0) / ctx_total[h] + d * ctx_types[h] / ctx_total[h] * lower
        for h, tot in ctx_total.items():      # the mass left for what the context has not been seen with
            bow = d * ctx_types[h] / tot
            model[n - 1].setdefault(h, [0.0, 0.0])[1] = math.log10(bow) if bow > 0 else -99.0
    for n in range(1, order + 1):
        for g, p in probs[n].items():
            model[n].setdefault(g, [0.0, 0.0])[0] = math.log10(p)
    model[1].setdefault((BOS,), [0.0, 0.0])[0] = -99.0     # never predicted; only a context
    return {n: {g: (v[0], v[1]) for g, v in model[n].items()} for n in model}


def _prob(probs: dict[int, dict[tuple, float]], g: tuple) -> float:
    """p(g[-1] | g[:-1]) by backing off to shorter histories (interpolated values already include lower orders)."""
    if len(g) == 1:
        return probs[1].get(g, probs[1][(UNK,)])
    p = probs[len(g)].get(g)
    return p if p is not None else _prob(probs, g[1:])


def log10_prob(model: dict[int, dict[tuple, tuple[float, float]]], history: Sequence, token) -> float:
    """log10 p(token | history) under ``model`` as an ARPA reader computes it (back-off weights to shorter
    histories); ``history`` may start with ``<s>``; a token the model never saw is ``<unk>``."""
    order = max(model)
    h = tuple(history)[-(order - 1):] if order > 1 else ()
    if (token,) not in model[1]:
        token = UNK
    bow = 0.0
    while True:
        g = (*h, token)
        if g in model[len(g)]:
            return bow + model[len(g)][g][0]
        bow += model[len(h)][h][1] if h in model.get(len(h), {}) else 0.0
        h = h[1:]


def _symbol(t) -> str:
    return t if isinstance(t, str) else chr(int(t) + TOKEN_OFFSET)


def write_arpa(model: dict[int, dict[tuple, tuple[float, float]]], path: str | Path) -> Path:
    """Write ``model`` (from :func:`kneser_ney`) as an ARPA file (``.gz`` compresses)."""
    path = Path(path)
    order = max(model)
    opener = gzip.open if path.suffix == ".gz" else open
    path.parent.mkdir(parents=True, exist_ok=True)
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\\data\\\n")
        for n in range(1, order + 1):
            f.write(f"ngram {n}={len(model[n])}\n")
        for n in range(1, order + 1):
            f.write(f"\n\\{n}-grams:\n")
            for g in sorted(model[n], key=lambda g: tuple(_symbol(t) for t in g)):
                lp, bow = model[n][g]
                line = f"{lp:.6f}\t{' '.join(_symbol(t) for t in g)}"
                if n < order and bow != 0.0:
                    line += f"\t{bow:.6f}"
                f.write(line + "\n")
        f.write("\n\\end\\\n")
    return path


# -- the LM travels inside the model's .nemo file ------------------------------------------------------------------
# A .nemo is an uncompressed tar; NeMo restores what it knows and ignores other members. The LM, how to decode with
# it and the sentences it was estimated from are members of their own, so the registry, S3, serving and the gate
# move one file as before, and a fine-tune can rebuild the LM without the files it came from.
LM_MEMBER, DECODING_MEMBER, TEXT_MEMBER = "./clinasr_lm.arpa.gz", "./clinasr_decoding.json", "./clinasr_lm_text.txt.gz"
OURS = (LM_MEMBER, DECODING_MEMBER, TEXT_MEMBER)
DEFAULT_DECODING = {"strategy": "malsd_batch", "beam_size": 4, "ngram_lm_alpha": 0.3}   # alpha 0.3 measured best


def _members(nemo_path: str | Path, names: Sequence[str]) -> tuple[dict[str, bytes], set[str]]:
    """The bytes of ``names`` in a .nemo, and which of :data:`OURS` it has (read without the rest)."""
    import tarfile

    with tarfile.open(nemo_path, "r:") as t:
        present = {n for n in t.getnames() if n in OURS}
        return {n: t.extractfile(n).read() for n in names if n in present}, present


def embedded(nemo_path: str | Path) -> dict | None:
    """The decoding spec a .nemo carries (:data:`DECODING_MEMBER`), or None for a plain model."""
    m, present = _members(nemo_path, [DECODING_MEMBER])
    if DECODING_MEMBER not in m:
        return None
    if LM_MEMBER not in present:
        raise LMError(f"{Path(nemo_path).name} names an n-gram LM in {DECODING_MEMBER} but does not carry {LM_MEMBER}")
    return json.loads(m[DECODING_MEMBER])


def embed(nemo_path: str | Path, lm: str | Path, spec: dict, sentences: Sequence[str], out: str | Path | None = None) -> Path:
    """Write ``nemo_path`` with the LM ``lm`` (a gzipped ARPA file), the decoding ``spec`` and the ``sentences`` the
    LM was estimated from inside it to ``out`` (default: in place, through a temporary file)."""
    import shutil
    import tarfile
    import tempfile

    src, dst = Path(nemo_path), Path(out or nemo_path)
    text = gzip.compress("".join(t + "\n" for t in sentences).encode("utf-8"), mtime=0)
    with tempfile.NamedTemporaryFile(dir=dst.parent, suffix=".nemo.part", delete=False) as tmp:
        part = Path(tmp.name)
    try:
        with tarfile.open(src, "r:") as t_in, tarfile.open(part, "w:") as t_out:
            for info in t_in.getmembers():
                if info.name not in OURS:
                    t_out.addfile(info, t_in.extractfile(info) if info.isfile() else None)
            for name, data in ((LM_MEMBER, Path(lm).read_bytes()), (DECODING_MEMBER, json.dumps(spec, indent=1).encode()),
                               (TEXT_MEMBER, text)):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                t_out.addfile(info, io.BytesIO(data))
        shutil.copymode(src, part)   # a temporary file is 0600; the model keeps its own mode
        shutil.move(str(part), dst)
    finally:
        part.unlink(missing_ok=True)
    return dst


def copy_lm(src: str | Path, dst: str | Path, out: str | Path | None = None, **spec_changes) -> Path | None:
    """The LM, decoding spec and sentences ``src`` carries, put into ``dst`` (written to ``out``, default in place)
    with its spec changed as asked; None, and nothing written, when ``src`` carries no LM. For a model re-saved by
    NeMo (``save_to`` writes only what NeMo knows, so a re-saved .nemo has lost its LM) or a copy that decodes
    otherwise (e.g. ``phantom_guard=False``)."""
    import tempfile

    m, _ = _members(src, OURS)
    if DECODING_MEMBER not in m:
        return None
    if LM_MEMBER not in m or TEXT_MEMBER not in m:
        raise LMError(f"{Path(src).name} names an n-gram LM but lacks {LM_MEMBER} or {TEXT_MEMBER}")
    spec = {**json.loads(m[DECODING_MEMBER]), **spec_changes}
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "lm.arpa.gz").write_bytes(m[LM_MEMBER])
        return embed(dst, Path(d) / "lm.arpa.gz", spec, gzip.decompress(m[TEXT_MEMBER]).decode().splitlines(), out)


def decoding_config(model, nemo_path: str | Path, workdir: str | Path, mode: str | None = None):
    """The NeMo decoding config that ``nemo_path``'s embedded spec asks for, with its LM written (plain ARPA, as
    NeMo reads it; it loads the file once, when the strategy changes) under ``workdir``; None for a plain model or
    when ``mode`` (``CLINASR_DECODING``) is ``greedy``. Returns ``(cfg, spec)``."""
    import copy
    import os

    from omegaconf import open_dict

    mode = (mode if mode is not None else os.environ.get("CLINASR_DECODING", "")).strip().lower()
    if mode not in ("", "model", "greedy"):
        raise LMError(f"CLINASR_DECODING must be 'model' (what the .nemo asks for) or 'greedy', not {mode!r}")
    spec = embedded(nemo_path)
    if spec is None or mode == "greedy":
        return None, None
    arpa = Path(workdir) / "clinasr_lm.arpa"
    with gzip.open(io.BytesIO(_members(nemo_path, [LM_MEMBER])[0][LM_MEMBER]), "rt", encoding="utf-8") as f_in, \
            open(arpa, "w", encoding="utf-8") as f_out:
        f_out.write(f_in.read())
    cfg = copy.deepcopy(model.cfg.decoding)
    alpha = float(spec.get("ngram_lm_alpha", DEFAULT_DECODING["ngram_lm_alpha"]))
    with open_dict(cfg):
        cfg.strategy = spec.get("strategy", DEFAULT_DECODING["strategy"])
        if cfg.strategy == "greedy_batch":
            cfg.greedy.ngram_lm_model, cfg.greedy.ngram_lm_alpha = str(arpa), alpha
        else:
            # allow_cuda_graphs off: on an H200 (2026-12-03) NeMo's CUDA-graph beam search (modified_alsd_cuda_graphs)
            # died with "an illegal memory access" scoring a base after training; a CPU never uses the graphs
            cfg.beam = {"beam_size": int(spec.get("beam_size", DEFAULT_DECODING["beam_size"])),
                        "return_best_hypothesis": True, "ngram_lm_model": str(arpa), "ngram_lm_alpha": alpha,
                        "allow_cuda_graphs": False}
    return cfg, spec


def _tokenizer(nemo_path: str | Path):
    """The sentencepiece tokenizer inside a .nemo (read from the tar: no model restore)."""
    import tarfile

    import sentencepiece as spm

    if not Path(nemo_path).is_file():
        raise LMError(f"model not found: {nemo_path}")
    try:
        t = tarfile.open(nemo_path, "r:")
    except tarfile.TarError:
        raise LMError(f"{Path(nemo_path).name} is not a .nemo file (not a tar archive)") from None
    with t:
        names = [n for n in t.getnames() if n.endswith("tokenizer.model")]
        if not names:
            raise LMError(f"{Path(nemo_path).name} has no sentencepiece tokenizer.model: an n-gram LM needs its tokens")
        return spm.SentencePieceProcessor(model_proto=t.extractfile(names[0]).read())


def texts_from(path: str | Path) -> list[str]:
    """Sentences of a text file (``.txt``/``.txt.gz``, one a line, ``#`` comments) or of a NeMo manifest's ``text``."""
    p = Path(path)
    if not p.exists():
        raise LMError(f"LM text not found: {p}")
    if p.name.endswith((".jsonl", ".json")):
        out = []
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    out.append(str(json.loads(line)["text"]).strip().lower())
                except (ValueError, KeyError, TypeError):
                    raise LMError(f"{p.name} line {i}: not a manifest row with a 'text'") from None
        return [t for t in out if t]
    with (gzip.open if p.suffix == ".gz" else open)(p, "rt", encoding="utf-8") as f:
        return [line.strip().lower() for line in f if line.strip() and not line.startswith("#")]


def rebuild(src_nemo: str | Path, dst_nemo: str | Path, texts: Sequence[str | Path], log=print) -> dict | None:
    """Give ``dst_nemo`` (a fine-tune of ``src_nemo``, saved by NeMo, which drops unknown members) an LM like its
    base's, rebuilt from the sentences of the base's LM plus ``texts`` (the fine-tune's training transcripts): the
    base's LM alone scores the new drug names as unlikely (on base v7's fine-tunes, clinical term accuracy 0.52-0.55
    with it, 0.83 with the clinical transcripts added; docs/benchmarks.md). Returns the new spec, or None."""
    spec = embedded(src_nemo)
    if spec is None:
        return None
    m, _ = _members(src_nemo, [TEXT_MEMBER])
    if TEXT_MEMBER not in m:
        log(f"[lm] WARNING {Path(src_nemo).name}'s LM came without its sentences: the fine-tune gets no LM and "
            "decodes greedily (build one: clinasr lm --help)")
        return None
    base_text = gzip.decompress(m[TEXT_MEMBER]).decode("utf-8").splitlines()
    part = Path(dst_nemo).with_suffix(".lm.nemo")
    res = build_stage({"model": str(dst_nemo), "texts": [str(t) for t in texts], "out": str(part),
                       "order": spec.get("order", 4), "alpha": spec.get("ngram_lm_alpha"),
                       "beam_size": spec.get("beam_size"), "strategy": spec.get("strategy"),
                       "phantom_guard": spec.get("phantom_guard")},
                      inherited=(base_text, spec.get("texts", [])))
    part.replace(dst_nemo)
    log(f"[lm] {Path(dst_nemo).name}: {res['spec']['order']}-gram LM rebuilt from its base's LM text and its own "
        f"training transcripts ({res['spec']['sentences']} sentences, {res['seconds']} s)")
    return res["spec"]


def build_stage(args: dict, inherited: tuple[list[str], list[dict]] | None = None) -> dict:
    """ML-runtime stage ``lm``: build an n-gram LM over ``model``'s tokens from ``texts`` and write the model with
    it embedded to ``out`` (args: model, texts, out, order, alpha, beam_size, strategy). ``inherited``: sentences
    and source records of a base model's LM that come first (:func:`rebuild`)."""
    import hashlib
    import tempfile
    import time

    t0 = time.time()
    model, out = Path(args["model"]), Path(args["out"])
    order = int(args.get("order", 4))
    sp = _tokenizer(model)
    sentences, sources = (list(inherited[0]), list(inherited[1])) if inherited else ([], [])
    for src in args["texts"]:
        s = texts_from(src)
        sentences.extend(s)
        sources.append({"path": Path(src).name, "sha256": hashlib.sha256(Path(src).read_bytes()).hexdigest(),
                        "sentences": len(s)})
    if not sentences:
        raise LMError("the LM texts hold no sentence")
    strategy = args.get("strategy") or DEFAULT_DECODING["strategy"]
    alpha = args.get("alpha")
    spec = {"strategy": strategy, "ngram_lm_alpha": float(DEFAULT_DECODING["ngram_lm_alpha"] if alpha is None else alpha),
            "order": order, "texts": sources, "sentences": len(sentences), "method": "interpolated Kneser-Ney"}
    if strategy != "greedy_batch":
        spec["beam_size"] = int(args.get("beam_size") or DEFAULT_DECODING["beam_size"])
    from clinasr.phantom_guard import bound

    guard = bound(args.get("phantom_guard"))   # None: the default bound; 0 or False: off
    spec["phantom_guard"] = {"min_similarity": guard} if guard else False
    with tempfile.TemporaryDirectory(prefix="clinasr-lm-") as d:
        arpa = write_arpa(kneser_ney((sp.encode(t) for t in sentences), order=order), Path(d) / "lm.arpa.gz")
        size = arpa.stat().st_size
        out.parent.mkdir(parents=True, exist_ok=True)
        embed(model, arpa, spec, sentences, out)
    return {"out": str(out), "spec": spec, "lm_bytes": size, "seconds": round(time.time() - t0, 1)}
