"""The kernels' references against what the cores do today, and their sampling against the target distributions.

* warping: ``kernels.warp`` against ``algorithms/sampling/warpers.py`` (random and tied logits);
* masking: against ``algorithms/grammar/transforms.restrict`` plus ASAp's ``masked[tokens] += log(efg)``;
* greedy chain verification: against ``algorithms/speculative/verify.verify_chain_greedy``;
* diverse beam: against the group loop of ``algorithms/search/beam.py`` with ``diversity.hamming_penalty``;
* sampling (exponential race, chain verification, residual, tree node): chi-square goodness of fit with a large
  deterministic set of random streams, each with a planted-bug twin (a mutant of the real function) that must fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from anydecode import kernels
from anydecode.algorithms.contracts.config import SamplingConfig
from anydecode.algorithms.grammar.transforms import restrict
from anydecode.algorithms.sampling.warpers import warped_probs
from anydecode.algorithms.search.diversity import hamming_penalty
from anydecode.algorithms.speculative.verify import verify_chain_greedy as core_verify_chain_greedy
from anydecode.conformance import chi_square_test
from anydecode.kernels import residual, rng, verify

ALPHA = 1e-3
#: one draw per random stream: this many streams make each chi-square test below detect a shift of about 0.02 TV
DRAWS = 30_000


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- warping -------------------------------------------------------------------------------------------------------
def random_config(g: torch.Generator, vocab: int) -> SamplingConfig:
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]
    return SamplingConfig(temperature=pick([0.0, 0.5, 0.7, 1.0, 1.3, 2.0]),
                          top_k=pick([0, 0, 1, 3, vocab // 2, vocab, vocab + 3]),
                          top_p=pick([1.0, 1.0, 0.3, 0.5, 0.75, 0.9, 0.95]), min_p=pick([0.0, 0.0, 0.05, 0.1]))


def test_warp_reference_agrees_with_sampler_warpers_on_random_logits():
    g = gen(1)
    for trial in range(200):
        vocab = int(torch.randint(1, 300, (1,), generator=g))
        logits = torch.randn(3, vocab, generator=g) * 3
        logits[torch.rand(logits.shape, generator=g) < 0.05] = float("-inf")
        logits[:, 0] = 0.0
        cfg = random_config(g, vocab)
        want = warped_probs(logits, cfg).float()
        got = kernels.warp_probs(logits, cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p)
        assert torch.equal(got > 0, want > 0), (trial, cfg)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def exact_mass_before(logits: torch.Tensor, token: int, cfg: SamplingConfig) -> float:
    """Mass strictly before ``token`` in warpers' order (value, then id) among the top-k survivors, from exact
    group counts (``math.fsum``), as a share of the survivors' mass."""
    scaled = [float(v) / cfg.temperature for v in logits.tolist()]
    order = sorted(range(len(scaled)), key=lambda i: (-scaled[i], i))
    if 0 < cfg.top_k < len(scaled):
        kth = scaled[order[cfg.top_k - 1]]
        order = [i for i in order if scaled[i] >= kth]
    top = scaled[order[0]]
    weights = [math.exp(scaled[i] - top) for i in order]
    return math.fsum(weights[: order.index(token)]) / math.fsum(weights)


def test_warp_reference_on_tied_logits_differs_from_warpers_only_on_exact_boundaries():
    """Integer logits make tie groups and masses that land exactly on top_p. There the exact rule (drop a token
    whose mass before reaches top_p) drops the token, while warpers.py's float64 ``cumsum - probs`` can round
    just below top_p and keep it. Every disagreement must be such a boundary, and must be rare."""
    g = gen(2)
    disagreements = 0
    for _ in range(600):
        vocab = int(torch.randint(1, 120, (1,), generator=g))
        logits = torch.randint(-3, 3, (vocab,), generator=g).float()
        cfg = random_config(g, vocab)
        if cfg.greedy:
            continue
        want = warped_probs(logits.unsqueeze(0), cfg)[0] > 0
        got = kernels.warp_probs(logits.unsqueeze(0), cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p)[0] > 0
        if torch.equal(got, want):
            continue
        disagreements += 1
        for token in (got ^ want).nonzero().flatten().tolist():
            assert abs(exact_mass_before(logits, token, cfg) - cfg.top_p) < 1e-12, (logits.tolist(), cfg, token)
    assert disagreements < 20


# -- masking -------------------------------------------------------------------------------------------------------
def pack(mask: torch.Tensor) -> torch.Tensor:
    """Bool ``(R, V)`` to int32 words, bit ``i % 32`` of word ``i // 32`` (what the grammar engines fill)."""
    rows, vocab = mask.shape
    words = (vocab + 31) // 32
    padded = torch.zeros(rows, words * 32, dtype=torch.int64)
    padded[:, :vocab] = mask.to(torch.int64)
    value = (padded.view(rows, words, 32) << torch.arange(32)).sum(dim=-1)
    return torch.where(value >= 2**31, value - 2**32, value).to(torch.int32)


