"""``POST /v1/anydecode/completions``: search decoders (beam, dbs, deal, best_of_n) served by vLLM's server.

A vLLM endpoint plugin (entry point ``vllm.endpoint_plugins: anydecode``; vLLM loads endpoint plugins only when
``VLLM_PLUGINS`` names them, which ``anydecode serve`` does). The decoder runs in a thread; each of its steps
sends one request per row to the engine client (all rows of a step concurrently, prefix caching doing the reuse)
and waits for their log-probabilities.

Request: ``{"prompt": str | [str], "decoder": "dbs", "max_tokens": 32, <decoder settings>...}``.
Response: ``{"object": "anydecode.completion", "decoder", "choices": [{"index", "prompt_index", "text",
"token_ids", "score", "finish_reason"}], "stats"}``. Bad settings: HTTP 400 with the message.
"""


import asyncio
import os
import uuid
from typing import Any

from anydecode.algorithms.contracts.errors import AnydecodeError

ROUTE = "/v1/anydecode/completions"


class AnydecodeEndpoint:
    """The endpoint plugin object vLLM instantiates."""

    name = "anydecode"
    required_tasks = ("generate",)

    def __init__(self) -> None:
        self.engine_client: Any = None
        self.tokenizer: Any = None
        self.model_config: Any = None

    async def init_state(self, engine_client: Any, state: Any, args: Any) -> None:
        from transformers import AutoTokenizer

        self.engine_client = engine_client
        self.tokenizer = AutoTokenizer.from_pretrained(getattr(args, "tokenizer", None) or args.model)
        self.model_config = getattr(engine_client, "model_config", None)
        if self.model_config is None:
            self.model_config = engine_client.vllm_config.model_config

    def attach_router(self, app: Any) -> None:
        from fastapi import Request
        from fastapi.responses import JSONResponse

        from .spec_guard import ENV_SPECULATIVE, SpeculativeServerGuard

        if os.environ.get(ENV_SPECULATIVE):  # anydecode serve --decoder iad: no logits processor on this server
            app.add_middleware(SpeculativeServerGuard, drafter=os.environ[ENV_SPECULATIVE])

        @app.post(ROUTE, response_model=None)
        async def anydecode_completions(request: Request):
            try:
                body = await request.json()
            except ValueError as exc:
                return _error(f"the body is not JSON: {exc}")
            if not isinstance(body, dict):
                return _error("the body must be a JSON object")
            if self.engine_client is None:
                return _error("this server has no engine", 503)
            try:
                payload = await self.complete(body, asyncio.get_running_loop())
            except (AnydecodeError, ValueError, TypeError) as exc:
                return _error(str(exc))
            return JSONResponse(payload)

    async def _one_step(self, prompt: list[int], params: Any) -> Any:
        from vllm.inputs import TokensPrompt

        final = None
        async for out in self.engine_client.generate(TokensPrompt(prompt_token_ids=prompt), params,
                                                     f"anydecode-{uuid.uuid4().hex}"):
            final = out
        return final

    async def complete(self, body: dict[str, Any], loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
        from .offline import run_on_engine

        body = dict(body)
        body.pop("model", None)
        prompts = body.pop("prompt", None)
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompts!r}")
        decoder = body.pop("decoder", "beam")
        max_tokens = body.pop("max_tokens", 64)
        top_logprobs = body.pop("top_logprobs", 20)

        def step(rows: list[list[int]], params: Any) -> list[Any]:
            async def gather() -> list[Any]:
                return list(await asyncio.gather(*(self._one_step(r, params) for r in rows)))
            return asyncio.run_coroutine_threadsafe(gather(), loop).result()

        results = await asyncio.to_thread(run_on_engine, self.model_config, step, self.tokenizer, prompts, decoder,
                                          max_tokens, top_logprobs=top_logprobs, **body)
        choices = []
        for p, gen in enumerate(results):
            for seq in gen.sequences:
                choices.append({"index": len(choices), "prompt_index": p, "text": seq.text,
                                "token_ids": seq.token_ids, "score": seq.score, "finish_reason": seq.finish_reason})
        return {"object": "anydecode.completion", "decoder": decoder, "choices": choices,
                "stats": results[0].stats if results else {}}


def _error(message: str, status: int = 400) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": "BadRequestError", "code": status}},
                        status_code=status)
