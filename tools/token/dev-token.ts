import { create } from "@bufbuild/protobuf";
import { decodeJwt } from "jose";
import { openDevIssuer } from "../../edge/auth/dev-issuer.ts";
import { expectedIssuer } from "../../edge/auth/edge-auth.ts";
import { devIssuerKeyPath, edgeConfigSpec } from "../../edge/config.ts";
import { DeviceAddressSchema } from "../../gen/parley/common/v1/address_pb.ts";
import { loadConfig } from "../../lib/config.ts";
import { isParleyError } from "../../lib/errors.ts";
import { validateMessage } from "../../lib/grpc/validation.ts";

export interface DevTokenRequest {
  /** The data folder whose dev issuer signs (the key is created there when missing). */
  readonly dataDir: string;
  readonly userId: string;
  readonly deviceId: string;
  /** Lifetime in ms. */
  readonly ttlMs: number;
  /** Where PARLEY_EDGE_JWT_ISSUER / PARLEY_EDGE_JWT_AUDIENCE are read, as the edge reads them. */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

export interface DevToken {
  readonly token: string;
  readonly expiresAt: Date;
  readonly keyFile: string;
  readonly issuer: string;
  readonly audience: string;
}

/** A user or device id the edge would refuse, caught before a useless token is minted. */
export class DevTokenUsageError extends Error {
  override readonly name = "DevTokenUsageError";
}

/**
 * Mints a token the edge of the embedded profile accepts: signed by the dev issuer of `dataDir`,
 * for the issuer and audience the edge expects under the same environment.
 */
export async function mintDevToken(request: DevTokenRequest): Promise<DevToken> {
  const { jwtIssuer, jwtAudience } = edgeConfigSpec;
  const config = loadConfig({ jwtIssuer, jwtAudience }, request.env ?? process.env);
  try {
    validateMessage(
      DeviceAddressSchema,
      create(DeviceAddressSchema, { userId: request.userId, deviceId: request.deviceId }),
    );
  } catch (err) {
    const violation = isParleyError(err) ? err.violations[0] : undefined;
    if (violation === undefined) throw err;
    const what =
      violation.field === "device_id" ? `device '${request.deviceId}'` : `user '${request.userId}'`;
    throw new DevTokenUsageError(`${what}: ${violation.description}`);
  }
  if (!(request.ttlMs >= 1000)) throw new DevTokenUsageError("the token's lifetime must be at least 1s");
  const issuer = expectedIssuer(config);
  const devIssuer = await openDevIssuer(devIssuerKeyPath(request.dataDir));
  const token = await devIssuer.mint({
    userId: request.userId,
    deviceId: request.deviceId,
    ttlMs: request.ttlMs,
    issuer,
    audience: config.jwtAudience,
  });
  return {
    token,
    expiresAt: new Date((decodeJwt(token).exp ?? 0) * 1000),
    keyFile: devIssuer.keyFile,
    issuer,
    audience: config.jwtAudience,
  };
}
