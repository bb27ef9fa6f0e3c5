"""Reading lineage: an HTML page a compliance reviewer can open, and OpenLineage events for Marquez & co.

Both are built from the provenance chain (:mod:`clinasr.provenance`), so they show exactly what the
tamper-evident records say: for a node (a model version, a dataset snapshot, an endpoint ...), every task
that led to it — who or what triggered it, when, on which host and code version, with which Params and
config hashes, what it read and wrote (with sha256), the data origin and de-identification attestation,
the gate decision, the promotion — and everything that used it.
"""

from __future__ import annotations

import hashlib
import html
import json
import uuid
from datetime import datetime, timezone

from clinasr.provenance import downstream, lineage_graph, upstream, verify

SKIP_FIELDS = {"hash", "prev_hash", "inputs", "outputs", "params", "config_hashes"}


def anchor(node: str) -> str:
    return "n" + hashlib.sha1(node.encode()).hexdigest()[:12]


def _value(v) -> str:
    if isinstance(v, (dict, list)):
        return f"<code>{html.escape(json.dumps(v, default=str)[:1500])}</code>"
    return html.escape(str(v))


def _artifact_link(a: dict, nodes: dict) -> str:
    uri = a["uri"]
    sha = f" <small>sha256 {html.escape(a['sha256'][:16])}…</small>" if a.get("sha256") else ""
    target = f'<a href="#{anchor(uri)}">{html.escape(uri)}</a>' if uri in nodes else html.escape(uri)
    return f"<li>[{html.escape(a.get('kind', 'artifact'))}] {target}{sha}</li>"


def _card(node: str, graph: dict, by_seq: dict) -> str:
    meta = graph["nodes"][node]
    if meta["kind"] != "task":
        return (f'<div class="card artifact" id="{anchor(node)}"><h3>{html.escape(meta["kind"])}: '
                f'<code>{html.escape(node)}</code></h3>'
                + (f"<p>sha256 <code>{html.escape(meta['sha256'])}</code></p>" if meta.get("sha256") else "") + "</div>")
    r = by_seq[meta["record"]]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_value(v)}</td></tr>"
                   for k, v in r.items() if k not in SKIP_FIELDS and v not in (None, {}, [], ""))
    params = "".join(f"<tr><th>{html.escape(k)}</th><td>{_value(v)}</td></tr>" for k, v in (r.get("params") or {}).items())
    confs = "".join(f"<li><code>{html.escape(k)}</code> {html.escape(str(v)[:16])}…</li>" for k, v in (r.get("config_hashes") or {}).items())
    return f"""<div class="card task {html.escape(str(r.get('state')))}" id="{anchor(node)}">
<h3>task {html.escape(str(r.get('dag_id')))} › {html.escape(str(r.get('task_id')))} <small>(run {html.escape(str(r.get('run_id')))},
try {r.get('try_number')}, {html.escape(str(r.get('state')))}, record #{r.get('seq')})</small></h3>
<div class="cols"><div><h4>read</h4><ul>{''.join(_artifact_link(a, graph['nodes']) for a in r.get('inputs', [])) or '<li>-</li>'}</ul>
<h4>wrote</h4><ul>{''.join(_artifact_link(a, graph['nodes']) for a in r.get('outputs', [])) or '<li>-</li>'}</ul></div>
<div><table>{rows}</table></div></div>
<details><summary>Params</summary><table>{params or '<tr><td>none</td></tr>'}</table></details>
<details><summary>config hashes</summary><ul>{confs}</ul></details>
<p class="hash">record hash <code>{html.escape(str(r.get('hash')))}</code> (previous <code>{html.escape(str(r.get('prev_hash'))[:16])}…</code>)</p></div>"""


def page(records: list[dict], node: str, title: str | None = None) -> str:
    """The lineage page for ``node``: the node, where it came from, what used it, and the chain's state."""
    graph = lineage_graph(records)
    if node not in graph["nodes"]:
        raise KeyError(f"{node} is not in the provenance records")
    by_seq = {r.get("seq"): r for r in records}
    problems = verify(records)
    up, down = upstream(graph, node), downstream(graph, node)
    nav = "".join(f'<li><a href="#{anchor(n)}">{html.escape(n if not n.startswith("task:") else n[5:])}</a></li>' for n in up)
    status = (f'<p class="ok">Provenance chain intact: {len(records)} records, head <code>{html.escape(records[-1]["hash"][:16])}</code>.</p>'
              if not problems else
              '<p class="broken">PROVENANCE CHAIN BROKEN: ' + html.escape("; ".join(problems[:5])) + "</p>")
    title = title or f"Lineage of {node}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1200px}} .card{{border:1px solid #ccc;border-radius:6px;padding:8px 12px;margin:10px 0}}
