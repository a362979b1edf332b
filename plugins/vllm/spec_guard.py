"""HTTP 400 for requests that ask a speculative server for a transform decoder.

vLLM refuses custom logits processors when speculative decoding is on, so a server started with
``anydecode serve --decoder iad`` has no anydecode logits processor, and ``vllm_xargs: {"decoder": "asap"}`` would
otherwise be ignored without a word. ``anydecode serve`` sets ``ANYDECODE_VLLM_SPECULATIVE`` to the drafter's
name, and the anydecode endpoint plugin installs this ASGI middleware: it reads the JSON body of completion and
chat-completion requests and answers 400 when ``vllm_xargs.decoder`` names a decoder other than ``none`` or the
server's drafter. Every other request passes through untouched (its body is replayed to vLLM).
"""

from __future__ import annotations

import json
from typing import Any

ENV_SPECULATIVE = "ANYDECODE_VLLM_SPECULATIVE"
GUARDED_PATHS = ("/v1/completions", "/v1/chat/completions")


def problem(body: bytes, drafter: str) -> str | None:
    """Why this request body cannot run on a server that speculates with ``drafter`` (None: it can)."""
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return None  # vLLM answers malformed bodies itself
    xargs = doc.get("vllm_xargs") if isinstance(doc, dict) else None
    decoder = xargs.get("decoder") if isinstance(xargs, dict) else None
    if decoder in (None, "none", drafter):
        return None
    return (f"anydecode: this server runs speculative decoding with drafter {drafter!r}, and vLLM cannot combine "
            f"speculative decoding with custom logits processors, so decoder {decoder!r} cannot run here; start a "
            f"server with `anydecode serve --decoder {decoder}`, or drop vllm_xargs.decoder")


class SpeculativeServerGuard:
    """ASGI middleware: 400 for ``vllm_xargs.decoder`` requests on a speculative server."""

    def __init__(self, app: Any, drafter: str) -> None:
        self.app = app
        self.drafter = drafter

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in GUARDED_PATHS:
            await self.app(scope, receive, send)
            return
        messages = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            if message.get("type") != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        why = problem(body, self.drafter)
        if why is not None:
            payload = json.dumps({"error": {"message": why, "type": "BadRequestError", "param": "vllm_xargs",
                                            "code": 400}}).encode()
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
