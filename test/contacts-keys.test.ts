// Issue 4, "Contacts, groups, devices and keys", end to end: SDK clients and raw edge clients over
// real HTTP/2 connections to the edge of an embedded mesh running in this process.
import { setTimeout as sleep } from "node:timers/promises";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ParleyClient, SendInput, SendOutcome, StateChange } from "../clients/ts/index.ts";
import { ParleyClientError } from "../clients/ts/index.ts";
import { BadRequestSchema, ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.ts";
import { ContentKind } from "../gen/parley/common/v1/envelope_pb.ts";
import { ConnectionState, MemberRole } from "../gen/parley/connection/v1/connection_pb.ts";
import { DeviceService } from "../gen/parley/edge/v1/device_service_pb.ts";
import type { KeyChangedEvent, PrekeysLowEvent } from "../gen/parley/edge/v1/frames_pb.ts";
import { KeyChangeKind } from "../gen/parley/edge/v1/frames_pb.ts";
import type { DeviceIdentity } from "../gen/parley/key/v1/key_pb.ts";
import { directConversationId } from "../lib/ids.ts";
import { deviceKeys, oneTimePrekeys, signedPrekey } from "../services/key/test-support.ts";
import type { Collected, RawClients, TestDevice, TestMesh, TestUser } from "./support/mesh-users.ts";
import {
  collect,
  connectUsers,
  createGroup,
  createUser,
  inBatches,
  mintToken,
  pairwiseEnvelope,
  rawClients,
  readCiphertext,
  startTestMesh,
} from "./support/mesh-users.ts";

// ---------------------------------------------------------------------------------------------
// Helpers (local: mesh-users.ts has no refusal or key-event helpers)

interface Refusal {
  readonly code: Code;
  readonly reason: string | undefined;
  readonly fields: readonly string[];
  readonly metadata: Readonly<Record<string, string>>;
}

/** How a raw edge call failed: code, ErrorInfo reason and metadata, the fields BadRequest names. */
async function refusal(call: Promise<unknown>): Promise<Refusal> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof ConnectError)) throw new Error(`expected a refusal, got ${String(err)}`);
  const info = err.findDetails(ErrorInfoSchema)[0];
  return {
    code: err.code,
    reason: info?.reason,
    // Each field once (a value may break several rules of one field).
    fields: [
      ...new Set(err.findDetails(BadRequestSchema).flatMap((b) => b.fieldViolations.map((v) => v.field))),
    ],
    metadata: info?.metadata ?? {},
  };
}

/** How an SDK send failed. */
async function sendRefusal(call: Promise<unknown>): Promise<{ code: Code; reason: string }> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof ParleyClientError)) throw new Error(`expected a refused send, got ${String(err)}`);
  return { code: err.code, reason: err.reason };
}

/** Opens Subscribe with a raw client: the refusal, or a failure of the test if a stream opens. */
async function streamRefusal(raw: RawClients): Promise<Refusal> {
  return refusal(
    (async () => {
      for await (const _ of raw.session.subscribe({})) break;
      throw new Error("the stream opened");
    })(),
  );
}

/**
 * Sends once the sender's views caught up with a change made just before (a new connection or
 * group member): NOT_FOUND and DEVICE_LIST_MISMATCH are retried for a while; anything else fails.
 */
async function sendEventually(
  client: ParleyClient,
  input: SendInput,
  timeoutMs = 15_000,
): Promise<SendOutcome> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await client.send({ ...input, clientMessageId: crypto.randomUUID() });
    } catch (err) {
      const retry =
        err instanceof ParleyClientError &&
        (err.code === Code.NotFound || err.reason === "DEVICE_LIST_MISMATCH") &&
        Date.now() < deadline;
      if (!retry) throw err;
      await sleep(100);
    }
  }
}

