"""Grammar specifications: the text and format of a grammar, format inference, and errors that point into it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from ..contracts.errors import ConfigError

#: formats every grammar engine understands a subset of
FORMATS = ("lark", "gbnf", "json_schema", "regex")

#: file extensions and the format each implies (``--grammar FILE``)
EXTENSIONS = {
    ".lark": "lark",
    ".gbnf": "gbnf",
    ".ebnf": "gbnf",
    ".json": "json_schema",
    ".regex": "regex",
    ".re": "regex",
}


class GrammarError(ConfigError):
    """A grammar that does not parse, has an empty language, or that an engine does not support.

    ``line`` and ``column`` (1-based) point at the problem when the grammar does not parse.
    """

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.line = line
        self.column = column


def line_column(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of character ``offset`` in ``text``."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    start = text.rfind("\n", 0, offset) + 1
    return line, offset - start + 1


def excerpt(text: str, line: int, column: int) -> str:
    """The source line and a caret under ``column``."""
    lines = text.splitlines() or [""]
    src = lines[line - 1] if 0 < line <= len(lines) else ""
    return f"    {src}\n    {' ' * (column - 1)}^"


def parse_error(fmt: str, text: str, line: int, column: int, reason: str) -> GrammarError:
    """A GrammarError for a grammar that does not parse, naming the line and column."""
    reason = reason.strip().splitlines()[0] if reason.strip() else "syntax error"
    return GrammarError(
        f"{fmt} grammar does not parse at line {line}, column {column}: {reason}\n{excerpt(text, line, column)}",
        line=line, column=column,
    )


@dataclasses.dataclass(frozen=True)
class GrammarSpec:
    """A grammar: its source text and format (one of :data:`FORMATS`)."""

    text: str
    format: str

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"unknown grammar format {self.format!r}; accepted: {', '.join(FORMATS)}")
        if not self.text.strip():
            raise GrammarError(f"the {self.format} grammar is empty: give grammar text or a file path")

    @property
    def key(self) -> str:
        """A stable digest of format and text (cache and ASAp-state key)."""
        return hashlib.sha256(f"{self.format}\0{self.text}".encode()).hexdigest()[:32]

    def json_object(self) -> dict:
        """The JSON schema as an object, or a GrammarError naming the line and column of bad JSON."""
        try:
            value = json.loads(self.text)
        except json.JSONDecodeError as exc:
            raise parse_error("json_schema", self.text, exc.lineno, exc.colno, exc.msg) from None
        if not isinstance(value, (dict, bool)):
            raise GrammarError(f"a JSON schema must be an object or a boolean, got {type(value).__name__}")
        return value  # type: ignore[return-value]


def infer_format(text: str) -> str:
    """Guess the format of grammar text: a JSON object is a schema, ``::=`` means GBNF, otherwise Lark."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            if isinstance(json.loads(stripped), dict):
                return "json_schema"
        except json.JSONDecodeError:
            pass
    if "::=" in text:
        return "gbnf"
    return "lark"


def grammar_spec(grammar: str | dict | GrammarSpec, format: str | None = None) -> GrammarSpec:
    """Build a GrammarSpec from grammar text or a JSON-schema dict.

    A string is always grammar text, never a path: grammar settings may come from a server's clients, and a file is
    read only where the operator asks for one (:func:`grammar_file_spec`, the ``grammar_file`` setting).
    """
    if isinstance(grammar, GrammarSpec):
        if format is not None and format != grammar.format:
            raise ConfigError(f"grammar format {format!r} does not match the spec's {grammar.format!r}")
        return grammar
    if format is not None and format not in FORMATS:
        raise ConfigError(f"unknown grammar format {format!r}; accepted: {', '.join(FORMATS)}")
    if isinstance(grammar, dict):
        return GrammarSpec(json.dumps(grammar, sort_keys=True), format or "json_schema")
    if not isinstance(grammar, str):
        raise ConfigError(f"grammar must be text, a file path or a JSON-schema dict, got {type(grammar).__name__}")
    return GrammarSpec(grammar, format or infer_format(grammar))


def grammar_file_spec(path: str | os.PathLike[str], format: str | None = None) -> GrammarSpec:
    """The grammar in a file (an operator setting), its format from ``format`` or the file's extension."""
    file = Path(os.path.expanduser(str(path)))
    if format is None:
        suffix = file.suffix.lower()
        if suffix not in EXTENSIONS:
            raise ConfigError(
                f"cannot tell the format of grammar file {str(file)!r} from its extension {suffix!r}; "
                f"known: {', '.join(f'{k} ({v})' for k, v in EXTENSIONS.items())}; or pass grammar_format"
            )
        format = EXTENSIONS[suffix]
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read grammar_file {str(file)!r}: {exc}") from None
    return GrammarSpec(text, format)
