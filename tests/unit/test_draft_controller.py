"""The never-slower draft controller, on a toy session whose forwards cost a scripted time.

The speculative loop times each step with ``time.perf_counter``; here that clock only moves when the session runs a
forward, by the scripted cost of its width, so what the controller chooses can be asserted exactly: it drafts where
drafting pays, declines (with cheap probes) where it does not, and comes back when drafts start to pay again.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

import anydecode
from anydecode.algorithms.speculative import decode as decode_module
from anydecode.conformance import ToyModel, ToySession, toy_context

VOCAB = 40
EOS = 39


class Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class ScriptedSession(ToySession):
    """A toy session whose forward over ``w`` tokens per row advances the clock by ``cost(w)``; like a real
    runtime's session it states its cost shape as a hint (``forward_cost``), which the timings then refine."""

    def __init__(self, model, prompts, clock, cost, hint=True):
        super().__init__(model, prompts)
        self.clock = clock
        self.cost = cost
        self.widths: list[int] = []
        if hint:
            c1 = cost(3) - cost(2)
            self.forward_cost = (cost(1) - c1, c1, cost(2) - cost(1) - c1)

    def append(self, tokens):
        out = super().append(tokens)
        width = out.shape[1]
        self.widths.append(width)
        self.clock.now += self.cost(width)
        return out

    def append_tree(self, tokens, parents):  # a tree of w nodes is verified in one forward over w tokens
        out = super().append_tree(tokens, parents)
        width = out.shape[1]
        self.widths.append(width)
        self.clock.now += self.cost(width)
        return out


def copy_model(seed: int, noisy_until: int = 0) -> ToyModel:
    """Copies its input (tokens 0..29, little repetition) one for one, except that its first ``noisy_until`` tokens
    rewrite that span of the input with other words (30..38): an edit. Drafts copied from the input fail there."""
    rng = np.random.default_rng(seed)
    source = [int(t) for t in rng.integers(0, 30, size=120)]

    def dist(prefix: tuple) -> np.ndarray:
        generated = len(prefix) - len(source)
        p = np.full(VOCAB, 1e-3)
        if generated < 0:
            p[0] = 1.0
        elif generated >= 96:
            p[EOS] = 1.0
        elif generated < noisy_until:
            p[30 + (7 * generated + seed) % 9] = 1.0
        else:  # after the rewritten span the output goes on with the input where the span ended
            p[source[generated]] = 1.0
        return p / p.sum()

    return ToyModel(VOCAB, default=dist, eos_token_id=EOS), source


def run(monkeypatch, cost, noisy_until=0, decoder="iad", hint=True):
    clock = Clock()
    monkeypatch.setattr(decode_module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    model, source = copy_model(0, noisy_until)
    ctx = toy_context(model, [source], 96)
    ctx.session = ScriptedSession(model, [source], clock, cost, hint)
    dec = anydecode.get_decoder(decoder)
    result = dec.run(dec.configure({"source_ids": tuple(source), "max_draft_tokens": 16}), ctx)
    plain = clock.now if False else None
    del plain
    return result, ctx.session, clock.now


def plain_time(cost, tokens: int) -> float:
    """Greedy decoding without drafts: one forward per token after the first."""
    return cost(1) * (tokens - 1)


def test_drafts_long_where_a_block_costs_little_and_drafts_are_right(monkeypatch):
    cost = lambda w: 1.0 + 0.02 * w  # transformers on a CPU: mostly fixed cost  # noqa: E731
    result, session, spent = run(monkeypatch, cost)
    tokens = len(result.sequences[0])
    assert max(session.widths) >= 8  # long drafts
    assert spent < 0.4 * plain_time(cost, tokens), (spent, plain_time(cost, tokens))


def test_declines_to_draft_where_drafting_cannot_pay_and_stays_within_a_few_percent(monkeypatch):
    cost = lambda w: 1.0 * w  # a draft token costs a whole forward: no draft can pay  # noqa: E731
    result, session, spent = run(monkeypatch, cost, noisy_until=96)  # and drafts are wrong throughout
    tokens = len(result.sequences[0])
    assert spent <= 1.04 * plain_time(cost, tokens), (spent, plain_time(cost, tokens), session.widths)


def test_wrong_drafts_at_a_real_cost_are_given_up_and_probing_stays_cheap(monkeypatch):
    cost = lambda w: 1.0 + 0.37 * w + 0.43 * (w > 1)  # llama.cpp's shape: leaving the one-token path costs  # noqa
    result, session, spent = run(monkeypatch, cost, noisy_until=96)
    tokens = len(result.sequences[0])
    assert spent <= 1.04 * plain_time(cost, tokens), (spent, plain_time(cost, tokens), session.widths)


def test_comes_back_to_drafting_when_a_new_phase_makes_it_pay(monkeypatch):
    """IAD's case: the output departs from the input (drafts fail), then copies it again (drafts pay)."""
    cost = lambda w: 1.0 + 0.37 * w + 0.43 * (w > 1)  # noqa: E731
    result, session, spent = run(monkeypatch, cost, noisy_until=32)
    tokens = len(result.sequences[0])
    late = session.widths[len(session.widths) // 2:]
    assert max(late) >= 4, session.widths  # drafting resumed once IAD re-aligned
    assert spent < plain_time(cost, tokens), (spent, plain_time(cost, tokens))


@pytest.mark.parametrize("noisy_until", [0, 32, 96])
def test_the_output_is_greedy_whatever_the_controller_chooses(monkeypatch, noisy_until):
    cost = lambda w: 1.0 + 0.37 * w  # noqa: E731
    result, _, _ = run(monkeypatch, cost, noisy_until=noisy_until)
    model, source = copy_model(0, noisy_until)
    want = []
    while len(want) < 96:
        want.append(int(np.argmax(model.probs(source + want))))
        if want[-1] == EOS:
            break
    assert result.sequences[0] == want


def test_a_tree_drafter_probes_within_the_probing_budget(monkeypatch):
    """A tree gets the drafter's whole node budget when drafting pays, but a probe of a row that stopped drafting
    is sized by the probing budget: a 16-node probe on a runtime where each block token costs a forward would cost
    16 plain steps."""
    clock = Clock()
    monkeypatch.setattr(decode_module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    prompt = [int(t) for t in np.random.default_rng(1).integers(0, 30, size=60)]

    walk = [30 + int(t) for t in np.random.default_rng(2).integers(0, 9, size=160)]

    def dist(prefix: tuple) -> np.ndarray:  # a random sequence over 30..38: suffix drafts are mostly wrong
        p = np.full(VOCAB, 1e-3)
        generated = len(prefix) - len(prompt)
        p[walk[generated] if 0 <= generated < len(walk) else EOS] = 1.0
        return p / p.sum()

    model = ToyModel(VOCAB, default=dist, eos_token_id=EOS)
    cost = lambda w: 1.0 * w  # noqa: E731
    ctx = toy_context(model, [prompt], 160)
    ctx.session = session = ScriptedSession(model, [prompt], clock, cost)
    dec = anydecode.get_decoder("suffix")
    result = dec.run(dec.configure({"tree": True, "max_nodes": 16, "min_prob": 0.0, "max_spec_factor": 16.0,
                                     "use_corpus": False}), ctx)
    tokens = len(result.sequences[0])
    assert result.stats["drafted"] > 0  # it did probe
    assert clock.now <= 1.04 * plain_time(cost, tokens), (clock.now, plain_time(cost, tokens), session.widths)
