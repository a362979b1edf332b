"""The speculative decoders on toy models: greedy output identical to the greedy loop for every drafter and batch
size, limits (max_new_tokens, EOS inside an accepted draft), statistics, bad input, and sequence-level chi-square
of sampling against the exact target law (with a planted-bug twin that must be rejected)."""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from anydecode.algorithms.contracts.errors import ConfigError, RegistryError
from anydecode.algorithms.contracts.session import ModelSession
from anydecode.algorithms.sampling.warpers import warped_probs
from anydecode.algorithms.speculative.config import SpeculativeSampling
from anydecode.algorithms.speculative.decode import speculative_decode
from anydecode.algorithms.speculative.decoders import drafter_factory_of
from anydecode.algorithms.speculative.draft import Draft
from anydecode.algorithms.speculative.draft_model import DraftModelConfig, DraftModelDrafter
from anydecode.conformance import ToyModel, ToySession, chi_square_test, enumerate_sequences
from anydecode.conformance import toy_context as _toy_context

import anydecode

VOCAB = 9
EOS = 8


class LeftPaddedToySession(ToySession):
    """A toy session whose rows behave like a left-padded batch, as the HF session's do: ``length`` counts the
    longest row, and ``truncate`` drops the same number of trailing positions from every row."""

    @property
    def length(self) -> int:
        return max((len(r) for r in self.rows), default=0)

    def truncate(self, length: int) -> None:
        drop = self.length - length
        for row in self.rows:
            del row[len(row) - drop:]

    def fork(self) -> LeftPaddedToySession:
        return LeftPaddedToySession(self.model, self.rows)


class CopiesOnlyToySession(LeftPaddedToySession):
    """Without tree attention: tree drafts are verified on copies of the row, one per root-to-leaf path."""

    append_tree = ModelSession.append_tree

    def fork(self) -> CopiesOnlyToySession:
        return CopiesOnlyToySession(self.model, self.rows)


def toy_context(model: ToyModel, prompts, max_new_tokens: int, tree_attention: bool = True, **kwargs):
    """``conformance.toy_context`` on a left-padded toy session (rows of different lengths)."""
    ctx = _toy_context(model, prompts, max_new_tokens, **kwargs)
    cls = LeftPaddedToySession if tree_attention else CopiesOnlyToySession
    ctx.session = cls(model, prompts)
    return ctx


