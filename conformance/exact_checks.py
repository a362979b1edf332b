"""Exact checks on toy models: each decoder's output law computed in float64 against an independent target.

* ``sampling``: the decoder's per-step distribution, enumerated over whole sequences, against the reference warper
  (``reference.py``) for ``sample``; for every sampling decoder, draws through the shared loop against its law.
* ``lossless``: the whole speculative loop is run with coins that enumerate every random decision (acceptance coins,
  residual and bonus draws, a draft model's own draws), so the law of its output is exact; it must equal ancestral
  sampling from the warped target (TV below 1e-9). At temperature 0 its output must equal greedy decoding.
* ``grammar-constrained``: the transform's law against P restricted to the grammar at each step.
* ``grammar-aligned``: ASAp's n-th sample law against the closed form of the paper's skewed example, and its
  convergence to Q on a grammar with dead ends.
* ``search`` and ``best-of-n``: against their references, exactly.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from anydecode.algorithms.contracts.config import SamplingConfig
from anydecode.algorithms.contracts.decoder import Decoder
from anydecode.algorithms.grammar.exact import (
    asap_sample_distributions,
    grammar_target,
    kl_divergence,
    language_strings,
    tokenizations,
    transform_distribution,
)
from anydecode.algorithms.grammar.tokenizers import toy_vocabulary
from anydecode.algorithms.speculative.exact import enumerate_outcomes

from .claims import CheckResult, measured
from .enumerate import enumerate_sequences, total_variation
from .reference import target_distribution
from .stats import chi_square_test
from .toy import ToyModel, ToySession, toy_context

EXACT = 1e-9
ALPHA = 1e-3
#: sampling settings the suite covers: plain, temperature, top-k, top-p, min-p and all together
SETTINGS = (
    dict(temperature=1.0),
    dict(temperature=0.6),
    dict(temperature=1.4, top_k=3),
    dict(temperature=0.8, top_p=0.7),
    dict(temperature=1.0, min_p=0.2),
    dict(temperature=0.7, top_k=4, top_p=0.9, min_p=0.05),
)


def _timed(fn: Callable[[], list[CheckResult]]) -> list[CheckResult]:
    started = time.perf_counter()
    out = fn()
    for r in out:
        r.seconds = time.perf_counter() - started
    return out


def _reference_step(kwargs: dict[str, Any]) -> Callable:
    def step(model: ToyModel, generated: tuple, prompt: tuple) -> np.ndarray:
        return target_distribution(model.logits(prompt + generated).numpy(), **kwargs)
    return step


def _transform_step(decoder: Decoder, config: Any, model: ToyModel) -> Callable:
    """The decoder's own next-token law: softmax of its transform of the model's logits."""
    transform = decoder.transform(config, toy_context(model, [[1]], 1))
    states: dict[tuple, Any] = {}

    def step(m: ToyModel, generated: tuple, prompt: tuple) -> np.ndarray:
        state = states.setdefault(prompt, transform.start(list(prompt)))
        logits = transform.apply(state, list(generated), m.logits(prompt + generated))
        return torch.softmax(logits.to(torch.float64), -1).numpy()
    return step


# -- sampling ---------------------------------------------------------------------------------------------------------
def sampling_exact(decoder: Decoder, quick: bool) -> list[CheckResult]:
    """``sample``: its law (its transform, enumerated) equals the independent reference, over every setting."""
    worst = 0.0
    cases = 0
    for seed in range(2 if quick else 3):
        model = ToyModel.seeded(6, seed=seed, eos_token_id=5, concentration=0.5)
        for kwargs in SETTINGS:
            config = decoder.configure(kwargs)
            ours = enumerate_sequences(model, (1,), 3, _transform_step(decoder, config, model))
            ref = enumerate_sequences(model, (1,), 3, _reference_step(kwargs))
            worst = max(worst, total_variation(ours, ref))
            cases += 1
    return [measured("exact law on toy models", decoder.name, "toy", "sampling", "TV", worst, EXACT,
                     detail=f"{cases} models x settings, 3 tokens, float64 enumeration")]


def sampling_draws(decoder: Decoder, quick: bool, settings: dict[str, Any] | None = None) -> list[CheckResult]:
    """Draws through the shared loop (seeded sampler, toy session) follow the decoder's own exact law."""
    model = ToyModel.seeded(5, seed=0, eos_token_id=4, concentration=0.7)
    kwargs = settings or {"temperature": 0.8, "top_k": 4, "top_p": 0.95}
    config = decoder.configure(kwargs)
    expected = enumerate_sequences(model, (1,), 2, _transform_step(decoder, config, model))
    n = 1500 if quick else 4000
    rows = 250
    samples = []
    for start in range(0, n, rows):
        batch = decoder.configure({**kwargs, "seed": start})
        result = decoder.run(batch, toy_context(model, [[1]] * rows, 2))
        samples.extend(tuple(s) for s in result.sequences)
    fit = chi_square_test(samples, expected)
    return [measured("loop draws follow the exact law (chi-square)", decoder.name, "toy", "sampling", "p",
                     fit.p_value, ALPHA, "above", f"categories={fit.categories}", fit.n)]


