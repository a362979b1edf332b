"""The request gate of an anydecode vLLM server: an ASGI middleware in front of the OpenAI routes.

The anydecode endpoint plugin installs it (``anydecode serve`` names the plugin in ``VLLM_PLUGINS``). It sits after
vLLM's API-key check and before vLLM parses the body of ``POST /v1/completions`` and ``/v1/chat/completions``:

1. On a grammar-decoder server (``anydecode serve --decoder asap``), the grammar a client sends the OpenAI way
   (``response_format``: ``json_schema``, ``json_object``; vLLM's ``structured_outputs``: ``json``, ``regex``,
   ``grammar``, ``choice``) is moved into ``vllm_xargs`` for anydecode's decoder, so vLLM's own grammar backend does
   not mask first.
2. Under ``asap_scope=api_key`` the request's tenant (a digest of its API key, signed with a per-server secret) is
   added to ``vllm_xargs``; a client cannot forge it.
3. The request's anydecode settings are checked against the operator's policy, and its grammar is compiled by the
   checker process under the deadline (``grammar_check``), off the event loop. A refusal is HTTP 400 naming the
   problem; the event loop keeps serving meanwhile.
4. A speculative server (``anydecode serve --decoder iad``) answers 400 to a request naming a transform decoder
   (vLLM cannot combine speculation with logits processors).
5. A request's ``prediction`` (OpenAI's predicted outputs) is checked (shape, ``prediction_bytes``), tokenised off
   the event loop and moved into ``vllm_xargs`` for the proposer, which drafts from it; the response's usage gets
   ``accepted_prediction_tokens`` and ``rejected_prediction_tokens`` (:mod:`.prediction`). Servers that cannot draft
   from it (no speculation, or a drafter that ignores predictions) answer 400 rather than ignore it.

Every other request passes untouched; a rewritten body is replayed with its new length.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from anydecode.algorithms.contracts.errors import AnydecodeError

from . import grammar_check
from . import prediction as predicted_outputs
from .settings import TENANT_KEY, ServerSettings, frontend_settings, plan_request, sign_tenant

ENV_SPECULATIVE = "ANYDECODE_VLLM_SPECULATIVE"
GUARDED_PATHS = ("/v1/completions", "/v1/chat/completions")


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


# -- grammars sent the OpenAI way ------------------------------------------------------------------------------------
def _choice_grammar(choices: Any) -> str:
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        raise BadRequest("structured_outputs.choice must be a non-empty list of strings", "structured_outputs")
    return "start: " + " | ".join(json.dumps(c) for c in choices)


def grammar_from_fields(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(grammar text, format)`` from ``response_format`` or ``structured_outputs``, or None when neither asks for
    one. BadRequest for a form anydecode cannot apply."""
    found: list[tuple[str, str]] = []
    fmt = body.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, Mapping):
            raise BadRequest("response_format must be an object", "response_format")
        kind = fmt.get("type")
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema", spec.get("json_schema")) if isinstance(spec, Mapping) else None
            if not isinstance(schema, (Mapping, bool)):
                raise BadRequest("response_format.json_schema.schema must be a JSON schema object", "response_format")
            found.append((json.dumps(schema), "json_schema"))
        elif kind == "json_object":
            found.append(('{"type": "object"}', "json_schema"))
        elif kind not in (None, "text"):
            raise BadRequest(f"response_format type {kind!r} is not supported by anydecode's grammar decoders; "
                             "use json_schema or json_object", "response_format")
    structured = body.get("structured_outputs")
    if structured is not None:
        if not isinstance(structured, Mapping):
            raise BadRequest("structured_outputs must be an object", "structured_outputs")
        for key, value in structured.items():
            if value is None or value is False:
                continue
            if key == "json":
                found.append((value if isinstance(value, str) else json.dumps(value), "json_schema"))
            elif key == "json_object":
                found.append(('{"type": "object"}', "json_schema"))
            elif key == "regex":
                if not isinstance(value, str):
                    raise BadRequest("structured_outputs.regex must be a string", "structured_outputs")
                found.append((value, "regex"))
            elif key == "grammar":
                if not isinstance(value, str):
                    raise BadRequest("structured_outputs.grammar must be a string", "structured_outputs")
                found.append((value, "gbnf" if "::=" in value else "lark"))
            elif key == "choice":
                found.append((_choice_grammar(value), "lark"))
            elif key in ("disable_any_whitespace", "disable_additional_properties", "whitespace_pattern"):
                continue
            else:
                raise BadRequest(f"structured_outputs.{key} is not supported by anydecode's grammar decoders; use "
                                 "json, json_object, regex, grammar or choice", "structured_outputs")
    if len(found) > 1:
        raise BadRequest("give one grammar: response_format or one kind of structured_outputs", "structured_outputs")
    return found[0] if found else None


