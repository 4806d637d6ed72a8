"""The machinery of the config dataclasses: typed `from_dict`, did-you-mean errors, field checks.

Every config is a frozen dataclass (hashable, so it can be a static argument of a jitted
function) deriving from `ConfigBase`. `from_dict` rejects unknown keys with a did-you-mean
hint and converts values to the declared field types; `validate` then checks the cross-field
rules with the `check_*` helpers, whose messages name the offending field.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Mapping, Sequence


# Strings an optional field reads as None (CLI flags, sweep grids, lm-eval model_args).
NONE_WORDS = ("none", "null", "off")


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or inconsistent."""


def did_you_mean(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_choice(where: str, name: str, value: Any, options: Sequence[str]) -> None:
    """ConfigError `where.name: 'value' is not one of ...` (with a did-you-mean) unless value is an option."""
    if value not in options:
        raise ConfigError(f"{where}.{name}: '{value}' is not one of {', '.join(options)}"
                          f"{did_you_mean(str(value), options)}")


def format_value(value: Any) -> str:
    """A setting as a command line or a table writes it (`none`, `0.9`), which `coerce` reads back."""
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the annotated field type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS)):
            return None
        last_error = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError as e:
                last_error = e
        raise last_error or ConfigError(f"{where}: cannot use {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(
                f"{where}: {value!r} is not one of {', '.join(map(repr, args))}"
                + (did_you_mean(str(value), [str(a) for a in args]) if isinstance(value, str) else "")
            )
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if as_float != int(as_float):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(as_float)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


class ConfigBase:
    """Shared `from_dict` / `to_dict` / `replace` for the frozen config dataclasses."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str | None = None):
        where = where or cls.__name__
        data = dict(data or {})
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in fields]
        if unknown:
            k = unknown[0]
            raise ConfigError(f"{where}: unknown key '{k}'{did_you_mean(k, list(fields))}")
        kwargs = {}
        for name, value in data.items():
            kwargs[name] = coerce(value, hints[name], f"{where}.{name}")
        obj = cls(**kwargs)
        obj.validate(where)
        return obj

    def validate(self, where: str | None = None) -> None:  # overridden where there are rules
        return None

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def replace(self, **changes):
        """A validated copy with `changes` applied (unknown names are rejected)."""
        merged = self.to_dict()
        merged.update(changes)
        return type(self).from_dict(merged)

    # Field checks for `validate`: each raises ConfigError naming `where.field`.

    def check_choice(self, where: str, name: str, options: Sequence[str]) -> None:
        check_choice(where, name, getattr(self, name), options)

    def check_positive(self, where: str, *names: str) -> None:
        for name in names:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name}: must be positive, got {getattr(self, name)}")

    def check_nonnegative(self, where: str, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}: must be >= 0, got {getattr(self, name)}")
