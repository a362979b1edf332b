"""Predicted outputs (OpenAI's ``prediction``) on anydecode's vLLM server, without an engine: the proposer's
per-request state keyed by vLLM request ids, the request gate's checks, the usage rewriting of responses, and a guard
on the private vLLM attributes the proposer reads (which fails loudly when vLLM changes them)."""

from __future__ import annotations

import asyncio
import inspect
import json
import types

import numpy as np
import pytest

from anydecode.plugins.vllm import prediction as predicted_outputs
from anydecode.plugins.vllm.batch import RunnerRequests, check_runner
from anydecode.plugins.vllm.drafts import RequestDrafters, RowRequest, drafter_factory
from anydecode.plugins.vllm.middleware import BadRequest, RequestGate
from anydecode.plugins.vllm.settings import ServerSettings

MAX_LEN = 256
VOCAB = 1000
INSTRUCTION = [90, 91, 92]
PROMPT = INSTRUCTION + [5, 6, 7]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Engine:
    """vLLM's persistent batch as the proposer sees it (rows of prompt + output, request ids, each request's
    settings), with greedy verification against each request's known target output. A step's forward advances the
    clock by ``cost(width)``, the tokens it verified."""

    def __init__(self, rows: int = 4, cost=lambda width: 1.0 + 0.3 * width):
        self.token_ids = np.zeros((rows, MAX_LEN), dtype=np.int32)
        self.num_tokens = np.zeros(rows, dtype=np.int32)
        self.req_ids: list[str | None] = [None] * rows
        self.requests: dict[str, dict] = {}
        self.clock = Clock()
        self.cost = cost

    # BatchRequests
    def request_ids(self):
        return self.req_ids

    def live(self):
        return self.requests

    def request(self, request_id):
        req = self.requests[request_id]
        return RowRequest(request_id, req["prediction"], req["key"], greedy=True)

    def add(self, row, rid, prompt, target, prediction=None, key=None):
        """A request after prefill: the prompt and the first target token."""
        self.token_ids[row, : len(prompt) + 1] = prompt + target[:1]
        self.num_tokens[row] = len(prompt) + 1
        self.req_ids[row] = rid
        self.requests[rid] = {"target": target, "done": 1, "sampled": target[:1], "prediction": prediction,
                              "key": key, "row": row}

    def finish(self, rid):
        row = self.requests.pop(rid)["row"]
        self.req_ids[row] = None
        self.num_tokens[row] = 0

    def sampled(self):
        return [self.requests[r]["sampled"] if r is not None else [] for r in self.req_ids]

    def verify(self, drafts):
        width = 0
        for row, (rid, draft) in enumerate(zip(self.req_ids, drafts)):
            if rid is None:
                continue
            req = self.requests[rid]
            target, done = req["target"], req["done"]
            width += 1 + len(draft)
            accepted = 0
            while (accepted < len(draft) and done + accepted < len(target)
                   and draft[accepted] == target[done + accepted]):
                accepted += 1
            new = target[done: done + accepted + 1]
            n = int(self.num_tokens[row])
            self.token_ids[row, n: n + len(new)] = new
            self.num_tokens[row] = n + len(new)
            req["done"] += len(new)
            req["sampled"] = new
        self.clock.now += self.cost(width)

    def running(self):
        return any(r is not None and self.requests[r]["done"] < len(self.requests[r]["target"])
                   for r in self.req_ids)

    def step(self, rows: RequestDrafters):
        drafts = rows.propose(self.sampled(), self.num_tokens, self.token_ids, self)
        self.verify(drafts)
        return drafts


def iad_rows(k=8, **settings) -> RequestDrafters:
    engine_clock = Clock()
    make, _ = drafter_factory("iad", settings)
    return RequestDrafters(make, k, MAX_LEN, clock=engine_clock)


def attach(rows, engine):
    rows.clock = engine.clock
    return rows


TEXT_A = list(range(100, 160))
TEXT_B = list(range(300, 360))


