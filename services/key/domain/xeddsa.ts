import { ed25519 } from "@noble/curves/ed25519.js";
import { bytesToNumberLE, concatBytes, equalBytes, numberToBytesLE } from "@noble/curves/utils.js";
import { sha512 } from "@noble/hashes/sha2.js";

/** Signal's type byte of a serialized Curve25519 public key ("DJB" type). */
export const DJB_KEY_TYPE = 0x05;
/** A serialized public key: the type byte and the 32-byte Montgomery u-coordinate. */
export const PUBLIC_KEY_LENGTH = 33;
export const SIGNATURE_LENGTH = 64;

const Point = ed25519.Point;
const Fp = Point.Fp;
/** The order of the prime subgroup (q in the XEdDSA paper, L in RFC 8032). */
const L = Point.Fn.ORDER;
const TWO_253 = 1n << 253n;

/**
 * The Edwards point of a Montgomery u-coordinate with the given sign of x (XEdDSA's convert_mont,
 * with libsignal's sign bit): y = (u - 1) / (u + 1) mod p. Undefined when u is not a canonical
 * field element (u >= p), when u = -1 (no Edwards point), or when y is not on the curve.
 */
export function montgomeryToEdwards(
  u: Uint8Array,
  signBit: 0 | 1,
): { point: EdwardsPointLike; bytes: Uint8Array } | undefined {
  if (u.length !== 32) return undefined;
  const uNum = bytesToNumberLE(u);
  if (uNum >= Fp.ORDER) return undefined;
  const denominator = Fp.add(uNum, Fp.ONE);
  if (Fp.is0(denominator)) return undefined;
  const y = Fp.div(Fp.sub(uNum, Fp.ONE), denominator);
  const bytes = numberToBytesLE(y, 32);
  bytes[31] = (bytes[31] as number) | (signBit << 7);
  try {
    return { point: Point.fromBytes(bytes, false), bytes };
  } catch {
    return undefined;
  }
}

type EdwardsPointLike = ReturnType<typeof Point.fromBytes>;

/**
 * Verifies an XEdDSA signature (Signal's `curve25519_verify` / libsignal's
 * `PublicKey::verify_signature`) of `message` by a serialized Curve25519 public key
 * (0x05 || u). Never throws: any malformed input is simply not a valid signature.
 *
 * XEdDSA (https://signal.org/docs/specifications/xeddsa/) signs with the Edwards form of the
 * Montgomery key. The XEdDSA paper forces the Edwards sign bit to 0 when signing; libsignal instead
 * signs with the key's own sign bit and stores it in the otherwise unused top bit of `s` (the last
 * signature byte). Reading the sign bit from there, as libsignal does, accepts both: a paper-style
 * signature has that bit clear. The check itself is the paper's: reject u >= p and s >= 2^253,
 * compute R' = sB - hA with h = SHA-512(R || A || M) mod q and compare encodings with R. On top of
 * the paper we also require s < q (RFC 8032's canonical s, so signatures are not malleable; honest
 * signers always reduce s) and refuse small-order A (a key anyone could "sign" for).
 */
export function xeddsaVerify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.length !== PUBLIC_KEY_LENGTH || publicKey[0] !== DJB_KEY_TYPE) return false;
  if (signature.length !== SIGNATURE_LENGTH) return false;
  const last = signature[SIGNATURE_LENGTH - 1] as number;
  const signBit = ((last & 0x80) >> 7) as 0 | 1;
  const edwards = montgomeryToEdwards(publicKey.subarray(1), signBit);
  if (edwards === undefined) return false;
  const A = edwards.point;
  if (A.isSmallOrder()) return false;

  const rBytes = signature.subarray(0, 32);
  // A copy: `slice` of a Node Buffer (what gRPC hands us) would share memory with the request.
  const sBytes = Uint8Array.from(signature.subarray(32, 64));
  sBytes[31] = last & 0x7f;
  const s = bytesToNumberLE(sBytes);
  if (s >= TWO_253 || s >= L) return false;
  // R must be a canonical y (< p); the final byte comparison rejects anything else anyway.
  const h = bytesToNumberLE(sha512(concatBytes(rBytes, edwards.bytes, message))) % L;
  const rCheck = Point.BASE.multiplyUnsafe(s).subtract(A.multiplyUnsafe(h));
  return equalBytes(rCheck.toBytes(), rBytes);
}

/** Whether `key` is a well-formed serialized Curve25519 public key (0x05 || canonical u). */
export function isSerializedPublicKey(key: Uint8Array): boolean {
  return (
    key.length === PUBLIC_KEY_LENGTH && key[0] === DJB_KEY_TYPE && bytesToNumberLE(key.subarray(1)) < Fp.ORDER
  );
}
