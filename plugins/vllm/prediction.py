"""OpenAI's predicted outputs (``prediction``) on an anydecode speculative server: the API process's half.

A chat (or text) completion body may carry ``"prediction": {"type": "content", "content": TEXT}``, TEXT being a
string or a list of ``{"type": "text", "text": ...}`` parts (OpenAI's forms). The request gate
(:mod:`.middleware`) checks it here (:func:`prediction_text`: its shape, and its size against the operator's
``prediction_bytes``), tokenises it off the event loop (:class:`PredictionService`), and hands vLLM the token ids in
``vllm_xargs`` under a reserved key (:data:`XARG_IDS`), with a fresh random key (:data:`XARG_KEY`) its usage counts
are collected under. In the worker the proposer reads both from the request's own ``SamplingParams.extra_args``
(:mod:`.batch`), so a request drafts from its own prediction only. A client cannot set these keys itself: the gate
refuses ``vllm_xargs`` keys starting with ``_anydecode``, and the worker checks the ids again (token ids of the
vocabulary, at most ``prediction_bytes`` of them).

Once the response is complete, :class:`UsageRewriter` asks the worker (``collective_rpc``
``anydecode_prediction_usage``) for the request's counts and adds them to the response's
``usage.completion_tokens_details``: ``accepted_prediction_tokens`` (draft tokens the model accepted) and
``rejected_prediction_tokens`` (draft tokens it rejected). Streamed responses get them in the final usage chunk
(``stream_options: {"include_usage": true}``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from anydecode.algorithms.contracts.errors import ConfigError
from anydecode.algorithms.contracts.serving import RequestSettingError

logger = logging.getLogger("anydecode.vllm")

#: the ``vllm_xargs`` key carrying a request's prediction as token ids (set by the request gate only)
XARG_IDS = "_anydecode_prediction"
#: the ``vllm_xargs`` key under which the request's prediction usage is collected (a random key, set by the gate)
XARG_KEY = "_anydecode_prediction_key"
#: the worker-extension method that hands a request's usage counts back (and forgets them)
USAGE_RPC = "anydecode_prediction_usage"
#: the worker-extension method that attaches the proposer to vLLM's model runner
ATTACH_RPC = "anydecode_attach_batch"
ACCEPTED_FORM = ('{"type": "content", "content": TEXT}, TEXT being a string or a list of '
                 '{"type": "text", "text": STRING} parts')
USAGE_FIELDS = ("accepted_prediction_tokens", "rejected_prediction_tokens")
#: how long the gate waits for the worker's counts (it answers between two engine steps)
RPC_SECONDS = 60.0


class PredictionError(ConfigError):
    """A request's ``prediction`` has a shape anydecode does not accept."""


def _kind(value: Any) -> str:
    """The JSON type of a value, for messages that must not echo what the client sent."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def prediction_text(value: Any, max_bytes: int) -> str:
    """The text of a body's ``prediction`` field; PredictionError naming the problem and the accepted form, or
    RequestSettingError past the operator's ``prediction_bytes``. Never echoes the content."""
    if not isinstance(value, Mapping):
        raise PredictionError(f"prediction must be an object, got {_kind(value)}; accepted: {ACCEPTED_FORM}")
    unknown = sorted(str(k) for k in value if k not in ("type", "content"))
    if unknown:
        raise PredictionError(f"prediction has an unknown field {_short(unknown[0])}; accepted: {ACCEPTED_FORM}")
    kind = value.get("type")
    if kind != "content":
        shown = _short(kind) if isinstance(kind, str) else _kind(kind)
        raise PredictionError(f"prediction.type must be \"content\", got {shown}; accepted: {ACCEPTED_FORM}")
    content = value.get("content")
    if isinstance(content, str):
        parts = [content]
    elif isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str) \
                    or any(k not in ("type", "text") for k in part):
                raise PredictionError(f"prediction.content[{i}] must be a text part {{\"type\": \"text\", \"text\": "
                                      f"STRING}}, got {_kind(part)} of another form; accepted: {ACCEPTED_FORM}")
            parts.append(part["text"])
    else:
        raise PredictionError(f"prediction.content must be a string or a list of text parts, got {_kind(content)}; "
                              f"accepted: {ACCEPTED_FORM}")
    size = 0
    for part in parts:
        size += len(part.encode("utf-8", errors="replace"))
    if size > max_bytes:
        raise RequestSettingError(
            f"prediction of {size} bytes is over this server's limit of {max_bytes} bytes (prediction_bytes); the "
            f"operator raises it with `anydecode serve --set prediction_bytes=N`")
    return "".join(parts)