def test_each_request_drafts_from_its_own_prediction_even_with_identical_prompts():
    engine = Engine(2)
    rows = attach(iad_rows(), engine)
    engine.add(0, "a", PROMPT, TEXT_A, prediction=TEXT_A, key="ka")
    engine.add(1, "b", PROMPT, TEXT_B, prediction=TEXT_B, key="kb")
    while engine.running():
        drafts = engine.step(rows)
        for row, own, other in ((0, TEXT_A, TEXT_B), (1, TEXT_B, TEXT_A)):
            assert not set(drafts[row]) & set(other)  # never the other request's prediction
            assert set(drafts[row]) <= set(own)
    engine.step(rows)  # the last verification is seen at the next step
    a, b = rows.prediction_usage("ka"), rows.prediction_usage("kb")
    assert a["accepted_prediction_tokens"] > 40 and b["accepted_prediction_tokens"] > 40, (a, b)
    stats = rows.stats
    assert stats.prediction_requests == 2 and stats.new_requests == 2
    assert a["accepted_prediction_tokens"] + b["accepted_prediction_tokens"] == stats.prediction_accepted
    assert a["rejected_prediction_tokens"] + b["rejected_prediction_tokens"] == stats.prediction_rejected


def test_keying_states_by_row_swaps_predictions_when_the_batch_is_condensed():
    """The planted bug the server test also catches: a state found by row index instead of request id. When vLLM
    condenses the batch (a request finishes, another moves into its row), the moved request drafts from the wrong
    prediction; keyed by request id it keeps its own."""
    def run(rows):
        engine = Engine(2)
        rows = attach(rows, engine)
        engine.add(0, "short", PROMPT, TEXT_B[:3], prediction=TEXT_B[:3], key="ks")
        engine.add(1, "long", PROMPT, TEXT_A, prediction=TEXT_A, key="kl")
        engine.step(rows)
        engine.finish("short")  # vLLM moves the request in row 1 into the hole at row 0
        engine.token_ids[0], engine.num_tokens[0] = engine.token_ids[1], engine.num_tokens[1]
        engine.req_ids[0], engine.req_ids[1] = "long", None
        engine.requests["long"]["row"] = 0
        engine.num_tokens[1] = 0
        while engine.running():
            engine.step(rows)
        engine.step(rows)
        return rows.prediction_usage("kl")

    assert run(iad_rows())["accepted_prediction_tokens"] >= 50

    class ByRow(RequestDrafters):
        def propose(self, sampled, num_tokens, token_ids, batch=None):
            class RowIds:
                def request_ids(self):
                    return [f"row{i}" for i in range(len(sampled))]

                def request(self, request_id):
                    return batch.request(batch.request_ids()[int(request_id[3:])])

                def live(self):
                    return [f"row{i}" for i in range(len(sampled))]

            return super().propose(sampled, num_tokens, token_ids, RowIds())

    make, _ = drafter_factory("iad", {})
    mutant = run(ByRow(make, 8, MAX_LEN))
    assert mutant is None or mutant["accepted_prediction_tokens"] < 10


def test_a_request_that_leaves_the_runner_frees_its_state_and_its_counts_are_read_once():
    engine = Engine(2)
    rows = attach(iad_rows(), engine)
    engine.add(0, "a", PROMPT, TEXT_A, prediction=TEXT_A, key="ka")
    engine.add(1, "plain", PROMPT, TEXT_B)
    for _ in range(3):
        engine.step(rows)
    assert rows.live_predictions() == 1 and len(rows.requests) == 2
    engine.finish("a")  # finished or aborted: vLLM's runner no longer holds it
    engine.step(rows)
    assert rows.live_predictions() == 0 and set(rows.requests) == {"plain"}
    assert rows.stats.released_requests == 1 and len(rows.ended_usage) == 1
    counts = rows.prediction_usage("ka")
    assert counts["accepted_prediction_tokens"] > 0
    assert rows.prediction_usage("ka") is None and not rows.ended_usage  # read once, then forgotten
    assert rows.prediction_usage("never-seen") is None


