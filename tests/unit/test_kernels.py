"""Every Triton kernel against its torch reference, run by Triton's interpreter on CPU tensors.

Shapes come from hypothesis (derandomised, so a run is reproducible): vocabularies that are not a multiple of the
block, ``k = 1``, rows that accept nothing and rows that accept everything, empty correction lists, all-masked
rows. Integer outputs must be equal; floats agree within 1e-5 (one ulp of bfloat16 for bfloat16 logits, where
Triton's interpreter truncates instead of rounding). The kernels run in-process: ``kernels.use("triton")`` loads
the interpreted flavour of ``kernels/jit/`` without turning the interpreter on for the rest of the process.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
from anydecode import kernels
from anydecode.kernels import dispatch, rng, warp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large])
#: (temperature, top_k, top_p, min_p) of a row; plain sampling is listed more often because it is the cheap case
ROW_SETTINGS = [(1.0, 0, 1.0, 0.0), (0.7, 0, 1.0, 0.0), (1.3, 0, 1.0, 0.0), (0.0, 0, 1.0, 0.0),
                (1.0, 3, 1.0, 0.0), (0.9, 0, 0.6, 0.0), (1.0, 0, 1.0, 0.2), (0.8, 5, 0.8, 0.05)]


def both(fn, block: int = 16):
    """``fn()`` with the kernels (interpreted) and with the references."""
    with kernels.use("triton", block=block):
        got = fn()
    with kernels.use("reference"):
        want = fn()
    return got, want


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def logits_rows(g: torch.Generator, shape: tuple[int, ...], ties: bool) -> torch.Tensor:
    """Random logits; with ``ties``, small integers (many equal values); a few ``-inf``."""
    x = torch.randint(-2, 3, shape, generator=g).float() if ties else torch.randn(shape, generator=g) * 2.5
    x[torch.rand(shape, generator=g) < 0.05] = float("-inf")
    return x


# -- the generator ---------------------------------------------------------------------------------------------------
def test_generator_bits_equal_in_torch_and_triton():
    g = gen(0)
    n = 700
    seeds = torch.randint(-2**63, 2**63 - 1, (n,), dtype=torch.int64, generator=g)
    rows = torch.randint(0, 2**40, (n,), generator=g)
    positions = torch.randint(-3, 2**34, (n,), generator=g)
    lanes = torch.randint(0, 2**31, (n,), generator=g)
    bits, uni, expo, coins = dispatch.run_kernel("rng", seeds.device, seeds, rows, positions, lanes, block=128)
    key = rng.stream_key(seeds, rows, positions)
    word = rng.lane_bits(key, lanes)
    assert torch.equal(bits, word)
    assert torch.equal(uni, rng.uniform(word))
    assert torch.equal(coins, rng.coin_uniform(key, lanes))
    torch.testing.assert_close(expo, rng.exponential(word), rtol=1e-6, atol=1e-7)


def test_generator_uniforms_are_in_range_and_uniform():
    word = rng.bits(123, torch.arange(4).unsqueeze(1), 7, torch.arange(50_000).unsqueeze(0)).reshape(-1)
    u = rng.uniform(word)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    o = torch.cat([rng.open_uniform(word), rng.open_uniform(torch.tensor([0, 2**32 - 1]))])
    assert float(o.min()) > 0.0 and float(o.max()) < 1.0
    assert bool(torch.isfinite(rng.exponential(torch.tensor([0, 2**32 - 1]))).all())
    counts = torch.bincount((u * 20).long(), minlength=20).double()
    expected = u.numel() / 20
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50.0  # 19 degrees of freedom: p < 1e-4 above 47
    # neighbouring lanes are uncorrelated
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.02


# -- interpreted mode ----------------------------------------------------------------------------------------------
def test_importing_kernels_does_not_import_triton():
    code = "import sys, anydecode.kernels; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "TRITON_INTERPRET": "0"})


def test_interpreting_leaves_triton_as_it_was():
    import triton
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    call, load, knob = JITFunction.__call__, tl.load, triton.knobs.runtime.interpret
    with kernels.use("triton", block=16):
        kernels.warp_probs(torch.randn(2, 40), 1.0, 3, 0.8)
    assert JITFunction.__call__ is call and tl.load is load and triton.knobs.runtime.interpret == knob
    assert "interpret" not in triton.knobs.runtime.__dict__


def test_dispatcher_picks_reference_off_cuda_and_checks_its_arguments():
    x = torch.randn(2, 8)
    assert kernels.backend(x) == "reference"
    with kernels.use("triton"):
        assert kernels.backend(x) == "triton"
    with pytest.raises(ValueError, match="kernel mode 'gpu'"):
        with kernels.use("gpu"):
            pass
    with pytest.raises(ValueError, match="top_p must lie in"):
        kernels.warp_probs(x, top_p=0.0)
    with pytest.raises(ValueError, match="lengths must lie in"):
        kernels.verify_chain(torch.randn(2, 3, 8), torch.zeros(2, 2, dtype=torch.long), seeds=0, lengths=3)


def test_kernels_mask_out_of_range_values_instead_of_reading_out_of_bounds():
    """On a GPU the dispatchers do not read values back (no synchronisation), so the kernels must survive bad ones:
    draft ids and correction tokens outside the vocabulary, lengths and child counts above the width."""
    from anydecode.kernels import masking, residual, verify

    vocab = 30
    logits = torch.randn(2, 3, vocab)
    args = verify.chain_args(logits, torch.tensor([[1, 2], [3, 4]]), None, seeds=1)
    bad = dataclasses.replace(args, draft_tokens=torch.tensor([[-1, 2], [vocab + 5, 4]]),
                              lengths=torch.tensor([7, -2]))
    n, token = dispatch.run_kernel("verify", logits.device, bad, block=16)
    assert n.tolist() == [0, 0] and bool(((token >= 0) & (token < vocab)).all())

    rows = torch.randn(2, vocab)
    margs = masking.mask_args(rows.clone(), torch.full((2, 1), -1, dtype=torch.int32), torch.tensor([0, 1]),
                              torch.tensor([0, 1, 2]), torch.tensor([1, 2]), torch.tensor([0.5, 0.5]))
    bad_mask = dataclasses.replace(margs, indices=torch.tensor([5, 1]), tokens=torch.tensor([vocab + 3, 2]),
                                   indptr=torch.tensor([0, 1, 9]))
    out = dispatch.run_kernel("masking", rows.device, bad_mask, block=32)
    assert torch.equal(out[0], rows[0]) and float(out[1, 2]) == pytest.approx(float(rows[1, 2]) + 0.5)

    p = torch.softmax(torch.randn(2, vocab), dim=-1)
    targs = residual.tree_args(p, torch.tensor([[1, 2], [3, 4]]), None, seeds=3)
    bad_tree = dataclasses.replace(targs, tokens=torch.tensor([[-4, 2], [3, vocab]]), counts=torch.tensor([9, 2]))
    child, token = dispatch.run_kernel("residual", p.device, bad_tree, entry="launch_tree", block=16)
    assert bool(((token >= 0) & (token < vocab)).all())


# -- warping -------------------------------------------------------------------------------------------------------
@settings(max_examples=10, **SETTINGS)
@given(st.data())
def test_warp_kernel_matches_reference(data):
    rows = data.draw(st.integers(1, 4), "rows")
    vocab = data.draw(st.integers(1, 70), "vocab")
    ties = data.draw(st.booleans(), "ties")
    picks = [data.draw(st.sampled_from(ROW_SETTINGS), f"row {r}") for r in range(rows)]
    logits = logits_rows(gen(data.draw(st.integers(0, 2**20), "seed")), (rows, vocab), ties)
    if data.draw(st.booleans(), "one row all -inf"):
        logits[0] = float("-inf")
    temp, top_k, top_p, min_p = (torch.tensor(c) for c in zip(*picks))
    inv_t = warp.inverse_temperature(temp)
    probs, stats = dispatch.run_kernel("warp", logits.device, logits, inv_t, top_k.long(), top_p.float(),
                                       min_p.float(), block=16)
    want = warp.warp_probs_reference(logits, temp, top_k, top_p, min_p)
    assert torch.equal(probs > 0, want > 0)
    torch.testing.assert_close(probs, want, rtol=1e-5, atol=1e-6)
    ref = warp.warp_stats(logits, inv_t, top_k.long(), top_p.float(), min_p.float())
    sampled = temp > 0
    assert torch.equal(stats[1][sampled], ref.thr[sampled]) and torch.equal(stats[2][sampled], ref.cut[sampled])
    torch.testing.assert_close(stats[3][sampled], ref.z[sampled], rtol=1e-5, atol=1e-6)


TIE_CASES = [  # (logits, temperature, top_k, top_p, min_p, tokens kept), worked out by hand
    ([0.0] * 10, 1.0, 0, 0.35, 0.0, [0, 1, 2, 3]),  # mass before token r is r / 10: kept while below 0.35
    ([0.0] * 10, 1.0, 0, 0.3, 0.0, [0, 1, 2]),  # mass before token 3 is exactly 0.3: dropped
    ([0.0] * 40, 2.0, 0, 0.51, 0.0, list(range(21))),
    ([1.0, 0.0, 1.0, 0.0, 1.0, 0.0], 1.0, 0, 0.5, 0.0, [0, 2, 4]),
    ([0.0, 2.0, 0.0, 2.0, 0.0, 0.0], 0.5, 3, 0.99, 0.0, [0, 1, 2, 3, 4]),  # the 3rd largest ties with 3 more
    ([3.0, 1.0, 1.0, 1.0, 1.0, -5.0], 1.0, 4, 0.9, 0.0, [0, 1, 2, 3]),
    ([0.0, -1.0, 0.0, -1.0, -1.0], 1.0, 0, 1.0, 0.5, [0, 2]),
]


@pytest.mark.parametrize("case", TIE_CASES)
def test_warp_kernel_cuts_tie_groups_by_token_id(case):
    """Top-p cuts a group of equal logits by token id, as the sampler's stable sort does (warpers.py agrees)."""
    from anydecode.algorithms.contracts.config import SamplingConfig
    from anydecode.algorithms.sampling.warpers import warped_probs

    values, temperature, top_k, top_p, min_p, kept = case
    logits = torch.tensor([values])
    got, want = both(lambda: kernels.warp_probs(logits, temperature, top_k, top_p, min_p))
    core = warped_probs(logits, SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p))
    assert (got[0] > 0).nonzero().flatten().tolist() == kept
    assert torch.equal(got > 0, want > 0) and torch.equal(want > 0, core > 0)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