# -- lossless (speculative) -------------------------------------------------------------------------------------------
VOCAB = 5
EOS = 4


def copying_model(seed: int = 0, noise: float = 0.3) -> ToyModel:
    """Mostly repeats the token two positions back (so drafts from the context are often right), with a seeded
    spread over everything else: drafts are accepted and rejected."""
    base = ToyModel.seeded(VOCAB, seed=seed, eos_token_id=EOS, concentration=0.8)

    def dist(prefix: tuple) -> np.ndarray:
        p = base.probs(prefix) * noise
        p[prefix[-2] if len(prefix) >= 2 else 1] += 1.0
        return p / p.sum()

    return ToyModel(VOCAB, default=dist, eos_token_id=EOS)


PROMPT = (1, 2, 3, 1, 2)


class SiblingsDrafter:
    """A deterministic tree drafter that always proposes siblings: tokens 1 and 2 under the last token, and 3 under
    the first of them, so every step verifies a tree with a rejected child to update the residual after."""

    deterministic = True
    tree = True

    def start(self, prompts: Sequence[Sequence[int]]) -> None:
        pass

    def propose(self, contexts: Sequence[Sequence[int]], limits: Sequence[int]) -> list[Any]:
        from anydecode.algorithms.speculative.draft import Draft

        return [Draft([1, 2, 3], [-1, -1, 0]).cut(limit) for limit in limits]

    def feedback(self, row: int, draft: Any, accepted_path: Sequence[int]) -> None:
        pass


def _speculative_law(decoder: Decoder, config: Any, model: ToyModel, max_new: int,
                     draft_model: ToyModel | None, drafter: Any = None) -> dict[tuple, float]:
    from anydecode.algorithms.speculative.config import sampling_part
    from anydecode.algorithms.speculative.decode import SpeculativeLoop
    from anydecode.algorithms.speculative.decoders import drafter_factory_of

    def run(coins: Any) -> tuple:
        ctx = toy_context(model, [list(PROMPT)], max_new)
        if draft_model is not None:
            ctx.draft_session = ToySession(draft_model, [list(PROMPT)])
        ctx.owner = None  # no learning across the enumerated runs
        used = drafter or drafter_factory_of(decoder, config, ctx)[0]
        if hasattr(used, "coins"):
            used.coins = coins  # a draft model's own draws are enumerated too
        result = SpeculativeLoop(ctx, used, sampling_part(config), coins=coins, cost_aware=False).run()
        return tuple(result.sequences[0])

    return enumerate_outcomes(run)