def test_counts_read_while_the_request_runs_are_not_kept_after_it_ends():
    engine = Engine(1)
    rows = attach(iad_rows(), engine)
    engine.add(0, "a", PROMPT, TEXT_A, prediction=TEXT_A, key="ka")
    engine.step(rows)
    engine.step(rows)
    assert rows.prediction_usage("ka") is not None  # the gate read it (an aborted request's response ended)
    engine.finish("a")
    engine.step(rows)
    assert not rows.ended_usage and not rows.usage


def test_ended_counts_nobody_reads_are_bounded():
    engine = Engine(1)
    make, _ = drafter_factory("iad", {})
    rows = RequestDrafters(make, 4, MAX_LEN, capacity=3, clock=engine.clock)
    for i in range(6):
        engine.add(0, f"r{i}", PROMPT, TEXT_A[:6], prediction=TEXT_A, key=f"k{i}")
        engine.step(rows)
        engine.finish(f"r{i}")
        rows.release(engine.live())
    assert list(rows.ended_usage) == ["k3", "k4", "k5"]


def test_a_wrong_prediction_stops_being_drafted_and_a_right_one_keeps_drafting():
    """Steps cost 1 + 0.3 per verified token: a rejected 8-token draft costs most of a second step. The controller
    stops drafting a prediction the output does not follow (apart from probes), and keeps drafting one it does."""
    def drafted(target, prediction):
        engine = Engine(1)
        rows = attach(iad_rows(), engine)
        engine.add(0, "r", PROMPT, target, prediction=prediction, key="k")
        # timings of plain and drafting steps of other requests first, as a running server has them
        for w in (1, 2, 5, 9, 1, 9):
            rows.controller.record_forward(w, 1.0 + 0.3 * w)
        while engine.running():
            engine.step(rows)
        engine.step(rows)
        return rows.stats.drafted_tokens, rows.prediction_usage("k"), engine.clock.now

    wrong_target = [400 + (i * 7) % 50 for i in range(120)]  # shares no n-gram order with the prediction
    wrong = [400 + i for i in range(50)] * 2
    tokens, counts, seconds = drafted(wrong_target, wrong)
    plain = sum(1.0 + 0.3 for _ in wrong_target[1:])
    assert seconds <= 1.05 * plain, (seconds, plain, counts)
    tokens, counts, seconds = drafted(TEXT_A + TEXT_B, TEXT_A + TEXT_B)
    assert counts["accepted_prediction_tokens"] >= 100 and seconds < 0.5 * sum(1.3 for _ in range(119))


def test_runner_requests_reads_ids_and_checks_predictions_again():
    params = types.SimpleNamespace(temperature=0.0, extra_args={predicted_outputs.XARG_IDS: [1, 2, 3],
                                                                 predicted_outputs.XARG_KEY: "k" * 32})
    bad = types.SimpleNamespace(temperature=0.7, extra_args={predicted_outputs.XARG_IDS: [1, VOCAB, 3],
                                                              predicted_outputs.XARG_KEY: 5})
    runner = types.SimpleNamespace(input_batch=types.SimpleNamespace(req_ids=["x", "y"]),
                                   requests={"x": types.SimpleNamespace(sampling_params=params),
                                             "y": types.SimpleNamespace(sampling_params=bad)})
    view = RunnerRequests(runner, VOCAB, max_prediction_tokens=8)
    assert view.request_ids() == ["x", "y"] and "x" in view.live()
    assert view.request("x") == RowRequest("x", [1, 2, 3], "k" * 32, greedy=True)
    assert view.request("y") == RowRequest("y", None, None, greedy=False) and view.refused == 1
    params.extra_args[predicted_outputs.XARG_IDS] = list(range(9))  # over the cap
    assert view.request("x").prediction is None and view.refused == 2
    with pytest.raises(Exception, match="lacks input_batch"):
        check_runner(types.SimpleNamespace(requests={}))


# -- the request gate --------------------------------------------------------------------------------------------
class Service:
    ready = None

    async def encode(self, text):
        return [ord(c) for c in text]

    async def usage(self, key):
        return {"accepted_prediction_tokens": 7, "rejected_prediction_tokens": 2}


