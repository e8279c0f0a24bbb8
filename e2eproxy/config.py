"""Configuration: one TOML file parsed with tomllib into frozen dataclasses.

Every error names the file, the key and the problem, so that `e2eproxy check-config` and a failed
start print one useful line instead of a traceback.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import platformdirs

from e2eproxy.config_table import Table
from e2eproxy.config_values import (
    ListenAddress,
    check_store_url,
    check_url,
    mask_url,
    parse_listen,
)
from e2eproxy.errors import ConfigError

__all__ = [
    "Config", "EncryptionConfig", "ListenAddress", "LogConfig", "MetricsConfig", "ServerConfig",
    "StoreConfig", "check_store_url", "check_url", "load_config", "mask_url", "parse_config",
    "parse_listen", "store_only_config", "with_overrides",
]

DEFAULT_LISTEN = "127.0.0.1:8009"
DEFAULT_MAX_JSON_BODY = 1024 * 1024
DEFAULT_MAX_UPLOAD_SIZE = 512 * 1024 * 1024
DEFAULT_MAX_ACCOUNTS = 1000
PASSPHRASE_ENV = "E2EPROXY_STORE_PASSPHRASE"
SYSTEMD_CREDENTIAL = "store-passphrase"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
SHARE_STRATEGIES = ("all", "cross-signed", "verified")
UNDECRYPTABLE_MODES = ("notice", "raw")
PLAINTEXT_FILE_MODES = ("refuse", "copy")
# The spec's server name grammar: a DNS name, IPv4 or [IPv6] address, and an optional port.
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")
SERVER_NAME = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


@dataclass(frozen=True)
class ServerConfig:
    """One upstream homeserver served on its own listener."""

    name: str
    homeserver: str
    listen: ListenAddress = field(default_factory=lambda: parse_listen(DEFAULT_LISTEN, "listen"))
    # The URL clients use to reach this proxy; advertised in /.well-known/matrix/client.
    public_url: str | None = None
    # Origins allowed by CORS; empty means no Access-Control-Allow-Origin header at all.
    cors_origins: tuple[str, ...] = ()
    # Seconds to wait for the homeserver to start answering a request (long-poll syncs excepted).
    upstream_timeout: float = 60.0
    # The homeserver's server name (what follows ":" in its user IDs): a user of another server
    # never gets keys here. None: learned from the first login the homeserver confirms.
    server_name: str | None = None
    # Bytes of a request body the proxy reads whole (an event, createRoom, login...).
    max_json_body: int = DEFAULT_MAX_JSON_BODY
    # Bytes of an upload held in the data dir (the server's own m.upload.size applies too).
    max_upload_size: int = DEFAULT_MAX_UPLOAD_SIZE
    # Host names a request's Host may carry besides localhost, the listen address and
    # public_url's (any IP address is fine): others are refused, against DNS rebinding.
    allowed_hosts: tuple[str, ...] = ()
    # Devices whose keys this listener holds at most; past it a new one is refused (and logged).
    max_accounts: int = DEFAULT_MAX_ACCOUNTS
    # Who gets room keys on this server, if not encryption.share_strategy.
    share_strategy: str | None = None
    # A file with the recovery key (or "credential:NAME", a systemd credential) used on every
    # new login through this listener: bots get their keys and history back by themselves.
    recovery_key_file: str | None = None

    @property
    def advertised_url(self) -> str:
        return self.public_url or f"http://{self.listen}"


@dataclass(frozen=True)
class StoreConfig:
    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("e2eproxy")))
    use_keyring: bool = True
    # A file holding the store passphrase. Looked up in order: E2EPROXY_STORE_PASSPHRASE, this
    # file, then the systemd credential "store-passphrase".
    passphrase_file: Path | None = None
    # A PostgreSQL URL ("postgresql://..."): keep the store there instead of SQLite in data_dir.
    # Not in repr: it may carry a password.
    url: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    # "text": one human-readable line per record; "json": one JSON object per line.
    format: str = "text"


@dataclass(frozen=True)
class MetricsConfig:
    # Where /metrics and /health are served; None (the default): no such listener. Never the
    # Matrix listener: any local process or web page can reach that one.
    listen: ListenAddress | None = None


@dataclass(frozen=True)
class EncryptionConfig:
    # "all": every device except blacklisted ones receives room keys; "verified": only verified.
    share_strategy: str = "all"
    # Seconds a /sync answer may wait for a missing room key that can still arrive.
    missing_key_wait: float = 3.0
    # "notice": undecryptable events become a visible m.notice; "raw": pass m.room.encrypted.
    undecryptable: str = "notice"
    # Seconds an upload waits for an event to refer to it before it is forgotten.
    pending_upload_ttl: float = 86400.0
    # A file already on the server in plaintext, sent into an encrypted room: "refuse" (the
    # client gets an error; no file that was ever plaintext on the server enters the room) or
    # "copy" (an encrypted copy under a new id goes in; for bridges relaying public files).
    plaintext_files: str = "refuse"


@dataclass(frozen=True)
class Config:
    servers: tuple[ServerConfig, ...]
    store: StoreConfig = field(default_factory=StoreConfig)
    log: LogConfig = field(default_factory=LogConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = "<defaults>"

    def store_passphrase(self) -> str | None:
        """The passphrase from the environment or the configured file, if any."""
        from_env = os.environ.get(PASSPHRASE_ENV)
        if from_env:
            return from_env
        if self.store.passphrase_file is not None:
            what = f"{self.source}: store.passphrase_file"
            return _read_passphrase(self.store.passphrase_file, what)
        # systemd's LoadCredential=store-passphrase:... (see systemd/e2eproxy.service)
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials:
            credential = Path(credentials) / SYSTEMD_CREDENTIAL
            if credential.is_file():
                return _read_passphrase(credential, f"systemd credential {SYSTEMD_CREDENTIAL}")
        return None


def _read_passphrase(path: Path, what: str) -> str:
    """A passphrase file's first line; an empty one is an error, not 'no passphrase' (that
    would silently lock a new store with a key file instead)."""
    try:
        passphrase = path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    if not passphrase:
        raise ConfigError(f"{what}: {path} is empty")
    return passphrase


def _server(name: str, data: Any, source: str) -> ServerConfig:
    table = Table(data, f"servers.{name}", source)
    homeserver = table.get("homeserver", str, None)
    if homeserver is None:
        raise ConfigError(f"{source}: {table.key('homeserver')}: missing (the homeserver URL)")
    public_url = table.get("public_url", str, None)
    origins = table.get("cors_origins", list, [])
    if not all(isinstance(o, str) for o in origins):
        raise ConfigError(f"{source}: {table.key('cors_origins')}: expected a list of strings")
    server = ServerConfig(
        name=name,
        homeserver=check_url(homeserver, table.key("homeserver"), source),
        listen=parse_listen(table.get("listen", str, DEFAULT_LISTEN), table.key("listen"), source),
        public_url=check_url(public_url, table.key("public_url"), source) if public_url else None,
        cors_origins=tuple(origins),
        upstream_timeout=table.positive("upstream_timeout", 60.0),
        server_name=_server_name(table.get("server_name", str, None), table),
        max_json_body=table.positive_int("max_json_body", DEFAULT_MAX_JSON_BODY),
        max_upload_size=table.positive_int("max_upload_size", DEFAULT_MAX_UPLOAD_SIZE),
        allowed_hosts=_host_names(table.get("allowed_hosts", list, []), table),
        max_accounts=table.positive_int("max_accounts", DEFAULT_MAX_ACCOUNTS),
        share_strategy=(table.choice("share_strategy", SHARE_STRATEGIES, "all")
                        if "share_strategy" in table.data else None),
        recovery_key_file=table.get("recovery_key_file", str, None),
    )
    table.finish()
    return server


def _host_names(values: list[Any], table: Table) -> tuple[str, ...]:
    if not all(isinstance(v, str) and HOST_NAME.fullmatch(v) for v in values):
        raise ConfigError(
            f"{table.source}: {table.key('allowed_hosts')}: expected a list of host names "
            f"(no port), got {values!r}"
        )
    return tuple(v.lower().rstrip(".") for v in values)


def _server_name(value: str | None, table: Table) -> str | None:
    if value is not None and not SERVER_NAME.fullmatch(value):
        raise ConfigError(
            f"{table.source}: {table.key('server_name')}: expected a Matrix server name "
            f"(host or host:port, as in @user:host), got {value!r}"
        )
    return value


def _store(data: Any, source: str, base: Path) -> StoreConfig:
    table = Table(data, "store", source)
    defaults = StoreConfig()
    data_dir = table.get("data_dir", str, None)
    passphrase_file = table.get("passphrase_file", str, None)
    url = table.get("url", str, None)
    store = StoreConfig(
        data_dir=(base / Path(data_dir).expanduser()) if data_dir else defaults.data_dir,
        use_keyring=table.get("use_keyring", bool, True),
        passphrase_file=(base / Path(passphrase_file).expanduser()) if passphrase_file else None,
        url=None if url is None else check_store_url(url, table.key("url"), source),
    )
    table.finish()
    return store


def _log(data: Any, source: str) -> LogConfig:
    table = Table(data, "log", source)
    log = LogConfig(level=table.choice("level", LOG_LEVELS, "info"),
                    format=table.choice("format", LOG_FORMATS, "text"))
    table.finish()
    return log


def _metrics(data: Any, source: str) -> MetricsConfig:
    table = Table(data, "metrics", source)
    listen = table.get("listen", str, None)
    metrics = MetricsConfig(
        listen=None if listen is None else parse_listen(listen, table.key("listen"), source)
    )
    table.finish()
    return metrics


def _encryption(data: Any, source: str) -> EncryptionConfig:
    table = Table(data, "encryption", source)
    encryption = EncryptionConfig(
        share_strategy=table.choice("share_strategy", SHARE_STRATEGIES, "all"),
        missing_key_wait=float(table.get("missing_key_wait", (int, float), 3.0)),
        undecryptable=table.choice("undecryptable", UNDECRYPTABLE_MODES, "notice"),
        pending_upload_ttl=table.positive("pending_upload_ttl", 86400.0),
        plaintext_files=table.choice("plaintext_files", PLAINTEXT_FILE_MODES, "refuse"),
    )
    if encryption.missing_key_wait < 0:
        raise ConfigError(f"{source}: encryption.missing_key_wait: must not be negative")
    table.finish()
    return encryption


def parse_config(data: Mapping[str, Any], source: str, base: Path | None = None,
                 require_servers: bool = True) -> Config:
    """Build a Config from parsed TOML; relative paths are relative to `base`. Without
    `require_servers` a file may leave the server to the command line (--homeserver)."""
    base = base or Path.cwd()
    top = Table(data, "", source)
    servers_data = top.get("servers", dict, {})
    servers = tuple(_server(name, table, source) for name, table in servers_data.items())
    config = Config(
        servers=servers,
        store=_store(top.get("store", dict, {}), source, base),
        log=_log(top.get("log", dict, {}), source),
        encryption=_encryption(top.get("encryption", dict, {}), source),
        metrics=_metrics(top.get("metrics", dict, {}), source),
        source=source,
    )
    top.finish()
    validate(config, require_servers)
    return config


def validate(config: Config, require_servers: bool = True) -> None:
    """Checks across tables: at least one server, no two listeners on one port."""
    if require_servers and not config.servers:
        raise ConfigError(
            f"{config.source}: servers: no [servers.NAME] table (or --homeserver) given"
        )
    # Two listeners on one port conflict even on different hosts once one of them is a wildcard;
    # refusing every shared port keeps the rule simple and the error early.
    seen: dict[int, str] = {}
    for server in config.servers:
        port = server.listen.port
        if port in seen:
            raise ConfigError(
                f"{config.source}: servers.{server.name}.listen: port {port} "
                f"is already used by servers.{seen[port]}"
            )
        seen[port] = server.name
    listen = config.metrics.listen
    if listen is not None and listen.port in seen:
        raise ConfigError(
            f"{config.source}: metrics.listen: port {listen.port} "
            f"is already used by servers.{seen[listen.port]}"
        )


def load_config(path: Path, require_servers: bool = True) -> Config:
    """Read and validate a TOML config file (see parse_config for `require_servers`)."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, str(path), base=path.parent, require_servers=require_servers)


