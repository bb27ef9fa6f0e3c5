"""An exact shortcut for NeMo's beam search with n-gram fusion on a CPU (:func:`install`).

On the 2-core VM a 10 s clip decoded by NeMo 3.0's batched TDT beam search (``malsd_batch``, beam 4) fused with a
4-gram LM took 2.4-2.9x greedy's time: the decoder loops once per step (~127 steps for the clip), and each step spent
31% of its time in the LM's ``advance`` (docs/benchmarks.md, "Cheaper fusion?"). ``advance(states)`` returns, for
each LM state, the scores and next states of every token: a pure function of the state (the LM never changes after
loading), and a beam mostly stays in states it has visited (a blank leaves the LM state as it was; 103 distinct
states answer ~10,700 lookups over 21 decodes of the clip). :class:`AdvanceCache` keeps each state's row once
computed; on its PyTorch path NeMo otherwise walks the suffix tree's backoff chain, ~20 tensor ops per order, for
every hypothesis on every step. Measured (bench/bench_fusion_cpu.py, one process taking turns): beam 4 + LM at 0.67x
NeMo's own time, the same transcripts on all 166 held-out rows. ``tests/test_fusion_cpu.py`` compares every
hypothesis and score with NeMo's path. GPU decoding (CUDA graphs, Triton) is left alone.

(Skipping the prediction network on steps where every hypothesis emitted blank, whose output the search discards,
was tried too: it fired on 8 of ~127 steps a clip and was removed.)
"""
from __future__ import annotations

import contextlib
import threading

_installed = False
_enabled = True                  # off only inside exact_nemo() (tests and benchmarks compare with NeMo's own path)


@contextlib.contextmanager
def exact_nemo():
    """NeMo's own code path inside the block (the shortcuts installed but bypassed)."""
    global _enabled
    _enabled = False
    try:
        yield
    finally:
        _enabled = True


class AdvanceCache:
    """Rows of ``advance`` per LM state: ``scores[row]`` and ``next_states[row]`` (each ``[vocab]``), found through
    ``rows[state]``. At most ``capacity`` states are kept; a full cache starts over (the states a beam visits on
    one clip are a few hundred)."""

    def __init__(self, compute, capacity: int = 16384):
        self.compute, self.capacity = compute, capacity
        self.rows: dict[int, int] = {}
        self.scores = self.next_states = None
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    def __call__(self, states):
        import torch

        keys = states.tolist()
        with self.lock:
            missing = list(dict.fromkeys(k for k in keys if k not in self.rows))
            if missing:
                if len(self.rows) + len(missing) > self.capacity:
                    self.rows.clear()
                    missing = list(dict.fromkeys(keys))
                scores, next_states = self.compute(torch.tensor(missing, dtype=states.dtype))
                self._store(missing, scores, next_states)
            self.misses += len(missing)
            self.hits += len(keys) - len(missing)
            idx = torch.tensor([self.rows[k] for k in keys], dtype=torch.long)
            return self.scores.index_select(0, idx), self.next_states.index_select(0, idx)

    def _store(self, keys, scores, next_states) -> None:
        import torch

        start = len(self.rows)
        need = start + len(keys)
        if self.scores is None or need > self.scores.shape[0]:
            size = min(self.capacity, max(256, 2 * need))
            grown_s = torch.empty((size, scores.shape[1]), dtype=scores.dtype)
            grown_n = torch.empty((size, next_states.shape[1]), dtype=next_states.dtype)
            if self.scores is not None and start:
                grown_s[:start] = self.scores[:start]
                grown_n[:start] = self.next_states[:start]
            self.scores, self.next_states = grown_s, grown_n
        self.scores[start:need] = scores
        self.next_states[start:need] = next_states
        for i, k in enumerate(keys):
            self.rows[k] = start + i


def install() -> bool:
    """Route NeMo's n-gram LM ``advance`` through a per-LM :class:`AdvanceCache` on a CPU, without gradients
    (idempotent). True when NeMo has the class this was written against (NeMo 3.0); False otherwise."""
    global _installed
    if _installed:
        return True
    try:
        import torch
        from nemo.collections.asr.parts.submodules.ngram_lm.ngram_lm_batched import NGramGPULanguageModel
    except ImportError:
        return False

    advance = NGramGPULanguageModel.advance

    def cached_advance(self, states, eos_id=None):
        if not _enabled or eos_id is not None or states.device.type != "cpu" or torch.is_grad_enabled():
            return advance(self, states, eos_id=eos_id)
        cache = self.__dict__.get("_clinasr_advance_cache")
        if cache is None:
            cache = self.__dict__["_clinasr_advance_cache"] = AdvanceCache(lambda s: advance(self, s))
        return cache(states)

    NGramGPULanguageModel.advance = cached_advance
    _installed = True
    return True