/** Polls `probe` until it returns a value `accept` takes, or fails after `timeoutMs`. */
async function eventually<T>(
  probe: () => Promise<T>,
  accept: (value: T) => boolean,
  what: string,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (accept(value)) return value;
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}: last ${JSON.stringify(value, bigintSafe)}`);
    await sleep(100);
  }
}

/** A timestamp the server must have set, as a Date. */
function dateOf(timestamp: Timestamp | undefined): Date {
  if (timestamp === undefined) throw new Error("a timestamp the server should have set is missing");
  return timestampDate(timestamp);
}

const bigintSafe = (_key: string, value: unknown) => (typeof value === "bigint" ? value.toString() : value);
const hex = (bytes: Uint8Array | undefined) => Buffer.from(bytes ?? []).toString("hex");

/** The KeyChanged and PrekeysLow events an SDK client surfaced, in arrival order. */
function keyEvents(client: ParleyClient) {
  const changed: KeyChangedEvent[] = [];
  const low: PrekeysLowEvent[] = [];
  client.onKeyChanged((e) => {
    changed.push(e);
  });
  client.onPrekeysLow((e) => {
    low.push(e);
  });
  return {
    changed,
    low,
    about: (userId: string, deviceId: string, kind: KeyChangeKind) =>
      changed.filter((e) => e.device?.userId === userId && e.device.deviceId === deviceId && e.kind === kind),
  };
}

/** The message texts in a device's inbox (raw Sync from the start, every page). */
async function inboxTexts(raw: RawClients): Promise<string[]> {
  const texts: string[] = [];
  let cursor: Uint8Array = new Uint8Array();
  for (;;) {
    const page = await raw.history.sync({ cursor, pageSize: 1000 });
    for (const item of page.items) {
      if (item.item.case === "message") texts.push(readCiphertext(item.item.value).text);
    }
    cursor = page.nextCursor;
    if (!page.more) return texts;
  }
}

/** A user who exists (a profile) but has no registered device: cheap, for big groups and claimers. */
const lightUser = (mesh: TestMesh, userId: string) =>
  createUser(mesh, userId, ["phone"], { unregistered: ["phone"] });

/** A user's device identities as `viewer` sees them (GetIdentityKeys). */
async function identities(viewer: TestDevice, userId: string): Promise<DeviceIdentity[]> {
  const response = await viewer.raw.devices.getIdentityKeys({ targetUserIds: [userId] });
  return response.users[0]?.devices ?? [];
}

// ---------------------------------------------------------------------------------------------

let mesh: TestMesh;
const clients: ParleyClient[] = [];

/** Connects an SDK client (closed after the file). */
async function connected(client: ParleyClient): Promise<ParleyClient> {
  clients.push(client);
  await client.connect();
  return client;
}

beforeAll(async () => {
  mesh = await startTestMesh();
}, 120_000);

afterAll(async () => {
  await Promise.allSettled(clients.map((c) => c.close()));
  await mesh?.stop();
}, 120_000);

describe("contacts through the edge", () => {
  it("request, accept, message; block: sends refused and nothing delivered; unblock, reconnect, delete", async () => {
    const alice = await createUser(mesh, "alice", ["phone", "laptop"]);
    const bob = await createUser(mesh, "bob", ["phone"]);
    const carol = await createUser(mesh, "carol", ["phone"]);
    const conversationId = directConversationId("alice", "bob");

    // Request -> accept.
    const asked = await bob.primary.raw.contacts.requestConnection({ otherUserId: "alice" });
    expect(asked.connection?.state).toBe(ConnectionState.PENDING_OUTGOING);
    const incoming = await alice.primary.raw.contacts.listConnections({
      states: [ConnectionState.PENDING_INCOMING],
    });
    expect(incoming.connections.map((c) => c.otherUserId)).toEqual(["bob"]);
    const accepted = await alice.primary.raw.contacts.acceptConnection({ otherUserId: "bob" });
    expect(accepted.connection).toMatchObject({ state: ConnectionState.ACCEPTED, conversationId });
    await connectUsers(carol, alice);

    const alicePhone = collect(alice.primary.client);
    await connected(alice.primary.client);
    const bobClient = await connected(bob.primary.client);
    const carolClient = await connected(carol.primary.client);
    const toAlice = (text: string) => pairwiseEnvelope(bob.primary, [alice, bob], text);

    // Message delivered.
    await sendEventually(bobClient, { conversationId, envelope: toAlice("hello") });
    await alicePhone.until((c) => c.texts(conversationId).includes("hello"), 15_000, "hello");

    // Block: bob's sends are refused by the sender service, and alice gets nothing.
    const blocked = await alice.primary.raw.contacts.blockUser({ otherUserId: "bob" });
    expect(blocked.connection?.state).toBe(ConnectionState.BLOCKED);
    // Wait for the sender's view of blocks without publishing anything: a send addressed to a
    // device alice does not have is refused either way (DEVICE_LIST_MISMATCH before the block is
    // known, then the block's refusal, which the sender checks first).
    const probe = {
      kind: ContentKind.TEXT,
      payload: {
        case: "perDevice" as const,
        value: {
          recipients: [{ userId: "alice", devices: [{ deviceId: "nope", ciphertext: new Uint8Array([1]) }] }],
        },
      },
    };
    await eventually(
      () => sendRefusal(bobClient.send({ conversationId, envelope: probe })),
      (r) => r.code === Code.PermissionDenied,
      "the block to reach the sender",
    );
    for (const text of ["blocked 1", "blocked 2", "blocked 3"]) {
      expect(await sendRefusal(bobClient.send({ conversationId, envelope: toAlice(text) }))).toEqual({
        code: Code.PermissionDenied,
        reason: "RECIPIENT_REFUSES",
      });
    }
    // Others still reach alice: once carol's later message is shown, nothing from bob came before it.
    await sendEventually(carolClient, {
      conversationId: directConversationId("alice", "carol"),
      envelope: pairwiseEnvelope(carol.primary, [alice, carol], "control"),
    });
    await alicePhone.until((c) => c.texts().includes("control"), 15_000, "carol's control message");
    expect(alicePhone.texts(conversationId)).toEqual(["hello"]);
    // Alice's laptop has no stream: its inbox (Sync) holds what was stored for it, nothing new from bob.
    expect(await inboxTexts(alice.device("laptop").raw)).toEqual(["hello", "control"]);
    // While blocked: bob cannot ask again (alice looks unknown), alice must unblock first.
    expect(await refusal(bob.primary.raw.contacts.requestConnection({ otherUserId: "alice" }))).toMatchObject(
      {
        code: Code.NotFound,
        reason: "USER_NOT_FOUND",
      },
    );
    expect(await refusal(alice.primary.raw.contacts.requestConnection({ otherUserId: "bob" }))).toMatchObject(
      {
        code: Code.FailedPrecondition,
        reason: "USER_BLOCKED",
      },
    );

    // Unblock, connect again, message again.
    await alice.primary.raw.contacts.unblockUser({ otherUserId: "bob" });
    await bob.primary.raw.contacts.requestConnection({ otherUserId: "alice" });
    const again = await alice.primary.raw.contacts.acceptConnection({ otherUserId: "bob" });
    expect(again.connection).toMatchObject({ state: ConnectionState.ACCEPTED, conversationId });
    await sendEventually(bobClient, { conversationId, envelope: toAlice("after unblock") });
    await alicePhone.until((c) => c.texts(conversationId).includes("after unblock"), 15_000, "after unblock");
    expect(alicePhone.texts(conversationId)).toEqual(["hello", "after unblock"]);

    // Delete: the conversation ends for both, and the connection is gone.
    await bob.primary.raw.contacts.deleteConnection({ otherUserId: "alice" });
    // The probe is refused before the deletion reaches the sender too (its device list is wrong),
    // so waiting for it never sends a real message.
    await eventually(
      () => sendRefusal(bobClient.send({ conversationId, envelope: probe })),
      (r) => r.code === Code.NotFound,
      "the deletion to reach the sender",
    );
    const afterDelete = await sendRefusal(
      bobClient.send({ conversationId, envelope: toAlice("after delete") }),
    );
    expect(afterDelete).toEqual({ code: Code.NotFound, reason: "CONVERSATION_NOT_FOUND" });
    expect(
      (await alice.primary.raw.contacts.listConnections({})).connections.map((c) => c.otherUserId),
    ).toEqual(["carol"]);
    expect(await refusal(bob.primary.raw.contacts.deleteConnection({ otherUserId: "alice" }))).toMatchObject({
      code: Code.NotFound,
    });
    alicePhone.dispose();
  });
});

describe("groups", () => {
  let owner: TestUser;
  let members: TestUser[];
  let bigGroup: string;

  beforeAll(async () => {
    owner = await createUser(mesh, "owner", ["phone"]);
    const ids = Array.from({ length: 999 }, (_, i) => `member${String(i).padStart(3, "0")}`);
    members = await inBatches(ids, 32, (id) => lightUser(mesh, id));
    bigGroup = await createGroup(owner, members, "the thousand");
  }, 120_000);

  it("holds 1,000 members (the owner and 999) and refuses the 1,001st with GROUP_FULL", async () => {
    const group = await owner.primary.raw.conversations.getConversation({ conversationId: bigGroup });
    expect(group.conversation?.memberCount).toBe(1000);
    const listed = await owner.primary.raw.conversations.listConversationMembers({
      conversationId: bigGroup,
      pageSize: 1000,
    });
    expect(listed.members).toHaveLength(1000);
    expect(listed.nextPageToken).toBe("");
    expect(listed.members.filter((m) => m.role === MemberRole.OWNER).map((m) => m.userId)).toEqual(["owner"]);

    const extra = await lightUser(mesh, "member999");
    await connectUsers(extra, owner);
    const full = await refusal(
      owner.primary.raw.conversations.addGroupMembers({
        conversationId: bigGroup,
        memberUserIds: ["member999"],
      }),
    );
    expect([full.code, full.reason]).toEqual([Code.FailedPrecondition, "GROUP_FULL"]);
    // Nothing changed, and the refused user sees no group.
    expect(
      (await owner.primary.raw.conversations.getConversation({ conversationId: bigGroup })).conversation
        ?.memberCount,
    ).toBe(1000);
    expect(
      await refusal(extra.primary.raw.conversations.getConversation({ conversationId: bigGroup })),
    ).toMatchObject({ code: Code.NotFound });
    // A group of 1,001 cannot be created either: 999 others at most, in the schema.
    const tooMany = await refusal(
      owner.primary.raw.conversations.createGroup({
        name: "too many",
        memberUserIds: [...members.map((m) => m.userId), "member999"],
      }),
    );
    expect([tooMany.code, tooMany.reason, tooMany.fields]).toEqual([
      Code.InvalidArgument,
      "VALIDATION_FAILED",
      ["member_user_ids"],
    ]);
  });

  it("lets only admins and the owner change a group, each within their role", async () => {
    const [boss, admin, member, x, y] = await Promise.all(
      ["boss", "admin", "plain", "xavier", "yara"].map((id) => lightUser(mesh, id)),
    );
    if (!boss || !admin || !member || !x || !y) throw new Error("users");
    await connectUsers(x, member);
    await connectUsers(y, admin);
    const conversationId = await createGroup(boss, [admin, member], "team");
    const as = (u: TestUser) => u.primary.raw.conversations;
    const denied = { code: Code.PermissionDenied, reason: "ROLE_NOT_ALLOWED" };

    // The owner promotes; the roles show.
    await as(boss).setMemberRole({ conversationId, memberUserId: "admin", role: MemberRole.ADMIN });

    // A member changes nothing.
    expect(await refusal(as(member).renameGroup({ conversationId, name: "mine" }))).toMatchObject(denied);
    expect(
      await refusal(as(member).addGroupMembers({ conversationId, memberUserIds: ["xavier"] })),
    ).toMatchObject(denied);
    expect(
      await refusal(as(member).removeGroupMembers({ conversationId, memberUserIds: ["admin"] })),
    ).toMatchObject(denied);
    expect(
      await refusal(
        as(member).setMemberRole({ conversationId, memberUserId: "admin", role: MemberRole.MEMBER }),
      ),
    ).toMatchObject(denied);

    // An admin renames, adds and removes members, but not the owner.
    expect(
      (await as(admin).renameGroup({ conversationId, name: "renamed" })).conversation?.kind,
    ).toMatchObject({
      case: "group",
      value: { name: "renamed" },
    });
    expect(
      (await as(admin).addGroupMembers({ conversationId, memberUserIds: ["yara"] })).addedUserIds,
    ).toEqual(["yara"]);
    expect(
      (await as(admin).removeGroupMembers({ conversationId, memberUserIds: ["yara"] })).removedUserIds,
    ).toEqual(["yara"]);
    expect(
      await refusal(as(admin).removeGroupMembers({ conversationId, memberUserIds: ["boss"] })),
    ).toMatchObject(denied);
    // Admins may promote members, but an admin cannot remove another admin: only the owner can.
    await as(admin).setMemberRole({ conversationId, memberUserId: "plain", role: MemberRole.ADMIN });
    expect(
      await refusal(as(admin).removeGroupMembers({ conversationId, memberUserIds: ["plain"] })),
    ).toMatchObject(denied);
    expect(
      (await as(boss).removeGroupMembers({ conversationId, memberUserIds: ["plain"] })).removedUserIds,
    ).toEqual(["plain"]);
    // The removed member no longer sees the group; the owner cannot leave while others remain.
    expect(await refusal(as(member).getConversation({ conversationId }))).toMatchObject({
      code: Code.NotFound,
    });
    expect(await refusal(as(boss).leaveGroup({ conversationId }))).toMatchObject({
      code: Code.FailedPrecondition,
      reason: "OWNER_MUST_TRANSFER",
    });
    const roles = await as(boss).listConversationMembers({ conversationId });
    expect(roles.members.map((m) => [m.userId, m.role]).sort()).toEqual([
      ["admin", MemberRole.ADMIN],
      ["boss", MemberRole.OWNER],
    ]);
  });
});

describe("devices and keys", () => {
  it("50 concurrent bundle claims never hand out a one-time prekey twice; the rest get the last-resort key", async () => {
    const dana = await createUser(mesh, "dana", ["phone"], { unregistered: ["phone"] });
    const keys = deviceKeys({ oneTimePrekeys: 20, firstOneTimeId: 1 });
    await dana.primary.raw.devices.registerDevice({
      displayName: "phone",
      identityKey: keys.identityKey,
      signedPrekey: keys.signedPrekey,
      lastResortPrekey: keys.lastResortPrekey,
      oneTimePrekeys: keys.oneTimePrekeys,
    });
    const danaEvents = keyEvents(dana.primary.client);
    await connected(dana.primary.client);
    // Ten contacts claim five bundles each, all at once.
    const claimers = await Promise.all(Array.from({ length: 10 }, (_, i) => lightUser(mesh, `claimer${i}`)));
    for (const claimer of claimers) await connectUsers(claimer, dana);
    for (const claimer of claimers) {
      await eventually(
        () => identities(claimer.primary, "dana"),
        (devices) => devices.length === 1,
        "the key service's view of dana's contacts",
      );
    }
    const claims = claimers.flatMap((claimer) =>
      Array.from({ length: 5 }, () =>
        claimer.primary.raw.devices.getPrekeyBundles({ targetUserId: "dana", deviceIds: ["phone"] }),
      ),
    );
    const bundles = (await Promise.all(claims)).map((r) => {
      expect(r.bundles).toHaveLength(1);
      return r.bundles[0];
    });
    const oneTime = bundles.flatMap((b) =>
      b?.prekey.case === "oneTimePrekey" ? [b.prekey.value.keyId] : [],
    );
    const lastResort = bundles.flatMap((b) =>
      b?.prekey.case === "lastResortPrekey" ? [b.prekey.value] : [],
    );
    expect(new Set(oneTime).size).toBe(oneTime.length); // never the same one twice
    expect([...oneTime].sort((a, b) => a - b)).toEqual(keys.oneTimePrekeys.map((k) => k.keyId));
    expect(lastResort).toHaveLength(30);
    expect(new Set(lastResort.map((k) => k.keyId))).toEqual(new Set([keys.lastResortPrekey.keyId]));
    expect(bundles.every((b) => hex(b?.identityKey) === hex(keys.identityKey))).toBe(true);
    // The device is told: its count is 0 and the last-resort key was used, live (PrekeysLow) and
    // when it asks.
    const count = await dana.primary.raw.devices.getPrekeyCount({});
    expect([count.oneTimePrekeyCount, count.lastResortPrekeyUsed]).toEqual([0, true]);
    await eventually(
      async () => danaEvents.low.length,
      (n) => n > 0,
      "PrekeysLow on dana's stream",
    );
  });

  it("rotation with a grace period: both keys valid until it ends; KeyChanged reaches contacts' devices only", async () => {
    const erin = await createUser(mesh, "erin", ["phone", "laptop"]);
    const frank = await createUser(mesh, "frank", ["phone"]);
    const gina = await createUser(mesh, "gina", ["phone"]);
    await connectUsers(frank, erin);
    const frankEvents = keyEvents(frank.primary.client);
    const laptopEvents = keyEvents(erin.device("laptop").client);
    const ginaEvents = keyEvents(gina.primary.client);
    await connected(frank.primary.client);
    await connected(erin.device("laptop").client);
    await connected(gina.primary.client);
    // The key service learns of the connection from the broker: wait until frank may see erin's keys.
    const visible = await eventually(
      () => identities(frank.primary, "erin"),
      (devices) => devices.length === 2,
      "erin's devices, as frank sees them",
    );
    const before = visible.find((d) => d.deviceId === "phone");
    if (before === undefined) throw new Error("erin's phone is not visible to frank");

    const fresh = deviceKeys({ oneTimePrekeys: 3, firstOneTimeId: 500 });
    const rotated = await erin.primary.raw.devices.rotateIdentityKey({
      identityKey: fresh.identityKey,
      signedPrekey: signedPrekey(fresh.identity, 2),
      lastResortPrekey: signedPrekey(fresh.identity, 100_001),
      oneTimePrekeys: fresh.oneTimePrekeys,
      gracePeriod: { seconds: 4n },
    });
    const validUntil = dateOf(rotated.previousValidUntil);
    expect(validUntil.getTime() - dateOf(rotated.effectiveAt).getTime()).toBe(4000);

    // Until the grace ends, contacts see the new key and the old one, with its end.
    const during = (await identities(frank.primary, "erin")).find((d) => d.deviceId === "phone");
    expect(hex(during?.identityKey)).toBe(hex(fresh.identityKey));
    expect(hex(during?.previousIdentityKey)).toBe(hex(before.identityKey));
    expect(dateOf(during?.previousIdentityKeyValidUntil)).toEqual(validUntil);
    // New sessions use the new key.
    const bundle = await frank.primary.raw.devices.getPrekeyBundles({
      targetUserId: "erin",
      deviceIds: ["phone"],
    });
    expect(hex(bundle.bundles[0]?.identityKey)).toBe(hex(fresh.identityKey));

    // KeyChanged through delivery: the contact's device and the owner's other device; not a stranger.
    for (const events of [frankEvents, laptopEvents]) {
      await eventually(
        async () => events.about("erin", "phone", KeyChangeKind.IDENTITY_ROTATED),
        (found) => found.length === 1,
        "KeyChanged IDENTITY_ROTATED",
      );
      const [event] = events.about("erin", "phone", KeyChangeKind.IDENTITY_ROTATED);
      expect(hex(event?.identityKey)).toBe(hex(fresh.identityKey));
      expect(dateOf(event?.previousValidUntil)).toEqual(validUntil);
    }
    // A device added reaches them too (both events went through the same path; gina got neither).
    await createUser(mesh, "erin", ["tablet"]);
    await eventually(
      async () => frankEvents.about("erin", "tablet", KeyChangeKind.DEVICE_ADDED),
      (found) => found.length === 1,
      "KeyChanged DEVICE_ADDED",
    );
    expect(ginaEvents.changed.filter((e) => e.device?.userId === "erin")).toEqual([]);

    // Once the grace ended, only the new key is valid.
    await sleep(Math.max(0, validUntil.getTime() - Date.now() + 50));
    const after = (await identities(frank.primary, "erin")).find((d) => d.deviceId === "phone");
    expect(hex(after?.identityKey)).toBe(hex(fresh.identityKey));
    expect(after?.previousIdentityKey).toHaveLength(0);
    expect(after?.previousIdentityKeyValidUntil).toBeUndefined();
  });

  it("answers bad input with precise codes and reasons", async () => {
    // hank's tablet has a token but no registration: the registrations below are refused on it.
    const hank = await createUser(mesh, "hank", ["phone", "tablet"], { unregistered: ["tablet"] });
    const ivy = await createUser(mesh, "ivy", ["phone"]);
    const contacts = hank.primary.raw.contacts;
    const devices = hank.primary.raw.devices;

    // Unknown users, self, duplicates.
    expect(await refusal(contacts.requestConnection({ otherUserId: "no-such-user" }))).toMatchObject({
      code: Code.NotFound,
      reason: "USER_NOT_FOUND",
    });
    expect(await refusal(contacts.requestConnection({ otherUserId: "hank" }))).toMatchObject({
      code: Code.InvalidArgument,
      reason: "SELF_CONNECTION",
    });
    const first = await contacts.requestConnection({ otherUserId: "ivy" });
    const repeat = await contacts.requestConnection({ otherUserId: "ivy" });
    expect(repeat.connection?.state).toBe(ConnectionState.PENDING_OUTGOING);
    expect(dateOf(repeat.connection?.createdAt)).toEqual(dateOf(first.connection?.createdAt));
    expect((await ivy.primary.raw.contacts.listConnections({})).connections).toHaveLength(1);
    await ivy.primary.raw.contacts.acceptConnection({ otherUserId: "hank" });
    expect(await refusal(contacts.requestConnection({ otherUserId: "ivy" }))).toMatchObject({
      code: Code.AlreadyExists,
      reason: "ALREADY_CONNECTED",
    });
    expect(
      await refusal(ivy.primary.raw.contacts.acceptConnection({ otherUserId: "no-such-user" })),
    ).toMatchObject({
      code: Code.NotFound,
    });
    expect(await refusal(devices.getPrekeyBundles({ targetUserId: "no-such-user" }))).toMatchObject({
      code: Code.NotFound,
      reason: "USER_NOT_FOUND",
    });

    // Oversize names: the schema's limits, naming the field.
    const longName = "x".repeat(65);
    expect(await refusal(contacts.setMyProfile({ displayName: longName }))).toEqual({
      code: Code.InvalidArgument,
      reason: "VALIDATION_FAILED",
      fields: ["display_name"],
      metadata: expect.any(Object),
    });
    expect(await refusal(contacts.setMyProfile({ displayName: "two\nlines" }))).toMatchObject({
      fields: ["display_name"],
    });
    expect(
      await refusal(
        hank.primary.raw.conversations.createGroup({ name: "g".repeat(129), memberUserIds: ["ivy"] }),
      ),
    ).toMatchObject({ code: Code.InvalidArgument, fields: ["name"] });

    // Keys: malformed (length, type prefix), badly signed; names too long.
    const register = (overrides: Record<string, unknown>) => {
      const k = deviceKeys({ oneTimePrekeys: 1 });
      return hank.device("tablet").raw.devices.registerDevice({
        displayName: "tablet",
        identityKey: k.identityKey,
        signedPrekey: k.signedPrekey,
        lastResortPrekey: k.lastResortPrekey,
        oneTimePrekeys: k.oneTimePrekeys,
        ...overrides,
      });
    };
    const k = deviceKeys();
    expect(await refusal(register({ identityKey: k.identityKey.subarray(1) }))).toMatchObject({
      code: Code.InvalidArgument,
      reason: "VALIDATION_FAILED",
      fields: ["identity_key"],
    });
    const wrongType = new Uint8Array(k.identityKey);
    wrongType[0] = 0x06;
    expect(await refusal(register({ identityKey: wrongType }))).toMatchObject({
      code: Code.InvalidArgument,
      fields: ["identity_key"],
    });
    expect(
      await refusal(
        register({
          signedPrekey: { ...k.signedPrekey, publicKey: k.signedPrekey.publicKey.subarray(0, 20) },
        }),
      ),
    ).toMatchObject({ code: Code.InvalidArgument, fields: ["signed_prekey.public_key"] });
    // Signed by another identity than the one registered.
    const badSignature = await refusal(register({ signedPrekey: k.signedPrekey }));
    expect(badSignature).toMatchObject({
      code: Code.InvalidArgument,
      reason: "INVALID_SIGNATURE",
      fields: ["signed_prekey.signature"],
    });
    expect(await refusal(register({ displayName: longName }))).toMatchObject({
      code: Code.InvalidArgument,
      fields: ["display_name"],
    });
    expect(
      await refusal(
        devices.uploadOneTimePrekeys({
          oneTimePrekeys: [...oneTimePrekeys(900, 1), ...oneTimePrekeys(900, 1)],
        }),
      ),
    ).toMatchObject({ code: Code.InvalidArgument, reason: "VALIDATION_FAILED" });

    // The sixth device: FAILED_PRECONDITION DEVICE_LIMIT_REACHED (hank has "phone", the tablet
    // is still unregistered).
    expect((await devices.listDevices({})).devices).toHaveLength(1);
    await createUser(mesh, "hank", ["d2", "d3", "d4", "d5"]);
    const limit = await refusal(
      hank.device("tablet").raw.devices.registerDevice({
        displayName: "tablet",
        identityKey: k.identityKey,
        signedPrekey: k.signedPrekey,
        lastResortPrekey: k.lastResortPrekey,
      }),
    );
    expect([limit.code, limit.reason, limit.metadata.maxDevices]).toEqual([
      Code.FailedPrecondition,
      "DEVICE_LIMIT_REACHED",
      "5",
    ]);
    expect((await devices.listDevices({})).devices).toHaveLength(5);
  });

  it("removing a device closes its stream, revokes its tokens and drops its inbox", async () => {
    const jill = await createUser(mesh, "jill", ["phone", "tablet"]);
    const kate = await createUser(mesh, "kate", ["phone"]);
    const conversationId = await connectUsers(kate, jill);
    const tablet = jill.device("tablet");
    const tabletClient = tablet.newClient({ autoAck: false });
    const tabletSeen: Collected = collect(tabletClient);
    const tabletStates: StateChange[] = [];
    tabletClient.onStateChange((change) => {
      tabletStates.push(change);
    });
    await connected(tabletClient);
    const jillPhoneEvents = keyEvents(jill.primary.client);
    const kateEvents = keyEvents(kate.primary.client);
    await connected(jill.primary.client);
    const kateClient = await connected(kate.primary.client);

    // The tablet gets messages it does not acknowledge: they stay in its inbox.
    for (const text of ["one", "two"]) {
      await sendEventually(kateClient, {
        conversationId,
        envelope: pairwiseEnvelope(kate.primary, [jill, kate], text),
      });
    }
    await tabletSeen.until((c) => c.texts(conversationId).length === 2, 15_000, "the tablet's messages");
    expect(await inboxTexts(tablet.raw)).toEqual(["one", "two"]);

    // Removed from the phone: the tablet's live stream is closed as revoked, and the SDK stops.
    const removed = await jill.primary.raw.devices.removeDevice({ deviceId: "tablet" });
    const removedAt = dateOf(removed.removedAt);
    const closed = await eventually(
      async () => tabletStates.find((s) => s.state === "closed"),
      (s) => s !== undefined,
      "the tablet's stream to close",
    );
    expect(closed?.error).toMatchObject({ code: Code.PermissionDenied, reason: "DEVICE_REVOKED" });
    expect(tabletClient.state).toBe("closed");

    // Its token opens no stream and makes no call any more.
    expect(await streamRefusal(tablet.raw)).toMatchObject({
      code: Code.Unauthenticated,
      reason: "DEVICE_REVOKED",
    });
    expect(await refusal(tablet.raw.history.sync({}))).toMatchObject({
      code: Code.Unauthenticated,
      reason: "DEVICE_REVOKED",
      metadata: { removedAt: removedAt.toISOString() },
    });
    // A token issued after the removal (signing in again) is a device that must register first:
    // unary calls work, a stream is refused until it registers.
    const later = await mintToken(mesh, "jill", "tablet", { now: new Date(removedAt.getTime() + 1_000) });
    const signedInAgain = rawClients(mesh.edgeUrl, later, mesh.transport());
    expect(await streamRefusal(signedInAgain)).toMatchObject({
      code: Code.PermissionDenied,
      reason: "DEVICE_NOT_REGISTERED",
    });
    // The inbox is gone (history drops it on KeyChanged DEVICE_REMOVED).
    await eventually(
      () => inboxTexts(signedInAgain),
      (texts) => texts.length === 0,
      "the tablet's inbox to be dropped",
    );
    expect((await jill.primary.raw.devices.listDevices({})).devices.map((d) => d.deviceId)).toEqual([
      "phone",
    ]);
    // The owner's other device and the contact are told.
    for (const events of [jillPhoneEvents, kateEvents]) {
      await eventually(
        async () => events.about("jill", "tablet", KeyChangeKind.DEVICE_REMOVED),
        (found) => found.length === 1,
        "KeyChanged DEVICE_REMOVED",
      );
    }
    // New messages are not addressed to it (the sender knows jill's devices), and it has nothing new.
    await sendEventually(kateClient, {
      conversationId,
      envelope: pairwiseEnvelope(kate.primary, [{ ...jill, devices: [jill.primary] }, kate], "three"),
    });
    expect(await inboxTexts(signedInAgain)).toEqual([]);

    // Registered anew (with the new token), the device streams again.
    const fresh = deviceKeys({ oneTimePrekeys: 1 });
    await signedInAgain.devices.registerDevice({
      displayName: "tablet again",
      identityKey: fresh.identityKey,
      signedPrekey: fresh.signedPrekey,
      lastResortPrekey: fresh.lastResortPrekey,
    });
    const opened = await (async () => {
      for await (const response of signedInAgain.session.subscribe({})) return response.frame?.body.case;
      return undefined;
    })();
    expect(opened).toBe("ready");
    // GetDeviceStatus is internal: the edge's DeviceService does not offer it.
    expect(DeviceService.methods.map((m) => m.name)).not.toContain("GetDeviceStatus");
  });
});
