import type { DescFile, DescService } from "@bufbuild/protobuf";
import { create, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { ServerReflection, ServerReflectionService } from "nice-grpc-server-reflection";

/**
 * The files that declare the given services and every file they import, dependencies first, as
 * a serialized `google.protobuf.FileDescriptorSet`. The descriptors are the ones embedded in the
 * generated code, so reflection always describes exactly the schema the process was built with.
 */
export function fileDescriptorSet(services: readonly DescService[]): Uint8Array {
  const ordered: DescFile[] = [];
  const seen = new Set<string>();
  const visit = (file: DescFile) => {
    if (seen.has(file.proto.name)) {
      return;
    }
    seen.add(file.proto.name);
    for (const dependency of file.dependencies) {
      visit(dependency);
    }
    ordered.push(file);
  };
  for (const service of services) {
    visit(service.file);
  }
  return toBinary(
    FileDescriptorSetSchema,
    create(FileDescriptorSetSchema, { file: ordered.map((f) => f.proto) }),
  );
}

/**
 * The same reflection service under the older `grpc.reflection.v1alpha` name: the messages are
 * identical, and some tools (older grpcurl, grpc_cli, Postman) only speak v1alpha.
 */
export const ServerReflectionV1AlphaService: typeof ServerReflectionService = {
  ...ServerReflectionService,
  serverReflectionInfo: {
    ...ServerReflectionService.serverReflectionInfo,
    path: "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" as typeof ServerReflectionService.serverReflectionInfo.path,
  },
};

/** The implementation of both reflection services for the given services. */
export function createReflection(services: readonly DescService[]): ReturnType<typeof ServerReflection> {
  return ServerReflection(
    fileDescriptorSet(services),
    services.map((s) => s.typeName),
  );
}
