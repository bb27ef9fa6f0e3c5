"""What every part of training shares: :class:`TrainingError` (a run cannot start or produced nothing usable;
the message says what to change) and reading configs (:func:`load_yaml`, with ``base:`` files deep-merged
underneath). Kept apart from train.py so that its sibling modules (data, strategy, progress) import these
without importing train.py."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from clinasr.settings import REPO_ROOT


class TrainingError(RuntimeError):
    """Training cannot start or did not produce a usable model; the message says what to change."""


def deep_merge(a: dict, b: dict) -> dict:
    """``b`` over a copy of ``a``: nested dicts merge key by key, anything else in ``b`` replaces."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_yaml(path: str | Path) -> dict:
    """A config file; ``base: other.yaml`` (relative to the file) is deep-merged underneath."""
    p = Path(path)
    if not p.is_absolute():
        p = REPO_ROOT / p
    cfg = yaml.safe_load(p.read_text()) or {}
    if base := cfg.pop("base", None):
        cfg = deep_merge(load_yaml(p.parent / base), cfg)
    return cfg