def copying_model(seed: int = 0, noise: float = 0.15, eos_after: int | None = None) -> ToyModel:
    """Mostly repeats the token seen 3 positions back, sometimes deviates: drafts from the context often match."""

    def dist(prefix: tuple[int, ...]) -> np.ndarray:
        digest = hashlib.sha256(repr((seed, prefix)).encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        p = rng.dirichlet(np.full(VOCAB, 0.5)) * noise
        favourite = prefix[-3] if len(prefix) >= 3 else 1
        if digest[8] % 9 == 0:
            favourite = (favourite + 1) % (VOCAB - 1)
        if eos_after is not None and len(prefix) >= eos_after:
            favourite = EOS
        p[favourite] += 1.0
        p[EOS] *= 0.05 if favourite != EOS else 1.0
        return p / p.sum()

    return ToyModel(VOCAB, default=dist, eos_token_id=EOS)


PROMPTS = [[1, 2, 3, 4, 5, 6, 1, 2, 3], [3, 3, 0, 7, 7, 1, 2, 0, 7, 2], [5, 4]]
DRAFTERS = [
    ("prompt_lookup", {}),
    ("iad", {}),
    ("iad", {"source_ids": (1, 2, 3, 1, 2, 3, 4)}),
    ("aded", {}),
    ("aded", {"max_nodes": 3, "branching": 3}),
    ("aded", {"max_nodes": 10, "branching": 3, "tree_attention": False}),
    ("speculative", {"drafter": "draft_model", "num_draft_tokens": 3}),
    ("speculative", {"drafter": "prompt_lookup", "max_ngram": 2, "adaptive": False}),
]


def run(name: str, settings: dict, model: ToyModel, prompts, max_new: int, draft_model: ToyModel | None = None):
    dec = anydecode.get_decoder(name)
    fields = {}
    settings = dict(settings)
    tree_attention = settings.pop("tree_attention", True)
    if settings.get("drafter") == "draft_model":
        fields["draft_session"] = LeftPaddedToySession(draft_model or copying_model(seed=5), prompts)
    ctx = toy_context(model, prompts, max_new, tree_attention=tree_attention, **fields)
    return dec.run(dec.configure(settings), ctx), ctx


def greedy(model: ToyModel, prompts, max_new: int):
    dec = anydecode.get_decoder("greedy")
    return dec.run(dec.configure({}), toy_context(model, prompts, max_new))


@pytest.mark.parametrize("name,settings", DRAFTERS)
@pytest.mark.parametrize("rows", [1, 3])
def test_greedy_speculation_equals_greedy_decoding(name, settings, rows):
    model = copying_model(seed=rows)
    prompts = PROMPTS[:rows]
    expected = greedy(model, prompts, 30)
    result, ctx = run(name, settings, model, prompts, 30)
    assert result.sequences == expected.sequences
    assert result.finish_reasons == expected.finish_reasons
    stats = result.stats
    assert stats["accepted"] <= stats["drafted"]
    assert stats["forward_passes"] == ctx.session.forward_passes
    assert stats["forward_passes"] <= sum(len(s) for s in result.sequences)


def test_tree_attention_and_row_copies_verify_the_same_trees():
    """One forward with tree attention accepts exactly what verifying each root-to-leaf path on a row copy does,
    and a tree step keeps only the block's leading chain in the cache (the rest is re-fed as pending tokens)."""
    model = copying_model(seed=7)
    # fixed draft sizes: the cost-aware controller sizes drafts from wall-clock time, which differs between runs
    settings = {"max_nodes": 10, "branching": 3, "cost_aware": False}
    calls = []

    class Counting(LeftPaddedToySession):
        def append_tree(self, tokens, parents):
            calls.append(tuple(parents[0].tolist()))
            return super().append_tree(tokens, parents)

    dec = anydecode.get_decoder("aded")
    ctx = toy_context(model, PROMPTS, 40)
    ctx.session = Counting(model, PROMPTS)
    with_mask = dec.run(dec.configure(settings | {"persist": False}), ctx)
    copies, _ = run("aded", settings | {"persist": False, "tree_attention": False}, model, PROMPTS, 40)
    assert with_mask.sequences == copies.sequences == greedy(model, PROMPTS, 40).sequences
    assert with_mask.stats["accepted"] == copies.stats["accepted"] > 0
    assert any(any(p not in (i - 1, -1) for i, p in enumerate(c)) for c in calls)  # real trees went through


def test_speculation_saves_target_passes_on_copying_text():
    model = copying_model(seed=1, noise=0.01)
    for name in ("prompt_lookup", "aded"):
        result, _ = run(name, {"cost_aware": False}, model, PROMPTS[:1], 40)
        assert result.stats["tokens_per_forward"] > 2.0, name


def editing_model(source: list[int], vocab: int = 40, edits: tuple[int, ...] = (5, 17)) -> ToyModel:
    """Rewrites ``source`` (which the prompt holds after an instruction) with a substitution at each ``edits``
    position, then ends: the kind of output Input-guided Aggressive Decoding is made for."""
    eos = vocab - 1

    def dist(prefix: tuple[int, ...]) -> np.ndarray:
        generated = len(prefix) - (len(source) + 3)
        p = np.full(vocab, 1e-3)
        if generated >= len(source):
            p[eos] = 1.0
        else:
            token = source[generated]
            p[(token + 1) % (vocab - 1) if generated in edits else token] = 1.0
        return p / p.sum()

    return ToyModel(vocab, default=dist, eos_token_id=eos)


def test_iad_copies_the_input_span_in_few_target_passes():
    rng = np.random.default_rng(0)
    source = rng.permutation(38)[:30].tolist()
    model = editing_model(source)
    prompt = [38, 37] + source + [36]
    expected = greedy(model, [prompt], 40)
    result, _ = run("iad", {"cost_aware": False}, model, [prompt], 40)
    assert result.sequences == expected.sequences and result.finish_reasons == ["stop"]
    # a mismatch at each edit and a re-alignment after it: a handful of passes for 31 tokens
    assert result.stats["forward_passes"] <= 8, result.stats
    given, _ = run("iad", {"source_ids": tuple(source), "cost_aware": False}, model, [prompt], 40)
    assert given.sequences == expected.sequences and given.stats["forward_passes"] <= 8


def test_iad_falls_back_to_lookup_while_the_output_is_not_aligned_with_the_input():
    from anydecode.algorithms.speculative.iad import IADConfig, IADDrafter

    prompt = [50, 51, 52, 53]
    repeating = prompt + [1, 2, 3, 4, 9, 1, 2]  # no generated token is in the input; the model repeats itself
    drafter = IADDrafter(IADConfig(fallback=True, fallback_tokens=3))
    drafter.start([prompt])
    draft = drafter.propose([repeating], [20])[0]
    assert draft.tokens == [3, 4, 9]  # what followed the last "1 2" in the generated text
    cap = drafter.rows[0].cap
    drafter.feedback(0, draft, [])  # a rejected fallback draft leaves the input draft length alone
    assert drafter.rows[0].cap == cap
    # the latest occurrence wins, and the whole context is searched when the generated text has no match
    drafter.start([prompt])
    assert drafter.propose([prompt + [7, 5, 8, 7, 6, 7]], [5])[0].tokens == [6, 7]
    given = IADDrafter(IADConfig(source_ids=(60, 61, 62), fallback=True))
    given.start([[7, 5, 8, 50, 51]])
    assert given.propose([[7, 5, 8, 50, 51, 9, 7]], [5])[0].tokens == [5, 8, 50, 51, 9]
    plain = IADDrafter(IADConfig(fallback=False))
    plain.start([prompt])
    assert plain.propose([repeating], [20])[0].tokens == []
    # by default it follows the session's cost of a further block token: on where cheap, off where dear
    assert IADDrafter(IADConfig(), block_token_cost=0.04).fallback
    assert not IADDrafter(IADConfig(), block_token_cost=0.45).fallback
    assert IADDrafter(IADConfig(fallback=True), block_token_cost=0.45).fallback
    assert not IADDrafter(IADConfig()).fallback  # cost unknown (vLLM's proposer): the paper's drafter


@pytest.mark.parametrize("name,settings", DRAFTERS)
@pytest.mark.parametrize("max_new", [0, 1, 2, 7])
def test_never_more_than_max_new_tokens(name, settings, max_new):
    result, _ = run(name, settings, copying_model(seed=2, noise=0.01), PROMPTS, max_new)
    assert all(len(s) <= max_new for s in result.sequences)
    assert result.sequences == greedy(copying_model(seed=2, noise=0.01), PROMPTS, max_new).sequences


@pytest.mark.parametrize("name,settings", DRAFTERS)
def test_stops_at_eos_inside_an_accepted_draft(name, settings):
    model = copying_model(seed=3, noise=0.0, eos_after=14)
    prompts = [[1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2]]
    result, _ = run(name, settings, model, prompts, 30)
    assert result.sequences[0][-1] == EOS and result.sequences[0].count(EOS) == 1
    assert result.finish_reasons == ["stop"]
    assert result.sequences == greedy(model, prompts, 30).sequences


def test_stops_at_eos_inside_a_draft_that_runs_past_it():
    """A drafter that proposes tokens after EOS: the EOS is emitted, nothing after it."""
    model = copying_model(seed=3, noise=0.0, eos_after=5)
    expected = greedy(model, [[3, 1, 2]], 20).sequences[0]
    assert expected[-1] == EOS and len(expected) >= 2

    class Fixed:
        deterministic, tree = True, False

        def start(self, prompts):
            pass

        def propose(self, contexts, limits):
            return [Draft((expected + [2, 3])[: limits[0]])]

        def feedback(self, row, draft, accepted):
            pass

    ctx = toy_context(model, [[3, 1, 2]], 20)
    result = speculative_decode(ctx, Fixed(), SpeculativeSampling(), cost_aware=False)
    assert result.sequences == [expected] and result.finish_reasons == ["stop"]
    assert result.stats["forward_passes"] == 1


def test_on_token_streams_every_emitted_token_in_order():
    seen: list[tuple[int, int]] = []
    dec = anydecode.get_decoder("iad")
    ctx = toy_context(copying_model(seed=4), PROMPTS, 12, on_token=lambda r, t: seen.append((r, t)))
    result = dec.run(dec.configure({}), ctx)
    for row, seq in enumerate(result.sequences):
        assert [t for r, t in seen if r == row] == seq


def test_cost_model_picks_long_drafts_when_forwards_cost_little_per_token_and_short_ones_otherwise():
    from anydecode.algorithms.speculative.schedule import DraftLengthController

    cheap = DraftLengthController(1)
    costly = DraftLengthController(1)
    for width in (1, 2, 4, 8, 16, 32):
        cheap.record_forward(width, 0.100 + 0.001 * width)
        costly.record_forward(width, 0.010 + 0.008 * width)
    for _ in range(10):
        cheap.record_row(0, 10, 9)
        costly.record_row(0, 10, 9)
    assert cheap.limit(0, 64, 1) >= 16
    assert costly.limit(0, 64, 1) <= 4
    assert DraftLengthController(1).limit(0, 12, 1) == 2  # nothing timed, no hint: short drafts while accepted
    assert DraftLengthController(1).limit(0, 1, 1) == 1
    hopeless = DraftLengthController(1, probe_every=3)
    for width in (1, 2, 4, 8):
        hopeless.record_forward(width, 0.010 * width)  # a draft token costs as much as a forward
    for _ in range(10):
        hopeless.record_row(0, 8, 0)
    # probing a row that does not draft costs at most 3% of its plain steps: a one-token probe costs a whole extra
    # step here, so it comes once every 34 steps (and a failed probe doubles the wait after it)
    choices = []
    for _ in range(120):
        k = hopeless.limit(0, 8, 1)
        choices.append(k)
        hopeless.record_row(0, k, 0)
    probes = [i for i, k in enumerate(choices) if k]
    assert probes and probes[0] >= 33 and all(choices[i] == 1 for i in probes)
    assert len(probes) <= 120 * 0.03 + 1
    # where a block token is cheap (transformers: 2% of a step) the probe after 8 idle steps drafts all 8 tokens
    cheap_probe = DraftLengthController(1, probe_every=8, fixed_cost=(1.0, 0.02))
    for _ in range(60):
        cheap_probe.record_row(0, 8, 0)
    assert [cheap_probe.limit(0, 8, 1) for _ in range(8)] == [0] * 7 + [8]


def test_cost_model_prices_leaving_the_one_token_path():
    """llama.cpp's shape: a second token costs far more than each token after it; the fit finds the step, and a
    low acceptance that a linear model would draft for does not pay."""
    from anydecode.algorithms.speculative.schedule import DraftLengthController, block_token_share, cost_of

    timed = DraftLengthController(1)
    for _ in range(3):
        for width in (1, 2, 4, 8, 16):
            timed.record_forward(width, 0.0058 + 0.0034 * width + (0.004 if width > 1 else 0.0))
    c0, c1, cb = timed.cost_model()
    assert abs(c0 - 0.0058) < 1e-6 and abs(c1 - 0.0034) < 1e-6 and abs(cb - 0.004) < 1e-6
    assert abs(cost_of((c0, c1, cb), 2) - 0.0166) < 1e-6
    assert abs(block_token_share((0.63, 0.37, 0.43)) - 0.8) < 1e-9
    assert abs(block_token_share((1.0, 0.04)) - 0.04 / 1.04) < 1e-9 and block_token_share(None) is None
    stepped = DraftLengthController(1, fixed_cost=(0.63, 0.37, 0.43))
    linear = DraftLengthController(1, fixed_cost=(0.63, 0.37))
    for controller in (stepped, linear):
        for _ in range(10):
            controller.record_row(0, 4, 1)  # about 0.5 acceptance
    assert linear.limit(0, 16, 1) >= 1 and stepped.limit(0, 16, 1) == 0


def test_bad_input_names_the_value():
    spec = anydecode.get_decoder("speculative")
    with pytest.raises(ConfigError, match="num_draft_tokens=0"):
        spec.configure({"drafter": "prompt_lookup", "num_draft_tokens": 0})
    with pytest.raises(ConfigError, match="max_draft_tokens=0"):
        anydecode.get_decoder("iad").configure({"max_draft_tokens": 0})
    with pytest.raises(RegistryError, match="unknown drafter 'medusa'.*prompt_lookup"):
        spec.configure({"drafter": "medusa"})
    with pytest.raises(ConfigError, match="source=''.*empty"):
        anydecode.get_decoder("iad").configure({"source": " "[:0]})
    with pytest.raises(ConfigError, match="source_ids=\\(\\) is empty"):
        anydecode.get_decoder("iad").configure({"source_ids": []})
    with pytest.raises(ConfigError, match="unknown setting 'max_ngrams'.*max_ngram"):
        spec.configure({"drafter": "prompt_lookup", "max_ngrams": 2})
    dec = anydecode.get_decoder("iad")
    with pytest.raises(ConfigError, match="input span is empty"):
        dec.run(dec.configure({}), toy_context(copying_model(), [[]], 5))


def test_draft_model_with_another_vocabulary_is_refused_naming_both_sizes():
    with pytest.raises(ConfigError, match=r"\(5 tokens\).*\(9 tokens\)"):
        run("speculative", {"drafter": "draft_model"}, copying_model(), PROMPTS[:1], 5,
            draft_model=ToyModel.seeded(5, seed=0))
    with pytest.raises(ConfigError, match="needs a draft model"):
        dec = anydecode.get_decoder("speculative")
        dec.run(dec.configure({"drafter": "draft_model"}), toy_context(copying_model(), PROMPTS[:1], 5))


def test_the_runtimes_stopping_rule_and_processors_are_honoured():
    """A runtime's stopping rule ends a row; its processors (here: ban token 3) shape every verified position."""
    from anydecode.algorithms.contracts.runtime import RuntimeProcessors, StoppingRule

    class Ban3(RuntimeProcessors):
        def __call__(self, prompt_rows, generated, logits):
            out = logits.clone()
            out[:, 3] = float("-inf")
            return out

    class AfterFive(StoppingRule):
        def __call__(self, prompt_row, generated):
            return len(generated) >= 5

    model = copying_model(seed=6, noise=0.05)
    dec = anydecode.get_decoder("prompt_lookup")
    ctx = toy_context(model, PROMPTS[:1], 25, processors=Ban3())
    result = dec.run(dec.configure({}), ctx)
    assert 3 not in result.sequences[0]
    ref = anydecode.get_decoder("greedy")
    # the greedy reference: the same ban, one token at a time
    session = ToySession(model, PROMPTS[:1])
    logits = session.prompt_logits()[0]
    out = []
    for _ in range(25):
        logits = logits.clone()
        logits[3] = float("-inf")
        token = int(torch.argmax(logits))
        out.append(token)
        if token == EOS:
            break
        logits = session.append([[token]])[0, -1]
    assert result.sequences[0] == out
    del ref
    ctx = toy_context(model, PROMPTS[:1], 25, stopping=AfterFive())
    result = dec.run(dec.configure({}), ctx)
    assert len(result.sequences[0]) == 5 and result.finish_reasons == ["stop"]


# -- sequence-level chi-square of sampling ------------------------------------------------------------------------

SAMPLE_VOCAB = 3
SAMPLE_LEN = 4


def cached(model: ToyModel) -> ToyModel:
    """The same model with its per-prefix distributions memoised (the chi-square runs ask for them often)."""
    return ToyModel(model.vocab_size, default=functools.lru_cache(maxsize=None)(model.default),
                    eos_token_id=model.eos_token_id)


def sampled_sequences(settings: dict, n_batches: int, rows: int, draft: ToyModel | None, drafter_cls=None,
                      tree_attention: bool = True):
    target = cached(ToyModel.seeded(SAMPLE_VOCAB, seed=11, concentration=0.7))
    prompt = [0, 1]
    out = []
    for i in range(n_batches):
        prompts = [prompt] * rows
        ctx = toy_context(target, prompts, SAMPLE_LEN, tree_attention=tree_attention)
        sampling = SpeculativeSampling(**{k: v for k, v in settings.items() if k != "drafter"}, seed=i)
        if drafter_cls is not None:
            drafter = drafter_cls(DraftModelConfig(num_draft_tokens=3), sampling, ToySession(draft, prompts),
                                  SAMPLE_VOCAB)
            result = speculative_decode(ctx, drafter, sampling)
        else:
            dec = anydecode.get_decoder(settings["drafter"])
            conf = dec.configure({k: v for k, v in settings.items() if k != "drafter"} | {"seed": i})
            result = dec.run(conf, ctx)
        out.extend(tuple(s) for s in result.sequences)
    return target, prompt, out


def expected_law(target, prompt, sampling):
    def step(model, gen, prompt_t):
        return warped_probs(model.logits(prompt_t + gen), sampling).numpy()

    return enumerate_sequences(target, prompt, SAMPLE_LEN, step)


class UnwarpedQDrafter(DraftModelDrafter):
    """Planted bug: drafts drawn from the warped q, but the softmax before temperature reported as q."""

    def reported_distribution(self, logits, drawn_from):
        return torch.softmax(logits.to(torch.float64), dim=-1)


def test_draft_model_sampling_matches_the_target_law_and_the_unwarped_q_twin_fails():
    sampling = SpeculativeSampling(temperature=0.6)
    draft = cached(ToyModel.seeded(SAMPLE_VOCAB, seed=12, concentration=0.7))
    target, prompt, samples = sampled_sequences({"temperature": 0.6}, 12, 250, draft, DraftModelDrafter)
    law = expected_law(target, prompt, sampling)
    assert chi_square_test(samples, law).p_value > 1e-6
    _, _, buggy = sampled_sequences({"temperature": 0.6}, 6, 250, draft, UnwarpedQDrafter)
    assert chi_square_test(buggy, law).p_value < 1e-6


@pytest.mark.parametrize("name,tree_attention", [("iad", True), ("aded", True), ("aded", False),
                                                 ("prompt_lookup", True)])
def test_deterministic_drafters_sample_the_target_law(name, tree_attention):
    settings = {"drafter": name, "temperature": 1.3, "top_p": 0.9}
    target, prompt, samples = sampled_sequences(settings, 8, 250, None, tree_attention=tree_attention)
    sampling = SpeculativeSampling(temperature=1.3, top_p=0.9)
    assert chi_square_test(samples, expected_law(target, prompt, sampling)).p_value > 1e-6


def test_under_sampling_sampled_drafts_are_sized_by_the_fixed_cost_hint():
    """A draft model's sampled drafts are verified by Leviathan et al.'s rule, whose random numbers depend on the
    drafts: the session's ``forward_cost`` hint sizes them, timings are ignored, so seeded runs repeat exactly,
    and drafting stops (plain decoding) when nothing is accepted."""
    from anydecode.algorithms.speculative.decode import SpeculativeLoop
    from anydecode.algorithms.speculative.schedule import DraftLengthController

    controller = DraftLengthController(1, fixed_cost=(1.0, 0.45))
    controller.record_forward(8, 123.0)
    assert controller.cost_model() == (1.0, 0.45, 0.0) and not controller.samples
    for _ in range(6):
        controller.record_row(0, 8, 0)
    assert controller.limit(0, 16, 1) == 0  # nothing is accepted: plain decoding

    class Hinted(LeftPaddedToySession):
        forward_cost = (1.0, 0.45)

    model = copying_model(seed=3)

    def loop(drafter_of, sampling):
        ctx = toy_context(model, PROMPTS, 30)
        ctx.session = Hinted(model, PROMPTS)
        return SpeculativeLoop(ctx, drafter_of(sampling, ctx), sampling)

    def draft_model(sampling, ctx):
        return DraftModelDrafter(DraftModelConfig(num_draft_tokens=4), sampling,
                                 LeftPaddedToySession(copying_model(seed=5), PROMPTS), VOCAB)

    sampled = loop(draft_model, SpeculativeSampling(temperature=0.8, seed=4))
    assert sampled.controller.fixed_cost == (1.0, 0.45, 0.0) and not sampled.coupled
    first, second = sampled.run(), loop(draft_model, SpeculativeSampling(temperature=0.8, seed=4)).run()
    assert first.sequences == second.sequences and first.stats["drafted"] == second.stats["drafted"] > 0
    # deterministic drafts under sampling are coupled: timed like greedy decoding, the hint only a prior
    lookup = anydecode.get_decoder("prompt_lookup")
    coupled = loop(lambda s, ctx: drafter_factory_of(lookup, lookup.configure({}), ctx)[0],
                   SpeculativeSampling(temperature=0.8))
    assert coupled.coupled and coupled.controller.fixed_cost is None
    assert coupled.controller.prior_cost == (1.0, 0.45, 0.0)


class RandomDrafter(anydecode.algorithms.speculative.draft.Drafter):
    """Deterministic drafts of its own choosing: random tokens and lengths (chains or trees) from a seeded
    generator, or (``perfect``) the continuation a plain run produced, so that long drafts are accepted."""

    def __init__(self, seed: int, tree: bool, perfect: list[list[int]] | None = None, prompts=()):
        self.rng = np.random.default_rng(seed)
        self.tree = tree
        self.perfect = perfect
        self.prompt_lengths = [len(p) for p in prompts]

    def propose(self, contexts, limits):
        drafts = []
        for row, (context, limit) in enumerate(zip(contexts, limits)):
            size = int(self.rng.integers(0, limit + 1)) if limit else 0
            if self.perfect is not None:
                done = len(context) - self.prompt_lengths[row]
                drafts.append(Draft(list(self.perfect[row][done: done + size])))
                continue
            tokens = [int(t) for t in self.rng.integers(0, VOCAB, size=size)]
            parents = [int(self.rng.integers(-1, i)) for i in range(size)] if self.tree else None
            drafts.append(Draft(tokens, parents))
        return drafts


class NoDrafts(anydecode.algorithms.speculative.draft.Drafter):
    def propose(self, contexts, limits):
        return [Draft() for _ in contexts]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 40), rows=st.integers(1, 3), tree=st.booleans(), tree_attention=st.booleans(),
       perfect=st.booleans(), temperature=st.sampled_from([0.5, 1.0, 1.7]), top_k=st.sampled_from([0, 3]),
       top_p=st.sampled_from([1.0, 0.8]))
