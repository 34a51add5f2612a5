import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { SERVER_NODE_FLAGS } from "./server-node-flags.ts";

const read = (path: string) => readFileSync(new URL(`../${path}`, import.meta.url), "utf8");

// tools/cluster and the bench import SERVER_NODE_FLAGS; these two spell them out and can drift.
describe("SERVER_NODE_FLAGS", () => {
  it("are npm start's flags", () => {
    const start = (JSON.parse(read("package.json")) as { scripts: Record<string, string> }).scripts.start;
    expect(start).toBe(`node ${SERVER_NODE_FLAGS.join(" ")} tools/mesh/start-embedded.ts`);
  });

  it("are the container images' NODE_OPTIONS", () => {
    const options = /^ENV NODE_OPTIONS=(.*)$/m.exec(read("deploy/docker/Dockerfile"))?.[1];
    expect(options).toBe(SERVER_NODE_FLAGS.join(" "));
  });
});
