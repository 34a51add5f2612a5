// Checks deploy/ and the Tiltfile without Docker, Tilt or a cluster (none runs here or in CI): the
// Dockerfile's targets hold what each process imports, the Tiltfile evaluates as Starlark under
// recording stubs of Tilt's builtins (tools/deploy-check, on go.starlark.net, Tilt's interpreter)
// and names files, images and ports that exist, and every manifest parses and gives each process
// its Deployment, Service, gRPC health probes, resource limits, and only variables the code reads.
// Ports, variable names and versions come from the code, never written here a second time.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { isBuiltin } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import { EDGE_AUTH_CONFIG_MAP, EDGE_AUTH_JWKS_KEY, edgeAuthConfigMap } from "../deploy/tilt/edge-auth.ts";
import { createEdgeAuth } from "../edge/auth/edge-auth.ts";
import { DEV_ISSUER, edgeConfigSpec } from "../edge/config.ts";
import { CLUSTER_NAME_VARIABLES, PROFILE_VARIABLE } from "../lib/cluster-engines.ts";
import { ENGINE_VARIABLES, enginesRequested } from "../lib/engines.ts";
import { metricsConfigSpec } from "../lib/metrics.ts";
import { grpcServiceConfigSpec, METRICS_DEFAULT_PORTS } from "../lib/service-process.ts";
import { CONNECTION_DEFAULT_PORT } from "../services/connection/service.ts";
import { DELIVERY_DEFAULT_PORT } from "../services/delivery/service.ts";
import { HISTORY_DEFAULT_PORT } from "../services/history/service.ts";
import { KEY_DEFAULT_PORT } from "../services/key/service.ts";
import { SENDER_DEFAULT_PORT } from "../services/sender/service.ts";
import {
  CASSANDRA_VERSION,
  PULSAR_SETTINGS_PARLEY_RELIES_ON,
  PULSAR_VERSION,
} from "../tools/engines/engine-specs.ts";
import { mintDevToken } from "../tools/token/dev-token.ts";

const ROOT = resolve(import.meta.dirname, "..");
const DOCKERFILE = "deploy/docker/Dockerfile";
const K8S_DIR = "deploy/k8s";
const TILTFILE = "Tiltfile";

interface ProcessSpec {
  /** Where its main.ts is. */
  readonly folder: string;
  /** The port clients and probes use: the gRPC port of a service, the public port of the edge. */
  readonly port: number;
  /** Variables this process reads besides the shared ones (see `sharedVariables`). */
  readonly variables: ReadonlySet<string>;
  /** The variable that sets its bind address (must be 0.0.0.0 in a pod). */
  readonly hostVariables: readonly string[];
  /** At least this many replicas (the cluster profile runs two edge hosts and two delivery workers). */
  readonly minReplicas: number;
}

function serviceProcess(folder: string, envPrefix: string, port: number, minReplicas = 1): ProcessSpec {
  const spec = grpcServiceConfigSpec(envPrefix, port);
  return {
    folder,
    port,
    variables: names(spec),
    hostVariables: [spec.host.name],
    minReplicas,
  };
}

function names(spec: Readonly<Record<string, { readonly name: string }>>): Set<string> {
  return new Set(Object.values(spec).map((v) => v.name));
}

// The env prefixes are the ones each main.ts passes to grpcServiceConfigSpec.
const PROCESSES: Readonly<Record<string, ProcessSpec>> = {
  connection: serviceProcess("services/connection", "CONNECTION", CONNECTION_DEFAULT_PORT),
  key: serviceProcess("services/key", "KEY", KEY_DEFAULT_PORT),
  sender: serviceProcess("services/sender", "SENDER", SENDER_DEFAULT_PORT),
  history: serviceProcess("services/history", "HISTORY", HISTORY_DEFAULT_PORT),
  delivery: serviceProcess("services/delivery", "DELIVERY", DELIVERY_DEFAULT_PORT, 2),
  edge: {
    folder: "edge",
    port: defaultOf(edgeConfigSpec.port),
    variables: names(edgeConfigSpec),
    hostVariables: [edgeConfigSpec.host.name, edgeConfigSpec.pushHost.name],
    minReplicas: 2,
  },
};
const PROCESS_NAMES = Object.keys(PROCESSES);
const EDGE_PUSH_PORT = defaultOf(edgeConfigSpec.pushPort);

/**
 * Standard OpenTelemetry SDK variables the manifests set: sdk-node reads them itself
 * (lib/telemetry.ts passes the environment through), so there is no spec of ours to import.
 */
const OTEL_SDK_VARIABLES = new Set(["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL"]);

/**
 * What every process reads: its profile and the engines' addresses and names, its metrics endpoint,
 * telemetry, the service addresses.
 */
function sharedVariables(): Set<string> {
  return new Set([
    PROFILE_VARIABLE,
    ...Object.values(CLUSTER_NAME_VARIABLES),
    ...Object.values(ENGINE_VARIABLES),
    ...names(metricsConfigSpec(0)),
    ...OTEL_SDK_VARIABLES,
    ...[
      edgeConfigSpec.connectionAddress,
      edgeConfigSpec.keyAddress,
      edgeConfigSpec.senderAddress,
      edgeConfigSpec.historyAddress,
      edgeConfigSpec.deliveryAddress,
    ].map((v) => v.name),
  ]);
}

function defaultOf<T>(v: { readonly defaultValue: T | undefined; readonly name: string }): T {
  if (v.defaultValue === undefined) throw new Error(`${v.name} has no default`);
  return v.defaultValue;
}

function repoPath(path: string): string {
  return join(ROOT, path);
}

function readRepoFile(path: string): string {
  return readFileSync(repoPath(path), "utf8");
}

// ---- Dockerfile

interface Copy {
  readonly from: string | undefined;
  readonly sources: readonly string[];
  readonly dest: string;
}

interface Stage {
  readonly name: string;
  readonly base: string;
  readonly copies: Copy[];
  readonly env: Map<string, string>;
  workdir: string | undefined;
  user: string | undefined;
  cmd: readonly string[] | undefined;
  readonly instructions: string[];
}

