"""The configuration is parsed strictly: every mistake names the file, the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2eproxy.config import (
    PASSPHRASE_ENV,
    Config,
    ListenAddress,
    load_config,
    with_overrides,
)
from e2eproxy.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "e2eproxy.toml"
    path.write_text(text)
    return path


def test_example_config_is_valid_and_documents_every_key(tmp_path: Path) -> None:
    config = load_config(REPO / "config.example.toml")
    assert [s.name for s in config.servers] == ["main"]
    assert config.servers[0].listen == ListenAddress("127.0.0.1", 8009)
    example = (REPO / "config.example.toml").read_text()
    for section in ("store", "log", "encryption", "metrics"):
        for key in getattr(config, section).__dataclass_fields__:
            assert f"{key} =" in example, f"{section}.{key} is not documented"
    for key in config.servers[0].__dataclass_fields__:
        if key != "name":
            assert f"{key} =" in example, f"servers.NAME.{key} is not documented"


def test_several_servers_each_with_a_listener(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [servers.a]
        homeserver = "https://a.example/"
        listen = "127.0.0.1:8009"
        [servers.b]
        homeserver = "http://b.example:8008"
        listen = "[::1]:8010"
        """,
    )
    config = load_config(path)
    assert [(s.name, s.homeserver, str(s.listen)) for s in config.servers] == [
        ("a", "https://a.example", "127.0.0.1:8009"),
        ("b", "http://b.example:8008", "[::1]:8010"),
    ]
    assert config.servers[0].advertised_url == "http://127.0.0.1:8009"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[servers.a]\nhomeserver = "https://x"\ncolour = 1', "servers.a.colour: unknown key"),
        ("[servers.a]\nhomeserver = 5", "servers.a.homeserver: expected str, got int"),
        ('[servers.a]\nhomeserver = "ftp://x"', "servers.a.homeserver: expected an http(s) URL"),
        ("[servers.a]\nlisten = '127.0.0.1:1'", "servers.a.homeserver: missing"),
        (
            '[servers.a]\nhomeserver = "https://x"\nlisten = "localhost"',
            "servers.a.listen: expected HOST:PORT",
        ),
        (
            '[servers.a]\nhomeserver = "https://x"\nlisten = "127.0.0.1:99999"',
            "servers.a.listen: port 99999 is out of range",
        ),
        (
            '[servers.a]\nhomeserver = "https://x"\nlisten = "example.org:80"',
            "is not an IP address",
        ),
        (
            '[servers.a]\nhomeserver = "https://x"\n[servers.b]\nhomeserver = "https://y"\n',
            "servers.b.listen: port 8009 is already used by servers.a",
        ),
        ('[servers.a]\nhomeserver = "https://x"\n[log]\nlevel = "loud"', "log.level: must be one"),
        ('[servers.a]\nhomeserver = "https://x"\n[store]\nuse_keyring = 1', "store.use_keyring"),
        (
            '[servers.a]\nhomeserver = "https://x"\n[encryption]\nshare_strategy = "some"',
            "encryption.share_strategy: must be one of all, cross-signed, verified",
        ),
        (
            '[servers.a]\nhomeserver = "https://x"\n[encryption]\nplaintext_files = "leak"',
            "encryption.plaintext_files: must be one of refuse, copy",
        ),
        (
            '[servers.a]\nhomeserver = "https://x"\nserver_name = "@evil/x"',
            "servers.a.server_name: expected a Matrix server name",
        ),
        (
            '[servers.a]\nhomeserver = "https://x"\nmax_json_body = 0',
            "servers.a.max_json_body: must be positive",
        ),
        (
            '[servers.a]\nhomeserver = "https://x"\nmax_upload_size = 1.5',
            "servers.a.max_upload_size: expected int, got float",
        ),
        (
            '[servers.a]\nhomeserver = "https://x"\nallowed_hosts = ["evil.example:80"]',
            "servers.a.allowed_hosts: expected a list of host names",
        ),
        (
            '[servers.a]\nhomeserver = "https://x"\nmax_accounts = -1',
            "servers.a.max_accounts: must be positive",
        ),
        (
            '[servers.a]\nhomeserver = "https://x"\n[log]\nformat = "xml"',
            "log.format: must be one of text, json",
        ),
        (
            '[servers.a]\nhomeserver = "https://x"\n[metrics]\nlisten = "0.0.0.0"',
            "metrics.listen: expected HOST:PORT",
        ),
        (
            '[servers.a]\nhomeserver = "https://x"\n[metrics]\nlisten = 9109',
            "metrics.listen: expected str, got int",
        ),
        (
            '[servers.a]\nhomeserver = "https://x"\n[metrics]\nport = 9109',
            "metrics.port: unknown key",
        ),
        (
            '[servers.a]\nhomeserver = "https://x"\n[metrics]\nlisten = "127.0.0.1:8009"',
            "metrics.listen: port 8009 is already used by servers.a",
        ),
        ('metrics = 1\n[servers.a]\nhomeserver = "https://x"', "metrics: expected dict, got int"),
        ('homeserver = "https://x"', "homeserver: unknown key"),
        ("", "servers: no [servers.NAME] table"),
        ("[servers.a\n", "not valid TOML"),
    ],
)
def test_bad_config_names_file_key_and_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_flags_override_the_file_and_defaults_need_only_a_homeserver(tmp_path: Path) -> None:
    defaults = with_overrides(None, homeserver="https://hs.example")
    assert str(defaults.servers[0].listen) == "127.0.0.1:8009"
    assert defaults.store.data_dir.name == "e2eproxy"
    path = write(tmp_path, '[servers.a]\nhomeserver = "https://x"\n[store]\ndata_dir = "d"')
    config = with_overrides(
        load_config(path), listen="127.0.0.1:9000", log_level="DEBUG", data_dir=str(tmp_path / "o")
    )
    assert str(config.servers[0].listen) == "127.0.0.1:9000"
    assert config.servers[0].homeserver == "https://x"
    assert config.log.level == "debug"
    assert config.store.data_dir == tmp_path / "o"
    with pytest.raises(ConfigError, match="--homeserver is required"):
        with_overrides(None)


