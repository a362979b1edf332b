"""The suffix (SuffixDecoding) drafter and its trie: counts equal brute-force substring counts, windows and
evictions leave exactly the trie of what is still held, bounds hold after many updates, proposals follow the most
frequent continuation and stop at min_prob, the match-length cap and the limit, incremental updates equal a
rebuild, tree drafts are valid trees, and greedy speculation with it equals greedy decoding."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import numpy as np
import pytest
from anydecode.algorithms.contracts.config import SamplingConfig
from anydecode.algorithms.contracts.errors import ConfigError
from anydecode.algorithms.speculative.decode import speculative_decode
from anydecode.algorithms.speculative.suffix import SuffixConfig, SuffixDrafter
from anydecode.algorithms.speculative.suffix_tree import SlidingSuffixTrie, SuffixCorpus, SuffixTrie
from anydecode.conformance import ToyModel, toy_context
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sequences = st.lists(st.integers(0, 3), min_size=0, max_size=40)


# -- references ----------------------------------------------------------------------------------------------------
def brute_counts(seqs: list[list[int]], depth: int) -> dict[tuple[int, ...], tuple[int, int]]:
    """{substring: (occurrences, occurrences followed by a token within the depth bound)} by enumeration."""
    count: Counter = Counter()
    cont: Counter = Counter()
    for seq in seqs:
        for j in range(len(seq)):
            for k in range(1, min(depth, len(seq) - j) + 1):
                s = tuple(seq[j: j + k])
                count[s] += 1
                if k < depth and j + k < len(seq):
                    cont[s] += 1
    return {s: (n, cont[s]) for s, n in count.items()}


def build(seqs: list[list[int]], depth: int) -> SuffixTrie:
    trie = SuffixTrie(depth)
    for seq in seqs:
        trie.extend(trie.open_cursor(), seq)
    return trie


def snapshot(trie: SuffixTrie) -> dict[tuple[int, ...], tuple[int, int, int]]:
    """Counts and the most frequent child's token of every node: what a trie built another way must equal."""
    out = {}
    for s, (n, c) in trie.substring_counts().items():
        best = trie.best_child(trie.find(s))
        out[s] = (n, c, trie.token[best] if best >= 0 else -1)
    return out


def reference_first_token(context: list[int], depth: int) -> tuple[int, float] | None:
    """The most frequent follower (latest on a tie) of the longest context suffix (< depth) followed somewhere."""
    n = len(context)
    for k in range(min(depth - 1, n), 0, -1):
        tail = context[n - k:]
        followers: Counter = Counter()
        latest: dict[int, int] = {}
        for j in range(n - k):
            if context[j: j + k] == tail:
                followers[context[j + k]] += 1
                latest[context[j + k]] = j + k
        if followers:
            token = max(followers, key=lambda t: (followers[t], latest[t]))
            return token, followers[token] / sum(followers.values())
    return None


# -- the trie ------------------------------------------------------------------------------------------------------
@SETTINGS
@given(st.lists(sequences, min_size=1, max_size=3), st.integers(2, 6), st.booleans())
def test_counts_equal_brute_force_substring_counts(seqs, depth, interleave):
    trie = SuffixTrie(depth)
    cursors = [trie.open_cursor() for _ in seqs]
    if interleave:  # several sequences growing at once (a corpus with open outputs)
        for i in range(max(len(s) for s in seqs)):
            for r, seq in enumerate(seqs):
                if i < len(seq):
                    cursors[r] = trie.append(cursors[r], seq[i])
    else:
        for r, seq in enumerate(seqs):
            cursors[r] = trie.extend(cursors[r], seq)
    expected = brute_counts(seqs, depth)
    assert trie.substring_counts() == expected
    assert trie.nodes == 1 + len(expected)
    assert trie.indexed_tokens == sum(len(s) for s in seqs)
    for s in expected:
        node = trie.find(s)
        assert trie.link[node] == trie.find(s[1:])  # suffix links
        kids = list(trie.children(node))
        if kids:  # the most frequent child, the latest on a tie
            best = max(kids, key=lambda kc: (trie.count[kc[1]], trie.last[kc[1]]))[1]
            assert trie.best_child(node) == best
        # each cursor holds its sequence's suffixes, shortest first
    for r, seq in enumerate(seqs):
        assert cursors[r] == [trie.find(seq[len(seq) - k:]) for k in range(1, min(depth, len(seq)) + 1)]


