"""A real Synapse homeserver for the e2e test tier.

`SynapseServer` writes a throw-away homeserver config into a directory (SQLite, one plain-HTTP
client listener on 127.0.0.1, no federation listener, every rate limit raised far out of reach),
starts Synapse as a subprocess of the current interpreter, waits for `/_matrix/client/versions`,
registers users through the shared-secret admin API and stops the process by PID.

Notes on Synapse 1.163 that shaped this file:

* Rate limits are read with `RatelimitSettings.parse` from the keys listed in `RATE_LIMIT_KEYS`
  (dotted keys are nested mappings: `rc_login.address` is `rc_login: {address: ...}`). Unknown
  `rc_*` keys are ignored silently, so a typo would leave a default limit in force; the names below
  were copied from `synapse/config/ratelimiting.py`. `rc_federation` is the exception: it is
  `FederationRatelimitSettings(**mapping)` and rejects unknown sub-keys.
* `enable_authenticated_media: true` (the default) marks every new local upload as authenticated;
  the legacy `/_matrix/media/v3/download/...` route then answers 404 `M_NOT_FOUND` for it and only
  `/_matrix/client/v1/media/download/...` serves it.
* `/_matrix/media/v1/create` (MSC2246 asynchronous upload) is served by default; no experimental
  flag is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support.processes import DIE_WITH_PARENT, free_port

# A rate limit nobody reaches in a test run.
_UNLIMITED = {"per_second": 1_000_000, "burst_count": 1_000_000}

# Every `RatelimitSettings.parse` key of synapse/config/ratelimiting.py (Synapse 1.163).
RATE_LIMIT_KEYS = (
    "rc_message",
    "rc_registration",
    "rc_registration_token_validity",
    "rc_login.address",
    "rc_login.account",
    "rc_login.failed_attempts",
    "rc_admin_redaction",
    "rc_joins.local",
    "rc_joins.remote",
    "rc_joins_per_room",
    "rc_key_requests",
    "rc_3pid_validation",
    "rc_invites.per_room",
    "rc_invites.per_user",
    "rc_invites.per_issuer",
    "rc_third_party_invite",
    "rc_media_create",
    "rc_presence.per_user",
    "rc_delayed_event_mgmt",
    "rc_room_creation",
    "rc_reports",
    "rc_user_directory",
    "rc_profile",
)

STARTUP_TIMEOUT = 60.0

# Never route test traffic to 127.0.0.1 through an HTTP(S)_PROXY from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
STOP_TIMEOUT = 10.0


def _set_nested(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = dict(value)


def rate_limits_config() -> dict[str, Any]:
    """The `rc_*` part of homeserver.yaml with every limit out of reach."""
    config: dict[str, Any] = {}
    for key in RATE_LIMIT_KEYS:
        _set_nested(config, key, _UNLIMITED)
    config["rc_federation"] = {
        "window_size": 1000,
        "sleep_limit": 1_000_000,
        "sleep_delay": 0,
        "reject_limit": 1_000_000,
        "concurrent": 1_000_000,
    }
    return config


def _write_signing_key(path: Path) -> None:
    import signedjson.key

    key = signedjson.key.generate_signing_key("a_" + secrets.token_hex(2))
    with path.open("w") as handle:
        signedjson.key.write_signing_keys(handle, [key])


def _log_config(log_file: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(message)s"
            }
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": str(log_file),
                "encoding": "utf8",
            }
        },
        "root": {"level": "WARNING", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


@dataclass(frozen=True)
class RegisteredUser:
    user_id: str
    access_token: str
    device_id: str
    password: str

    # Unpacks as `user_id, access_token = await synapse.register(...)`.
    def __iter__(self) -> Any:
        return iter((self.user_id, self.access_token))


class SynapseError(RuntimeError):
    """Synapse did not start, died, or answered an admin request with an error."""


class SynapseServer:
    """One Synapse process configured for tests; see the module docstring."""

    def __init__(self, base_dir: Path, server_name: str = "localhost") -> None:
        self.base_dir = Path(base_dir)
        self.server_name = server_name
        self.host = "127.0.0.1"
        self.port = 0
        self.shared_secret = secrets.token_hex(16)
        self.config_path = self.base_dir / "homeserver.yaml"
        self.log_path = self.base_dir / "homeserver.log"
        self.stdout_path = self.base_dir / "stdout.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- config --------------------------------------------------------------------------------

    def write_config(self) -> Path:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        signing_key = self.base_dir / "signing.key"
        _write_signing_key(signing_key)
        log_config = self.base_dir / "log_config.yaml"
        log_config.write_text(yaml.safe_dump(_log_config(self.log_path)))
        media_store = self.base_dir / "media_store"
        media_store.mkdir(exist_ok=True)

        config: dict[str, Any] = {
            "server_name": self.server_name,
            "public_baseurl": self.base_url + "/",
            "pid_file": str(self.base_dir / "homeserver.pid"),
            "report_stats": False,
            "signing_key_path": str(signing_key),
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "log_config": str(log_config),
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": [self.host],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {
                "name": "sqlite3",
                "args": {"database": str(self.base_dir / "homeserver.db")},
            },
            "enable_registration": False,
            "registration_shared_secret": self.shared_secret,
            "bcrypt_rounds": 4,
            "presence": {"enabled": False},
            "url_preview_enabled": False,
            "caches": {"sync_response_cache_duration": 0},
            "media_store_path": str(media_store),
            "max_upload_size": "100M",
            "enable_authenticated_media": True,
            "enable_metrics": False,
            "federation_domain_whitelist": [],
            "allow_public_rooms_over_federation": False,
            **rate_limits_config(),
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.config_path

    # -- process -------------------------------------------------------------------------------

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        if self.process is not None:
            raise SynapseError("Synapse is already started")
        if importlib.util.find_spec("synapse") is None:
            raise SynapseError(
                f"matrix-synapse is not installed for {sys.executable}; "
                "install the test extra: pip install -e '.[test]'"
            )
        # The port comes from binding port 0 and releasing it; if something grabs it before
        # Synapse binds, start again on a new one.
        for attempt in range(3):
            self.write_config()
            self._spawn()
            try:
                self._wait_ready(timeout)
                return
            except SynapseError as exc:
                self.stop()
                if attempt == 2 or "Address already in use" not in str(exc):
                    raise
            except BaseException:
                self.stop()
                raise

    def _spawn(self) -> None:
        with self.stdout_path.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=DIE_WITH_PARENT,
            )

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        url = self.base_url + "/_matrix/client/versions"
        last_error = ""
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise SynapseError(
                    f"Synapse exited with status {code} during startup\n{self.log_tail()}"
                )
            try:
                with _opener.open(url, timeout=2) as response:
                    if response.status == 200 and "versions" in json.load(response):
                        return
            except (OSError, ValueError) as exc:
                last_error = repr(exc)
            time.sleep(0.1)
        raise SynapseError(
            f"Synapse did not answer {url} within {timeout:.0f} s (last error: {last_error})\n"
            f"{self.log_tail()}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.stdout_path, self.log_path):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name} (last {len(tail)} lines) ---\n" + "\n".join(tail))
        return "\n".join(parts) or "(no Synapse log written)"

    def __enter__(self) -> SynapseServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- users ---------------------------------------------------------------------------------

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    def _registration_body(
        self, nonce: str, localpart: str, password: str, admin: bool
    ) -> dict[str, Any]:
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(nonce.encode())
        mac.update(b"\x00")
        mac.update(localpart.encode())
        mac.update(b"\x00")
        mac.update(password.encode())
        mac.update(b"\x00")
        mac.update(b"admin" if admin else b"notadmin")
        return {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }

    def register_sync(
        self, localpart: str, password: str | None = None, admin: bool = False
    ) -> RegisteredUser:
        """Register through `/_synapse/admin/v1/register` (blocking; for sync fixtures)."""
        password = password or secrets.token_urlsafe(12)
        url = self.base_url + "/_synapse/admin/v1/register"
        nonce = _json_request("GET", url)["nonce"]
        body = self._registration_body(nonce, localpart, password, admin)
        answer = _json_request("POST", url, body)
        return RegisteredUser(
            answer["user_id"], answer["access_token"], answer["device_id"], password
        )

    async def register(
        self, localpart: str, password: str | None = None, admin: bool = False
    ) -> RegisteredUser:
        """Register through `/_synapse/admin/v1/register`; unpacks as (user_id, access_token)."""
        password = password or secrets.token_urlsafe(12)
        url = self.base_url + "/_synapse/admin/v1/register"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                nonce = (await _checked_json(response))["nonce"]
            body = self._registration_body(nonce, localpart, password, admin)
            async with session.post(url, json=body) as response:
                answer = await _checked_json(response)
        return RegisteredUser(
            answer["user_id"], answer["access_token"], answer["device_id"], password
        )

    # -- raw reads, for ciphertext-only assertions ---------------------------------------------

    async def room_messages(
        self, access_token: str, room_id: str, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Room history as Synapse stores it, newest first, read directly (never via a proxy)."""
        path = f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id, safe='')}/messages"
        params = {"dir": "b", "limit": str(limit)}
        headers = {"Authorization": f"Bearer {access_token}"}
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.base_url + path, params=params, headers=headers) as resp,
        ):
            answer = await _checked_json(resp)
        return list(answer.get("chunk", []))

    async def client_request(
        self,
        method: str,
        path: str,
        access_token: str | None = None,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """One client-server API call straight to Synapse; raises on a non-2xx answer."""
        headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, self.base_url + path, json=json_body, params=params, headers=headers
            ) as response,
        ):
            return await _checked_json(response)


async def _checked_json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    text = await response.text()
    if response.status // 100 != 2:
        raise SynapseError(f"{response.method} {response.url} -> {response.status}: {text}")
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def _json_request(method: str, url: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _opener.open(request, timeout=30) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        raise SynapseError(f"{method} {url} -> {exc.code}: {exc.read().decode()}") from None
    assert isinstance(answer, dict)
    return answer