def lossless_variants(decoder: Decoder) -> list[tuple[str, dict[str, Any]]]:
    """The drafter settings a lossless decoder is checked with (chains and trees, every built-in drafter)."""
    aded = {"max_nodes": 4, "branching": 2, "max_depth": 3, "persist": False,
            "corpus_ids": (1, 2, 1, 3, 2, 1, 2, 3, 1, 3, 1, 2, 2, 1)}  # a table with branches from the start
    if decoder.name == "speculative":
        return [("prompt lookup chain", {"drafter": "prompt_lookup", "max_ngram": 2, "num_draft_tokens": 3}),
                ("iad chain", {"drafter": "iad", "max_match_ngram": 2}),
                ("sibling tree", {"drafter": "prompt_lookup"}),
                ("aded tree", {"drafter": "aded", **aded}),
                ("suffix tree", {"drafter": "suffix", "tree": True, "max_nodes": 4, "use_corpus": False}),
                ("draft model", {"drafter": "draft_model", "num_draft_tokens": 2, "adaptive": False})]
    if decoder.name == "aded":
        return [("tree", aded)]
    if decoder.name == "suffix":
        return [("chain", {"use_corpus": False}), ("tree", {"tree": True, "max_nodes": 4, "use_corpus": False})]
    return [("chain", {})]


def lossless_exact(decoder: Decoder, quick: bool) -> list[CheckResult]:
    """The enumerated law of the whole speculative loop equals ancestral sampling from the warped target."""
    out = []
    model = copying_model()
    draft = copying_model(seed=7, noise=0.6)
    # without truncation every child of a tree has mass, so a skipped residual update shows
    settings = [dict(temperature=0.9)] if quick else [dict(temperature=0.9), dict(temperature=0.8, top_k=3)]
    max_new = 3
    for label, variant in lossless_variants(decoder):
        worst = 0.0
        for kwargs in settings:
            config = decoder.configure({**variant, **kwargs})
            law = _speculative_law(decoder, config, model, max_new, draft if "draft" in label else None,
                                   SiblingsDrafter() if "sibling" in label else None)
            target = enumerate_sequences(model, PROMPT, max_new, _reference_step(kwargs))
            worst = max(worst, total_variation(law, target))
        out.append(measured(f"sampling: exact law of the loop ({label})", decoder.name, "toy", "lossless", "TV",
                            worst, EXACT, detail=f"{len(settings)} settings, {max_new} tokens, every coin enumerated"))
    return out


class _NoDrafts:
    """Drafts nothing: the speculative loop then samples every token as a plain step."""

    deterministic = True
    tree = False

    def start(self, prompts: Sequence[Sequence[int]]) -> None:
        pass

    def propose(self, contexts: Sequence[Sequence[int]], limits: Sequence[int]) -> list[Any]:
        from anydecode.algorithms.speculative.draft import Draft

        return [Draft() for _ in limits]

    def feedback(self, row: int, draft: Any, accepted_path: Sequence[int]) -> None:
        pass


def lossless_draft_invariance(decoder: Decoder, quick: bool) -> list[CheckResult]:
    """Under sampling, deterministic drafts are verified by coupling: a seeded run gives the tokens the same loop
    samples when it drafts nothing, whatever the drafter proposed (random streams, not enumerated coins)."""
    from anydecode.algorithms.speculative.config import sampling_part
    from anydecode.algorithms.speculative.decode import SpeculativeLoop
    from anydecode.algorithms.speculative.decoders import drafter_factory_of

    out = []
    for label, variant in lossless_variants(decoder):
        if "draft model" in label:
            continue  # sampled drafts: Leviathan's rule, whose coins depend on the drafts
        mismatches = drafted = accepted = 0
        runs = 4 if quick else 12
        for seed in range(runs):
            model = copying_model(seed=seed, noise=0.3)
            config = decoder.configure({**variant, "temperature": 0.9, "seed": seed})
            outputs = []
            for drafting in (False, True):
                ctx = toy_context(model, [list(PROMPT)], 16)
                ctx.owner = None
                if not drafting:
                    drafter: Any = _NoDrafts()
                else:
                    drafter = SiblingsDrafter() if "sibling" in label else drafter_factory_of(decoder, config, ctx)[0]
                result = SpeculativeLoop(ctx, drafter, sampling_part(config), cost_aware=False).run()
                outputs.append(result.sequences)
            mismatches += outputs[0] != outputs[1]
            drafted += int(result.stats.get("drafted", 0))
            accepted += int(result.stats.get("accepted", 0))
        res = measured(f"sampling: the same tokens whatever is drafted ({label})", decoder.name, "toy", "lossless",
                       "mismatches", mismatches, 1,
                       detail=f"{runs} seeds; {accepted}/{drafted} draft tokens accepted")
        if accepted == 0 or accepted == drafted:  # drafts must be both kept and rejected for the check to mean it
            res.passed = False
            res.detail += " (drafts were not both accepted and rejected: the check proved nothing)"
        out.append(res)
    return out


