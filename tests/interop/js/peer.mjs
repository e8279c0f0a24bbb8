// One Matrix device with matrix-js-sdk and its Rust crypto (matrix-sdk-crypto as wasm): the
// crypto stack Element Web runs. The Python tests drive it over JSON lines: one request
// {"id", "cmd", "args"} per stdin line, one answer {"id", "ok", "result" | "error"} per stdout
// line. Everything the SDK logs goes to stderr, which the tests keep as the peer's log.

import { createInterface } from "node:readline";
import { format } from "node:util";

import { decryptAttachment, encryptAttachment } from "matrix-encrypt-attachment";
import {
    ClientEvent,
    createClient,
    Direction,
    MatrixEvent,
    MatrixEventEvent,
    RoomEvent,
} from "matrix-js-sdk";
import {
    AllDevicesIsolationMode,
    CryptoEvent,
    decodeRecoveryKey,
    EventShieldColour,
    EventShieldReason,
    OnlySignedDevicesIsolationMode,
    VerificationPhase,
    VerificationRequestEvent,
    VerifierEvent,
} from "matrix-js-sdk/lib/crypto-api/index.js";

// stdout is the protocol channel: every log line of the SDK (console.*) goes to stderr.
for (const level of ["log", "info", "debug", "warn", "error", "trace"]) {
    console[level] = (...args) => process.stderr.write(format(...args) + "\n");
}

const POLL_MS = 50;
let client = null;
let password = null; // this device's user's password, for user-interactive auth
const seen = new Map(); // event id -> MatrixEvent, every timeline event of every room
const verifications = new Map(); // flow id (transaction or request event id) -> entry
// The secret storage key, as the app's getSecretStorageKey callback gives it (Element asks
// its user; here the test sets it, or it is cached when bootstrap makes one).
const secretStorage = { keyId: null, key: null };

function need(condition, message) {
    if (!condition) throw new Error(message);
}

async function until(what, timeoutMs, probe) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const value = await probe();
        if (value) return value;
        if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
}

function remember(event) {
    if (event.getId()) seen.set(event.getId(), event);
}

async function describe(event) {
    const failure = event.isDecryptionFailure();
    let shield = null;
    if (event.isEncrypted() && !failure) {
        const info = await client.getCrypto().getEncryptionInfoForEvent(event);
        if (info) {
            shield = {
                colour: EventShieldColour[info.shieldColour],
                reason: info.shieldReason === null ? null : EventShieldReason[info.shieldReason],
            };
        }
    }
    return {
        event_id: event.getId(),
        room_id: event.getRoomId(),
        sender: event.getSender(),
        type: event.getType(),
        content: event.getContent(),
        wire_type: event.getWireType(),
        encrypted: event.isEncrypted(),
        decryption_failure: failure ? String(event.decryptionFailureReason) : null,
        session_id: event.isEncrypted() ? event.getWireContent().session_id : null,
        sender_device: event.isEncrypted() ? event.getWireContent().device_id : null,
        shield,
    };
}

async function login({ base_url, user, password: args_password, device_name }) {
    need(client === null, "already logged in");
    const anonymous = createClient({ baseUrl: base_url });
    const answer = await anonymous.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user },
        password: args_password,
        initial_device_display_name: device_name,
    });
    client = createClient({
        baseUrl: base_url,
        accessToken: answer.access_token,
        userId: answer.user_id,
        deviceId: answer.device_id,
        cryptoCallbacks: {
            getSecretStorageKey: async ({ keys }) => {
                const keyId = secretStorage.keyId ?? Object.keys(keys)[0];
                return secretStorage.key ? [keyId, secretStorage.key] : null;
            },
            cacheSecretStorageKey: (keyId, _info, key) => {
                secretStorage.keyId = keyId;
                secretStorage.key = key;
            },
        },
    });
    await client.initRustCrypto({ useIndexedDB: false });
    password = args_password;
    client.on(RoomEvent.Timeline, (event) => remember(event));
    client.on(CryptoEvent.VerificationRequestReceived, (request) => track(request));
    client.on(MatrixEventEvent.Decrypted, (event) => remember(event));
    const prepared = new Promise((resolve) => {
        client.on(ClientEvent.Sync, (state) => {
            if (state === "PREPARED") resolve();
        });
    });
    await client.startClient({ initialSyncLimit: 20 });
    await prepared;
    return {
        user_id: answer.user_id,
        device_id: answer.device_id,
        access_token: answer.access_token,
        ed25519: (await client.getCrypto().getOwnDeviceKeys()).ed25519,
    };
}

