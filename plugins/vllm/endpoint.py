"""``POST /v1/anydecode/completions``: search decoders (beam, dbs, deal, best_of_n) served by vLLM's server.

A vLLM endpoint plugin (entry point ``vllm.endpoint_plugins: anydecode``; vLLM loads endpoint plugins only when
``VLLM_PLUGINS`` names them, which ``anydecode serve`` does). The decoder runs in a thread; each of its steps
sends one request per row to the engine client (all rows of a step concurrently, prefix caching doing the reuse)
and waits for their log-probabilities. The plugin also installs anydecode's request gate in front of the OpenAI
routes (:mod:`.middleware`) and, on the API server, the grammar checker process (:mod:`.grammar_check`); on a
speculative server it attaches the proposer to vLLM's model runner so that requests' predictions are drafted from
(:mod:`.prediction`).

Request: ``{"prompt": str | [str], "decoder": "dbs", "max_tokens": 32, <decoder settings>...}``.
Response: ``{"object": "anydecode.completion", "decoder", "choices": [{"index", "prompt_index", "text",
"token_ids", "score", "finish_reason"}], "stats"}``.

The body is a request's settings: only what the config fields declare request-settable, within the operator's
limits (prompts, tokens, samples, beams, rows, log-probabilities), and rewards only among those the operator
enabled. A refusal, a bad value or a failing reward is HTTP 400 with the message; whatever the decoder or a reward
raises (``SystemExit`` included) ends this request only. When the client disconnects, the search stops at its next
step and its engine requests are aborted.
"""


import asyncio
import json
import logging
import os
import threading
import uuid
from typing import Any

from anydecode.algorithms.contracts.errors import REQUEST_ERRORS, AnydecodeError, ConfigError
from anydecode.algorithms.contracts.serving import RequestSettingError, check_request

from .middleware import ENV_SPECULATIVE

ROUTE = "/v1/anydecode/completions"
#: counters of this API-server process (searches running, the grammar checker's verdicts); no settings, no text
STATS_ROUTE = "/v1/anydecode/stats"
logger = logging.getLogger("anydecode.vllm")
#: how a refusal over a limit says who may change it
_RAISE = "; the operator raises it with `anydecode serve --set {}=N`"
#: body keys of the route itself (not decoder settings)
ROUTE_KEYS = ("model", "prompt", "decoder", "max_tokens", "top_logprobs")


class RequestCancelled(AnydecodeError):
    """The client went away; the search stops."""


