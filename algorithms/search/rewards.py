"""Rewards for search decoders (DeAL, best-of-N): score a candidate text, higher is better.

A reward is a callable of :class:`RewardInput` (prompt text, candidate text, its token ids, whether it has ended)
returning a float. ``score_batch`` scores many candidates at once (a reward model runs them as one batch).
Several rewards combine as a weighted sum (:class:`WeightedSum`). A reward that raises is wrapped in
:class:`RewardError`, which names the reward and the text it failed on.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..contracts.config import DecoderConfig, config_field
from ..contracts.errors import REQUEST_ERRORS, AnydecodeError, ConfigError


class RewardError(AnydecodeError, RuntimeError):
    """A reward failed on a candidate; the search that called it stops."""


@dataclasses.dataclass(frozen=True)
class RewardInput:
    """One candidate to score."""

    #: the prompt as text ("" when the runtime gives no tokenizer)
    prompt: str
    #: the generated text (prompt excluded, end-of-sequence token dropped)
    text: str
    #: the generated token ids (end-of-sequence token dropped)
    tokens: tuple[int, ...] = ()
    #: True when the candidate has ended (EOS or length limit), False for a lookahead of a partial candidate
    finished: bool = False


class Reward:
    """Base of every reward: ``score(item)``; override ``score_batch`` when batching helps."""

    name: str = "reward"

    def score(self, item: RewardInput) -> float:
        raise RewardError(f"reward {self.name!r} does not define score()")

    def score_batch(self, items: Sequence[RewardInput]) -> list[float]:
        return [self.score(item) for item in items]

    def __call__(self, item: RewardInput) -> float:
        return self.score_batch([item])[0]


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def checked_scores(reward: Reward, items: Sequence[RewardInput]) -> list[float]:
    """``reward.score_batch(items)`` with failures and non-finite or non-numeric values as RewardError."""
    try:
        values = reward.score_batch(items)
    except RewardError:
        raise
    except REQUEST_ERRORS as exc:  # the reward is user code: whatever it raises (sys.exit included), name it
        text = items[0].text if len(items) == 1 else None
        if text is None:  # find the failing candidate by scoring them one at a time
            for item in items:
                try:
                    reward.score(item)
                except REQUEST_ERRORS:  # find which candidate fails, whatever it raises
                    text = item.text
                    break
        raise RewardError(
            f"reward {reward.name!r} failed on text {_short(text or '')!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if len(values) != len(items):
        raise RewardError(f"reward {reward.name!r} returned {len(values)} scores for {len(items)} candidates")
    out = []
    for item, value in zip(items, values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise RewardError(
                f"reward {reward.name!r} returned {value!r} for text {_short(item.text)!r}; expected a finite number"
            )
        out.append(float(value))
    return out


class WeightedSum(Reward):
    """``sum_i w_i * r_i``: how several rewards combine."""

    def __init__(self, rewards: Sequence[Reward], weights: Sequence[float] | None = None):
        if not rewards:
            raise ConfigError("a weighted sum of rewards needs at least one reward")
        weights = list(weights) if weights else [1.0] * len(rewards)
        if len(weights) != len(rewards):
            raise ConfigError(
                f"reward_weights has {len(weights)} values for {len(rewards)} rewards "
                f"({', '.join(r.name for r in rewards)}); give one weight per reward or none"
            )
        self.rewards = list(rewards)
        self.weights = [float(w) for w in weights]
        self.name = "+".join(r.name for r in rewards)

    def score_batch(self, items: Sequence[RewardInput]) -> list[float]:
        total = [0.0] * len(items)
        for reward, weight in zip(self.rewards, self.weights):
            for i, value in enumerate(checked_scores(reward, items)):
                total[i] += weight * value
        return total


# -- keywords ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KeywordsConfig(DecoderConfig):
    """Share of the keywords the text contains (CommonGen-style coverage)."""

    owner = "reward"
    keywords: tuple[str, ...] = config_field((), request=True, help="words the text should use (comma separated)")
    keywords_ordered: bool = config_field(False, request=True,
                                         help="count only keywords that appear in the given order")

    def validate(self) -> None:
        super().validate()
        if not self.keywords or any(not k.strip() for k in self.keywords):
            raise ConfigError(f"keywords={list(self.keywords)!r} must name at least one non-empty keyword")


def _longest_increasing(values: Sequence[int]) -> int:
    """Length of the longest strictly increasing subsequence (patience sorting)."""
    tails: list[int] = []
    for v in values:
        lo, hi = 0, len(tails)
        while lo < hi:
            mid = (lo + hi) // 2
            if tails[mid] < v:
                lo = mid + 1
            else:
                hi = mid
        if lo == len(tails):
            tails.append(v)
        else:
            tails[lo] = v
    return len(tails)


class KeywordsReward(Reward):
    """Fraction of keywords present as the start of a word, case-insensitive ("boat" counts "boats").

    With ``keywords_ordered`` the score is the longest run of keywords appearing in the given order, over their
    number (each keyword's first occurrence is used).
    """

    name = "keywords"

    def __init__(self, config: KeywordsConfig):
        self.keywords = [k.strip() for k in config.keywords]
        self.ordered = config.keywords_ordered
        self._patterns = [re.compile(r"(?<!\w)" + re.escape(k), re.IGNORECASE) for k in self.keywords]

    def positions(self, text: str) -> list[int | None]:
        """Where each keyword first occurs in ``text`` (None when absent)."""
        out: list[int | None] = []
        for pattern in self._patterns:
            match = pattern.search(text)
            out.append(match.start() if match else None)
        return out

    def score(self, item: RewardInput) -> float:
        found = self.positions(item.text)
        if not self.ordered:
            return sum(p is not None for p in found) / len(found)
        return _longest_increasing([p for p in found if p is not None]) / len(found)


# -- length ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LengthConfig(DecoderConfig):
    """Reward 0 inside a target length range, minus the relative distance outside it."""

    owner = "reward"
    length_min: int = config_field(0, ge=0, request=True, help="shortest wanted length")
    length_max: int | None = config_field(None, ge=1, request=True, help="longest wanted length (none: no upper bound)")
    length_unit: str = config_field("words", choices=("words", "tokens"), request=True, help="count words or tokens")

    def validate(self) -> None:
        super().validate()
        if self.length_max is not None and self.length_max < self.length_min:
            raise ConfigError(f"length_max={self.length_max} is below length_min={self.length_min}")


class LengthReward(Reward):
    """``0`` inside ``[length_min, length_max]``, else ``-distance / scale``.

    Being too short only counts once the candidate has ended: a partial candidate can still grow.
    """

    name = "length"

    def __init__(self, config: LengthConfig):
        self.low = config.length_min
        self.high = config.length_max
        self.unit = config.length_unit
        self.scale = float(max(1, self.high if self.high is not None else self.low))

    def measure(self, item: RewardInput) -> int:
        return len(item.tokens) if self.unit == "tokens" else len(item.text.split())

    def score(self, item: RewardInput) -> float:
        n = self.measure(item)
        if self.high is not None and n > self.high:
            return -(n - self.high) / self.scale
        if item.finished and n < self.low:
            return -(self.low - n) / self.scale
        return 0.0


# -- regex -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RegexConfig(DecoderConfig):
    """1 when the text matches a regular expression, else 0."""

    owner = "reward"
    pattern: str = config_field("", help="a Python regular expression")
    fullmatch: bool = config_field(False, request=True, help="the whole text must match (default: a match anywhere)")

    def validate(self) -> None:
        super().validate()
        if not self.pattern:
            raise ConfigError("pattern='' is empty: give the regular expression the text should match")
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ConfigError(f"pattern={self.pattern!r} is not a valid regular expression: {exc}") from None


class RegexReward(Reward):
    name = "regex"

    def __init__(self, config: RegexConfig):
        self.regex = re.compile(config.pattern)
        self.fullmatch = config.fullmatch

    def score(self, item: RewardInput) -> float:
        match = self.regex.fullmatch(item.text) if self.fullmatch else self.regex.search(item.text)
        return 1.0 if match else 0.0


# -- any Python callable -----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CallableConfig(DecoderConfig):
    """Any Python function of the text, named ``module:function``."""

    owner = "reward"
    function: str = config_field("", help="module:function called as function(text) -> float")

    def validate(self) -> None:
        super().validate()
        module, sep, attr = self.function.partition(":")
        if not sep or not module or not attr:
            raise ConfigError(f"function={self.function!r} must be written as 'module:function'")


def import_function(spec: str) -> Callable[..., Any]:
    """The callable named by ``module:function`` (dotted attributes allowed after the colon)."""
    module_name, _, attr = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"function={spec!r}: cannot import module {module_name!r} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"function={spec!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"function={spec!r} is a {type(target).__name__}, not a callable")
    return target


class CallableReward(Reward):
    """Calls ``function(text)``; failures become RewardError naming the function and the text."""

    def __init__(self, config: CallableConfig):
        self.function = import_function(config.function)
        self.name = f"callable {config.function}"

    def score(self, item: RewardInput) -> float:
        return self.function(item.text)


# -- a transformers sequence-classification model ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RewardModelConfig(DecoderConfig):
    """The score of a transformers sequence-classification model (a reward model)."""

    owner = "reward"
    reward_model_path: str = config_field("", help="folder (or cached Hub name) of the classification model")
    reward_label: str | None = config_field(
        None, help="label whose logit is the score (name or index); none: the model must have one label")
    reward_pair: bool = config_field(False, help="score (prompt, text) as a pair instead of the text alone")
    reward_batch_size: int = config_field(16, ge=1, help="candidates scored per forward pass")

    def validate(self) -> None:
        super().validate()
        if not self.reward_model_path:
            raise ConfigError("reward_model_path='' is empty: give the folder of a sequence-classification model")


def label_index(id2label: dict[int, str], num_labels: int, label: str | None, source: str) -> int:
    """Which logit is the score; ConfigError when ``label`` does not fit the model's labels."""
    labels = {int(i): str(name) for i, name in (id2label or {}).items()}
    described = ", ".join(f"{i}={labels.get(i, '?')}" for i in range(num_labels))
    if label is None:
        if num_labels != 1:
            raise ConfigError(
                f"reward model {source} has {num_labels} labels ({described}); "
                "set reward_label to the label (name or index) whose logit is the reward"
            )
        return 0
    if label.strip().lstrip("-").isdigit():
        index = int(label)
        if not 0 <= index < num_labels:
            raise ConfigError(f"reward_label={label!r} is out of range: reward model {source} has labels {described}")
        return index
    matches = [i for i, name in labels.items() if name == label]
    if not matches:
        raise ConfigError(f"reward_label={label!r} is not a label of reward model {source}; labels: {described}")
    return matches[0]


# -- building rewards from names and settings --------------------------------------------------------------------
BUILTIN_REWARDS: dict[str, tuple[type[DecoderConfig], Callable[[Any], Reward], str]] = {
    "keywords": (KeywordsConfig, KeywordsReward, "share of the given keywords the text uses (optionally in order)"),
    "length": (LengthConfig, LengthReward, "0 inside a target length range in words or tokens, negative outside"),
    "regex": (RegexConfig, RegexReward, "1 when the text matches a regular expression"),
    "callable": (CallableConfig, CallableReward, "any Python function of the text, named module:function"),
}
#: the ``reward_model`` reward's factory is transformers code: ``anydecode.plugins.hf.rewards`` registers it


def builtin_lookup(name: str) -> tuple[type[DecoderConfig] | None, Callable[..., Any]]:
    """The built-in rewards without the plugin registry (cores and unit tests use it)."""
    if name not in BUILTIN_REWARDS:
        from ..contracts.errors import unknown_name

        raise unknown_name("reward", name, BUILTIN_REWARDS)
    config_cls, factory, _ = BUILTIN_REWARDS[name]
    return config_cls, factory


def reward_lookup(components: Any, name: str) -> tuple[type[DecoderConfig] | None, Callable[..., Any]]:
    """A reward's config class and factory through the handed-in components (None: the built-in rewards)."""
    if components is None:
        return builtin_lookup(name)
    spec = components.get("reward", name)
    return spec.config_cls, spec.factory


@dataclasses.dataclass(frozen=True)
class RewardSettings(DecoderConfig):
    """Which rewards a search decoder uses, their weights and the built-in rewards' settings.

    Settings of a third-party reward that are not fields here are accepted by name too: ``from_mapping`` keeps
    them aside (``reward_extras``) and hands each reward the settings its own config declares. Reward names are
    resolved through the config's ``components`` (the registry, for registered decoders) when it is built.
    """

    reward: tuple[str, ...] = config_field((), request=True,
                                           help="reward names, combined as a weighted sum (requests: only among the "
                                                "rewards the operator enabled)")
    reward_weights: tuple[float, ...] = config_field((), request=True, help="one weight per reward (default: all 1)")
    keywords: tuple[str, ...] = config_field((), request=True, help="keywords reward: words the text should use")
    keywords_ordered: bool = config_field(False, request=True, help="keywords reward: count only keywords in the given order")
    length_min: int = config_field(0, ge=0, request=True, help="length reward: shortest wanted length")
    length_max: int | None = config_field(None, ge=1, request=True, help="length reward: longest wanted length")
    length_unit: str = config_field("words", choices=("words", "tokens"), request=True,
                                    help="length reward: words or tokens")
    pattern: str = config_field("", help="regex reward: the regular expression")
    fullmatch: bool = config_field(False, request=True, help="regex reward: the whole text must match")
    function: str = config_field("", help="callable reward: module:function, called as function(text)")
    reward_model_path: str = config_field("", help="reward_model reward: folder of a classification model")
    reward_label: str | None = config_field(None, help="reward_model reward: label (name or index) to score")
    reward_pair: bool = config_field(False, help="reward_model reward: score (prompt, text) pairs")
    reward_batch_size: int = config_field(16, ge=1, help="reward_model reward: candidates per forward pass")
    #: settings of third-party rewards, as (name, value) pairs
    reward_extras: tuple[tuple[str, Any], ...] = dataclasses.field(default=(), init=False, repr=False)
    #: whether the extras came as strings (CLI, HTTP) and are parsed by each reward's config
    extras_from_strings: bool = dataclasses.field(default=False, init=False, repr=False, compare=False)

    @classmethod
    def _build(cls, values=None, *, from_strings: bool = False, name: str | None = None,  # type: ignore[override]
               components: Any = None):
        values = dict(values or {})
        own = set(cls.field_types())
        extras = {k: v for k, v in values.items() if k not in own}
        base = {k: v for k, v in values.items() if k in own}
        if isinstance(base.get("reward"), str):
            base["reward"] = [r.strip() for r in base["reward"].split(",") if r.strip()]
        config = super()._build(base, from_strings=from_strings, name=name, components=components)
        if extras:
            object.__setattr__(config, "reward_extras", tuple(sorted(extras.items())))
        object.__setattr__(config, "extras_from_strings", from_strings)
        return config

    def resolve(self) -> None:
        self.reward_configs(from_strings=self.extras_from_strings)

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), **dict(self.reward_extras)}

    @classmethod
    def setting_fields(cls, values: Mapping[str, Any] | None = None,
                       components: Any = None) -> dict[str, dataclasses.Field]:
        """This config's fields and those of the rewards ``values`` chooses (third-party rewards' settings)."""
        fields = super().setting_fields(values, components)
        names = (values or {}).get("reward") or ()
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        for reward_name in names:
            try:
                config_cls, _factory = reward_lookup(components, reward_name)
            except AnydecodeError:
                continue  # an unknown reward: building the config names it
            if config_cls is not None:
                for f in config_cls.fields():
                    fields.setdefault(f.name, f)
        return fields

    def reward_configs(self, *, from_strings: bool = False) -> list[tuple[str, DecoderConfig | None, Any]]:
        """``(name, validated config, factory)`` of each chosen reward; ConfigError on a misfit setting."""
        if self.reward_weights and len(self.reward_weights) != len(self.reward):
            raise ConfigError(
                f"reward_weights={list(self.reward_weights)} has {len(self.reward_weights)} values for "
                f"{len(self.reward)} rewards {list(self.reward)}; give one weight per reward or none"
            )
        resolved: list[tuple[str, DecoderConfig | None, Any]] = []
        claimed: set[str] = set()
        own = self.as_dict()
        extras = dict(self.reward_extras)
        for reward_name in self.reward:
            config_cls, factory = reward_lookup(self.components, reward_name)
            if config_cls is None:
                resolved.append((reward_name, None, factory))
                continue
            wanted = {f.name for f in config_cls.fields()}
            given = {k: own[k] for k in wanted if k in own}
            claimed |= wanted
            resolved.append((reward_name, config_cls.from_mapping(given, from_strings=from_strings,
                                                                  name=reward_name), factory))
        stray = sorted(set(extras) - claimed)
        if stray:
            accepted = [d["name"] for d in self.describe_fields()]
            for _reward_name, cfg, _factory in resolved:
                if cfg is not None:
                    accepted += [f.name for f in type(cfg).fields() if f.name not in accepted]
            raise ConfigError(
                f"unknown setting {stray[0]!r} (not a setting of this decoder nor of the rewards "
                f"{list(self.reward) or 'none chosen'}); accepted: {', '.join(accepted)}"
            )
        return resolved

    def build_reward(self) -> Reward | None:
        """The combined reward (None when no reward is chosen)."""
        parts = []
        for reward_name, cfg, factory in self.reward_configs():
            reward = factory(cfg) if cfg is not None else factory()
            if not isinstance(reward, Reward):
                reward = _FunctionReward(reward_name, reward)
            parts.append(reward)
        if not parts:
            return None
        return WeightedSum(parts, self.reward_weights or None)


class _FunctionReward(Reward):
    """A registered reward whose factory returned a plain function of the text."""

    def __init__(self, name: str, function: Callable[[str], float]):
        self.name = name
        self.function = function

    def score(self, item: RewardInput) -> float:
        return self.function(item.text)


def decode_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Text of ``ids`` without special tokens, for tokenizers with or without ``skip_special_tokens``."""
    if tokenizer is None:
        return " ".join(str(int(t)) for t in ids)
    try:
        return tokenizer.decode(list(ids), skip_special_tokens=True)
    except TypeError:
        return tokenizer.decode(list(ids))