@SETTINGS
@given(st.lists(st.integers(0, 4), min_size=1, max_size=120), st.integers(2, 5), st.integers(1, 30),
       st.lists(st.integers(1, 9), min_size=1, max_size=8))
def test_sliding_window_equals_the_trie_of_the_last_window_tokens(seq, depth, extra, chunks):
    window = depth + extra
    sliding = SlidingSuffixTrie(depth, window)
    i = c = 0
    while i < len(seq):
        step = chunks[c % len(chunks)]
        sliding.extend(seq[i: i + step])
        i += step
        c += 1
    held = seq[-window:]
    assert sliding.indexed == held
    rebuilt = build([held], depth)
    assert snapshot(sliding.trie) == snapshot(rebuilt)
    assert sliding.trie.nodes == rebuilt.nodes
    assert sliding.trie.nodes <= 1 + depth * window
    assert sliding.deepest() == sliding.trie.find(held[-min(depth, len(held)):])


@SETTINGS
@given(st.lists(st.lists(st.integers(0, 3), min_size=0, max_size=25), min_size=1, max_size=7),
       st.integers(2, 5), st.integers(1, 4), st.integers(10, 80))
def test_evicting_an_output_removes_its_counts(outputs, depth, max_outputs, max_tokens):
    corpus = SuffixCorpus(depth, max_tokens=max_tokens, max_outputs=max_outputs)
    for out in outputs:
        corpus.add(out)
    held = corpus.outputs()
    assert len(held) <= max_outputs and corpus.tokens == sum(map(len, held)) <= max_tokens
    # what is held is the newest outputs (the newest one cut to max_tokens where it alone is longer)
    nonempty = [o for o in outputs if o]
    if nonempty:
        assert held[-1] == nonempty[-1][:max_tokens]
    rebuilt = build(held, depth)
    assert snapshot(corpus.trie) == snapshot(rebuilt)
    assert corpus.trie.nodes == rebuilt.nodes
    assert corpus.trie.substring_counts() == brute_counts(held, depth)


def test_eviction_with_interleaved_open_outputs_leaves_the_held_outputs_counts():
    corpus = SuffixCorpus(4, max_tokens=30, max_outputs=3)
    rng = np.random.default_rng(0)
    keys = [corpus.open() for _ in range(3)]
    for _ in range(20):
        for k in keys:
            corpus.extend(k, rng.integers(0, 3, size=2).tolist())
        if rng.random() < 0.3:
            corpus.close(keys.pop(0))
            keys.append(corpus.open())
    held = corpus.outputs()
    assert corpus.tokens == sum(map(len, held)) <= 30
    assert corpus.trie.substring_counts() == brute_counts(held, 4)


def test_trie_and_corpus_stay_within_bounds_after_many_updates():
    depth, window = 6, 64
    cfg = SuffixConfig(max_depth=depth, max_indexed_tokens=window, corpus_max_tokens=200, corpus_max_outputs=3)
    corpus = cfg.make_corpus()
    rng = np.random.default_rng(1)
    for _request in range(6):
        drafter = SuffixDrafter(cfg, corpus)
        context = rng.integers(0, 5, size=20).tolist()
        drafter.start([context])
        for _ in range(300):
            seen = list(context)
            draft = drafter.propose([context], [8])[0]
            # accept a random share of the draft and one more token
            keep = int(rng.integers(0, len(draft) + 1))
            context = context + draft.tokens[:keep] + [int(rng.integers(0, 5))]
            own = drafter.rows[0].own
            assert own.trie.indexed_tokens <= window
            assert own.trie.nodes <= 1 + depth * window
            assert corpus.tokens <= 200 and len(corpus.entries) <= 3
            assert corpus.trie.nodes <= 1 + depth * 200
        drafter.finish([context[20:]])
        assert own.trie.substring_counts() == brute_counts([seen[-window:]], depth)
    assert corpus.trie.substring_counts() == brute_counts(corpus.outputs(), depth)


# -- proposals -----------------------------------------------------------------------------------------------------
def propose(context, limit=32, corpus=None, **settings):
    drafter = SuffixDrafter(SuffixConfig(**settings), corpus)
    drafter.start([context])
    return drafter.propose([context], [limit])[0], drafter.last[0]


