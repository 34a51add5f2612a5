// The checker on synthetic histories: a clean one passes, and each invariant broken once is
// reported as that invariant and no other.
import { describe, expect, it } from "vitest";
import { check, describeViolations, violatedInvariants } from "./checker.ts";
import type { DisplayRecord, FaultHistory, ReceiptRecord, SendRecord, StoredRecord } from "./history.ts";

const C = "0190f1c2-0000-7000-8000-00000000000c";
const M1 = "0190f1c2-0000-7000-8000-000000000001";
const M2 = "0190f1c2-0000-7000-8000-000000000002";
const OTHER = "0190f1c2-0000-7000-8000-0000000000ff";
const A = "alice/phone";
const B1 = "bob/phone";
const B2 = "bob/laptop";

function display(at: number, device: string, messageId: string, seq: bigint, cmid: string): DisplayRecord {
  return {
    at,
    device,
    conversationId: C,
    messageId,
    seq,
    sender: A,
    clientMessageId: cmid,
    source: "stream",
    outOfOrder: false,
  };
}

/** alice sends c1 and c2 to bob's two devices; both show both in order; bob's phone acks both. */
function clean(): {
  conversations: FaultHistory["conversations"];
  sends: SendRecord[];
  displays: DisplayRecord[];
  receipts: ReceiptRecord[];
  stored: Record<string, StoredRecord[]>;
  gaps: FaultHistory["gaps"];
  notes: FaultHistory["notes"];
} {
  return {
    conversations: [{ conversationId: C, kind: "direct", devices: [A, B1, B2] }],
    sends: [
      {
        sender: A,
        conversationId: C,
        clientMessageId: "c1",
        attempts: [{ startedAt: 0, at: 1, messageId: M1 }],
      },
      {
        sender: A,
        conversationId: C,
        clientMessageId: "c2",
        attempts: [
          { startedAt: 1.5, at: 2, error: "unavailable [SERVICE_UNAVAILABLE]" },
          { startedAt: 2.5, at: 3, messageId: M2, duplicate: true },
        ],
      },
    ],
    displays: [
      display(4, B1, M1, 1n, "c1"),
      display(5, B2, M1, 1n, "c1"),
      display(6, B1, M2, 2n, "c2"),
      display(7, B2, M2, 2n, "c2"),
    ],
    receipts: [
      {
        at: 8,
        observer: A,
        conversationId: C,
        reader: B1,
        kind: "delivered",
        upToSeq: 2n,
        messageIds: [],
      },
    ],
    stored: {
      [C]: [
        { messageId: M1, seq: 1n, sender: A, clientMessageId: "c1" },
        { messageId: M2, seq: 2n, sender: A, clientMessageId: "c2" },
      ],
    },
    gaps: [],
    notes: [],
  };
}

