export type { DevIssuer, DevTokenClaims } from "./dev-issuer.ts";
export { openDevIssuer } from "./dev-issuer.ts";
export type { EdgeAuth, EdgeAuthOptions } from "./edge-auth.ts";
export { createEdgeAuth, expectedIssuer } from "./edge-auth.ts";
export {
  authenticatedCaller,
  authenticatedCallerKey,
  callingDevice,
  createAuthInterceptor,
} from "./interceptor.ts";
export type { VerificationKey } from "./public-keys.ts";
export {
  ACCEPTED_ALGORITHMS,
  importVerificationKeys,
  readPublicKeys,
  SIGNING_ALGORITHM,
} from "./public-keys.ts";
export type {
  AuthenticatedCaller,
  DeviceRegistration,
  DeviceStanding,
  IsDeviceActive,
  TokenVerifier,
  TokenVerifierOptions,
} from "./verifier.ts";
export {
  AuthReason,
  createTokenVerifier,
  DEVICE_CLAIM,
  REQUIRED_CLAIMS,
  tokenPredates,
} from "./verifier.ts";