def lossless_greedy(decoder: Decoder, quick: bool) -> list[CheckResult]:
    """At temperature 0 the output equals greedy decoding, token for token, and drafts were accepted."""
    from anydecode.algorithms.sampling.decoders import GREEDY

    out = []
    for label, variant in lossless_variants(decoder):
        if "sibling" in label:
            continue  # a fixed tree: its greedy path is the prompt-lookup decoder's
        mismatches = accepted = 0
        seeds = range(3 if quick else 6)
        for seed in seeds:
            model = copying_model(seed=seed, noise=0.1)
            ctx = toy_context(model, [list(PROMPT)], 12)
            if "draft" in label:
                ctx.draft_session = ToySession(copying_model(seed=seed + 50, noise=0.1), [list(PROMPT)])
            result = decoder.run(decoder.configure({**variant, "temperature": 0.0}), ctx)
            greedy = GREEDY.run(GREEDY.configure({}), toy_context(model, [list(PROMPT)], 12))
            mismatches += result.sequences != greedy.sequences
            accepted += int(result.stats.get("accepted", 0))
        res = measured(f"greedy: identical to greedy decoding ({label})", decoder.name, "toy", "lossless",
                       "mismatches", mismatches, 1, detail=f"{len(seeds)} models; {accepted} draft tokens accepted")
        if accepted == 0:  # nothing was verified: the check proved nothing
            res.passed = False
            res.detail += " (no draft was accepted: verification never ran)"
        out.append(res)
    return out


def iad_realignment(decoder: Decoder, quick: bool) -> list[CheckResult]:
    """IAD (Sun et al. 2022): after an edit, the draft resumes from the input as soon as the generated text's last
    tokens match one input position (one token after the edit here), not later."""
    from anydecode.algorithms.speculative.iad import IADConfig, IADDrafter

    source = [10, 11, 12, 13, 14, 15, 16, 17]
    drafter = IADDrafter(IADConfig(source_ids=tuple(source), max_draft_tokens=4, adaptive=False))
    prompt = [1]
    drafter.start([prompt])
    script = [10, 11, 12, 99, 13]  # copy, an edit (99), then the input again from 13
    late = []
    for i in range(1, len(script) + 1):
        (draft,) = drafter.propose([prompt + script[:i]], [4])
        late.append(list(draft.tokens))
    ok = late[2] == [13, 14, 15, 16] and late[3] == [] and late[4] == [14, 15, 16, 17]
    return [CheckResult("re-aligns at the first unique match after an edit", decoder.name, "toy", "lossless", ok,
                        "drafts", detail=f"drafts after each generated token: {late}")]


# -- grammars ---------------------------------------------------------------------------------------------------------
ABC = toy_vocabulary(["a", "b", "c", "ab", None])
GRAMMARS = ("a|b|ab", "ab|ba|c", "a(b|c)|cc|b", "(a|b)(a|b)")


