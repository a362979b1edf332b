"""Exact targets for grammar decoding on toy models: the language, Q(w) and each ASAp sample's distribution.

* ``language_strings`` enumerates a finite regular language with interegular.
* ``tokenizations`` lists every token sequence (then EOS) that writes one of those strings.
* ``grammar_target`` is ``Q(w) = P(w) 1[w in L] / Z`` over those sequences, for a model given as
  ``probs(prefix) -> next-token probabilities``.
* ``transform_distribution`` enumerates the exact output distribution of one sample drawn through a logits
  transform (softmax at temperature 1 of what it returns); ``asap_sample_distributions`` follows ASAp's learning
  over every possible history of earlier samples, merging histories that leave the same trie.
* ``exact_efg`` is the true expected future grammaticality of a prefix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..contracts.transform import LogitsTransform
from .asap_state import AsapStateStore
from .asap_trie import AsapTrie
from .tokenizers import TokenVocabulary

Seq = tuple[int, ...]
Probs = Callable[[Seq], np.ndarray]


def language_strings(regex: str, max_strings: int = 100_000) -> list[str]:
    """Every string of a finite regular language, sorted (ValueError when it is infinite or too large)."""
    import interegular

    fsm = interegular.parse_pattern(regex).to_fsm().reduce()
    out: list[str] = []
    for chars in fsm.strings():
        if len(out) >= max_strings:
            raise ValueError(f"the language of {regex!r} has more than {max_strings} strings (or is infinite)")
        text = "".join(c if isinstance(c, str) else next(iter(c)) for c in chars)
        out.append(text)
    return sorted(set(out))


def tokenizations(strings: Iterable[str], vocab: TokenVocabulary) -> list[Seq]:
    """Every text-token sequence that writes one of ``strings``, each followed by the (smallest) EOS id."""
    eos = min(vocab.eos_token_ids)
    pieces = [(i, vocab.token_bytes[i]) for i in vocab.text_ids()]
    out: list[Seq] = []
    for text in strings:
        data = text.encode("utf-8")
        stack: list[tuple[int, Seq]] = [(0, ())]
        while stack:
            pos, seq = stack.pop()
            if pos == len(data):
                out.append(seq + (eos,))
                continue
            for tid, piece in pieces:
                if data.startswith(piece, pos):
                    stack.append((pos + len(piece), seq + (tid,)))
    return sorted(set(out))


def sequence_probability(probs: Probs, prompt: Seq, seq: Seq) -> float:
    p = 1.0
    for i, token in enumerate(seq):
        p *= float(probs(prompt + seq[:i])[token])
    return p


def grammar_target(probs: Probs, prompt: Seq, sequences: Iterable[Seq]) -> dict[Seq, float]:
    """Q(w) proportional to P(w) over the grammatical token sequences (the target of grammar-aligned decoding)."""
    weights = {s: sequence_probability(probs, prompt, s) for s in sequences}
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("the model gives the language probability 0")
    return {s: w / total for s, w in weights.items() if w > 0}


def exact_efg(probs: Probs, prompt: Seq, prefix: Seq, sequences: Iterable[Seq]) -> float:
    """True EFG of ``prefix``: the probability that the model, continuing it, writes a grammatical sequence."""
    n = len(prefix)
    total = 0.0
    for s in sequences:
        if s[:n] == prefix:
            p = 1.0
            for i in range(n, len(s)):
                p *= float(probs(prompt + s[:i])[s[i]])
            total += p
    return total


def kl_divergence(p: Mapping[Seq, float], q: Mapping[Seq, float]) -> float:
    """KL(p || q) in nats (infinite when p has mass where q has none)."""
    total = 0.0
    for k, pk in p.items():
        if pk <= 0:
            continue
        qk = q.get(k, 0.0)
        if qk <= 0:
            return math.inf
        total += pk * math.log(pk / qk)
    return total


def transform_distribution(transform: LogitsTransform, probs: Probs, prompt: Seq, max_new_tokens: int,
                           eos_token_ids: Iterable[int]) -> dict[Seq, float]:
    """Exact distribution of one sample drawn through ``transform`` (temperature 1 softmax of its logits).

    Each prefix's step distribution is computed when the depth-first walk first reaches it, after its ancestors:
    learning a transform does at a prefix only changes its ancestors' estimates, whose step distributions were
    already taken, so the result is the distribution of one sample from the transform's state at the start.
    """
    eos = set(eos_token_ids)
    out: dict[Seq, float] = {}
    stack: list[tuple[Seq, float]] = [((), 1.0)]
    while stack:
        gen, mass = stack.pop()
        if len(gen) == max_new_tokens or (gen and gen[-1] in eos):
            out[gen] = out.get(gen, 0.0) + mass
            continue
        state = transform.start(list(prompt))
        for i in range(len(gen)):  # replay the prefix so the transform's row state follows it
            transform.apply(state, list(gen[:i]), _logits(probs, prompt + gen[:i]))
        logits = transform.apply(state, list(gen), _logits(probs, prompt + gen))
        transform.finish(state, list(gen), "abort")
        if not bool(torch.isfinite(logits).any()):
            out[gen + (-1,)] = out.get(gen + (-1,), 0.0) + mass  # a dead end, marked with token -1
            continue
        step = torch.softmax(logits.to(torch.float64), dim=-1).numpy()
        for token in np.nonzero(step > 0)[0]:
            stack.append((gen + (int(token),), mass * float(step[token])))
    return out


def _logits(probs: Probs, prefix: Seq) -> torch.Tensor:
    with np.errstate(divide="ignore"):
        return torch.from_numpy(np.log(np.asarray(probs(prefix), dtype=np.float64)))


def replay_sample(transform: LogitsTransform, probs: Probs, prompt: Seq, sample: Seq) -> None:
    """Run ``transform`` along a given sample, as the decoding loop would have (so ASAp learns from it)."""
    state = transform.start(list(prompt))
    for i in range(len(sample)):
        transform.apply(state, list(sample[:i]), _logits(probs, prompt + sample[:i]))
    reason = "dead_end" if sample and sample[-1] == -1 else "stop"
    transform.finish(state, list(sample), reason)


def asap_sample_distributions(make: Callable[[AsapStateStore], Any], probs: Probs, prompt: Seq, samples: int,
                              max_new_tokens: int, eos_token_ids: Iterable[int],
                              trie: AsapTrie | None = None) -> list[dict[Seq, float]]:
    """Exact distribution of ASAp's 1st, 2nd, ... sample, averaging over every history of earlier samples.

    ``make(store)`` builds an ASAp transform learning in ``store``. Histories that leave identical tries are
    merged, so the work grows with the number of distinct tries, not with the number of histories.
    """
    eos = list(eos_token_ids)
    start = trie.copy() if trie is not None else AsapTrie()
    states: list[tuple[float, AsapTrie]] = [(1.0, start)]
    out: list[dict[Seq, float]] = []
    for n in range(samples):
        total: dict[Seq, float] = {}
        merged: dict[Any, tuple[float, AsapTrie]] = {}
        for weight, current in states:
            dist = transform_distribution(_with_trie(make, prompt, current.copy()), probs, prompt,
                                          max_new_tokens, eos)
            for seq, p in dist.items():
                total[seq] = total.get(seq, 0.0) + weight * p
            if n == samples - 1:
                continue
            for seq, p in dist.items():
                learned = current.copy()
                replay_sample(_with_trie(make, prompt, learned), probs, prompt, seq)
                sig = _signature(learned)
                prev = merged.get(sig)
                merged[sig] = (weight * p + (prev[0] if prev else 0.0), learned)
        out.append(total)
        states = list(merged.values())
    return out


def _with_trie(make: Callable[[AsapStateStore], Any], prompt: Seq, trie: AsapTrie) -> Any:
    store = AsapStateStore()
    transform = make(store)
    store.tries[transform.key(prompt).digest] = (transform.key(prompt), trie)
    return transform


def _signature(trie: AsapTrie) -> frozenset:
    """What decides every later step: the prefixes whose estimate is below 1 (others act as never visited)."""
    rec = trie.to_records()
    return frozenset((path, round(e, 14)) for path, e in zip(_paths(rec), rec["efg"]) if e < 1.0)


def _paths(rec: Mapping[str, Sequence]) -> list[tuple[int, ...]]:
    paths: list[tuple[int, ...]] = []
    for i, up in enumerate(rec["parent"]):
        paths.append(() if up == -1 else paths[up] + (int(rec["token"][i]),))
    return paths