async function createRoom({ invite = [], rotation_period_msgs, history_visibility, name }) {
    const encryption = { algorithm: "m.megolm.v1.aes-sha2" };
    if (rotation_period_msgs) encryption.rotation_period_msgs = rotation_period_msgs;
    const initialState = [{ type: "m.room.encryption", state_key: "", content: encryption }];
    if (history_visibility) {
        initialState.push({
            type: "m.room.history_visibility",
            state_key: "",
            content: { history_visibility },
        });
    }
    const { room_id } = await client.createRoom({
        preset: "private_chat",
        invite,
        name,
        initial_state: initialState,
    });
    await until(`room ${room_id} in the store`, 15000, () => client.getRoom(room_id));
    return { room_id };
}

async function join({ room_id, timeout_ms = 15000 }) {
    await until(`invite to ${room_id}`, timeout_ms, () => client.getRoom(room_id));
    await client.joinRoom(room_id);
    await until(`own join in ${room_id}`, timeout_ms, () =>
        client.getRoom(room_id)?.getMyMembership() === "join");
    return {};
}

async function waitForMember({ room_id, user_id, membership = "join", timeout_ms = 15000 }) {
    await until(`${user_id} ${membership} in ${room_id}`, timeout_ms, () =>
        client.getRoom(room_id)?.getMember(user_id)?.membership === membership);
    return {};
}

async function send({ room_id, type, content }) {
    const { event_id } = await client.sendEvent(room_id, type, content);
    return { event_id };
}

async function waitForEvent({ event_id, body, room_id, timeout_ms = 20000 }) {
    const match = (event) =>
        (event_id === undefined || event.getId() === event_id) &&
        (room_id === undefined || event.getRoomId() === room_id) &&
        (body === undefined || event.getContent().body === body);
    let last = null;
    try {
        const found = await until(`event ${event_id ?? body}`, timeout_ms, () => {
            for (const event of seen.values()) {
                if (!match(event)) continue;
                last = event;
                // A key may still be on its way: wait for decryption (or a final failure).
                if (!event.isBeingDecrypted() && !event.isDecryptionFailure()) return event;
            }
            return null;
        });
        return await describe(found);
    } catch (error) {
        if (last !== null) return await describe(last); // the failure, for the test to show
        throw error;
    }
}

async function messages({ room_id, limit = 50, from = null }) {
    // Straight from the server's /messages, each event decrypted by the crypto stack; `end`
    // is where the next (older) page starts, null at the room's beginning.
    const answer = await client.createMessagesRequest(room_id, from, limit, Direction.Backward);
    const events = [];
    for (const raw of answer.chunk) {
        const event = new MatrixEvent({ ...raw, room_id });
        await client.decryptEventIfNeeded(event);
        events.push(await describe(event));
    }
    return { events, end: answer.chunk.length ? (answer.end ?? null) : null };
}

async function uploadFile({ data_b64, mimetype, name }) {
    const plain = Buffer.from(data_b64, "base64");
    const encrypted = await encryptAttachment(plain);
    const upload = await client.uploadContent(new Blob([encrypted.data]), {
        type: "application/octet-stream",
        includeFilename: false,
    });
    return { file: { ...encrypted.info, url: upload.content_uri, mimetype }, name, size: plain.length };
}

async function downloadFile({ file }) {
    // Authenticated media, as Element does; the bytes are ciphertext until decryptAttachment.
    const [server, mediaId] = file.url.slice("mxc://".length).split("/");
    const url = `${client.baseUrl}/_matrix/client/v1/media/download/${server}/${mediaId}`;
    const response = await fetch(url, {
        headers: { Authorization: `Bearer ${client.getAccessToken()}` },
    });
    need(response.ok, `download ${file.url}: ${response.status}`);
    const plain = await decryptAttachment(await response.arrayBuffer(), file);
    return { data_b64: Buffer.from(plain).toString("base64") };
}

