"""Recovery: secret storage in account data, the key backup, and the cross-signing keys, set up
and read back the way Element does (matrix-rust-sdk's ``Recovery``).

``enable`` bootstraps cross-signing if needed, makes a secret storage key (random, or from a
passphrase), stores the cross-signing keys and a new backup's key encrypted in account data, and
starts uploading room keys; the recovery key is returned once. ``recover`` opens secret storage
with a recovery key or passphrase, takes the cross-signing keys (signing this device) and the
backup key, and restores the backup. Secrets leave this process only encrypted (AES-CTR with
HMAC, HKDF from the storage key); the recovery key is never logged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote

from e2eproxy.crypto.backup import (
    BackupDecryptionKey,
    BackupError,
    backup_auth_data,
    backup_version_body,
)
from e2eproxy.crypto.backup_service import BACKUP_SECRET
from e2eproxy.crypto.recovery_key import RecoveryKeyError
from e2eproxy.crypto.secret_storage import (
    CROSS_SIGNING_MASTER,
    CROSS_SIGNING_SELF_SIGNING,
    CROSS_SIGNING_USER_SIGNING,
    DEFAULT_KEY_TYPE,
    SecretStorageError,
    SecretStorageKey,
    default_key_content,
    default_key_id,
    new_key,
    open_key,
    read_secret,
    secret_account_data,
)
from e2eproxy.errors import E2EProxyError, UpstreamError
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.backup_io import restore_all, runtime_of
from e2eproxy.proxy.outgoing import call
from e2eproxy.proxy.upstream import Upstream

log = logging.getLogger(__name__)
V3 = "/_matrix/client/v3"
CROSS_SIGNING_SECRETS = (CROSS_SIGNING_MASTER, CROSS_SIGNING_SELF_SIGNING,
                         CROSS_SIGNING_USER_SIGNING)
ALL_SECRETS = (*CROSS_SIGNING_SECRETS, BACKUP_SECRET)
IDENTITY_WAIT_S = 15.0


class RecoveryError(E2EProxyError):
    """Something the user can fix; ``code`` for programs (the control interface passes it on)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


# -- account data ----------------------------------------------------------------------------


def _data_path(account: Account, event_type: str) -> str:
    return (f"{V3}/user/{quote(account.user_id, safe='')}/account_data/"
            f"{quote(event_type, safe='')}")


async def get_account_data(upstream: Upstream, account: Account, event_type: str
                           ) -> dict[str, Any] | None:
    status, body = await call(upstream, account, "GET", _data_path(account, event_type))
    if status == 404:
        return None
    if status != 200 or not isinstance(body, dict):
        raise RecoveryError("homeserver", f"could not read {event_type}: {status}")
    return body


async def put_account_data(upstream: Upstream, account: Account, event_type: str,
                           content: dict[str, Any]) -> None:
    status, _ = await call(upstream, account, "PUT", _data_path(account, event_type), content)
    if status != 200:
        raise RecoveryError("homeserver", f"could not store {event_type}: {status}")


# -- status ----------------------------------------------------------------------------------


async def status(upstream: Upstream, account: Account) -> dict[str, Any]:
    default = await get_account_data(upstream, account, DEFAULT_KEY_TYPE)
    key_id = default_key_id(default)
    stored = [name for name in ALL_SECRETS
              if key_id and _encrypted_for(await get_account_data(upstream, account, name),
                                           key_id)]
    server = await _server_backup(upstream, account)
    progress = runtime_of(account).progress
    return {
        "secret_storage": {"default_key": key_id, "secrets": stored},
        "backup": {
            "server_version": server.get("version") if server else None,
            "in_use": account.machine.backup.version,
            "has_key": account.machine.backup.decryption_key is not None,
            "to_upload": await account.store.backup_queue_size(account.key),
            "restore": vars(progress).copy(),
        },
        "cross_signing": account.machine.trust.status(),
    }


def _encrypted_for(content: Any, key_id: str) -> bool:
    encrypted = content.get("encrypted") if isinstance(content, dict) else None
    return isinstance(encrypted, dict) and key_id in encrypted


async def _server_backup(upstream: Upstream, account: Account) -> dict[str, Any] | None:
    status_, body = await call(upstream, account, "GET", f"{V3}/room_keys/version")
    if status_ == 404:
        return None
    if status_ != 200 or not isinstance(body, dict):
        raise RecoveryError("homeserver", f"could not read the key backup version: {status_}")
    return body


# -- enable ----------------------------------------------------------------------------------


async def enable(upstream: Upstream, account: Account, *, passphrase: str | None,
                 bootstrap: Any, reset: bool = False) -> dict[str, Any]:
    """Set up recovery; ``bootstrap`` is a coroutine function making cross-signing keys (the
    caller's, as it needs the password). ``reset``: new cross-signing keys and a new backup
    even if there are some (the old ones stop being used). Returns the recovery key, once."""
    trust = account.machine.trust
    own = trust.state.own
    if reset:
        await bootstrap()
    elif own.master is None or own.self_signing is None or own.user_signing is None:
        if trust.status()["has_identity"]:
            raise RecoveryError(
                "identity_exists",
                "this user has a cross-signing identity whose keys are not here: run "
                "`recovery recover` with its recovery key, verify this device with another one, "
                "or start over with `recovery reset`")
        await bootstrap()
    # PBKDF2 (500,000 rounds) takes a moment: off the event loop.
    key = await asyncio.to_thread(new_key, passphrase=passphrase)
    await put_account_data(upstream, account, key.account_data_type, key.description)
    version = await _new_backup(upstream, account)
    await _store_secrets(upstream, account, key)
    await put_account_data(upstream, account, DEFAULT_KEY_TYPE, default_key_content(key.key_id))
    log.info("recovery set up for %s (backup version %s)", account.user_id, version)
    return {"recovery_key": key.recovery_key(), "backup_version": version}


