// Helpers for the key service's tests: the XEdDSA signing side (the server only verifies) and
// builders of real keys. Not used by production code.
import { randomBytes } from "node:crypto";
import { ed25519, x25519 } from "@noble/curves/ed25519.js";
import { bytesToNumberLE, concatBytes, numberToBytesLE } from "@noble/curves/utils.js";
import { sha512 } from "@noble/hashes/sha2.js";
import type { OneTimePrekey, SignedPrekey } from "./domain/model.ts";
import { DJB_KEY_TYPE } from "./domain/xeddsa.ts";

const Point = ed25519.Point;
const L = Point.Fn.ORDER;

/**
 * XEdDSA signing with an X25519 private key.
 *
 * `libsignal` (default) signs as libsignal's `PrivateKey::calculate_signature` does: the clamped
 * X25519 scalar `a` is used as is, and the sign bit of its Edwards public key A = aB is stored in
 * the top bit of the last signature byte. `spec` follows the XEdDSA paper's calculate_key_pair:
 * when A's sign bit is 1 it negates `a` (so A's sign bit is 0) and leaves the top bit clear.
 * Both use the paper's nonce r = hash1(a || M || Z) with hash1 = SHA-512(0xFE || 0xFF*31 || ...).
 */
export function xeddsaSign(
  privateKey: Uint8Array,
  message: Uint8Array,
  options: { readonly mode?: "libsignal" | "spec"; readonly random?: Uint8Array } = {},
): Uint8Array {
  const mode = options.mode ?? "libsignal";
  const random = options.random ?? randomBytes(64);
  const clamped = Uint8Array.from(privateKey);
  clamped[0] = (clamped[0] as number) & 248;
  clamped[31] = ((clamped[31] as number) & 127) | 64;
  let a = bytesToNumberLE(clamped) % L;
  let A = Point.BASE.multiply(a);
  let aBytes: Uint8Array = clamped;
  const signBit = (A.toBytes()[31] as number) & 0x80;
  if (mode === "spec") {
    if (signBit !== 0) {
      a = L - a;
      A = A.negate();
    }
    aBytes = numberToBytesLE(a, 32);
  }
  const aPublic = A.toBytes();
  const prefix = new Uint8Array(32).fill(0xff);
  prefix[0] = 0xfe;
  const r = bytesToNumberLE(sha512(concatBytes(prefix, aBytes, message, random))) % L;
  const R = Point.BASE.multiply(r).toBytes();
  const h = bytesToNumberLE(sha512(concatBytes(R, aPublic, message))) % L;
  const s = (r + h * a) % L;
  const signature = concatBytes(R, numberToBytesLE(s, 32));
  if (mode === "libsignal") signature[63] = ((signature[63] as number) & 0x7f) | signBit;
  return signature;
}

export interface TestKeyPair {
  readonly privateKey: Uint8Array;
  /** Serialized: 0x05 || u. */
  readonly publicKey: Uint8Array;
}

export function generateKeyPair(): TestKeyPair {
  const privateKey = x25519.utils.randomSecretKey();
  return { privateKey, publicKey: serializePublicKey(x25519.getPublicKey(privateKey)) };
}

export function serializePublicKey(u: Uint8Array): Uint8Array {
  return concatBytes(Uint8Array.of(DJB_KEY_TYPE), u);
}

/** A prekey signed by `identity`, as a device uploads it. */
export function signedPrekey(identity: TestKeyPair, keyId: number): SignedPrekey {
  const { publicKey } = generateKeyPair();
  return { keyId, publicKey, signature: xeddsaSign(identity.privateKey, publicKey) };
}

/** `count` one-time prekeys with ids `firstId`, `firstId + 1`, ... (random public keys). */
export function oneTimePrekeys(firstId: number, count: number): OneTimePrekey[] {
  return Array.from({ length: count }, (_, i) => ({
    keyId: firstId + i,
    publicKey: serializePublicKey(randomBytes(32)),
  }));
}

/** Everything a device registers with, signed by a fresh identity. */
export function deviceKeys(
  options: { readonly oneTimePrekeys?: number; readonly firstOneTimeId?: number } = {},
) {
  const identity = generateKeyPair();
  return {
    identity,
    identityKey: identity.publicKey,
    signedPrekey: signedPrekey(identity, 1),
    lastResortPrekey: signedPrekey(identity, 100_000),
    oneTimePrekeys: oneTimePrekeys(options.firstOneTimeId ?? 1, options.oneTimePrekeys ?? 10),
  };
}

/** A clock tests move by hand. */
export function fakeClock(start = new Date("2030-01-01T00:00:00Z")) {
  let now = start.getTime();
  return {
    now: () => new Date(now),
    advance(ms: number) {
      now += ms;
    },
  };
}
