import { create } from "@bufbuild/protobuf";
import type { JWTPayload, JWTVerifyOptions, ProtectedHeaderParameters } from "jose";
import { decodeProtectedHeader, errors, jwtVerify } from "jose";
import type { DeviceAddress } from "../../gen/parley/common/v1/address_pb.ts";
import { DeviceAddressSchema } from "../../gen/parley/common/v1/address_pb.ts";
import { isParleyError, ParleyError, unauthenticated, unavailable } from "../../lib/errors.ts";
import { validateMessage } from "../../lib/grpc/validation.ts";
import type { VerificationKey } from "./public-keys.ts";
import { ACCEPTED_ALGORITHMS } from "./public-keys.ts";

/** The private claim that binds a token to one device: the device id, beside `sub` (the user id). */
export const DEVICE_CLAIM = "did";

/** Every claim a client token must carry. */
export const REQUIRED_CLAIMS: readonly string[] = ["sub", DEVICE_CLAIM, "iss", "aud", "iat", "exp"];

/** ErrorInfo reasons of refused calls; all are UNAUTHENTICATED (HTTP 401 for Connect). */
export const AuthReason = {
  /** No `Authorization: Bearer <token>` header. */
  TOKEN_MISSING: "TOKEN_MISSING",
  /** A token that is malformed, badly signed, for another issuer or audience, or with bad claims. */
  TOKEN_INVALID: "TOKEN_INVALID",
  /** A well-formed token past its `exp`: get a new one. */
  TOKEN_EXPIRED: "TOKEN_EXPIRED",
  /** A valid token of a device that was removed (when the revocation check is wired). */
  DEVICE_REVOKED: "DEVICE_REVOKED",
} as const;

/** Who is calling, as a verified token says: set on every call's context by the auth interceptor. */
export interface AuthenticatedCaller {
  /** The user (`sub`) and device (`did`) of the token. */
  readonly device: DeviceAddress;
  /** The token's `exp`: a stream opened with it should end (or re-authenticate) by then. */
  readonly expiresAt: Date;
  readonly issuedAt: Date;
  /** The token's `jti`, when it has one (for logs). */
  readonly tokenId: string | undefined;
  /**
   * What the revocation hook said of the device: `active` (registered: it may open streams),
   * `unregistered` (never registered, or removed before this token was issued: unary calls only,
   * RegisterDevice first), or `unchecked` (no hook is wired).
   */
  readonly registration: DeviceRegistration;
}

export type DeviceRegistration = "active" | "unregistered" | "unchecked";

/** Where a device stands, as the revocation hook reports it (key.v1 GetDeviceStatus). */
export type DeviceStanding =
  | { readonly state: "active" }
  | { readonly state: "removed"; readonly removedAt: Date }
  | { readonly state: "unknown" };

/**
 * Optional revocation hook: where the calling device stands (the edge asks the key service's
 * GetDeviceStatus, see device-check.ts). A removed device's tokens issued up to its removal are
 * refused (DEVICE_REVOKED); an unknown device, or one removed before its token was issued, is let
 * through as `unregistered`. `true` and `false` are short for active and "removed: refuse every
 * token". Without a hook a removed device's token works until it expires.
 */
export type IsDeviceActive = (device: DeviceAddress) => Promise<boolean | DeviceStanding>;

export interface TokenVerifierOptions {
  /** Keys tokens may be signed with; a token must verify with one of them. */
  readonly keys: readonly VerificationKey[];
  /** The exact `iss` tokens must carry. */
  readonly issuer: string;
  /** A value the token's `aud` must be or contain. */
  readonly audience: string;
  /** Leeway for `exp` and `nbf` against clock skew between issuer and edge. Default 30 s. */
  readonly clockToleranceMs?: number;
  readonly isDeviceActive?: IsDeviceActive;
  /** The clock, for tests. */
  readonly now?: () => Date;
}

export interface TokenVerifier {
  /**
   * Authenticates a call from the value of its `Authorization` header (`null` when absent).
   * Throws an `unauthenticated` ParleyError (reason TOKEN_MISSING, TOKEN_INVALID, TOKEN_EXPIRED or
   * DEVICE_REVOKED) whose message tells a client developer what to fix.
   */
  authenticate(authorization: string | null): Promise<AuthenticatedCaller>;
  /** Verifies a bare token (no `Bearer ` prefix). */
  verify(token: string): Promise<AuthenticatedCaller>;
}