def test_a_file_may_leave_the_server_to_the_homeserver_flag(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\nurl = "postgresql://db.example/e2eproxy"')
    with pytest.raises(ConfigError, match=r"no \[servers\.NAME\] table"):
        load_config(path)  # check-config, or run without --homeserver
    config = with_overrides(load_config(path, require_servers=False), homeserver="https://x")
    assert [(s.name, s.homeserver) for s in config.servers] == [("default", "https://x")]
    assert config.store.url == "postgresql://db.example/e2eproxy"
    with pytest.raises(ConfigError, match=r"no \[servers\.NAME\] table"):
        with_overrides(load_config(path, require_servers=False), log_level="info")


def test_relative_data_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[servers.a]\nhomeserver = "https://x"\n[store]\ndata_dir = "keys"')
    assert load_config(path).store.data_dir == tmp_path / "keys"


def test_passphrase_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "pass"
    secret_file.write_text("from-file\n")
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "store-passphrase").write_text("from-systemd\n")
    path = write(
        tmp_path,
        f'[servers.a]\nhomeserver = "https://x"\n[store]\npassphrase_file = "{secret_file}"',
    )
    config: Config = load_config(path)
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert config.store_passphrase() == "from-file"
    monkeypatch.setenv(PASSPHRASE_ENV, "from-env")
    assert config.store_passphrase() == "from-env"
    monkeypatch.delenv(PASSPHRASE_ENV)
    bare = with_overrides(None, homeserver="https://x")
    assert bare.store_passphrase() == "from-systemd"
    # An empty file is a mistake to report, not "no passphrase" (a key file would lock the store).
    (credentials / "store-passphrase").write_text("\n")
    with pytest.raises(ConfigError, match=r"store-passphrase.*is empty"):
        bare.store_passphrase()
    secret_file.write_text("")
    with pytest.raises(ConfigError, match=r"store\.passphrase_file.*is empty"):
        config.store_passphrase()


def test_a_server_may_choose_its_own_sharing_strategy(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, (
        '[encryption]\nshare_strategy = "verified"\n'
        '[servers.a]\nhomeserver = "https://a.example"\nlisten = "127.0.0.1:8101"\n'
        'share_strategy = "cross-signed"\n'
        '[servers.b]\nhomeserver = "https://b.example"\nlisten = "127.0.0.1:8102"\n'
    )))
    by_name = {server.name: server for server in config.servers}
    assert by_name["a"].share_strategy == "cross-signed"
    assert by_name["b"].share_strategy is None  # the [encryption] one applies
    assert config.encryption.share_strategy == "verified"
    with pytest.raises(ConfigError, match=r"servers\.a\.share_strategy: must be one of"):
        load_config(write(tmp_path, '[servers.a]\nhomeserver = "https://x"\n'
                                    'share_strategy = "everyone"\n'))


def test_metrics_listener_is_off_unless_configured_and_logs_are_text(tmp_path: Path) -> None:
    plain = load_config(write(tmp_path, '[servers.a]\nhomeserver = "https://x"'))
    assert plain.metrics.listen is None
    assert plain.log.format == "text"
    config = load_config(write(tmp_path, (
        '[servers.a]\nhomeserver = "https://x"\n'
        '[metrics]\nlisten = "[::1]:9109"\n[log]\nformat = "json"\n'
    )))
    assert config.metrics.listen == ListenAddress("::1", 9109)
    assert config.log.format == "json"
    # The flags keep what the file says of them.
    assert with_overrides(config, log_level="debug").metrics == config.metrics
