"""Statistical checks through a real runtime (any registered one) on its default model.

Targets are computed exactly from the runtime's own logits along the path the sampler takes; samples are drawn
through the runtime-adapter contract (``generate_on``), rows of seeded batches. Sample sizes come from the effect
to detect (``stats.sample_size_for_tv``), and where a planted bug's distribution is known it must be rejected on the
same draws (negative control).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from anydecode.algorithms.contracts.decoder import Decoder
from anydecode.algorithms.generation import generate_on

from .claims import CheckResult, measured
from .reference import planted_top_p_before_temperature, target_distribution
from .runtime_sampling import RuntimeSampler
from .stats import chi_square_test, sample_size_for_tv

ALPHA = 1e-3
PROMPT = "The weather today is"
#: settings where the planted bug (nucleus before temperature) moves the target by TV of about 0.2
SAMPLING = dict(temperature=1.5, top_k=8, top_p=0.7)
GREEDY_PROMPTS = ("The capital of France is", "Fix the spelling: I recieved you're leter yesterday.",
                  "def add(a, b):\n    return a +", "Once upon a time, in a small village,")


class RuntimeEnv:
    """One loaded runtime shared by every check of a run."""

    def __init__(self, runtime: Any, quick: bool, native_only: bool = False):
        self.runtime = runtime
        self.quick = quick
        #: only the checks of the runtime's native paths (the loop checks are the same code path as every other
        #: runtime's, and slow through an engine that re-prefills each step)
        self.native_only = native_only
        self.sampler = RuntimeSampler(runtime)
        self.handle = self.sampler.handle

    @property
    def name(self) -> str:
        return self.runtime.name

    def close(self) -> None:
        self.sampler.close()

    def encode(self, text: str) -> list[int]:
        return self.runtime.encode(self.handle, text)

    def probs_after(self, prompt_ids: Sequence[int]) -> Callable[[tuple], np.ndarray]:
        """``probs(prefix)``: the model's next-token distribution after ``prompt_ids + prefix`` (cached)."""
        cache: dict[tuple, np.ndarray] = {}

        def probs(prefix: tuple) -> np.ndarray:
            if prefix not in cache:
                self.runtime.reset(self.handle)
                ctx = self.runtime.open(self.handle, [list(prompt_ids)], max_new_tokens=1)
                assert ctx.prompt_logits is not None and ctx.session is not None
                logits = ctx.prompt_logits
                if prefix:
                    logits = ctx.session.append([list(prefix)])[:, -1]
                cache[prefix] = torch.softmax(logits[0].double(), -1).numpy()
            return cache[prefix]
        return probs

    def draws(self, decoder: Decoder, settings: dict[str, Any], prompt_ids: Sequence[int], n: int,
              max_new_tokens: int = 2) -> list[tuple[int, ...]]:
        out: list[tuple[int, ...]] = []
        batch = self.runtime.exact_rows  # wider batches may take other kernels than the law's one-row forwards
        for start in range(0, n, batch):
            rows = min(batch, n - start)
            config = decoder.configure({**settings, "seed": start})
            self.runtime.reset(self.handle)
            with torch.no_grad():
                gen = generate_on(self.runtime, self.handle, [list(prompt_ids)] * rows, decoder, config,
                                  max_new_tokens=max_new_tokens)
            out.extend(tuple(s.token_ids[:max_new_tokens]) for s in gen.sequences)
        return out


def _two_token_law(step: Callable[[tuple], np.ndarray], eos: int | None) -> dict[tuple, float]:
    law: dict[tuple, float] = {}
    p1 = step(())
    for t1 in np.nonzero(p1 > 0)[0]:
        if int(t1) == eos:
            law[(int(t1),)] = float(p1[t1])
            continue
        p2 = step((int(t1),))
        for t2 in np.nonzero(p2 > 0)[0]:
            law[(int(t1), int(t2))] = float(p1[t1] * p2[t2])
    return law


