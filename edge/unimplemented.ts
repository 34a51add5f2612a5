import type { DescService } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { unimplemented } from "../lib/errors.ts";

/**
 * Every method of `service` answers `unimplemented`, naming the method, so a client developer
 * calling an edge RPC that later work fills in gets a clear answer instead of a 404.
 */
export function unimplementedEdgeService<S extends DescService>(service: S): ServiceImpl<S> {
  const implementation: Record<string, unknown> = {};
  for (const method of service.methods) {
    const fail = () =>
      unimplemented("NOT_IMPLEMENTED", `${service.typeName}/${method.name} is not implemented yet`);
    const streamsResponses =
      method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming";
    implementation[method.localName] = streamsResponses
      ? // biome-ignore lint/correctness/useYield: the stream fails before its first frame
        async function* () {
          throw fail();
        }
      : async () => {
          throw fail();
        };
  }
  return implementation as ServiceImpl<S>;
}
