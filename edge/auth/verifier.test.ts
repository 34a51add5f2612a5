import type { JsonWebKey } from "node:crypto";
import { createHmac, createPublicKey } from "node:crypto";
import type { CryptoKey, JWK, JWTPayload } from "jose";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { beforeAll, describe, expect, it, vi } from "vitest";
import { ParleyError } from "../../lib/errors.ts";
import type { VerificationKey } from "./public-keys.ts";
import { importVerificationKeys } from "./public-keys.ts";
import type { TokenVerifier, TokenVerifierOptions } from "./verifier.ts";
import { AuthReason, createTokenVerifier } from "./verifier.ts";

const ISSUER = "https://auth.example.com";
const AUDIENCE = "parley";
const NOW = new Date("2030-01-01T00:00:00Z");
const nowSeconds = NOW.getTime() / 1000;

let signing: { privateKey: CryptoKey; publicJwk: JWK };
let other: { privateKey: CryptoKey; publicJwk: JWK };
let keys: VerificationKey[];

async function keyPair(kid: string) {
  const { privateKey, publicKey } = await generateKeyPair("Ed25519", { extractable: true });
  return { privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid } };
}

beforeAll(async () => {
  signing = await keyPair("k1");
  other = await keyPair("k2");
  keys = await importVerificationKeys([signing.publicJwk], "TEST_KEYS");
});

function verifier(overrides: Partial<TokenVerifierOptions> = {}): TokenVerifier {
  return createTokenVerifier({ keys, issuer: ISSUER, audience: AUDIENCE, now: () => NOW, ...overrides });
}

const validClaims: JWTPayload = {
  sub: "alice",
  did: "phone",
  iss: ISSUER,
  aud: AUDIENCE,
  iat: nowSeconds - 60,
  exp: nowSeconds + 3600,
};

async function sign(
  claims: JWTPayload = validClaims,
  header: Record<string, unknown> = { alg: "EdDSA", kid: "k1" },
  key: CryptoKey = signing.privateKey,
): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ alg: "EdDSA", ...header }).sign(key);
}

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");

/** The ParleyError a verification fails with (fails the test when it succeeds). */
async function refusal(token: string | null, v: TokenVerifier = verifier()): Promise<ParleyError> {
  const result = await v.authenticate(token === null ? null : `Bearer ${token}`).then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(result).toBeInstanceOf(ParleyError);
  return result as ParleyError;
}