def _warped(env: RuntimeEnv, prompt: list[int], fn: Callable[..., np.ndarray], kwargs: dict) -> Callable:
    cache: dict[tuple, np.ndarray] = {}

    def step(prefix: tuple) -> np.ndarray:
        if prefix not in cache:
            env.runtime.reset(env.handle)
            ctx = env.runtime.open(env.handle, [prompt], max_new_tokens=2)
            logits = ctx.prompt_logits
            assert logits is not None and ctx.session is not None
            if prefix:
                logits = ctx.session.append([list(prefix)])[:, -1]
            cache[prefix] = fn(logits[0].double().numpy(), **kwargs)
        return cache[prefix]
    return step


def sampling_through(decoder: Decoder, env: RuntimeEnv, claim: str = "sampling") -> list[CheckResult]:
    """Two-token sequences drawn through the runtime follow ancestral sampling from the warped target; the planted
    bug (nucleus before temperature) is rejected on the same draws."""
    prompt = env.encode(PROMPT)
    eos = env.runtime.tokenizer(env.handle).eos_token_id
    target = _two_token_law(_warped(env, prompt, target_distribution, SAMPLING), eos)
    bug = _two_token_law(_warped(env, prompt, planted_top_p_before_temperature, SAMPLING), eos)
    n = sample_size_for_tv(0.12 if env.quick else 0.08, categories=len(target))
    samples = env.draws(decoder, dict(SAMPLING), prompt, n)
    fit = chi_square_test(samples, target)
    neg = chi_square_test(samples, bug)
    tv = 0.5 * sum(abs(target.get(k, 0) - bug.get(k, 0)) for k in set(target) | set(bug))
    return [measured("two-token draws follow the warped target (chi-square)", decoder.name, env.name, claim, "p",
                     fit.p_value, ALPHA, "above", f"categories={fit.categories}", fit.n),
            measured("planted bug rejected on the same draws", decoder.name, env.name, claim, "p", neg.p_value,
                     ALPHA, "below", f"TV(bug, target)={tv:.3f}", neg.n)]


def own_law_through(decoder: Decoder, env: RuntimeEnv) -> list[CheckResult]:
    """A third-party sampling decoder: draws through the runtime follow its own transform's law on the runtime's
    logits (two tokens)."""
    prompt = env.encode(PROMPT)
    config = decoder.configure(dict(temperature=1.0))
    ctx = env.runtime.open(env.handle, [prompt], max_new_tokens=2)
    transform = decoder.transform(config, ctx)
    state = transform.start(prompt)
    raw = _warped(env, prompt, lambda x: x, {})

    def step(prefix: tuple) -> np.ndarray:
        out = transform.apply(state, list(prefix), torch.from_numpy(np.asarray(raw(prefix))))
        return torch.softmax(out.double(), -1).numpy()

    eos = env.runtime.tokenizer(env.handle).eos_token_id
    target = _two_token_law(step, eos)
    n = sample_size_for_tv(0.12 if env.quick else 0.08, categories=min(len(target), 200))
    samples = env.draws(decoder, {"temperature": 1.0}, prompt, n)
    fit = chi_square_test(samples, target)
    return [measured("two-token draws follow the decoder's own law (chi-square)", decoder.name, env.name,
                     "sampling", "p", fit.p_value, ALPHA, "above", f"categories={fit.categories}", fit.n)]


