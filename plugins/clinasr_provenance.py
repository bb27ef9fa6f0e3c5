"""Airflow listener plugin: one hash-chained provenance record per task instance, at success and failure.

The record merges what the task declared through ``clinasr.provenance.declare`` (inputs, outputs, data
origin, MLflow references) with what Airflow knows (dag/run/task/try, trigger, times, params).
A listener must never break a task: any error here is logged and swallowed.
"""

from __future__ import annotations

import logging
import os

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)


def _name(value) -> str:
    """Enum members (DagRunType.MANUAL) as their plain value ("manual")."""
    return str(getattr(value, "value", value) or "")


def _iso(value):
    return value.isoformat() if hasattr(value, "isoformat") else value


def build_record(task_instance, state: str, error=None) -> dict:
    from clinasr.provenance import ProvenanceLog

    ti = task_instance
    ctx = {}
    try:
        ctx = ti.get_template_context()
    except Exception:  # scheduler-side callbacks have no runtime context
        pass
    dag_run = ctx.get("dag_run")
    params = dict(ctx.get("params") or {})
    run_type = _name(getattr(dag_run, "run_type", ""))
    triggered_by = _name(getattr(dag_run, "triggered_by", "")) or run_type
    user = getattr(dag_run, "triggering_user_name", None)
    conf = dict(getattr(dag_run, "conf", None) or {})
    plog = ProvenanceLog()
    key = (ti.dag_id, ti.run_id, ti.task_id, int(getattr(ti, "try_number", 1) or 1))
    declared = plog.take_declaration(key)
    return plog.new_record(
        dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, try_number=key[3],
        map_index=getattr(ti, "map_index", -1), state=state,
        logical_date=_iso(getattr(dag_run, "logical_date", None)),
        run_type=run_type, triggered_by=triggered_by, triggering_user=user,
        trigger_reason=conf.get("reason") or conf.get("drift_reason"),
        start_date=_iso(getattr(ti, "start_date", None)), end_date=_iso(getattr(ti, "end_date", None)),
        params=params, error=f"{type(error).__name__}: {error}" if error else None,
        inputs=declared.get("inputs", []), outputs=declared.get("outputs", []),
        origin=declared.get("origin", {}), mlflow=declared.get("mlflow", {}),
        # anything else a stage declared (gate decision and override, promotion, launch job, ...)
        **{k: v for k, v in declared.items() if k not in ("inputs", "outputs", "origin", "mlflow")},
    )


def _write(task_instance, state: str, error=None) -> None:
    try:
        from clinasr.provenance import ProvenanceLog

        rec = ProvenanceLog().append(build_record(task_instance, state, error))
    except Exception:
        log.exception("clinasr provenance: could not record %s", getattr(task_instance, "task_id", "?"))
        return
    if os.environ.get("CLINASR_OPENLINEAGE_URL"):   # best effort: the chain above is the record of truth
        try:
            from clinasr import lineage

            lineage.emit(lineage.openlineage_events([rec]), os.environ["CLINASR_OPENLINEAGE_URL"])
        except Exception:
            log.exception("clinasr provenance: could not send the OpenLineage event")


class ProvenanceListener:
    @hookimpl
    def on_task_instance_success(self, previous_state, task_instance):
        _write(task_instance, "success")

    @hookimpl
    def on_task_instance_failed(self, previous_state, task_instance, error):
        _write(task_instance, "failed", error)


class ClinasrProvenancePlugin(AirflowPlugin):
    name = "clinasr_provenance"
    listeners = [ProvenanceListener()]
