export type { PulsarAdmin, PulsarAdminOptions, RetentionPolicy } from "./admin.ts";
export { createPulsarAdmin, PulsarAdminError } from "./admin.ts";
export type { MessagePosition } from "./message-id.ts";
export { comparePositions, decodeMessageId, formatMessageId } from "./message-id.ts";
export type { PulsarNamespaceOptions, PulsarNamespaceResult } from "./namespace.ts";
export { DEFAULT_RETENTION, ensurePulsarNamespace, PulsarNamespaceError } from "./namespace.ts";
export type { PulsarBrokerOptions } from "./pulsar-broker.ts";
export { createPulsarBroker } from "./pulsar-broker.ts";
export { PulsarSocketError } from "./socket.ts";
