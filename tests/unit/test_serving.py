"""The serving trust boundary without a server: which settings a request may give, the operator's policy, the
request gate's rewriting, and ``anydecode serve``'s command (the live server: tests/integration/test_serving_hostile.py).
"""

import asyncio
import dataclasses
import json

import pytest

from anydecode.algorithms.contracts.config import DecoderConfig, config_field
from anydecode.algorithms.contracts.errors import ConfigError
from anydecode.algorithms.contracts.serving import Limits, RequestSettingError, ServingPolicy, check_request
from anydecode.algorithms.search.rewards import RewardError, RewardInput, checked_scores
from anydecode.cli import build_parser, main
from anydecode.plugins.vllm import settings as vsettings
from anydecode.plugins.vllm.middleware import BadRequest, RequestGate, grammar_from_fields
from anydecode.plugins.vllm.settings import ServerSettings, plan_request
from anydecode.registry import get_registry
from anydecode.serve import DEFAULT_HOST, build_command, split_model


@dataclasses.dataclass(frozen=True)
class NewConfig(DecoderConfig):
    declared: int = config_field(1, ge=0, request=True, cap="beams")
    undeclared: str = config_field("x")


# -- the allowlist lives next to the fields --------------------------------------------------------------------------
def test_a_new_field_is_request_settable_only_when_declared_so():
    assert NewConfig.request_fields() == {"declared": "beams"}
    described = {d["name"]: d for d in NewConfig.describe_fields()}
    assert described["declared"]["request"] is True and described["declared"]["cap"] == "beams"
    assert described["undeclared"]["request"] is False
    policy = ServingPolicy()
    check_request("new", NewConfig, {"declared": 3}, {"declared": 3}, policy)
    with pytest.raises(RequestSettingError, match="'undeclared' of decoder 'new' is an operator setting"):
        check_request("new", NewConfig, {"undeclared": "y"}, {"undeclared": "y"}, policy)
    opened = ServingPolicy.from_mapping({"request_allow": "undeclared"})
    check_request("new", NewConfig, {"undeclared": "y"}, {"undeclared": "y"}, opened)


def test_a_cap_needs_a_request_settable_field():
    with pytest.raises(ValueError, match="cap='beams' only applies"):
        config_field(1, cap="beams")


def test_widths_are_capped_by_the_operators_limits():
    policy = ServingPolicy.from_mapping({"beams": 4})
    check_request("new", NewConfig, {"declared": "4"}, {}, policy)
    with pytest.raises(RequestSettingError, match=r"declared=5 is over this server's limit: at most 4 \(beams\)"):
        check_request("new", NewConfig, {"declared": 5}, {}, policy)


@pytest.mark.parametrize("decoder,setting,value", [
    ("asap", "asap_state", "/tmp/x.json"),
    ("asap", "asap_max_nodes", 1),
    ("asap", "engine", "outlines"),
    ("gcd", "grammar_file", "/etc/passwd"),
    ("best_of_n", "function", "os:system"),
    ("best_of_n", "reward_model_path", "/models/rm"),
    ("deal", "pattern", "(a+)+$"),
    ("speculative", "drafter", "draft_model"),
])
def test_settings_that_name_files_code_or_engines_are_operator_only(decoder, setting, value):
    dec = get_registry().decoder(decoder)
    with pytest.raises(RequestSettingError, match=f"{setting!r} of decoder {decoder!r} is an operator setting"):
        check_request(decoder, dec.config_cls, {setting: value}, {setting: value}, ServingPolicy())


def test_every_builtin_field_a_request_may_set_is_a_choice_of_text_numbers_or_names():
    """What built-in decoders open to requests, listed so that opening a field is a visible decision."""
    opened = {name: set(dec.config_cls.request_fields()) for name, dec in get_registry().decoders().items()}
    sampling = {"temperature", "top_k", "top_p", "min_p", "seed"}
    assert opened["sample"] == sampling
    assert opened["gcd"] == opened["asap"] == sampling | {"grammar", "grammar_format"}
    assert opened["beam"] == {"num_beams", "length_penalty", "early_stopping", "num_return_sequences"}
    assert "function" not in opened["best_of_n"] and "reward_model_path" not in opened["deal"]
    assert opened["iad"] == {"temperature"} | sampling