async function deviceIds({ user_id }) {
    const devices = await client.getCrypto().getUserDeviceInfo([user_id], true);
    return { device_ids: [...(devices.get(user_id)?.keys() ?? [])].sort() };
}

// -- cross-signing and isolation ------------------------------------------------------------

async function bootstrapCrossSigning({ reset = false }) {
    const crypto = client.getCrypto();
    await crypto.bootstrapCrossSigning({
        setupNewCrossSigning: reset,
        authUploadDeviceSigningKeys: async (makeRequest) => {
            try {
                return await makeRequest(null); // a first upload needs no auth (MSC3967)
            } catch (error) {
                const session = error?.data?.session;
                need(session !== undefined, `cross-signing upload refused: ${error}`);
                return await makeRequest({
                    type: "m.login.password",
                    identifier: { type: "m.id.user", user: client.getUserId() },
                    password,
                    session,
                });
            }
        },
    });
    return { ready: await crypto.isCrossSigningReady() };
}

async function setIsolation({ mode }) {
    const crypto = client.getCrypto();
    crypto.setDeviceIsolationMode(
        mode === "only_signed"
            ? new OnlySignedDevicesIsolationMode()
            : new AllDevicesIsolationMode(false),
    );
    return {};
}

async function verificationStatus({ user_id, device_id }) {
    const crypto = client.getCrypto();
    const user = await crypto.getUserVerificationStatus(user_id);
    const result = {
        user_verified: user.isVerified(),
        user_cross_signing_verified: user.isCrossSigningVerified(),
        user_was_verified: user.wasCrossSigningVerified(),
    };
    if (device_id) {
        const device = await crypto.getDeviceVerificationStatus(user_id, device_id);
        result.device = device && {
            verified: device.isVerified(),
            signed_by_owner: device.signedByOwner,
            cross_signing_verified: device.crossSigningVerified,
            locally_verified: device.localVerified,
        };
    }
    return result;
}

// -- secret storage and key backup -----------------------------------------------------------

async function setupRecovery({ passphrase }) {
    // As Element's "Set up recovery": cross-signing, secret storage with a new key, a backup.
    const crypto = client.getCrypto();
    await bootstrapCrossSigning({ reset: false });
    const generated = await crypto.createRecoveryKeyFromPassphrase(passphrase || undefined);
    await crypto.bootstrapSecretStorage({
        createSecretStorageKey: async () => generated,
        setupNewSecretStorage: true,
        setupNewKeyBackup: true,
    });
    await crypto.checkKeyBackupAndEnable();
    return {
        recovery_key: generated.encodedPrivateKey,
        backup_version: await crypto.getActiveSessionBackupVersion(),
    };
}

async function restoreFromBackup({ recovery_key }) {
    // As Element's "Verify with recovery key", then "restore from backup".
    const crypto = client.getCrypto();
    secretStorage.keyId = null;
    secretStorage.key = decodeRecoveryKey(recovery_key);
    await crypto.loadSessionBackupPrivateKeyFromSecretStorage();
    await crypto.checkKeyBackupAndEnable();
    const result = await crypto.restoreKeyBackup();
    return { total: result.total, imported: result.imported };
}

async function redecrypt({ room_id }) {
    // After keys arrive from a backup, Element retries the events it could not decrypt.
    const room = client.getRoom(room_id);
    const events = room ? room.getLiveTimeline().getEvents() : [];
    for (const event of events) {
        if (event.isDecryptionFailure()) {
            await event.attemptDecryption(client.getCrypto(), { isRetry: true });
        }
    }
    return {};
}

// -- verification ----------------------------------------------------------------------------

function track(request) {
    const id = request.transactionId;
    if (!id || verifications.has(id)) return verifications.get(id);
    const entry = { request, sas: null, error: null, attached: false };
    verifications.set(id, entry);
    const attach = () => {
        const verifier = request.verifier;
        if (!verifier || entry.attached) return;
        entry.attached = true;
        verifier.on(VerifierEvent.ShowSas, (sas) => {
            entry.sas = sas;
        });
        verifier.verify().catch((error) => {
            entry.error = String(error);
        });
    };
    entry.attach = attach;
    request.on(VerificationRequestEvent.Change, attach);
    attach();
    return entry;
}