def with_overrides(
    config: Config | None,
    *,
    homeserver: str | None = None,
    listen: str | None = None,
    data_dir: str | None = None,
    log_level: str | None = None,
) -> Config:
    """Apply command-line flags on top of a file (or of the embedded defaults)."""
    if config is None:
        if homeserver is None:
            raise ConfigError("<flags>: --homeserver is required when no --config file is given")
        server = ServerConfig(
            name="default", homeserver=check_url(homeserver, "--homeserver", "<flags>")
        )
        config = Config(servers=(server,), source="<flags>")
    servers = list(config.servers)
    if not servers and homeserver is not None:  # a file with the store, the server by flag
        servers = [ServerConfig(name="default", homeserver=check_url(homeserver, "--homeserver",
                                                                     "<flags>"))]
    if homeserver is not None or listen is not None:
        if len(servers) != 1:
            raise ConfigError(
                f"{config.source}: --homeserver/--listen apply to one server, "
                f"but the config has {len(servers)}"
            )
        first = servers[0]
        if homeserver is not None:
            first = replace(first, homeserver=check_url(homeserver, "--homeserver", "<flags>"))
        if listen is not None:
            first = replace(first, listen=parse_listen(listen, "--listen"))
        servers = [first]
    store = config.store
    if data_dir is not None:
        store = replace(store, data_dir=Path(data_dir).expanduser().absolute())
    log = config.log
    if log_level is not None:
        if log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"<flags>: --log-level: must be one of {', '.join(LOG_LEVELS)}")
        log = replace(log, level=log_level.lower())
    updated = replace(config, servers=tuple(servers), store=store, log=log)
    validate(updated)
    return updated


def store_only_config(config: Config | None, data_dir: str | None) -> Config:
    """For commands that only need the store (key export/import): no server is required."""
    base = config or Config(servers=(), source="<flags>")
    if data_dir is None:
        return base
    return replace(base, store=replace(base.store, data_dir=Path(data_dir).expanduser().absolute()))
