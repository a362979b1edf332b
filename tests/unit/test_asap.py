"""ASAp against the exact grammar-aligned target Q(w) ~ P(w) 1[w in L], with planted-bug twins that must fail."""

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from anydecode.algorithms.contracts.errors import ConfigError
from anydecode.algorithms.grammar import (
    AsapConfig,
    AsapStateStore,
    AsapTransform,
    AsapTrie,
    ModelMismatchError,
    forget_asap_state,
    get_engine,
    grammar_spec,
    state_store,
    toy_vocabulary,
)
from anydecode.algorithms.grammar.exact import (
    asap_sample_distributions,
    exact_efg,
    grammar_target,
    kl_divergence,
    language_strings,
    replay_sample,
    tokenizations,
    transform_distribution,
)
from anydecode.conformance import ToyModel, toy_context
from anydecode.registry import get_decoder

BINARY = toy_vocabulary(["0", "1", None])
ZEROS = (0, 0, 0, 0, 0, 2)


def uniform_five(prefix):
    """The paper's skewed example: uniform over {0, 1} for five tokens, then EOS."""
    return np.array([0.5, 0.5, 0.0] if len(prefix) < 5 else [0.0, 0.0, 1.0])


def closed_form(n: int) -> float:
    """P(n-th ASAp sample = 00000): a GCD sample until 00000 is first seen, exact afterwards."""
    return 0.5 ** n + (1 - 0.5 ** (n - 1)) / 17


SKEWED = {"llguidance": ('start: "00000" | "1" /[01]{4}/', "lark"), "outlines": ("00000|1[01]{4}", "regex")}


def skewed_compiled(engine):
    text, fmt = SKEWED[engine]
    return get_engine(engine).compile(grammar_spec(text, fmt), BINARY)


CONFIG = AsapConfig(grammar="unused here")


@pytest.fixture(autouse=True)
def _fresh_state():
    forget_asap_state()
    yield
    forget_asap_state()


# -- planted bugs: each must make the conformance checks fail ------------------------------------------------------

class NoPropagationTrie(AsapTrie):
    """Planted bug: a node's estimate changes but its ancestors never hear of it."""

    def _set(self, node, value, may_increase):
        node.efg = min(max(value, 0.0), node.mass if node.mass is not None else 1.0)


class RenormalisedAsap(AsapTransform):
    """Planted bug: the trie stores the masked, renormalised probabilities instead of the model's own."""

    def model_logprobs(self, logits, allowed):
        return torch.log_softmax(logits.masked_fill(~torch.from_numpy(allowed), float("-inf")), dim=-1)


def make_asap(compiled, cls=AsapTransform):
    return lambda store: cls(compiled, CONFIG, store)


def make_no_propagation(compiled):
    def make(store):
        transform = AsapTransform(compiled, CONFIG, store)
        original = transform.trie

        def trie(prompt_ids):
            t = original(prompt_ids)
            t.__class__ = NoPropagationTrie
            return t

        transform.trie = trie
        return transform
    return make


def skewed_distributions(make, samples=6):
    return asap_sample_distributions(make, uniform_five, (), samples, 8, [2])


# -- the skewed binary example, exactly ----------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["llguidance", "outlines"])
def test_asap_nth_sample_follows_the_closed_form_on_the_skewed_example(engine):
    dists = skewed_distributions(make_asap(skewed_compiled(engine)), samples=7)
    for n, dist in enumerate(dists, 1):
        assert abs(sum(dist.values()) - 1) < 1e-12
        assert dist[ZEROS] == pytest.approx(closed_form(n), abs=1e-12)
        assert len(dist) == 17, "every output is one of the 17 strings of the language"


def test_gcd_gives_one_half_against_the_exact_one_seventeenth():
    compiled = skewed_compiled("llguidance")
    gcd = get_decoder("gcd").transform(get_decoder("gcd").configure({"grammar": SKEWED["llguidance"][0]}),
                                       toy_context(ToyModel(3, default=uniform_five, eos_token_id=2), [[]], 8,
                                                   tokenizer=BINARY))
    dist = transform_distribution(gcd, uniform_five, (), 8, [2])
    target = grammar_target(uniform_five, (), tokenizations(language_strings("00000|1[01]{4}"), BINARY))
    assert dist[ZEROS] == pytest.approx(0.5, abs=1e-15)
    assert target[ZEROS] == pytest.approx(1 / 17, abs=1e-15)
    assert kl_divergence(dist, target) == pytest.approx(0.7537718023763802, abs=1e-12)
    assert compiled is get_engine("llguidance").compile(grammar_spec(*SKEWED["llguidance"]), BINARY)


