"""Typed settings: one dataclass per component, read from CLI flags and SHARDFLOW_* variables.

A field's metadata carries its help text and bounds; ``load`` takes command-line
values first, then the environment, then the default, and refuses an invalid value
with a SettingsError that names the setting and where it came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, Self

from shardflow.infra.errors import SettingsError

ENV_PREFIX = "SHARDFLOW_"


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    minimum: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    meta = {"help": help, "minimum": minimum, "choices": choices}
    if isinstance(default, list):
        frozen = list(default)
        return dataclasses.field(default_factory=lambda: list(frozen), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) is list


def _base(tp: Any) -> tuple[Any, bool]:
    """(the type without Optional, whether None is allowed)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


class Settings:
    """Mixin for settings dataclasses."""

    @classmethod
    def _fields(cls) -> list[tuple[dataclasses.Field[Any], Any]]:
        hints = typing.get_type_hints(cls)
        return [(f, hints[f.name]) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def env_name(cls, name: str) -> str:
        return ENV_PREFIX + name.upper()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f, tp in cls._fields():
            flag = "--" + f.name.replace("_", "-")
            default = "required" if f.default is dataclasses.MISSING else f.default
            if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            text = f"{f.metadata.get('help', '')} [env {cls.env_name(f.name)}; default {default}]"
            if _is_list(tp):
                parser.add_argument(flag, dest=f.name, action="append", default=None, help=text)
            elif _base(tp)[0] is bool:  # `--flag` alone means true; `--flag false` too
                parser.add_argument(
                    flag, dest=f.name, nargs="?", const="true", default=None, help=text
                )
            else:
                parser.add_argument(flag, dest=f.name, default=None, help=text)

    @classmethod
    def load(
        cls,
        args: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Self:
        args = args or {}
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f, tp in cls._fields():
            source = f"--{f.name.replace('_', '-')}"
            raw = args.get(f.name)
            if raw is None and cls.env_name(f.name) in env:
                raw, source = env[cls.env_name(f.name)], cls.env_name(f.name)
            if raw is None:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise SettingsError(
                        f"setting {f.name} is required: pass {source} or set "
                        f"{cls.env_name(f.name)}",
                        setting=f.name,
                    )
                continue
            values[f.name] = _coerce(f, tp, raw, source)
        obj = cls(**values)
        obj.validate()
        return obj

    def validate(self) -> None:
        """Bounds from field metadata; subclasses add cross-field checks."""
        for f, _tp in self._fields():
            value = getattr(self, f.name)
            minimum = f.metadata.get("minimum")
            if minimum is not None and value is not None and value < minimum:
                raise SettingsError(
                    f"setting {f.name} = {value!r} is too small: it must be >= {minimum}",
                    setting=f.name,
                )
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise SettingsError(
                    f"setting {f.name} = {value!r} is not one of {', '.join(choices)}",
                    setting=f.name,
                )


def _coerce(f: dataclasses.Field[Any], tp: Any, raw: Any, source: str) -> Any:
    base, optional = _base(tp)
    try:
        if _is_list(base):
            items = raw if isinstance(raw, list) else str(raw).split(",")
            return [str(x).strip() for x in items if str(x).strip()]
        if optional and isinstance(raw, str) and raw.strip().lower() in ("", "none"):
            return None
        if base is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if base is int:
            return int(str(raw).strip())
        if base is float:
            value = float(str(raw).strip())
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError("expected a finite number")
            return value
        return str(raw)
    except ValueError as exc:
        raise SettingsError(
            f"setting {f.name} from {source} = {raw!r} is invalid: {exc}", setting=f.name
        ) from None
