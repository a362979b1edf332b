"""The runtime-free half of anydecode's vLLM proposers: which request each batch row holds, and its drafter.

vLLM hands a ``custom_class`` proposer the batch as arrays only: each row's tokens (prompt and output), its token
count, and the tokens accepted in this step. Rows move when requests finish (the batch is condensed).

Where the proposer is attached to vLLM's model runner (``anydecode serve`` does it; see :mod:`.batch`), each row's
request id comes from the runner and per-request state is keyed on it: a request's drafter, its predicted output
(OpenAI's ``prediction``, which only that request ever drafts from) and its prediction counters. A request's state is
dropped once the runner no longer holds the request (finished or aborted).

Without the runner no request id is given, and a request is recognised by its whole token history: after a step that
added ``m`` tokens to a row of ``n`` tokens, its state is the one saved under ``(n - m, digest of the first n - m
tokens)``. A row whose history matches no saved state is a new request whose prompt is everything but the token
sampled after prefill. Identical histories (the same prompt twice) share a key; their states are interchangeable,
which is why predictions need request ids.

Each request gets its own one-row instance of a registered anydecode drafter (IAD, ADED, prompt lookup, suffix or a
third-party one), driven through the ``Drafter`` contract: ``start([prompt])``, ``propose([context], [limit])``
and ``feedback(0, draft, accepted_path)``. Tree drafts become their first-child chain, since vLLM verifies chains.
A greedy request drafting from its prediction gets its draft length from the never-slower controller
(``algorithms/speculative/schedule.py``), fitted to the engine's step times: a prediction that is not followed
stops being drafted, apart from cheap probes. Nothing here affects what vLLM outputs: drafts are only proposals,
verified by the target model.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from anydecode.algorithms.contracts.config import DecoderConfig
from anydecode.algorithms.contracts.errors import ConfigError, RegistryError
from anydecode.algorithms.speculative.draft import Draft, Drafter
from anydecode.algorithms.speculative.schedule import DraftLengthController

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
                    tokenizer: Callable[[], Any] | None = None) -> tuple[Callable[..., Drafter], DecoderConfig | None]:
    """A function making one-row drafters of the registered drafter ``name`` with ``settings``, and the validated
    config. One drafter is built here, so that a drafter that cannot be built fails with the proposer.

    ``make(prediction=None)``: with ``prediction`` (token ids), the drafter's context carries it as
    ``DecodeContext.prediction`` for its one row, so drafters that accept predictions (``iad``, ``suffix``) draft
    from it; the context is otherwise the shared one (same owner, so learnt per-model state stays shared)."""
    from anydecode.algorithms.contracts.decoder import DecodeContext

    spec, config = drafter_config(name, settings)
    needs_tokenizer = config is not None and getattr(config, "source", None) is not None
    if needs_tokenizer and tokenizer is None:
        raise ConfigError(f"drafter {name!r}: source text needs the model's tokenizer; give source_ids instead")
    shared: dict[str, Any] = {}

    def make(prediction: Sequence[int] | None = None) -> Drafter:
        if "ctx" not in shared:
            # one context for all requests: drafters that learn across requests (ADED's tri-gram table, suffix
            # corpora) key their shared state on ctx.owner, which lives as long as this factory
            shared["ctx"] = DecodeContext(vocab_size=vocab_size, runtime="vllm", max_new_tokens=0,
                                          tokenizer=tokenizer() if needs_tokenizer and tokenizer else None,
                                          owner=_SharedOwner())
        ctx = shared["ctx"]
        if prediction is not None:
            ctx = dataclasses.replace(ctx, prediction=[prediction])
        return spec.factory(config, None, ctx)

    make()
    return make, config


def accepts_prediction(name: str) -> bool:
    """Whether the registered drafter ``name`` drafts from a request's prediction (its ``ComponentSpec`` says)."""
    from anydecode.registry import get_registry

    try:
        spec = get_registry().get("drafter", name)
    except (ConfigError, RegistryError):
        return False
    return bool(getattr(spec, "accepts_prediction", False))


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


