"""Secrets shared among our own devices (spec "Sharing"): ``m.secret.request`` and
``m.secret.send`` for the cross-signing private keys and the key backup's key.

We answer a request only from one of our own devices that we trust as verified, and only over
Olm; we take a secret only from the verified own device we asked, in answer to our request, and
only if it is the key our identity lists. Another user's request is never answered.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from e2eproxy.crypto.account import AccountState
from e2eproxy.crypto.backup_service import BACKUP_SECRET, BackupService
from e2eproxy.crypto.changes import DeviceRecord
from e2eproxy.crypto.claims import OlmClaimer
from e2eproxy.crypto.cross_signing import SECRET_NAMES
from e2eproxy.crypto.devices import DeviceTracker
from e2eproxy.crypto.olm import OlmSessions
from e2eproxy.crypto.requests import RequestQueue
from e2eproxy.crypto.results import SyncResult
from e2eproxy.crypto.to_device import ToDeviceEvent, ToDeviceRouter
from e2eproxy.crypto.trust import DeviceTrust, TrustState
from e2eproxy.protocol import api
from e2eproxy.types import DeviceId, UserId

logger = logging.getLogger(__name__)
REQUEST, SEND = "m.secret.request", "m.secret.send"
CROSS_SIGNING_SECRETS = tuple(SECRET_NAMES.values())
MAX_PENDING = 64


class SecretGossip:
    def __init__(self, account: AccountState, devices: DeviceTracker, olm: OlmSessions,
                 claimer: OlmClaimer, queue: RequestQueue, state: TrustState,
                 backup: BackupService) -> None:
        self._account, self._devices, self._olm = account, devices, olm
        self._claimer, self._queue, self._state = claimer, queue, state
        self._backup = backup
        self._asked: dict[str, tuple[str, DeviceId]] = {}  # request id -> (name, device)
        self._to_answer: dict[DeviceId, list[tuple[str, str]]] = {}  # awaiting an Olm session

    def register(self, router: ToDeviceRouter) -> None:
        router.register(REQUEST, self._on_request)
        router.register(SEND, self._on_send, plaintext=False)

    # -- asking ---------------------------------------------------------------------------
    def request_missing(self, device: DeviceRecord) -> None:
        """Ask a (just verified) own device for the cross-signing keys we do not hold."""
        own = self._state.own
        held = ((own.master, SECRET_NAMES["master"]),
                (own.self_signing, SECRET_NAMES["self_signing"]),
                (own.user_signing, SECRET_NAMES["user_signing"]))
        missing = [name for key, name in held if key is None]
        if self._state.identity(self._account.user_id) is None:
            missing = []  # nothing to check a cross-signing key against
        if self._backup.version is not None and self._backup.secret() is None:
            missing.append(BACKUP_SECRET)  # checked against the backup's public key
        for name in missing:
            request_id = secrets.token_urlsafe(12)
            if len(self._asked) >= MAX_PENDING:
                del self._asked[next(iter(self._asked))]
            self._asked[request_id] = (name, device.device_id)
            content = {"name": name, "action": "request", "request_id": request_id,
                       "requesting_device_id": self._account.device_id}
            self._queue.add(api.to_device(REQUEST, {device.user_id: {device.device_id: content}}))

    def _on_send(self, event: ToDeviceEvent, result: SyncResult) -> None:
        request_id, secret = event.content.get("request_id"), event.content.get("secret")
        if not isinstance(request_id, str) or not isinstance(secret, str):
            return
        asked = self._asked.get(request_id)
        sender = event.sender.device
        if asked is None or sender is None or event.sender.user_id != self._account.user_id:
            logger.info("a secret nobody asked for (or from an unknown device) was ignored")
            return
        name, device_id = asked
        if sender.device_id != device_id or self._state.device_trust(sender) is not (
            DeviceTrust.VERIFIED
        ):
            logger.warning("a secret from a device we did not ask or do not trust was ignored")
            return
        del self._asked[request_id]
        if name == BACKUP_SECRET:
            imported = self._backup.import_key(secret) is not None
            logger.log(logging.INFO if imported else logging.WARNING,
                       "the backup key from %s %s", device_id,
                       "is in use" if imported else "does not match our backup")
            return
        if self._state.import_secret(name, secret):
            logger.info("received %s from our device %s", name, device_id)
            if name == SECRET_NAMES["self_signing"]:  # now this device can be signed
                body = self._state.sign_own_device_request(self._account.device_keys())
                if body is not None:
                    self._queue.add(api.signatures_upload(body))
        else:
            logger.warning("the %s received from %s is not our identity's key", name, device_id)

    # -- answering ------------------------------------------------------------------------
    def _on_request(self, event: ToDeviceEvent, result: SyncResult) -> None:
        content = event.content
        name, request_id = content.get("name"), content.get("request_id")
        device_id = content.get("requesting_device_id")
        if content.get("action") != "request" or event.sender.user_id != self._account.user_id:
            return  # cancellations need nothing: answers go at once; other users never
        if not (isinstance(name, str) and isinstance(request_id, str)
                and isinstance(device_id, str)) or device_id == self._account.device_id:
            return
        device = self._devices.get(self._account.user_id, device_id)
        if device is None or device.deleted or (
            self._state.device_trust(device) is not DeviceTrust.VERIFIED
        ):
            logger.info("a secret request from an unverified device of ours was ignored")
            return
        secret = (self._backup.secret() if name == BACKUP_SECRET
                  else self._state.own.secrets().get(name))
        if secret is None:
            return
        self._answer(device, request_id, secret)

    def _answer(self, device: DeviceRecord, request_id: str, secret: str) -> None:
        content = self._olm.encrypt(device, SEND, {"request_id": request_id, "secret": secret})
        if content is None:  # no Olm session yet: claim one, answer once it exists
            self._to_answer.setdefault(device.device_id, []).append((request_id, secret))
            claim = self._claimer.claim_request([device])
            if claim is not None:
                self._queue.add(claim)
            return
        messages: dict[str, dict[str, Any]] = {device.user_id: {device.device_id: content}}
        self._queue.add(api.to_device("m.room.encrypted", messages))

    def new_session(self, device: DeviceRecord) -> None:
        """An Olm session with ``device`` now exists: send the answers that waited for it."""
        if device.user_id != UserId(self._account.user_id):
            return
        for request_id, secret in self._to_answer.pop(device.device_id, []):
            self._answer(device, request_id, secret)