def test_rewards_only_among_those_the_operator_enabled():
    dec = get_registry().decoder("best_of_n")
    with pytest.raises(RequestSettingError, match="reward 'callable' is not enabled"):
        check_request("best_of_n", dec.config_cls, {"reward": "callable"}, {"reward": "callable"}, ServingPolicy())
    policy = ServingPolicy.from_mapping({"rewards": ["keywords"]})
    values = {"reward": "keywords", "keywords": "sea"}
    check_request("best_of_n", dec.config_cls, values, values, policy)
    with pytest.raises(RequestSettingError, match="reward 'length' is not enabled"):
        check_request("best_of_n", dec.config_cls, {"reward": "keywords,length"}, {}, policy)


def test_grammar_text_is_bounded_and_decoders_can_be_withheld():
    dec = get_registry().decoder("gcd")
    policy = ServingPolicy.from_mapping({"grammar_bytes": 10, "decoders": "sample"})
    with pytest.raises(RequestSettingError, match="decoder 'gcd' is not offered"):
        check_request("gcd", dec.config_cls, {}, {}, policy)
    policy = ServingPolicy.from_mapping({"grammar_bytes": 10})
    with pytest.raises(RequestSettingError, match="grammar of 11 bytes is over this server's limit of 10"):
        check_request("gcd", dec.config_cls, {"grammar": "a" * 11}, {}, policy)


@pytest.mark.parametrize("values,message", [
    ({"beems": 3}, "unknown serving setting 'beems'"),
    ({"asap_scope": "global"}, "asap_scope='global' is not one of server, api_key, request"),
    ({"plain_requests": "maybe"}, "plain_requests='maybe'"),
    ({"samples": 0}, "limit samples=0 must be a positive number"),
    ({"tokens": "many"}, "limit tokens='many' is not a whole number"),
    ({"trust_extra_args": "perhaps"}, "trust_extra_args='perhaps' must be true or false"),
])
def test_bad_serving_settings_name_the_problem(values, message):
    with pytest.raises(ConfigError, match=message):
        ServingPolicy.from_mapping(values)


def test_a_policy_round_trips_through_its_json_form():
    policy = ServingPolicy.from_mapping({"rewards": "keywords", "asap_scope": "api_key", "beams": 8,
                                         "grammar_seconds": 2.5})
    assert ServingPolicy.from_mapping(json.loads(json.dumps(policy.as_mapping()))) == policy
    assert Limits().grammar_seconds == 5.0 and policy.limits.beams == 8


def test_a_reward_that_exits_fails_its_request_only():
    class Exits:
        name = "exits"

        def score_batch(self, items):
            raise SystemExit(3)

    with pytest.raises(RewardError, match="reward 'exits' failed on text 'hi': SystemExit"):
        checked_scores(Exits(), [RewardInput("p", "hi")])


# -- a request on a vLLM server ----------------------------------------------------------------------------------------
ASAP_SERVER = ServerSettings.from_section({"decoder": "asap", "serving": {"rewards": ["keywords"]}})


def test_a_plain_request_on_a_grammar_server_is_left_to_plain_sampling():
    assert plan_request(None, ASAP_SERVER) is None
    assert plan_request({"temperature": 0.5}, ASAP_SERVER) is None
    refusing = ServerSettings.from_section({"decoder": "asap", "serving": {"plain_requests": "refuse"}})
    with pytest.raises(RequestSettingError, match="refuses requests without a grammar"):
        plan_request({}, refusing)
    with pytest.raises(ConfigError, match="decoder 'asap' needs a grammar"):
        plan_request({"decoder": "asap"}, ASAP_SERVER)


def test_a_request_may_choose_another_decoder_and_gets_only_the_defaults_that_fit_it():
    server = ServerSettings.from_section({"decoder": "asap", "grammar": "a|b", "grammar_format": "regex",
                                          "top_k": 3})
    plan = plan_request({"decoder": "sample", "temperature": "0.5"}, server)
    assert plan.decoder.name == "sample" and plan.config.temperature == 0.5 and plan.config.top_k == 3
    plan = plan_request({}, server)
    assert plan.decoder.name == "asap" and plan.config.grammar == "a|b"


