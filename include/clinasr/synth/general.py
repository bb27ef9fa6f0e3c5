"""General (non-clinical) English sentences, for training the small embedded base model.

The source is English prose a package ships: CPython's standard-library documentation — the
``pydoc_data.topics`` help pages and the docstrings of the standard-library modules. ``extract()`` turns
it into plain spoken sentences (no code, digits, symbols or shouting; 4–24 words; normalised with the
shared normaliser) and drops every sentence that names a drug of the clinical lexicon, so the base model
has never heard a clinical term. The result is checked in (``data/general_en.txt.gz``) with a header
saying which Python produced it, so a base model's data can be read back exactly; ``clinasr data
general-text --rebuild`` regenerates it.

``utterances()`` turns the sentences into transcript rows that the synthesis pipeline renders like any
other (``generator: general:cpython-docs``, no terms, never negated).
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import platform
import random
import re
import sysconfig
from pathlib import Path

from clinasr.textnorm import normalize

TEXT_PATH = Path(__file__).resolve().parents[1] / "data" / "general_en.txt.gz"
GENERATOR = "general:cpython-docs"
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo"}
_CODE = re.compile(r"[_=(){}\[\]<>*\\/|#@$%^~`]|\.\.\.|--|\d|\b[a-z]+\.[a-z]+|https?")


def _raw_texts() -> list[str]:
    import pydoc_data.topics as topics

    texts = list(topics.topics.values())
    std = Path(sysconfig.get_paths()["stdlib"])
    for p in sorted(std.rglob("*.py")):
        if _SKIP_DIRS & set(p.relative_to(std).parts):
            continue
        try:
            tree = ast.parse(p.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if doc := ast.get_docstring(node):
                    texts.append(doc)
    return texts


def sentences_from(text: str) -> list[str]:
    """Spoken-prose sentences of one help page or docstring (code blocks, lists and symbols dropped)."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        if not lines or lines[0].startswith("  ") or lines[0].lstrip().startswith((">>>", "-", "*", "+", ":")):
            continue
        for s in re.split(r"(?<=[.!?;:])\s+", " ".join(line.strip() for line in lines)):
            s = s.strip().rstrip(".;:")
            words = s.split()
            if _CODE.search(s) or not 4 <= len(words) <= 24:
                continue
            if sum(1 for w in words if w.isupper() and len(w) > 1) > 1:   # acronym soup reads badly
                continue
            n = normalize(s)
            if len(n.split()) >= 4:
                out.append(n)
    return out


def _clinical_terms() -> list[str]:
    from clinasr.synth.lexicon import load_lexicon

    lex = load_lexicon()
    return sorted({normalize(d) for d in lex.drugs} | set(lex.brands))


def extract() -> tuple[list[str], int]:
    """(unique sentences, how many were dropped for naming a clinical drug), in a stable order."""
    terms = _clinical_terms()
    found = sorted({s for t in _raw_texts() for s in sentences_from(t)})
    keep = [s for s in found if not any(f" {t} " in f" {s} " for t in terms)]
    return keep, len(found) - len(keep)


def write(path: Path = TEXT_PATH) -> dict:
    sents, dropped = extract()
    body = "\n".join(sents) + "\n"
    header = (f"# general English sentences from CPython {platform.python_version()} documentation "
              f"(pydoc_data.topics + standard-library docstrings); {len(sents)} sentences; "
              f"{dropped} dropped for naming a clinical drug; built by clinasr.synth.general.write\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:   # mtime 0: the same sentences give the same bytes
        f.write((header + body).encode())
    return {"path": str(path), "sentences": len(sents), "dropped_clinical": dropped, "python": platform.python_version()}


def load(path: Path = TEXT_PATH) -> list[str]:
    lines = gzip.decompress(Path(path).read_bytes()).decode().splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def source_version(path: Path = TEXT_PATH) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def utterances(n: int, seed: int = 0, path: Path = TEXT_PATH) -> list[dict]:
    """``n`` transcript rows: every sentence once (shuffled by ``seed``) before any repeats.

    A repeated sentence gets a new utt_id (and so another voice and augmentation); the pipeline's
    text-disjoint split keeps all copies of one sentence on the same side."""
    sents = load(path)
    if not sents:
        raise ValueError(f"{path} holds no sentences")
    version = source_version(path)
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        order = sents[:]
        rng.shuffle(order)
        for s in order[: n - len(out)]:
            k = len(out)
            out.append({"utt_id": hashlib.sha256(f"{seed}|general|{k}|{s}".encode()).hexdigest()[:16], "text": s,
                        "term": None, "terms": [], "negated": False, "negation_cue": None, "generator": GENERATOR,
                        "template_id": "general", "seed": seed, "lexicon_version": version})
    return out
