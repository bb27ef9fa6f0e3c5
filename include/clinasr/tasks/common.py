"""What every task module uses: the per-run work directory, provenance declarations, publishing
reports to the object store, the task logger. Imported inside tasks only (never at DAG parse time)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from clinasr import provenance
from clinasr.settings import Settings

log = logging.getLogger("clinasr")


def work_dir(settings: Settings, dag_id: str, run_id: str) -> Path:
    """One directory per DAG run: retries of a task reuse it (idempotent), other runs never touch it."""
    return settings.path("work", dag_id, hashlib.sha256(run_id.encode()).hexdigest()[:16])


def declare(**fields) -> None:
    provenance.declare(**fields)


def publish_reports(settings: Settings, local_dir: Path, names: tuple[str, ...], prefix: str, kind: str) -> list[dict]:
    """Upload report files to the object store; the provenance outputs (URI, kind, sha256) they become."""
    from clinasr.store import ObjectStore

    store = ObjectStore(settings)
    store.ensure_bucket()
    outputs = []
    for f in names:
        store.put_file(local_dir / f, f"{prefix}/{f}")
        outputs.append({"uri": f"{prefix}/{f}", "kind": kind, "sha256": _sha(local_dir / f)})
    return outputs


def _sha(path):
    from pathlib import Path

    if not path or not Path(path).exists():
        return None
    from clinasr.store import sha256_file

    return sha256_file(Path(path))