def test_proposes_the_most_frequent_continuation():
    context = [1, 2, 3, 7, 1, 2, 4, 1, 2, 3, 9, 1, 2]
    # "1 2" was followed by 3 twice and by 4 once; after "1 2 3" came 7 and 9 (9 the latest)
    draft, spec = propose(context, min_prob=0.0, max_spec_factor=4)
    assert draft.tokens[:2] == [3, 9]
    assert spec.probs[:2] == pytest.approx([2 / 3, 1 / 3]) and spec.match_length == 2
    draft, _ = propose(context, min_prob=0.5)
    assert draft.tokens == [3]  # 2/3 then 1/3 < 0.5


@SETTINGS
@given(st.lists(st.integers(0, 3), min_size=1, max_size=60), st.integers(2, 8))
def test_first_draft_token_is_the_brute_force_most_frequent_follower(context, depth):
    draft, spec = propose(context, min_prob=0.0, max_depth=depth, max_spec_factor=8.0)
    expected = reference_first_token(context, depth)
    if expected is None:
        assert not draft.tokens
    else:
        assert draft.tokens[0] == expected[0]
        assert spec.probs[0] == pytest.approx(expected[1])


@SETTINGS
@given(st.lists(st.integers(0, 3), min_size=1, max_size=60), st.integers(2, 8), st.floats(0.0, 1.0),
       st.floats(0.1, 3.0), st.integers(1, 12), st.integers(0, 12))
def test_draft_length_respects_min_prob_match_cap_and_limit(context, depth, min_prob, factor, most, limit):
    free, free_spec = propose(context, limit=100, min_prob=0.0, max_depth=depth, max_spec_factor=100.0,
                              max_draft_tokens=100)
    draft, _ = propose(context, limit=limit, min_prob=min_prob, max_depth=depth, max_spec_factor=factor,
                       max_draft_tokens=most)
    if free_spec is None:
        assert not draft.tokens
        return
    probs = free_spec.probs
    assert all(a >= b for a, b in zip(probs, probs[1:]))  # path probabilities never grow
    confident = sum(p >= min_prob for p in probs)
    cap = math.floor(factor * free_spec.match_length + 1e-9)
    assert draft.tokens == free.tokens[: min(confident, cap, most, limit)]


def test_empty_draft_when_nothing_matches():
    assert propose([5, 6, 7, 8])[0].tokens == []  # no token repeats: no context has a continuation
    assert propose([1, 2, 1, 2, 9])[0].tokens == []  # the last token is new
    assert propose([1, 2, 1, 2], limit=0)[0].tokens == []
    assert propose([])[0].tokens == []
    assert propose([1, 2, 3, 1], min_match=2)[0].tokens == []  # only a one-token match


@SETTINGS
@given(st.lists(st.integers(0, 3), min_size=2, max_size=80), st.lists(st.integers(1, 7), min_size=1, max_size=6),
       st.integers(8, 40))
def test_incremental_update_equals_rebuild(sequence, chunks, window):
    cfg = SuffixConfig(max_depth=5, max_indexed_tokens=window, min_prob=0.05, max_spec_factor=3.0)
    drafter = SuffixDrafter(cfg)
    drafter.start([sequence[:1]])
    i, c = 1, 0
    while i < len(sequence):
        i = min(len(sequence), i + chunks[c % len(chunks)])
        c += 1
        context = sequence[:i]
        got = drafter.propose([context], [16])[0]
        fresh = SuffixDrafter(cfg)
        fresh.start([context])
        assert got.tokens == fresh.propose([context], [16])[0].tokens
        spec, ref = drafter.last[0], fresh.last[0]
        assert (spec is None) == (ref is None)
        if spec is not None:
            assert spec.probs == pytest.approx(ref.probs)


@SETTINGS
@given(st.lists(st.integers(0, 3), min_size=1, max_size=80), st.integers(1, 12), st.integers(1, 20),
       st.floats(0.0, 0.5))
def test_tree_drafts_are_valid_trees_within_max_nodes(context, max_nodes, limit, min_prob):
    settings_ = dict(max_depth=6, min_prob=min_prob, max_spec_factor=2.0)
    tree, spec = propose(context, limit=limit, tree=True, max_nodes=max_nodes, **settings_)
    chain, _ = propose(context, limit=limit, **settings_)
    assert len(tree) <= min(max_nodes, limit)
    if not len(tree):
        return
    parents = tree.parents
    depth = []
    for i, p in enumerate(parents):
        assert -1 <= p < i  # parents come before their children
        depth.append(1 if p < 0 else depth[p] + 1)
        assert spec.probs[i] >= min_prob and (p < 0 or spec.probs[i] <= spec.probs[p] + 1e-12)
    assert max(depth) <= math.floor(2.0 * spec.match_length + 1e-9)
    for p in set(parents):  # siblings are different tokens
        kids = [tree.tokens[i] for i, q in enumerate(parents) if q == p]
        assert len(kids) == len(set(kids))
    main = [tree.tokens[i] for i in tree.main_path()]
    assert main == chain.tokens[: len(main)]  # the first-child chain follows the most frequent children