const HOW_TO_AUTHENTICATE =
  "send 'Authorization: Bearer <token>' with a token your app's auth server issued for this device";
const TOKEN_SHAPE = `tokens are EdDSA (Ed25519) JWTs carrying ${REQUIRED_CLAIMS.join(", ")}`;
// RFC 6750 b64token, surrounded by optional spaces.
const BEARER = /^\s*Bearer +([A-Za-z0-9\-._~+/]+=*)\s*$/i;

/** Verifies client tokens: signature (EdDSA/Ed25519 only), issuer, audience, expiry and claims. */
export function createTokenVerifier(options: TokenVerifierOptions): TokenVerifier {
  if (options.keys.length === 0) throw new Error("a token verifier needs at least one key");
  const baseOptions: JWTVerifyOptions = {
    algorithms: [...ACCEPTED_ALGORITHMS],
    issuer: options.issuer,
    audience: options.audience,
    requiredClaims: [...REQUIRED_CLAIMS],
    clockTolerance: Math.round((options.clockToleranceMs ?? 30_000) / 1000),
  };

  async function verify(token: string): Promise<AuthenticatedCaller> {
    const header = protectedHeader(token);
    const verifyOptions =
      options.now === undefined ? baseOptions : { ...baseOptions, currentDate: options.now() };
    // A token naming a kid is checked against that key (and keys without a kid); otherwise each
    // key is tried, so tokens signed before a rotation still verify while their key is listed.
    const candidates =
      header.kid === undefined
        ? options.keys
        : options.keys.filter((k) => k.kid === undefined || k.kid === header.kid);
    let payload: JWTPayload | undefined;
    for (const candidate of candidates) {
      try {
        payload = (await jwtVerify(token, candidate.key, verifyOptions)).payload;
        break;
      } catch (err) {
        if (err instanceof errors.JWSSignatureVerificationFailed) continue;
        throw fromJoseError(err, header);
      }
    }
    if (payload === undefined) {
      throw invalidToken(
        header.kid === undefined || candidates.length > 0
          ? "the token's signature does not verify with any key this edge trusts: was it issued by your auth server?"
          : "the token's kid names no key this edge trusts: was it issued by your auth server?",
      );
    }
    const caller = callerOf(payload);
    const registration = await checkDeviceActive(options.isDeviceActive, caller);
    return { ...caller, registration };
  }

  return {
    verify,
    async authenticate(authorization) {
      return verify(bearerToken(authorization));
    },
  };
}

function bearerToken(authorization: string | null): string {
  if (authorization === null || authorization.trim() === "") {
    throw unauthenticated(AuthReason.TOKEN_MISSING, `this call needs a token: ${HOW_TO_AUTHENTICATE}`);
  }
  const match = BEARER.exec(authorization);
  if (match?.[1] === undefined) {
    throw unauthenticated(
      AuthReason.TOKEN_MISSING,
      `the Authorization header carries no bearer token: ${HOW_TO_AUTHENTICATE}`,
    );
  }
  return match[1];
}

function protectedHeader(token: string): ProtectedHeaderParameters {
  try {
    return decodeProtectedHeader(token);
  } catch {
    throw invalidToken(`the token is not a JWT (header.payload.signature, base64url): ${TOKEN_SHAPE}`);
  }
}

function callerOf(payload: JWTPayload): Omit<AuthenticatedCaller, "registration"> {
  const userId = payload.sub;
  const deviceId = payload[DEVICE_CLAIM];
  if (typeof userId !== "string")
    throw invalidToken('the token\'s "sub" claim must be a string: the user id', "sub");
  if (typeof deviceId !== "string") {
    throw invalidToken(`the token's "${DEVICE_CLAIM}" claim must be a string: the device id`, DEVICE_CLAIM);
  }
  const device = create(DeviceAddressSchema, { userId, deviceId });
  try {
    // The same predefined rules (parley.common.v1.user_id / device_id) every request is held to.
    validateMessage(DeviceAddressSchema, device);
  } catch (err) {
    const violation = isParleyError(err) ? err.violations[0] : undefined;
    if (violation === undefined) throw err;
    const claim = violation.field === "device_id" ? DEVICE_CLAIM : "sub";
    throw invalidToken(`the token's "${claim}" claim is not valid: it ${violation.description}`, claim);
  }
  return {
    device,
    expiresAt: new Date((payload.exp ?? 0) * 1000),
    issuedAt: new Date((payload.iat ?? 0) * 1000),
    tokenId: typeof payload.jti === "string" ? payload.jti : undefined,
  };
}

