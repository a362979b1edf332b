"""Typed, self-validating decoder configs.

A config is a frozen dataclass whose fields carry their bounds in metadata (``config_field``). ``from_mapping``
builds one from keyword arguments or from CLI/HTTP strings (``"0.7"``, ``"true"``, ``"a,b,c"``), and every
failure names the field, the value given and what is accepted.

Every field also says who may set it (DESIGN.md, "Who may set what"). Operator settings come from code running in
the process (the Python API, ``anydecode run``, ``anydecode serve --set``, ``--additional-config``) and may name
files, Python objects and engines. Request settings come from whoever can reach a server (``vllm_xargs``,
``SamplingParams.extra_args``, the ``/v1/anydecode/completions`` body): a request may set a field only when the
field is declared with ``request=True``, and a width (beams, samples, lookahead) only up to the operator's cap
named by ``cap=``. The default is no: a new field is operator-only until its author declares otherwise.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError, closest

C = TypeVar("C", bound="DecoderConfig")

_MISSING = dataclasses.MISSING


def config_field(
    default: Any = _MISSING,
    *,
    help: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    default_factory: Any = _MISSING,
    request: bool = False,
    cap: str | None = None,
) -> Any:
    """A dataclass field with bounds that ``DecoderConfig.validate`` checks.

    ``request=True`` lets a server's clients set the field (the default is operator-only); ``cap`` names the
    serving limit a request's value must stay under (``anydecode.serving.Limits``: ``beams``, ``samples``, ...).
    """
    if cap is not None and not request:
        raise ValueError(f"cap={cap!r} only applies to a field a request may set (request=True)")
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "request": request, "cap": cap}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, from_string: bool) -> Any:
    """Convert ``value`` to type ``tp`` or raise TypeError/ValueError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (from_string and isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, from_string)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise TypeError("; ".join(errors) or f"expected {_type_name(tp)}")
    if origin in (tuple, list):
        (item_tp, *_rest) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):  # "a,b,c" from the CLI or an HTTP field
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        items = [_coerce(item_tp, v, from_string or isinstance(v, str)) if item_tp is not Any else v for v in value]
        return tuple(items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_string and isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        raise TypeError(f"expected a bool, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise TypeError(f"expected an int, got bool {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if from_string and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise TypeError(f"expected an int, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise TypeError(f"expected a float, got bool {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if from_string and isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise TypeError(f"expected a float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"expected a string, got {type(value).__name__} {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Base of every decoder, drafter and reward config.

    ``components`` is the lookup the config resolves the drafters, grammar engines and rewards it names through
    (handed in by whoever builds it: the registry for registered decoders; None: the built-in components only).
    """

    #: what the config belongs to, used in error messages
    owner: ClassVar[str] = "decoder"

    components: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # -- introspection -------------------------------------------------------------------------------------------
    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in cls.fields()}

    @classmethod
    def describe_fields(cls) -> list[dict[str, Any]]:
        """Name, type, default and help of each field (``anydecode decoders`` prints these)."""
        types_ = cls.field_types()
        out = []
        for f in cls.fields():
            default = f.default if f.default is not _MISSING else (
                f.default_factory() if f.default_factory is not _MISSING else None
            )
            out.append({
                "name": f.name,
                "type": _type_name(types_[f.name]),
                "default": list(default) if isinstance(default, tuple) else default,
                "help": f.metadata.get("help", ""),
                "request": bool(f.metadata.get("request", False)),
                "cap": f.metadata.get("cap"),
            })
        return out

    @classmethod
    def setting_fields(cls, values: Mapping[str, Any] | None = None,
                       components: Any = None) -> dict[str, dataclasses.Field]:
        """Every field that ``values`` may populate, by name: this config's own fields, and in configs that hand
        settings on to components (a speculative decoder's drafter, a search decoder's rewards), theirs.

        The trust boundary reads ``request`` and ``cap`` from these fields' metadata.
        """
        return {f.name: f for f in cls.fields()}

    @classmethod
    def request_fields(cls, values: Mapping[str, Any] | None = None,
                       components: Any = None) -> dict[str, str | None]:
        """The settings a request may give, each with the name of its cap (None: no cap)."""
        return {name: f.metadata.get("cap") for name, f in cls.setting_fields(values, components).items()
                if f.metadata.get("request", False)}

    @classmethod
    def fields_summary(cls) -> str:
        parts = [f"{d['name']}: {d['type']} = {d['default']!r}" for d in cls.describe_fields()]
        return ", ".join(parts) if parts else "(no settings)"

    # -- construction --------------------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls: type[C], values: Mapping[str, Any] | None = None, *, from_strings: bool = False,
                     name: str | None = None, components: Any = None) -> C:
        """Build and validate a config; unknown keys and ill-typed values raise ConfigError naming the fields.

        ``components`` (a :class:`~.component.Components` lookup) resolves the component names the config holds.
        """
        config = cls._build(values, from_strings=from_strings, name=name, components=components)
        if components is not None:
            object.__setattr__(config, "components", components)
        label = f"{cls.owner} {name!r}" if name else cls.owner
        try:
            config.resolve()
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None
        return config

    def resolve(self) -> None:
        """Check the component names the config holds against ``self.components`` (configs that name components
        override it); called by ``from_mapping`` once the config is built."""

    @classmethod
    def _build(cls: type[C], values: Mapping[str, Any] | None = None, *, from_strings: bool = False,
               name: str | None = None, components: Any = None) -> C:
        values = dict(values or {})
        label = f"{cls.owner} {name!r}" if name else cls.owner
        types_ = cls.field_types()
        unknown = [k for k in values if k not in types_]
        if unknown:
            key = unknown[0]
            raise ConfigError(
                f"unknown setting {key!r} for {label}{closest(key, types_)}; "
                f"accepted: {cls.fields_summary()}"
            )
        kwargs = {}
        for key, raw in values.items():
            tp = types_[key]
            try:
                kwargs[key] = _coerce(tp, raw, from_strings or isinstance(raw, str))
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"setting {key}={raw!r} for {label} is not a {_type_name(tp)} ({exc}); "
                    f"accepted: {cls.fields_summary()}"
                ) from None
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None

    def rows_per_prompt(self) -> int:
        """Sequences a decoder with these settings holds side by side per prompt (beams, samples, candidates);
        servers bound a request's memory with it."""
        return 1

    def replace(self: C, **changes: Any) -> C:
        return type(self).from_mapping({**self.as_dict(), **changes}, components=self.components)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in self.fields()}

    # -- validation ----------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the bounds in each field's metadata; subclasses add cross-field checks and call super()."""
        for f in self.fields():
            value = getattr(self, f.name)
            if value is None:
                continue
            meta = f.metadata
            checks = (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                      ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<"))
            for key, ok, sym in checks:
                bound = meta.get(key)
                if bound is not None and isinstance(value, (int, float)) and not ok(value, bound):
                    raise ConfigError(f"{f.name}={value!r} is out of range: must be {sym} {bound}")
            choices = meta.get("choices")
            if choices is not None and value not in choices:
                raise ConfigError(f"{f.name}={value!r} is not one of {', '.join(map(repr, choices))}")


@dataclasses.dataclass(frozen=True)
class SamplingConfig(DecoderConfig):
    """Sampling settings, applied in this order: temperature, top_k, top_p, min_p (as transformers does).

    ``temperature=0`` means greedy (argmax).
    """

    temperature: float = config_field(1.0, ge=0.0, request=True, help="softmax temperature; 0 is greedy")
    top_k: int = config_field(0, ge=0, request=True, help="keep the k most likely tokens; 0 keeps all")
    top_p: float = config_field(1.0, gt=0.0, le=1.0, request=True, help="nucleus: smallest set with this much mass")
    min_p: float = config_field(0.0, ge=0.0, le=1.0, request=True, help="drop tokens below min_p times the top probability")
    seed: int | None = config_field(None, ge=0, request=True, help="seed of the sampler's own random stream")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