def test_corpus_drafts_what_earlier_outputs_continued_and_learns_the_new_output():
    corpus = SuffixCorpus(8)
    corpus.add([20, 21, 22, 23, 24, 25])
    drafter = SuffixDrafter(SuffixConfig(max_depth=8, max_spec_factor=4.0), corpus)
    prompt = [1, 2, 3]
    drafter.start([prompt])
    context = prompt + [20, 21]
    assert drafter.propose([context], [10])[0].tokens == [22, 23, 24, 25]
    assert drafter.last[0].source == "corpus"
    assert corpus.outputs()[-1] == [20, 21]  # the output is indexed as it grows
    drafter.finish([context[3:] + [26]])
    assert corpus.outputs()[-1] == [20, 21, 26]
    # no corpus use when the settings say so
    off = SuffixDrafter(SuffixConfig(max_depth=8, use_corpus=False), corpus)
    off.start([prompt])
    assert off.propose([prompt + [20, 21]], [10])[0].tokens == []


def test_the_higher_scoring_tree_is_drafted_from_and_the_own_tree_on_a_tie():
    corpus = SuffixCorpus(8)
    corpus.add([3, 7, 8, 11, 12, 13, 14])
    # own: "7 8" (matched on 2 tokens: at most 2 drafted); corpus: "3 7 8" (3 tokens, all followed by 11 12 13)
    draft, spec = propose([7, 8, 9, 5, 3, 7, 8], corpus=corpus)
    assert draft.tokens == [11, 12, 13] and spec.source == "corpus"
    # a tie (both match "3 7 8" and draft 3 sure tokens): the request's own tree
    draft, spec = propose([3, 7, 8, 9, 10, 0, 3, 7, 8], corpus=corpus)
    assert draft.tokens == [9, 10, 0] and spec.source == "own"
    # own: "5 7 8" (3 tokens) against the corpus' "7 8" (2 tokens)
    draft, spec = propose([5, 7, 8, 9, 10, 0, 5, 7, 8], corpus=corpus)
    assert draft.tokens == [9, 10, 0] and spec.source == "own"


def test_bad_settings_name_the_value():
    with pytest.raises(ConfigError, match="min_match=8"):
        SuffixConfig(max_depth=8, min_match=8)
    with pytest.raises(ConfigError, match="max_indexed_tokens=10"):
        SuffixConfig(max_depth=24, max_indexed_tokens=10)
    assert SuffixConfig.from_mapping({"tree": "true", "min_prob": "0.2"}, from_strings=True).tree
    with pytest.raises(ValueError, match="token ids must be >= 0"):
        SuffixTrie(4).append([], -1)


@pytest.mark.parametrize("forward_cost, tree, expected", [
    ((0.97, 0.03, 0.06), None, True),   # transformers on a CPU: a further block token costs 9% of a forward
    ((1.0, 0.002), None, True),          # a GPU
    ((0.63, 0.37, 0.43), None, False),   # llama.cpp: a further block token costs 80% of a forward
    (None, None, False),                 # unknown cost (vLLM's proposer): the chain it verifies
    ((0.97, 0.03, 0.06), False, False),  # a setting wins over the cost
    ((0.63, 0.37, 0.43), True, True),
])
def test_trees_and_longer_drafts_are_the_default_where_block_tokens_are_cheap(forward_cost, tree, expected):
    from anydecode.algorithms.speculative.decoders import drafter_spec
    from anydecode.algorithms.speculative.schedule import block_token_share

    share = block_token_share(forward_cost)
    cheap = share is not None and share < SuffixDrafter.CHEAP_BLOCK_TOKEN
    context = [1, 2, 3, 4, 5, 6, 7, 1, 2]
    ctx = toy_context(copying_model(), [context], 8)
    ctx.session.forward_cost = forward_cost
    spec = drafter_spec("suffix")
    drafter = spec.factory(SuffixConfig(tree=tree, use_corpus=False), SamplingConfig(), ctx)
    assert drafter.tree is expected
    drafter.start(ctx.prompts)
    draft = drafter.propose([context], [16])[0]
    assert (draft.parents is not None) is expected
    # matched on "1 2": 2 tokens drafted per matched token at SuffixDecoding's alpha (1), 4 where block tokens are
    # cheap
    assert draft.tokens == ([3, 4, 5, 6, 7, 1, 2, 3] if cheap else [3, 4])
    # a setting wins over the cost
    fixed = spec.factory(SuffixConfig(tree=tree, use_corpus=False, max_spec_factor=1.5), SamplingConfig(), ctx)
    fixed.start(ctx.prompts)
    assert fixed.propose([context], [16])[0].tokens == [3, 4, 5]


