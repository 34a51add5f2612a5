import { createChannel, createClient } from "nice-grpc";
import { HealthDefinition } from "nice-grpc-server-health";
import { ServerReflectionService } from "nice-grpc-server-reflection";
import reflectionPb from "nice-grpc-server-reflection/lib/proto/grpc/reflection/v1/reflection_pb.js";

const { ServerReflectionRequest } = reflectionPb;

/** grpc.health.v1 Check, as a Kubernetes gRPC probe sends it: 1 is SERVING. */
export async function healthStatus(address: string, service = ""): Promise<number> {
  const channel = createChannel(address);
  try {
    return (await createClient(HealthDefinition, channel).check({ service })).status;
  } finally {
    channel.close();
  }
}

/** The services a process lists through server reflection, as `grpcurl <address> list` does. */
export async function reflectedServices(address: string): Promise<string[]> {
  const channel = createChannel(address);
  try {
    const client = createClient(ServerReflectionService, channel);
    async function* listRequest() {
      yield new ServerReflectionRequest().setListServices("*");
    }
    for await (const response of client.serverReflectionInfo(listRequest())) {
      return (
        response
          .getListServicesResponse()
          ?.getServiceList()
          .map((s) => s.getName()) ?? []
      );
    }
    return [];
  } finally {
    channel.close();
  }
}
