"""Exact conformance of chain and tree verification: enumerated in float64, the output law equals the target's.

Every property has a planted-bug twin that must be rejected: q reported before temperature (the transformers
32867/47932 bug) and tree verification without the residual update (naive multi-draft).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from anydecode.algorithms.contracts.config import SamplingConfig
from anydecode.algorithms.sampling.warpers import warped_probs
from anydecode.algorithms.speculative import verify as verify_mod
from anydecode.algorithms.speculative.exact import enumerate_outcomes
from anydecode.algorithms.speculative.verify import (
    SeededCoins,
    verify_chain,
    verify_chain_greedy,
    verify_tree,
)
from anydecode.conformance import ToyModel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROMPT = (0,)


def target_law(model: ToyModel, sampling: SamplingConfig, length: int) -> dict[tuple[int, ...], float]:
    """Exact law of ``length`` tokens sampled from the warped target, one by one."""
    law = {}
    for seq in itertools.product(range(model.vocab_size), repeat=length):
        prob = 1.0
        for i in range(length):
            prob *= float(warped_probs(model.logits(PROMPT + seq[:i]), sampling)[seq[i]])
            if prob == 0:
                break
        if prob > 0:
            law[seq] = prob
    return law


def complete(model: ToyModel, sampling: SamplingConfig, emitted: list[int], length: int, coins) -> tuple[int, ...]:
    """Continue ``emitted`` with plain target sampling up to ``length`` tokens (so laws can be compared)."""
    out = list(emitted)
    while len(out) < length:
        p = warped_probs(model.logits(PROMPT + tuple(out)), sampling).unsqueeze(0)
        out.append(int(coins.choose(p)[0]))
    return tuple(out)


def tv(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def chain_law(target: ToyModel, draft: ToyModel, sampling: SamplingConfig, k: int, report_unwarped_q: bool = False,
              deterministic: bool = False) -> dict:
    """Law of (one speculative step + target completion) to k + 1 tokens, through ``verify_chain``."""

    def run(coins):
        tokens: list[int] = []
        qs = []
        for _ in range(k):
            logits = draft.logits(PROMPT + tuple(tokens))
            if deterministic:
                tokens.append(int(torch.argmax(logits)))
                continue
            q = warped_probs(logits, sampling)
            tokens.append(int(coins.choose(q.unsqueeze(0))[0]))
            qs.append(torch.softmax(logits, -1) if report_unwarped_q else q)
        p = torch.stack([warped_probs(target.logits(PROMPT + tuple(tokens[:j])), sampling) for j in range(k + 1)])
        q = None if deterministic else torch.stack(qs).unsqueeze(0)
        n, nxt = verify_chain(torch.tensor([tokens]), torch.tensor([k]), p.unsqueeze(0), q, coins)
        emitted = tokens[: int(n[0])] + [int(nxt[0])]
        return complete(target, sampling, emitted, k + 1, coins)

    return enumerate_outcomes(run)


CASES = st.sampled_from([(2, 1), (2, 2), (2, 3), (3, 1), (3, 2), (4, 1)])
SAMPLING = st.builds(
    lambda t, k, p: SamplingConfig(temperature=t, top_k=k, top_p=p),
    st.sampled_from([0.5, 1.0, 1.7]), st.integers(0, 3), st.sampled_from([1.0, 0.8, 0.5]),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=CASES, sampling=SAMPLING, seed=st.integers(0, 10_000), conc=st.sampled_from([0.3, 1.0, 3.0]))
def test_chain_verify_preserves_target_distribution(case, sampling, seed, conc):
    vocab, k = case
    target = ToyModel.seeded(vocab, seed=seed, concentration=conc)
    draft = ToyModel.seeded(vocab, seed=seed + 1, concentration=conc)
    law = chain_law(target, draft, sampling, k)
    assert abs(sum(law.values()) - 1.0) < 1e-9
    assert tv(law, target_law(target, sampling, k + 1)) < 1e-9


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=CASES, sampling=SAMPLING, seed=st.integers(0, 10_000))
def test_chain_verify_with_deterministic_drafts_preserves_target_distribution(case, sampling, seed):
    vocab, k = case
    target = ToyModel.seeded(vocab, seed=seed)
    draft = ToyModel.seeded(vocab, seed=seed + 7)
    law = chain_law(target, draft, sampling, k, deterministic=True)
    assert tv(law, target_law(target, sampling, k + 1)) < 1e-9


def test_planted_bug_q_before_temperature_is_rejected():
    """Twin: drafts drawn from the warped q but the unwarped softmax reported as q must miss the target."""
    sampling = SamplingConfig(temperature=0.5)
    worst = 0.0
    for seed in range(4):
        target = ToyModel.seeded(3, seed=seed)
        draft = ToyModel.seeded(3, seed=seed + 1)
        law = chain_law(target, draft, sampling, 2, report_unwarped_q=True)
        worst = max(worst, tv(law, target_law(target, sampling, 3)))
    assert worst > 1e-3


def tree_law(target: ToyModel, draft: ToyModel, sampling: SamplingConfig, width: int, depth: int,
             deterministic: bool = False) -> dict:
    """Law of (one tree verification + completion) to depth + 1 tokens; children drawn i.i.d. from q, or the
    ``width`` most likely draft tokens when deterministic."""

    def run(coins):
        tokens: list[int] = []
        parents: list[int] = []
        qs: list[torch.Tensor] = []
        frontier = [(-1, ())]
        for _level in range(depth):
            nxt = []
            for node, prefix in frontier:
                logits = draft.logits(PROMPT + prefix)
                q = warped_probs(logits, sampling)
                if deterministic:
                    picks = torch.argsort(q, descending=True)[:width].tolist()
                else:
                    picks = [int(coins.choose(q.unsqueeze(0))[0]) for _ in range(width)]
                for x in picks:
                    tokens.append(x)
                    parents.append(node)
                    qs.append(q)
                    nxt.append((len(tokens) - 1, prefix + (x,)))
            frontier = nxt
        prefix_of = {-1: ()}
        for i, (t, par) in enumerate(zip(tokens, parents)):
            prefix_of[i] = prefix_of[par] + (t,)

        def dist_at(node):
            return warped_probs(target.logits(PROMPT + prefix_of[node]), sampling)

        q = None if deterministic else torch.stack(qs)
        path, token = verify_tree(tokens, parents, q, dist_at, coins, greedy=False)
        emitted = [tokens[i] for i in path] + [token]
        return complete(target, sampling, emitted, depth + 1, coins)

    return enumerate_outcomes(run)


TREE_CASES = st.sampled_from([(2, 2, 1), (3, 2, 1), (3, 3, 1), (2, 2, 2), (3, 2, 2)])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=TREE_CASES, sampling=SAMPLING, seed=st.integers(0, 10_000), deterministic=st.booleans())
def test_tree_verify_preserves_target_distribution(case, sampling, seed, deterministic):
    vocab, width, depth = case
    target = ToyModel.seeded(vocab, seed=seed)
    draft = ToyModel.seeded(vocab, seed=seed + 3)
    law = tree_law(target, draft, sampling, width, depth, deterministic)
    assert abs(sum(law.values()) - 1.0) < 1e-9
    assert tv(law, target_law(target, sampling, depth + 1)) < 1e-9


@pytest.mark.parametrize("deterministic", [False, True])
def test_planted_bug_tree_without_residual_update_is_rejected(monkeypatch, deterministic):
    """Twin: re-testing every child against the unchanged target (no residual update) must miss the target."""
    sampling = SamplingConfig(temperature=1.0)
    monkeypatch.setattr(verify_mod, "residual_distribution", lambda p, q: p)
    worst = 0.0
    for seed in range(3):
        target = ToyModel.seeded(3, seed=seed)
        draft = ToyModel.seeded(3, seed=seed + 3)
        law = tree_law(target, draft, sampling, 2, 1, deterministic)
        worst = max(worst, tv(law, target_law(target, sampling, 2)))
    assert worst > 1e-2


def test_greedy_chain_accepts_the_longest_matching_prefix_and_appends_the_target_token():
    draft = torch.tensor([[3, 1, 2, 0], [3, 1, 2, 0], [5, 5, 5, 5]])
    lengths = torch.tensor([4, 2, 0])
    targets = torch.tensor([[3, 1, 4, 0, 9], [3, 1, 2, 0, 9], [7, 0, 0, 0, 0]])
    n, nxt = verify_chain_greedy(draft, lengths, targets)
    assert n.tolist() == [2, 2, 0]
    assert nxt.tolist() == [4, 2, 7]


def test_greedy_tree_follows_the_argmax_child():
    tokens = [1, 2, 3, 4]
    parents = [-1, -1, 1, 1]
    argmax = {-1: 2, 0: 0, 1: 4, 2: 0, 3: 6}

    def dist_at(node):
        return torch.nn.functional.one_hot(torch.tensor(argmax[node]), 8).float()

    path, token = verify_tree(tokens, parents, None, dist_at, None, greedy=True)
    assert path == [1, 3] and token == 6


def test_batched_chain_rows_are_independent_of_each_other():
    """Seeded: the rows of one batched call accept as the target dictates (row with p == q accepts all)."""
    vocab, k = 5, 3
    p = torch.softmax(torch.randn(2, k + 1, vocab, generator=torch.Generator().manual_seed(0)), -1).double()
    q = p[:, :k].clone()
    draft = torch.tensor([[1, 1, 2], [4, 4, 4]])
    n, _ = verify_chain(draft, torch.tensor([3, 3]), p, q, SeededCoins(1))
    assert n.tolist() == [3, 3]
    q2 = torch.zeros_like(q)
    q2[..., 0] = 1.0  # q says the drafts had no chance: reject at once
    n, nxt = verify_chain(draft, torch.tensor([3, 3]), p, q2, SeededCoins(1))
    assert n.tolist() == [0, 0] and nxt.shape == (2,)


def test_residual_is_used_after_a_rejection_not_the_target():
    """p puts all its mass on two tokens; a rejected draft token 0 can never be emitted afterwards."""
    p = torch.tensor([[[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]]], dtype=torch.float64)
    law = enumerate_outcomes(lambda c: tuple(x.item() for x in verify_chain(
        torch.tensor([[0]]), torch.tensor([1]), p, None, c)))
    assert np.isclose(law[(0, 1)], 0.5) and (0, 0) not in law and (0, 2) not in law
    assert np.isclose(sum(v for (n, _), v in law.items() if n == 1), 0.5)