def greedy_through(decoder: Decoder, env: RuntimeEnv, claim: str, settings: dict[str, Any] | None = None
                   ) -> list[CheckResult]:
    """Identical to the runtime's own greedy loop on a few prompts (where a runtime's batched and one-token logits
    differ, a parting must be a near-tie: ``Runtime.greedy_parting_gap``)."""
    native = env.runtime.baselines(env.handle).get("native-greedy")
    if native is None:
        return [CheckResult("identical to the runtime's greedy decoding", decoder.name, env.name, claim, True,
                            skipped=f"runtime {env.name!r} has no native-greedy loop")]
    gap = env.runtime.greedy_parting_gap(env.handle)
    identical = worst = 0
    prompts = GREEDY_PROMPTS[:2] if env.quick else GREEDY_PROMPTS
    parted = []
    for text in prompts:
        ids = env.encode(text)
        env.runtime.reset(env.handle)
        want, _ = native(ids, 24, {})
        env.runtime.reset(env.handle)
        out = generate_on(env.runtime, env.handle, [ids], decoder, decoder.configure(settings or {}),
                          max_new_tokens=24)
        got = out.token_ids
        if got == want:
            identical += 1
            continue
        at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        if at < min(len(got), len(want)):
            p = env.probs_after(ids)(tuple(want[:at]))
            tie = abs(float(np.log(p[got[at]] + 1e-300) - np.log(p[want[at]] + 1e-300)))
            parted.append(tie)
            worst = max(worst, tie)
        else:
            parted.append(float("inf"))
            worst = float("inf")
    ok_parting = all(t <= gap for t in parted)
    share = identical / len(prompts)
    res = measured("identical to the runtime's greedy decoding", decoder.name, env.name, claim, "identical share",
                   share, 1.0 if gap == 0 else 0.0, "above",
                   f"{identical}/{len(prompts)} identical; partings at log-prob gaps {parted} (allowed {gap})")
    res.passed = res.passed and ok_parting
    return [res]


#: grammars the checks try in order; the first whose language this runtime's vocabulary can write with at least
#: two sequences is used, so a runtime with a small or unusual vocabulary still gets a real check
GCD_GRAMMARS = ("( yes| no)", "(yes|no)", "[0-9]{1,2}", "[a-z]{1,2}")
ASAP_GRAMMARS = ("000|1[01][01]", "111|2[12][12]", "aaa|b[ab][ab]")


def _grammar_law(decoder: Decoder, env: RuntimeEnv, prompt: list[int], candidates: Sequence[str],
                 max_new_tokens: int, extra: dict[str, Any], probs: Callable[[tuple], np.ndarray] | None = None
                 ) -> tuple[str, Any, Any, dict[Any, float]] | None:
    """The first candidate regex with at least two sequences for this vocabulary: (regex, config, ctx, law), the
    law computed from ``probs`` (default: the probabilities the runtime's session gives, ``env.probs_after``)."""
    from anydecode.algorithms.grammar.spec import GrammarError
    from anydecode.algorithms.grammar.exact import transform_distribution

    probs = probs or env.probs_after(prompt)
    for regex in candidates:
        config = decoder.configure({"grammar": regex, "grammar_format": "regex", **extra})
        ctx = env.runtime.open(env.handle, [prompt], max_new_tokens=max_new_tokens)
        try:
            transform = decoder.transform(config, ctx)
        except GrammarError:
            continue
        law = transform_distribution(transform, probs, (), max_new_tokens, ctx.eos_token_ids)
        if len(law) >= 2:
            return regex, config, ctx, law
    return None


def _no_grammar(decoder: Decoder, env: RuntimeEnv, claim: str, name: str, candidates: Sequence[str]) -> CheckResult:
    return CheckResult(name, decoder.name, env.name, claim, True,
                       skipped=f"none of the grammars {list(candidates)} has two sentences in this vocabulary")


def gcd_through(decoder: Decoder, env: RuntimeEnv) -> list[CheckResult]:
    """GCD through the runtime: sequences follow P restricted to the grammar at each step (exact law from the
    runtime's logits)."""
    name = "sequences follow P restricted to the grammar (chi-square)"
    prompt = env.encode("Is the sky blue? Answer yes or no:")
    found = _grammar_law(decoder, env, prompt, GCD_GRAMMARS, 4, {"temperature": 1.0})
    if found is None:
        return [_no_grammar(decoder, env, "grammar-constrained", name, GCD_GRAMMARS)]
    regex, _, _, law = found
    settings = {"grammar": regex, "grammar_format": "regex", "temperature": 1.0}
    n = sample_size_for_tv(0.1, categories=max(len(law), 2))
    samples = env.draws(decoder, settings, prompt, n, max_new_tokens=4)
    fit = chi_square_test(samples, law)
    return [measured(name, decoder.name, env.name, "grammar-constrained", "p", fit.p_value, ALPHA, "above",
                     f"grammar {regex!r}: {len(law)} sequences in the language", fit.n)]