def _gcd_reference(model: ToyModel, regex: str, prompt: tuple, eos: int) -> dict[tuple, float]:
    strings = language_strings(regex)

    def step(gen: tuple) -> np.ndarray:
        text = b"".join(ABC.token_bytes[t] for t in gen).decode()
        ok = np.zeros(ABC.vocab_size, dtype=bool)
        for tid in ABC.text_ids():
            piece = ABC.token_bytes[tid].decode()
            ok[tid] = any(s.startswith(text + piece) for s in strings)
        ok[eos] = text in strings
        p = model.probs(list(prompt) + list(gen)) * ok
        return p / p.sum()

    out: dict[tuple, float] = {}
    stack: list[tuple[tuple, float]] = [((), 1.0)]
    while stack:
        gen, mass = stack.pop()
        if gen and gen[-1] == eos:
            out[gen] = out.get(gen, 0.0) + mass
            continue
        p = step(gen)
        for t in np.nonzero(p)[0]:
            stack.append((gen + (int(t),), mass * float(p[t])))
    return out


def gcd_exact(decoder: Decoder, quick: bool) -> list[CheckResult]:
    """GCD's law equals P(t | w) restricted to the allowed tokens at each step (outlines allows every tokenization;
    each engine against the reference)."""
    eos = 4
    worst = 0.0
    for regex, seed in itertools.product(GRAMMARS[:2] if quick else GRAMMARS, range(2)):
        model = ToyModel.seeded(5, seed=seed, eos_token_id=eos)
        config = decoder.configure({"grammar": regex, "grammar_format": "regex", "engine": "outlines"})
        transform = decoder.transform(config, toy_context(model, [[1]], 8, tokenizer=ABC))
        law = transform_distribution(transform, model.probs, (1,), 8, [eos])
        worst = max(worst, total_variation(law, _gcd_reference(model, regex, (1,), eos)))
    return [measured("exact law: P restricted to the grammar at each step", decoder.name, "toy",
                     "grammar-constrained", "TV", worst, EXACT, detail="finite regular grammars, both outcomes")]


BINARY = toy_vocabulary(["0", "1", None])


def _uniform_five(prefix: tuple) -> np.ndarray:
    return np.array([0.5, 0.5, 0.0] if len(prefix) < 5 else [0.0, 0.0, 1.0])


def _closed_form(n: int) -> float:
    """P(n-th ASAp sample = 00000) on the paper's example: GCD until 00000 is seen, exact afterwards."""
    return 0.5 ** n + (1 - 0.5 ** (n - 1)) / 17


def asap_closed_form(decoder: Decoder, quick: bool) -> list[CheckResult]:
    """The paper's skewed example (uniform over {0, 1}, grammar 00000 | 1xxxx): the n-th sample's probability of
    00000 follows the closed form 0.5^n + (1 - 0.5^(n-1)) / 17, exactly."""
    from anydecode.algorithms.grammar import AsapStateStore

    out = []
    for engine, (text, fmt) in {"llguidance": ('start: "00000" | "1" /[01]{4}/', "lark"),
                                "outlines": ("00000|1[01]{4}", "regex")}.items():
        config = decoder.configure({"grammar": text, "grammar_format": fmt, "engine": engine})

        def make(store: AsapStateStore, _config: Any = config) -> Any:
            from anydecode.algorithms.grammar.transforms import AsapTransform

            probe = decoder.transform(_config, toy_context(ToyModel(3, default=_uniform_five, eos_token_id=2), [[]],
                                                           8, tokenizer=BINARY))
            return AsapTransform(probe.compiled, _config, store)

        dists = asap_sample_distributions(make, _uniform_five, (), 5 if quick else 7, 8, [2])
        worst = max(abs(d.get((0, 0, 0, 0, 0, 2), 0.0) - _closed_form(n)) for n, d in enumerate(dists, 1))
        out.append(measured(f"n-th sample follows the closed form ({engine})", decoder.name, "toy",
                            "grammar-aligned", "max |P - closed form|", worst, EXACT,
                            detail=f"{len(dists)} samples, every history enumerated"))
    return out