function entryOf(id) {
    const entry = verifications.get(id);
    need(entry !== undefined, `no verification ${id}`);
    return entry;
}

async function requestVerification({ user_id, device_id, room_id }) {
    const crypto = client.getCrypto();
    const request = room_id
        ? await crypto.requestVerificationDM(user_id, room_id)
        : await crypto.requestDeviceVerification(user_id, device_id);
    await until("the request's id", 10000, () => request.transactionId);
    track(request);
    return { id: request.transactionId };
}

function describeRequest(id, entry) {
    const { request } = entry;
    return {
        id,
        phase: VerificationPhase[request.phase],
        other_user: request.otherUserId,
        other_device: request.otherDeviceId ?? null,
        initiated_by_me: request.initiatedByMe,
        room_id: request.roomId ?? null,
        cancellation_code: request.cancellationCode ?? null,
        error: entry.error,
    };
}

async function listVerifications() {
    return [...verifications.entries()].map(([id, entry]) => describeRequest(id, entry));
}

async function waitVerification({ id, phase, timeout_ms = 20000 }) {
    const entry = await until(`verification ${id}`, timeout_ms, () => verifications.get(id));
    await until(`verification ${id} ${phase}`, timeout_ms, () =>
        VerificationPhase[entry.request.phase] === phase ||
        entry.request.phase === VerificationPhase.Cancelled);
    return describeRequest(id, entry);
}

async function acceptVerification({ id }) {
    await entryOf(id).request.accept();
    return {};
}

async function startSas({ id }) {
    const entry = entryOf(id);
    await entry.request.startVerification("m.sas.v1");
    entry.attach();
    return {};
}

async function waitSas({ id, timeout_ms = 20000 }) {
    const entry = entryOf(id);
    await until(`the emoji of ${id}`, timeout_ms, () => {
        entry.attach();
        if (entry.request.phase === VerificationPhase.Cancelled) {
            throw new Error(`cancelled: ${entry.request.cancellationCode}`);
        }
        return entry.sas;
    });
    return { emoji: entry.sas.sas.emoji, decimals: entry.sas.sas.decimal };
}

async function confirmSas({ id, match = true }) {
    const entry = entryOf(id);
    need(entry.sas !== null, "no emoji to confirm yet");
    if (match) await entry.sas.confirm();
    else entry.sas.mismatch();
    return {};
}

async function shutdown() {
    if (client !== null) client.stopClient();
    setTimeout(() => process.exit(0), 10);
    return {};
}

const COMMANDS = {
    login,
    create_room: createRoom,
    join,
    invite: async ({ room_id, user_id }) => (await client.invite(room_id, user_id), {}),
    wait_for_member: waitForMember,
    send,
    wait_for_event: waitForEvent,
    messages,
    upload_file: uploadFile,
    download_file: downloadFile,
    device_ids: deviceIds,
    bootstrap_cross_signing: bootstrapCrossSigning,
    set_isolation: setIsolation,
    verification_status: verificationStatus,
    request_verification: requestVerification,
    list_verifications: listVerifications,
    wait_verification: waitVerification,
    accept_verification: acceptVerification,
    start_sas: startSas,
    wait_sas: waitSas,
    confirm_sas: confirmSas,
    setup_recovery: setupRecovery,
    restore_from_backup: restoreFromBackup,
    redecrypt,
    shutdown,
};

function answer(message) {
    process.stdout.write(JSON.stringify(message) + "\n");
}

const lines = createInterface({ input: process.stdin });
lines.on("line", async (line) => {
    let request;
    try {
        request = JSON.parse(line);
    } catch (error) {
        answer({ id: null, ok: false, error: `bad request line: ${error}` });
        return;
    }
    const { id, cmd, args = {} } = request;
    try {
        need(cmd in COMMANDS, `unknown command ${cmd}`);
        need(cmd === "login" || client !== null, "log in first");
        answer({ id, ok: true, result: await COMMANDS[cmd](args) });
    } catch (error) {
        console.error(`command ${cmd} failed:`, error);
        answer({ id, ok: false, error: String(error?.stack ?? error) });
    }
});
lines.on("close", () => shutdown());