def asap_through(decoder: Decoder, env: RuntimeEnv) -> list[CheckResult]:
    """ASAp through the runtime on a real grammar: after N samples its next sample's exact KL to
    Q(w) ~ P(w) 1[w in L] is below a tenth of GCD's."""
    from anydecode.algorithms.grammar import AsapStateStore, forget_asap_state
    from anydecode.algorithms.grammar.exact import (
        asap_sample_distributions,
        grammar_target,
        kl_divergence,
    )
    from anydecode.algorithms.grammar.transforms import AsapTransform
    from anydecode.registry import get_decoder

    name = "next-sample KL to Q after N samples, against GCD's"
    prompt = env.encode("Write a random binary string of length 3:")
    gcd = get_decoder("gcd")
    found = _grammar_law(gcd, env, prompt, ASAP_GRAMMARS, 8, {})
    if found is None:
        return [_no_grammar(decoder, env, "grammar-aligned", name, ASAP_GRAMMARS)]
    regex, _, ctx, gcd_law = found
    settings = {"grammar": regex, "grammar_format": "regex"}
    forget_asap_state()  # learning starts now, in the process's store, shared by every draw below
    config = decoder.configure(settings)
    transform = decoder.transform(config, ctx)
    probs = env.probs_after(prompt)
    eos = ctx.eos_token_ids
    language = [s for s in gcd_law]  # every tokenization GCD can write, each ending with EOS
    target = grammar_target(probs, (), language)
    gcd_kl = kl_divergence(gcd_law, target)
    budget = 48  # samples at most; the KL is read every 8 samples and the check stops once it is below the bound
    outputs: list[tuple[int, ...]] = []

    def make(store: AsapStateStore) -> Any:
        return AsapTransform(transform.compiled, config, store)

    kl = float("inf")
    while len(outputs) < budget:
        for seed in range(len(outputs), len(outputs) + 8):  # one sample per call: ASAp learns in between
            env.runtime.reset(env.handle)
            gen = generate_on(env.runtime, env.handle, [prompt], decoder,
                              decoder.configure({**settings, "seed": seed}), max_new_tokens=8)
            outputs.append(tuple(gen.token_ids))
        (dist,) = asap_sample_distributions(make, probs, (), 1, 8, eos, trie=transform.trie(prompt).copy())
        kl = kl_divergence(dist, target)
        if kl < 0.1 * gcd_kl:
            break
    samples = len(outputs)
    outside = sum(o not in target for o in outputs)
    res = measured(name, decoder.name, env.name,
                   "grammar-aligned", "KL / KL(GCD)", kl / max(gcd_kl, 1e-12), 0.1, "below",
                   f"grammar {regex!r}: KL {kl:.4f} vs GCD {gcd_kl:.4f} after {samples} samples "
                   f"(at most {budget}); {len(target)} sequences; {outside} outputs outside the language", samples)
    res.passed = res.passed and outside == 0
    return [res]


def best_of_n_through(decoder: Decoder, env: RuntimeEnv) -> list[CheckResult]:
    """best_of_n through the runtime picks the sample its own statistics rank best (reward, then likelihood)."""
    prompt = env.encode("Name a colour:")
    config = decoder.configure({"num_samples": 4, "seed": 3, "temperature": 0.9})
    env.runtime.reset(env.handle)
    out = generate_on(env.runtime, env.handle, [prompt], decoder, config, max_new_tokens=6)
    stats = out.stats
    chosen = stats["chosen_sample"][0]
    best = max(range(4), key=lambda i: (stats["sample_rewards"][i], stats["sample_logliks"][i]))
    return [CheckResult("returns the best of its N samples", decoder.name, env.name, "best-of-n", chosen == best,
                        "chosen", float(chosen), float(best), detail=f"chose sample {chosen}, best {best}")]