.task.failed{{border-color:#b00}} .artifact{{background:#f6f8fa}} .cols{{display:flex;gap:2em}} th{{text-align:left;padding-right:1em;vertical-align:top}}
td,th{{font-size:90%}} .ok{{color:#060}} .broken{{color:#b00;font-weight:bold}} .hash{{font-size:80%;color:#555}}</style></head><body>
<h1>{html.escape(title)}</h1>{status}
<p>Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} from the hash-chained provenance records.
{len(up)} steps upstream, {len(down)} downstream.</p>
<h2>The node</h2>{_card(node, graph, by_seq)}
<h2>Where it came from</h2><p>Nearest first:</p><ol class="nav">{nav or '<li>nothing recorded</li>'}</ol>
{''.join(_card(n, graph, by_seq) for n in up)}
<h2>What used it</h2>{''.join(_card(n, graph, by_seq) for n in down) or '<p>nothing recorded</p>'}
</body></html>"""


# -- OpenLineage ----------------------------------------------------------------------------------------
def _dataset(uri: str) -> tuple[str, str]:
    """OpenLineage dataset naming: (namespace, name)."""
    if "://" in uri and not uri.startswith("models:/"):
        scheme, rest = uri.split("://", 1)
        host, _, path = rest.partition("/")
        return f"{scheme}://{host}", path or "/"
    if uri.startswith("models:/"):
        return "mlflow", uri[len("models:/"):]
    return "file", uri


def openlineage_events(records: list[dict], namespace: str = "clinasr") -> list:
    """One OpenLineage RunEvent (COMPLETE or FAIL) per provenance record, with its inputs and outputs."""
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.generated.base import RunFacet

    import attr

    @attr.define
    class ClinasrProvenanceRunFacet(RunFacet):
        seq: int = attr.field(default=0)
        recordHash: str = attr.field(default="")  # noqa: N815 (OpenLineage facets are camelCase)
        triggeredBy: str = attr.field(default="")  # noqa: N815
        codeVersion: str = attr.field(default="")  # noqa: N815

    producer = "https://github.com/clinasr/clinasr/provenance"
    events = []
    for r in records:
        key = f"{r.get('dag_id')}|{r.get('run_id')}|{r.get('task_id')}|{r.get('try_number')}"
        run_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"clinasr:{key}"))
        facet = ClinasrProvenanceRunFacet(seq=int(r.get("seq", 0)), recordHash=str(r.get("hash", "")),
                                          triggeredBy=str(r.get("triggering_user") or r.get("triggered_by") or ""),
                                          codeVersion=str(r.get("code_version", "")))
        events.append(RunEvent(
            eventType=RunState.COMPLETE if r.get("state") == "success" else RunState.FAIL,
            eventTime=str(r.get("end_date") or r.get("recorded_at") or datetime.now(timezone.utc).isoformat()),
            run=Run(runId=run_id, facets={"clinasr_provenance": facet}),
            job=Job(namespace=namespace, name=f"{r.get('dag_id')}.{r.get('task_id')}"),
            inputs=[InputDataset(*_dataset(a["uri"])) for a in r.get("inputs", [])],
            outputs=[OutputDataset(*_dataset(a["uri"])) for a in r.get("outputs", [])],
            producer=producer))
    return events


def to_dicts(events: list) -> list[dict]:
    from openlineage.client.serde import Serde

    return [json.loads(Serde.to_json(e)) for e in events]


def emit(events: list, url: str, api_key: str | None = None) -> int:
    """Send events to an OpenLineage HTTP endpoint (Marquez: POST <url>/api/v1/lineage)."""
    from openlineage.client import OpenLineageClient
    from openlineage.client.transport.http import HttpConfig, HttpTransport

    cfg = HttpConfig(url=url)
    if api_key:
        from openlineage.client.transport.http import ApiKeyTokenProvider

        cfg.auth = ApiKeyTokenProvider({"apiKey": api_key})
    client = OpenLineageClient(transport=HttpTransport(cfg))
    for e in events:
        client.emit(e)
    return len(events)
