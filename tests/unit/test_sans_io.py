"""The engine packages stay sans-I/O: no networking, storage, threads or wall clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "e2eproxy"
PACKAGES = ("crypto", "protocol")
FORBIDDEN_MODULES = {
    "asyncio", "aiohttp", "sqlite3", "keyring", "janus", "socket", "time", "threading",
    "requests", "httpx", "urllib.request", "http.client", "selectors", "subprocess",
}
FORBIDDEN_NAMES = {("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today")}


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def forbidden_uses(source: str) -> list[str]:
    """Every forbidden import or wall-clock call in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in FORBIDDEN_NAMES:
                found.append(f"{node.value.id}.{node.attr}")
            continue
        else:
            continue
        prefixes = set()
        for name in names:
            parts = name.split(".")
            prefixes |= {".".join(parts[: i + 1]) for i in range(len(parts))}
        found.extend(sorted(prefixes & FORBIDDEN_MODULES))
    return found


def test_scanner_catches_forbidden_imports() -> None:
    assert forbidden_uses("import asyncio") == ["asyncio"]
    assert forbidden_uses("from time import monotonic") == ["time"]
    assert forbidden_uses("import aiohttp.web") == ["aiohttp"]
    assert forbidden_uses("from datetime import datetime\nx = datetime.now()") == [
        "datetime.now"
    ]
    assert forbidden_uses("import json\nimport hashlib") == []


def test_sources_exist() -> None:
    assert len(_sources()) > 10


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_forbidden_imports(path: Path) -> None:
    assert forbidden_uses(path.read_text()) == []
