"""Provenance: one record per task instance, append-only and hash-chained.

A record answers who/what/when for a task: dag/run/task/try, trigger, start/end, host, code version,
config hashes, parameters, inputs and outputs (URI + sha256 + size + kind), data origin and MLflow
references. Each record holds the hash of the previous one, so :func:`verify` finds any edit,
deletion or reordering, and reports the position of the first break.

Stages declare their inputs/outputs through :func:`declare` (one small API); the Airflow listener
in ``plugins/clinasr_provenance.py`` merges the declaration into the record it writes when the task
instance succeeds or fails. Records live in ``$CLINASR_HOME/provenance/chain.jsonl`` and are
mirrored to ``s3://<provenance bucket>/provenance/`` with the store's encryption, under S3 Object Lock
retention (``CLINASR_PROVENANCE_LOCK``). Registered model versions and gate reports carry the chain's head
(``<seq>:<hash>``) at the time they were made; ``provenance verify --mirror`` checks the mirror and the stamps,
so an insider who rewrites the whole chain with fresh hashes is caught.

Records never carry transcript text: parameters whose names suggest text are dropped, and
declarations hold URIs and hashes, not content.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import subprocess
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from clinasr.settings import REPO_ROOT, Settings

GENESIS = "0" * 64
TEXT_KEYS = {"text", "transcript", "prompt", "hypothesis", "reference"}


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def record_hash(record: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


@lru_cache(maxsize=1)
def code_version() -> str:
    """git sha of the checkout (with ``-dirty`` when it has local edits), else the package version.
    ``CLINASR_CODE_VERSION`` names it for a copy without ``.git`` (a container, the GPU machine)."""
    if told := os.environ.get("CLINASR_CODE_VERSION"):
        return told
    try:
        r = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True,
                           text=True, timeout=5)
        sha = r.stdout.strip() if r.returncode == 0 else ""
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if sha:
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from clinasr import __version__

    return f"clinasr-{__version__}"


def config_hashes() -> dict[str, str]:
    """sha256 of each checked-in config file (configs/), so a record pins the exact configs used."""
    out = {}
    for p in sorted((REPO_ROOT / "configs").rglob("*")):
        if p.is_file():
            out[p.relative_to(REPO_ROOT).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def scrub(params: dict | None) -> dict:
    """Drop values that may carry transcript text (PHI) from parameters before recording them."""
    return {k: ("<redacted>" if k.lower() in TEXT_KEYS else v) for k, v in (params or {}).items()}


def artifact(uri: str, sha256: str | None = None, size: int | None = None, kind: str = "file", **extra) -> dict:
    """An input/output entry; local paths are hashed when no hash is given."""
    if sha256 is None and not uri.startswith(("s3://", "models:/", "runs:/", "http")) and Path(uri).is_file():
        from clinasr.store import sha256_file

        sha256, size = sha256_file(Path(uri)), Path(uri).stat().st_size
    return {"uri": uri, "sha256": sha256, "size": size, "kind": kind, **extra}


class ProvenanceLog:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        self.dir = self.settings.path("provenance")
        self.chain = self.dir / "chain.jsonl"

    # -- declarations (written by tasks, merged by the listener) ---------------------------------------
    def _pending(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> Path:
        safe = hashlib.sha1(f"{dag_id}|{run_id}|{task_id}|{try_number}".encode()).hexdigest()
        return self.dir / "pending" / f"{safe}.json"

    def declare(self, ti_key: tuple, **fields) -> Path:
        p = self._pending(*ti_key)
        p.parent.mkdir(parents=True, exist_ok=True)
        merged = json.loads(p.read_text()) if p.exists() else {}
        for k, v in fields.items():
            if isinstance(v, list):
                merged[k] = merged.get(k, []) + v
            elif isinstance(v, dict):
                merged[k] = {**merged.get(k, {}), **v}
            else:
                merged[k] = v
        p.write_text(json.dumps(merged, default=str))
        return p

    def take_declaration(self, ti_key: tuple) -> dict:
        p = self._pending(*ti_key)
        if not p.exists():
            return {}
        data = json.loads(p.read_text())
        p.unlink()
        return data

    # -- the chain ------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self):
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def records(self) -> list[dict]:
        if not self.chain.exists():
            return []
        return [json.loads(line) for line in self.chain.read_text().splitlines() if line.strip()]

    def append(self, record: dict, mirror: bool = True) -> dict:
        with self._locked():
            recs = self.records()
            record = {**record, "seq": len(recs), "prev_hash": recs[-1]["hash"] if recs else GENESIS,
                      "recorded_at": datetime.now(timezone.utc).isoformat()}
            record["hash"] = record_hash(record)
            with open(self.chain, "a") as f:
                f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        if mirror:
            self._mirror(record)
        return record

    def _mirror(self, record: dict) -> None:
        """Copy the record to the locked mirror. A copy that cannot be written (the store is down) is queued in
        ``mirror-pending`` and written with the next record that gets through, so an outage leaves no gap."""
        from clinasr.store import ObjectStore, StoreError

        pending = self.dir / "mirror-pending"
        with self._locked():
            todo = sorted(_seqs(pending))
        try:
            store = ObjectStore(self.settings)
            bucket = store.ensure_lock_bucket()
            by_seq = {r["seq"]: r for r in self.records()} if todo else {}
            for seq in todo:
                if seq in by_seq and not store.exists(f"s3://{bucket}/{mirror_key(by_seq[seq])}"):
                    store.put_locked(canonical(by_seq[seq]), f"s3://{bucket}/{mirror_key(by_seq[seq])}")
            store.put_locked(canonical(record), f"s3://{bucket}/{mirror_key(record)}")
        except (StoreError, OSError) as e:  # the local chain is the primary copy; say so loudly, don't fail the task
            with self._locked():
                (self.dir / "mirror-errors.log").open("a").write(f"{record['seq']}: {e}\n")
                pending.open("a").write(f"{record['seq']}\n")
            return
        if todo:
            with self._locked():
                left = _seqs(pending) - set(todo)
                pending.write_text("".join(f"{x}\n" for x in sorted(left)))

    def head(self) -> str | None:
        """``<seq>:<hash>`` of the chain's last record: stamped on registered model versions and gate reports,
        so a chain rewritten later (fresh hashes) no longer contains the heads those artifacts saw."""
        recs = self.records()
        return f"{recs[-1]['seq']}:{recs[-1]['hash']}" if recs else None

    def new_record(self, **fields) -> dict:
        base = {
            "host": socket.gethostname(),
            "code_version": code_version(),
            "config_hashes": config_hashes(),
            "inputs": [],
            "outputs": [],
        }
        base.update(fields)
        base["params"] = scrub(base.get("params"))
        return base


def verify(records: list[dict]) -> list[str]:
    """Problems in a chain, first break first; an empty list means the chain is intact."""
    problems = []
    prev = GENESIS
    for i, r in enumerate(records):
        if r.get("seq") != i:
            problems.append(f"position {i}: sequence number {r.get('seq')} (a record was deleted or reordered)")
        if r.get("prev_hash") != prev:
            problems.append(f"position {i} (seq {r.get('seq')}): previous-hash link broken")
        if record_hash(r) != r.get("hash"):
            problems.append(f"position {i} (seq {r.get('seq')}): content does not match its hash (edited)")
        prev = r.get("hash")
    return problems


def _seqs(pending: Path) -> set[int]:
    """The sequence numbers queued in a ``mirror-pending`` file (none when it does not exist)."""
    return {int(x) for x in pending.read_text().split()} if pending.exists() else set()


def mirror_key(record: dict) -> str:
    return f"provenance/{record['seq']:08d}-{record['hash'][:16]}.json"


def verify_mirror(log: ProvenanceLog) -> list[str]:
    """Compare the local chain with its object-store copies, both ways: a local record with no copy there, a
    copy whose content differs from the local record (either was rewritten), and a copy with no local record —
    the local chain lost records, e.g. its last ones were deleted, which the hash chain alone cannot see. The
    mirror bucket is versioned under Object Lock: a copy that was overwritten (more than one version) or
    deleted (a delete marker) is reported even when the latest content looks right."""
    from clinasr.store import ObjectStore

    store = ObjectStore(log.settings)
    bucket = log.settings.provenance_bucket
    keys = set(store.list_keys(f"s3://{bucket}/provenance/"))
    problems = []
    for key, v in sorted(store.versions(f"s3://{bucket}/provenance/").items()):
        if v["versions"] > 1:
            problems.append(f"s3://{bucket}/{key} was overwritten ({v['versions']} versions): a record was rewritten")
        if v["deleted"]:
            problems.append(f"s3://{bucket}/{key} was deleted (a delete marker hides it)")
    local = set()
    for r in log.records():
        key = mirror_key(r)
        local.add(key)
        if key not in keys:
            problems.append(f"seq {r['seq']}: no copy in s3://{bucket}/{key}")
        elif store.get_bytes(f"s3://{bucket}/{key}") != canonical(r):
            problems.append(f"seq {r['seq']}: the copy s3://{bucket}/{key} differs from the local record")
    for key in sorted(keys - local):
        seq = key.rsplit("/", 1)[-1].split("-", 1)[0]
        problems.append(f"seq {int(seq) if seq.isdigit() else seq}: s3://{bucket}/{key} has no local record "
                        "(the local chain lost it: deleted or truncated)")
    return problems


def verify_stamps(log: ProvenanceLog, stamps: list[tuple[str, str]]) -> list[str]:
    """Each ``(where, "<seq>:<hash>")`` stamp — a registered model version, a gate report — must name a record
    of the local chain with exactly that hash; a chain rewritten after the stamp (even with valid fresh
    hashes) fails here."""
    by_seq = {r["seq"]: r["hash"] for r in log.records()}
    problems = []
    for where, stamp in stamps:
        seq, _, h = str(stamp).partition(":")
        if not seq.isdigit() or by_seq.get(int(seq)) != h:
            problems.append(f"{where}: stamped with chain head {stamp[:28]}, which the chain does not contain "
                            "(the chain was rewritten or truncated after it)")
    return problems


def collect_stamps(settings) -> tuple[list[tuple[str, str]], list[str]]:
    """Stamps from gate reports in the object store (``reports/gate/**/gate.json``) and from the model registry
    (version tag ``provenance_head``); plus notes on what could not be read (a registry that is down)."""
    from clinasr.store import ObjectStore

    stamps, notes = [], []
    store = ObjectStore(settings)
    for key in store.list_keys(f"s3://{settings.bucket}/reports/gate/"):
        if key.endswith("/gate.json"):
            head = json.loads(store.get_bytes(f"s3://{settings.bucket}/{key}")).get("decision", {}).get("provenance_head")
            if head:
                stamps.append((f"gate report s3://{settings.bucket}/{key}", head))
    uri = os.environ.get("MLFLOW_TRACKING_URI") or settings.mlflow_uri
    try:
        import urllib.request

        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5)
    except OSError as e:
        return stamps, [f"model registry not checked: MLflow at {uri} is not reachable ({e})"]
    os.environ.setdefault("MLFLOW_TRACKING_URI", uri)
    try:
        from clinasr import registry

        c = registry.client()
        for rm in c.search_registered_models():
            for mv in c.search_model_versions(f"name='{rm.name}'"):
                head = (mv.tags or {}).get("provenance_head")
                if head:
                    stamps.append((f"model version {rm.name} v{mv.version}", head))
    except Exception as e:  # noqa: BLE001 - say it, check what can be checked
        notes.append(f"model registry not checked: {type(e).__name__}: {str(e)[:200]}")
    return stamps, notes


# -- lineage --------------------------------------------------------------------------------------
def lineage_graph(records: list[dict]) -> dict:
    """Nodes are artifacts (URIs) and task instances; edges run input -> task -> output."""
    nodes, edges = {}, []
    for r in records:
        tid = f"task:{r.get('dag_id')}/{r.get('run_id')}/{r.get('task_id')}#{r.get('try_number')}"
        nodes[tid] = {"kind": "task", "record": r.get("seq"), "state": r.get("state"),
                      "triggered_by": r.get("triggered_by"), "end": r.get("end_date")}
        for a in r.get("inputs", []):
            nodes.setdefault(a["uri"], {"kind": a.get("kind", "artifact"), "sha256": a.get("sha256")})
            edges.append((a["uri"], tid))
        for a in r.get("outputs", []):
            nodes[a["uri"]] = {**nodes.get(a["uri"], {}), "kind": a.get("kind", "artifact"), "sha256": a.get("sha256")}
            edges.append((tid, a["uri"]))
    return {"nodes": nodes, "edges": edges}


def upstream(graph: dict, node: str) -> list[str]:
    """Everything ``node`` was derived from (breadth-first, nearest first)."""
    parents: dict[str, list[str]] = {}
    for a, b in graph["edges"]:
        parents.setdefault(b, []).append(a)
    return _walk(parents, node)


def downstream(graph: dict, node: str) -> list[str]:
    """Everything derived from ``node``."""
    children: dict[str, list[str]] = {}
    for a, b in graph["edges"]:
        children.setdefault(a, []).append(b)
    return _walk(children, node)


def _walk(adj: dict[str, list[str]], start: str) -> list[str]:
    seen, order, queue = {start}, [], [start]
    while queue:
        cur = queue.pop(0)
        for nxt in adj.get(cur, []):
            if nxt not in seen:
                seen.add(nxt)
                order.append(nxt)
                queue.append(nxt)
    return order


def env_ti_key() -> tuple | None:
    """The current task instance, when running inside an Airflow task."""
    try:
        from airflow.sdk import get_current_context

        ctx = get_current_context()
    except Exception:
        return None
    ti = ctx["ti"]
    return (ti.dag_id, ti.run_id, ti.task_id, int(getattr(ti, "try_number", 1) or 1))


def declare(**fields) -> None:
    """Declare this task's inputs/outputs/origin; a no-op outside Airflow."""
    key = env_ti_key()
    if key is not None:
        ProvenanceLog().declare(key, **fields)