async def _new_backup(upstream: Upstream, account: Account) -> str:
    backup_key = BackupDecryptionKey.generate()
    auth = account.machine.backup.signed_auth_data(backup_key)
    status_, body = await call(upstream, account, "POST", f"{V3}/room_keys/version",
                               backup_version_body(auth))
    version = body.get("version") if isinstance(body, dict) else None
    if status_ != 200 or not isinstance(version, str):
        raise RecoveryError("homeserver", f"could not create a key backup: {status_}")
    async with account.step() as step:  # the key is saved before anything depends on it
        step.machine.backup.use(version, auth, backup_key)
    await account.store.queue_all_for_backup(account.key)
    account.wake_backup()
    return version


async def _store_secrets(upstream: Upstream, account: Account, key: SecretStorageKey) -> None:
    secrets = account.machine.trust.state.own.secrets()
    backup = account.machine.backup.secret()
    if backup is not None:
        secrets[BACKUP_SECRET] = backup
    for name, value in secrets.items():
        await put_account_data(upstream, account, name, secret_account_data(key, name, value))


# -- recover ---------------------------------------------------------------------------------


async def open_storage(upstream: Upstream, account: Account, user_input: str
                       ) -> SecretStorageKey:
    default = await get_account_data(upstream, account, DEFAULT_KEY_TYPE)
    key_id = default_key_id(default)
    if key_id is None:
        raise RecoveryError("no_secret_storage", "this user has no secret storage to recover from")
    description = await get_account_data(upstream, account, "m.secret_storage.key." + key_id)
    if description is None:
        raise RecoveryError("no_secret_storage", "the secret storage key's description is gone")
    try:
        return await asyncio.to_thread(open_key, user_input.strip(), key_id, description)
    except (SecretStorageError, RecoveryKeyError):
        raise RecoveryError("wrong_key", "that recovery key or passphrase does not open this "
                                         "user's secret storage") from None


async def recover(upstream: Upstream, account: Account, user_input: str, *,
                  restore: bool = True) -> dict[str, Any]:
    """Take the cross-signing keys and the backup key from secret storage, sign this device,
    and restore the backup (in the background; progress in ``status``)."""
    key = await open_storage(upstream, account, user_input)
    await _know_own_identity(account)
    imported = []
    for name in CROSS_SIGNING_SECRETS:
        secret = await _read(upstream, account, key, name)
        if secret is not None:
            async with account.step(wake=True) as step:
                if step.machine.trust.state.import_secret(name, secret):
                    imported.append(name)
    if CROSS_SIGNING_SELF_SIGNING in imported:
        async with account.step(wake=True) as step:
            step.machine.trust.sign_this_device()
    version = await _use_backup(upstream, account, await _read(upstream, account, key,
                                                                BACKUP_SECRET))
    if version is not None and restore:
        account.in_background(restore_all(upstream, account))
    log.info("recovered %s: %d cross-signing keys, backup %s", account.user_id, len(imported),
             version)
    return {"imported": imported, "backup_version": version, "restoring": bool(version and restore)}


async def _read(upstream: Upstream, account: Account, key: SecretStorageKey, name: str
                ) -> str | None:
    content = await get_account_data(upstream, account, name)
    if content is None or not _encrypted_for(content, key.key_id):
        return None
    try:
        return read_secret(key, name, content)
    except SecretStorageError as exc:
        log.warning("the stored %s could not be read: %s", name, exc)
        return None


async def _know_own_identity(account: Account) -> None:
    """Our identity as the server lists it (secrets are checked against it)."""
    async with account.step(wake=True) as step:
        step.machine.refresh_devices([account.user_id])
    loop = asyncio.get_running_loop()
    end = loop.time() + IDENTITY_WAIT_S
    while account.machine.trust.state.identity(account.user_id) is None and loop.time() < end:
        await asyncio.sleep(0.1)


async def _use_backup(upstream: Upstream, account: Account, secret: str | None) -> str | None:
    if secret is None:
        return None
    try:
        backup_key = BackupDecryptionKey.from_base64(secret)
        server = await _server_backup(upstream, account)
        if server is None:
            return None
        auth = backup_auth_data(server)
    except BackupError as exc:
        log.warning("the key backup cannot be used: %s", exc)
        return None
    version = server.get("version")
    if not isinstance(version, str) or not backup_key.matches(auth):
        log.warning("the stored backup key is not the current backup's: not used")
        return None
    async with account.step() as step:
        step.machine.backup.use(version, auth, backup_key)
    await account.store.queue_all_for_backup(account.key)
    account.wake_backup()
    return version


async def recover_quietly(upstream: Upstream, account: Account, user_input: str) -> None:
    """For a bot's new login (``recovery_key_file``): recover, and log what went wrong."""
    try:
        result = await recover(upstream, account, user_input)
    except (RecoveryError, UpstreamError) as exc:
        log.warning("automatic recovery for %s did not run: %s", account.user_id, exc)
        return
    log.info("automatic recovery for %s: %s", account.user_id, result)