# -- masking and ASAp reweighting ----------------------------------------------------------------------------------
@settings(max_examples=12, **SETTINGS)
@given(st.data())
def test_masking_kernel_matches_reference(data):
    batch = data.draw(st.integers(1, 4), "batch")
    vocab = data.draw(st.integers(1, 100), "vocab")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), "dtype")
    g = gen(data.draw(st.integers(0, 2**20), "seed"))
    rows = data.draw(st.integers(0, batch), "masked rows")
    words = max(1, (vocab + 31) // 32 + data.draw(st.integers(-1, 1), "extra words"))
    bitmask = torch.randint(-2**31, 2**31 - 1, (rows, words), dtype=torch.int32, generator=g)
    if rows and data.draw(st.booleans(), "an all-masked row"):
        bitmask[0] = 0
    if rows and data.draw(st.booleans(), "an all-allowed row"):
        bitmask[-1] = -1
    indices = torch.randperm(batch, generator=g)[:rows] if data.draw(st.booleans(), "indices") else None
    counts = [data.draw(st.integers(0, 40), f"corrections of row {r}") for r in range(rows)]
    indptr = torch.tensor([0] + counts).cumsum(0)
    tokens = torch.randint(0, vocab, (int(indptr[-1]),), generator=g)  # repeats included
    values = torch.randn(tokens.shape, generator=g)
    values[torch.rand(values.shape, generator=g) < 0.1] = float("-inf")  # log EFG of a dead child
    logits = torch.randn(batch, vocab, generator=g).to(dtype)
    corrections = (indptr, tokens, values) if data.draw(st.booleans(), "with corrections") else (None,) * 3

    got, want = both(lambda: kernels.apply_token_masks(logits.clone(), bitmask, indices, *corrections), block=32)
    assert torch.equal(got == float("-inf"), want == float("-inf"))
    finite = torch.isfinite(want)
    tol = dict(rtol=8e-3, atol=8e-3) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    if dtype == torch.float16:
        tol = dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got[finite].float(), want[finite].float(), **tol)
    untouched = torch.ones(batch, dtype=torch.bool)
    untouched[indices if indices is not None else torch.arange(rows)] = False
    assert torch.equal(got[untouched], logits[untouched])