def asap_dead_ends(decoder: Decoder, quick: bool) -> list[CheckResult]:
    """A grammar with dead ends (``ad`` cannot be written: no token writes ``d``): once ASAp has met them and
    sampled the language, its next sample is Q itself (KL 0), below GCD's."""
    from anydecode.algorithms.grammar import forget_asap_state

    vocab = toy_vocabulary(["a", "b", "c", None])
    regex = "ad|b|cc|ca"
    model = ToyModel.seeded(4, seed=3, eos_token_id=3, concentration=2.0)
    floored = ToyModel(4, default=lambda prefix: 0.5 * model.probs(prefix) + 0.125, eos_token_id=3)
    target = grammar_target(floored.probs, (0,), tokenizations(language_strings(regex), vocab))
    forget_asap_state()
    config = decoder.configure({"grammar": regex, "grammar_format": "regex", "engine": "llguidance",
                                "asap_private": True})
    transform = decoder.transform(config, toy_context(floored, [[0]], 6, tokenizer=vocab))
    trie = transform.trie([0])
    gcd_kl = kl_divergence(transform_distribution(transform, floored.probs, (0,), 6, [3]), target)

    def next_kl() -> float:
        from anydecode.algorithms.grammar.transforms import AsapTransform

        def make(store: Any) -> Any:
            return AsapTransform(transform.compiled, config, store)

        (dist,) = asap_sample_distributions(make, floored.probs, (0,), 1, 6, [3], trie=trie)
        return kl_divergence(dist, target)

    seen: set[tuple] = set()
    for i in range(60 if quick else 150):
        state = transform.start([0])
        generated: list[int] = []
        rng = np.random.default_rng(i)
        reason = "length"
        for _ in range(6):
            logits = transform.apply(state, generated, floored.logits([0] + generated))
            if not bool(torch.isfinite(logits).any()):
                reason = "dead_end"
                break
            p = torch.softmax(logits.double(), -1).numpy()
            token = int(rng.choice(len(p), p=p / p.sum()))
            generated.append(token)
            if token == 3:
                reason = "stop"
                break
        transform.finish(state, generated, reason)
        seen.add(tuple(generated))
    final = next_kl()
    return [measured("converges to Q on a grammar with dead ends", decoder.name, "toy", "grammar-aligned", "KL",
                     final, 1e-6, detail=f"GCD's KL {gcd_kl:.3f}; {len(seen)} distinct samples drawn")]


# -- search and best-of-N ---------------------------------------------------------------------------------------------
def _tiny_llama() -> Any:
    from .tiny_llama import build_tiny_llama

    return build_tiny_llama()


def _hf_generate(model: Any, prompt: list[int], decoder: str, **settings: Any) -> tuple[list[list[int]], list[float]]:
    from anydecode.plugins import hf

    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), custom_generate=hf.generate, decoder=decoder,
                         return_dict_in_generate=True, pad_token_id=model.config.pad_token_id, **settings)
    eos = {model.config.eos_token_id}
    rows = []
    for row in out.sequences:
        seq = row[len(prompt):].tolist()
        cut = next((i for i, t in enumerate(seq) if t in eos), None)
        rows.append(seq[: cut + 1] if cut is not None else seq)
    return rows, out.sequences_scores.tolist()


def _needs_transformers(decoder: Decoder, claim: str, name: str) -> CheckResult | None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return CheckResult(name, decoder.name, "toy", claim, True, skipped="transformers is not installed")
    return None


