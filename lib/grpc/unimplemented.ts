import type { DescService } from "@bufbuild/protobuf";
import { ParleyError } from "../errors.ts";
import type { GrpcServiceImplementation } from "./service-definition.ts";

/**
 * An implementation of every method of a service that answers UNIMPLEMENTED, naming the method,
 * so a process can serve a contract before its handlers exist. Spread it under the real
 * handlers: `{ ...unimplementedService(HistoryService), sync }`.
 */
export function unimplementedService<S extends DescService>(service: S): GrpcServiceImplementation<S> {
  const implementation: Record<string, unknown> = {};
  for (const method of service.methods) {
    const fail = () =>
      new ParleyError(
        "unimplemented",
        "NOT_IMPLEMENTED",
        `${service.typeName}/${method.name} is not implemented yet`,
        {
          metadata: { method: `${service.typeName}/${method.name}` },
        },
      );
    const streamsResponses =
      method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming";
    implementation[method.localName] = streamsResponses
      ? // biome-ignore lint/correctness/useYield: a stream that fails before its first message
        async function* unimplemented() {
          throw fail();
        }
      : async () => {
          throw fail();
        };
  }
  return implementation as GrpcServiceImplementation<S>;
}
