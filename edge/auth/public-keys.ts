import { existsSync, readFileSync } from "node:fs";
import type { CryptoKey, JWK } from "jose";
import { importJWK } from "jose";
import { ConfigError } from "../../lib/config.ts";

/**
 * JWS algorithms the edge accepts: EdDSA over Ed25519 only, under its classic name (`EdDSA`, RFC
 * 8037) or its fully specified one (`Ed25519`, RFC 9864). Never `none`, never HMAC: a shared
 * secret would let every holder mint tokens, and accepting HS* next to public keys invites the
 * classic key-confusion attack.
 */
export const ACCEPTED_ALGORITHMS: readonly string[] = ["EdDSA", "Ed25519"];

/** The algorithm the dev issuer signs with: the classic name, which every JOSE library knows. */
export const SIGNING_ALGORITHM = "EdDSA";

/** One public key tokens may be signed with, ready for verification. */
export interface VerificationKey {
  /** The JWK's `kid`; a token naming a kid is checked only against keys with that kid (or none). */
  readonly kid: string | undefined;
  readonly key: CryptoKey;
}

// A deployment rotates keys by listing the new one beside the old; dozens would be a mistake.
const MAX_KEYS = 20;

/**
 * Reads the value of `variable` (PARLEY_EDGE_JWT_PUBLIC_KEYS): a JWK Set (`{"keys": [...]}`, or a
 * single JWK), inline when the value starts with `{`, otherwise the path of a JSON file holding it
 * (a mounted Kubernetes Secret or ConfigMap). Every key must be an Ed25519 public key (`kty` OKP,
 * `crv` Ed25519, no private `d`), usable for signatures. Throws a ConfigError naming the variable
 * and every bad key.
 */
export function readPublicKeys(raw: string, variable: string): JWK[] {
  const value = raw.trim();
  let text = value;
  if (!value.startsWith("{")) {
    if (!existsSync(value)) {
      throw new ConfigError([
        `${variable} must be a JWK Set (JSON starting with "{") or the path of a file holding one; no file at '${value}'`,
      ]);
    }
    text = readFileSync(value, "utf8");
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new ConfigError([`${variable} is not valid JSON: it must be a JWK Set ({"keys": [...]})`]);
  }
  const keys =
    isObject(parsed) && Array.isArray(parsed.keys) ? parsed.keys : isObject(parsed) ? [parsed] : [];
  const problems: string[] = [];
  if (keys.length === 0) problems.push(`${variable} holds no key: it must be a JWK Set ({"keys": [...]})`);
  if (keys.length > MAX_KEYS) problems.push(`${variable} holds ${keys.length} keys; at most ${MAX_KEYS}`);
  const kids = new Set<string>();
  keys.forEach((key: unknown, index: number) => {
    const problem = keyProblem(key);
    const kid = isObject(key) && typeof key.kid === "string" ? key.kid : undefined;
    const name = `key ${index}${kid === undefined ? "" : ` (kid ${kid})`}`;
    if (problem !== undefined) problems.push(`${variable}: ${name} ${problem}`);
    if (kid !== undefined) {
      if (kids.has(kid)) problems.push(`${variable}: ${name} repeats a kid; each key needs its own`);
      kids.add(kid);
    }
  });
  if (problems.length > 0) throw new ConfigError(problems);
  return keys as JWK[];
}

function keyProblem(key: unknown): string | undefined {
  if (!isObject(key)) return "is not a JSON object";
  if (key.kty !== "OKP" || key.crv !== "Ed25519") {
    return `is not an Ed25519 key (kty ${String(key.kty)}, crv ${String(key.crv)}): tokens must be signed with EdDSA over Ed25519`;
  }
  if ("d" in key) return 'holds a private key ("d"): list public keys only';
  if (typeof key.x !== "string" || Buffer.from(key.x, "base64url").length !== 32) {
    return 'has no valid "x" (the 32-byte public key, base64url)';
  }
  if (key.alg !== undefined && !ACCEPTED_ALGORITHMS.includes(String(key.alg))) {
    return `has alg ${String(key.alg)}; only ${ACCEPTED_ALGORITHMS.join(" or ")} is accepted`;
  }
  if (key.use !== undefined && key.use !== "sig") return `has use ${String(key.use)}; it must be sig`;
  if (key.key_ops !== undefined && !(Array.isArray(key.key_ops) && key.key_ops.includes("verify"))) {
    return 'has key_ops without "verify"';
  }
  return undefined;
}

/** Imports public JWKs for verification; a key WebCrypto refuses is a ConfigError of `variable`. */
export async function importVerificationKeys(
  jwks: readonly JWK[],
  variable: string,
): Promise<VerificationKey[]> {
  const imported: VerificationKey[] = [];
  const problems: string[] = [];
  for (const [index, jwk] of jwks.entries()) {
    try {
      const key = await importJWK({ kty: jwk.kty, crv: jwk.crv, x: jwk.x }, SIGNING_ALGORITHM);
      if (key instanceof Uint8Array) throw new Error("not an asymmetric key");
      imported.push({ kid: jwk.kid, key });
    } catch (err) {
      problems.push(
        `${variable}: key ${index} cannot be imported (${err instanceof Error ? err.message : String(err)})`,
      );
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return imported;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