@dataclasses.dataclass(frozen=True)
class RowRequest:
    """What the runtime says about the request one batch row holds (read once, when its state is made)."""

    request_id: str
    #: the request's predicted output as token ids (OpenAI's ``prediction``), checked; None: no prediction
    prediction: Sequence[int] | None = None
    #: the key its prediction counters are collected under (the request gate's), or None
    prediction_key: str | None = None
    #: greedy requests may get timing-driven draft lengths (they cannot change a greedy output)
    greedy: bool = True


class BatchRequests(Protocol):
    """The runtime's view of the batch rows' requests (vLLM's model runner: :class:`.batch.RunnerRequests`)."""

    def request_ids(self) -> Sequence[str | None]:
        """The request id of each row of this step's arrays (None for an empty row)."""

    def request(self, request_id: str) -> RowRequest:
        """The request's settings that drafting needs."""

    def live(self) -> Container[str]:
        """The ids of the requests the runtime still holds (finished and aborted ones are gone)."""


@dataclasses.dataclass
class PredictionUsage:
    """OpenAI's usage counts of one predicted-output request (shared by its ``n`` sequences): draft tokens the
    target accepted and draft tokens it rejected, counted when their verification is seen."""

    key: str
    accepted: int = 0
    rejected: int = 0
    #: live requests adding to it
    holders: int = 0
    #: the request gate has read it: nobody reads it again
    collected: bool = False

    def as_dict(self) -> dict[str, int]:
        return {"accepted_prediction_tokens": self.accepted, "rejected_prediction_tokens": self.rejected}


@dataclasses.dataclass
class _Request:
    drafter: Drafter
    chain: list[int]  # the draft tokens proposed at the last step (vLLM verifies this chain)
    #: the row's token count when ``chain`` was proposed: the next step verified it only if it starts from there
    length: int = 0
    #: the proposer step that proposed ``chain``
    step: int = 0
    request_id: str | None = None
    usage: PredictionUsage | None = None
    #: the request's row in the draft-length controller (greedy requests drafting from a prediction)
    controller_row: int | None = None


@dataclasses.dataclass
class ProposerStats:
    """Counters of one proposer (per worker), for tests and diagnostics."""

    steps: int = 0
    new_requests: int = 0  # rows whose history (or request id) matched no saved state
    tracked_rows: int = 0  # rows matched to their saved state
    drafted_tokens: int = 0
    accepted_tokens: int = 0  # draft tokens the target confirmed (seen at the next step)
    errors: int = 0
    prediction_requests: int = 0  # requests that brought a prediction
    prediction_accepted: int = 0  # draft tokens of prediction requests the target accepted
    prediction_rejected: int = 0  # draft tokens of prediction requests the target rejected
    released_requests: int = 0  # request states dropped because the runtime no longer holds the request
    timed_steps: int = 0  # engine steps timed for the draft-length controller

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


#: the draft controller's prior ``(c0, c1, cb)`` for an engine step over ``width`` tokens, in units of a one-token
#: step, used until the proposer has timed steps of two different widths (a request that always drafts the same
#: length gives one width only): a step is mostly fixed cost, and a block of tokens costs a little more per token
#: and a little once (``schedule.cost_of``); the controller replaces it with what it measures
FORWARD_COST = (1.0, 0.05, 0.1)


def _key(tokens: np.ndarray) -> tuple[int, bytes]:
    return int(tokens.shape[0]), hashlib.blake2b(np.ascontiguousarray(tokens).tobytes(), digest_size=16).digest()