/** The Dockerfile's stages by name, with the instructions the checks need (continuations joined). */
function parseDockerfile(text: string): Map<string, Stage> {
  const args = new Map<string, string>();
  const stages = new Map<string, Stage>();
  let stage: Stage | undefined;
  const logical = text
    .replace(/\\\n/g, " ")
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"));
  for (const line of logical) {
    const [instruction = "", ...rest] = line.split(/\s+/);
    const keyword = instruction.toUpperCase();
    const operand = line.slice(instruction.length).trim();
    const expand = (s: string) => s.replace(/\$\{(\w+)\}/g, (_, name: string) => args.get(name) ?? "");
    if (keyword === "ARG" && stage === undefined) {
      const [name = "", value = ""] = operand.split("=");
      args.set(name, value);
      continue;
    }
    if (keyword === "FROM") {
      const match = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(operand);
      if (match?.[1] === undefined || match[2] === undefined) throw new Error(`unnamed stage: ${line}`);
      stage = {
        name: match[2],
        base: expand(match[1]),
        copies: [],
        env: new Map(),
        workdir: undefined,
        user: undefined,
        cmd: undefined,
        instructions: [],
      };
      stages.set(stage.name, stage);
      continue;
    }
    if (stage === undefined) throw new Error(`instruction before FROM: ${line}`);
    stage.instructions.push(keyword);
    if (keyword === "COPY") {
      const flags = rest.filter((part) => part.startsWith("--"));
      const paths = rest.filter((part) => !part.startsWith("--"));
      const from = flags.find((flag) => flag.startsWith("--from="))?.slice("--from=".length);
      stage.copies.push({ from, sources: paths.slice(0, -1), dest: paths.at(-1) ?? "" });
    } else if (keyword === "ENV") {
      for (const pair of rest) {
        const [name = "", value = ""] = pair.split("=");
        stage.env.set(name, value);
      }
    } else if (keyword === "WORKDIR") {
      stage.workdir = operand;
    } else if (keyword === "USER") {
      stage.user = operand;
    } else if (keyword === "CMD") {
      stage.cmd = JSON.parse(operand) as string[];
    }
  }
  return stages;
}

/** A stage and the stages it is built on, nearest first. */
function stageChain(stages: Map<string, Stage>, name: string): Stage[] {
  const chain: Stage[] = [];
  for (let stage = stages.get(name); stage !== undefined; stage = stages.get(stage.base)) {
    chain.push(stage);
  }
  return chain;
}

function inherited<T>(chain: readonly Stage[], pick: (stage: Stage) => T | undefined): T | undefined {
  for (const stage of chain) {
    const value = pick(stage);
    if (value !== undefined) return value;
  }
  return undefined;
}

/** Repository paths copied from the build context into a target (its own stage and those below it). */
function contextCopies(chain: readonly Stage[]): Copy[] {
  return chain.flatMap((stage) => stage.copies.filter((copy) => copy.from === undefined));
}

// ---- what a process imports