def test_masking_equals_grammar_transforms_restrict_plus_asap_corrections():
    g = gen(3)
    rows, vocab = 4, 301
    logits = torch.randn(rows, vocab, generator=g)
    allowed = torch.rand(rows, vocab, generator=g) < 0.3
    allowed[2] = False
    children = [torch.randperm(vocab, generator=g)[: int(n)] for n in (5, 0, 3, 40)]
    efg = [torch.rand(len(c), generator=g).double() for c in children]
    want = []
    for r in range(rows):
        masked = restrict(torch.log_softmax(logits[r], dim=-1), allowed[r].numpy())
        masked[children[r]] += torch.log(efg[r]).to(masked.dtype)  # AsapTransform.apply
        want.append(masked)
    indptr = torch.tensor([0] + [len(c) for c in children]).cumsum(0)
    got = kernels.apply_token_masks(torch.log_softmax(logits, dim=-1), pack(allowed), None, indptr,
                                    torch.cat(children), torch.log(torch.cat(efg)).float())
    torch.testing.assert_close(got, torch.stack(want), rtol=0, atol=1e-6)


# -- chain verification --------------------------------------------------------------------------------------------
def test_greedy_chain_verification_equals_core():
    g = gen(4)
    logits = torch.randint(0, 4, (6, 5, 9), generator=g).float()  # ties: the first maximum wins in both
    drafts = logits[:, :4].argmax(dim=-1)
    drafts[torch.rand(drafts.shape, generator=g) < 0.3] = 1
    lengths = torch.tensor([4, 4, 3, 0, 1, 2])
    n, token = kernels.verify_chain_greedy(logits, drafts, lengths)
    want_n, want_token = core_verify_chain_greedy(drafts, lengths, logits.argmax(dim=-1))
    assert torch.equal(n, want_n) and torch.equal(token, want_token)


def first_token_law(target: torch.Tensor, cfg: SamplingConfig) -> dict[int, float]:
    probs = warped_probs(target.unsqueeze(0), cfg)[0]
    return {i: float(p) for i, p in enumerate(probs) if p > 0}


def chain_first_tokens(deterministic: bool) -> tuple[list[int], dict[int, float]]:
    """One speculative step on ``DRAWS`` streams: the first emitted token (the accepted draft or the correction)."""
    g = gen(5)
    vocab, k = 7, 2
    cfg = SamplingConfig(temperature=0.8, top_k=6)
    target = torch.randn(k + 1, vocab, generator=g) * 1.5
    draft_dist = torch.softmax(torch.randn(k, vocab, generator=g) * 1.5, dim=-1)
    drafts = torch.multinomial(draft_dist, DRAWS, replacement=True, generator=g).T
    if deterministic:  # a drafter that always proposes the same tokens
        drafts = torch.tensor([[2, 4]]).expand(DRAWS, k)
    a = verify.chain_args(target.expand(DRAWS, k + 1, vocab), drafts, None if deterministic else
                          draft_dist.expand(DRAWS, k, vocab), seeds=torch.arange(DRAWS), offsets=11,
                          temperature=cfg.temperature, top_k=cfg.top_k)
    n, token = verify.verify_chain_reference(a)
    first = torch.where(n > 0, drafts[:, 0], token)
    return first.tolist(), first_token_law(target[0], cfg)


@pytest.mark.parametrize("deterministic", [False, True])
def test_chain_verification_preserves_target_distribution(deterministic):
    samples, law = chain_first_tokens(deterministic)
    assert chi_square_test(samples, law).passed(ALPHA)


def test_chain_verification_with_a_biased_coin_is_rejected(monkeypatch):
    """Planted bug: coins that accept too often (u halved) let q leak into the output."""
    real = rng.coin_uniform
    monkeypatch.setattr(rng, "coin_uniform", lambda key, index=0: real(key, index) * 0.5)
    samples, law = chain_first_tokens(False)
    assert not chi_square_test(samples, law).passed(ALPHA)


# -- the exponential race, residual sampling, tree nodes ----------------------------------------------------------
WEIGHTS = torch.tensor([0.0, 3.0, 1.0, 0.5, 0.0, 2.0, 0.25, 1.25])


def race_samples() -> list[int]:
    keys = rng.stream_key(9, 0, torch.arange(DRAWS))
    return rng.race_argmax(WEIGHTS.expand(DRAWS, -1), keys).tolist()


def test_exponential_race_follows_the_weights():
    law = {i: float(w) for i, w in enumerate(WEIGHTS) if w > 0}
    assert chi_square_test(race_samples(), law).passed(ALPHA)


def test_race_with_uniform_instead_of_exponential_draws_is_rejected(monkeypatch):
    """Planted bug: ``argmax w / U`` with U uniform is not proportional to w (on the sparse race's exponentials
    and on the CPU's dense race, which divides by their negation)."""
    monkeypatch.setattr(rng, "exponential", rng.open_uniform)
    monkeypatch.setattr(rng, "negated_exponential",
                        lambda words: -rng.open_uniform(torch.from_numpy(words.astype(np.int64))).numpy())
    law = {i: float(w) for i, w in enumerate(WEIGHTS) if w > 0}
    assert not chi_square_test(race_samples(), law).passed(ALPHA)