class RequestDrafters:
    """Per-request drafters for the rows of vLLM's input batch, found by request id (with the runtime's
    :class:`BatchRequests`) or by token history (without)."""

    def __init__(self, make_drafter: Callable[..., Drafter] | None, k: int, max_model_len: int,
                 capacity: int = 1024, tree_budget: int | None = None, clock: Callable[[], float] = time.perf_counter):
        self.make_drafter = make_drafter
        self.k = num_speculative_tokens(k)
        self.max_model_len = int(max_model_len)
        self.capacity = max(int(capacity), 1)
        #: nodes a tree drafter may grow per step (its main chain, cut to k, is proposed)
        self.tree_budget = tree_budget
        #: states found by token history (no request ids)
        self.states: collections.OrderedDict[tuple[int, bytes], list[_Request]] = collections.OrderedDict()
        #: states found by request id
        self.requests: dict[str, _Request] = {}
        #: prediction counters of running requests, by the request gate's key
        self.usage: dict[str, PredictionUsage] = {}
        #: counters of ended requests not yet collected (the gate reads them after the response is complete, which
        #: may be after the request left the runner); at most ``capacity``, oldest first out (aborted requests)
        self.ended_usage: collections.OrderedDict[str, PredictionUsage] = collections.OrderedDict()
        #: draft lengths of greedy prediction requests; one row per such request, reused after it ends
        self.controller = DraftLengthController(0, prior_cost=FORWARD_COST)
        self._free_rows: list[int] = []
        self.clock = clock
        self._last_call: float | None = None
        self.stats = ProposerStats()

    def set_drafter(self, make_drafter: Callable[..., Drafter] | None, tree_budget: int | None = None) -> None:
        """Use another drafter from now on (None: no drafts); running requests start afresh."""
        self.make_drafter = make_drafter
        self.tree_budget = tree_budget
        self.states.clear()
        for state in self.requests.values():
            self._retire(state)
        self.requests.clear()

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

    def release(self, live: Container[str]) -> int:
        """Drop the states of requests the runtime no longer holds (finished or aborted): their drafters, their
        predictions, their controller rows. Returns how many were dropped."""
        gone = [rid for rid in self.requests if rid not in live]
        for rid in gone:
            self._retire(self.requests.pop(rid))
        self.stats.released_requests += len(gone)
        return len(gone)

    def _retire(self, state: _Request) -> None:
        if state.controller_row is not None:
            self._free_rows.append(state.controller_row)
            state.controller_row = None
        usage = state.usage
        if usage is None:
            return
        state.usage = None
        usage.holders -= 1
        if usage.holders > 0:
            return
        if self.usage.get(usage.key) is usage:
            del self.usage[usage.key]
        if not usage.collected:
            self.ended_usage[usage.key] = usage
        while len(self.ended_usage) > self.capacity:
            self.ended_usage.popitem(last=False)

    def prediction_usage(self, key: str) -> dict[str, int] | None:
        """The usage counts of the prediction request keyed ``key`` (the request gate's key), read once."""
        usage = self.usage.pop(key, None) or self.ended_usage.pop(key, None)
        if usage is None:
            return None
        usage.collected = True
        return usage.as_dict()

    def live_predictions(self) -> int:
        """Running requests that hold a prediction."""
        return sum(1 for state in self.requests.values() if state.usage is not None)

    # -- one step --------------------------------------------------------------------------------------------------
    def propose(self, sampled_token_ids: Sequence[Sequence[int]], num_tokens: np.ndarray,
                token_ids: np.ndarray, batch: BatchRequests | None = None) -> list[list[int]]:
        """Draft tokens for each row of the batch (``[]`` for rows that get none); ``batch`` gives the rows'
        request ids where the runtime has them."""
        now = self.clock()
        self.stats.steps += 1
        ids: Sequence[str | None] | None = None
        if batch is not None:
            ids = batch.request_ids()
            self.release(batch.live())
        rows = len(sampled_token_ids)
        found: list[tuple[_Request, np.ndarray, int] | None] = [None] * rows
        # pass 1: each row's state, the verification of its last draft, and the width of the step that ran
        steady = self._last_call is not None
        width = 0
        for row, sampled in enumerate(sampled_token_ids):
            added = len(sampled) if sampled is not None else 0
            n = int(num_tokens[row])
            if added == 0 or self.make_drafter is None or n < added:
                steady = False  # a prefill chunk (nothing sampled yet) or drafting switched off
                continue
            tokens = token_ids[row, :n]
            request_id = ids[row] if ids is not None and row < len(ids) else None
            try:
                state, verified = self._state(tokens, n, added, request_id, batch)
            except Exception as exc:  # a drafter bug must not take the engine down: this row gets no draft
                self._failed(exc)
                steady = False
                continue
            steady = steady and verified is not None
            width += 1 + (verified or 0)
            found[row] = (state, tokens, n)
        if steady and width:
            self.controller.record_forward(width, now - self._last_call)  # type: ignore[operator]
            self.stats.timed_steps += 1
        self._last_call = now
        # pass 2: the drafts
        out: list[list[int]] = []
        for row in range(rows):
            entry = found[row]
            if entry is None:
                out.append([])
                continue
            state, tokens, n = entry
            try:
                out.append(self._propose_row(state, tokens, n, width))
            except Exception as exc:
                self._failed(exc)
                state.chain = []
                out.append([])
        return out

    def _failed(self, exc: Exception) -> None:
        self.stats.errors += 1
        logger.error("anydecode: drafter failed on a request (%s: %s); no draft this step", type(exc).__name__, exc)

    def _state(self, tokens: np.ndarray, n: int, added: int, request_id: str | None,
               batch: BatchRequests | None) -> tuple[_Request, int | None]:
        """The row's state (a new one for a new request) and how many draft tokens the step just run verified for
        it (None: the row was not in that step as a decode row)."""
        if request_id is not None and batch is not None:
            state = self.requests.get(request_id)
            if state is None:
                state = self._new(tokens, n, batch.request(request_id))
                self.requests[request_id] = state
                return state, None
        else:
            state = self._take(_key(tokens[: n - added]))
            if state is None:
                return self._new(tokens, n, None), None
        self.stats.tracked_rows += 1
        if state.length != n - added:  # its last draft was never verified (preempted, or not scheduled with it)
            state.chain = []
            return state, None
        verified = len(state.chain)
        self._feedback(state, tokens[n - added: n])
        return state, verified if state.step == self.stats.steps - 1 else None

    def _new(self, tokens: np.ndarray, n: int, request: RowRequest | None) -> _Request:
        self.stats.new_requests += 1
        prediction = request.prediction if request is not None else None
        drafter = self.make_drafter(prediction) if prediction is not None else self.make_drafter()  # type: ignore[misc]
        # the first step after prefill samples one token: everything before it is the prompt
        drafter.start([tokens[: n - 1].tolist()])
        state = _Request(drafter, [], request_id=request.request_id if request is not None else None)
        if request is not None and request.prediction_key is not None:
            self.stats.prediction_requests += 1
            usage = self.usage.get(request.prediction_key)
            if usage is None:
                usage = self.usage[request.prediction_key] = PredictionUsage(request.prediction_key)
            usage.holders += 1
            state.usage = usage
            if prediction is not None and request.greedy:
                state.controller_row = self._controller_row()
        return state

    def _controller_row(self) -> int:
        if self._free_rows:
            row = self._free_rows.pop()
            self.controller.reset_row(row)
            return row
        return self.controller.add_row()

    def _propose_row(self, state: _Request, tokens: np.ndarray, n: int, width: int) -> list[int]:
        room = min(self.k, self.max_model_len - n)
        limit = room
        if state.controller_row is not None and room > 0:
            # the tokens the step forwards anyway: this row's next token and the other rows' tokens of the last step
            pending = max(1, width - len(state.chain))
            limit = self.controller.limit(state.controller_row, room, pending)
        proposed = self._draft(state.drafter, tokens, limit) if room > 0 else Draft()
        chain = self._chain(proposed, limit)
        if state.controller_row is not None and proposed.fresh and not chain:
            self.controller.new_phase(state.controller_row)  # the drafter found drafts again: draft from next step
        state.chain, state.length, state.step = chain, n, self.stats.steps
        self.stats.drafted_tokens += len(chain)
        if state.request_id is None:
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
        if state.usage is not None:
            rejected = len(state.chain) - accepted
            state.usage.accepted += accepted
            state.usage.rejected += rejected
            self.stats.prediction_accepted += accepted
            self.stats.prediction_rejected += rejected
        if state.controller_row is not None:
            self.controller.record_row(state.controller_row, len(state.chain), accepted)
        state.drafter.feedback(0, Draft(list(state.chain)), list(range(accepted)))

    def _draft(self, drafter: Drafter, tokens: np.ndarray, limit: int) -> Draft:
        """The drafter's proposal (called at every decode step, with a limit of 0 where the row drafts nothing, so
        that drafters following the output, like IAD's alignment, keep up)."""
        budget = max(limit, self.tree_budget or 0) if drafter.tree and limit > 0 else limit
        return drafter.propose([tokens], [budget])[0]

    @staticmethod
    def _chain(draft: Draft, limit: int) -> list[int]:
        if not len(draft) or limit <= 0:
            return []
        if draft.is_chain:
            chain = list(draft.tokens)
        else:
            chain = [draft.tokens[i] for i in draft.main_path()]
        return [int(t) for t in chain[:limit]]