def test_masking_keeps_allowed_logits_bit_for_bit():
    logits = torch.randn(3, 70)
    bitmask = torch.full((3, 3), -1, dtype=torch.int32)
    bitmask[1, 0] = 0b101
    got, want = both(lambda: kernels.apply_token_masks(logits.clone(), bitmask), block=32)
    assert torch.equal(got, want)
    assert torch.equal(got[0], logits[0]) and got[1, 0] == logits[1, 0] and got[1, 1] == float("-inf")
    assert torch.equal(got[:, 64:], logits[:, 64:])  # words cover 96 tokens: 64..69 allowed by bits of word 2


# -- chain verification --------------------------------------------------------------------------------------------
def chain_case(data, max_rows: int = 3, max_k: int = 3, max_vocab: int = 60):
    """Drafts with every kind of row: drawn from q, forced accepts (p(x) = 1), forced rejects (p(x) = 0)."""
    batch = data.draw(st.integers(1, max_rows), "batch")
    k = data.draw(st.integers(0, max_k), "k")
    vocab = data.draw(st.integers(2, max_vocab), "vocab")
    g = gen(data.draw(st.integers(0, 2**20), "seed"))
    logits = logits_rows(g, (batch, k + 1, vocab), data.draw(st.booleans(), "ties"))
    logits[..., 0] = logits[..., 0].clamp(min=0.0)  # every position has a finite logit
    # a drafter close to the target: acceptance probabilities spread over (0, 1), so coins decide
    q = torch.softmax(logits[:, :k].clamp(min=-30.0) + torch.randn(batch, k, vocab, generator=g), dim=-1)
    drafts = torch.multinomial(q.reshape(-1, vocab), 1, generator=g).reshape(batch, k) if k else \
        torch.zeros(batch, 0, dtype=torch.long)
    for b in range(batch):
        kind = data.draw(st.sampled_from(["drawn", "drawn", "accept all", "reject all"]), f"row {b}")
        if kind == "accept all" and k:
            logits[b, :k] = float("-inf")
            logits[b, torch.arange(k), drafts[b]] = 0.0
        elif kind == "reject all" and k:
            logits[b, torch.arange(k), drafts[b]] = float("-inf")
    picks = [data.draw(st.sampled_from(ROW_SETTINGS), f"settings {b}") for b in range(batch)]
    temp, top_k, top_p, min_p = (torch.tensor(c) for c in zip(*picks))
    lengths = torch.tensor([data.draw(st.one_of(st.just(k), st.integers(0, k)), f"length {b}") for b in range(batch)])
    one_hot = data.draw(st.booleans(), "deterministic drafts")
    return dict(target_logits=logits, draft_tokens=drafts, draft_probs=None if one_hot else q,
                seeds=torch.randint(0, 2**62, (batch,), generator=g), offsets=torch.randint(0, 1000, (batch,)),
                lengths=lengths, temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p)