def test_reserved_and_forged_keys_are_refused(monkeypatch):
    grammar = {"grammar": "a|b", "grammar_format": "regex"}
    with pytest.raises(RequestSettingError, match="'_anydecode_x' is reserved"):
        plan_request({**grammar, "_anydecode_x": 1}, ASAP_SERVER)
    monkeypatch.setenv(vsettings.ENV_SECRET, "s3cret")
    with pytest.raises(RequestSettingError, match="reserved for anydecode's own middleware"):
        plan_request({**grammar, vsettings.TENANT_KEY: "deadbeef.0000"}, ASAP_SERVER)
    with pytest.raises(ConfigError, match="must be a flat value"):
        plan_request({**grammar, "seed": [1, 2]}, ASAP_SERVER)


def test_asap_scope_decides_who_shares_learned_state(monkeypatch):
    monkeypatch.setenv(vsettings.ENV_SECRET, "s3cret")
    grammar = {"grammar": "a|b", "grammar_format": "regex"}
    per_key = ServerSettings.from_section({"decoder": "asap", "serving": {"asap_scope": "api_key"}})
    alice, bob = vsettings.sign_tenant("alice-key"), vsettings.sign_tenant("bob-key")
    plan_a = plan_request({**grammar, vsettings.TENANT_KEY: alice}, per_key)
    plan_b = plan_request({**grammar, vsettings.TENANT_KEY: bob}, per_key)
    assert plan_a.config.asap_tenant != plan_b.config.asap_tenant and plan_a.cache_key() != plan_b.cache_key()
    per_request = ServerSettings.from_section({"decoder": "asap", "serving": {"asap_scope": "request"}})
    plan = plan_request(grammar, per_request)
    assert plan.config.asap_private and not plan.shareable
    shared = plan_request(grammar, ASAP_SERVER)
    assert shared.shareable and shared.config.asap_tenant is None and not shared.config.asap_private


def test_trusting_extra_args_is_the_operators_choice():
    trusting = ServerSettings.from_section({"serving": {"trust_extra_args": True}})
    plan = plan_request({"decoder": "asap", "grammar": "a", "engine": "outlines"}, trusting)
    assert plan.config.engine == "outlines"
    with pytest.raises(RequestSettingError):
        plan_request({"decoder": "asap", "grammar": "a", "engine": "outlines"}, ServerSettings())


# -- the request gate ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body,expected", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "integer"}}}},
     ('{"type": "integer"}', "json_schema")),
    ({"response_format": {"type": "json_object"}}, ('{"type": "object"}', "json_schema")),
    ({"response_format": {"type": "text"}}, None),
    ({"structured_outputs": {"regex": "[0-9]+"}}, ("[0-9]+", "regex")),
    ({"structured_outputs": {"grammar": 'root ::= "a"'}}, ('root ::= "a"', "gbnf")),
    ({"structured_outputs": {"grammar": 'start: "a"'}}, ('start: "a"', "lark")),
    ({"structured_outputs": {"choice": ["yes", 'n"o']}}, ('start: "yes" | "n\\"o"', "lark")),
    ({"structured_outputs": {"json": {"type": "string"}}}, ('{"type": "string"}', "json_schema")),
])
def test_openai_grammar_fields_become_anydecode_grammars(body, expected):
    assert grammar_from_fields(body) == expected


