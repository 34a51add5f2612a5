import { x25519 } from "@noble/curves/ed25519.js";
import { describe, expect, it } from "vitest";
import { generateKeyPair, serializePublicKey, xeddsaSign } from "../test-support.ts";
import { isSerializedPublicKey, montgomeryToEdwards, xeddsaVerify } from "./xeddsa.ts";

const hex = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ""), "hex"));

// libsignal's own curve25519 test vector (rust/protocol/src/curve.rs `test_signature`, also in
// libsignal-protocol-c's test_curve25519.c): a signature made by libsignal, whose last byte has
// the sign bit set (0x88), over the serialized 33-byte ephemeral public key.
const KAT = {
  privateKey: hex("c097248412e58bf05df487968205132794178e367637f5818f81e0e6ce73e865"),
  publicKey: hex("05 ab7e717d4a163b7d9a1d8071dfe9dcf8cdcd1cea3339b6356be84d887e322c64"),
  message: hex("05 edce9d9c415ca78cb7252e72c2c4a554d3eb29485a0e1d503118d1a82d99fb4a"),
  signature: hex(
    "5de88ca9a89b4a115da79109c67c9c7464a3e4180274f1cb8c63c2984e286dfb" +
      "ede82deb9dcd9fae0bfbb821569b3d9001bd8130cd11d486cef047bd60b86e88",
  ),
};

describe("xeddsaVerify", () => {
  it("accepts libsignal's known-answer signature", () => {
    expect(serializePublicKey(x25519.getPublicKey(KAT.privateKey))).toEqual(KAT.publicKey);
    expect((KAT.signature[63] ?? 0) & 0x80).toBe(0x80);
    expect(xeddsaVerify(KAT.publicKey, KAT.message, KAT.signature)).toBe(true);
  });

  it("rejects every single-bit change of the known-answer signature, message and key", () => {
    for (const [name, field] of [
      ["signature", "signature"],
      ["message", "message"],
      ["publicKey", "publicKey"],
    ] as const) {
      const original = KAT[field];
      // The key's type byte is checked separately below.
      const from = field === "publicKey" ? 1 : 0;
      for (let i = from; i < original.length; i++) {
        for (let bit = 0; bit < 8; bit++) {
          const changed = Uint8Array.from(original);
          changed[i] = (changed[i] ?? 0) ^ (1 << bit);
          const args = { ...KAT, [field]: changed };
          expect(xeddsaVerify(args.publicKey, args.message, args.signature), `${name}[${i}] bit ${bit}`).toBe(
            false,
          );
        }
      }
    }
  });

  it("signs and verifies in libsignal's form and in the paper's form", () => {
    let signBitsSeen = 0;
    for (let i = 0; i < 16; i++) {
      const identity = generateKeyPair();
      const { publicKey: message } = generateKeyPair();
      const libsignal = xeddsaSign(identity.privateKey, message);
      const spec = xeddsaSign(identity.privateKey, message, { mode: "spec" });
      signBitsSeen |= 1 << ((libsignal[63] ?? 0) >> 7);
      expect((spec[63] ?? 0) & 0x80).toBe(0);
      expect(xeddsaVerify(identity.publicKey, message, libsignal)).toBe(true);
      expect(xeddsaVerify(identity.publicKey, message, spec)).toBe(true);
    }
    // With 16 keys both sign bits occur (probability of not: 2^-15), so both paths ran.
    expect(signBitsSeen).toBe(0b11);
  });

  it("leaves its inputs untouched, also when they are Node Buffers (as gRPC decodes bytes)", () => {
    const signature = Buffer.from(KAT.signature);
    const publicKey = Buffer.from(KAT.publicKey);
    const message = Buffer.from(KAT.message);
    expect(xeddsaVerify(publicKey, message, signature)).toBe(true);
    expect(xeddsaVerify(publicKey, message, signature)).toBe(true);
    expect(new Uint8Array(signature)).toEqual(KAT.signature);
  });

  it("rejects a tampered message, a tampered signature and the wrong key", () => {
    const identity = generateKeyPair();
    const other = generateKeyPair();
    const { publicKey: message } = generateKeyPair();
    const signature = xeddsaSign(identity.privateKey, message);
    expect(xeddsaVerify(identity.publicKey, message, signature)).toBe(true);

    const tamperedMessage = Uint8Array.from(message);
    tamperedMessage[5] = (tamperedMessage[5] ?? 0) ^ 0x01;
    expect(xeddsaVerify(identity.publicKey, tamperedMessage, signature)).toBe(false);

    const tamperedR = Uint8Array.from(signature);
    tamperedR[0] = (tamperedR[0] ?? 0) ^ 0x01;
    expect(xeddsaVerify(identity.publicKey, message, tamperedR)).toBe(false);

    const tamperedS = Uint8Array.from(signature);
    tamperedS[40] = (tamperedS[40] ?? 0) ^ 0x01;
    expect(xeddsaVerify(identity.publicKey, message, tamperedS)).toBe(false);

    const flippedSignBit = Uint8Array.from(signature);
    flippedSignBit[63] = (flippedSignBit[63] ?? 0) ^ 0x80;
    expect(xeddsaVerify(identity.publicKey, message, flippedSignBit)).toBe(false);

    expect(xeddsaVerify(other.publicKey, message, signature)).toBe(false);
  });

  it("rejects malformed keys and signatures without throwing", () => {
    const identity = generateKeyPair();
    const { publicKey: message } = generateKeyPair();
    const signature = xeddsaSign(identity.privateKey, message);
    // Wrong type byte, wrong lengths.
    const wrongType = Uint8Array.from(identity.publicKey);
    wrongType[0] = 0x06;
    expect(xeddsaVerify(wrongType, message, signature)).toBe(false);
    expect(xeddsaVerify(identity.publicKey.subarray(1), message, signature)).toBe(false);
    expect(xeddsaVerify(identity.publicKey, message, signature.subarray(0, 63))).toBe(false);
    // s >= q (a malleated signature: s + q verifies in the curve equation but is not canonical).
    const q = 2n ** 252n + 27742317777372353535851937790883648493n;
    const s = Buffer.from(signature.subarray(32)).reverse();
    const sNum = BigInt(`0x${Buffer.from(s).toString("hex")}`) & ((1n << 255n) - 1n);
    const malleated = Uint8Array.from(signature);
    const big = sNum + q;
    for (let i = 0; i < 32; i++) malleated[32 + i] = Number((big >> BigInt(8 * i)) & 0xffn);
    malleated[63] = ((malleated[63] ?? 0) & 0x7f) | ((signature[63] ?? 0) & 0x80);
    expect(xeddsaVerify(identity.publicKey, message, malleated)).toBe(false);
    // u >= p is not a canonical key; u = p - 1 (= -1) has no Edwards point.
    const p = 2n ** 255n - 19n;
    const keyOf = (u: bigint) =>
      serializePublicKey(Uint8Array.from({ length: 32 }, (_, i) => Number((u >> BigInt(8 * i)) & 0xffn)));
    expect(isSerializedPublicKey(keyOf(p))).toBe(false);
    expect(xeddsaVerify(keyOf(p), message, signature)).toBe(false);
    expect(montgomeryToEdwards(keyOf(p - 1n).subarray(1), 0)).toBeUndefined();
    // Small-order keys (u = 0 is the point of order 2, Edwards y = -1; u = 1 maps to y = 0, of
    // order 4): nobody owns them, so nothing verifies.
    expect(xeddsaVerify(keyOf(0n), message, signature)).toBe(false);
    expect(xeddsaVerify(keyOf(1n), message, signature)).toBe(false);
  });
});