def deal_through(decoder: Decoder, env: RuntimeEnv) -> list[CheckResult]:
    """DeAL with lam=0 equals beam search of the same width through the runtime."""
    from anydecode.registry import get_decoder

    beam = get_decoder("beam")
    mismatches = 0
    for text in GREEDY_PROMPTS[:2]:
        ids = env.encode(text)
        env.runtime.reset(env.handle)
        ours = generate_on(env.runtime, env.handle, [ids], decoder, decoder.configure({"beam": 2, "k": 4, "lam": 0}),
                           max_new_tokens=8)
        env.runtime.reset(env.handle)
        ref = generate_on(env.runtime, env.handle, [ids], beam, beam.configure({"num_beams": 2}), max_new_tokens=8)
        mismatches += ours.token_ids != ref.token_ids
    return [measured("lam=0 equals beam search through the runtime", decoder.name, env.name, "search",
                     "mismatches", mismatches, 1, detail="2 prompts")]


# -- the runtime's native paths (Runtime.native_draws, Runtime.native_speculative_greedy), where it offers them ------
#: prompts whose greedy continuation copies from the prompt (in the model's chat template), so that every built-in
#: drafter has drafts to make and the runtime accepts some of them
SPECULATIVE_PROMPTS = (
    "Fix the spelling of this sentence and reply with the corrected sentence only: "
    "My freind and I walkd to the libary on Saturday morning to return the books we borowed last month.",
    "Repeat this list exactly: apple, banana, cherry, apple, banana, cherry, apple, banana, cherry.",
    "Rename the variable x to total in this code and reply with the code only:\n"
    "def add_all(items):\n    x = 0\n    for item in items:\n        x += item\n    return x",
    "Fix the grammar and spelling of this paragraph. Reply with the corrected paragraph only.\n\n"
    "The library in our town is open untill eight o'clock on weekdays, but many people dont know that.",
)


def _native_logits(env: RuntimeEnv, prompt: Sequence[int]) -> Callable[[tuple], np.ndarray]:
    """``logits(prefix)``: all of the vocabulary's logits after ``prompt + prefix``, as the runtime's native path
    computes them (``Runtime.next_token_logits``; cached)."""
    cache: dict[tuple, np.ndarray] = {}

    def logits(prefix: tuple) -> np.ndarray:
        if prefix not in cache:
            cache[prefix] = env.runtime.next_token_logits(env.handle, [*prompt, *prefix]).double().numpy()
        return cache[prefix]
    return logits


def _softmax(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits).double(), -1).numpy()


NATIVE = "native"  # the prefix of these checks' names


def native_sampling_through(decoder: Decoder, env: RuntimeEnv, claim: str) -> list[CheckResult]:
    """Draws by the runtime's own sampler, with the decoder installed through the runtime's native logits hook,
    follow the exact law computed from the runtime's own logits (all of the vocabulary); for ``sample``, the
    planted bug (nucleus before temperature) is rejected on the same draws."""
    prompt = env.encode(PROMPT)
    eos = env.runtime.tokenizer(env.handle).eos_token_id
    logits = _native_logits(env, prompt)
    if decoder.name == "sample":
        settings: dict[str, Any] = dict(SAMPLING)
        target = _two_token_law(lambda pre: target_distribution(logits(pre), **SAMPLING), eos)
        bug: dict | None = _two_token_law(lambda pre: planted_top_p_before_temperature(logits(pre), **SAMPLING), eos)
    else:  # a third-party sampling decoder: its own transform's law on the runtime's logits
        settings = {"temperature": 1.0}
        ctx = env.runtime.open(env.handle, [prompt], max_new_tokens=2)
        transform = decoder.transform(decoder.configure(settings), ctx)
        state = transform.start(prompt)
        target = _two_token_law(
            lambda pre: _softmax(transform.apply(state, list(pre), torch.from_numpy(logits(pre)))), eos)
        bug = None
    n = sample_size_for_tv(0.12 if env.quick else 0.08, categories=min(len(target), 200))
    samples = env.runtime.native_draws(env.handle, decoder.name, settings, prompt, n, 2)
    fit = chi_square_test(samples, target)
    out = [measured(f"{NATIVE}: two-token draws by the runtime's sampler follow the target (chi-square)",
                    decoder.name, env.name, claim, "p", fit.p_value, ALPHA, "above",
                    f"categories={fit.categories}; the runtime's own sampler, the decoder in its logits hook", fit.n)]
    if bug is not None:
        neg = chi_square_test(samples, bug)
        tv = 0.5 * sum(abs(target.get(k, 0) - bug.get(k, 0)) for k in set(target) | set(bug))
        out.append(measured(f"{NATIVE}: planted bug rejected on the same draws", decoder.name, env.name, claim, "p",
                            neg.p_value, ALPHA, "below", f"TV(bug, target)={tv:.3f}", neg.n))
    return out


