"""Task bodies of ``dags/clinasr_synthetic_data.py``: Params -> a typed dataset request, the QA sample
published for the reviewer, and the reviewer's decision recorded in provenance."""

from __future__ import annotations

from pathlib import Path

from clinasr.settings import Settings
from clinasr.tasks.common import declare, log, publish_reports, work_dir


def dataset_request(params: dict):
    from clinasr.datasets import DatasetRequest

    llm = {k: v for k, v in {"base_url": params.get("llm_base_url"), "model": params.get("llm_model")}.items() if v}
    return DatasetRequest(
        terms=params.get("terms") or None, utterances_per_term=int(params["utterances_per_term"]),
        generator=params["generator"], template_family=params.get("template_family", "a"), seed=int(params["seed"]),
        val_fraction=float(params["val_fraction"]), augment=bool(params["augment"]),
        accent_profiles=params.get("accent_profiles") or None, workers=int(params.get("workers", 2)),
        real_manifest=params.get("real_manifest") or None, real_ratio=float(params.get("real_ratio", 5.0)), llm=llm,
        synthesis=params.get("synthesis") or "default")


def qa_review_sample(params: dict, transcripts: dict, run_id: str) -> dict:
    """Render the QA sample and publish it (page, clips, JSON) to the object store for the reviewer."""
    from clinasr.datasets import qa_sample

    settings = Settings.from_env()
    work = work_dir(settings, "clinasr_synthetic_data", run_id)
    res = qa_sample(dataset_request(params), transcripts, work, params.get("qa_check_model") or None, settings, log.info)
    qa = Path(res["dir"])
    names = tuple(str(p.relative_to(qa)) for p in sorted(qa.rglob("*")) if p.is_file() and p.parent.name != "model")
    prefix = f"s3://{settings.bucket}/qa/{work.name}"
    outputs = publish_reports(settings, qa, names, prefix, "qa-sample")
    declare(inputs=[{"uri": transcripts["transcripts"], "kind": "transcripts"}],
            outputs=[o for o in outputs if o["uri"].endswith(("qa.html", "qa.json"))],
            qa_sample={"clips": res["clips"], "terms": res["terms"], "flagged_terms": res["flagged_terms"],
                       "check_model": res["check_model"], "pronunciations": res["pronunciations"]})
    return {"page": f"{prefix}/qa.html", "local_page": res["page"], "clips": res["clips"],
            "flagged_terms": res["flagged_terms"], "not_rendered": len(res["not_rendered"])}


def record_qa_decision(event: dict, qa: dict | None) -> None:
    """The reviewer's decision on the QA sample, who and when, into this task's provenance record."""
    declare(inputs=[{"uri": qa["page"], "kind": "qa-sample"}] if qa else [],
            qa_review={"decision": (event.get("chosen_options") or [None])[0], "by": event.get("responded_by_user"),
                       "at": str(event.get("responded_at")), "error": event.get("error_type")})
