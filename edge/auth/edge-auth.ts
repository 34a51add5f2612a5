import { ConfigError } from "../../lib/config.ts";
import type { EdgeAuthConfig } from "../config.ts";
import { DEV_ISSUER, edgeConfigSpec } from "../config.ts";
import type { DevIssuer } from "./dev-issuer.ts";
import { openDevIssuer } from "./dev-issuer.ts";
import { importVerificationKeys, readPublicKeys } from "./public-keys.ts";
import type { IsDeviceActive, TokenVerifier } from "./verifier.ts";
import { createTokenVerifier } from "./verifier.ts";

const PUBLIC_KEYS = edgeConfigSpec.jwtPublicKeys.name;
const ISSUER = edgeConfigSpec.jwtIssuer.name;
const DEV_KEY_FILE = edgeConfigSpec.devIssuerKeyFile.name;

/** How the edge verifies tokens, once its configuration is resolved. */
export interface EdgeAuth {
  readonly verifier: TokenVerifier;
  readonly mode: "public-keys" | "dev-issuer";
  readonly issuer: string;
  readonly audience: string;
  /** The dev issuer, in dev-issuer mode (to mint tokens in tests and tools). */
  readonly devIssuer: DevIssuer | undefined;
}

export interface EdgeAuthOptions {
  /** Revocation hook, checked on every call after the token verifies; skipped when absent. */
  readonly isDeviceActive?: IsDeviceActive;
}

/** The issuer tokens must carry: the configured one, or the dev issuer's default name. */
export function expectedIssuer(config: Pick<EdgeAuthConfig, "jwtIssuer">): string {
  return config.jwtIssuer ?? DEV_ISSUER;
}

/**
 * Picks the key source from the configuration and loads it: the deployment's public keys
 * (PARLEY_EDGE_JWT_PUBLIC_KEYS, with PARLEY_EDGE_JWT_ISSUER) or the dev issuer's key file
 * (PARLEY_EDGE_DEV_ISSUER_KEY_FILE, created if missing). Exactly one must be set; anything else is
 * a ConfigError naming the variables, so the edge never starts without authentication.
 */
export async function createEdgeAuth(
  config: EdgeAuthConfig,
  options: EdgeAuthOptions = {},
): Promise<EdgeAuth> {
  const common = {
    audience: config.jwtAudience,
    clockToleranceMs: config.jwtClockToleranceMs,
    ...(options.isDeviceActive === undefined ? {} : { isDeviceActive: options.isDeviceActive }),
  };
  if (config.jwtPublicKeys !== undefined && config.devIssuerKeyFile !== undefined) {
    throw new ConfigError([
      `${PUBLIC_KEYS} and ${DEV_KEY_FILE} are both set: set ${PUBLIC_KEYS} to verify your auth server's tokens, or ${DEV_KEY_FILE} (development only), not both`,
    ]);
  }
  if (config.jwtPublicKeys !== undefined) {
    const problems: string[] = [];
    if (config.jwtIssuer === undefined) {
      problems.push(
        `${ISSUER} is required with ${PUBLIC_KEYS}: it must be the "iss" your auth server puts in tokens`,
      );
    }
    let jwks: ReturnType<typeof readPublicKeys> = [];
    try {
      jwks = readPublicKeys(config.jwtPublicKeys, PUBLIC_KEYS);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems.push(...err.problems);
    }
    if (problems.length > 0) throw new ConfigError(problems);
    const keys = await importVerificationKeys(jwks, PUBLIC_KEYS);
    const issuer = expectedIssuer(config);
    return {
      verifier: createTokenVerifier({ keys, issuer, ...common }),
      mode: "public-keys",
      issuer,
      audience: config.jwtAudience,
      devIssuer: undefined,
    };
  }
  if (config.devIssuerKeyFile !== undefined) {
    const devIssuer = await openDevIssuer(config.devIssuerKeyFile);
    const issuer = expectedIssuer(config);
    return {
      verifier: createTokenVerifier({ keys: [devIssuer.verificationKey], issuer, ...common }),
      mode: "dev-issuer",
      issuer,
      audience: config.jwtAudience,
      devIssuer,
    };
  }
  throw new ConfigError([
    `${PUBLIC_KEYS} is required: the Ed25519 public keys (a JWK Set, inline or a file path) that verify client tokens; for development, set ${DEV_KEY_FILE} instead to run a local dev issuer`,
  ]);
}