def native_gcd_through(decoder: Decoder, env: RuntimeEnv) -> list[CheckResult]:
    """GCD installed through the runtime's native logits hook, sampled by the runtime: sequences follow P restricted
    to the grammar at each step (exact law from the runtime's logits, all of the vocabulary)."""
    name = f"{NATIVE}: sequences by the runtime's sampler follow P restricted to the grammar (chi-square)"
    prompt = env.encode("Is the sky blue? Answer yes or no:")
    logits = _native_logits(env, prompt)
    found = _grammar_law(decoder, env, prompt, GCD_GRAMMARS, 4, {"temperature": 1.0},
                         probs=lambda pre: _softmax(logits(pre)))
    if found is None:
        return [_no_grammar(decoder, env, "grammar-constrained", name, GCD_GRAMMARS)]
    regex, _, _, law = found
    settings = {"grammar": regex, "grammar_format": "regex", "temperature": 1.0}
    n = sample_size_for_tv(0.1, categories=max(len(law), 2))
    samples = env.runtime.native_draws(env.handle, decoder.name, settings, prompt, n, 4)
    fit = chi_square_test(samples, law)
    outside = sum(s not in law for s in samples)
    res = measured(name, decoder.name, env.name, "grammar-constrained", "p", fit.p_value, ALPHA, "above",
                   f"grammar {regex!r}: {len(law)} sequences in the language; {outside} draws outside it", fit.n)
    res.passed = res.passed and outside == 0
    return [res]


def _drafter_of(decoder: Decoder) -> tuple[str | None, dict[str, Any]]:
    """The registered drafter a speculative decoder runs with its default settings, and that drafter's settings."""
    from anydecode.algorithms.contracts.errors import AnydecodeError
    from anydecode.registry import get_registry

    config = decoder.configure({})
    name = getattr(config, "drafter", None)
    if isinstance(name, str):  # ``speculative``: any drafter, named in its config
        return name, dict(getattr(config, "drafter_settings", ()) or ())
    try:  # ``iad``, ``aded``, ...: the drafter of the decoder's own name
        get_registry().get("drafter", decoder.name)
    except AnydecodeError:
        return None, {}
    return decoder.name, {}


def _parting_gap(env: RuntimeEnv, ids: list[int], got: list[int], want: list[int]) -> float:
    """The log-probability gap (in the runtime's distribution) between the two tokens where ``got`` first parts
    from ``want``; infinite where one is a prefix of the other."""
    at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    if at == min(len(got), len(want)):
        return float("inf")
    p = env.probs_after(ids)(tuple(want[:at]))
    return abs(float(np.log(p[got[at]] + 1e-300) - np.log(p[want[at]] + 1e-300)))


