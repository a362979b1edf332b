"""The ``anydecode`` command: run any decoder on any runtime, list what is registered, check conformance."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from anydecode.algorithms.contracts.errors import AnydecodeError, ConfigError, RuntimeAdapterError, closest

EXIT_USAGE = 2


class UsageError(AnydecodeError):
    """A bad command line (exit code 2)."""


class Spinner:
    """A progress indicator on stderr while something slow (loading, converting) runs."""

    def __init__(self, message: str, enabled: bool):
        self.message = message
        self.enabled = enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = time.perf_counter()

    def update(self, message: str) -> None:
        self.message = message
        if self.enabled and not sys.stderr.isatty():
            print(f"anydecode: {message}", file=sys.stderr, flush=True)

    def __enter__(self) -> Spinner:
        if not self.enabled:
            return self
        if sys.stderr.isatty():  # elsewhere (logs, pipes) the loader's own progress lines say what happens
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        return self

    def _spin(self) -> None:
        frames = "|/-\\"
        i = 0
        while not self._stop.wait(0.1):
            elapsed = time.perf_counter() - self.started
            sys.stderr.write(f"\r{frames[i % 4]} {self.message} ({elapsed:.0f} s)\x1b[K")
            sys.stderr.flush()
            i += 1

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


# -- argument helpers --------------------------------------------------------------------------------------------
def parse_settings(pairs: Sequence[str]) -> dict[str, str]:
    settings: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set takes key=value, got {pair!r}")
        settings[key.strip()] = value
    return settings


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None and args.prompt_file is not None:
        raise UsageError("give --prompt or --prompt-file, not both")
    if args.prompt is not None:
        return args.prompt
    if args.prompt_file is not None:
        try:
            return Path(args.prompt_file).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read --prompt-file {args.prompt_file}: {exc.strerror}") from None
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("no prompt: give --prompt TEXT, --prompt-file F, or pipe text on stdin")
    return sys.stdin.read()


def grammar_settings(args: argparse.Namespace) -> dict[str, str]:
    """--grammar FILE|TEXT and --grammar-format into decoder settings (the format from a file's extension)."""
    if args.grammar is None:
        if args.grammar_format is not None:
            raise UsageError("--grammar-format needs --grammar")
        return {}
    text, fmt = args.grammar, args.grammar_format
    path = Path(args.grammar)
    if len(args.grammar) < 4096 and "\n" not in args.grammar and path.is_file():
        text = path.read_text()
        if fmt is None:
            fmt = {".lark": "lark", ".gbnf": "gbnf", ".json": "json_schema", ".regex": "regex"}.get(path.suffix)
            if fmt is None:
                raise UsageError(f"cannot tell the grammar format of {path} from its extension {path.suffix!r}: "
                                 "use .lark, .gbnf, .json or .regex, or give --grammar-format")
    out = {"grammar": text}
    if fmt is not None:
        out["grammar_format"] = fmt
    return out


def decoder_and_settings(args: argparse.Namespace) -> tuple[Any, Any]:
    from anydecode.registry import get_registry

    registry = get_registry()
    decoders = registry.decoders()
    if args.decoder not in decoders:
        raise UsageError(f"unknown decoder {args.decoder!r}{closest(args.decoder, decoders)}; "
                         f"registered: {', '.join(sorted(decoders))}")
    decoder = decoders[args.decoder]
    settings: dict[str, Any] = parse_settings(args.set or [])
    settings.update(grammar_settings(args))
    if args.seed is not None:
        if "seed" not in {f.name for f in decoder.config_cls.fields()}:
            raise UsageError(f"decoder {decoder.name!r} takes no seed; its settings: "
                             f"{decoder.config_cls.fields_summary()}")
        settings["seed"] = str(args.seed)
    config = decoder.configure(settings, from_strings=True)
    return decoder, config


# -- runtimes ----------------------------------------------------------------------------------------------------
def _text_streamer(tokenizer: Any, eos: set[int], on_text: Callable[[str], None] | None) -> Callable[[int, int], None]:
    """An ``on_token`` callback printing row 0's new text, holding back incomplete characters."""
    shown: list[int] = []
    printed = [""]

    def on_token(row: int, token: int) -> None:
        if on_text is None or row != 0 or token in eos:
            return
        shown.append(token)
        text = tokenizer.decode(shown, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            on_text(text[len(printed[0]):])
            printed[0] = text

    return on_token


def runtime_named(name: str) -> Any:
    """The registered runtime ``name`` (UsageError naming the registered ones)."""
    from anydecode.registry import get_registry

    runtimes = get_registry().items("runtime")
    if name not in runtimes:
        raise UsageError(f"unknown runtime {name!r}{closest(name, runtimes)}; available: {', '.join(sorted(runtimes))}")
    return runtimes[name]


def cmd_run(args: argparse.Namespace) -> int:
    from anydecode.algorithms.generation import generate_on

    runtime = runtime_named(args.runtime)
    if args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} must be >= 0")
    if args.n < 1:
        raise UsageError(f"-n {args.n} must be >= 1")
    decoder, config = decoder_and_settings(args)
    prompt = read_prompt(args)
    spinner = Spinner(f"loading the model ({runtime.name})", enabled=not args.quiet)
    on_text = None
    if not args.json:
        def on_text(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()
    with spinner:
        handle = runtime.load_for(args.model, [decoder], progress=spinner.update)
    try:
        tokenizer = runtime.tokenizer(handle)
        ids = runtime.encode(handle, prompt, chat=args.chat)
        if not ids:
            raise UsageError("the prompt is empty")
        eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        results = []
        for _ in range(args.n):
            stream = on_text if decoder.kind == "transform" else None
            out = generate_on(runtime, handle, [ids], decoder, config, max_new_tokens=args.max_new_tokens,
                              on_token=_text_streamer(tokenizer, eos, stream) if stream else None)
            for seq in out.sequences:
                if on_text is not None and decoder.kind == "loop":
                    on_text(seq.text)
                results.append({"text": seq.text, "token_ids": seq.token_ids, "finish_reason": seq.finish_reason,
                                "score": seq.score, "stats": out.stats})
            if on_text is not None and args.n > 1:
                on_text("\n")
    finally:
        runtime.close(handle)
    if args.json:
        first = results[0]
        doc = {"text": first["text"], "token_ids": first["token_ids"], "decoder": decoder.name,
               "runtime": runtime.name, "model": args.model, "stats": first["stats"],
               "finish_reason": first["finish_reason"], "config": config.as_dict()}
        if len(results) > 1:
            doc["sequences"] = [{k: r[k] for k in ("text", "token_ids", "finish_reason", "score")} for r in results]
        print(json.dumps(doc, default=str))
    else:
        if len(results) > 1 and results[0]["score"] is not None:
            print()
            for i, r in enumerate(results):
                print(f"[{i}] score={r['score']:.4f}  {r['text']!r}")
        else:
            print()
    return 0


def cmd_decoders(args: argparse.Namespace) -> int:
    from anydecode.registry import KINDS, get_registry

    registry = get_registry()
    doc: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        rows = []
        for name, item in sorted(registry.items(kind).items()):
            config_cls = getattr(item, "config_cls", None)
            row = {
                "name": name,
                "source": item.source,
                "kind": getattr(item, "kind", kind),
                "description": item.description,
                "fields": config_cls.describe_fields() if config_cls is not None else [],
            }
            if kind == "decoder":
                row["claim"] = item.claim
                row["claim_note"] = item.claim_note
            rows.append(row)
        doc[kind + "s"] = rows
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return 0
    for kind, rows in doc.items():
        print(f"{kind.replace('_', ' ')}:")
        if not rows:
            print("  (none)")
        for row in rows:
            print(f"  {row['name']:<16} [{row['kind']}] {row['description']}  (from {row['source']})")
            if "claim" in row:
                print(f"      claim: {row['claim'] or 'none'}: {row['claim_note']}")
            for f in row["fields"]:
                who = "request" if f.get("request") else "operator"
                if f.get("cap"):
                    who += f", cap {f['cap']}"
                print(f"      {f['name']}: {f['type']} = {f['default']!r}  [{who}] {f['help']}")
    return 0


def cmd_conformance(args: argparse.Namespace) -> int:
    from anydecode.conformance.suite import run_suite
    from anydecode.registry import get_registry

    if args.runtime != "toy":
        runtime_named(args.runtime)
    for name in args.decoder or []:
        get_registry().decoder(name)  # RegistryError naming the registered decoders
    report = run_suite(runtime=args.runtime, quick=args.quick, progress=not args.json and not args.quiet,
                       decoders=args.decoder, mutants=args.mutants, plot=args.plot, kernels=args.kernels,
                       native_only=args.native_only)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        for check in report["checks"]:
            mark = "SKIP" if check["skipped"] else ("PASS" if check["passed"] else "FAIL")
            label = f"{check['decoder']} [{check['claim']}] on {check['runtime']}: {check['name']}"
            print(f"{mark}  {label:<90} {check['skipped'] or check['detail']}")
        for mutant in report.get("mutants", []):
            mark = "KILLED  " if mutant["killed"] else "SURVIVED"
            print(f"{mark} planted bug: {mutant['mutant']} ({mutant['error'] or '; '.join(mutant['failures'][:1])})")
        if "kill_rate" in report:
            print(f"mutants killed: {100 * report['kill_rate']:.0f}%")
        if report["kernel_launches"]:
            ran = ", ".join(f"{k} x{n}" for k, n in sorted(report["kernel_launches"].items()))
            print(f"Triton kernels run ({report['kernels']} mode): {ran}")
        print(f"{report['passed']} passed, {report['failed']} failed, {report['skipped']} skipped "
              f"in {report['seconds']} s")
    return 0 if report["failed"] == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anydecode", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate text with any decoder on any runtime")
    run.add_argument("--runtime", default="llamacpp", help="a registered runtime: llamacpp (default), hf, vllm, toy, or "
                                                        "a plugin's (anydecode decoders lists them)")
    run.add_argument("--model", help="the runtime's model: a GGUF file (llamacpp, hf), a transformers folder (hf, vllm); "
                                      "default: the embedded model")
    run.add_argument("--decoder", default="greedy", help="a registered decoder (anydecode decoders lists them)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="a decoder setting (repeatable)")
    run.add_argument("--prompt", help="the prompt text")
    run.add_argument("--prompt-file", help="read the prompt from a file")
    run.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    run.add_argument("--max-new-tokens", type=int, default=128)
    run.add_argument("--seed", type=int, help="seed of the decoder's sampler")
    run.add_argument("--grammar", help="grammar file or text (grammar decoders)")
    run.add_argument("--grammar-format", help="lark, gbnf, json_schema or regex (default: from the extension)")
    run.add_argument("-n", type=int, default=1, help="number of samples, one after another")
    run.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    run.add_argument("--quiet", action="store_true", help="no progress messages")
    run.set_defaults(func=cmd_run)

    dec = sub.add_parser("decoders", help="list registered decoders, drafters, grammar engines and rewards")
    dec.add_argument("--json", action="store_true")
    dec.set_defaults(func=cmd_decoders)

    conf = sub.add_parser("conformance", help="check that each decoder does what it claims (anydecode decoders)")
    conf.add_argument("--decoder", action="append", help="check this decoder (repeatable; default: all)")
    conf.add_argument("--runtime", default="toy", help="toy (exact checks only), or a registered runtime (hf, "
                                                       "llamacpp, vllm, ...) for statistical checks through it too")
    conf.add_argument("--quick", action="store_true", help="smaller sample sizes and fewer cases")
    conf.add_argument("--mutants", action="store_true", help="plant each known bug and check it is caught")
    conf.add_argument("--plot", metavar="DIR", help="write a PNG: each check's value against its threshold")
    conf.add_argument("--kernels", choices=("auto", "triton", "reference"), default="auto",
                      help="the kernels' dispatcher mode: triton runs the Triton kernels even on CPU tensors "
                           "(interpreted, slow), reference the torch references everywhere (default: auto, "
                           "Triton on CUDA tensors)")
    conf.add_argument("--native-only", action="store_true",
                      help="only the checks of the runtime's own paths (vLLM: its sampler with anydecode's logits "
                           "processor, its speculative decoding with anydecode's proposers)")
    conf.add_argument("--json", action="store_true")
    conf.add_argument("--quiet", action="store_true")
    conf.set_defaults(func=cmd_conformance)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[Any], None]]:
    """Subcommands added by other modules of anydecode (bench, serve) when they are present."""
    import importlib

    out = []
    for module in ("anydecode.bench", "anydecode.serve"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        out.append(mod.add_subcommand)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, unknown = parser.parse_known_args(argv)
    args.argv = argv
    if unknown and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    debug = args.debug or os.environ.get("ANYDECODE_DEBUG") == "1"
    try:
        if getattr(args, "passthrough", False):  # anydecode serve hands unknown options to vLLM
            return int(args.func(args, unknown) or 0)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\nanydecode: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ConfigError, RuntimeAdapterError, AnydecodeError) as exc:
        if debug:
            raise
        print(f"anydecode: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