def gate(speculative="iad", limit=None, service=Service()):
    section = {"serving": {"prediction_bytes": limit}} if limit else {}
    return RequestGate(ServerSettings.from_section(section), speculative, predictions=lambda: service)


def predict(g, body):
    return asyncio.run(g.predict(body))


def test_the_gate_moves_a_prediction_into_vllm_xargs_as_token_ids():
    body, predicted = predict(gate(), {"messages": [], "prediction": {"type": "content", "content": "ab"},
                                       "vllm_xargs": {"decoder": "iad"}})
    assert "prediction" not in body and body["vllm_xargs"]["decoder"] == "iad"
    assert body["vllm_xargs"][predicted_outputs.XARG_IDS] == [97, 98]
    assert body["vllm_xargs"][predicted_outputs.XARG_KEY] == predicted.key and len(predicted.key) == 32
    parts = {"type": "content", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    assert predict(gate(), {"prediction": parts})[0]["vllm_xargs"][predicted_outputs.XARG_IDS] == [97, 98]
    assert predict(gate(), {"prompt": "x"}) == ({"prompt": "x"}, None)
    empty, nothing = predict(gate(), {"prediction": {"type": "content", "content": ""}})
    assert nothing.key is None and "vllm_xargs" not in empty
    other = predict(gate(), {"prediction": {"type": "content", "content": "ab"}})[1]
    assert other.key != predicted.key  # a fresh key per request


SECRET = "the file's secret line"


@pytest.mark.parametrize("value,message", [
    ("just text", "prediction must be an object, got a string"),
    ([SECRET], "prediction must be an object, got an array"),
    ({"type": "text", "content": SECRET}, "prediction.type must be \"content\", got 'text'"),
    ({"content": SECRET}, "prediction.type must be \"content\", got null"),
    ({"type": "content", "content": 5}, "prediction.content must be a string or a list of text parts, got a number"),
    ({"type": "content", "content": [{"type": "image_url", "image_url": SECRET}]}, "prediction.content[0] must be"),
    ({"type": "content", "content": [SECRET]}, "prediction.content[0] must be a text part"),
    ({"type": "content", "content": SECRET, "path": "/etc/passwd"}, "prediction has an unknown field 'path'"),
    ({"type": "content", "content": "x" * 101}, "prediction of 101 bytes is over this server's limit of 100 bytes "
                                               "(prediction_bytes)"),
])
def test_bad_predictions_get_400_naming_the_field_without_echoing_it(value, message):
    with pytest.raises(BadRequest) as info:
        predict(gate(limit=100), {"prediction": value})
    assert info.value.param == "prediction" and message in str(info.value)
    assert SECRET not in str(info.value) and "/etc/passwd" not in str(info.value)
    if "limit" not in message:
        assert '{"type": "content", "content": TEXT}' in str(info.value)  # what is accepted


@pytest.mark.parametrize("speculative,service,message", [
    (None, Service(), "this server runs no speculative decoding"),
    ("aded", Service(), "drafter 'aded' does not draft from predictions"),
    ("custom", Service(), "drafter 'custom' does not draft from predictions"),
    ("iad", None, "cannot be served here: the endpoint plugin did not start"),
    ("iad", types.SimpleNamespace(ready="the runner lacks requests"), "cannot be served here: the runner lacks"),
])
def test_servers_that_cannot_draft_from_a_prediction_refuse_it(speculative, service, message):
    with pytest.raises(BadRequest) as info:
        predict(gate(speculative, service=service), {"prediction": {"type": "content", "content": "x"}})
    assert info.value.param == "prediction" and message in str(info.value)


def test_a_client_cannot_send_prediction_ids_itself():
    with pytest.raises(BadRequest, match="reserved for anydecode"):
        gate().rewrite({"vllm_xargs": {predicted_outputs.XARG_IDS: [1, 2]}}, {"headers": []})


# -- the response's usage ----------------------------------------------------------------------------------------
def run_response(messages, stream, counts=None):
    sent = []

    async def send(message):
        sent.append(message)

    async def collect():
        return counts if counts is not None else {"accepted_prediction_tokens": 5, "rejected_prediction_tokens": 3}

    async def go():
        rewriter = predicted_outputs.UsageRewriter(send, collect, stream)
        for message in messages:
            await rewriter(message)
        await rewriter.finish()
        return rewriter

    return sent, asyncio.run(go())


def test_a_json_response_gets_the_prediction_counts_and_its_new_length():
    doc = {"id": "x", "choices": [{"message": {"content": "hi"}}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 9, "completion_tokens_details": {"reasoning_tokens": 0}}}
    raw = json.dumps(doc).encode()
    start = {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]}
    sent, _ = run_response([start, {"type": "http.response.body", "body": raw[:10], "more_body": True},
                            {"type": "http.response.body", "body": raw[10:]}], stream=False)
    body = sent[1]["body"]
    assert json.loads(body)["usage"]["completion_tokens_details"] == {
        "reasoning_tokens": 0, "accepted_prediction_tokens": 5, "rejected_prediction_tokens": 3}
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(body)).encode()