def residual_samples() -> tuple[list[int], dict[int, float]]:
    g = gen(6)
    p = torch.softmax(torch.randn(9, generator=g), dim=0)
    q = torch.softmax(torch.randn(9, generator=g), dim=0)
    a = residual.residual_args(p.expand(DRAWS, -1), q.expand(DRAWS, -1), seeds=torch.arange(DRAWS))
    diff = (p - q).clamp(min=0)
    return residual.sample_residual_reference(a).tolist(), {i: float(d) for i, d in enumerate(diff / diff.sum())
                                                             if d > 0}


def test_residual_sampling_follows_the_normalised_residual():
    samples, law = residual_samples()
    assert chi_square_test(samples, law).passed(ALPHA)


def test_residual_sampling_from_p_instead_of_the_residual_is_rejected(monkeypatch):
    """Planted bug: after a rejection, resample the target instead of ``max(0, p - q)``."""
    monkeypatch.setattr(residual, "residual_weights", lambda p, q: p)
    samples, law = residual_samples()
    assert not chi_square_test(samples, law).passed(ALPHA)


def tree_node_tokens() -> tuple[list[int], dict[int, float]]:
    """Three children drawn independently from q at a node with target p: the emitted token must follow p."""
    g = gen(7)
    vocab, children = 5, 3
    p = torch.softmax(torch.randn(vocab, generator=g) * 1.5, dim=0)
    q = torch.softmax(torch.randn(vocab, generator=g) * 1.5, dim=0)
    tokens = torch.multinomial(q, DRAWS * children, replacement=True, generator=g).view(DRAWS, children)
    a = residual.tree_args(p.expand(DRAWS, -1), tokens, q.expand(DRAWS, children, -1), seeds=torch.arange(DRAWS))
    _, token = residual.verify_tree_node_reference(a)
    return token.tolist(), {i: float(x) for i, x in enumerate(p)}


def test_tree_node_preserves_target_distribution():
    samples, law = tree_node_tokens()
    assert chi_square_test(samples, law).passed(ALPHA)


def test_tree_node_without_residual_update_is_rejected(monkeypatch):
    """Planted bug: naive multi-draft verification (every child tested against the unchanged p)."""
    monkeypatch.setattr(residual, "residual_step", lambda r, q: r)
    samples, law = tree_node_tokens()
    assert not chi_square_test(samples, law).passed(ALPHA)


# -- diverse beam search -------------------------------------------------------------------------------------------
def beam_core_step(logp: torch.Tensor, scores: torch.Tensor, prompts: int, width: int, groups: int,
                   penalty: float, keep: int, eos: frozenset[int], pad: int, done: torch.Tensor):
    """The candidate selection of ``algorithms/search/beam.py``'s group loop (its tokens bookkeeping included)."""
    size = width // groups
    vocab = logp.shape[1]
    tokens = torch.zeros(prompts * width, dtype=torch.long)
    out = []
    for g in range(groups):
        index = torch.tensor([p * width + g * size + j for p in range(prompts) for j in range(size)])
        group = logp.index_select(0, index)
        if g > 0:
            pen = torch.cat([hamming_penalty(tokens[p * width: p * width + g * size], vocab, penalty, logp.dtype)
                             .unsqueeze(0).expand(size, vocab) for p in range(prompts)])
            group = group - pen
        total = (group + scores.index_select(0, index).unsqueeze(-1)).view(prompts, size * vocab)
        top_scores, top_index = torch.topk(total, keep, dim=1, largest=True, sorted=True)
        out.append((top_scores, top_index // vocab, top_index % vocab))
        for p in range(prompts):
            base = p * width + g * size
            if done[p, g]:
                tokens[base: base + size] = pad
                continue
            filled = 0
            for token in (top_index[p] % vocab).tolist():
                if token not in eos and filled < size:
                    tokens[base + filled] = token
                    filled += 1
    return [torch.stack([o[i] for o in out], dim=1) for i in range(3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diverse_beam_step_equals_the_search_core(dtype):
    g = gen(8)
    for trial in range(30):
        prompts, groups, size = 2, int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(1, 3, (1,),
                                                                                                  generator=g))
        width, vocab = groups * size, 50
        logp = torch.log_softmax(torch.randn(prompts * width, vocab, generator=g, dtype=dtype) * 2, dim=-1)
        scores = torch.randn(prompts * width, generator=g, dtype=dtype)
        eos = frozenset(torch.randint(0, vocab, (int(torch.randint(0, 3, (1,), generator=g)),), generator=g).tolist())
        keep = max(2, 1 + len(eos)) * size
        done = torch.rand(prompts, groups, generator=g) < 0.2
        penalty = [0.5, 1.0, 3.0][trial % 3]
        want = beam_core_step(logp, scores, prompts, width, groups, penalty, keep, eos, 3, done)
        got = kernels.diverse_beam_step(logp, scores, num_beams=width, groups=groups, penalty=penalty, keep=keep,
                                        eos=sorted(eos), done=done, pad=3)
        for a, b in zip(got, want):
            assert torch.equal(a, b), trial
