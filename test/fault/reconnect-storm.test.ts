// Fault 7 (issue 6): a reconnect storm. 2,000 devices (401 users with five devices each, all in
// one group) lose their connections at once while a message is being displayed (their last
// acknowledgements lost), stay away while another arrives, then all come back together, each
// after its own full-jitter backoff (the SDK's defaults: 500 ms base, 30 s cap), resume from
// their cursors and catch up. The test reports how long it took until every device was current;
// it asserts the invariants, not a time.
// Control: 200 of the devices with the SDK's dedup off go through the same storm: what the
// replays repeat is shown twice (I2).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { engineTargets } from "../../lib/engines.ts";
import { describeViolations, violatedInvariants } from "./support/checker.ts";
import type { FaultCluster } from "./support/fault-cluster.ts";
import { startFaultCluster } from "./support/fault-cluster.ts";
import type { Recorder } from "./support/history.ts";
import { createRecorder, deviceKey } from "./support/history.ts";
import { createRandom, faultSeeds } from "./support/random.ts";
import { FAULT_HOOK_TIMEOUT_MS, FAULT_RUN_TIMEOUT_MS } from "./support/scenario.ts";
import type { DeviceNetwork, FaultDevice, Population } from "./support/workload.ts";
import {
  attachClients,
  closeAll,
  connectAll,
  createDeviceNetwork,
  createPopulation,
  finishRun,
  reconnectSummary,
  recordStored,
  resetReconnects,
  residue,
  sendInit,
  sendUntilAcknowledged,
  sleep,
  waitForQuiescence,
} from "./support/workload.ts";

const targets = engineTargets();
/** Devices in the storm (PARLEY_FAULT_STORM_DEVICES, default 2,000). */
const DEVICES = Number(process.env.PARLEY_FAULT_STORM_DEVICES ?? 2_000);
/**
 * Users of five devices each (the most a user may have: the fewest users, so the least set-up),
 * the owner's fifth device being the sender: at least DEVICES devices in the storm.
 */
const USERS = Math.ceil((DEVICES + 1) / 5);
/** Devices in the control's smaller storm. */
const CONTROL_DEVICES = 200;
/** A storm run: the catch-up may take up to 15 minutes before the run gives up. */
const STORM_RUN_TIMEOUT_MS = 20 * 60_000;
/** The SDK's own reconnect backoff: the storm is measured as apps would behave. */
const SDK_BACKOFF = { baseMs: 500, maxMs: 30_000 };