def test_an_error_response_passes_unchanged_and_the_counts_are_still_read():
    start = {"type": "http.response.start", "status": 400, "headers": []}
    body = {"type": "http.response.body", "body": b'{"error": {}}'}
    sent, rewriter = run_response([start, body], stream=False)
    assert sent == [start, body] and rewriter.collected


def test_a_stream_gets_the_counts_in_its_final_usage_chunk_only():
    chunk = {"choices": [{"delta": {"content": "hi"}}], "usage": {"completion_tokens": 1}}
    final = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}}
    text = (f"data: {json.dumps(chunk)}\n\n" + f"data: {json.dumps(final)}\n\n" + "data: [DONE]\n\n").encode()
    start = {"type": "http.response.start", "status": 200, "headers": []}
    pieces = [text[:17], text[17:60], text[60:]]  # events split anywhere
    sent, _ = run_response([start] + [{"type": "http.response.body", "body": p, "more_body": True} for p in pieces]
                           + [{"type": "http.response.body", "body": b"", "more_body": False}], stream=True)
    out = b"".join(m.get("body", b"") for m in sent[1:]).decode()
    events = [e for e in out.split("\n\n") if e]
    assert json.loads(events[0][6:]) == chunk
    assert json.loads(events[1][6:])["usage"]["completion_tokens_details"] == {
        "accepted_prediction_tokens": 5, "rejected_prediction_tokens": 3}
    assert events[2] == "data: [DONE]" and sent[-1]["more_body"] is False


# -- the private vLLM attributes the proposer reads --------------------------------------------------------------
def test_vllm_still_gives_the_runner_attributes_the_proposer_reads():
    """Fails loudly when vLLM changes what ``plugins/vllm/batch.py`` relies on (tested against vLLM 0.32)."""
    pytest.importorskip("vllm")
    import dataclasses

    from vllm.v1.worker.gpu_input_batch import CachedRequestState, InputBatch
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    propose = inspect.getsource(GPUModelRunner.propose_draft_token_ids)
    custom = propose[propose.index('method == "custom_class"'):]
    assert "self.input_batch.num_tokens_no_spec" in custom[:600] and "self.input_batch.token_ids_cpu" in custom[:600]
    copy = inspect.getsource(GPUModelRunner._copy_draft_token_ids_to_cpu)
    assert "self._draft_token_req_ids = self.input_batch.req_ids.copy()" in copy  # drafts labelled by these rows
    update = inspect.getsource(GPUModelRunner._update_states)
    assert "for req_id in scheduler_output.finished_req_ids:" in update
    assert "self.requests.pop(req_id, None)" in update  # finished and aborted requests leave runner.requests
    assert isinstance(InputBatch.req_ids, property)
    assert "sampling_params" in {f.name for f in dataclasses.fields(CachedRequestState)}
    init = inspect.getsource(GPUModelRunner.__init__)
    assert "self.requests: dict[str, CachedRequestState] = {}" in init
    assert "self.drafter = create_custom_proposer(" in init  # worker.model_runner.drafter is the proposer