describe("fault history checker", () => {
  it("passes a history that keeps every invariant, and counts what it checked", () => {
    const result = check(clean());
    expect(describeViolations(result.violations)).toBe("no violations");
    expect(result.summary).toEqual({
      ackedSends: 2,
      repeatedSends: 1,
      answeredAsRetry: 1,
      displays: 4,
      expectedDisplays: 4,
      receipts: 1,
      devices: 3,
    });
  });

  it("I1: an acknowledged message a target device never displayed", () => {
    const history = clean();
    history.displays = history.displays.filter((d) => !(d.device === B2 && d.messageId === M2));
    const { violations } = check(history);
    expect(violatedInvariants(violations)).toEqual(["I1"]);
    expect(violations[0]).toMatchObject({ device: B2, messageId: M2, clientMessageId: "c2" });
  });

  it("I2: a device displays a message twice", () => {
    const history = clean();
    history.displays.push(display(9, B1, M1, 1n, "c1"));
    const { violations } = check(history);
    // Shown again after seq 2 is also out of order: I2 names the duplicate, I3 the order.
    expect(violatedInvariants(violations)).toEqual(["I2", "I3"]);
    expect(violations.find((v) => v.invariant === "I2")).toMatchObject({ device: B1, messageId: M1 });
  });

  it("I2: history stores one send twice (a redelivery given a second seq)", () => {
    const history = clean();
    history.stored[C]?.push({ messageId: M2, seq: 3n, sender: A, clientMessageId: "c2" });
    const { violations } = check(history);
    expect(violatedInvariants(violations)).toEqual(["I2"]);
    expect(violations[0]?.detail).toContain("2 times, at seqs 2, 3");
  });

  it("I3: a device displays a conversation out of seq order", () => {
    const history = clean();
    history.displays = [
      display(4, B1, M2, 2n, "c2"),
      display(5, B2, M1, 1n, "c1"),
      display(6, B1, M1, 1n, "c1"),
      display(7, B2, M2, 2n, "c2"),
    ];
    const { violations } = check(history);
    expect(violatedInvariants(violations)).toEqual(["I3"]);
    expect(violations[0]).toMatchObject({ device: B1, messageId: M1 });
  });

  it("I3: stored seqs with a hole", () => {
    const history = clean();
    history.stored[C] = [
      { messageId: M1, seq: 1n, sender: A, clientMessageId: "c1" },
      { messageId: M2, seq: 3n, sender: A, clientMessageId: "c2" },
    ];
    history.displays = history.displays.map((d) => (d.messageId === M2 ? { ...d, seq: 3n } : d));
    const { violations } = check(history);
    expect(violatedInvariants(violations)).toEqual(["I3"]);
    expect(violations[0]?.detail).toContain("stores seqs 1,3");
  });

  it("I4: the server recorded an ack covering a message no device of the reader had displayed", () => {
    const history = clean();
    history.receipts.push({
      at: 5.5,
      observer: A,
      conversationId: C,
      reader: B2,
      kind: "delivered",
      upToSeq: 2n,
      messageIds: [],
    });
    const { violations } = check(history);
    expect(violatedInvariants(violations)).toEqual(["I4"]);
    expect(violations[0]).toMatchObject({ device: B2, messageId: M2 });
  });

  it("I4 holds when the receipt covers the reader's own user's messages (history counts them as delivered)", () => {
    const history = clean();
    // bob's phone sends seq 3; bob's laptop's receipt up to 3 comes before anyone displays it.
    const M3 = "0190f1c2-0000-7000-8000-000000000003";
    history.sends.push({
      sender: B1,
      conversationId: C,
      clientMessageId: "c3",
      attempts: [{ startedAt: 8, at: 9, messageId: M3 }],
    });
    history.stored[C]?.push({ messageId: M3, seq: 3n, sender: B1, clientMessageId: "c3" });
    history.receipts.push({
      at: 10,
      observer: B1,
      conversationId: C,
      reader: B2,
      kind: "delivered",
      upToSeq: 3n,
      messageIds: [],
    });
    history.displays.push(
      { ...display(11, A, M3, 3n, "c3"), sender: B1 },
      { ...display(12, B2, M3, 3n, "c3"), sender: B1 },
    );
    expect(describeViolations(check(history).violations)).toBe("no violations");
  });

  it("I4 speaks only for this history's sends (a population reused by several runs)", () => {
    const history = clean();
    // Seq 1 is an earlier run's message: stored, but displayed in that run's history, not here.
    history.stored[C] = [
      { messageId: OTHER, seq: 1n, sender: A, clientMessageId: "c0" },
      { messageId: M1, seq: 2n, sender: A, clientMessageId: "c1" },
      { messageId: M2, seq: 3n, sender: A, clientMessageId: "c2" },
    ];
    history.displays = history.displays.map((d) => ({ ...d, seq: d.seq + 1n }));
    history.receipts = history.receipts.map((r) => ({ ...r, upToSeq: 3n }));
    expect(describeViolations(check(history).violations)).toBe("no violations");
  });

  it("I5: a retried send answered with a new id", () => {
    const history = clean();
    history.sends[0]?.attempts.push({ startedAt: 9, at: 10, messageId: OTHER, duplicate: false });
    const { violations } = check(history);
    expect(violatedInvariants(violations)).toEqual(["I5"]);
    expect(violations[0]).toMatchObject({ clientMessageId: "c1", messageId: M1 });
  });

  it("I5: the answered id is not the id devices display", () => {
    const history = clean();
    history.displays = history.displays.map((d) => (d.messageId === M2 ? { ...d, messageId: OTHER } : d));
    history.stored[C] = [
      { messageId: M1, seq: 1n, sender: A, clientMessageId: "c1" },
      { messageId: OTHER, seq: 2n, sender: A, clientMessageId: "c2" },
    ];
    const { violations } = check(history);
    expect(violatedInvariants(violations)).toEqual(["I5"]);
    expect(violations.every((v) => v.clientMessageId === "c2" && v.messageId === OTHER)).toBe(true);
  });
});
