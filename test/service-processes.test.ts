// Each service's main.ts starts it alone, as the cluster profile and Kubernetes run it.
import { exportJWK, generateKeyPair } from "jose";
import { afterEach, describe, expect, it } from "vitest";
import type { MeshProcess } from "./support/child-process.ts";
import { startNodeProcess } from "./support/child-process.ts";
import { healthStatus, reflectedServices } from "./support/grpc-probes.ts";

const services = [
  { name: "connection", prefix: "CONNECTION", typeName: "parley.connection.v1.ConnectionService" },
  { name: "key", prefix: "KEY", typeName: "parley.key.v1.KeyService" },
  { name: "sender", prefix: "SENDER", typeName: "parley.sender.v1.SenderService" },
  { name: "history", prefix: "HISTORY", typeName: "parley.history.v1.HistoryService" },
  { name: "delivery", prefix: "DELIVERY", typeName: "parley.delivery.v1.DeliveryService" },
];

const running: MeshProcess[] = [];
afterEach(async () => {
  for (const process of running.splice(0)) await process.stop();
});

describe("service processes", () => {
  it.each(services)(
    "$name starts alone, serves health and reflection, and stops on SIGTERM",
    async (service) => {
      const child = startNodeProcess(`services/${service.name}/main.ts`, {
        [`PARLEY_${service.prefix}_PORT`]: "0",
      });
      running.push(child);
      const port = (await child.waitFor(/"port":(\d+),"msg":"grpc server listening"/))[1];
      const address = `127.0.0.1:${port}`;
      expect(await healthStatus(address, service.typeName)).toBe(1);
      expect(await reflectedServices(address)).toEqual([service.typeName]);
      expect(await child.stop()).toBe(0);
    },
  );

  it("the edge starts alone and stops on SIGTERM", async () => {
    const { publicKey } = await generateKeyPair("Ed25519");
    const child = startNodeProcess("edge/main.ts", {
      PARLEY_EDGE_PORT: "0",
      PARLEY_EDGE_JWT_PUBLIC_KEYS: JSON.stringify({ keys: [await exportJWK(publicKey)] }),
      PARLEY_EDGE_JWT_ISSUER: "https://auth.example.com",
    });
    running.push(child);
    const url = (await child.waitFor(/"url":"(http:[^"]+)"/))[1];
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    expect(await child.stop()).toBe(0);
  });

  it("the edge refuses to start without a way to verify tokens", async () => {
    const child = startNodeProcess("edge/main.ts", {
      PARLEY_EDGE_PORT: "0",
      PARLEY_EDGE_JWT_PUBLIC_KEYS: "",
      PARLEY_EDGE_DEV_ISSUER_KEY_FILE: "",
    });
    running.push(child);
    expect(await child.exited()).toBe(78);
    expect(child.output()).toContain("PARLEY_EDGE_JWT_PUBLIC_KEYS is required");
  });

  it("refuses to start on bad configuration, naming every bad variable", async () => {
    const child = startNodeProcess("services/sender/main.ts", {
      PARLEY_SENDER_PORT: "http",
      PARLEY_LOG_LEVEL: "loud",
    });
    running.push(child);
    expect(await child.exited()).toBe(78);
    expect(child.output()).toContain("PARLEY_SENDER_PORT must be an integer port 0-65535, got 'http'");
    expect(child.output()).toContain("PARLEY_LOG_LEVEL must be one of");
  });
});
