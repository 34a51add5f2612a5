import type { ConnectRouter } from "@connectrpc/connect";
import { SessionService } from "../gen/parley/edge/v1/session_service_pb.ts";
import { unimplementedEdgeService } from "./unimplemented.ts";

/** Where clients reach this edge host: returned by Locate and named in Drain frames. */
export interface EdgeIdentity {
  readonly hostId: string;
  readonly publicUrl: string;
}

/** Every service the edge serves; methods later work implements answer `unimplemented` until then. */
export function edgeRoutes(identity: EdgeIdentity): (router: ConnectRouter) => void {
  return (router) => {
    router.service(SessionService, {
      ...unimplementedEdgeService(SessionService),
      // A single host is its own answer; the cluster profile ranks live hosts from the registry.
      locate: async () => ({ edgeUrl: identity.publicUrl, hostId: identity.hostId }),
    });
  };
}