def test_a_seeded_sampling_run_gives_the_same_tokens_whatever_is_drafted(seed, rows, tree, tree_attention, perfect,
                                                                         temperature, top_k, top_p):
    """Deterministic drafts under sampling are verified by coupling: every emitted token is what plain sampling
    draws at its position, so the output equals the run that drafted nothing, for random chains and trees of random
    lengths, perfect drafts, batches, tree attention or row copies. This is what lets measured time size drafts
    under sampling."""
    model = copying_model(seed=seed % 97)
    prompts = PROMPTS[:rows]
    sampling = SpeculativeSampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)

    def once(drafter):
        ctx = toy_context(model, prompts, 24, tree_attention=tree_attention)
        return speculative_decode(ctx, drafter, sampling, cost_aware=False)

    plain = once(NoDrafts())
    drafted = once(RandomDrafter(seed, tree and not perfect, plain.sequences if perfect else None, prompts))
    assert drafted.sequences == plain.sequences
    assert drafted.finish_reasons == plain.finish_reasons
    assert drafted.stats["drafted"] > 0


def test_a_rows_draws_do_not_depend_on_the_rows_that_finished_beside_it():
    """Each row samples on its own stream ``(seed, row, position)``. Once the row beside it has stopped, a row is
    the step's only one (the loop then passes its stream as ints): its tokens are those it draws beside a row that
    keeps going."""
    model = copying_model(seed=4)
    early = 0
    for seed in range(12):
        sampling = SpeculativeSampling(temperature=1.0, seed=seed)
        outputs = []
        for first in ([EOS, EOS, EOS], [1, 2, 3, 4]):  # the copying model ends the first prompt at once, mostly
            ctx = toy_context(model, [first, PROMPTS[1]], 20)
            outputs.append(speculative_decode(ctx, NoDrafts(), sampling, cost_aware=False).sequences)
        assert outputs[0][1] == outputs[1][1]
        early += len(outputs[0][0]) < len(outputs[0][1])
    assert early >= 6


class SampledWithoutQ(anydecode.algorithms.speculative.draft.Drafter):
    """A drafter that says it samples its drafts but reports no distribution for them."""

    deterministic = False

    def __init__(self, tree: bool):
        self.tree = tree

    def start(self, prompts):
        pass

    def propose(self, contexts, limits):
        parents = [-1, -1, 0] if self.tree else None
        return [Draft([1, 2, 3], parents, None) for _ in contexts]

    def feedback(self, row, draft, accepted_path):
        pass


@pytest.mark.parametrize("tree", [False, True])
@pytest.mark.parametrize("tree_attention", [True, False])
def test_a_sampled_draft_without_q_is_an_error_on_chains_and_trees(tree, tree_attention):
    """Verifying a sampled draft as if it were one-hot would change the output law: chain and tree paths refuse
    it alike (issue 12: the tree path used to take it silently)."""
    model = ToyModel.seeded(VOCAB, seed=1)
    ctx = toy_context(model, [[1, 2]], 6, tree_attention=tree_attention)
    with pytest.raises(ConfigError, match="gave no q"):
        speculative_decode(ctx, SampledWithoutQ(tree), SpeculativeSampling(temperature=1.0, seed=0),
                           cost_aware=False)
