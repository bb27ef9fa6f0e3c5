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

A second, larger text (``data/general_en_v2.txt.gz``, issue 21, built by ``write_v2()``) adds two more
sources that Debian packages ship: the usage examples of WordNet 3.0 (package ``wordnet-base``, WordNet 3.0
licence) and the non-offensive fortune cookies (packages ``fortunes-min`` and ``fortunes``, BSD licence),
besides the CPython sentences of the first text. It drops every sentence naming a lexicon term (drug, route,
frequency or dose) and every sentence equal to, or sharing six consecutive words with, a sentence of the
general held-out evaluation set. The first text is left as it is: fine-tune replay sets were made from it.
Rows drawn from the second text carry ``generator: general:wordnet+fortunes+cpython-docs``.
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

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
TEXT_PATH = DATA_DIR / "general_en.txt.gz"
GENERATOR = "general:cpython-docs"
TEXT_V2_PATH = DATA_DIR / "general_en_v2.txt.gz"
GENERATOR_V2 = "general:wordnet+fortunes+cpython-docs"
EVAL_TEXT_PATH = DATA_DIR / "eval_general_en.txt"
WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNE_DIR = Path("/usr/share/games/fortunes")
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


def generator_for(path: Path = TEXT_PATH) -> str:
    """The generator name of rows drawn from the text at ``path`` (the v2 text has its own)."""
    return GENERATOR_V2 if Path(path).name == TEXT_V2_PATH.name else GENERATOR


def utterances(n: int, seed: int = 0, path: Path = TEXT_PATH) -> list[dict]:
    """``n`` transcript rows: every sentence once (shuffled by ``seed``) before any repeats.

    A repeated sentence gets a new utt_id (and so another voice and augmentation); the pipeline's
    text-disjoint split keeps all copies of one sentence on the same side."""
    generator = generator_for(path)
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
                        "term": None, "terms": [], "negated": False, "negation_cue": None, "generator": generator,
                        "domain": "general", "template_id": "general", "seed": seed, "lexicon_version": version})
    return out


# ---- the larger text (issue 21): WordNet examples + fortune cookies + the CPython sentences ---------------------
WORDNET_PACKAGE = "wordnet-base"
FORTUNE_PACKAGES = ("fortunes-min", "fortunes")
# fortune files left out: drawings, text that is not English, code, and topics too close to the clinic or unkind
FORTUNE_SKIP = frozenset({"art", "ascii-art", "translate-me", "perl", "drugs", "medicine", "ethnic"})
MAX_TOKEN_CHARS = 20
LEAK_NGRAM = 6
_NOT_PROSE = re.compile(r"[^A-Za-z ,.!?;:'\"-]")   # letters and light punctuation only: no symbols, accents or digits
_SPOKEN_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
_ABBREV = re.compile(r"(?:^|\s)(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|Gen|Col|Capt|Lt|Sgt|Rev|Mt|vs|etc|et|al|Inc|Co|[A-Z])\.$")
_ATTRIBUTION = re.compile(r"^\s*(?:--|\u2014|-\s*[A-Z])")     # "\t\t-- Mark Twain, Huckleberry Finn", "- Blake"
_INLINE_ATTRIBUTION = re.compile(r"(?:^|\s|[\"'.!?,])\s*(?:--|-|\u2014)\s*[A-Z][^.!?]*$")  # '... more." - Blake, "Hell"


def _missing(path: Path, package: str) -> FileNotFoundError:
    return FileNotFoundError(f"{path} is missing: it comes with the Debian package {package} "
                             f"(apt-get install -y {package}, or bash scripts/setup.sh)")


def spoken_sentence(s: str) -> str | None:
    """One raw sentence as normalised spoken prose, or None when it is not plain everyday prose: code,
    digits or symbols, accents, acronym soup, spelled-out letters, a word over 20 characters, or not 4–24
    words once normalised."""
    s = s.strip().strip("\"'").strip().rstrip(".;:,").strip()
    if not s or _CODE.search(s) or _NOT_PROSE.search(s):
        return None
    words = s.split()
    if not 4 <= len(words) <= 24 or sum(1 for w in words if w.isupper() and len(w) > 1) > 1:
        return None
    n = normalize(s)
    toks = n.split()
    if not 4 <= len(toks) <= 24:
        return None
    if any(len(t) > MAX_TOKEN_CHARS or not _SPOKEN_WORD.fullmatch(t) for t in toks):
        return None
    if sum(1 for t in toks if len(t) == 1 and t not in ("a", "i")) > 1:   # "a b jones", "i o co op"
        return None
    return n


