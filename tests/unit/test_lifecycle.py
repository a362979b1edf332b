"""The request lifecycle of native logits hooks (``algorithms.lifecycle.RequestTable``), written once for every
runtime: random interleavings of start / apply / finish / abort / move over reused keys leave every request's
transform state equal to a fresh run's, finish each request exactly once, and hold nothing after the last finish.
"""

from __future__ import annotations

from concurrent.futures import Future

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anydecode.algorithms.contracts.transform import LogitsTransform
from anydecode.algorithms.lifecycle import RequestTable

EOS = 9
VOCAB = 10


class Recorder(LogitsTransform):
    """A transform whose state is the history it was shown; it logs every start, apply and finish."""

    def __init__(self):
        self.log: list[tuple] = []
        self.serial = 0

    def start(self, prompt_ids):
        self.serial += 1
        state = {"id": self.serial, "prompt": list(prompt_ids), "seen": []}
        self.log.append(("start", state["id"], tuple(prompt_ids)))
        return state

    def apply(self, state, generated_ids, logits):
        state["seen"].append(tuple(generated_ids))
        out = logits.clone()
        # depends on the request's own prompt and history only: a request handed another's state shows
        out[(len(generated_ids) + state["prompt"][0]) % VOCAB] += 1.0
        return out

    def finish(self, state, generated_ids, reason):
        self.log.append(("finish", state["id"], tuple(generated_ids), reason))


ops = st.lists(st.tuples(st.sampled_from(["start", "step", "finish", "abort", "move", "swap"]),
                         st.integers(0, 3), st.integers(0, 3)), max_size=40)


@given(ops=ops)
@settings(max_examples=200, deadline=None)
def test_interleavings_keep_each_request_like_a_fresh_run(ops):
    transform = Recorder()
    table = RequestTable([EOS])
    live: dict[int, dict] = {}  # key -> the model of that request: prompt, generated, its transform id
    finished_ids: list[int] = []
    for op, a, b in ops:
        if op == "start":
            if a in live:  # a reused slot: the old request is aborted
                finished_ids.append(live.pop(a)["id"])
            table.start(a, transform, [a, a + 1])
            live[a] = {"id": transform.serial, "prompt": [a, a + 1], "generated": []}
        elif op == "step" and a in live:
            request = live[a]
            logits = torch.zeros(VOCAB)
            out = table.apply(a, request["generated"], logits)
            fresh = torch.zeros(VOCAB)
            fresh[(len(request["generated"]) + request["prompt"][0]) % VOCAB] += 1.0
            assert torch.equal(out, fresh)  # equal to a fresh run of this request alone
            request["generated"].append(b)
        elif op == "finish" and a in live:
            request = live.pop(a)
            table.finish(a, request["generated"])
            finished_ids.append(request["id"])
            # the request finished is this one, with its own tokens
            assert transform.log[-1] == ("finish", request["id"], tuple(request["generated"]), "length")
        elif op == "abort" and a in live:
            finished_ids.append(live.pop(a)["id"])
            table.abort(a)
        elif op == "move" and a != b and a in live:
            if b in live:
                finished_ids.append(live.pop(b)["id"])
            live[b] = live.pop(a)
            table.move(a, b)
        elif op == "swap" and a != b:
            live[a], live[b] = live.get(b), live.get(a)
            live = {k: v for k, v in live.items() if v is not None}
            table.swap(a, b)
        assert sorted(table.keys()) == sorted(live)
    for key in list(live):
        finished_ids.append(live.pop(key)["id"])
    table.finish_all("length")
    assert len(table) == 0
    finishes = [entry[1] for entry in transform.log if entry[0] == "finish"]
    starts = [entry[1] for entry in transform.log if entry[0] == "start"]
    assert sorted(finishes) == sorted(starts) == sorted(finished_ids)  # every request finished exactly once


def test_finish_reasons_come_from_the_tokens_or_the_hook():
    transform = Recorder()
    table = RequestTable([EOS])
    table.start("a", transform, [1])
    table.start("b", transform, [2])
    assert table.finish("a", [3, EOS]) == "stop"
    assert table.finish("b", [3, 4]) == "length"
    assert table.finish("b", [3, 4]) is None  # an end reported twice is ignored
    assert table.counts == {"started": 2, "stop": 1, "length": 1}


class DeadEnd(LogitsTransform):
    def __init__(self):
        self.finished = []

    def apply(self, state, generated_ids, logits):
        return torch.full_like(logits, float("-inf"))

    def forced_stop(self, state):
        return "dead_end"

    def finish(self, state, generated_ids, reason):
        self.finished.append((list(generated_ids), reason))


def test_a_dead_end_ends_the_request_with_eos_and_reports_why():
    transform = DeadEnd()
    table = RequestTable([EOS])
    table.start(0, transform, [1])
    row = table.apply(0, [4], torch.randn(VOCAB))
    assert torch.isfinite(row).nonzero().flatten().tolist() == [EOS]  # the runtime samples EOS and stops
    table.finish(0, [4, EOS])
    assert transform.finished == [([4], "dead_end")] and table.counts["dead_end"] == 1


class Explodes(LogitsTransform):
    def __init__(self, error):
        self.error = error
        self.finished = []

    def apply(self, state, generated_ids, logits):
        raise self.error

    def finish(self, state, generated_ids, reason):
        self.finished.append(reason)


def test_a_failing_transform_ends_its_request_only_whatever_it_raises():
    for error in (RuntimeError("bug"), SystemExit(3), KeyboardInterrupt()):
        transform = Explodes(error)
        table = RequestTable([EOS])
        table.start(0, transform, [1])
        table.start(1, Recorder(), [1])
        row = table.apply(0, [], torch.zeros(VOCAB))
        assert torch.isfinite(row).nonzero().flatten().tolist() == [EOS]
        assert torch.isfinite(table.apply(1, [], torch.zeros(VOCAB))).all()  # the other request is untouched
        assert table.finish(0, [EOS]) == "error"


def test_a_transform_still_building_is_awaited_then_used_and_a_failed_build_ends_the_request():
    ready: Future = Future()
    table = RequestTable([EOS], wait_seconds=0.01)
    table.start(0, ready, [1])
    transform = Recorder()
    ready.set_result(transform)
    out = table.apply(0, [], torch.zeros(VOCAB))
    assert out[1] == 1.0 and transform.log[0][0] == "start"
    slow: Future = Future()
    table.start(1, slow, [1])
    assert torch.isfinite(table.apply(1, [], torch.zeros(VOCAB))).sum() == 1  # not ready in time: ended
    assert table.finish(1, []) == "error"
