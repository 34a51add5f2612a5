// Builds, lints, generates and checks the protobuf contracts without any network access.
//
// buf cannot resolve `buf/validate/validate.proto` offline: no registry we reach ships it as a
// .proto file, but its compiled descriptor is embedded in `@bufbuild/protovalidate`. So we write
// that descriptor (and its own imports) to a FileDescriptorSet, compile our protos against it with
// protoc `--descriptor_set_in`, and hand the resulting image to buf for lint, breaking and generate.
// Everything written here lands in .build/proto and is never committed.
import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import type { DescFile } from "@bufbuild/protobuf";
import { create, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { file_buf_validate_validate } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";

const root = resolve(import.meta.dirname, "../..");
const protoRoot = join(root, "proto");
const buildDir = join(root, ".build/proto");
const bin = (name: string) => join(root, "node_modules/.bin", name);
const googleProtos = join(root, "node_modules/google-proto-files");

/** A tool failed; its own output already said why. */
class ToolFailed extends Error {
  readonly status: number;
  constructor(tool: string, status: number) {
    super(`${tool} failed (exit ${status})`);
    this.status = status;
  }
}

function run(cmd: string, args: string[], cwd = root): void {
  try {
    execFileSync(cmd, args, { cwd, stdio: "inherit" });
  } catch (err) {
    const status = (err as { status?: number | null }).status;
    throw new ToolFailed(`${cmd.split("/").pop()} ${args[0] ?? ""}`.trim(), status || 1);
  }
}

function listProtoFiles(dir: string): string[] {
  const found: string[] = [];
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    if (statSync(path).isDirectory()) found.push(...listProtoFiles(path));
    else if (entry.endsWith(".proto")) found.push(path);
  }
  return found.sort();
}

/** Writes validate.proto's descriptor and its imports (dependencies first) as a FileDescriptorSet. */
function writeValidateDescriptorSet(path: string): void {
  const ordered: DescFile[] = [];
  const seen = new Set<string>();
  const visit = (file: DescFile) => {
    if (seen.has(file.name)) return;
    seen.add(file.name);
    for (const dep of file.dependencies) visit(dep);
    ordered.push(file);
  };
  visit(file_buf_validate_validate);
  const set = create(FileDescriptorSetSchema, { file: ordered.map((f) => f.proto) });
  writeFileSync(path, toBinary(FileDescriptorSetSchema, set));
}

/** Compiles proto/ (from `sourceRoot`) into a buf-readable image with source info for lint. */
export function buildImage(sourceRoot = protoRoot, outDir = buildDir): string {
  mkdirSync(outDir, { recursive: true });
  const depsSet = join(outDir, "validate-deps.binpb");
  const image = join(outDir, "parley.binpb");
  writeValidateDescriptorSet(depsSet);
  const files = listProtoFiles(sourceRoot).map((f) => relative(sourceRoot, f));
  if (files.length === 0) throw new Error(`no .proto files under ${sourceRoot}`);
  run("protoc", [
    `--descriptor_set_in=${depsSet}`,
    `-I${sourceRoot}`,
    `-I${googleProtos}`,
    "--include_imports",
    "--include_source_info",
    `-o${image}`,
    ...googleRpcFiles,
    ...files,
  ]);
  return image;
}

const ourFiles = ["--path", "parley"];
// google.rpc error details travel in every error (ErrorInfo, BadRequest): generate them beside ours.
const googleRpcFiles = ["google/rpc/status.proto", "google/rpc/error_details.proto"];

/** Generates into a scratch folder first, so a failed compile never leaves `outDir` half-written. */
function generate(outDir: string): void {
  const image = buildImage();
  const staging = mkdtempSync(join(tmpdir(), "parley-gen-out-"));
  try {
    const paths = [...ourFiles, ...googleRpcFiles.flatMap((f) => ["--path", f])];
    run(bin("buf"), ["generate", image, ...paths, "--template", "buf.gen.yaml", "-o", staging]);
    rmSync(outDir, { recursive: true, force: true });
    cpSync(staging, outDir, { recursive: true });
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}

function lint(): void {
  run(bin("buf"), ["format", "proto", "--diff", "--exit-code"]);
  run(bin("buf"), ["lint", buildImage(), ...ourFiles, "--config", "buf.yaml"]);
}

/** buf breaking against the contracts on a git ref (default main); skipped until that ref has any. */
function breaking(ref: string): void {
  const hasProtos = execFileSync("git", ["ls-tree", "-r", "--name-only", ref, "--", "proto"], {
    cwd: root,
    encoding: "utf8",
  }).trim();
  if (!hasProtos) {
    console.log(`buf breaking: ${ref} has no contracts yet, nothing to compare against`);
    return;
  }
  const scratch = mkdtempSync(join(tmpdir(), "parley-breaking-"));
  try {
    execFileSync("sh", ["-c", `git archive ${ref} proto | tar -x -C ${scratch}`], { cwd: root });
    const against = buildImage(join(scratch, "proto"), join(scratch, "build"));
    const current = buildImage();
    console.log(`buf breaking: comparing the contracts with ${ref}`);
    run(bin("buf"), ["breaking", current, "--against", against, ...ourFiles, "--config", "buf.yaml"]);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

function check(): void {
  const scratch = mkdtempSync(join(tmpdir(), "parley-gen-"));
  try {
    generate(join(scratch, "gen"));
    try {
      run("diff", ["-r", "-u", join(root, "gen"), join(scratch, "gen")]);
    } catch (err) {
      console.error("gen/ does not match the protos: run `npm run gen` and commit the result");
      throw err;
    }
    console.log("gen/ matches the protos");
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

const [command = "gen", arg] = process.argv.slice(2);
try {
  switch (command) {
    case "image":
      console.log(buildImage());
      break;
    case "gen":
      generate(join(root, "gen"));
      break;
    case "check":
      check();
      break;
    case "lint":
      lint();
      break;
    case "format":
      run(bin("buf"), ["format", "proto", "-w"]);
      break;
    case "breaking":
      breaking(arg ?? "main");
      break;
    default:
      console.error(`unknown command ${command}: use image | gen | check | lint | format | breaking [ref]`);
      process.exit(2);
  }
} catch (err) {
  if (!(err instanceof ToolFailed)) throw err;
  console.error(err.message);
  process.exit(err.status);
}