def _bearer(scope: Mapping[str, Any]) -> str:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token if scheme.lower() == "bearer" else ""
    return ""


@dataclasses.dataclass(frozen=True)
class Predicted:
    """A request that sent a prediction: the key its usage counts are collected under (None: an empty prediction,
    nothing drafted, counts 0)."""

    key: str | None


class RequestGate:
    """Rewrites and checks the OpenAI requests of an anydecode server (see the module docstring)."""

    def __init__(self, server: ServerSettings, speculative: str | None = None,
                 predictions: Callable[[], Any] = predicted_outputs.current):
        self.server = server
        self.speculative = speculative
        #: the prediction service (tokenizer, engine client) the endpoint plugin installed, or None
        self.predictions = predictions

    def _is_grammar_server(self) -> bool:
        from anydecode.registry import get_registry

        name = self.server.decoder
        if name is None or self.speculative:
            return False
        decoder = get_registry().decoders().get(name)
        return decoder is not None and "grammar" in {f.name for f in decoder.config_cls.fields()}

    def rewrite(self, body: dict[str, Any], scope: Mapping[str, Any]) -> dict[str, Any]:
        """The body anydecode hands on to vLLM (BadRequest for what must not reach it)."""
        xargs = body.get("vllm_xargs")
        if xargs is not None and not isinstance(xargs, Mapping):
            raise BadRequest("vllm_xargs must be an object", "vllm_xargs")
        xargs = dict(xargs or {})
        if any(k.startswith("_anydecode") for k in xargs if isinstance(k, str)):
            raise BadRequest("vllm_xargs keys starting with '_anydecode' are reserved for anydecode itself",
                             "vllm_xargs")
        decoder = xargs.get("decoder")
        if self.speculative is not None:
            if decoder not in (None, "none", self.speculative):
                raise BadRequest(
                    f"anydecode: this server runs speculative decoding with drafter {self.speculative!r}, and vLLM "
                    f"cannot combine speculative decoding with custom logits processors, so decoder {decoder!r} "
                    f"cannot run here; start a server with `anydecode serve --decoder {decoder}`, or drop "
                    "vllm_xargs.decoder", "vllm_xargs")
            return body
        if decoder != "none" and self._is_grammar_server():
            grammar = grammar_from_fields(body)
            if grammar is not None:
                if xargs.get("grammar"):
                    raise BadRequest("give the grammar once: in vllm_xargs.grammar or in response_format / "
                                     "structured_outputs", "vllm_xargs")
                xargs["grammar"], xargs["grammar_format"] = grammar
                body = {k: v for k, v in body.items() if k not in ("response_format", "structured_outputs")}
        if self.server.policy.asap_scope == "api_key":
            signed = sign_tenant(_bearer(scope))
            if signed is not None:
                xargs[TENANT_KEY] = signed
        if xargs or "vllm_xargs" in body:
            body = {**body, "vllm_xargs": xargs}
        return body

    async def check(self, body: Mapping[str, Any]) -> None:
        """The policy check and, for a grammar, the compile check in the checker process (off the event loop)."""
        if self.speculative is not None:
            return
        try:
            plan = plan_request(body.get("vllm_xargs"), self.server)
        except AnydecodeError as exc:
            raise BadRequest(f"anydecode: {exc}", "vllm_xargs") from None
        if plan is None or plan.grammar is None:
            return
        checker = grammar_check.current()
        if checker is None:
            return  # validate_params compiles it
        error = await asyncio.to_thread(checker.check, plan.decoder.name, plan.config.as_dict())
        if error is not None:
            raise BadRequest(f"anydecode: {error}", "vllm_xargs")

    async def predict(self, body: dict[str, Any]) -> tuple[dict[str, Any], Predicted | None]:
        """The body with its ``prediction`` moved into ``vllm_xargs`` as token ids, and the request's
        :class:`Predicted` (None without a prediction). BadRequest naming ``prediction`` for a bad one, or where
        this server cannot draft from it."""
        from .drafts import accepts_prediction

        value = body.get("prediction")
        if value is None:
            return body, None
        if self.speculative is None:
            raise BadRequest("prediction (predicted outputs) needs an anydecode speculative server whose drafter "
                             "drafts from it (`anydecode serve --decoder iad` or `--decoder suffix`); this server "
                             "runs no speculative decoding: drop prediction", "prediction")
        if self.speculative == "custom" or not accepts_prediction(self.speculative):
            raise BadRequest(f"prediction (predicted outputs): this server's drafter {self.speculative!r} does not "
                             "draft from predictions; iad and suffix do (`anydecode serve --decoder iad`): drop "
                             "prediction", "prediction")
        try:
            text = predicted_outputs.prediction_text(value, self.server.policy.limits.prediction_bytes)
        except AnydecodeError as exc:
            raise BadRequest(f"anydecode: {exc}", "prediction") from None
        service = self.predictions()
        reason = "the endpoint plugin did not start" if service is None else service.ready
        if reason is not None:
            raise BadRequest(f"prediction (predicted outputs) cannot be served here: {reason}", "prediction")
        rest = {k: v for k, v in body.items() if k != "prediction"}
        ids = await service.encode(text) if text else []
        if not ids:
            return rest, Predicted(None)
        key = uuid.uuid4().hex
        xargs = dict(rest.get("vllm_xargs") or {})
        xargs[predicted_outputs.XARG_IDS] = ids
        xargs[predicted_outputs.XARG_KEY] = key
        return {**rest, "vllm_xargs": xargs}, Predicted(key)


