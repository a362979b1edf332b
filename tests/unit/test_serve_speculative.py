"""``anydecode serve --decoder iad`` builds vLLM's speculative command; bad settings fail before vLLM starts;
speculative servers answer 400 to requests that name a transform decoder."""

import asyncio
import json

import pytest

from anydecode.cli import build_parser, main
from anydecode.serve import ENV_SPECULATIVE, PROCESSOR, build_command, split_model

MODEL = "/models/smol"  # never opened: build_command only names it


def command(*argv):
    argv = ["serve", MODEL, *argv]
    args, passthrough = build_parser().parse_known_args(argv)
    args.argv = argv
    args.model, passthrough = split_model(argv, passthrough)
    return build_command(args, passthrough)


def flag(cmd, name):
    return cmd[cmd.index(name) + 1]


def section(cmd):
    """The anydecode settings of --additional-config without the serving policy (tests/unit/test_serving.py)."""
    doc = json.loads(flag(cmd, "--additional-config"))
    assert set(doc["anydecode"].pop("serving")) >= {"asap_scope", "grammar_bytes", "rewards"}
    return doc


def test_decoder_iad_starts_vllm_with_the_iad_proposer():
    cmd, env = command("--decoder", "iad", "--set", "num_speculative_tokens=5", "--set", "max_match_ngram=2",
                       "--port", "8001")
    assert cmd[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", MODEL]
    assert json.loads(flag(cmd, "--speculative-config")) == {
        "method": "custom_class", "model": "anydecode.plugins.vllm.proposer.IADProposer", "num_speculative_tokens": 5}
    assert section(cmd) == {"anydecode": {"drafter": "iad", "max_match_ngram": 2}}
    assert "--logits-processors" not in cmd  # vLLM refuses logits processors together with speculation
    assert flag(cmd, "--port") == "8001"
    assert env[ENV_SPECULATIVE] == "iad"


@pytest.mark.parametrize("argv,proposer,k", [
    (["--decoder", "aded"], "ADEDProposer", 8),
    (["--decoder", "prompt_lookup", "--set", "num_speculative_tokens=3"], "PromptLookupProposer", 3),
    (["--decoder", "speculative", "--set", "drafter=aded"], "ADEDProposer", 8),
])
def test_each_drafter_gets_its_proposer_class(argv, proposer, k):
    cmd, _env = command(*argv)
    spec = json.loads(flag(cmd, "--speculative-config"))
    assert spec["model"] == f"anydecode.plugins.vllm.proposer.{proposer}" and spec["num_speculative_tokens"] == k


def test_transform_decoders_still_get_the_logits_processor():
    cmd, env = command("--decoder", "sample", "--set", "top_k=5")
    assert flag(cmd, "--logits-processors") == PROCESSOR and "--speculative-config" not in cmd
    assert section(cmd) == {"anydecode": {"top_k": "5", "decoder": "sample"}}
    assert ENV_SPECULATIVE not in env


def test_a_users_own_speculative_config_drops_the_logits_processor():
    own = json.dumps({"model": "anydecode.plugins.vllm.proposer.IADProposer", "num_speculative_tokens": 4})
    cmd, env = command("--speculative-config", own)
    assert "--logits-processors" not in cmd and flag(cmd, "--speculative-config") == own
    assert env[ENV_SPECULATIVE] == "custom"


def test_dry_run_prints_a_command_a_shell_can_run(capsys):
    assert main(["serve", MODEL, "--decoder", "iad", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert """--speculative-config '{"method": "custom_class", "model": "anydecode""" in out
    assert out.count("'") % 2 == 0 and "--logits-processors" not in out


@pytest.mark.parametrize("argv,expect", [
    (["--decoder", "iad", "--set", "num_speculative_tokens=0"], "num_speculative_tokens='0' must be an integer >= 1"),
    (["--decoder", "iad", "--set", "num_speculative_tokens=two"], "num_speculative_tokens='two' is not an integer"),
    (["--decoder", "iad", "--set", "max_match_gram=2"], "unknown setting 'max_match_gram' for drafter 'iad'"),
    (["--decoder", "aded", "--set", "branching=0"], "branching"),
    (["--decoder", "speculative", "--set", "drafter=nonesuch"], "unknown drafter 'nonesuch'"),
    (["--decoder", "speculative", "--set", "drafter=draft_model"], "cannot run as a vLLM proposer"),
    (["--decoder", "iadd"], "unknown decoder 'iadd' (did you mean 'iad'?)"),
    (["--decoder", "iad", "--speculative-config", "{}"], "sets --speculative-config itself"),
    (["--decoder", "asap", "--speculative-config", "{}"], "refuses custom logits processors together"),
])
def test_bad_settings_fail_before_vllm_starts(argv, expect, capsys):
    assert main(["serve", MODEL, *argv, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err


def post(app, path, body):
    import httpx

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
            return await client.post(path, content=json.dumps(body))

    return asyncio.run(go())


async def echo(scope, receive, send):
    """Stands for vLLM's app behind the middleware: answers with the body it received."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("path,body,status", [
    ("/v1/completions", {"prompt": "x", "vllm_xargs": {"decoder": "asap"}}, 400),
    ("/v1/chat/completions", {"messages": [], "vllm_xargs": {"decoder": "gcd", "grammar": "x"}}, 400),
    ("/v1/completions", {"prompt": "x"}, 200),
    ("/v1/completions", {"prompt": "x", "vllm_xargs": {"decoder": "none"}}, 200),
    ("/v1/completions", {"prompt": "x", "vllm_xargs": {"decoder": "iad"}}, 200),
    ("/v1/anydecode/completions", {"prompt": "x", "decoder": "dbs"}, 200),
])
def test_speculative_servers_refuse_transform_decoders_with_400(path, body, status):
    from anydecode.plugins.vllm.middleware import AnydecodeMiddleware, RequestGate
    from anydecode.plugins.vllm.settings import ServerSettings

    gate = RequestGate(ServerSettings(), speculative="iad")
    response = post(AnydecodeMiddleware(echo, gate=gate), path, body)
    assert response.status_code == status
    if status == 400:
        message = response.json()["error"]["message"]
        assert f"decoder {body['vllm_xargs']['decoder']!r} cannot run here" in message
        assert f"anydecode serve --decoder {body['vllm_xargs']['decoder']}" in message
    else:
        assert response.json() == body  # the body reached the app unchanged