describe("token verifier", () => {
  it("accepts a valid token and returns the device it is bound to", async () => {
    const caller = await verifier().authenticate(`Bearer ${await sign()}`);
    expect(caller.device.userId).toBe("alice");
    expect(caller.device.deviceId).toBe("phone");
    expect(caller.expiresAt).toEqual(new Date((nowSeconds + 3600) * 1000));
    expect(caller.issuedAt).toEqual(new Date((nowSeconds - 60) * 1000));
  });

  it("accepts the fully specified Ed25519 alg, a lowercase scheme and an audience list", async () => {
    const token = await sign({ ...validClaims, aud: ["other", AUDIENCE] }, { alg: "Ed25519", kid: "k1" });
    expect((await verifier().authenticate(`bearer ${token}`)).device.userId).toBe("alice");
  });

  it("refuses a call without a token: TOKEN_MISSING", async () => {
    const err = await refusal(null);
    expect(err.code).toBe("unauthenticated");
    expect(err.reason).toBe(AuthReason.TOKEN_MISSING);
    expect(err.message).toContain("Authorization: Bearer <token>");
  });

  it("refuses another scheme and an empty header: TOKEN_MISSING", async () => {
    for (const header of ["Basic YWxpY2U6cGFzcw==", "", "Bearer "]) {
      const err = await verifier()
        .authenticate(header)
        .catch((e: unknown) => e as ParleyError);
      expect(err).toMatchObject({ code: "unauthenticated", reason: AuthReason.TOKEN_MISSING });
    }
  });

  it("refuses an expired token: TOKEN_EXPIRED with when it expired", async () => {
    const exp = nowSeconds - 120;
    const err = await refusal(await sign({ ...validClaims, iat: exp - 3600, exp }));
    expect(err.code).toBe("unauthenticated");
    expect(err.reason).toBe(AuthReason.TOKEN_EXPIRED);
    expect(err.metadata).toEqual({ expiredAt: "2029-12-31T23:58:00.000Z" });
    expect(err.message).toBe(
      "the token expired at 2029-12-31T23:58:00.000Z: get a new token for this device and retry",
    );
  });

  it("tolerates clock skew up to the configured tolerance", async () => {
    const token = await sign({ ...validClaims, exp: nowSeconds - 10 });
    expect((await verifier().authenticate(`Bearer ${token}`)).device.userId).toBe("alice");
    const err = await refusal(token, verifier({ clockToleranceMs: 0 }));
    expect(err.reason).toBe(AuthReason.TOKEN_EXPIRED);
  });

  it.each([
    [
      "iss",
      { iss: "https://evil.example.com" },
      'the token\'s "iss" claim is not the issuer this edge trusts',
    ],
    ["aud", { aud: "another-app" }, "the token's \"aud\" claim does not name this deployment's audience"],
    ["nbf", { nbf: nowSeconds + 600 }, 'the token is not valid yet ("nbf" is in the future)'],
  ])("refuses a token with a wrong %s: TOKEN_INVALID naming the claim", async (claim, change, message) => {
    const err = await refusal(await sign({ ...validClaims, ...change }));
    expect(err.code).toBe("unauthenticated");
    expect(err.reason).toBe(AuthReason.TOKEN_INVALID);
    expect(err.metadata).toEqual({ claim });
    expect(err.message).toContain(message);
  });

  it.each(["sub", "did", "iss", "aud", "iat", "exp"])(
    "refuses a token without %s: TOKEN_INVALID naming the claim",
    async (claim) => {
      const claims: JWTPayload = { ...validClaims };
      delete claims[claim];
      const err = await refusal(await sign(claims));
      expect(err.reason).toBe(AuthReason.TOKEN_INVALID);
      expect(err.metadata).toEqual({ claim });
      expect(err.message).toContain(`the token has no "${claim}" claim`);
    },
  );

  it.each([
    ["sub", { sub: "alice smith" }, "must be a user id"],
    ["sub", { sub: "a".repeat(65) }, "must be a user id"],
    ["sub", { sub: "-alice" }, "must be a user id"],
    ["did", { did: "phone/1" }, "must be a device id"],
    ["did", { did: "" }, "value is required"],
  ])("refuses a %s that breaks the id rule: TOKEN_INVALID", async (claim, change, description) => {
    const err = await refusal(await sign({ ...validClaims, ...change }));
    expect(err.reason).toBe(AuthReason.TOKEN_INVALID);
    expect(err.metadata).toEqual({ claim });
    expect(err.message).toContain(`the token's "${claim}" claim is not valid: it ${description}`);
  });

  it.each([
    ["sub", { sub: 42 }],
    ["did", { did: ["phone"] }],
  ])("refuses a %s that is not a string: TOKEN_INVALID", async (claim, change) => {
    const err = await refusal(await sign({ ...validClaims, ...change } as JWTPayload));
    expect(err.reason).toBe(AuthReason.TOKEN_INVALID);
    expect(err.metadata).toEqual({ claim });
  });

  it("refuses a token signed by another key: TOKEN_INVALID", async () => {
    for (const header of [{ kid: "k1" }, {}]) {
      const err = await refusal(await sign(validClaims, header, other.privateKey));
      expect(err.reason).toBe(AuthReason.TOKEN_INVALID);
      expect(err.message).toContain("signature does not verify with any key this edge trusts");
    }
    const unknownKid = await refusal(await sign(validClaims, { kid: "k2" }, other.privateKey));
    expect(unknownKid.message).toContain("kid names no key this edge trusts");
  });

  it("picks the key by kid, and tries every key for a token without one", async () => {
    const both = createTokenVerifier({
      keys: await importVerificationKeys([signing.publicJwk, other.publicJwk], "TEST_KEYS"),
      issuer: ISSUER,
      audience: AUDIENCE,
      now: () => NOW,
    });
    for (const header of [{ kid: "k2" }, {}]) {
      const token = await sign(validClaims, header, other.privateKey);
      expect((await both.authenticate(`Bearer ${token}`)).device.deviceId).toBe("phone");
    }
    const wrongKid = await refusal(await sign(validClaims, { kid: "k1" }, other.privateKey), both);
    expect(wrongKid.reason).toBe(AuthReason.TOKEN_INVALID);
  });

  it('refuses alg "none": TOKEN_INVALID', async () => {
    const err = await refusal(`${b64({ alg: "none", typ: "JWT" })}.${b64(validClaims)}.`);
    expect(err.reason).toBe(AuthReason.TOKEN_INVALID);
    expect(err.message).toBe(
      "the token is signed with alg none; this edge accepts only EdDSA tokens (alg EdDSA or Ed25519, Ed25519 keys)",
    );
  });

  it("refuses HS256 signed with the public key as the secret (key confusion): TOKEN_INVALID", async () => {
    const publicKey = createPublicKey({ key: signing.publicJwk as JsonWebKey, format: "jwk" });
    const secrets = [
      Buffer.from(signing.publicJwk.x ?? "", "base64url"),
      signing.publicJwk.x ?? "",
      JSON.stringify(signing.publicJwk),
      publicKey.export({ type: "spki", format: "pem" }).toString(),
    ];
    for (const secret of secrets) {
      const body = `${b64({ alg: "HS256", typ: "JWT", kid: "k1" })}.${b64(validClaims)}`;
      const mac = createHmac("sha256", secret).update(body).digest("base64url");
      const err = await refusal(`${body}.${mac}`);
      expect(err.reason).toBe(AuthReason.TOKEN_INVALID);
      expect(err.message).toContain("signed with alg HS256");
    }
  });

  it("refuses tokens that are not JWTs: TOKEN_INVALID", async () => {
    for (const token of ["abc", "a.b.c", `${b64({ alg: "EdDSA" })}.not-json.sig`]) {
      const err = await refusal(token);
      expect(err.reason).toBe(AuthReason.TOKEN_INVALID);
    }
  });

  describe("device revocation hook", () => {
    it("is asked about the token's device and refuses a removed one: DEVICE_REVOKED", async () => {
      const isDeviceActive = vi.fn(async () => false);
      const err = await refusal(await sign(), verifier({ isDeviceActive }));
      expect(err.code).toBe("unauthenticated");
      expect(err.reason).toBe(AuthReason.DEVICE_REVOKED);
      expect(isDeviceActive).toHaveBeenCalledWith(
        expect.objectContaining({ userId: "alice", deviceId: "phone" }),
      );
    });

    it("lets an active device through, and is not asked about invalid tokens", async () => {
      const isDeviceActive = vi.fn(async () => true);
      const v = verifier({ isDeviceActive });
      expect((await v.authenticate(`Bearer ${await sign()}`)).device.userId).toBe("alice");
      await refusal(await sign({ ...validClaims, iss: "x" }), v);
      expect(isDeviceActive).toHaveBeenCalledTimes(1);
    });

    it("reports the device's registration: active, unregistered (unknown), unchecked without a hook", async () => {
      const token = `Bearer ${await sign()}`;
      expect((await verifier().authenticate(token)).registration).toBe("unchecked");
      expect((await verifier({ isDeviceActive: async () => true }).authenticate(token)).registration).toBe(
        "active",
      );
      const active = verifier({ isDeviceActive: async () => ({ state: "active" }) });
      expect((await active.authenticate(token)).registration).toBe("active");
      // Never registered: unary calls (RegisterDevice) go through; streams are refused further on.
      const unknown = verifier({ isDeviceActive: async () => ({ state: "unknown" }) });
      expect((await unknown.authenticate(token)).registration).toBe("unregistered");
    });

    it("revokes the tokens a removed device got up to its removal, not those issued after", async () => {
      const issuedAt = new Date((nowSeconds - 60) * 1000); // validClaims.iat
      const removedAfter = verifier({
        isDeviceActive: async () => ({ state: "removed", removedAt: new Date(issuedAt.getTime() + 10_000) }),
      });
      const err = await refusal(await sign(), removedAfter);
      expect([err.code, err.reason]).toEqual(["unauthenticated", AuthReason.DEVICE_REVOKED]);
      expect(err.metadata.removedAt).toBe(new Date(issuedAt.getTime() + 10_000).toISOString());
      expect(err.message).toContain("register the device anew");
      // iat has whole seconds: a removal in the token's second (at iat exactly) revokes it too.
      const sameSecond = verifier({
        isDeviceActive: async () => ({ state: "removed", removedAt: issuedAt }),
      });
      expect((await refusal(await sign(), sameSecond)).reason).toBe(AuthReason.DEVICE_REVOKED);
      // A token issued after the removal belongs to whoever signs in anew: unregistered, not revoked.
      const removedBefore = verifier({
        isDeviceActive: async () => ({ state: "removed", removedAt: new Date(issuedAt.getTime() - 1) }),
      });
      expect((await removedBefore.authenticate(`Bearer ${await sign()}`)).registration).toBe("unregistered");
    });

    it("fails closed, as unavailable, when the check itself fails", async () => {
      const err = await refusal(
        await sign(),
        verifier({
          isDeviceActive: async () => {
            throw new Error("connect ECONNREFUSED 10.0.0.7:7102");
          },
        }),
      );
      expect(err.code).toBe("unavailable");
      expect(err.reason).toBe("AUTH_CHECK_UNAVAILABLE");
      expect(err.message).not.toContain("10.0.0.7");
    });
  });
});