class AnydecodeEndpoint:
    """The endpoint plugin object vLLM instantiates."""

    name = "anydecode"
    required_tasks = ("generate",)

    def __init__(self) -> None:
        self.engine_client: Any = None
        self.tokenizer: Any = None
        self.model_config: Any = None
        self.server: Any = None
        self.checker: Any = None
        self.active = 0

    async def init_state(self, engine_client: Any, state: Any, args: Any) -> None:
        from anydecode.plugins.hf.tokenizer import load_tokenizer

        from . import grammar_check
        from .settings import ENV_SETTINGS, ServerSettings, frontend_settings, set_frontend_settings

        if engine_client is None:
            return
        extra = getattr(args, "additional_config", None)
        if isinstance(extra, str):
            extra = json.loads(extra)
        if isinstance(extra, dict) and "anydecode" in extra:
            set_frontend_settings(ServerSettings.from_section(extra["anydecode"]))
        self.server = frontend_settings()
        self.engine_client = engine_client
        tokenizer_name = getattr(args, "tokenizer", None) or args.model
        self.tokenizer = load_tokenizer(tokenizer_name)
        self.model_config = getattr(engine_client, "model_config", None)
        if self.model_config is None:
            self.model_config = engine_client.vllm_config.model_config
        if os.environ.get(ENV_SETTINGS) is not None or (isinstance(extra, dict) and "anydecode" in extra):
            engine = self.server.defaults.get("engine") or "llguidance"  # the engine requests' grammars use
            warm = ("gcd", {"grammar": "(a|b)", "grammar_format": "regex", "engine": engine})
            self.checker = grammar_check.GrammarChecker(tokenizer_name, self.server.policy.limits, warm)
            grammar_check.install(self.checker)
            threading.Thread(target=self.checker.start, daemon=True, name="anydecode-checker-start").start()
        if os.environ.get(ENV_SPECULATIVE):
            await self._serve_predictions(engine_client)

    async def _serve_predictions(self, engine_client: Any) -> None:
        """On a speculative server: attach the worker's proposer to vLLM's model runner (it then finds requests by
        id and drafts from their predictions) and give the request gate the tokenizer and engine client it needs
        for ``prediction`` (:mod:`.prediction`). Where that fails, requests with a prediction get HTTP 400."""
        from . import prediction

        try:
            results = await engine_client.collective_rpc(prediction.ATTACH_RPC)
            answers = results if isinstance(results, list) else [results]
            refused = [a for a in answers if not (isinstance(a, dict) and a.get("predictions"))]
            ready = None if answers and not refused else str(
                refused[0].get("reason") if refused and isinstance(refused[0], dict) else "no worker answered")
        except Exception as exc:  # an older worker extension, or none: predictions are refused, the rest serves
            ready = f"the worker extension could not attach the proposer ({type(exc).__name__}: {exc})"
        if ready is not None:
            logger.warning("anydecode: requests with a prediction will be refused: %s", ready)
        prediction.install(prediction.PredictionService(self.tokenizer, engine_client, ready))

    def attach_router(self, app: Any) -> None:
        from fastapi import Request
        from fastapi.responses import JSONResponse

        from .middleware import AnydecodeMiddleware

        app.add_middleware(AnydecodeMiddleware)

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
            cancelled = threading.Event()
            tenant = None
            if self.server is not None and self.server.policy.asap_scope == "api_key":
                from .middleware import _bearer
                from .settings import sign_tenant, verify_tenant

                tenant = verify_tenant(sign_tenant(_bearer(request.scope)))
            watcher = asyncio.create_task(_watch_disconnect(request, cancelled))
            try:
                payload = await self.complete(body, asyncio.get_running_loop(), cancelled, tenant=tenant)
            except RequestCancelled:
                return _error("the client disconnected", 499)
            except (AnydecodeError, ValueError, TypeError) as exc:
                return _error(str(exc))
            finally:
                watcher.cancel()
            return JSONResponse(payload)

        @app.get(STATS_ROUTE, response_model=None)
        async def anydecode_stats():
            return JSONResponse(self.stats())

    def stats(self) -> dict[str, Any]:
        """Searches running on the route and the grammar checker's counters (tests read them for leaks)."""
        from . import grammar_check

        checker = self.checker
        return {"active_searches": self.active,
                "grammar_checker": None if checker is None else {
                    "verdicts": len(checker.verdicts), "verdicts_cap": grammar_check.VERDICTS,
                    "counts": dict(checker.counts)}}

    async def _one_step(self, prompt: list[int], params: Any) -> Any:
        from vllm.inputs import TokensPrompt

        final = None
        async for out in self.engine_client.generate(TokensPrompt(prompt_token_ids=prompt), params,
                                                     f"anydecode-{uuid.uuid4().hex}"):
            final = out
        return final

    def plan(self, body: dict[str, Any],
             tenant: str | None = None) -> tuple[list[str], str, int, int, dict[str, Any], Any]:
        """``(prompts, decoder, max_tokens, top_logprobs, settings, config)`` of a body, checked against the policy;
        ``tenant`` is the request's (its API key's digest) where the policy keeps ASAp's state per API key."""
        from anydecode.registry import get_decoder

        from .settings import _scoped

        server = self.server
        limits = server.policy.limits
        prompts = body.get("prompt")
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ConfigError(f"prompt must be a string or a non-empty list of strings, got {type(prompts).__name__}")
        if len(prompts) > limits.prompts:
            raise RequestSettingError(f"{len(prompts)} prompts is over this server's limit of {limits.prompts} "
                                      f"(prompts){_RAISE.format('prompts')}")
        name = body.get("decoder", "beam")
        if not isinstance(name, str):
            raise ConfigError(f"decoder must be a name, got {type(name).__name__}")
        decoder = get_decoder(name)
        max_tokens = body.get("max_tokens", 64)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 0 <= max_tokens <= limits.tokens:
            raise RequestSettingError(f"max_tokens={max_tokens!r} must be an integer from 0 to {limits.tokens} "
                                      f"(tokens){_RAISE.format('tokens')}")
        top_logprobs = body.get("top_logprobs", min(20, limits.top_logprobs))
        if not isinstance(top_logprobs, int) or isinstance(top_logprobs, bool) \
                or not 1 <= top_logprobs <= limits.top_logprobs:
            raise RequestSettingError(f"top_logprobs={top_logprobs!r} must be an integer from 1 to "
                                      f"{limits.top_logprobs} (top_logprobs){_RAISE.format('top_logprobs')}")
        request = {k: v for k, v in body.items() if k not in ROUTE_KEYS}
        for key, value in request.items():
            if not isinstance(value, (str, int, float, bool, type(None), list)) or (
                    isinstance(value, list) and not all(isinstance(v, (str, int, float)) for v in value)):
                raise ConfigError(f"setting {key!r} must be a flat value or a list of them")
        own = decoder.config_cls.setting_fields({**server.defaults, **request})
        defaults = {k: v for k, v in server.defaults.items() if k != "decoder" and k in own}
        merged = {**defaults, **request}
        check_request(name, decoder.config_cls, request, merged, server.policy)
        merged = _scoped(decoder, merged, server.policy.asap_scope, tenant)  # whose ASAp state a grammar request uses
        config = decoder.configure(merged)
        rows = len(prompts) * config.rows_per_prompt()
        if rows > limits.rows:
            raise RequestSettingError(f"this search holds {rows} rows at once ({len(prompts)} prompts x "
                                      f"{config.rows_per_prompt()}), over this server's limit of {limits.rows} "
                                      f"(rows){_RAISE.format('rows')}")
        return prompts, name, max_tokens, top_logprobs, merged, config

    async def complete(self, body: dict[str, Any], loop: asyncio.AbstractEventLoop,
                       cancelled: threading.Event | None = None, tenant: str | None = None) -> dict[str, Any]:
        from .offline import run_on_engine

        cancelled = cancelled or threading.Event()
        prompts, decoder, max_tokens, top_logprobs, _settings, config = self.plan(body, tenant)
        if self.checker is not None and (getattr(config, "grammar", None) or getattr(config, "grammar_file", None)):
            # a grammar decoder on this route: its grammar is compiled by the checker process under the deadline
            # first (HTTP 400 past it), as on the OpenAI routes, never unbounded in this process
            error = await asyncio.to_thread(self.checker.check, decoder, config.as_dict())
            if error is not None:
                raise ConfigError(error)

        def step(rows: list[list[int]], params: Any) -> list[Any]:
            if cancelled.is_set():  # each engine step is one token per row: stopping between steps is prompt
                raise RequestCancelled("the client disconnected")

            async def gather() -> list[Any]:
                return list(await asyncio.gather(*(self._one_step(r, params) for r in rows)))

            return asyncio.run_coroutine_threadsafe(gather(), loop).result()

        def search() -> Any:
            try:
                return run_on_engine(self.model_config, step, self.tokenizer, prompts, decoder, max_tokens,
                                     top_logprobs=top_logprobs, config=config)
            except RequestCancelled:
                raise
            except AnydecodeError:
                raise
            except REQUEST_ERRORS as exc:  # operator-supplied code (a reward, a decoder) fails this request only
                logger.error("anydecode: search request failed (%s: %s)", type(exc).__name__, exc)
                raise ConfigError(f"the search failed: {type(exc).__name__}: {exc}") from None

        self.active += 1
        try:
            results = await asyncio.to_thread(search)
        finally:
            self.active -= 1
        choices = []
        for p, gen in enumerate(results):
            for seq in gen.sequences:
                choices.append({"index": len(choices), "prompt_index": p, "text": seq.text,
                                "token_ids": seq.token_ids, "score": seq.score, "finish_reason": seq.finish_reason})
        return {"object": "anydecode.completion", "decoder": decoder, "choices": choices,
                "stats": results[0].stats if results else {}}


async def _watch_disconnect(request: Any, cancelled: threading.Event) -> None:
    """Set ``cancelled`` once the client has gone away."""
    while not cancelled.is_set():
        if await request.is_disconnected():
            cancelled.set()
            return
        await asyncio.sleep(0.25)


def _error(message: str, status: int = 400) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": "BadRequestError", "code": status}},
                        status_code=status)