def native_speculative_through(decoder: Decoder, env: RuntimeEnv) -> list[CheckResult]:
    """The decoder's drafter as the runtime's own speculative proposer: greedy output identical to the runtime's
    plain greedy decoding, with drafts made and accepted (the runtime's own counters)."""
    name = f"{NATIVE}: the runtime's speculative decoding with this drafter equals its plain greedy"
    drafter, settings = _drafter_of(decoder)
    native = env.runtime.baselines(env.handle).get("native-greedy")
    if drafter is None or native is None:
        why = f"no registered drafter named {decoder.name!r}" if drafter is None else "no native-greedy loop"
        return [CheckResult(name, decoder.name, env.name, "lossless", True, skipped=why)]
    prompts = [env.runtime.encode(env.handle, text, chat=True)
               for text in (SPECULATIVE_PROMPTS[:3] if env.quick else SPECULATIVE_PROMPTS)]
    tokens = 40 if env.quick else 64
    try:
        spec = env.runtime.native_speculative_greedy(env.handle, drafter, settings, prompts, tokens)
    except NotImplementedError as exc:
        return [CheckResult(name, decoder.name, env.name, "lossless", True, skipped=str(exc))]
    gap = env.runtime.greedy_parting_gap(env.handle)
    identical, parted = 0, []
    for ids, got in zip(prompts, spec.outputs):
        env.runtime.reset(env.handle)
        want, _ = native(ids, tokens, {})
        if got == want:
            identical += 1
        else:
            parted.append(_parting_gap(env, ids, got, want))
    share = identical / len(prompts)
    res = measured(name, decoder.name, env.name, "lossless", "identical share", share, 1.0 if gap == 0 else 0.0,
                   "above", f"drafter {drafter!r}: {identical}/{len(prompts)} identical, partings at log-prob gaps "
                   f"{parted} (allowed {gap}); {spec.accepted_tokens}/{spec.draft_tokens} draft tokens accepted "
                   f"(the runtime's counters); {spec.note}", len(prompts))
    res.passed = res.passed and all(t <= gap for t in parted) and spec.accepted_tokens > 0
    return [res]


def draft_invariance_through(decoder: Decoder, env: RuntimeEnv) -> list[CheckResult]:
    """Seeded sampling through the runtime: the decoder's output equals what the same loop samples when it drafts
    nothing (deterministic drafts are verified by coupling). Where the runtime's block logits differ from its
    one-token logits (``Runtime.greedy_parting_gap``), a parting must be a near-tie of the exponential race: the two
    tokens' race values within that gap divided by the temperature."""
    from anydecode.algorithms.contracts.errors import AnydecodeError
    from anydecode.algorithms.speculative.verify import stream_seed
    from anydecode.kernels import rng
    from anydecode.registry import get_decoder

    name = "sampling: the same tokens as the loop without drafts"
    drafter, _ = _drafter_of(decoder)
    if drafter is None or drafter == "draft_model":
        why = "no deterministic drafter" if drafter is None else "a draft model's sampled drafts"
        return [CheckResult(name, decoder.name, env.name, "lossless", True, skipped=why)]
    temperature, tokens = 0.5, 24 if env.quick else 64
    plain = get_decoder("speculative")
    gap = env.runtime.greedy_parting_gap(env.handle)
    # prompts whose answers copy from them (drafts accepted as well as rejected), as the runtime can write them
    prompts = []
    for text in SPECULATIVE_PROMPTS[1:3] if env.quick else SPECULATIVE_PROMPTS:
        try:
            prompts.append(env.runtime.encode(env.handle, text, chat=True))
        except AnydecodeError:
            continue
    if not prompts:
        return [CheckResult(name, decoder.name, env.name, "lossless", True,
                            skipped="the runtime's tokenizer cannot write the copying prompts")]
    identical = drafted = accepted = 0
    parted: list[float] = []
    for i, ids in enumerate(prompts):
        settings = {"temperature": temperature, "seed": 100 + i}
        runs = []
        for dec, config in ((decoder, decoder.configure({**settings, "cost_aware": False})),
                            (plain, plain.configure({**settings, "drafter": "oracle", "continuation_ids": ()}))):
            env.runtime.reset(env.handle)
            with torch.no_grad():
                runs.append(generate_on(env.runtime, env.handle, [ids], dec, config, max_new_tokens=tokens))
        drafted += int(runs[0].stats.get("drafted", 0) or 0)
        accepted += int(runs[0].stats.get("accepted", 0) or 0)
        got, want = runs[0].token_ids, runs[1].token_ids
        if got == want:
            identical += 1
            continue
        at = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        if at == min(len(got), len(want)):
            parted.append(float("inf"))
            continue
        p = env.probs_after(ids)(tuple(want[:at]))
        key = rng.stream_key(stream_seed(settings["seed"]), 0, at)
        e = rng.exponential(rng.lane_bits(key, torch.tensor([got[at], want[at]]))).double().log().numpy()
        log_p = np.log(p[[got[at], want[at]]] + 1e-300)
        parted.append(abs(float((log_p[0] - log_p[1]) / temperature - (e[0] - e[1]))))
    if not drafted:  # e.g. a runtime whose tokenizer writes the prompts without anything to copy
        return [CheckResult(name, decoder.name, env.name, "lossless", True,
                            skipped=f"nothing was drafted on {len(prompts)} prompts: nothing to compare")]
    allowed = gap / temperature
    res = measured(name, decoder.name, env.name, "lossless", "identical share", identical / len(prompts),
                   1.0 if gap == 0 else 0.0, "above",
                   f"{identical}/{len(prompts)} identical at temperature {temperature}; partings at race-value gaps "
                   f"{[round(t, 4) for t in parted]} (allowed {allowed:.4g}); {accepted}/{drafted} draft tokens "
                   "accepted", len(prompts))
    res.passed = res.passed and all(t <= allowed for t in parted)
    return [res]


