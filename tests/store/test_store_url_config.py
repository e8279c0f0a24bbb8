"""``store.url``: PostgreSQL selected by config, validated, and its password never shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2eproxy.cli import main
from e2eproxy.config import mask_url, parse_config
from e2eproxy.errors import ConfigError


def _parse(url: object) -> object:
    data = {"servers": {"a": {"homeserver": "https://x"}}, "store": {"url": url}}
    return parse_config(data, "e2eproxy.toml").store


def test_absent_url_keeps_sqlite() -> None:
    config = parse_config({"servers": {"a": {"homeserver": "https://x"}}}, "f")
    assert config.store.url is None


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://e2eproxy@db.example.org/e2eproxy",
        "postgres://u:pw@127.0.0.1:5433/db?sslmode=require",
        "postgresql:///e2eproxy?host=/run/postgresql",
    ],
)
def test_postgres_urls_are_accepted(url: str) -> None:
    assert _parse(url).url == url  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://u:hunter2@db/x", "expected a postgresql:// URL"),
        ("", "expected a postgresql:// URL"),
        ("postgresql://u:hunter2@db:99999/x", "not a valid URL"),
        ("postgresql://u:hunter2@db/x#frag", "fragment"),
    ],
)
def test_bad_urls_name_the_key_and_hide_the_password(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=r"store\.url") as error:
        _parse(url)
    assert problem in str(error.value)
    assert "hunter2" not in str(error.value)


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"store\.url: expected str"):
        _parse(5)


def test_url_is_not_in_the_repr() -> None:
    store = _parse("postgresql://u:hunter2@db/x")
    assert "hunter2" not in repr(store)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:hunter2@db:5432/x", "postgresql://u:***@db:5432/x"),
        (
            "postgresql:///x?host=/tmp&password=hunter2&a=1",
            "postgresql:///x?host=/tmp&password=***&a=1",
        ),
        ("postgresql://u@db/x", "postgresql://u@db/x"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_check_config_masks_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "e2eproxy.toml"
    path.write_text(
        '[servers.a]\nhomeserver = "https://x"\n[store]\nurl = "postgresql://me:hunter2@db/e2e"\n'
    )
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert json.loads(out)["store"]["url"] == "postgresql://me:***@db/e2e"
