"""Holes the hostile-client module found (tests/integration/test_serving_hostile.py), pinned without a server.

* A request without a grammar on a grammar-decoder server was answered by plain sampling with its other settings
  silently dropped: ``asap_state``, ``grammar_file``, ``function`` got HTTP 200 instead of a refusal.
* ``POST /v1/anydecode/completions`` ran grammar decoders (``gcd``, ``asap``) with the grammar compiled in the API
  process, without the checker's deadline, and ignored the operator's ``asap_scope``.
* ``anydecode serve --decoder asap`` refused the settings of the endpoint's search decoders (``--set function=...``),
  so an operator could not enable a callable reward there.
* After a pathological grammar, the replacement checker process spent its first deadline setting up its engine, so
  the next honest grammar was refused too, and the refusal was remembered.
"""

import asyncio

import pytest

from anydecode.algorithms.contracts.errors import ConfigError
from anydecode.algorithms.contracts.serving import RequestSettingError
from anydecode.cli import main
from anydecode.plugins.vllm.endpoint import AnydecodeEndpoint
from anydecode.plugins.vllm.settings import ServerSettings, plan_request

ASAP_SERVER = ServerSettings.from_section({"decoder": "asap"})


@pytest.mark.parametrize("xargs,error,message", [
    ({"asap_state": "/tmp/x.json"}, RequestSettingError, "'asap_state' of decoder 'asap' is an operator setting"),
    ({"grammar_file": "/etc/passwd"}, RequestSettingError, "'grammar_file' of decoder 'asap' is an operator"),
    ({"engine": "outlines"}, RequestSettingError, "'engine' of decoder 'asap' is an operator setting"),
    ({"asap_max_nodes": 1}, RequestSettingError, "'asap_max_nodes' of decoder 'asap' is an operator setting"),
    ({"reward": "callable", "function": "os:system"}, RequestSettingError, "reward 'callable' is not enabled"),
    ({"function": "os:system"}, ConfigError, "unknown setting 'function' for decoder 'asap'"),
    ({"num_samples": 1000}, ConfigError, "unknown setting 'num_samples'"),
])
def test_a_grammarless_request_on_a_grammar_server_is_still_checked(xargs, error, message):
    with pytest.raises(error, match=message):
        plan_request(xargs, ASAP_SERVER)


def test_a_grammarless_request_with_request_settings_is_still_plain_sampling():
    assert plan_request({"temperature": 0.5, "seed": 3}, ASAP_SERVER) is None
    refusing = ServerSettings.from_section({"decoder": "asap", "serving": {"plain_requests": "refuse"}})
    with pytest.raises(RequestSettingError, match="refuses requests without a grammar"):
        plan_request({"temperature": 0.5}, refusing)
    # the operator's own code (an offline LLM) is trusted, but an unknown name is still an error, not dropped
    assert plan_request({"asap_max_nodes": 5}, ASAP_SERVER, trusted=True) is None
    with pytest.raises(ConfigError, match="unknown setting 'nonesuch'"):
        plan_request({"nonesuch": 1}, ASAP_SERVER, trusted=True)


def test_serve_takes_endpoint_decoder_settings_beside_a_transform_decoder(capsys):
    argv = ["serve", "/models/smol", "--decoder", "asap", "--set", "rewards=callable",
            "--set", "function=tests.data.hostile_rewards:exit_now", "--dry-run"]
    assert main(argv) == 0
    assert "tests.data.hostile_rewards:exit_now" in capsys.readouterr().out
    assert main(["serve", "/models/smol", "--decoder", "asap", "--set", "functoin=x", "--dry-run"]) == 2
    assert "--set functoin: no registered decoder has this setting" in capsys.readouterr().err


def endpoint(section):
    ep = AnydecodeEndpoint()
    ep.server = ServerSettings.from_section(section)
    return ep


GRAMMAR_BODY = {"prompt": "hi", "decoder": "asap", "grammar": "(yes|no)", "grammar_format": "regex",
                "max_tokens": 2}


@pytest.mark.parametrize("scope,private,tenant", [("server", False, None), ("request", True, None),
                                                  ("api_key", False, "tenant-1")])
def test_the_endpoint_keeps_asap_state_where_the_operator_says(scope, private, tenant):
    ep = endpoint({"decoder": "asap", "serving": {"asap_scope": scope}})
    config = ep.plan(GRAMMAR_BODY, tenant="tenant-1")[-1]
    assert config.asap_private is private and config.asap_tenant == tenant


class RefusingChecker:
    def __init__(self):
        self.checked = []

    def check(self, decoder, settings):
        self.checked.append((decoder, settings["grammar"]))
        return "the grammar did not compile within 5 s (grammar_seconds)"


def test_the_endpoint_checks_a_grammar_under_the_deadline_before_any_engine_work(monkeypatch):
    from anydecode.plugins.vllm import offline

    monkeypatch.setattr(offline, "run_on_engine", lambda *a, **k: pytest.fail("the search ran"))
    ep = endpoint({"decoder": "asap"})
    ep.checker = RefusingChecker()
    with pytest.raises(ConfigError, match="grammar_seconds"):
        asyncio.run(ep.complete(dict(GRAMMAR_BODY), asyncio.new_event_loop()))
    assert ep.checker.checked == [("asap", "(yes|no)")]


# -- the grammar checker -------------------------------------------------------------------------------------------
class SilentConnection:
    """A checker process that never answers (a grammar compiling past the deadline)."""

    def __init__(self):
        self.sent = []

    def send(self, item):
        self.sent.append(item)

    def poll(self, timeout):
        return False


def test_a_deadline_refusal_is_not_remembered(monkeypatch):
    """How long a compile takes depends on the load at the time: a grammar refused for the deadline is checked
    again next time (found live: after a refusal, the fresh checker's first compile ran past the deadline and the
    refusal of a trivial grammar was remembered for good)."""
    from anydecode.algorithms.contracts.serving import Limits
    from anydecode.plugins.vllm.grammar_check import GrammarChecker

    checker = GrammarChecker("tok", Limits(grammar_seconds=0.01))
    conn = SilentConnection()
    monkeypatch.setattr(checker, "_spawn", lambda: setattr(checker, "_conn", conn))
    monkeypatch.setattr(checker, "_wait_ready", lambda: None)
    monkeypatch.setattr(checker, "_kill", lambda: None)
    for _ in range(2):
        assert "grammar_seconds" in checker.check("gcd", {"grammar": "(a|b)*a(a|b){25}"})
    assert len(conn.sent) == 2 and not checker.verdicts and checker.counts["timeouts"] == 2


def test_each_checker_process_warms_its_engine_before_it_reports_ready(monkeypatch):
    from anydecode.algorithms.contracts.serving import Limits
    from anydecode.plugins.vllm.grammar_check import GrammarChecker

    warm = ("gcd", {"grammar": "(a|b)", "grammar_format": "regex", "engine": "outlines"})
    checker = GrammarChecker("tok", Limits(), warm)
    started = []

    class FakeProcess:
        def __init__(self, target, args, **kw):
            started.append(args[1:])

        def start(self):
            pass

    monkeypatch.setattr(checker._mp, "Process", FakeProcess)
    checker._spawn()
    assert started == [("tok", warm)]
