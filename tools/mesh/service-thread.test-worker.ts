// The worker of tools/mesh/service-thread.test.ts: a "service" whose behaviour its settings pick.
import { runServiceThread } from "./service-thread.ts";

export interface TestThreadSettings {
  readonly behaviour: "serve" | "fail-to-start";
}

await runServiceThread<TestThreadSettings>(async ({ settings, broker }) => {
  if (settings.behaviour === "fail-to-start") throw new Error("the store could not be opened");
  // Echoes each message of test.in onto test.out through the bridged broker; a message keyed
  // "crash" ends the thread while it holds that message, as a crash would.
  const subscription = await broker.subscribe("test.in", { subscription: "echo" }, async (message) => {
    if (message.key === "crash") process.exit(3);
    await broker.publish("test.out", { key: message.key, payload: message.payload });
  });
  return {
    address: "127.0.0.1:1",
    stop: () => subscription.close(),
  };
});
