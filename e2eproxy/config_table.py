"""Reading one TOML table of the configuration: typed keys, and every mistake named."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from e2eproxy.errors import ConfigError


class Table:
    """Reads typed keys from one TOML table and rejects the ones nobody asked for."""

    def __init__(self, data: Any, prefix: str, source: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: {prefix}: expected a table")
        self.data = data
        self.prefix = prefix
        self.source = source
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.seen.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        # bool is an int in Python; a number where a flag belongs is still a mistake.
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            value_ok = False
        else:
            value_ok = isinstance(value, kinds)
        if not value_ok:
            wanted = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(
                f"{self.source}: {self.key(name)}: expected {wanted}, got {type(value).__name__}"
            )
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value: str = self.get(name, str, default)
        if value not in choices:
            raise ConfigError(
                f"{self.source}: {self.key(name)}: must be one of {', '.join(choices)}; "
                f"got {value!r}"
            )
        return value

    def positive(self, name: str, default: float) -> float:
        value = float(self.get(name, (int, float), default))
        if value <= 0:
            raise ConfigError(f"{self.source}: {self.key(name)}: must be positive, got {value}")
        return value

    def positive_int(self, name: str, default: int) -> int:
        value: int = self.get(name, int, default)
        if value <= 0:
            raise ConfigError(f"{self.source}: {self.key(name)}: must be positive, got {value}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(f"{self.source}: {self.key(unknown[0])}: unknown key")
