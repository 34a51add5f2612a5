import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { exportJWK, generateKeyPair } from "jose";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ConfigError } from "../../lib/config.ts";
import type { EdgeAuthConfig } from "../config.ts";
import { DEFAULT_JWT_AUDIENCE, DEV_ISSUER, devIssuerAuthConfig, devIssuerKeyPath } from "../config.ts";
import { openDevIssuer } from "./dev-issuer.ts";
import { createEdgeAuth } from "./edge-auth.ts";
import { readPublicKeys } from "./public-keys.ts";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "parley-auth-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const base: EdgeAuthConfig = {
  jwtPublicKeys: undefined,
  jwtIssuer: undefined,
  jwtAudience: DEFAULT_JWT_AUDIENCE,
  jwtClockToleranceMs: 30_000,
  devIssuerKeyFile: undefined,
};

async function publicJwk(kid = "k1") {
  const { publicKey } = await generateKeyPair("Ed25519");
  return { ...(await exportJWK(publicKey)), kid, alg: "EdDSA", use: "sig" };
}

async function problems(promise: Promise<unknown>): Promise<readonly string[]> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ConfigError);
  return (err as ConfigError).problems;
}

describe("dev issuer", () => {
  it("creates its key once (mode 0600), then reuses it; tokens it mints verify", async () => {
    const keyFile = devIssuerKeyPath(join(dir, "data"));
    const first = await openDevIssuer(keyFile);
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    const again = await openDevIssuer(keyFile);
    expect(again.kid).toBe(first.kid);
    expect(first.publicJwk).toMatchObject({ kty: "OKP", crv: "Ed25519", kid: first.kid, alg: "EdDSA" });
    expect(first.publicJwk).not.toHaveProperty("d");

    const auth = await createEdgeAuth(devIssuerAuthConfig(join(dir, "data")));
    expect(auth.mode).toBe("dev-issuer");
    expect(auth.issuer).toBe(DEV_ISSUER);
    const token = await again.mint({
      userId: "alice",
      deviceId: "phone",
      ttlMs: 60_000,
      issuer: DEV_ISSUER,
      audience: DEFAULT_JWT_AUDIENCE,
    });
    expect((await auth.verifier.authenticate(`Bearer ${token}`)).device.deviceId).toBe("phone");
  });

  it("ends with one key when processes start together", async () => {
    const keyFile = join(dir, "dev-issuer.jwk");
    const issuers = await Promise.all([1, 2, 3, 4].map(() => openDevIssuer(keyFile)));
    expect(new Set(issuers.map((i) => i.kid)).size).toBe(1);
  });

  it("refuses a key file other users can read", async () => {
    const keyFile = join(dir, "dev-issuer.jwk");
    await openDevIssuer(keyFile);
    chmodSync(keyFile, 0o644);
    await expect(openDevIssuer(keyFile)).rejects.toThrow(
      /accessible by other users \(mode 644\): run chmod 600/,
    );
  });

  it("refuses a key file that holds no Ed25519 private key", async () => {
    const keyFile = join(dir, "dev-issuer.jwk");
    writeFileSync(keyFile, JSON.stringify(await publicJwk()), { mode: 0o600 });
    await expect(openDevIssuer(keyFile)).rejects.toThrow(/is not an Ed25519 private JWK/);
  });
});

describe("edge auth configuration", () => {
  it("verifies with inline public keys and the configured issuer", async () => {
    const auth = await createEdgeAuth({
      ...base,
      jwtPublicKeys: JSON.stringify({ keys: [await publicJwk()] }),
      jwtIssuer: "https://auth.example.com",
    });
    expect(auth).toMatchObject({
      mode: "public-keys",
      issuer: "https://auth.example.com",
      devIssuer: undefined,
    });
  });

  it("reads public keys from a file", async () => {
    const file = join(dir, "jwks.json");
    writeFileSync(file, JSON.stringify({ keys: [await publicJwk("a"), await publicJwk("b")] }));
    expect(readPublicKeys(file, "VAR").map((k) => k.kid)).toEqual(["a", "b"]);
    expect(readPublicKeys(JSON.stringify(await publicJwk("single")), "VAR").map((k) => k.kid)).toEqual([
      "single",
    ]);
  });

  it("refuses to start without a key source, naming both variables", async () => {
    const [problem] = await problems(createEdgeAuth(base));
    expect(problem).toContain("PARLEY_EDGE_JWT_PUBLIC_KEYS is required");
    expect(problem).toContain("PARLEY_EDGE_DEV_ISSUER_KEY_FILE");
  });

  it("refuses both key sources at once", async () => {
    const [problem] = await problems(
      createEdgeAuth({ ...base, jwtPublicKeys: "{}", devIssuerKeyFile: join(dir, "k.jwk") }),
    );
    expect(problem).toContain("are both set");
  });

  it("requires the issuer with public keys", async () => {
    const list = await problems(
      createEdgeAuth({ ...base, jwtPublicKeys: JSON.stringify({ keys: [await publicJwk()] }) }),
    );
    expect(list).toEqual([
      expect.stringContaining("PARLEY_EDGE_JWT_ISSUER is required with PARLEY_EDGE_JWT_PUBLIC_KEYS"),
    ]);
  });

  it("lists every bad key: private, not Ed25519, HMAC, duplicate kid; and bad files", async () => {
    const { privateKey } = await generateKeyPair("Ed25519", { extractable: true });
    const rsa = await generateKeyPair("RS256");
    const good = await publicJwk("dup");
    const jwks = {
      keys: [
        { ...(await exportJWK(privateKey)), kid: "private" },
        { ...(await exportJWK(rsa.publicKey)), kid: "rsa" },
        { kty: "oct", k: "c2VjcmV0", alg: "HS256" },
        { ...good, alg: "ES256", kid: "es" },
        good,
        { ...good },
      ],
    };
    const list = await problems(
      createEdgeAuth({ ...base, jwtPublicKeys: JSON.stringify(jwks), jwtIssuer: "https://auth.example.com" }),
    );
    expect(list).toEqual([
      'PARLEY_EDGE_JWT_PUBLIC_KEYS: key 0 (kid private) holds a private key ("d"): list public keys only',
      expect.stringMatching(
        /^PARLEY_EDGE_JWT_PUBLIC_KEYS: key 1 \(kid rsa\) is not an Ed25519 key \(kty RSA/,
      ),
      expect.stringMatching(/^PARLEY_EDGE_JWT_PUBLIC_KEYS: key 2 is not an Ed25519 key \(kty oct/),
      "PARLEY_EDGE_JWT_PUBLIC_KEYS: key 3 (kid es) has alg ES256; only EdDSA or Ed25519 is accepted",
      "PARLEY_EDGE_JWT_PUBLIC_KEYS: key 5 (kid dup) repeats a kid; each key needs its own",
    ]);
    expect(() => readPublicKeys(join(dir, "missing.json"), "VAR")).toThrow(/no file at/);
    expect(() => readPublicKeys("{not json", "VAR")).toThrow(/is not valid JSON/);
    expect(() => readPublicKeys('{"keys": []}', "VAR")).toThrow(/holds no key/);
  });
});