class PredictionService:
    """What the request gate needs for predictions in the API process: the tokenizer and the engine client.

    ``ready`` is None once the proposer in the worker is attached to vLLM's model runner, else the reason
    predictions cannot be served (the gate answers 400 with it)."""

    def __init__(self, tokenizer: Any, engine_client: Any, ready: str | None = None):
        self.tokenizer = tokenizer
        self.engine_client = engine_client
        self.ready = ready
        self._lock = threading.Lock()  # a fast tokenizer is not safe for concurrent calls from several threads

    def _encode(self, text: str) -> list[int]:
        with self._lock:
            try:
                ids = self.tokenizer.encode(text, add_special_tokens=False)
            except TypeError:
                ids = self.tokenizer.encode(text)
        return [int(t) for t in ids]

    async def encode(self, text: str) -> list[int]:
        """The prediction's token ids, tokenised in a thread (a prediction may be hundreds of kilobytes)."""
        return await asyncio.to_thread(self._encode, text)

    async def usage(self, key: str) -> dict[str, int] | None:
        """The request's usage counts from the worker (read once), or None when the worker has none."""
        results = await self.engine_client.collective_rpc(USAGE_RPC, timeout=RPC_SECONDS, args=(key,))
        found = results[0] if isinstance(results, list) and results else results
        return dict(found) if isinstance(found, Mapping) else None


_service: PredictionService | None = None


def install(service: PredictionService | None) -> None:
    global _service
    _service = service


def current() -> PredictionService | None:
    return _service


def add_usage(doc: Any, counts: Mapping[str, int]) -> bool:
    """Add the prediction counts to a response's ``usage.completion_tokens_details`` (True where it has usage)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("usage"), dict):
        return False
    usage = doc["usage"]
    details = usage.get("completion_tokens_details")
    details = dict(details) if isinstance(details, dict) else {}
    for name in USAGE_FIELDS:
        details[name] = int(counts.get(name, 0))
    usage["completion_tokens_details"] = details
    return True


class UsageRewriter:
    """Wraps an ASGI ``send`` for a request that sent a prediction: adds its counts to the response's usage.

    A JSON response is held until complete (it is small), rewritten, and sent with its new length. A streamed
    response passes through event by event; the final usage chunk (no choices, a usage object) is rewritten.
    ``collect`` reads the counts (once); :meth:`finish` makes sure they are read even when no usage was sent, so the
    worker forgets them.
    """

    def __init__(self, send: Callable[[dict], Awaitable[None]], collect: Callable[[], Awaitable[Any]],
                 stream: bool):
        self.send = send
        self._collect = collect
        self.stream = stream
        self.status = 0
        self.start: dict | None = None
        self.chunks: list[bytes] = []
        self.pending = b""
        self.counts: dict[str, int] | None = None
        self.collected = False

    async def counts_once(self) -> dict[str, int]:
        if not self.collected:
            self.collected = True
            try:
                self.counts = await self._collect()
            except Exception as exc:  # the response still goes out, without the counts
                logger.warning("anydecode: could not read the prediction usage (%s: %s)", type(exc).__name__, exc)
                self.counts = None
        return self.counts or dict.fromkeys(USAGE_FIELDS, 0)

    async def finish(self) -> None:
        """Read the counts if nobody did (the worker then drops them)."""
        if not self.collected:
            await self.counts_once()

    async def __call__(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            self.status = int(message.get("status", 0))
            if self.stream or self.status != 200:
                await self.send(message)
            else:
                self.start = message
            return
        if kind != "http.response.body" or self.status != 200:
            await self.send(message)
            return
        more = bool(message.get("more_body"))
        if self.stream:
            await self._stream(message.get("body", b""), more)
            return
        self.chunks.append(message.get("body", b""))
        if more:
            return
        body = b"".join(self.chunks)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("usage"), dict):
            add_usage(doc, await self.counts_once())
            body = json.dumps(doc).encode()
        start = dict(self.start or {"type": "http.response.start", "status": self.status, "headers": []})
        start["headers"] = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"] + [
            (b"content-length", str(len(body)).encode())]
        await self.send(start)
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _stream(self, data: bytes, more: bool) -> None:
        self.pending += data
        cut = self.pending.rfind(b"\n\n")
        if cut < 0 and more:
            return
        if cut < 0:
            ready, self.pending = self.pending, b""
        else:
            ready, self.pending = self.pending[: cut + 2], self.pending[cut + 2:]
            if not more:
                ready, self.pending = ready + self.pending, b""
        events = ready.split(b"\n\n")
        out = []
        for event in events:
            out.append(await self._event(event) if b'"usage"' in event else event)
        await self.send({"type": "http.response.body", "body": b"\n\n".join(out), "more_body": more})

    async def _event(self, event: bytes) -> bytes:
        """A ``data: {...}`` event, with the counts added where it is the final usage chunk."""
        head, sep, payload = event.partition(b"data: ")
        if not sep or head.strip():
            return event
        try:
            doc = json.loads(payload)
        except ValueError:
            return event
        if not isinstance(doc, dict) or doc.get("choices") or not isinstance(doc.get("usage"), dict):
            return event
        add_usage(doc, await self.counts_once())
        return b"data: " + json.dumps(doc).encode()
