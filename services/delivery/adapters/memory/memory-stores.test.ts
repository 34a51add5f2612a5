import { describeCheckpointStoreContract } from "../../domain/checkpoint-store.contract.ts";
import { describePresenceStoreContract } from "../../domain/presence-store.contract.ts";
import { createMemoryCheckpointStore } from "./checkpoint-store.ts";
import { createMemoryPresenceStore } from "./presence-store.ts";

describeCheckpointStoreContract("memory", (options) => createMemoryCheckpointStore(options));
describePresenceStoreContract("memory", (options) => createMemoryPresenceStore(options));