@pytest.mark.parametrize("bug", ["no_propagation", "renormalised"])
def test_planted_bugs_break_the_closed_form(bug):
    compiled = skewed_compiled("llguidance")
    make = make_no_propagation(compiled) if bug == "no_propagation" else make_asap(compiled, RenormalisedAsap)
    dists = skewed_distributions(make, samples=4)
    worst = max(abs(d[ZEROS] - closed_form(n)) for n, d in enumerate(dists, 1))
    assert worst > 0.02, f"planted bug {bug} went unnoticed (worst deviation {worst})"


def test_decoder_runs_follow_the_closed_form_statistically():
    """Many independent ASAp runs through the real decoding loop: the 3rd sample's share of 00000."""
    model = ToyModel(3, default=uniform_five, eos_token_id=2)
    asap = get_decoder("asap")
    runs, nth = 300, 3
    hits = 0
    for run in range(runs):
        forget_asap_state()
        for i in range(nth):
            config = asap.configure({"grammar": SKEWED["llguidance"][0], "seed": run * 10 + i})
            result = asap.run(config, toy_context(model, [[]], 8, tokenizer=BINARY))
        hits += tuple(result.sequences[0]) == ZEROS
    p = closed_form(nth)
    # two-sided binomial test; GCD (0.5) would be rejected at this size
    assert stats.binomtest(hits, runs, p).pvalue > 1e-3
    assert stats.binomtest(hits, runs, 0.5).pvalue < 1e-6


# -- hypothesis-drawn toy models and finite grammars ---------------------------------------------------------------

ABC = toy_vocabulary(["a", "b", "c", None])
words = st.lists(st.text("abc", min_size=1, max_size=4), min_size=2, max_size=6, unique=True)


def floored_model(seed):
    """A seeded toy model whose every next-token probability is at least 1/8 (so 400 samples cover the
    language: the properties below hold whatever the model, the floor only keeps the run short)."""
    base = ToyModel.seeded(4, seed=seed, eos_token_id=3, concentration=2.0)
    return ToyModel(4, default=lambda prefix: 0.5 * base.probs(prefix) + 0.125, eos_token_id=3)


def asap_run_checks(strings, seed, max_samples):
    """Run ASAp through the decoding loop until every grammatical sequence has been sampled (or the cap);
    return (exact KL of the next sample before any and after the last, tries after each sample, target, outputs,
    model, prompt)."""
    regex = "|".join(strings)
    model = floored_model(seed)
    prompt = [seed % 3]
    target = grammar_target(model.probs, tuple(prompt), tokenizations(language_strings(regex), ABC))
    asap = get_decoder("asap")
    config = asap.configure({"grammar": regex, "grammar_format": "regex", "seed": seed})
    transform = asap.transform(config, toy_context(model, [prompt], 8, tokenizer=ABC))
    trie = transform.trie(prompt)
    compiled = transform.compiled

    def kl_now():
        (dist,) = asap_sample_distributions(make_asap(compiled), model.probs, tuple(prompt), 1, 8, [3], trie=trie)
        return kl_divergence(dist, target)

    kls = [kl_now()]
    outputs = []
    history = []
    for i in range(max_samples):
        config = asap.configure({"grammar": regex, "grammar_format": "regex", "seed": seed * 1000 + i})
        result = asap.run(config, toy_context(model, [prompt], 8, tokenizer=ABC))
        outputs.append(tuple(result.sequences[0]))
        history.append(trie.copy())
        if set(outputs) >= set(target):
            break
    kls.append(kl_now())
    return kls, history, target, outputs, model, prompt


@given(strings=words, seed=st.integers(0, 10_000))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_asap_converges_to_the_exact_target_and_ends_below_gcd_with_sound_estimates(strings, seed):
    """Once every grammatical sequence has been sampled, every EFG estimate on the way is exact, so the next
    sample's distribution is Q itself: KL 0, below GCD's. The estimates never increase and never fall below
    the exact EFG on the way."""
    forget_asap_state()
    kls, history, target, outputs, model, prompt = asap_run_checks(strings, seed, max_samples=400)
    gcd_kl = kls[0]  # before any sample, ASAp is GCD
    assert all(o in target for o in outputs), "every output is a grammatical sequence"
    assert set(outputs) >= set(target), f"{len(set(outputs))} of {len(target)} sequences seen in 400 samples"
    assert kls[-1] < 1e-9, f"KL {kls[-1]} after covering the language (GCD: {gcd_kl})"
    assert kls[-1] <= gcd_kl
    sequences = list(target)
    previous: dict = {}
    for trie in history:
        rec = trie.to_records()
        paths = []
        for i, up in enumerate(rec["parent"]):
            paths.append(() if up == -1 else paths[up] + (rec["token"][i],))
        for path, efg in zip(paths, rec["efg"]):
            exact = exact_efg(model.probs, tuple(prompt), path, sequences)
            assert efg >= exact - 1e-9, f"EFG~{path}={efg} fell below the exact {exact}"
            assert efg <= previous.get(path, 1.0) + 1e-12, f"EFG~{path} increased"
            previous[path] = efg


