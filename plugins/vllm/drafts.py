"""The runtime-free half of anydecode's vLLM proposers: which request each batch row holds, and its drafter.

vLLM hands a ``custom_class`` proposer the batch as arrays only: each row's tokens (prompt and output), its token
count, and the tokens accepted in this step. Rows move when requests finish (the batch is condensed), and no
request id is given. A request is therefore recognised by its whole token history: after a step that added ``m``
tokens to a row of ``n`` tokens, its state is the one saved under ``(n - m, digest of the first n - m tokens)``.
A row whose history matches no saved state is a new request whose prompt is everything but the token sampled
after prefill. Identical histories (the same prompt twice) share a key; their states are interchangeable.

Each request gets its own one-row instance of a registered anydecode drafter (IAD, ADED, prompt lookup or a
third-party one), driven through the ``Drafter`` contract: ``start([prompt])``, ``propose([context], [limit])``
and ``feedback(0, draft, accepted_path)``. Tree drafts become their first-child chain, since vLLM verifies chains.
Nothing here affects what vLLM outputs: drafts are only proposals, verified by the target model.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from anydecode.algorithms.contracts.config import DecoderConfig
from anydecode.algorithms.contracts.errors import ConfigError
from anydecode.algorithms.speculative.draft import Draft, Drafter

logger = logging.getLogger("anydecode.vllm")

#: drafters that cannot run inside a vLLM proposer, and what to use instead
UNSUPPORTED = {
    "draft_model": "a draft model needs its own model session; use vLLM's own "
                   "--speculative-config '{\"method\": \"draft_model\", \"model\": ...}'",
}


def num_speculative_tokens(value: Any) -> int:
    """A draft length (an integer >= 1, or its string) or a ConfigError naming the value."""
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        k = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"num_speculative_tokens={value!r} is not an integer; give the most draft tokens "
                          "verified per step, an integer >= 1 (e.g. 8)") from None
    if k < 1:
        raise ConfigError(f"num_speculative_tokens={value!r} must be an integer >= 1 (the most draft tokens "
                          "verified per step)")
    return k


def drafter_config(name: str, settings: Mapping[str, Any] | None = None) -> tuple[Any, DecoderConfig | None]:
    """The registered drafter ``name`` and its validated settings (strings are parsed as ``--set`` values)."""
    from anydecode.registry import get_registry

    if name in UNSUPPORTED:
        raise ConfigError(f"drafter {name!r} cannot run as a vLLM proposer: {UNSUPPORTED[name]}")
    spec = get_registry().get("drafter", name)  # RegistryError naming the registered drafters
    return spec, spec.configure(dict(settings or {}), from_strings=True)


def drafter_factory(name: str, settings: Mapping[str, Any] | None = None, *, vocab_size: int = 0,
                    tokenizer: Callable[[], Any] | None = None) -> tuple[Callable[[], Drafter], DecoderConfig | None]:
    """A function making one-row drafters of the registered drafter ``name`` with ``settings``, and the validated
    config. One drafter is built here, so that a drafter that cannot be built fails with the proposer."""
    from anydecode.algorithms.contracts.decoder import DecodeContext

    spec, config = drafter_config(name, settings)
    needs_tokenizer = config is not None and getattr(config, "source", None) is not None
    if needs_tokenizer and tokenizer is None:
        raise ConfigError(f"drafter {name!r}: source text needs the model's tokenizer; give source_ids instead")
    shared: dict[str, Any] = {}

    def make() -> Drafter:
        if "ctx" not in shared:
            # one context for all requests: drafters that learn across requests (ADED's tri-gram table, suffix
            # corpora) key their shared state on ctx.owner, which lives as long as this factory
            shared["ctx"] = DecodeContext(vocab_size=vocab_size, runtime="vllm", max_new_tokens=0,
                                          tokenizer=tokenizer() if needs_tokenizer and tokenizer else None,
                                          owner=_SharedOwner())
        return spec.factory(config, None, shared["ctx"])

    make()
    return make, config


def split_settings(section: Mapping[str, Any], drafter: str | None = None) -> tuple[str, dict[str, Any]]:
    """The drafter's name and settings from the ``anydecode`` section of vLLM's ``additional_config``.

    ``{"drafter": "iad", "max_match_ngram": 2}`` (``"decoder"`` works too, as ``anydecode serve`` writes it;
    ``"decoder": "speculative"`` reads the name from ``"drafter"``). A proposer class bound to one drafter
    (``IADProposer``) passes ``drafter`` and refuses a section naming another.
    """
    if not isinstance(section, Mapping):
        raise ConfigError(f"--additional-config 'anydecode' must be an object of drafter settings, got {section!r}")
    values = dict(section)
    named = [str(v) for k in ("decoder", "drafter") if (v := values.pop(k, None)) not in (None, "speculative")]
    if drafter is not None:
        other = [n for n in named if n != drafter]
        if other:
            raise ConfigError(f"--additional-config names drafter {other[0]!r}, but the speculative proposer class "
                              f"runs {drafter!r}; drop the name or pick the proposer class of {other[0]!r}")
        return drafter, values
    if not named:
        raise ConfigError("AnydecodeProposer needs a drafter name: --additional-config "
                          "'{\"anydecode\": {\"drafter\": \"iad\"}}' (or use IADProposer, ADEDProposer, "
                          "PromptLookupProposer)")
    if len(set(named)) > 1:
        raise ConfigError(f"--additional-config names two drafters: {named[0]!r} and {named[1]!r}")
    return named[0], values


class _SharedOwner:
    """Stands for the model in ``DecodeContext.owner``: state a drafter keeps per model (ADED's tri-gram table,
    weakly keyed) lives as long as this proposer."""


@dataclasses.dataclass
class _Request:
    drafter: Drafter
    chain: list[int]  # the draft tokens proposed at the last step (vLLM verifies this chain)


@dataclasses.dataclass
class ProposerStats:
    """Counters of one proposer (per worker), for tests and diagnostics."""

    steps: int = 0
    new_requests: int = 0  # rows whose history matched no saved state
    tracked_rows: int = 0  # rows matched to their saved state
    drafted_tokens: int = 0
    accepted_tokens: int = 0  # draft tokens the target confirmed (seen at the next step)
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _key(tokens: np.ndarray) -> tuple[int, bytes]:
    return int(tokens.shape[0]), hashlib.blake2b(np.ascontiguousarray(tokens).tobytes(), digest_size=16).digest()


class RequestDrafters:
    """Per-request drafters for the rows of vLLM's input batch, recognised by their token histories."""

    def __init__(self, make_drafter: Callable[[], Drafter] | None, k: int, max_model_len: int,
                 capacity: int = 1024, tree_budget: int | None = None):
        self.make_drafter = make_drafter
        self.k = num_speculative_tokens(k)
        self.max_model_len = int(max_model_len)
        self.capacity = max(int(capacity), 1)
        #: nodes a tree drafter may grow per step (its main chain, cut to k, is proposed)
        self.tree_budget = tree_budget
        self.states: collections.OrderedDict[tuple[int, bytes], list[_Request]] = collections.OrderedDict()
        self.stats = ProposerStats()

    def set_drafter(self, make_drafter: Callable[[], Drafter] | None, tree_budget: int | None = None) -> None:
        """Use another drafter from now on (None: no drafts); running requests start afresh."""
        self.make_drafter = make_drafter
        self.tree_budget = tree_budget
        self.states.clear()

    # -- the saved states ------------------------------------------------------------------------------------------
    def _take(self, key: tuple[int, bytes]) -> _Request | None:
        bucket = self.states.get(key)
        if not bucket:
            return None
        state = bucket.pop()
        if not bucket:
            del self.states[key]
        return state

    def _put(self, key: tuple[int, bytes], state: _Request) -> None:
        self.states.setdefault(key, []).append(state)
        self.states.move_to_end(key)
        while len(self.states) > self.capacity:  # finished (or long-preempted) requests
            self.states.popitem(last=False)

    # -- one step --------------------------------------------------------------------------------------------------
    def propose(self, sampled_token_ids: Sequence[Sequence[int]], num_tokens: np.ndarray,
                token_ids: np.ndarray) -> list[list[int]]:
        """Draft tokens for each row of the batch (``[]`` for rows that get none)."""
        self.stats.steps += 1
        out: list[list[int]] = []
        for row, sampled in enumerate(sampled_token_ids):
            added = len(sampled) if sampled is not None else 0
            n = int(num_tokens[row])
            if added == 0 or self.make_drafter is None or n < added:
                out.append([])  # a prefill chunk (nothing sampled yet) or drafting switched off
                continue
            tokens = token_ids[row, :n]
            try:
                out.append(self._row(tokens, n, added))
            except Exception as exc:  # a drafter bug must not take the engine down: this row gets no draft
                self.stats.errors += 1
                logger.error("anydecode: drafter failed on a request (%s: %s); no draft this step",
                             type(exc).__name__, exc)
                out.append([])
        return out

    def _row(self, tokens: np.ndarray, n: int, added: int) -> list[int]:
        state = self._take(_key(tokens[: n - added]))
        if state is None:
            self.stats.new_requests += 1
            drafter = self.make_drafter()  # type: ignore[misc]
            # the first step after prefill samples one token: everything before it is the prompt
            drafter.start([tokens[: n - 1].tolist()])
            state = _Request(drafter, [])
        else:
            self.stats.tracked_rows += 1
            self._feedback(state, tokens[n - added: n])
        limit = min(self.k, self.max_model_len - n)
        chain = self._draft(state.drafter, tokens, limit) if limit > 0 else []
        state.chain = chain
        self.stats.drafted_tokens += len(chain)
        self._put(_key(tokens), state)
        return chain

    def _feedback(self, state: _Request, new: np.ndarray) -> None:
        """Tell the drafter how much of its last chain the target accepted: the new tokens are the accepted draft
        tokens and one more (the target's own token at the first mismatch, or the bonus token)."""
        if not state.chain:
            return
        accepted = 0
        for drafted, got in zip(state.chain, new[:-1].tolist()):
            if drafted != got:
                break
            accepted += 1
        self.stats.accepted_tokens += accepted
        state.drafter.feedback(0, Draft(list(state.chain)), list(range(accepted)))

    def _draft(self, drafter: Drafter, tokens: np.ndarray, limit: int) -> list[int]:
        budget = max(limit, self.tree_budget or 0) if drafter.tree else limit
        draft = drafter.propose([tokens], [budget])[0]
        if not len(draft):
            return []
        if draft.is_chain:
            chain = list(draft.tokens)
        else:
            chain = [draft.tokens[i] for i in draft.main_path()]
        return [int(t) for t in chain[:limit]]