def _split_sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?;:])\s+", text)
    out: list[str] = []
    for p in parts:   # "Dr." or an initial does not end a sentence
        if out and _ABBREV.search(out[-1]):
            out[-1] += " " + p
        else:
            out.append(p)
    return out


def wordnet_examples(line: str) -> list[str]:
    """The double-quoted usage examples of one line of a WordNet ``data.*`` file (not the definition)."""
    if line.startswith(" ") or " | " not in line:   # the licence header lines start with two spaces
        return []
    return re.findall(r'"([^"]+)"', line.split(" | ", 1)[1])


def wordnet_sentences(directory: Path = WORDNET_DIR) -> list[str]:
    """Spoken sentences of WordNet 3.0's usage examples ("he ran a mile"), in file order, duplicates kept."""
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        p = Path(directory) / f"data.{pos}"
        if not p.exists():
            raise _missing(p, WORDNET_PACKAGE)
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            out += [n for ex in wordnet_examples(line) if (n := spoken_sentence(ex))]
    return out


def fortune_entries(text: str) -> list[str]:
    """The cookies of one fortune file (separated by lines holding only ``%``)."""
    return [e for e in re.split(r"^%[ \t]*$", text, flags=re.M) if e.strip()]


def fortune_sentence_split(entry: str) -> list[str]:
    """Spoken sentences of one fortune cookie: attributions ("-- Name") and everything after them dropped,
    overstrike (bold/underline by backspace) undone, inline dashes and ellipses read as pauses."""
    entry = re.sub(r".\x08", "", entry)
    lines = []
    for line in entry.splitlines():
        if _ATTRIBUTION.match(line):
            break
        lines.append(line.strip())
    text = " ".join(lines)
    text = _INLINE_ATTRIBUTION.sub("", text)          # "... and back again. -- Bilbo Baggins"
    text = re.sub(r"--|\.\.\.|\u2014", ", ", text).replace('"', " ")
    text = re.sub(r"\s+", " ", text).strip()
    return [n for s in _split_sentences(text) if (n := spoken_sentence(s))]


def fortune_files(directory: Path = FORTUNE_DIR) -> list[Path]:
    """The non-offensive fortune files used (never the ``off/`` directory of fortunes-off), sorted."""
    d = Path(directory)
    if not (d / "fortunes").exists():
        raise _missing(d / "fortunes", " and ".join(FORTUNE_PACKAGES))
    return sorted(p for p in d.iterdir() if p.is_file() and not p.is_symlink() and not p.suffix
                  and p.name not in FORTUNE_SKIP)


def fortune_sentences(directory: Path = FORTUNE_DIR) -> list[str]:
    """Spoken sentences of the non-offensive fortune cookies, in file order, duplicates kept."""
    out = []
    for p in fortune_files(directory):
        for entry in fortune_entries(p.read_text(encoding="utf-8", errors="replace")):
            out += fortune_sentence_split(entry)
    return out


def _eval_leak_check(path: Path = EVAL_TEXT_PATH, n: int = LEAK_NGRAM):
    """A test: does a normalised sentence equal, or share ``n`` consecutive words with, an evaluation sentence?"""
    sents = [normalize(x) for x in Path(path).read_text().splitlines() if x.strip() and not x.startswith("#")]
    exact = set(sents)
    grams = {tuple(w[i:i + n]) for s in sents for w in [s.split()] for i in range(len(w) - n + 1)}

    def leaks(s: str) -> bool:
        w = s.split()
        return s in exact or any(tuple(w[i:i + n]) in grams for i in range(len(w) - n + 1))
    return leaks