def test_kl_falls_at_every_sample_on_the_skewed_example():
    """On the paper's example the n-th sample's KL to Q falls at every n (0.754, 0.243, 0.075, ...)."""
    dists = skewed_distributions(make_asap(skewed_compiled("llguidance")), samples=6)
    target = grammar_target(uniform_five, (), tokenizations(language_strings("00000|1[01]{4}"), BINARY))
    kls = [kl_divergence(d, target) for d in dists]
    assert all(b < a for a, b in zip(kls, kls[1:])) and kls[-1] < 0.01 * kls[0]


def realized_kls(make, model, prompt, target, max_samples, seed):
    """Draw ASAp samples one after another (each from its exact distribution given the trie so far) until the
    language is covered or the cap; return the exact KL of the next sample before and after."""
    rng = np.random.default_rng(seed)
    store = AsapStateStore()
    transform = make(store)
    trie = transform.trie(list(prompt))
    kls = []
    seen = set()
    for i in range(max_samples + 1):
        (dist,) = asap_sample_distributions(make, model.probs, tuple(prompt), 1, 8, [3], trie=trie)
        if i == 0:
            kls.append(kl_divergence(dist, target))
        if i == max_samples or seen >= set(target):
            kls.append(kl_divergence(dist, target))
            return kls
        keys = list(dist)
        pick = keys[rng.choice(len(keys), p=np.array([dist[k] for k in keys]) / sum(dist.values()))]
        seen.add(pick)
        replay_sample(transform, model.probs, tuple(prompt), pick)
    return kls


@given(strings=words, seed=st.integers(0, 10_000))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_planted_renormalisation_bug_fails_the_convergence_check(strings, seed):
    """The twin that stores masked, renormalised probabilities learns nothing: its KL stays at GCD's."""
    regex = "|".join(strings)
    model = floored_model(seed)
    target = grammar_target(model.probs, (), tokenizations(language_strings(regex), ABC))
    compiled = get_engine("llguidance").compile(grammar_spec(regex, "regex"), ABC)
    good = realized_kls(make_asap(compiled), model, (), target, 400, seed)
    bad = realized_kls(make_asap(compiled, RenormalisedAsap), model, (), target, 400, seed)
    assert bad[0] == pytest.approx(good[0], abs=1e-12), "both start as GCD"
    assert good[-1] < 1e-9
    if good[0] > 1e-6:
        assert bad[-1] == pytest.approx(good[0], rel=1e-9), "the twin never moves away from GCD"
        assert not bad[-1] < 1e-9, "the convergence check rejects the twin"


# -- dead ends, temperature, model mismatch ------------------------------------------------------------------------

DEAD_END = 'start: "1" "0" | "0" A\nA: /0+/ & /1+/'


def test_dead_end_stops_the_row_and_asap_learns_to_avoid_it():
    model = ToyModel(3, default=[0.45, 0.45, 0.1], eos_token_id=2)
    asap = get_decoder("asap")
    reasons = Counter()
    for i in range(30):
        result = asap.run(asap.configure({"grammar": DEAD_END, "seed": i}), toy_context(model, [[]], 6,
                                                                                          tokenizer=BINARY))
        seq = tuple(result.sequences[0])
        reasons[result.finish_reasons[0]] += 1
        assert seq in {(1, 0, 2), (0,)}, "no forbidden token is ever emitted"
        assert (result.finish_reasons[0] == "dead_end") == (seq == (0,))
    assert reasons["dead_end"] == 1, "after the first dead end, EFG(0) = 0 and ASAp never goes there again"


def test_gcd_keeps_hitting_the_dead_end():
    model = ToyModel(3, default=[0.45, 0.45, 0.1], eos_token_id=2)
    gcd = get_decoder("gcd")
    reasons = Counter(gcd.run(gcd.configure({"grammar": DEAD_END, "seed": i}),
                              toy_context(model, [[]], 6, tokenizer=BINARY)).finish_reasons[0] for i in range(40))
    assert reasons["dead_end"] > 5 and set(reasons) <= {"dead_end", "stop"}


def test_temperature_applies_after_the_reweighting_and_the_trie_keeps_unwarped_probabilities():
    compiled = skewed_compiled("llguidance")
    store = state_store()
    hot = AsapTransform(compiled, AsapConfig(grammar="x", temperature=0.5), store)
    model = ToyModel(3, default=lambda p: [0.7, 0.3, 0.0] if len(p) < 5 else [0, 0, 1], eos_token_id=2)
    from anydecode.algorithms.grammar.exact import replay_sample

    replay_sample(hot, model.probs, (), (0, 0, 0, 0, 0, 2))
    trie = hot.trie([])
    assert trie.find((0,)).p == pytest.approx(0.7, abs=1e-12)  # the model's own P, not the tempered one
    efg0 = 0.7 ** 4
    assert trie.efg((0,)) == pytest.approx(efg0, abs=1e-12)
    row = hot.start([])
    logits = hot.apply(row, [], model.logits([]))
    expected = torch.softmax(torch.log(torch.tensor([0.7 * efg0, 0.3], dtype=torch.float64)) / 0.5, dim=-1)
    assert torch.allclose(torch.softmax(logits, -1)[:2], expected, atol=1e-12)