describe.runIf(targets)(`fault 7: reconnect storm of ${5 * USERS - 1} devices`, () => {
  let mesh: FaultCluster;
  let population: Population;
  let network: DeviceNetwork;
  let recorder: Recorder = createRecorder();
  /** The group owner's fifth device: it sends, and its network is never cut. */
  let sender: FaultDevice;
  let stormDevices: FaultDevice[] = [];

  beforeAll(async () => {
    const began = Date.now();
    mesh = await startFaultCluster({ connectionsPerUrl: 8 });
    population = await createPopulation(mesh, {
      prefix: "storm",
      users: USERS,
      devicesOf: () => 5,
      groups: [{ owner: 0, members: Array.from({ length: USERS - 1 }, (_, i) => i + 1) }],
      concurrency: 32,
    });
    network = await createDeviceNetwork(mesh);
    const [owner] = population.users;
    const senderDevice = owner?.device("d4");
    if (senderDevice === undefined) throw new Error("no sender device");
    const all = attachClients(mesh, population.devices, {
      recorder: () => recorder,
      random: createRandom(0),
      backoff: SDK_BACKOFF,
      network: (d) => (d === senderDevice ? undefined : network),
    });
    sender = all.find((d) => d.device === senderDevice) as FaultDevice;
    stormDevices = all.filter((d) => d !== sender);
    await connectAll(all, 64);
    console.info(
      `[fault] fault 7 set-up: ${stormDevices.length} devices (+1 sender) connected in ${Date.now() - began} ms`,
    );
  }, 3 * FAULT_HOOK_TIMEOUT_MS);

  afterAll(async () => {
    await closeAll([sender, ...stormDevices].filter((d) => d !== undefined));
    await network?.close();
    await mesh?.stop();
  }, FAULT_HOOK_TIMEOUT_MS);

  /** One storm over `devices`: dropped while a message is being shown, away while another arrives. */
  async function storm(label: string, seed: number, devices: readonly FaultDevice[], control: boolean) {
    const began = Date.now();
    const random = createRandom(seed);
    recorder = createRecorder();
    resetReconnects(devices);
    const group = population.conversations[0];
    if (group === undefined) throw new Error("no group");
    recorder.conversation({
      conversationId: group.conversationId,
      kind: "group",
      devices: [sender, ...devices].map((d) => d.key),
    });
    const send = async (text: string) => {
      const outcome = await sendUntilAcknowledged(recorder, sender, group, sendInit(sender, group, text));
      if (!outcome.acked) throw new Error(`${text} was never acknowledged`);
      return outcome.messageId as string;
    };
    const shownBy = (messageId: string) =>
      new Set(
        recorder
          .history()
          .displays.filter((d) => d.messageId === messageId)
          .map((d) => d.device),
      ).size;

    // The drop comes while the first message is on its way: some devices have shown it, some
    // have acknowledged it, some neither. The control mutes the network before it is sent, so
    // every device that shows it loses its acknowledgement and the replays it checks for happen
    // whatever the fan-out's speed (a fan-out done within one poll below would leave none).
    if (control) network.mute();
    const first = await send(`${label} before the storm`);
    const dropAt = Math.ceil(devices.length * (0.2 + 0.4 * random()));
    const waitDeadline = Date.now() + 120_000;
    while (shownBy(first) < dropAt && Date.now() < waitDeadline) await sleep(20);
    // For a second the network only carries what comes down: devices still show the message,
    // their acknowledgements vanish. Then every connection drops at once, and new ones are refused.
    network.mute();
    await sleep(1_000);
    const acceptedBefore = network.relays.reduce((sum, relay) => sum + relay.accepted, 0);
    network.refuse();
    network.cutAll();
    recorder.note(`${devices.length} devices dropped at once; ${shownBy(first)} had shown the first message`);
    await send(`${label} while away`);
    await sleep(3_000 + random.int(5_000));
    network.heal();
    const healedAt = Date.now();
    recorder.note("network back: every device reconnects after its own backoff");
    // On a busy 2-core box history acknowledges a few hundred devices a minute: catching up can
    // take minutes. Progress is what is waited for, not a deadline.
    const quiet = await waitForQuiescence(recorder, {
      timeoutMs: 15 * 60_000,
      stallMs: control ? 20_000 : 120_000,
    });
    const catchUpMs = quiet.missing === 0 ? quiet.ms : Number.NaN;
    const reconnects = network.relays.reduce((sum, relay) => sum + relay.accepted, 0) - acceptedBefore;
    await recordStored(recorder, { ...population, conversations: [group] });
    const result = finishRun(
      recorder,
      `fault 7 ${label}`,
      {
        devices: devices.length,
        "catch-up after the network returned (ms)": catchUpMs,
        "connections accepted by the relays": reconnects,
        "residue hidden by dedup": residue(devices),
        reconnects: reconnectSummary(devices),
        "run ms": Date.now() - began,
      },
      { control },
    );
    console.info(
      `[fault] fault 7 ${label}: ${devices.length} devices current ${catchUpMs} ms after the network returned (${Date.now() - healedAt} ms incl. settling)`,
    );
    return result;
  }

  for (const seed of faultSeeds()) {
    it(
      `seed ${seed}: every device reconnects, catches up, shows everything once and in order`,
      async () => {
        const result = await storm(`seed${seed}`, seed, stormDevices, false);
        expect(describeViolations(result.violations)).toBe("no violations");
      },
      STORM_RUN_TIMEOUT_MS,
    );
  }

  it(
    `control: ${CONTROL_DEVICES} devices with the SDK's dedup off show the replays twice`,
    async () => {
      // The control needs clients made with dedup off: the others close, these take their place.
      const chosen = stormDevices.slice(0, CONTROL_DEVICES);
      await closeAll(stormDevices);
      const keys = new Set(chosen.map((d) => d.key));
      const controlDevices = attachClients(
        mesh,
        population.devices.filter((d) => keys.has(deviceKey(d.userId, d.deviceId))),
        {
          recorder: () => recorder,
          random: createRandom(1),
          backoff: SDK_BACKOFF,
          dedup: false,
          network: () => network,
        },
      );
      stormDevices = controlDevices;
      await connectAll(controlDevices, 64);
      const result = await storm("control", 1, controlDevices, true);
      expect(result.violations).not.toEqual([]);
      expect(violatedInvariants(result.violations)).toContain("I2");
    },
    FAULT_RUN_TIMEOUT_MS,
  );
});
