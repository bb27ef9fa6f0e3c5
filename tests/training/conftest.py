"""Fixtures of the training tests (ML runtime)."""

from __future__ import annotations

from pathlib import Path

import pytest

SMALL_EVALSETS = Path(__file__).resolve().parents[1] / "data" / "evalsets-small.yaml"


@pytest.fixture(scope="session")
def replay_set(tmp_path_factory):
    """The small config's general_replay set: general sentences in the training voices."""
    from clinasr import evalsets

    out = tmp_path_factory.mktemp("replay") / "general_replay"
    res = evalsets.build_set("general_replay", out, evalsets.load_config(SMALL_EVALSETS), workers=2, progress=False,
                             log=lambda m: None)
    return Path(res["dir"])