def test_state_learned_with_another_model_is_refused():
    asap = get_decoder("asap")
    config = asap.configure({"grammar": SKEWED["llguidance"][0], "seed": 1})
    asap.run(config, toy_context(ToyModel(3, default=uniform_five, eos_token_id=2), [[]], 8, tokenizer=BINARY))
    other = ToyModel(3, default=lambda p: [0.9, 0.1, 0.0] if len(p) < 5 else [0, 0, 1], eos_token_id=2)
    with pytest.raises(ModelMismatchError, match="another model"):
        for seed in range(5):
            asap.run(asap.configure({"grammar": SKEWED["llguidance"][0], "seed": seed}),
                     toy_context(other, [[]], 8, tokenizer=BINARY))


# -- persistence and memory ----------------------------------------------------------------------------------------

def _run(n, path=None, max_nodes=1_000_000, prompt=(), model=None):
    asap = get_decoder("asap")
    model = model or ToyModel(3, default=uniform_five, eos_token_id=2)
    out = []
    for i in range(n):
        settings_ = {"grammar": SKEWED["llguidance"][0], "seed": 100 + i, "asap_max_nodes": max_nodes}
        if path is not None:
            settings_["asap_state"] = str(path)
        out.append(asap.run(asap.configure(settings_), toy_context(model, [list(prompt)], 8, tokenizer=BINARY)))
    return out


def _trie(path=None, prompt=()):
    asap = get_decoder("asap")
    settings_ = {"grammar": SKEWED["llguidance"][0]}
    if path is not None:
        settings_["asap_state"] = str(path)
    t = asap.transform(asap.configure(settings_), toy_context(ToyModel(3, eos_token_id=2), [[]], 8,
                                                                tokenizer=BINARY))
    return t.trie(list(prompt))


def test_state_persists_across_calls_and_round_trips_through_a_file(tmp_path):
    path = tmp_path / "asap.json"
    _run(12, path)
    assert path.exists()
    before = _trie(path).to_records()
    data = json.loads(path.read_text())
    assert data["format"] == "anydecode-asap-state" and data["version"] == 1
    forget_asap_state(path)
    assert _trie(path).to_records() == before, "a new process reads back exactly what was learned"
    _run(3, path, prompt=(1,))  # another prompt: a second entry; the first is kept
    forget_asap_state(path)
    assert len(json.loads(path.read_text())["entries"]) == 2
    assert _trie(path).to_records() == before
    assert not list(tmp_path.glob(".asap.json.*")), "no temporary file is left behind"


@pytest.mark.parametrize("content,match", [
    ("{not json", "cannot read it as JSON"),
    ('{"format": "anydecode-asap-state", "version": 99, "entries": {}}', "version 99"),
    ('{"format": "something-else", "version": 1, "entries": {}}', "format is 'something-else'"),
    ('{"format": "anydecode-asap-state", "version": 1, "entries": {"x": {"prompt": []}}}', "damaged"),
])
def test_corrupt_or_mismatched_state_file_is_an_error_that_loses_nothing(tmp_path, content, match):
    path = tmp_path / "asap.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        _run(1, path)
    assert path.read_text() == content


def test_memory_cap_evicts_subtrees_and_keeps_estimates_sound():
    capped = _run(40, max_nodes=12)
    trie = _trie()
    assert trie.nodes <= 12 and trie.evicted > 0
    sequences = tokenizations(language_strings("00000|1[01]{4}"), BINARY)
    rec = trie.to_records()
    paths = []
    for i, up in enumerate(rec["parent"]):
        paths.append(() if up == -1 else paths[up] + (rec["token"][i],))
    for path, efg in zip(paths, rec["efg"]):
        assert efg >= exact_efg(uniform_five, (), path, sequences) - 1e-12
    assert all(tuple(r.sequences[0]) in set(sequences) for r in capped)


def test_trie_records_reject_inconsistent_arrays():
    with pytest.raises(ValueError):
        AsapTrie.from_records({"parent": [-1, 5], "token": [-1, 0], "p": [1, 0.5], "efg": [1, 1], "mass": [1, -1]})
    with pytest.raises(ValueError):
        AsapTrie.from_records({"parent": [-1], "token": [-1], "p": [1], "efg": [1.5], "mass": [1]})
    assert math.isclose(AsapTrie().root.efg, 1.0)