def test_a_tree_accepted_whole_grows_the_node_budget_and_a_rejection_resets_it():
    """Tree mode: after a step whose main path was accepted whole, the next tree may hold twice the nodes (up to
    max_grown_nodes); after a rejection it is back to max_nodes. Chains are left to the draft controller."""
    run = list(range(10, 90))  # the prompt holds a long run that the output copies
    prompt = run + [1] + run[:2]

    def sizes(tree: bool, accept_whole: list[bool]) -> list[int]:
        drafter = SuffixDrafter(SuffixConfig(tree=tree, max_nodes=4, max_grown_nodes=16, max_spec_factor=8.0,
                                             use_corpus=False))
        drafter.start([prompt])
        out: list[int] = []
        seen = []
        for whole in accept_whole:
            draft = drafter.propose([prompt + out], [64])[0]
            seen.append(len(draft))
            main = draft.main_path()
            assert [draft.tokens[i] for i in main] == run[2 + len(out): 2 + len(out) + len(main)]
            accepted = main if whole else main[:1]
            drafter.feedback(0, draft, accepted)
            out += run[2 + len(out): 2 + len(out) + len(accepted) + 1]  # the accepted tokens and the target's own
        return seen

    assert sizes(True, [True, True, True, True, False, True]) == [4, 8, 16, 16, 16, 4]
    # a chain's length is the caller's (the controller's limit) and the match cap's, never the node budget
    assert min(sizes(False, [True, False, True])) >= 16


# -- in the speculative loop ---------------------------------------------------------------------------------------
VOCAB, EOS = 9, 8


def copying_model(seed: int = 0) -> ToyModel:
    """Mostly repeats the token 3 positions back, sometimes deviates: contexts repeat, so suffix drafts match."""

    def dist(prefix: tuple[int, ...]) -> np.ndarray:
        digest = hashlib.sha256(repr((seed, prefix)).encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        p = rng.dirichlet(np.full(VOCAB, 0.5)) * 0.15
        favourite = prefix[-3] if len(prefix) >= 3 else 1
        if digest[8] % 9 == 0:
            favourite = (favourite + 1) % (VOCAB - 1)
        p[favourite] += 1.0
        p[EOS] *= 0.05
        return p / p.sum()

    return ToyModel(VOCAB, default=dist, eos_token_id=EOS)


def greedy_reference(model: ToyModel, prompt: list[int], max_new: int) -> list[int]:
    out: list[int] = []
    while len(out) < max_new:
        token = int(np.argmax(model.probs(prompt + out)))
        out.append(token)
        if token == EOS:
            break
    return out


@pytest.mark.parametrize("tree", [False, True])
@pytest.mark.parametrize("rows", [1, 3])
def test_greedy_speculation_with_suffix_drafts_equals_greedy_decoding(tree, rows):
    # prompts of one length: a toy session truncates all rows to one length
    prompts = [[1, 2, 3, 4, 5, 6, 1, 2, 3], [3, 3, 0, 7, 7, 1, 2, 0, 7], [5, 4, 5, 4, 0, 1, 2, 3, 4]][:rows]
    model = copying_model(seed=rows)
    corpus = SuffixCorpus(12)
    for _ in range(2):  # the second request also drafts from the first one's outputs
        drafter = SuffixDrafter(SuffixConfig(max_depth=12, tree=tree, max_nodes=6, max_spec_factor=2.0), corpus)
        ctx = toy_context(model, prompts, 40)
        result = speculative_decode(ctx, drafter, SamplingConfig(temperature=0.0), cost_aware=False)
        drafter.finish(result.sequences)
        assert result.sequences == [greedy_reference(model, p, 40) for p in prompts]
        assert 0 < result.stats["accepted"] <= result.stats["drafted"]
        assert result.stats["forward_passes"] < sum(len(s) for s in result.sequences)
    assert len(corpus.outputs()) == 2 * rows
