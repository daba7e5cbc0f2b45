"""Validation of source options shared by every source (errors name the source and the option)."""
from __future__ import annotations

from ..errors import ConfigError


def check_template(kind: str, option: str, value: object) -> str:
    """A file-name template may use ``{split}`` and nothing else."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{kind} option {option!r} must be a non-empty string, got {value!r}")
    try:
        value.format(split="x")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"{kind} option {option!r}={value!r}: only the placeholder {{split}} is allowed ({e})") from None
    return value


def check_int(kind: str, option: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{kind} option {option!r} must be an integer >= {minimum}, got {value!r}")
    return value