def dbs_golden(decoder: Decoder, quick: bool) -> list[CheckResult]:
    """``dbs`` reproduces transformers 4.x group beam search (outputs recorded on a tiny random Llama)."""
    import json

    from .tiny_llama import golden_path

    name = "equals transformers 4.x group beam search"
    missing = _needs_transformers(decoder, "search", name)
    if missing:
        return [missing]
    golden = json.loads(golden_path().read_text())["tiny"]
    model = _tiny_llama()
    cases = golden["cases"][: 3 if quick else None]
    mismatches = 0
    with torch.no_grad():
        for case in cases:
            settings = dict(case["settings"])
            rows, scores = _hf_generate(model, case["prompt"], "dbs", **settings)
            want = case["sequences"]
            if rows != want or any(abs(a - b) > 1e-4 for a, b in zip(scores, case["scores"])):
                mismatches += 1
    return [measured(name, decoder.name, "toy", "search", "mismatches", mismatches, 1,
                     detail=f"{len(cases)} recorded cases (beams, groups, length penalty, early stopping)")]


def beam_reference(decoder: Decoder, quick: bool) -> list[CheckResult]:
    """``beam`` equals transformers' own beam search on a tiny random Llama (sequences and scores)."""
    name = "equals transformers' beam search"
    missing = _needs_transformers(decoder, "search", name)
    if missing:
        return [missing]
    model = _tiny_llama()
    mismatches = cases = 0
    with torch.no_grad():
        for prompt, beams, lp in itertools.product(([0, 5, 9], [0, 17, 33, 2]), (2, 4), (1.0, 0.5)):
            if quick and (prompt[1], beams, lp) != (5, 4, 1.0):
                continue
            cases += 1
            ids = torch.tensor([prompt])
            native = model.generate(ids, attention_mask=torch.ones_like(ids), num_beams=beams, max_new_tokens=6,
                                    num_return_sequences=beams, length_penalty=lp, do_sample=False,
                                    return_dict_in_generate=True, output_scores=True,
                                    pad_token_id=model.config.pad_token_id)
            rows, scores = _hf_generate(model, prompt, "beam", num_beams=beams, max_new_tokens=6,
                                        num_return_sequences=beams, length_penalty=lp)
            eos = model.config.eos_token_id
            want = []
            for row in native.sequences:
                seq = row[len(prompt):].tolist()
                cut = next((i for i, t in enumerate(seq) if t == eos), None)
                want.append(seq[: cut + 1] if cut is not None else seq)
            if rows != want or any(abs(a - b) > 1e-4 for a, b in zip(scores, native.sequences_scores.tolist())):
                mismatches += 1
    return [measured(name, decoder.name, "toy", "search", "mismatches", mismatches, 1,
                     detail=f"{cases} prompts x widths x length penalties")]


def deal_is_beam(decoder: Decoder, quick: bool) -> list[CheckResult]:
    """DeAL with lam=0 and k >= 2 * beam is beam search of that width: the same sequences and scores."""
    from anydecode.registry import get_decoder

    beam = get_decoder("beam")
    mismatches = cases = 0
    for seed, width, max_new in itertools.product(range(3 if quick else 8), (1, 2, 3), (3, 5)):
        cases += 1
        model = ToyModel.seeded(6, seed=seed, eos_token_id=0, concentration=0.6)
        ours = decoder.run(decoder.configure({"beam": width, "k": 2 * width, "lam": 0.0}),
                           toy_context(model, [[1, 2]], max_new))
        ref = beam.run(beam.configure({"num_beams": width}), toy_context(model, [[1, 2]], max_new))
        same = ours.sequences == ref.sequences and all(
            abs(a - b) < 1e-9 for a, b in zip(ours.scores or [], ref.scores or []))
        mismatches += not same
    return [measured("lam=0 equals beam search of the same width", decoder.name, "toy", "search", "mismatches",
                     mismatches, 1, detail=f"{cases} toy models x widths x lengths")]