def _lexicon_check():
    """A test: does a normalised sentence name a lexicon term — a drug or brand (with this installation's
    reviewed additions), or the shipped lexicon's route, frequency or dose ("twenty milligrams")?"""
    from clinasr import metrics
    from clinasr.synth.lexicon import LEXICON_PATH

    inventory = metrics.phantom_inventory(str(LEXICON_PATH))
    drugs = {tuple(t.split()) for t in _clinical_terms() if t}
    lengths = sorted({len(t) for t in drugs})

    def names_term(s: str) -> bool:
        w = s.split()
        if any(tuple(w[i:i + k]) in drugs for k in lengths for i in range(len(w) - k + 1)):
            return True
        return bool(metrics.lexicon_terms(s, inventory))
    return names_term


def _package_version(package: str) -> str:
    import subprocess

    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=30)
        return r.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def extract_v2(wordnet_dir: Path = WORDNET_DIR, fortune_dir: Path = FORTUNE_DIR, cpython_text: Path = TEXT_PATH,
               eval_text: Path = EVAL_TEXT_PATH) -> tuple[list[str], dict]:
    """(unique sentences sorted, what was kept and dropped per source). A sentence found in several sources
    counts for the first of wordnet, fortunes, cpython-docs."""
    sources = {"wordnet": wordnet_sentences(wordnet_dir), "fortunes": fortune_sentences(fortune_dir),
               "cpython-docs": [n for s in load(cpython_text) if (n := spoken_sentence(s))]}
    leaks, names_term = _eval_leak_check(eval_text), _lexicon_check()
    kept: set[str] = set()
    rejected: set[str] = set()
    stats = {"kept": {}, "dropped_lexicon_term": 0, "dropped_eval_overlap": 0}
    for name, sents in sources.items():
        k = 0
        for s in sorted(set(sents)):
            if s in kept or s in rejected:
                continue
            if names_term(s):
                stats["dropped_lexicon_term"] += 1
            elif leaks(s):
                stats["dropped_eval_overlap"] += 1
            else:
                kept.add(s)
                k += 1
                continue
            rejected.add(s)
        stats["kept"][name] = k
    return sorted(kept), stats


def write_v2(path: Path = TEXT_V2_PATH) -> dict:
    """Build the v2 text (``data/general_en_v2.txt.gz``): sorted sentences under ``#`` header lines naming the
    sources, their packages and licences, the counts and the builder; gzip mtime 0 (reproducible bytes)."""
    from clinasr.synth.lexicon import load_lexicon

    sents, stats = extract_v2()
    kept = stats["kept"]
    fortune_names = ", ".join(p.name for p in fortune_files())
    fortune_versions = ", ".join(f"{p} {_package_version(p)}" for p in FORTUNE_PACKAGES)
    header = (
        f"# general English sentences v2 (issue 21): {len(sents)} unique normalised sentences of 4-24 words; "
        f"built by clinasr.synth.general.write_v2 (generator {GENERATOR_V2})\n"
        f"# source wordnet: {kept['wordnet']} sentences, the usage examples of WordNet 3.0 (Debian {WORDNET_PACKAGE} "
        f"{_package_version(WORDNET_PACKAGE)}, /usr/share/wordnet/data.*); licence: WordNet 3.0 licence, "
        f"WordNet 3.0 Copyright 2006 by Princeton University, all rights reserved "
        f"(/usr/share/doc/{WORDNET_PACKAGE}/copyright)\n"
        f"# source fortunes: {kept['fortunes']} sentences of the non-offensive fortune cookies (Debian "
        f"{fortune_versions}; files {fortune_names}; attributions dropped); licence: BSD, Copyright (c) 1991 The "
        f"Regents of the University of California (/usr/share/doc/fortunes-min/copyright)\n"
        f"# source cpython-docs: {kept['cpython-docs']} sentences of {TEXT_PATH.name} ({source_version(TEXT_PATH)}: "
        f"CPython documentation and docstrings); licence: PSF License\n"
        f"# dropped: {stats['dropped_lexicon_term']} naming a lexicon drug, route, frequency or dose "
        f"(lexicon {load_lexicon().version}); {stats['dropped_eval_overlap']} equal to or sharing "
        f"{LEAK_NGRAM} consecutive words with a sentence of {EVAL_TEXT_PATH.name}\n")
    body = "\n".join(sents) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write((header + body).encode())
    return {"path": str(path), "sentences": len(sents), **stats, "source_version": source_version(path)}
