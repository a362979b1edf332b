"""Grammar checks for vLLM's API-server process: compile a request's grammar away from the event loop.

A grammar sent by a request must compile before the request is admitted (a grammar that does not is HTTP 400), but
compiling can take long (an exponential automaton) and some engines hold the GIL while they work. So the API server
never compiles a request's grammar itself: a :class:`GrammarChecker` sends it to a separate, low-priority process
that holds the tokenizer, and waits at most ``grammar_seconds`` (``Limits``) for the verdict. A check that runs past
its deadline kills that process (a fresh one is started for the next check) and refuses the grammar; meanwhile the
event loop keeps serving. Verdicts are remembered by digest (least recently used first out), so a grammar is checked
once; ``validate_params``, which vLLM calls synchronously on the event loop, only reads them.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from anydecode.algorithms.contracts.serving import Limits

logger = logging.getLogger("anydecode.vllm")

#: how long a starting checker process may take to load the tokenizer before checks fail
START_SECONDS = 180.0
#: verdicts kept (each a digest and a short message)
VERDICTS = 4096


def verdict_key(decoder: str, settings: Mapping[str, Any], max_states: int) -> str:
    """A digest of everything a grammar check depends on."""
    parts = [decoder, str(max_states)] + [f"{k}={settings[k]!r}" for k in sorted(settings)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _serve(conn: Any, tokenizer_name: str,
           warm: tuple[str, dict[str, Any]] | None = None) -> None:  # pragma: no cover - runs in the checker process
    """The checker process: load the tokenizer once, compile ``warm`` (a trivial grammar: the engine's per-process
    set-up, its view of the vocabulary, is then done before the first deadline), then compile each grammar sent
    and answer None or the error."""
    try:
        os.nice(10)  # the engine and the event loop come first
    except OSError:
        pass
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from anydecode.plugins.hf.tokenizer import load_tokenizer

    from anydecode.algorithms.contracts.decoder import TransformContext
    from anydecode.algorithms.contracts.errors import AnydecodeError
    from anydecode.algorithms.grammar.decoders import compile_for
    from anydecode.registry import get_decoder

    from anydecode.plugins.hf.tokenizer import HFTokenizer

    tokenizer = load_tokenizer(tokenizer_name)
    eos = tokenizer.eos_token_id
    base = TransformContext(vocab_size=len(tokenizer), tokenizer=HFTokenizer(tokenizer), runtime="vllm",
                            eos_token_ids=frozenset() if eos is None else frozenset({int(eos)}))
    if warm is not None:
        try:
            compile_for(get_decoder(warm[0]).configure(warm[1]), base)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - only a warm-up: the checks report real failures
            logger.warning("anydecode: the grammar checker's warm-up failed (%s: %s)", type(exc).__name__, exc)
    conn.send(("ready", None))
    while True:
        try:
            decoder, settings, max_states = conn.recv()
        except EOFError:
            return
        try:
            dec = get_decoder(decoder)
            config = dec.configure(settings)
            context = dataclasses.replace(base, max_grammar_states=max_states)
            compile_for(config, context)  # type: ignore[arg-type]
            conn.send(("ok", None))
        except AnydecodeError as exc:
            conn.send(("refused", str(exc)))
        except Exception as exc:  # noqa: BLE001 - an engine's own failure is this grammar's problem
            conn.send(("refused", f"the grammar cannot be compiled: {type(exc).__name__}: {exc}"))


_current: GrammarChecker | None = None


def install(checker: GrammarChecker | None) -> None:
    """Make ``checker`` this process's (the API server's middleware does; ``validate_params`` reads it)."""
    global _current
    _current = checker


def current() -> GrammarChecker | None:
    return _current


class GrammarChecker:
    """One checker process per API server; checks run one at a time, each under the deadline."""

    def __init__(self, tokenizer_name: str, limits: Limits, warm: tuple[str, dict[str, Any]] | None = None):
        self.tokenizer_name = tokenizer_name
        self.limits = limits
        #: ``(decoder, settings)`` of a trivial grammar each checker process compiles before it reports ready
        self.warm = warm
        self._mp = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: Any = None
        self._ready = False
        self._lock = threading.Lock()
        self.verdicts: collections.OrderedDict[str, str | None] = collections.OrderedDict()
        self.counts: collections.Counter[str] = collections.Counter()

    # -- the checker process -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the checker process now (it is otherwise started by the first check)."""
        with self._lock:
            self._spawn()

    def _spawn(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        parent, child = self._mp.Pipe()
        self._proc = self._mp.Process(target=_serve, args=(child, self.tokenizer_name, self.warm), daemon=True,
                                      name="anydecode-grammar-check")
        self._proc.start()
        child.close()
        self._conn = parent
        self._ready = False
        self.counts["started"] += 1

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._ready = False

    def _wait_ready(self) -> None:
        if self._ready:
            return
        if not self._conn.poll(START_SECONDS):
            self._kill()
            raise RuntimeError(f"the grammar checker did not start within {START_SECONDS:.0f} s")
        kind, _ = self._conn.recv()
        if kind != "ready":
            self._kill()
            raise RuntimeError("the grammar checker failed to start")
        self._ready = True

    def close(self) -> None:
        with self._lock:
            self._kill()

    # -- checks ------------------------------------------------------------------------------------------------------
    def known(self, key: str) -> tuple[bool, str | None]:
        """``(checked, error)`` for a verdict key."""
        if key in self.verdicts:
            self.verdicts.move_to_end(key)
            return True, self.verdicts[key]
        return False, None

    def check(self, decoder: str, settings: Mapping[str, Any]) -> str | None:
        """None when the grammar compiles within the limits, else why not (blocks up to the deadline)."""
        key = verdict_key(decoder, settings, self.limits.grammar_states)
        done, error = self.known(key)
        if done:
            return error
        with self._lock:
            done, error = self.known(key)
            if done:
                return error
            try:
                self._spawn()
                self._wait_ready()
                started = time.perf_counter()
                self._conn.send((decoder, dict(settings), self.limits.grammar_states))
                if self._conn.poll(self.limits.grammar_seconds):
                    kind, message = self._conn.recv()
                    error = None if kind == "ok" else message
                else:
                    self._kill()
                    self._spawn()  # warm a fresh checker for the next grammar
                    self.counts["timeouts"] += 1
                    error = (f"the grammar did not compile within {self.limits.grammar_seconds:g} s "
                             "(grammar_seconds): simplify it, or ask the operator to raise the limit")
                    # not remembered: how long a compile takes depends on the machine's load at the time
                    self.counts["refused"] += 1
                    return error
                logger.debug("anydecode: grammar check took %.3f s", time.perf_counter() - started)
            except (OSError, EOFError, RuntimeError) as exc:
                self._kill()
                self.counts["failures"] += 1
                return f"the grammar could not be checked ({exc}); try again"
        self.counts["refused" if error else "accepted"] += 1
        self.verdicts[key] = error
        while len(self.verdicts) > VERDICTS:
            self.verdicts.popitem(last=False)
        return error