async function checkDeviceActive(
  isDeviceActive: IsDeviceActive | undefined,
  caller: Omit<AuthenticatedCaller, "registration">,
): Promise<DeviceRegistration> {
  if (isDeviceActive === undefined) return "unchecked";
  let standing: boolean | DeviceStanding;
  try {
    standing = await isDeviceActive(caller.device);
  } catch (err) {
    if (isParleyError(err)) throw err;
    throw unavailable(
      "AUTH_CHECK_UNAVAILABLE",
      "cannot check the calling device right now: retry with backoff",
      {
        cause: err,
      },
    );
  }
  if (standing === true) return "active";
  if (standing === false) throw deviceRevoked(undefined);
  switch (standing.state) {
    case "active":
      return "active";
    case "unknown":
      return "unregistered";
    case "removed":
      // `iat` has whole seconds: a token issued in the second of the removal counts as older.
      if (tokenPredates(caller.issuedAt, standing.removedAt)) throw deviceRevoked(standing.removedAt);
      return "unregistered";
  }
}

/** Whether a token issued at `issuedAt` (whole seconds) may have been issued before `when`. */
export function tokenPredates(issuedAt: Date, when: Date): boolean {
  return issuedAt.getTime() <= when.getTime();
}

function deviceRevoked(removedAt: Date | undefined): ParleyError {
  return unauthenticated(
    AuthReason.DEVICE_REVOKED,
    "this device was removed from its account, which revoked its tokens: sign in again to get a new token, then register the device anew (DeviceService.RegisterDevice)",
    { metadata: removedAt === undefined ? {} : { removedAt: removedAt.toISOString() } },
  );
}

function fromJoseError(err: unknown, header: ProtectedHeaderParameters): unknown {
  if (err instanceof errors.JWTExpired) {
    const exp =
      typeof err.payload.exp === "number" ? new Date(err.payload.exp * 1000).toISOString() : undefined;
    return unauthenticated(
      AuthReason.TOKEN_EXPIRED,
      `the token expired${exp === undefined ? "" : ` at ${exp}`}: get a new token for this device and retry`,
      { metadata: exp === undefined ? {} : { expiredAt: exp } },
    );
  }
  if (err instanceof errors.JWTClaimValidationFailed) {
    return invalidToken(claimMessage(err.claim, err.reason, err.message), err.claim);
  }
  if (err instanceof errors.JOSEAlgNotAllowed) {
    const alg = typeof header.alg === "string" && /^[A-Za-z0-9+-]{1,16}$/.test(header.alg) ? header.alg : "?";
    return invalidToken(
      `the token is signed with alg ${alg}; this edge accepts only EdDSA tokens (alg ${ACCEPTED_ALGORITHMS.join(" or ")}, Ed25519 keys)`,
    );
  }
  if (err instanceof errors.JOSEError) {
    // JWSInvalid, JWTInvalid, JOSENotSupported: the token itself is malformed.
    return invalidToken(`the token is malformed (${err.message}): ${TOKEN_SHAPE}`);
  }
  return err;
}

function claimMessage(claim: string, reason: string, joseMessage: string): string {
  if (reason === "missing") return `the token has no "${claim}" claim: ${TOKEN_SHAPE}`;
  switch (claim) {
    case "iss":
      return 'the token\'s "iss" claim is not the issuer this edge trusts: was it issued by your auth server?';
    case "aud":
      return `the token's "aud" claim does not name this deployment's audience`;
    case "nbf":
      return 'the token is not valid yet ("nbf" is in the future): check the clock of the issuer';
    case "iat":
      return 'the token\'s "iat" claim must be a number (seconds since the epoch)';
    case "exp":
      return 'the token\'s "exp" claim must be a number (seconds since the epoch)';
    default:
      return `the token's "${claim}" claim is invalid (${joseMessage})`;
  }
}

function invalidToken(message: string, claim?: string): ParleyError {
  return new ParleyError("unauthenticated", AuthReason.TOKEN_INVALID, message, {
    metadata: claim === undefined ? {} : { claim },
  });
}