@pytest.mark.parametrize("body,message", [
    ({"response_format": {"type": "structural_tag"}}, "not supported"),
    ({"structured_outputs": {"structural_tag": "{}"}}, "not supported"),
    ({"structured_outputs": {"choice": []}}, "non-empty list"),
    ({"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}}, "give one grammar"),
])
def test_grammar_fields_anydecode_cannot_apply_are_refused(body, message):
    with pytest.raises(BadRequest, match=message):
        grammar_from_fields(body)


def test_the_gate_moves_the_grammar_to_anydecode_on_a_grammar_server(monkeypatch):
    gate = RequestGate(ASAP_SERVER)
    body = {"prompt": "x", "structured_outputs": {"regex": "a|b"}, "vllm_xargs": {"temperature": 0.5}}
    out = gate.rewrite(body, {"headers": []})
    assert "structured_outputs" not in out
    assert out["vllm_xargs"] == {"temperature": 0.5, "grammar": "a|b", "grammar_format": "regex"}
    asyncio.run(gate.check(out))  # no checker process here: validate_params compiles it
    untouched = {"prompt": "x", "structured_outputs": {"regex": "a"}, "vllm_xargs": {"decoder": "none"}}
    assert gate.rewrite(untouched, {"headers": []}) == untouched
    assert RequestGate(ServerSettings.from_section({"decoder": "sample"})).rewrite(
        {"prompt": "x", "response_format": {"type": "json_object"}}, {"headers": []}) == \
        {"prompt": "x", "response_format": {"type": "json_object"}}
    with pytest.raises(BadRequest, match="give the grammar once"):
        gate.rewrite({"structured_outputs": {"regex": "a"}, "vllm_xargs": {"grammar": "b"}}, {"headers": []})
    with pytest.raises(BadRequest, match="reserved"):
        gate.rewrite({"vllm_xargs": {"_anydecode_tenant": "x.y"}}, {"headers": []})


def test_the_gate_signs_each_api_keys_tenant(monkeypatch):
    monkeypatch.setenv(vsettings.ENV_SECRET, "s3cret")
    server = ServerSettings.from_section({"decoder": "asap", "serving": {"asap_scope": "api_key"}})
    gate = RequestGate(server)
    scope = {"headers": [(b"authorization", b"Bearer alice-key")]}
    out = gate.rewrite({"prompt": "x", "vllm_xargs": {"grammar": "a"}}, scope)
    signed = out["vllm_xargs"][vsettings.TENANT_KEY]
    assert vsettings.verify_tenant(signed) == signed.split(".")[0]
    assert signed == vsettings.sign_tenant("alice-key") != vsettings.sign_tenant("bob-key")
    monkeypatch.setenv(vsettings.ENV_SECRET, "another-server")
    assert vsettings.verify_tenant(signed) is None


# -- anydecode serve -------------------------------------------------------------------------------------------------
def command(*argv):
    argv = ["serve", "/models/smol", *argv]
    args, passthrough = build_parser().parse_known_args(argv)
    args.argv = argv
    args.model, passthrough = split_model(argv, passthrough)
    return build_command(args, passthrough)


def test_serve_binds_loopback_unless_told_otherwise():
    cmd, _ = command("--decoder", "asap")
    assert cmd[cmd.index("--host") + 1] == DEFAULT_HOST == "127.0.0.1"
    cmd, _ = command("--decoder", "asap", "--host", "0.0.0.0", "--api-key", "k")
    assert cmd.count("--host") == 1 and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--api-key") + 1] == "k"


def test_serve_splits_operator_settings_from_the_serving_policy(tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "integer"}')
    cmd, env = command("--decoder", "asap", "--set", f"grammar_file={schema}", "--set", "beams=4",
                       "--set", "asap_scope=api_key", "--set", "rewards=keywords")
    section = json.loads(cmd[cmd.index("--additional-config") + 1])["anydecode"]
    assert section["grammar"] == '{"type": "integer"}' and section["grammar_format"] == "json_schema"
    assert "grammar_file" not in section  # read here, by the operator's command; the server never opens it
    assert section["serving"]["beams"] == 4 and section["serving"]["asap_scope"] == "api_key"
    assert json.loads(env[vsettings.ENV_SETTINGS]) == section and len(env[vsettings.ENV_SECRET]) == 64
    cmd, _ = command("--set", "reward=keywords", "--set", "keywords=sea")  # endpoint defaults, no --decoder
    section = json.loads(cmd[cmd.index("--additional-config") + 1])["anydecode"]
    assert section["serving"]["rewards"] == ["keywords"] and section["keywords"] == "sea"


@pytest.mark.parametrize("argv,message", [
    (["--set", "beems=3"], "--set beems: no registered decoder has this setting"),
    (["--decoder", "asap", "--set", "asap_scope=everyone"], "asap_scope='everyone'"),
    (["--decoder", "dbs"], "--decoder dbs is a loop decoder"),
    (["--decoder", "asap", "--additional-config", "{}"], "writes --additional-config itself"),
])
def test_serve_refuses_bad_operator_settings_before_vllm_starts(argv, message, capsys):
    assert main(["serve", "/models/smol", *argv, "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_anydecode_decoders_says_who_may_set_each_field(capsys):
    assert main(["decoders"]) == 0
    out = capsys.readouterr().out
    assert "asap_state: str | none = None  [operator]" in out
    assert "num_beams: int = 4  [request, cap beams]" in out
