"""Listen before synthesis: a small QA sample of every priority term in every accent profile (ML runtime).

``build_qa_sample`` renders, for each priority term and accent profile, one of the run's own sentences with
that term (clean), plus a few augmented copies, through the same ``render_row`` as the full synthesis — so
the pronunciation overrides, voices and augmentation a person hears are exactly those the dataset will
have. It writes ``qa.html`` (an audio player per clip with the text, the phonemes the engine spoke, the
voice and the pronunciation source) and ``qa.json`` beside the clips. Optionally a model transcribes every
clip and terms it does not recognise at all are flagged: a hint that the pronunciation may be off.
"""

from __future__ import annotations

import html
import json
import random
from pathlib import Path


def _pick(utts: list[dict], term: str, rng: random.Random) -> dict | None:
    with_term = [u for u in utts if u.get("term") == term]
    return rng.choice(with_term) if with_term else None


def build_qa_sample(args: dict) -> dict:
    """args: transcripts (jsonl), out_dir, seed, accent_profiles (optional), augmented (copies, default 3), config
    (the synthesis config, repository-relative or absolute; default configs/synthesis.yaml), config_overrides,
    check_model (optional .nemo / s3:// / models:/ to transcribe with)."""
    from clinasr.synth import pronounce, tts
    from clinasr.synth.pipeline import load_config, render_row

    cfg = load_config(args.get("config"), args.get("config_overrides") or {})
    out = Path(args["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    seed = int(args.get("seed", 0))
    rng = random.Random(f"{seed}|qa")
    utts = [json.loads(x) for x in Path(args["transcripts"]).read_text().splitlines() if x.strip()]
    terms = sorted({u["term"] for u in utts if u.get("term")})
    voices, problems = tts.check_voices(tts.voices_from_config(cfg, args.get("accent_profiles")))
    items, missing = [], []
    for term in terms:
        u = _pick(utts, term, rng)
        for profile, vs in sorted(voices.items()):
            v = rng.choice(vs)
            items.append(({**u, "utt_id": f"qa-{u['utt_id']}-{profile}"}, v, False))
    for utt, v, _ in rng.sample(items, min(int(args.get("augmented", 3)), len(items))):
        items.append(({**utt, "utt_id": utt["utt_id"] + "-aug"}, v, True))
    prons = pronounce.load(cfg.get("pronunciations") or pronounce.DEFAULT_PATH)
    rows = []
    for utt, v, aug in items:
        r = render_row(utt, {"engine": v.engine, "voice": v.voice, "accent_profile": v.accent_profile}, cfg,
                       str(out), aug, seed)
        if "quarantine" in r:
            missing.append({"term": utt["term"], "voice": v.voice_id, "reason": r["quarantine"]})
            continue
        spoken, _ = pronounce.apply(utt["text"], v.engine, prons)
        r["phonemes"] = pronounce.phonemes_or_note(spoken, v.engine, v.voice)
        rows.append(r)
    if args.get("check_model"):
        flag_unrecognised(rows, args["check_model"], out)
    result = {"terms": terms, "clips": len(rows), "not_rendered": missing, "voice_problems": problems,
              "pronunciations": {"path": prons["path"], "version": prons["version"], "sha256": prons["sha256"]},
              "check_model": args.get("check_model"),
              "flagged_terms": flagged_terms(rows),
              "page": str(out / "qa.html"), "dir": str(out)}
    (out / "qa.json").write_text(json.dumps({**result, "rows": rows}, indent=1))
    (out / "qa.html").write_text(render_page(rows, result))
    return result


def flag_unrecognised(rows: list[dict], model: str, out: Path) -> None:
    """Transcribe every clip with ``model``; mark whether the row's term was recognised (strict, as KER)."""
    from clinasr import audio
    from clinasr.inference import Transcriber
    from clinasr.metrics import contains
    from clinasr.registry import fetch_model
    from clinasr.textnorm import normalize

    t = Transcriber(fetch_model(model, out / "model"))
    hyps = t.transcribe([audio.load(out / r["audio_filepath"]) for r in rows])
    for r, h in zip(rows, hyps):
        r["hypothesis"] = h["text"]
        r["term_recognised"] = contains(normalize(h["text"]), r["term"])


def flagged_terms(rows: list[dict]) -> list[str]:
    """Terms the check model recognised in none of their clips. One clip heard right is enough to clear a term: a
    voice or an augmentation can defeat a model, a wrong pronunciation defeats it in every clip. Rows the model did
    not transcribe (no ``term_recognised``) decide nothing."""
    checked = [r for r in rows if "term_recognised" in r]
    return sorted({r["term"] for r in checked} - {r["term"] for r in checked if r["term_recognised"]})


def render_page(rows: list[dict], result: dict) -> str:
    e = html.escape
    flagged = set(result["flagged_terms"])
    body = "".join(
        f"<tr class=\"{'flagged' if r['term'] in flagged else ''}\"><td>{e(r['term'])}</td><td>{e(r['accent_profile'])}</td>"
        f"<td>{e(r['voice'])}</td><td>{e(r['text'])}</td><td><code>{e(r['phonemes'])}</code></td>"
        f"<td>{e(r['pronunciation'])}</td><td>{e(', '.join(a['type'] for a in r['augmentations']) or 'clean')}</td>"
        f"<td><audio controls preload=metadata src=\"{e(r['audio_filepath'])}\"></audio></td>"
        + (f"<td>{e(r.get('hypothesis', ''))} {'✓' if r.get('term_recognised') else '✗'}</td>" if result["check_model"] else "")
        + "</tr>" for r in rows)
    check_head = "<th>heard by check model</th>" if result["check_model"] else ""
    notes = "".join(f"<li>{e(m['term'])} with {e(m['voice'])}: {e(m['reason'])}</li>" for m in result["not_rendered"])
    flag_p = (f"<p class=flag>Not recognised in any clip by <code>{e(str(result['check_model']))}</code>: "
              f"{e(', '.join(sorted(flagged)))} — listen: the pronunciation may be off.</p>") if flagged else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>QA sample: listen before synthesis</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:middle}}tr.flagged{{background:#fee}}.flag{{color:#b00;font-weight:bold}}</style></head><body>
<h1>QA sample: listen before synthesis</h1>
<p>{result['clips']} clips: every priority term ({len(result['terms'])}) in every accent profile, plus augmented copies,
rendered exactly as the full synthesis will render them. Pronunciation overrides: <code>{e(result['pronunciations']['path'])}</code>
version {e(str(result['pronunciations']['version']))} (sha256 {e(result['pronunciations']['sha256'][:12])}).
Approve the run in Airflow (task <b>approve_qa</b>) when every term sounds right; add an override and re-run when one does not.</p>
{flag_p}
<table id=qa><tr><th>term</th><th>accent profile</th><th>voice</th><th>text</th><th>phonemes spoken</th><th>pronunciation</th>
<th>augmentation</th><th>listen</th>{check_head}</tr>{body}</table>
{('<h2>Not rendered</h2><ul>' + notes + '</ul>') if notes else ''}
<script>// each player shows its clip's length once the browser has decoded it (and marks clips it cannot play)
document.querySelectorAll("audio").forEach(a => {{
  a.addEventListener("loadedmetadata", () => {{ a.dataset.duration = a.duration.toFixed(2); a.title = a.duration.toFixed(1) + " s"; }});
  a.addEventListener("error", () => {{ a.dataset.error = "cannot play"; a.parentElement.append(" cannot play"); }});
}});</script>
</body></html>"""


def qa_stage(args: dict) -> dict:
    """ML-runtime entry point (``clinasr ml-stage qa``)."""
    return build_qa_sample(args)