def best_of_n(decoder: Decoder, quick: bool) -> list[CheckResult]:
    """The output is the sample with the highest reward (ties: log-likelihood, both computed here from the model)
    among the N that ``sample`` draws with the same seed for the prompt repeated N times."""
    from anydecode.registry import get_decoder

    sample = get_decoder("sample")
    mismatches = cases = 0
    for seed, n in itertools.product(range(4 if quick else 10), (1, 3, 5)):
        cases += 1
        model = ToyModel.seeded(6, seed=seed, eos_token_id=0)
        prompt = [1, 2]
        settings = {"temperature": 0.9, "seed": seed}
        drawn = sample.run(sample.configure(settings), toy_context(model, [prompt] * n, 5)).sequences
        config = decoder.configure({**settings, "num_samples": n, "reward": "length", "length_min": 4,
                                    "length_unit": "tokens"})
        result = decoder.run(config, toy_context(model, [prompt], 5))

        def key(seq: Sequence[int], model: ToyModel = model, prompt: list[int] = prompt) -> tuple[float, float]:
            body = [t for t in seq if t != 0]
            reward = 0.0 if len(body) >= 4 else -(4 - len(body)) / 4
            warped = [torch.log(torch.from_numpy(target_distribution(
                model.logits(prompt + list(seq[:i])).numpy(), temperature=0.9)))[t] for i, t in enumerate(seq)]
            return reward, float(sum(warped))

        best = max(range(n), key=lambda i: key(drawn[i]))
        mismatches += result.sequences[0] != drawn[best]
    return [measured("the best of sample's N draws", decoder.name, "toy", "best-of-n", "mismatches", mismatches, 1,
                     detail=f"{cases} models x N")]


def greedy_identical(decoder: Decoder, quick: bool) -> list[CheckResult]:
    """The output equals the argmax chain of the toy model, token for token."""
    mismatches = cases = 0
    for seed in range(5 if quick else 20):
        cases += 1
        model = ToyModel.seeded(6, seed=seed, eos_token_id=0)
        result = decoder.run(decoder.configure({}), toy_context(model, [[1, 2]], 6))
        want: list[int] = []
        while len(want) < 6 and (not want or want[-1] != 0):
            want.append(int(np.argmax(model.probs([1, 2] + want))))
        mismatches += result.sequences[0] != want
    return [measured("equals the argmax chain", decoder.name, "toy", "greedy-identical", "mismatches", mismatches, 1,
                     detail=f"{cases} toy models")]


#: claim -> the exact checks that prove it on toy models; decoder-specific checks are added by name
BY_CLAIM: dict[str, list[Callable[[Decoder, bool], list[CheckResult]]]] = {
    "sampling": [sampling_draws],
    "greedy-identical": [greedy_identical],
    "lossless": [lossless_exact, lossless_greedy, lossless_draft_invariance],
    "grammar-constrained": [gcd_exact],
    "grammar-aligned": [asap_closed_form, asap_dead_ends],
    "best-of-n": [best_of_n],
}
BY_DECODER: dict[str, list[Callable[[Decoder, bool], list[CheckResult]]]] = {
    "sample": [sampling_exact, sampling_draws],
    "iad": [lossless_exact, lossless_greedy, lossless_draft_invariance, iad_realignment],
    "beam": [beam_reference],
    "dbs": [dbs_golden],
    "deal": [deal_is_beam],
}


def checks_for(decoder: Decoder) -> list[Callable[[Decoder, bool], list[CheckResult]]]:
    if decoder.name in BY_DECODER:
        return BY_DECODER[decoder.name]
    return BY_CLAIM.get(decoder.claim or "", [])


def run_exact(decoder: Decoder, quick: bool, only: Sequence[str] | None = None) -> list[CheckResult]:
    """Every exact check of ``decoder`` (those named in ``only``, by function name, when given)."""
    out: list[CheckResult] = []
    for fn in checks_for(decoder):
        if only is not None and fn.__name__ not in only:
            continue
        out += _timed(lambda fn=fn: fn(decoder, quick))
    return out


__all__ = ["BY_CLAIM", "BY_DECODER", "SETTINGS", "checks_for", "run_exact"]

_ = SamplingConfig  # re-exported for callers building settings
