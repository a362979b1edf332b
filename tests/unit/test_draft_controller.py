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


def test_a_tree_drafter_whose_drafts_fail_is_checked_in_the_shadow_not_probed(monkeypatch):
    """Suffix trees on text they cannot predict, where each block token costs a forward: after the first failed
    drafts the row stops drafting, and its drafts are then only proposed and checked against what the target
    emits (shadows), so nothing more is verified and the run costs what plain decoding costs, give or take the
    first drafts. (Probing instead would verify a draft now and then: a 16-node tree would cost 16 plain steps.)"""
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
    assert result.stats["shadow_drafts"] >= 50, result.stats  # drafts were still proposed and checked
    late = session.widths[len(session.widths) // 4:]
    assert max(late) == 1, session.widths  # but none verified once drafting had stopped paying
    assert clock.now <= 1.04 * plain_time(cost, tokens), (clock.now, plain_time(cost, tokens), session.widths)


def test_shadow_drafts_bring_drafting_back_within_a_few_tokens_of_a_new_phase(monkeypatch):
    """The output is first unpredictable (48 tokens of a random walk), then copies the prompt, on a runtime where a
    failed draft costs most of a step. While the suffix drafter's drafts fail nothing is verified (no probes: every
    forward is one token wide), but its drafts are still proposed and checked in the shadow; once the output copies
    the prompt they are accepted and real drafting resumes within a few tokens."""
    cost = lambda w: 1.0 + 0.37 * w + 0.43 * (w > 1)  # noqa: E731
    clock = Clock()
    monkeypatch.setattr(decode_module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    prompt = [int(t) for t in np.random.default_rng(3).integers(0, 30, size=120)]
    walk = [30 + int(t) for t in np.random.default_rng(4).integers(0, 9, size=48)]
    script = walk + prompt[:60]

    def dist(prefix: tuple) -> np.ndarray:
        p = np.full(VOCAB, 1e-3)
        generated = len(prefix) - len(prompt)
        p[script[generated] if 0 <= generated < len(script) else EOS] = 1.0
        return p / p.sum()

    model = ToyModel(VOCAB, default=dist, eos_token_id=EOS)
    ctx = toy_context(model, [prompt], len(script))
    session = ScriptedSession(model, [prompt], clock, cost)
    lengths: list[int] = []
    append = session.append

    def logged(tokens):
        lengths.append(session.length)
        return append(tokens)

    session.append = logged
    ctx.session = session
    dec = anydecode.get_decoder("suffix")
    result = dec.run(dec.configure({"use_corpus": False}), ctx)
    assert result.sequences[0] == script
    # tokens generated before each forward that verified a draft
    drafting = [length - len(prompt) for length, width in zip(lengths, session.widths) if width > 1]
    assert len([g for g in drafting if g < 16]) <= 6, drafting  # the first drafts fail and drafting stops
    assert not [g for g in drafting if 16 <= g < 48], drafting  # no probe while drafts keep failing
    assert result.stats["shadow_drafts"] >= 10, result.stats  # they are checked in the shadow instead
    assert any(48 <= g <= 56 for g in drafting), drafting  # back within a few tokens of the new phase
    assert result.stats["accepted"] >= 30, result.stats


def test_a_tree_drafts_only_where_its_deepest_path_pays_for_all_its_nodes():
    """A tree is verified whole but emits one path: at an acceptance where a short chain pays, a bushy 16-node tree
    two levels deep does not (the loop then makes the step plain and the tree its shadow); a narrow tree of the
    chain's size, or any tree at a high acceptance, pays."""
    from anydecode.algorithms.speculative.schedule import DraftLengthController

    controller = DraftLengthController(1, fixed_cost=(1.0, 0.025, 0.3))  # a block of w: 1.325 + 0.025 w
    controller.hits[0], controller.trials[0] = 4.0, 10.0  # acceptance 0.4
    assert controller.limit(0, 16, 1) > 0  # a chain pays
    assert not controller.pays(0, 16, 2, 1)
    assert controller.pays(0, 4, 4, 1)
    controller.hits[0], controller.trials[0] = 8.0, 10.0
    assert controller.pays(0, 16, 6, 1)


def test_the_draft_length_is_the_best_of_every_length_up_to_the_cap():
    """``limit`` stops its scan where no longer draft can pay; what it returns is still the length with the least
    modelled time per emitted token among all of ``0..cap`` (the scan written out in full here)."""
    from anydecode.algorithms.speculative.schedule import DraftLengthController, cost_of

    def best_of_all(model, a, cap, pending):
        best, best_time, expected, term = 0, cost_of(model, pending), 1.0, 1.0
        for k in range(1, cap + 1):
            term *= a
            expected += term
            if cost_of(model, pending + k) / expected < best_time - 1e-12:
                best, best_time = k, cost_of(model, pending + k) / expected
        return best

    rng = np.random.default_rng(4)
    chosen = set()
    # a cost hint whose block term falls with width (the scan cannot stop early there)
    falling = DraftLengthController(1, fixed_cost=(1.0, 1.0, -1.5), shadows=True)
    falling.hits[0], falling.trials[0] = 40.0, 100.0
    assert falling.limit(0, 50, 0) == best_of_all((1.0, 1.0, -1.5), falling.acceptance(0), 50, 0) == 2
    for _ in range(3000):
        c1 = float(rng.choice([0.0, 1e-4, 0.01, 0.08, 0.4, 1.0]) * rng.uniform(0.5, 1))
        model = (float(rng.uniform(0.2, 1.0)), c1, float(rng.choice([0.0, 0.05, 0.4])))
        controller = DraftLengthController(1, fixed_cost=model, shadows=True)
        a = float(rng.choice([0.0, 0.1, 0.5, 0.8, 0.95, 0.99, 0.999]))
        controller.hits[0], controller.trials[0] = 100.0 * a, 100.0
        cap, pending = int(rng.integers(0, 300)), int(rng.integers(0, 3))
        got = controller.limit(0, cap, pending)
        assert got == best_of_all(model, controller.acceptance(0), cap, pending)
        chosen.add(got)
    assert len(chosen) > 20  # short, long and no drafts all came up


def test_no_block_is_wider_than_the_session_computes_exactly(monkeypatch):
    """A session that states ``max_block`` (llama.cpp: wider blocks take other kernels on some CPUs) is never fed a
    wider block, pending tokens and draft together, however long the drafts the controller would like; the output
    is still greedy's."""
    clock = Clock()
    monkeypatch.setattr(decode_module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    model, source = copy_model(0)
    ctx = toy_context(model, [source], 96)
    ctx.session = ScriptedSession(model, [source], clock, lambda w: 1.0 + 0.001 * w)
    ctx.session.max_block = 5
    dec = anydecode.get_decoder("iad")
    result = dec.run(dec.configure({"source_ids": tuple(source), "max_draft_tokens": 64}), ctx)
    assert max(ctx.session.widths) == 4  # the pending token and 3 drafts: the next step may carry all of them
    assert result.sequences[0][:95] == source[:95]


def test_no_block_is_wider_than_the_session_computes_exactly_with_rows_apart():
    """Two rows, one drafting nothing at the first step and one accepting its whole draft: the second row carries its
    accepted tokens as pending into the next block, which must still fit ``max_block``."""
    import torch

    from anydecode.algorithms.contracts.config import SamplingConfig
    from anydecode.algorithms.speculative.decode import SpeculativeLoop
    from anydecode.algorithms.speculative.draft import Draft, Drafter

    def dist(prefix):
        p = np.full(50, 1e-6)
        p[(prefix[-1] + 1) % 50] = 1.0
        return p / p.sum()

    class Widths(ToySession):
        max_block = 5
        widths: list[int] = []

        def append(self, tokens):
            out = super().append(tokens)
            self.widths.append(out.shape[1])
            return out

    class SecondRowFirst(Drafter):
        calls = 0

        def propose(self, contexts, limits):
            self.calls += 1
            return [Draft() if b == 0 and self.calls == 1 else Draft([(c[-1] + 1 + i) % 50 for i in range(k)])
                    for b, (c, k) in enumerate(zip(contexts, limits))]

    model = ToyModel(50, default=dist)
    prompts = [[1, 2, 3], [10, 11, 12]]
    ctx = toy_context(model, prompts, 40)
    ctx.session = Widths(model, prompts)
    result = SpeculativeLoop(ctx, SecondRowFirst(), SamplingConfig(), cost_aware=False).run()
    assert max(Widths.widths) <= 5 and max(Widths.widths) >= 4
    assert [s[:10] for s in result.sequences] == [[(p[-1] + 1 + i) % 50 for i in range(10)] for p in prompts]
    assert torch.is_tensor(ctx.prompt_logits)
