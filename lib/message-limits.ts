/**
 * The largest client message the edge reads: a Session frame (the encoded SessionRequest) or a
 * unary request, 4 MiB encoded (session_service.proto). The frame that carries a send is the
 * biggest a valid client writes: pairwise ciphertexts to up to 5,000 devices.
 */
export const CLIENT_MESSAGE_MAX_BYTES = 4 * 1024 * 1024;

/**
 * The largest message an internal gRPC server or client receives. gRPC's usual default is 4 MiB,
 * the edge's own limit, but a hop adds to what the client sent (the sender's address, the
 * recipient devices, a traceparent), so an accepted client message must not be refused one hop
 * later with RESOURCE_EXHAUSTED: the internal limit leaves 1 MiB on top.
 */
export const INTERNAL_MESSAGE_MAX_BYTES = CLIENT_MESSAGE_MAX_BYTES + 1024 * 1024;

// The broker takes payloads up to 5 MiB too (MAX_PAYLOAD_BYTES, broker/broker.ts: Pulsar's own
// limit): a send's event is the client's message plus up to 5,000 recipient devices (~350 KB).
