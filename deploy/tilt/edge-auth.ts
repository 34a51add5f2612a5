// `node deploy/tilt/edge-auth.ts`: prints (as JSON, which is YAML) the ConfigMap that lets the
// cluster's edges verify dev tokens. The Tiltfile applies it with the rest of deploy/k8s.
//
// It holds the public key of the dev issuer in PARLEY_DATA_DIR (default .data, created there when
// missing): the key `npm run -s token -- <user> <device>` signs with. So tokens minted on the
// developer's machine work against the cluster, and no private key ever enters it.
import { openDevIssuer } from "../../edge/auth/dev-issuer.ts";
import { devIssuerKeyPath } from "../../edge/config.ts";

/** The ConfigMap the edge Deployment reads PARLEY_EDGE_JWT_PUBLIC_KEYS from, and its key. */
export const EDGE_AUTH_CONFIG_MAP = "parley-edge-auth";
export const EDGE_AUTH_JWKS_KEY = "jwks";
/** The namespace of deploy/k8s (its kustomization's `namespace`). */
export const PARLEY_NAMESPACE = "parley";

export interface ConfigMap {
  readonly apiVersion: "v1";
  readonly kind: "ConfigMap";
  readonly metadata: { readonly name: string; readonly namespace: string };
  readonly data: Readonly<Record<string, string>>;
}

/** The edge auth ConfigMap for the dev issuer of `dataDir`, making its key when there is none. */
export async function edgeAuthConfigMap(dataDir: string): Promise<ConfigMap> {
  const issuer = await openDevIssuer(devIssuerKeyPath(dataDir));
  return {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: { name: EDGE_AUTH_CONFIG_MAP, namespace: PARLEY_NAMESPACE },
    data: { [EDGE_AUTH_JWKS_KEY]: JSON.stringify({ keys: [issuer.publicJwk] }) },
  };
}

if (import.meta.main) {
  const configMap = await edgeAuthConfigMap(process.env.PARLEY_DATA_DIR || ".data");
  process.stdout.write(`${JSON.stringify(configMap, null, 2)}\n`);
}
