"""Building the evaluation sets (ML runtime): real TTS in the held-out voices and engine only, every row scored
whole, the card says what the set is; scoring a set on a candidate's own priority terms; phantom terms from
a real model."""

import json
from pathlib import Path

import pytest

from clinasr import evalsets
from clinasr.settings import REPO_ROOT

pytestmark = pytest.mark.ml
SMALL = REPO_ROOT / "tests" / "data" / "evalsets-small.yaml"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cfg = evalsets.load_config(SMALL)
    root = tmp_path_factory.mktemp("evalsets")
    return cfg, {n: evalsets.build_set(n, root / n, cfg, workers=2, progress=False, log=lambda m: None)
                 for n in ("clinical_heldout", "general_heldout")}


def _rows(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def test_evaluation_sets_speak_only_in_held_out_voices_and_are_scored_whole(built):
    cfg, sets = built
    held, engines = evalsets.heldout_voices(cfg)
    for name, res in sets.items():
        d = Path(res["dir"])
        rows = _rows(d / evalsets.TEST_MANIFEST)
        assert not (d / "train_manifest.jsonl").exists() and not (d / "val_manifest.jsonl").exists()
        assert rows and {r["voice"] for r in rows} <= held and all((d / r["audio_filepath"]).exists() for r in rows)
        card = json.loads((d / "evalset_card.json").read_text())
        assert card["config_hash"] == evalsets.config_hash(cfg, name) and card["rows"] == {"test_manifest.jsonl": len(rows)}
        assert (d / "evalset_card.md").read_text().startswith(f"# Evaluation set card — {name}")
    clinical = _rows(Path(sets["clinical_heldout"]["dir"]) / evalsets.TEST_MANIFEST)
    assert {r["template_id"][0] for r in clinical} == {"b"} and {r["domain"] for r in clinical} == {"clinical"}
    assert {r["term"] for r in clinical} == {"warfarin", "apixaban", "levetiracetam", "metoprolol tartrate"}
    general = _rows(Path(sets["general_heldout"]["dir"]) / evalsets.TEST_MANIFEST)
    assert len(general) == 10 and {r["domain"] for r in general} == {"general"} and {r["condition"] for r in general} == {"clean"}
    assert all(r["augmentations"] == [] for r in general)       # the clean condition is clean


def test_a_set_is_scored_on_the_candidates_priority_terms_and_counts_phantoms(built, tiny_model, tmp_path):
    from clinasr.evaluate import evaluate

    cfg, sets = built
    rep = evaluate({"model": str(tiny_model), "output_dir": str(tmp_path), "progress": False,
                    "sets": [{"name": "clinical_heldout", "manifest": sets["clinical_heldout"]["dir"],
                              "terms": ["warfarin", "apixaban"]},
                             {"name": "general_heldout", "manifest": sets["general_heldout"]["dir"]}]},
                   log=lambda m: None)
    c, g = rep["sets"]["clinical_heldout"], rep["sets"]["general_heldout"]
    n_total = len(_rows(Path(sets["clinical_heldout"]["dir"]) / evalsets.TEST_MANIFEST))
    assert c["rows"]["skipped_by_reason"] == {"another priority term": n_total - c["rows"]["scored"]}
    hyps = _rows(Path(c["hypotheses"]))
    assert {h["term"] for h in hyps} == {"warfarin", "apixaban"} and all(h["domain"] == "clinical" for h in hyps)
    assert set(c["slices"]["tts_engine"]) <= {"espeak", "piper"} and "ker" in next(iter(c["slices"]["tts_engine"].values()))
    ph = g["phantom_terms"]
    from clinasr.metrics import phantom_terms
    from clinasr.textnorm import normalize

    recount = sum(len(phantom_terms(normalize(h["text"]), normalize(h["hypothesis"]))) for h in _rows(Path(g["hypotheses"])))
    assert ph["count"] == recount and ph["per_100_utterances"] == pytest.approx(100 * recount / g["rows"]["scored"])
