import { randomBytes } from "node:crypto";
import { chmodSync, linkSync, mkdirSync, readFileSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import type { CryptoKey, JWK } from "jose";
import { calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK, SignJWT } from "jose";
import type { VerificationKey } from "./public-keys.ts";
import { SIGNING_ALGORITHM } from "./public-keys.ts";
import { DEVICE_CLAIM } from "./verifier.ts";

/** What a dev token says: who, which device, for how long, for which issuer and audience. */
export interface DevTokenClaims {
  readonly userId: string;
  readonly deviceId: string;
  /** Lifetime in ms from `now`. */
  readonly ttlMs: number;
  readonly issuer: string;
  readonly audience: string;
  readonly now?: Date;
}

/**
 * The embedded profile's token issuer: an Ed25519 key pair kept in a file of the data folder, so
 * the edge verifies with it and `npm run token` mints with it, across restarts. For development
 * only: whoever can read the file can act as any user.
 */
export interface DevIssuer {
  readonly keyFile: string;
  /** The key's id (its RFC 7638 thumbprint), set as `kid` on every token. */
  readonly kid: string;
  /** The public half, as a JWK (kty OKP, crv Ed25519, kid, alg, use). */
  readonly publicJwk: JWK;
  /** The public half, ready to verify with. */
  readonly verificationKey: VerificationKey;
  mint(claims: DevTokenClaims): Promise<string>;
}

/**
 * Opens the dev issuer whose private key is in `keyFile` (a private JWK), creating the key pair and
 * the file (mode 0600, its folder if needed) when there is none. Two processes starting together
 * end up with the same key: the file appears atomically and the loser reads the winner's key.
 * Refuses a key file other users can read or write.
 */
export async function openDevIssuer(keyFile: string): Promise<DevIssuer> {
  const jwk = readKeyFile(keyFile) ?? (await createKeyFile(keyFile));
  const { kty, crv, x, d } = jwk;
  if (kty !== "OKP" || crv !== "Ed25519" || typeof x !== "string" || typeof d !== "string") {
    throw new Error(`${keyFile} is not an Ed25519 private JWK; delete it to have a new dev key made`);
  }
  const privateKey = await importKey({ kty, crv, x, d }, keyFile);
  const publicKey = await importKey({ kty, crv, x }, keyFile);
  const kid = await calculateJwkThumbprint({ kty, crv, x });
  return {
    keyFile,
    kid,
    publicJwk: { kty, crv, x, kid, alg: SIGNING_ALGORITHM, use: "sig" },
    verificationKey: { kid, key: publicKey },
    mint: (claims) => mint(privateKey, kid, claims),
  };
}

async function mint(privateKey: CryptoKey, kid: string, claims: DevTokenClaims): Promise<string> {
  if (!(claims.ttlMs > 0)) throw new RangeError("a token's lifetime must be positive");
  const now = Math.floor((claims.now ?? new Date()).getTime() / 1000);
  return new SignJWT({ [DEVICE_CLAIM]: claims.deviceId })
    .setProtectedHeader({ alg: SIGNING_ALGORITHM, kid, typ: "JWT" })
    .setSubject(claims.userId)
    .setIssuer(claims.issuer)
    .setAudience(claims.audience)
    .setIssuedAt(now)
    .setExpirationTime(now + Math.max(1, Math.round(claims.ttlMs / 1000)))
    .setJti(randomBytes(12).toString("base64url"))
    .sign(privateKey);
}

function readKeyFile(keyFile: string): JWK | undefined {
  let text: string;
  try {
    const mode = statSync(keyFile).mode;
    if ((mode & 0o077) !== 0) {
      throw new Error(
        `${keyFile} (the dev issuer's private key) is accessible by other users (mode ${(mode & 0o777).toString(8)}): run chmod 600 ${keyFile}`,
      );
    }
    text = readFileSync(keyFile, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  try {
    return JSON.parse(text) as JWK;
  } catch {
    throw new Error(`${keyFile} is not valid JSON; delete it to have a new dev key made`);
  }
}

async function createKeyFile(keyFile: string): Promise<JWK> {
  const { privateKey } = await generateKeyPair("Ed25519", { extractable: true });
  const { kty, crv, x, d } = await exportJWK(privateKey);
  const jwk: JWK = { kty, crv, x, d, alg: SIGNING_ALGORITHM, use: "sig" };
  mkdirSync(dirname(keyFile), { recursive: true, mode: 0o700 });
  // Written aside, then linked into place: link fails if the file exists, so a concurrent start
  // never sees half a key and never overwrites a key already handed out.
  const temporary = `${keyFile}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
  writeFileSync(temporary, `${JSON.stringify(jwk, null, 2)}\n`, { mode: 0o600, flag: "wx" });
  chmodSync(temporary, 0o600); // whatever the umask
  try {
    linkSync(temporary, keyFile);
    return jwk;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    const existing = readKeyFile(keyFile);
    if (existing === undefined) throw err;
    return existing;
  } finally {
    unlinkSync(temporary);
  }
}

async function importKey(jwk: JWK, keyFile: string): Promise<CryptoKey> {
  try {
    const key = await importJWK(jwk, SIGNING_ALGORITHM);
    if (key instanceof Uint8Array) throw new Error("not an asymmetric key");
    return key;
  } catch (err) {
    throw new Error(
      `${keyFile} holds a key that cannot be used (${err instanceof Error ? err.message : err})`,
      {
        cause: err,
      },
    );
  }
}