def error_body(message: str, param: str | None = None, status: int = 400) -> bytes:
    return json.dumps({"error": {"message": message, "type": "BadRequestError", "param": param,
                                 "code": status}}).encode()


class AnydecodeMiddleware:
    """ASGI middleware: :class:`RequestGate` on the OpenAI completion routes."""

    def __init__(self, app: Any, speculative: str | None = None, gate: RequestGate | None = None) -> None:
        self.app = app
        self.gate = gate or RequestGate(frontend_settings(), speculative or os.environ.get(ENV_SPECULATIVE))
        self._background: set[asyncio.Task] = set()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in GUARDED_PATHS:
            await self.app(scope, receive, send)
            return
        messages: list[dict] = []
        chunks: list[bytes] = []  # joined once: adding each chunk to a bytes object copies the body every time
        while True:
            message = await receive()
            messages.append(message)
            if message.get("type") != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            doc = None  # vLLM answers a malformed body itself
        predicted: Predicted | None = None
        if isinstance(doc, dict):
            try:
                rewritten = self.gate.rewrite(doc, scope)
                await self.gate.check(rewritten)
                rewritten, predicted = await self.gate.predict(rewritten)
            except BadRequest as exc:
                await _respond(send, 400, error_body(str(exc), exc.param))
                return
            if rewritten is not doc:
                body = json.dumps(rewritten).encode()
                headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
                scope = {**scope, "headers": headers + [(b"content-length", str(len(body)).encode())]}
                messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        if predicted is None:
            await self.app(scope, replay, send)
            return
        await self._with_usage(scope, replay, send, predicted, bool(doc.get("stream")) if isinstance(doc, dict)
                               else False)

    async def _with_usage(self, scope: dict, receive: Any, send: Any, predicted: Predicted, stream: bool) -> None:
        """Run the request with its response's usage completed by the prediction counts; the counts are read
        (and so forgotten by the worker) even when the client went away."""
        service = self.gate.predictions()
        key = predicted.key

        async def collect() -> Any:
            return await service.usage(key) if key is not None and service is not None else None

        rewriter = predicted_outputs.UsageRewriter(send, collect, stream)
        try:
            await self.app(scope, receive, rewriter)
        except BaseException:
            task = asyncio.ensure_future(rewriter.finish())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            raise
        await rewriter.finish()


async def _respond(send: Any, status: int, payload: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