def native_checks_for(decoder: Decoder, env: RuntimeEnv) -> list[Callable[[], list[CheckResult]]]:
    """The checks of the runtime's native paths that apply to ``decoder`` and that the runtime offers."""
    claim = decoder.claim
    checks: list[Callable[[], list[CheckResult]]] = []
    if env.runtime.offers("native_draws") and decoder.kind == "transform":
        if claim == "sampling":
            checks.append(lambda: native_sampling_through(decoder, env, "sampling"))
        elif claim == "grammar-constrained":
            checks.append(lambda: native_gcd_through(decoder, env))
    if env.runtime.offers("native_speculative_greedy") and claim == "lossless":
        checks.append(lambda: native_speculative_through(decoder, env))
    return checks


def runtime_checks_for(decoder: Decoder, env: RuntimeEnv) -> list[Callable[[], list[CheckResult]]]:
    if env.native_only:
        return native_checks_for(decoder, env)
    return _loop_checks_for(decoder, env) + native_checks_for(decoder, env)


def _loop_checks_for(decoder: Decoder, env: RuntimeEnv) -> list[Callable[[], list[CheckResult]]]:
    """The checks that drive the runtime through anydecode's own loop (``Runtime.open`` and a decode context)."""
    claim = decoder.claim
    if decoder.name == "sample":
        return [lambda: sampling_through(decoder, env)]
    if claim == "sampling":
        return [lambda: own_law_through(decoder, env)]
    if claim == "greedy-identical":
        return [lambda: greedy_through(decoder, env, claim)]
    if claim == "lossless":
        return [lambda: greedy_through(decoder, env, "lossless", {"temperature": 0.0}),
                lambda: sampling_through(decoder, env, "lossless"),
                lambda: draft_invariance_through(decoder, env)]
    if claim == "grammar-constrained":
        return [lambda: gcd_through(decoder, env)]
    if claim == "grammar-aligned":
        return [lambda: asap_through(decoder, env)]
    if claim == "best-of-n":
        return [lambda: best_of_n_through(decoder, env)]
    if decoder.name == "deal":
        return [lambda: deal_through(decoder, env)]
    return []


def run_runtime(decoder: Decoder, env: RuntimeEnv) -> list[CheckResult]:
    out: list[CheckResult] = []
    for check in runtime_checks_for(decoder, env):
        started = time.perf_counter()
        try:
            results = check()
        except Exception as exc:  # noqa: BLE001 - a check that cannot run is a failed check, named
            results = [CheckResult("check raised", decoder.name, env.name, decoder.claim or "", False,
                                   detail=f"{type(exc).__name__}: {exc}")]
        for r in results:
            r.seconds = time.perf_counter() - started
        out += results
    return out
