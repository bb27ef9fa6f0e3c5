"""Task bodies of ``dags/clinasr_evaluation_sets.py``: build the evaluation and replay sets that are not
current, stage each as a snapshot, index it by its config hash, and record provenance."""

from __future__ import annotations

import logging

from clinasr import evalsets, provenance
from clinasr.tasks.common import work_dir
from clinasr.settings import Settings

log = logging.getLogger("clinasr")


def plan_sets(params: dict) -> list[str]:
    cfg = evalsets.load_config()
    known = evalsets.names(cfg)
    wanted = [n.strip() for n in params.get("sets") or [] if n.strip()] or known
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown sets {unknown}; configs/evalsets.yaml defines {known}")
    for st in evalsets.status(cfg):
        if st["name"] in wanted:
            log.info("%s: %s (config %s)", st["name"], st["state"], st["config_hash"])
    return wanted


def build_set(name: str, params: dict, run_id: str) -> dict:
    settings = Settings.from_env()
    work = work_dir(settings, "clinasr_evaluation_sets", run_id)
    entry = evalsets.build_and_stage(name, work, settings, workers=int(params.get("workers", 2)),
                                     force=bool(params.get("force")), log=log.info)
    card = entry.pop("card", None)
    provenance.declare(outputs=[{"uri": entry["uri"], "sha256": entry["digest"], "kind": f"{entry['role']}-set"}],
                       evaluation_set={"name": name, "config_hash": entry["config_hash"], "built": entry["built"],
                                       "config_version": entry["config_version"]},
                       origin={"origin": "synthetic", "voices": (card or {}).get("voices"),
                               "text": (card or {}).get("text")})
    return entry