@settings(max_examples=14, **SETTINGS)
@given(st.data())
def test_chain_verification_kernel_matches_reference(data):
    case = chain_case(data)
    (n, token), (n_ref, token_ref) = both(lambda: kernels.verify_chain(**case))
    assert torch.equal(n, n_ref) and torch.equal(token, token_ref)
    assert bool((n <= case["lengths"]).all()) and bool((token >= 0).all())


@settings(max_examples=14, **SETTINGS)
@given(st.data())
def test_sampled_tokens_are_verifications_bonus_tokens_on_kernel_and_reference(data):
    """``sample_tokens`` (plain sampling steps and coupled verification) draws exactly the token chain
    verification draws for a row without drafts, on the reference (its own lean path) and on the kernel."""
    rows = data.draw(st.integers(1, 4), "rows")
    vocab = data.draw(st.integers(2, 90), "vocab")
    g = gen(data.draw(st.integers(0, 2**20), "seed"))
    logits = logits_rows(g, (rows, vocab), data.draw(st.booleans(), "ties"))
    logits[:, 0] = logits[:, 0].clamp(min=0.0)
    temperature, top_k, top_p, min_p = data.draw(st.sampled_from([s for s in ROW_SETTINGS if s[0] > 0]), "settings")
    kw = dict(seeds=int(torch.randint(0, 2**62, (1,), generator=g)), offsets=torch.randint(0, 1000, (rows,)),
              rows=torch.randint(0, 9, (rows,)), temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    token, token_ref = both(lambda: kernels.sample_tokens(logits, **kw))
    with kernels.use("reference"):
        bonus = kernels.verify_chain(logits.unsqueeze(1), torch.zeros(rows, 0, dtype=torch.long), None, lengths=0,
                                     **kw)[1]
    assert torch.equal(token, token_ref) and torch.equal(token_ref, bonus)


@pytest.mark.parametrize("deterministic", [False, True])
def test_chain_verification_kernel_flips_the_same_coins(deterministic):
    """Many drafts whose acceptance is neither certain nor impossible: every coin has to match."""
    g = gen(11)
    batch, k, vocab = 6, 3, 40
    target = torch.randn(batch, k + 1, vocab, generator=g) * 2.5
    q = torch.softmax(target[:, :k] + 0.7 * torch.randn(batch, k, vocab, generator=g), dim=-1)
    drafts = torch.multinomial(q.reshape(-1, vocab), 1, generator=g).reshape(batch, k)
    if deterministic:  # a greedy drafter: its token is the target's likeliest, accepted with that probability
        drafts = target[:, :k].argmax(dim=-1)
    kw = dict(seeds=torch.arange(batch) * 7919, offsets=torch.arange(batch), temperature=0.9)
    (n, token), (n_ref, token_ref) = both(lambda: kernels.verify_chain(target, drafts, None if deterministic else q,
                                                                       **kw))
    assert torch.equal(n, n_ref) and torch.equal(token, token_ref)
    assert len(set(n.tolist())) > 1  # the coins made a difference


def test_chain_verification_accepts_everything_and_nothing():
    vocab, k = 37, 4
    logits = torch.full((2, k + 1, vocab), float("-inf"))
    drafts = torch.tensor([[3, 5, 7, 9], [3, 5, 7, 9]])
    logits[0, torch.arange(k), drafts[0]] = 0.0  # p(x) = 1: accepted whatever the coin
    logits[0, k, 11] = 0.0  # the bonus token is certain
    logits[1, :, 20:30] = 0.0  # p(x) = 0: rejected at once, residual = p
    for mode in ("triton", "reference"):
        with kernels.use(mode, block=16):
            n, token = kernels.verify_chain(logits, drafts, None, seeds=torch.tensor([5, 6]))
        assert n.tolist() == [4, 0] and token[0] == 11 and 20 <= int(token[1]) < 30


@settings(max_examples=6, **SETTINGS)
@given(st.data())
def test_greedy_chain_kernel_matches_reference_and_argmax(data):
    case = chain_case(data)
    (n, token), (n_ref, token_ref) = both(lambda: kernels.verify_chain_greedy(
        case["target_logits"], case["draft_tokens"], case["lengths"]))
    assert torch.equal(n, n_ref) and torch.equal(token, token_ref)
    best = case["target_logits"].argmax(dim=-1)
    assert torch.equal(token, best.gather(1, n.unsqueeze(1)).squeeze(1))


# -- residual sampling and tree nodes ------------------------------------------------------------------------------
def distributions(g: torch.Generator, shape: tuple[int, ...], sparse: bool) -> torch.Tensor:
    x = torch.randn(shape, generator=g) * 2
    if sparse:
        x[torch.rand(shape, generator=g) < 0.5] = float("-inf")
        x[..., 0] = 0.0
    return torch.softmax(x, dim=-1)


@settings(max_examples=10, **SETTINGS)
@given(st.data())
def test_residual_sampling_kernel_matches_reference(data):
    rows = data.draw(st.integers(1, 5), "rows")
    vocab = data.draw(st.integers(1, 80), "vocab")
    g = gen(data.draw(st.integers(0, 2**20), "seed"))
    p = distributions(g, (rows, vocab), data.draw(st.booleans(), "sparse p"))
    q = distributions(g, (rows, vocab), data.draw(st.booleans(), "sparse q"))
    q[0] = p[0]  # no residual mass: falls back to p
    if rows > 1 and data.draw(st.booleans(), "a row without mass"):
        p[1] = 0.0
    kw = dict(seeds=torch.randint(0, 2**40, (rows,), generator=g), positions=data.draw(st.integers(0, 99), "pos"))
    got, want = both(lambda: kernels.sample_residual(p, q, **kw))
    assert torch.equal(got, want)


@settings(max_examples=10, **SETTINGS)
@given(st.data())
def test_tree_node_kernel_matches_reference(data):
    rows = data.draw(st.integers(1, 3), "rows")
    children = data.draw(st.integers(0, 3), "children")
    vocab = data.draw(st.integers(2, 50), "vocab")
    g = gen(data.draw(st.integers(0, 2**20), "seed"))
    p = distributions(g, (rows, vocab), data.draw(st.booleans(), "sparse p"))
    q = distributions(g, (rows, children, vocab), data.draw(st.booleans(), "sparse q"))
    tokens = torch.multinomial(q.reshape(-1, vocab), 1, generator=g).reshape(rows, children) if children else \
        torch.zeros(rows, 0, dtype=torch.long)
    if children > 1 and data.draw(st.booleans(), "repeated sibling"):
        tokens[:, 1] = tokens[:, 0]
    counts = torch.tensor([data.draw(st.integers(0, children), f"count {r}") for r in range(rows)])
    one_hot = data.draw(st.booleans(), "deterministic drafts")
    kw = dict(seeds=torch.randint(0, 2**40, (rows,), generator=g), counts=counts, positions=3)
    (child, token), (child_ref, token_ref) = both(lambda: kernels.verify_tree_node(
        p, tokens, None if one_hot else q, **kw))
    assert torch.equal(child, child_ref) and torch.equal(token, token_ref)
    accepted = child >= 0
    assert torch.equal(token[accepted], tokens[accepted, child[accepted]])


# -- diverse beam search -------------------------------------------------------------------------------------------
@settings(max_examples=8, **SETTINGS)
@given(st.data())
def test_diverse_beam_kernel_matches_reference(data):
    prompts = data.draw(st.integers(1, 2), "prompts")
    groups = data.draw(st.integers(1, 3), "groups")
    size = data.draw(st.integers(1, 2), "group size")
    vocab = data.draw(st.integers(3, 40), "vocab")
    width = groups * size
    g = gen(data.draw(st.integers(0, 2**20), "seed"))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), "dtype")
    ties = data.draw(st.booleans(), "ties")
    raw = torch.randint(0, 3, (prompts * width, vocab), generator=g).to(dtype) if ties else \
        torch.randn(prompts * width, vocab, generator=g, dtype=dtype)
    logp = torch.log_softmax(raw, dim=-1)
    scores = torch.randn(prompts * width, generator=g, dtype=dtype)
    scores[torch.rand(scores.shape, generator=g) < 0.2] = -1e9  # the copies of a prompt at the first step
    eos = data.draw(st.lists(st.integers(0, vocab - 1), max_size=2, unique=True), "eos")
    keep = min(max(2, 1 + len(eos)) * size, size * vocab)
    done = torch.rand(prompts, groups, generator=g) < 0.2
    kw = dict(num_beams=width, groups=groups, penalty=data.draw(st.sampled_from([0.5, 1.0, 2.5]), "penalty"),
              keep=keep, eos=eos, done=done, pad=data.draw(st.integers(0, vocab - 1), "pad"))
    got, want = both(lambda: kernels.diverse_beam_step(logp, scores, **kw))
    for a, b in zip(got, want):
        assert torch.equal(a, b)