const IMPORT_STATEMENT = /^\s*(import|export)\s+(type\s+)?(?:[^'";]*?\s+from\s+)?["']([^"']+)["']/gm;
const DYNAMIC_IMPORT = /\bimport\(\s*["']([^"']+)["']\s*\)/g;

interface ImportGraph {
  /** Repository files the process loads, main.ts included. */
  readonly files: Set<string>;
  /** npm packages it imports directly. */
  readonly packages: Set<string>;
}

/** Every file a process loads at run time, from its main.ts through relative imports (type-only ones are erased). */
function importGraph(main: string): ImportGraph {
  const files = new Set<string>();
  const packages = new Set<string>();
  const pending = [main];
  for (let file = pending.pop(); file !== undefined; file = pending.pop()) {
    if (files.has(file)) continue;
    files.add(file);
    const source = readRepoFile(file);
    const specifiers = [
      ...[...source.matchAll(IMPORT_STATEMENT)].filter((m) => m[2] === undefined).map((m) => m[3] ?? ""),
      ...[...source.matchAll(DYNAMIC_IMPORT)].map((m) => m[1] ?? ""),
    ];
    for (const specifier of specifiers) {
      if (specifier.startsWith(".")) {
        const target = relative(ROOT, resolve(dirname(repoPath(file)), specifier));
        if (!existsSync(repoPath(target))) throw new Error(`${file} imports ${specifier}: no such file`);
        pending.push(target);
      } else if (!isBuiltin(specifier)) {
        const parts = specifier.split("/");
        packages.add(specifier.startsWith("@") ? parts.slice(0, 2).join("/") : (parts[0] ?? specifier));
      }
    }
  }
  return { files, packages };
}

function within(path: string, folder: string): boolean {
  return path === folder || path.startsWith(`${folder}/`);
}

// ---- Kubernetes objects, as far as the checks read them

interface K8sObject {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: { readonly name: string; readonly labels?: Record<string, string> };
  readonly spec?: WorkloadSpec & ServiceSpec;
  readonly data?: Record<string, string>;
}

interface WorkloadSpec {
  readonly replicas?: number;
  readonly selector?: { readonly matchLabels?: Record<string, string> };
  readonly template?: {
    readonly metadata?: { readonly labels?: Record<string, string> };
    readonly spec: PodSpec;
  };
}

interface ServiceSpec {
  readonly clusterIP?: string;
  readonly ports?: readonly { name?: string; port: number; targetPort?: number | string }[];
}

interface PodSpec {
  readonly containers: readonly Container[];
  readonly volumes?: readonly { name: string; emptyDir?: object; configMap?: { name: string } }[];
  readonly securityContext?: { runAsNonRoot?: boolean; runAsUser?: number };
}

interface Probe {
  readonly grpc?: { readonly port: number; readonly service?: string };
  readonly httpGet?: { readonly path?: string; readonly port: number | string };
  readonly tcpSocket?: { readonly port: number | string };
  readonly exec?: { readonly command: readonly string[] };
}

interface EnvVar {
  readonly name: string;
  readonly value?: string;
  readonly valueFrom?: {
    readonly fieldRef?: { readonly fieldPath: string };
    readonly configMapKeyRef?: { readonly name: string; readonly key: string };
  };
}

interface Container {
  readonly name: string;
  readonly image: string;
  readonly args?: readonly string[];
  readonly ports?: readonly { name?: string; containerPort: number }[];
  readonly env?: readonly EnvVar[];
  readonly envFrom?: readonly { configMapRef?: { name: string } }[];
  readonly startupProbe?: Probe;
  readonly readinessProbe?: Probe;
  readonly livenessProbe?: Probe;
  readonly resources?: {
    readonly requests?: Record<string, string>;
    readonly limits?: Record<string, string>;
  };
  readonly volumeMounts?: readonly { name: string; mountPath: string }[];
}

const WORKLOAD_KINDS = new Set(["Deployment", "StatefulSet"]);

interface Manifests {
  /** Files of deploy/k8s and the objects in each. */
  readonly files: Map<string, K8sObject[]>;
  readonly objects: K8sObject[];
}

function loadManifests(): Manifests {
  const files = new Map<string, K8sObject[]>();
  const yamlFiles = readdirSync(repoPath(K8S_DIR)).filter((f) => f.endsWith(".yaml") || f.endsWith(".yml"));
  // The kustomization is kustomize's input, not an object it applies.
  for (const file of yamlFiles.filter((f) => f !== "kustomization.yaml")) {
    const documents = parseAllDocuments(readRepoFile(join(K8S_DIR, file)), { prettyErrors: true });
    const list = Array.isArray(documents) ? documents : [documents];
    for (const doc of list) {
      if (doc.errors.length > 0 || doc.warnings.length > 0) {
        throw new Error(`${file}: ${[...doc.errors, ...doc.warnings].map((e) => e.message).join("; ")}`);
      }
    }
    files.set(
      file,
      list.map((doc) => doc.toJS() as K8sObject).filter((o) => o !== null),
    );
  }
  return { files, objects: [...files.values()].flat() };
}

function find(manifests: Manifests, kind: string, name: string): K8sObject | undefined {
  return manifests.objects.find((o) => o.kind === kind && o.metadata.name === name);
}

function workload(manifests: Manifests, name: string): K8sObject | undefined {
  return manifests.objects.find((o) => WORKLOAD_KINDS.has(o.kind) && o.metadata.name === name);
}

function podSpec(object: K8sObject): PodSpec {
  const spec = object.spec?.template?.spec;
  if (spec === undefined) throw new Error(`${object.kind}/${object.metadata.name} has no pod template`);
  return spec;
}

function onlyContainer(object: K8sObject): Container {
  const containers = podSpec(object).containers;
  expect(containers, `${object.metadata.name}: one container`).toHaveLength(1);
  const [container] = containers;
  if (container === undefined) throw new Error("no container");
  return container;
}

/** The container port a probe or Service names (by number or by port name), if the container has it. */
function containerPort(container: Container, port: number | string | undefined): number | undefined {
  const ports = container.ports ?? [];
  const found =
    typeof port === "number"
      ? ports.find((p) => p.containerPort === port)
      : ports.find((p) => p.name === port);
  return found?.containerPort;
}

function probePort(probe: Probe): number | string | undefined {
  return probe.grpc?.port ?? probe.httpGet?.port ?? probe.tcpSocket?.port;
}

/** CPU in millicores or memory in bytes, from a Kubernetes quantity. */
function quantity(value: string): number {
  const match = /^(\d+(?:\.\d+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti)?$/.exec(value);
  if (match?.[1] === undefined) throw new Error(`not a quantity: ${value}`);
  const factor: Record<string, number> = {
    "": 1,
    m: 1e-3,
    k: 1e3,
    Ki: 2 ** 10,
    M: 1e6,
    Mi: 2 ** 20,
    G: 1e9,
    Gi: 2 ** 30,
    T: 1e12,
    Ti: 2 ** 40,
  };
  return Number(match[1]) * (factor[match[2] ?? ""] ?? Number.NaN);
}

/** host and port of `host:port` or of a URL's authority. */
function hostAndPort(address: string): { host: string; port: number } {
  const authority = address.includes("://") ? new URL(address).host : address;
  const [host = "", port = ""] = authority.split(":");
  return { host, port: Number(port) };
}

/** The Service named by a `host:port` inside the cluster, and the container port it leads to. */
function serviceTarget(manifests: Manifests, address: string): { service: K8sObject; containerPort: number } {
  const { host, port } = hostAndPort(address);
  const service = find(manifests, "Service", host);
  if (service === undefined) throw new Error(`${address}: no Service ${host}`);
  const servicePort = service.spec?.ports?.find((p) => p.port === port);
  if (servicePort === undefined) throw new Error(`${address}: Service ${host} has no port ${port}`);
  // A Service's selector is a plain label map (a workload's is under matchLabels).
  const selector = Object.entries((service.spec as { selector?: Record<string, string> }).selector ?? {});
  const targets = manifests.objects.filter(
    (o) =>
      WORKLOAD_KINDS.has(o.kind) &&
      selector.length > 0 &&
      selector.every(([k, v]) => o.spec?.template?.metadata?.labels?.[k] === v),
  );
  const [target] = targets;
  if (target === undefined || targets.length > 1) {
    throw new Error(`${address}: Service ${host} selects ${targets.length} workloads, not one`);
  }
  const resolved = podSpec(target)
    .containers.map((c) => containerPort(c, servicePort.targetPort ?? servicePort.port))
    .find((p) => p !== undefined);
  if (resolved === undefined)
    throw new Error(`${address}: no container port ${String(servicePort.targetPort)}`);
  return { service, containerPort: resolved };
}

function configMapData(manifests: Manifests, name: string): Record<string, string> {
  const configMap = find(manifests, "ConfigMap", name);
  if (configMap?.data === undefined) throw new Error(`no ConfigMap ${name} with data`);
  return configMap.data;
}

// ---- the checks

const stages = parseDockerfile(readRepoFile(DOCKERFILE));
const manifests = loadManifests();
const kustomization = parseYaml(readRepoFile(join(K8S_DIR, "kustomization.yaml"))) as {
  namespace: string;
  resources: string[];
};
const packageJson = JSON.parse(readRepoFile("package.json")) as { engines: { node: string } };
const packageLock = JSON.parse(readRepoFile("package-lock.json")) as {
  packages: Record<string, { dev?: boolean }>;
};

describe("deploy/docker/Dockerfile", () => {
  it("has one target per process, running its main.ts as the image's command", () => {
    for (const [name, spec] of Object.entries(PROCESSES)) {
      const chain = stageChain(stages, name);
      expect(chain.length, `target ${name}`).toBeGreaterThan(0);
      const cmd = inherited(chain, (s) => s.cmd);
      expect(cmd, name).toEqual(["node", `${spec.folder}/main.ts`]);
      expect(existsSync(repoPath(`${spec.folder}/main.ts`))).toBe(true);
    }
  });

  it("starts from the Node major version package.json requires, and runs as a non-root user", () => {
    const major = /^>=(\d+)\./.exec(packageJson.engines.node)?.[1];
    expect(major).toBeDefined();
    for (const name of PROCESS_NAMES) {
      const chain = stageChain(stages, name);
      const root = chain.at(-1);
      expect(root?.base, name).toMatch(new RegExp(`^node:${major}(\\.|-|$)`));
      const user = inherited(chain, (s) => s.user);
      expect(user, `${name}: USER uid:gid`).toMatch(/^\d+:\d+$/);
      expect(Number(user?.split(":")[0])).toBeGreaterThan(0);
    }
  });

  it("has no HEALTHCHECK: Kubernetes probes the processes", () => {
    for (const stage of stages.values()) expect(stage.instructions).not.toContain("HEALTHCHECK");
  });

  it("installs production dependencies only, from the lockfile", () => {
    const text = readRepoFile(DOCKERFILE);
    expect(text).toMatch(/npm ci --omit=dev/);
    const copied = [...stages.values()].flatMap((s) => contextCopies([s])).flatMap((c) => c.sources);
    expect(copied).toEqual(expect.arrayContaining(["package.json", "package-lock.json"]));
  });

  it("copies paths that exist and that its .dockerignore lets into the build context", () => {
    const ignore = readRepoFile(`${DOCKERFILE}.dockerignore`)
      .split("\n")
      .map((line) => line.trim())
      .filter((line) => line !== "" && !line.startsWith("#"));
    // An allowlist: everything is excluded, then the runtime paths are let back in.
    expect(ignore[0]).toBe("*");
    const allowed = ignore.filter((line) => line.startsWith("!")).map((line) => line.slice(1));
    for (const stage of stages.values()) {
      for (const source of contextCopies([stage]).flatMap((c) => c.sources)) {
        expect(existsSync(repoPath(source)), `${stage.name}: COPY ${source}`).toBe(true);
        expect(
          allowed.some((a) => within(source, a)),
          `${stage.name}: ${source} is excluded from the context`,
        ).toBe(true);
      }
    }
  });

  it("gives each target every file its process imports, and only runtime dependencies", () => {
    for (const [name, spec] of Object.entries(PROCESSES)) {
      const copied = contextCopies(stageChain(stages, name)).flatMap((c) => c.sources);
      const graph = importGraph(`${spec.folder}/main.ts`);
      expect(graph.files.size, name).toBeGreaterThan(10);
      const missing = [...graph.files].filter((file) => !copied.some((source) => within(file, source)));
      expect(missing, `${name}: imported but not in the image`).toEqual([]);
      // `npm ci --omit=dev` installs what the lockfile does not mark dev-only.
      const notInstalled = [...graph.packages].filter((p) => {
        const locked = packageLock.packages[`node_modules/${p}`];
        return locked === undefined || locked.dev === true;
      });
      expect(notInstalled, `${name}: imported packages the image does not install`).toEqual([]);
    }
  });
});

describe("deploy/k8s", () => {
  it("parses, one object per document, each with apiVersion, kind and name", () => {
    expect(manifests.objects.length).toBeGreaterThan(20);
    for (const object of manifests.objects) {
      expect(object.apiVersion, JSON.stringify(object.metadata)).toBeTruthy();
      expect(object.kind).toBeTruthy();
      expect(object.metadata.name).toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
    }
  });

  it("lists every manifest in its kustomization, and nothing else", () => {
    const files = [...manifests.files.keys()].sort();
    expect([...kustomization.resources].sort()).toEqual(files);
    expect(find(manifests, "Namespace", kustomization.namespace)).toBeDefined();
  });

  it("has a Deployment per process, on the image the Tiltfile builds, with its ports from the code", () => {
    for (const [name, spec] of Object.entries(PROCESSES)) {
      const deployment = find(manifests, "Deployment", name);
      if (deployment === undefined) throw new Error(`no Deployment ${name}`);
      expect(deployment.spec?.replicas ?? 1, name).toBeGreaterThanOrEqual(spec.minReplicas);
      const container = onlyContainer(deployment);
      expect(container.image).toBe(`parley-${name}`);
      expect(containerPort(container, name === "edge" ? "http" : "grpc"), name).toBe(spec.port);
      expect(containerPort(container, "metrics"), name).toBe(METRICS_DEFAULT_PORTS[name]);
      if (name === "edge") expect(containerPort(container, "push")).toBe(EDGE_PUSH_PORT);
      const selector = deployment.spec?.selector?.matchLabels ?? {};
      for (const [key, value] of Object.entries(selector)) {
        expect(deployment.spec?.template?.metadata?.labels?.[key], name).toBe(value);
      }
    }
  });

  it("probes each service's grpc.health.v1 on its own port", () => {
    for (const [name, spec] of Object.entries(PROCESSES)) {
      if (name === "edge") continue;
      const container = onlyContainer(workload(manifests, name) as K8sObject);
      for (const probe of [container.startupProbe, container.readinessProbe, container.livenessProbe]) {
        expect(probe?.grpc?.port, name).toBe(spec.port);
      }
    }
  });

  it("probes the edge's push server over gRPC health, and its readiness on /readyz (503 while draining)", () => {
    const container = onlyContainer(workload(manifests, "edge") as K8sObject);
    expect(container.livenessProbe?.grpc?.port).toBe(EDGE_PUSH_PORT);
    expect(container.startupProbe?.grpc?.port).toBe(EDGE_PUSH_PORT);
    expect(container.readinessProbe?.httpGet?.path).toBe("/readyz");
    expect(containerPort(container, container.readinessProbe?.httpGet?.port)).toBe(PROCESSES.edge?.port);
  });

  it("exposes each process through a Service selecting its pods; the internal ones headless", () => {
    for (const [name, spec] of Object.entries(PROCESSES)) {
      const { service, containerPort: port } = serviceTarget(manifests, `${name}:${spec.port}`);
      expect(port, name).toBe(spec.port);
      // Clients balance round-robin over every pod address DNS returns (lib/grpc/client.ts).
      if (name !== "edge") expect(service.spec?.clusterIP, name).toBe("None");
    }
  });

  it("gives every container of every workload requests, limits at or above them, and probes on its ports", () => {
    const workloads = manifests.objects.filter((o) => WORKLOAD_KINDS.has(o.kind));
    expect(workloads.map((w) => w.metadata.name).sort()).toEqual(
      [...PROCESS_NAMES, "redis", "etcd", "cassandra", "pulsar", "otel-collector", "jaeger"].sort(),
    );
    for (const object of workloads) {
      for (const container of podSpec(object).containers) {
        const where = `${object.metadata.name}/${container.name}`;
        for (const resource of ["cpu", "memory"]) {
          const request = container.resources?.requests?.[resource];
          const limit = container.resources?.limits?.[resource];
          expect(request, `${where} ${resource} request`).toBeDefined();
          expect(limit, `${where} ${resource} limit`).toBeDefined();
          expect(quantity(limit ?? "0"), where).toBeGreaterThanOrEqual(quantity(request ?? "0"));
        }
        expect(container.readinessProbe, `${where} readiness`).toBeDefined();
        expect(container.livenessProbe, `${where} liveness`).toBeDefined();
        for (const probe of [container.startupProbe, container.readinessProbe, container.livenessProbe]) {
          if (probe === undefined || probe.exec !== undefined) continue;
          expect(containerPort(container, probePort(probe)), `${where} probe port`).toBeDefined();
        }
      }
    }
  });

  it("sets only variables the processes read, and binds every listener to all interfaces", () => {
    const shared = sharedVariables();
    const everyProcess = new Set([
      ...shared,
      ...PROCESS_NAMES.flatMap((n) => [...(PROCESSES[n]?.variables ?? [])]),
    ]);
    const config = configMapData(manifests, "parley-config");
    const unread = Object.keys(config).filter((key) => !everyProcess.has(key));
    expect(unread, "parley-config keys no process reads").toEqual([]);
    expect(config[metricsConfigSpec(0).metricsHost.name]).toBe("0.0.0.0");
    for (const [name, spec] of Object.entries(PROCESSES)) {
      const container = onlyContainer(workload(manifests, name) as K8sObject);
      expect(container.envFrom?.map((e) => e.configMapRef?.name)).toEqual(["parley-config"]);
      const env = container.env ?? [];
      const known = new Set([...shared, ...spec.variables]);
      // Helpers from the downward API are allowed when another variable refers to them.
      const helpers = env.filter(
        (v) =>
          !known.has(v.name) &&
          v.valueFrom?.fieldRef !== undefined &&
          env.some((other) => other.value?.includes(`$(${v.name})`)),
      );
      const unknown = env.filter((v) => !known.has(v.name) && !helpers.includes(v));
      expect(
        unknown.map((v) => v.name),
        `${name}: variables it does not read`,
      ).toEqual([]);
      for (const host of spec.hostVariables) {
        expect(env.find((v) => v.name === host)?.value, `${name}: ${host}`).toBe("0.0.0.0");
      }
    }
  });

  it("points the service addresses at the Services and default ports of the processes", () => {
    const config = configMapData(manifests, "parley-config");
    const addresses = {
      connection: edgeConfigSpec.connectionAddress,
      key: edgeConfigSpec.keyAddress,
      sender: edgeConfigSpec.senderAddress,
      history: edgeConfigSpec.historyAddress,
      delivery: edgeConfigSpec.deliveryAddress,
    };
    for (const [name, variable] of Object.entries(addresses)) {
      const address = config[variable.name] ?? "";
      const { service, containerPort: port } = serviceTarget(manifests, address);
      expect(service.metadata.name).toBe(name);
      expect(port).toBe(PROCESSES[name]?.port);
      // The code's own default names the same port.
      expect(hostAndPort(defaultOf(variable)).port).toBe(port);
    }
  });

  it("runs the cluster profile, and points the engine variables at the engines' Services", () => {
    const config = configMapData(manifests, "parley-config");
    expect(config[PROFILE_VARIABLE]).toBe("cluster");
    const targets = {
      [ENGINE_VARIABLES.redisUrl]: "redis",
      [ENGINE_VARIABLES.etcdEndpoints]: "etcd",
      [ENGINE_VARIABLES.cassandraContactPoints]: "cassandra",
      [ENGINE_VARIABLES.pulsarWebUrl]: "pulsar",
    };
    for (const [variable, engine] of Object.entries(targets)) {
      const values = (config[variable] ?? "").split(",");
      expect(values.length, variable).toBeGreaterThan(0);
      for (const value of values) {
        expect(serviceTarget(manifests, value.trim()).service.metadata.name, variable).toBe(engine);
      }
    }
    const cassandra = onlyContainer(workload(manifests, "cassandra") as K8sObject);
    expect(cassandra.env?.find((v) => v.name === "CASSANDRA_DC")?.value).toBe(
      config[ENGINE_VARIABLES.cassandraDatacenter],
    );
  });

  it("runs the engine versions the engine tests run", () => {
    expect(onlyContainer(workload(manifests, "cassandra") as K8sObject).image).toBe(
      `cassandra:${CASSANDRA_VERSION}`,
    );
    expect(onlyContainer(workload(manifests, "pulsar") as K8sObject).image).toBe(
      `apachepulsar/pulsar:${PULSAR_VERSION}`,
    );
  });

  it("sets every Pulsar setting the adapter relies on, as the engine tests' standalone does", () => {
    const pulsar = onlyContainer(workload(manifests, "pulsar") as K8sObject);
    const prefixed = new Map(
      (pulsar.env ?? [])
        .filter((v) => v.name.startsWith("PULSAR_PREFIX_"))
        .map((v) => [v.name.slice("PULSAR_PREFIX_".length), v.value]),
    );
    expect(Object.fromEntries(prefixed)).toMatchObject(PULSAR_SETTINGS_PARLEY_RELIES_ON);
    // apply-config-from-env.py only writes the PULSAR_PREFIX_ variables when it runs first.
    expect(pulsar.args?.join(" ")).toMatch(/^bin\/apply-config-from-env\.py conf\/standalone\.conf && /);
  });

  it("sends OTLP to the collector's receiver, and the collector's traces on to Jaeger", () => {
    const config = configMapData(manifests, "parley-config");
    expect(config.OTEL_EXPORTER_OTLP_PROTOCOL).toBe("http/protobuf");
    const endpoint = config.OTEL_EXPORTER_OTLP_ENDPOINT ?? "";
    const { service, containerPort: port } = serviceTarget(manifests, endpoint);
    expect(service.metadata.name).toBe("otel-collector");
    const collector = parseYaml(configMapData(manifests, "otel-collector-config")["config.yaml"] ?? "") as {
      receivers: { otlp: { protocols: { http: { endpoint: string } } } };
      exporters: Record<string, { endpoint?: string }>;
      service: { pipelines: Record<string, { receivers: string[]; exporters: string[] }> };
    };
    expect(hostAndPort(collector.receivers.otlp.protocols.http.endpoint).port).toBe(port);
    const traces = collector.service.pipelines.traces;
    expect(traces?.receivers).toContain("otlp");
    const exporters = traces?.exporters ?? [];
    expect(exporters.length).toBeGreaterThan(0);
    for (const exporter of exporters) {
      const target = serviceTarget(manifests, collector.exporters[exporter]?.endpoint ?? "");
      expect(target.service.metadata.name).toBe("jaeger");
    }
    // The metrics the processes also send over OTLP need a pipeline, or the collector refuses them.
    expect(collector.service.pipelines.metrics?.receivers).toContain("otlp");
    const mounted = podSpec(workload(manifests, "otel-collector") as K8sObject).volumes?.map(
      (v) => v.configMap?.name,
    );
    expect(mounted).toContain("otel-collector-config");
  });

  it("runs Parley's pods as the image's user, with the image's data folder on a volume", () => {
    for (const name of PROCESS_NAMES) {
      const chain = stageChain(stages, name);
      const uid = Number(inherited(chain, (s) => s.user)?.split(":")[0]);
      const dataDir = inherited(chain, (s) => s.env.get("PARLEY_DATA_DIR"));
      expect(dataDir, name).toBeDefined();
      const pod = podSpec(workload(manifests, name) as K8sObject);
      expect(pod.securityContext?.runAsNonRoot, name).toBe(true);
      expect(pod.securityContext?.runAsUser, name).toBe(uid);
      const mount = onlyContainer(workload(manifests, name) as K8sObject).volumeMounts?.find(
        (m) => m.mountPath === dataDir,
      );
      expect(mount, `${name}: volume at ${dataDir}`).toBeDefined();
      expect(pod.volumes?.find((v) => v.name === mount?.name)?.emptyDir, name).toBeDefined();
    }
  });

  it("makes each edge pod its own host: id, push address and public URL from the pod", () => {
    const env = onlyContainer(workload(manifests, "edge") as K8sObject).env ?? [];
    const value = (name: string) => env.find((v) => v.name === name)?.value ?? "";
    const fieldRefOf = (name: string) => env.find((v) => v.name === name)?.valueFrom?.fieldRef?.fieldPath;
    const helper = (text: string) => /\$\((\w+)\)/.exec(text)?.[1] ?? "";
    const hostId = value(edgeConfigSpec.hostId.name);
    expect(fieldRefOf(helper(hostId))).toBe("metadata.name");
    const push = value(edgeConfigSpec.pushAdvertiseAddress.name);
    expect(fieldRefOf(helper(push))).toBe("status.podIP");
    expect(push.endsWith(`:${EDGE_PUSH_PORT}`)).toBe(true);
    const publicUrl = value(edgeConfigSpec.publicUrl.name);
    expect(fieldRefOf(helper(publicUrl))).toBe("status.podIP");
    expect(publicUrl.endsWith(`:${PROCESSES.edge?.port}`)).toBe(true);
    expect(value(edgeConfigSpec.jwtIssuer.name)).toBe(DEV_ISSUER);
    const keys = env.find((v) => v.name === edgeConfigSpec.jwtPublicKeys.name)?.valueFrom?.configMapKeyRef;
    expect(keys).toEqual({ name: EDGE_AUTH_CONFIG_MAP, key: EDGE_AUTH_JWKS_KEY });
  });
});

// ---- the Tiltfile, evaluated by tools/deploy-check

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

interface TiltCall {
  readonly fn: string;
  readonly args: Record<string, Json>;
}

/** A value a recording builtin returned (a Blob, a live update step, a port forward). */
interface Recorded {
  readonly $fn: string;
  readonly args: Record<string, Json>;
}

function isRecorded(value: Json | undefined, fn: string): value is Json & Recorded {
  return typeof value === "object" && value !== null && !Array.isArray(value) && value.$fn === fn;
}

function strings(value: Json | undefined): string[] {
  if (value === undefined || value === null) return [];
  if (typeof value === "string") return [value];
  if (Array.isArray(value)) return value.map((v) => String(v));
  throw new Error(`not a string or list: ${JSON.stringify(value)}`);
}

// Go builds the checker; CI must have it (.ci/run), a developer without Go is told and skipped.
const GO_REQUIRED = enginesRequested() || process.env.CI === "true";
const HAVE_GO = spawnSync("go", ["version"], { encoding: "utf8" }).status === 0;
if (!HAVE_GO && !GO_REQUIRED) {
  console.warn(
    "test/deploy.test.ts: the Tiltfile checks are skipped: Go is not on PATH (tools/deploy-check needs it; CI has it)",
  );
}

describe.runIf(HAVE_GO || GO_REQUIRED)("checked by tools/deploy-check", () => {
  let scratch: string;
  let checker: string;
  let calls: TiltCall[];

  function evaluate(tiltfile: string) {
    return spawnSync(checker, ["tiltfile", tiltfile], { cwd: ROOT, encoding: "utf8", timeout: 60_000 });
  }

  beforeAll(() => {
    scratch = mkdtempSync(join(tmpdir(), "parley-deploy-"));
    checker = join(scratch, "deploy-check");
    const build = spawnSync("go", ["build", "-o", checker, "."], {
      cwd: repoPath("tools/deploy-check"),
      encoding: "utf8",
      timeout: 300_000,
    });
    if (build.error !== undefined || build.status !== 0) {
      throw new Error(
        `could not build tools/deploy-check (Go is required here): ${build.error?.message ?? build.stderr}`,
      );
    }
    const result = evaluate(TILTFILE);
    if (result.status !== 0) throw new Error(`the Tiltfile does not evaluate:\n${result.stderr}`);
    calls = (JSON.parse(result.stdout) as { calls: TiltCall[] }).calls;
  }, 320_000);

  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  const callsOf = (fn: string) => calls.filter((c) => c.fn === fn);

  it("decodes every manifest strictly into its Kubernetes API type", () => {
    const files = [...manifests.files.keys()].map((file) => join(K8S_DIR, file));
    const result = spawnSync(checker, ["manifests", ...files], { cwd: ROOT, encoding: "utf8" });
    expect(result.stderr).toBe("");
    expect(result.status).toBe(0);
    // The control: a misspelt field is refused.
    const bad = join(scratch, "bad.yaml");
    writeFileSync(
      bad,
      readRepoFile(join(K8S_DIR, "redis.yaml")).replace("periodSeconds: 5", "periodSecond: 5"),
    );
    const refused = spawnSync(checker, ["manifests", bad], { encoding: "utf8" });
    expect(refused.status).toBe(1);
    expect(refused.stderr).toContain('unknown field "periodSecond"');
  });

  describe("Tiltfile", () => {
    it("refuses what Tilt would: unknown builtins and keywords, missing arguments, extensions", () => {
      const bad = join(scratch, "Tiltfile.bad");
      for (const [source, error] of [
        ['k8s_resorce("edge")\n', "undefined: k8s_resorce"],
        ['k8s_resource("edge", port_forward = 8080)\n', 'unexpected keyword argument "port_forward"'],
        ['docker_build("parley-edge")\n', "missing argument for context"],
        ['load("ext://restart_process", "docker_build_with_restart")\n', "without Tilt extensions"],
      ] as const) {
        writeFileSync(bad, source);
        const result = evaluate(bad);
        expect(result.status, source).toBe(1);
        expect(result.stderr, source).toContain(error);
      }
    });

    it("builds one image per process from its Dockerfile target, in the repository root", () => {
      const builds = callsOf("docker_build");
      expect(builds.map((b) => b.args.ref).sort()).toEqual(PROCESS_NAMES.map((n) => `parley-${n}`).sort());
      for (const build of builds) {
        const name = String(build.args.ref).replace(/^parley-/, "");
        expect(build.args.context).toBe(".");
        expect(existsSync(repoPath(join(String(build.args.context), "package.json")))).toBe(true);
        expect(build.args.dockerfile).toBe(DOCKERFILE);
        expect(build.args.target).toBe(name);
        expect(stages.has(name)).toBe(true);
      }
    });

    it("runs each image's own command under node --watch", () => {
      for (const build of callsOf("docker_build")) {
        const name = String(build.args.target);
        const [node, ...args] = inherited(stageChain(stages, name), (s) => s.cmd) ?? [];
        expect(strings(build.args.entrypoint)).toEqual([node, "--watch", ...args]);
      }
    });

    it("sends every path the target copies into the build context, and only paths that exist", () => {
      for (const build of callsOf("docker_build")) {
        const only = strings(build.args.only);
        for (const path of only) expect(existsSync(repoPath(path)), path).toBe(true);
        const copied = contextCopies(stageChain(stages, String(build.args.target))).flatMap((c) => c.sources);
        for (const source of copied) {
          expect(
            only.some((path) => within(source, path)),
            `${String(build.args.ref)}: COPY ${source}`,
          ).toBe(true);
        }
      }
    });

    it("live-updates every file the process imports to where the image keeps it; dependencies rebuild", () => {
      for (const build of callsOf("docker_build")) {
        const name = String(build.args.target);
        const chain = stageChain(stages, name);
        const workdir = inherited(chain, (s) => s.workdir) ?? "/";
        const copies = contextCopies(chain);
        const steps = Array.isArray(build.args.live_update) ? build.args.live_update : [];
        const fallBack = steps.filter((s) => isRecorded(s, "fall_back_on")) as Recorded[];
        expect(fallBack.flatMap((s) => strings(s.args.files)).sort()).toEqual([
          "package-lock.json",
          "package.json",
        ]);
        const syncs = (steps.filter((s) => isRecorded(s, "sync")) as Recorded[]).map((s) => ({
          local: String(s.args.local_path),
          remote: String(s.args.remote_path),
        }));
        for (const { local, remote } of syncs) {
          expect(existsSync(repoPath(local)), local).toBe(true);
          expect(
            strings(build.args.only).some((path) => within(local, path)),
            `${local} in only`,
          ).toBe(true);
          // The image holds the same folder at the same place, so a sync replaces what was built in.
          const copy = copies.find((c) => c.sources.includes(local));
          expect(copy, `${name}: the image copies ${local}`).toBeDefined();
          expect(resolve(workdir, copy?.dest ?? "")).toBe(remote);
          expect(remote).toBe(`${workdir}/${local}`);
        }
        const graph = importGraph(`${PROCESSES[name]?.folder}/main.ts`);
        const stale = [...graph.files].filter((file) => !syncs.some((s) => within(file, s.local)));
        expect(stale, `${name}: imported but never synced`).toEqual([]);
      }
    });

    it("applies the kustomization, and the edge auth ConfigMap the edge Deployment reads", async () => {
      const yamls = callsOf("k8s_yaml").map((c) => c.args.yaml);
      const kustomized = yamls.filter((y) => isRecorded(y, "kustomize")) as Recorded[];
      expect(kustomized.map((k) => k.args.pathToDir)).toEqual([K8S_DIR]);
      expect(existsSync(repoPath(join(K8S_DIR, "kustomization.yaml")))).toBe(true);
      const generated = yamls.filter((y) => isRecorded(y, "local")) as Recorded[];
      expect(generated).toHaveLength(1);
      const [program = "", ...args] = String(generated[0]?.args.command).split(/\s+/);
      expect(existsSync(repoPath(program)), program).toBe(true);
      for (const arg of args) expect(existsSync(repoPath(arg)), arg).toBe(true);

      // Run it as Tilt would, on a data folder of its own, and check the edge accepts dev tokens with it.
      const dataDir = join(scratch, "data");
      const result = spawnSync(repoPath(program), args, {
        cwd: ROOT,
        encoding: "utf8",
        env: { ...process.env, PARLEY_DATA_DIR: dataDir },
      });
      expect(result.status, result.stderr).toBe(0);
      const configMap = parseYaml(result.stdout) as K8sObject & { metadata: { namespace: string } };
      expect(configMap).toEqual(await edgeAuthConfigMap(dataDir));
      expect(configMap.kind).toBe("ConfigMap");
      expect(configMap.metadata).toEqual({ name: EDGE_AUTH_CONFIG_MAP, namespace: kustomization.namespace });
      const auth = await createEdgeAuth({
        jwtPublicKeys: configMap.data?.[EDGE_AUTH_JWKS_KEY],
        jwtIssuer: DEV_ISSUER,
        jwtAudience: defaultOf(edgeConfigSpec.jwtAudience),
        jwtClockToleranceMs: defaultOf(edgeConfigSpec.jwtClockToleranceMs),
        devIssuerKeyFile: undefined,
      });
      const { token } = await mintDevToken({
        dataDir,
        userId: "alice",
        deviceId: "phone",
        ttlMs: 60_000,
        env: {},
      });
      const caller = await auth.verifier.authenticate(`Bearer ${token}`);
      expect(caller.device).toMatchObject({ userId: "alice", deviceId: "phone" });
    });

    it("uses every image it builds in a Deployment, and builds every Parley image a Deployment uses", () => {
      const built = new Set(callsOf("docker_build").map((b) => String(b.args.ref)));
      const used = manifests.objects
        .filter((o) => WORKLOAD_KINDS.has(o.kind))
        .flatMap((o) => podSpec(o).containers.map((c) => c.image));
      for (const image of built) {
        expect(
          used.filter((u) => u === image),
          image,
        ).toHaveLength(1);
      }
      for (const image of used.filter((u) => u.startsWith("parley-"))) {
        expect(built.has(image), image).toBe(true);
      }
    });

    it("configures resources that exist, depending on resources that exist, without cycles", () => {
      const resources = callsOf("k8s_resource");
      const workloads = manifests.objects
        .filter((o) => WORKLOAD_KINDS.has(o.kind))
        .map((o) => o.metadata.name);
      const names = new Set<string>();
      for (const resource of resources) {
        const workloadName = resource.args.workload;
        if (typeof workloadName === "string" && workloadName !== "") {
          expect(workloads, `k8s_resource(${workloadName})`).toContain(workloadName);
          names.add(workloadName);
        } else {
          expect(typeof resource.args.new_name, "a new resource needs new_name").toBe("string");
          expect(strings(resource.args.objects).length).toBeGreaterThan(0);
          names.add(String(resource.args.new_name));
        }
      }
      expect([...names].sort()).toEqual(expect.arrayContaining([...workloads].sort()));
      const deps = new Map(
        resources.map((r) => [String(r.args.workload || r.args.new_name), strings(r.args.resource_deps)]),
      );
      for (const [name, list] of deps) {
        for (const dep of list) expect(names.has(dep), `${name} -> ${dep}`).toBe(true);
      }
      const visiting = new Set<string>();
      const done = new Set<string>();
      const visit = (name: string, path: string[]) => {
        if (done.has(name)) return;
        if (visiting.has(name)) throw new Error(`resource_deps cycle: ${[...path, name].join(" -> ")}`);
        visiting.add(name);
        for (const dep of deps.get(name) ?? []) visit(dep, [...path, name]);
        visiting.delete(name);
        done.add(name);
      };
      for (const name of deps.keys()) visit(name, []);
    });

    it("names only objects the manifests (or the edge auth ConfigMap) define", () => {
      const defined = [
        ...manifests.objects.map((o) => `${o.metadata.name}:${o.kind.toLowerCase()}`),
        `${EDGE_AUTH_CONFIG_MAP}:configmap`,
      ];
      for (const resource of callsOf("k8s_resource")) {
        for (const selector of strings(resource.args.objects)) expect(defined, selector).toContain(selector);
      }
    });

    it("starts the processes after the engines", () => {
      const deps = new Map(
        callsOf("k8s_resource").map((r) => [
          String(r.args.workload || r.args.new_name),
          strings(r.args.resource_deps),
        ]),
      );
      const engines = ["redis", "etcd", "cassandra", "pulsar"];
      for (const engine of engines) {
        expect(
          PROCESS_NAMES.some((name) => deps.get(name)?.includes(engine)),
          `a process waits for ${engine}`,
        ).toBe(true);
      }
      for (const name of PROCESS_NAMES) expect(deps.get(name), name).toContain("parley-config");
    });

    it("forwards the edge's public port and the Jaeger UI, to container ports that exist", () => {
      const forwards = new Map<string, Recorded[]>();
      for (const resource of callsOf("k8s_resource")) {
        const list = Array.isArray(resource.args.port_forwards) ? resource.args.port_forwards : [];
        if (typeof resource.args.workload !== "string") {
          expect(list, "port forwards need a workload").toEqual([]);
          continue;
        }
        expect(list.every((f) => isRecorded(f, "port_forward"))).toBe(true);
        forwards.set(
          resource.args.workload,
          list.filter((f) => isRecorded(f, "port_forward")),
        );
      }
      for (const [name, list] of forwards) {
        for (const forward of list) {
          const port = Number(forward.args.container_port ?? forward.args.local_port);
          const container = onlyContainer(workload(manifests, name) as K8sObject);
          expect(containerPort(container, port), `${name}: forward to ${port}`).toBe(port);
        }
      }
      const edgePorts = (forwards.get("edge") ?? []).map((f) => Number(f.args.container_port));
      expect(edgePorts).toContain(PROCESSES.edge?.port);
      const jaeger = onlyContainer(workload(manifests, "jaeger") as K8sObject);
      const jaegerPorts = (forwards.get("jaeger") ?? []).map((f) => Number(f.args.container_port));
      expect(jaegerPorts).toContain(containerPort(jaeger, "ui"));
      // A process's forwards reach its own ports as the code defaults them.
      for (const [name, spec] of Object.entries(PROCESSES)) {
        const own = [spec.port, METRICS_DEFAULT_PORTS[name], ...(name === "edge" ? [EDGE_PUSH_PORT] : [])];
        for (const forward of forwards.get(name) ?? []) {
          expect(own, name).toContain(Number(forward.args.container_port));
        }
      }
    });
  });
});
