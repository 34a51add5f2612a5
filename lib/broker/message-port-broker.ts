/**
 * The broker across a MessagePort: a service on a worker thread (the embedded profile's history,
 * tools/mesh/service-thread.ts) uses the main thread's broker as if it were its own. The main
 * thread serves its broker on one end (`serveBrokerOverPort`); the worker holds a `Broker` on the
 * other (`createMessagePortBroker`). Handlers run in the worker: the main thread's subscription
 * waits for the worker's answer, so an acknowledgement, a negative acknowledgement (redelivery,
 * dead-lettering) and per-key order are the served broker's, unchanged.
 *
 * Messages cross by structured clone (the payload is copied once per hop). When the port closes
 * (the worker ended or died), deliveries it had not answered count as failed, so they come back to
 * the next consumer of their subscription, and every subscription it opened is closed.
 */
import type { MessagePort } from "node:worker_threads";
import type {
  Broker,
  BrokerMessage,
  FollowOptions,
  FollowSubscription,
  OutgoingBrokerMessage,
  SubscribeOptions,
  Subscription,
} from "./broker.ts";
import { checkOutgoingMessage } from "./broker.ts";

type WorkerRequest =
  | {
      readonly type: "publish";
      readonly call: number;
      readonly topic: string;
      readonly message: OutgoingBrokerMessage;
    }
  | { readonly type: "publishEphemeral"; readonly topic: string; readonly message: OutgoingBrokerMessage }
  | {
      readonly type: "subscribe";
      readonly call: number;
      readonly subscription: number;
      readonly topic: string;
      readonly options: SubscribeOptions;
    }
  | {
      readonly type: "follow";
      readonly call: number;
      readonly subscription: number;
      readonly topic: string;
      readonly options: FollowOptions;
    }
  | { readonly type: "close"; readonly call: number; readonly subscription: number }
  | { readonly type: "handled"; readonly delivery: number; readonly error: string | undefined };

type BrokerReport =
  | {
      readonly type: "answer";
      readonly call: number;
      readonly id: string | undefined;
      readonly error: string | undefined;
    }
  | {
      readonly type: "deliver";
      readonly subscription: number;
      readonly delivery: number;
      readonly message: BrokerMessage;
    }
  | { readonly type: "caughtUp"; readonly subscription: number };

/** A handler of the worker failed (its error crosses as text): the served broker redelivers. */
export class RemoteHandlerError extends Error {
  override readonly name = "RemoteHandlerError";
}

export interface BrokerPortServer {
  /**
   * Closes every subscription opened through the port (after counting unanswered deliveries as
   * failed) and stops answering it. The served broker stays open: it is the caller's.
   */
  close(): Promise<void>;
}

/** Serves `broker` to the `createMessagePortBroker` at the other end of `port`. */
export function serveBrokerOverPort(broker: Broker, port: MessagePort): BrokerPortServer {
  const subscriptions = new Map<number, Subscription>();
  const deliveries = new Map<number, { resolve(): void; reject(error: Error): void }>();
  let nextDelivery = 0;
  let closing: Promise<void> | undefined;
  const post = (report: BrokerReport) => {
    if (closing === undefined) port.postMessage(report);
  };

  const forward = (subscription: number, message: BrokerMessage) => {
    if (closing !== undefined) return Promise.reject(new Error("the broker's thread has gone"));
    const delivery = ++nextDelivery;
    return new Promise<void>((resolve, reject) => {
      deliveries.set(delivery, { resolve, reject });
      // A plain copy: the served broker's message may carry more than the port should clone.
      post({
        type: "deliver",
        subscription,
        delivery,
        message: {
          topic: message.topic,
          id: message.id,
          key: message.key,
          payload: message.payload,
          properties: message.properties,
          publishedAt: message.publishedAt,
          redeliveryCount: message.redeliveryCount,
        },
      });
    });
  };

  const opened = (subscription: number, opened: Subscription) => {
    // The port closed while the subscription was being opened: nobody is there to use it.
    if (closing !== undefined) return opened.close();
    subscriptions.set(subscription, opened);
    return undefined;
  };

  const handle = async (request: WorkerRequest): Promise<string | undefined> => {
    switch (request.type) {
      case "publish":
        return (await broker.publish(request.topic, request.message)).id;
      case "publishEphemeral":
        broker.publishEphemeral(request.topic, request.message);
        return undefined;
      case "subscribe": {
        const { subscription } = request;
        await opened(
          subscription,
          await broker.subscribe(request.topic, request.options, (message) => forward(subscription, message)),
        );
        return undefined;
      }
      case "follow": {
        const { subscription } = request;
        const follower = await broker.follow(request.topic, request.options, (message) =>
          forward(subscription, message),
        );
        void follower.caughtUp.then(() => post({ type: "caughtUp", subscription }));
        await opened(subscription, follower);
        return undefined;
      }
      case "close": {
        const subscription = subscriptions.get(request.subscription);
        subscriptions.delete(request.subscription);
        await subscription?.close();
        return undefined;
      }
      case "handled": {
        const delivery = deliveries.get(request.delivery);
        deliveries.delete(request.delivery);
        if (request.error === undefined) delivery?.resolve();
        else delivery?.reject(new RemoteHandlerError(request.error));
        return undefined;
      }
    }
  };

  port.on("message", (request: WorkerRequest) => {
    void handle(request).then(
      (id) => {
        if ("call" in request) post({ type: "answer", call: request.call, id, error: undefined });
      },
      (err: unknown) => {
        if ("call" in request)
          post({ type: "answer", call: request.call, id: undefined, error: describe(err) });
      },
    );
  });

  const close = () => {
    closing ??= (async () => {
      // First the deliveries nobody will answer, or closing their subscriptions would wait forever.
      for (const delivery of deliveries.values()) delivery.reject(new Error("the broker's thread has gone"));
      deliveries.clear();
      const open = [...subscriptions.values()];
      subscriptions.clear();
      await Promise.all(open.map((subscription) => subscription.close()));
      port.close();
    })();
    return closing;
  };
  port.once("close", () => void close());
  // The worker at the other end keeps the process alive while it runs; this end need not.
  port.unref();
  return { close };
}

/**
 * The broker of a worker thread: every call goes to the `serveBrokerOverPort` at the other end of
 * `port`, and the port is this broker's: close() closes it. No `backlog()`: the main thread reports
 * the served broker's backlog itself, and a second report of it would count it twice.
 */
export function createMessagePortBroker(port: MessagePort): Broker {
  const calls = new Map<number, { resolve(id: string | undefined): void; reject(error: Error): void }>();
  const handlers = new Map<number, (message: BrokerMessage) => void | Promise<void>>();
  const caughtUp = new Map<number, () => void>();
  const open = new Map<number, Subscription>();
  let nextId = 0;
  // Closing: no new subscriptions, but running handlers may still publish (history does).
  let closing = false;
  let closed = false;
  let portClosed = false;

  const call = (request: (call: number) => WorkerRequest) =>
    new Promise<string | undefined>((resolve, reject) => {
      if (portClosed) {
        reject(new Error("the broker's port is closed"));
        return;
      }
      const id = ++nextId;
      calls.set(id, { resolve, reject });
      port.postMessage(request(id));
    });

  const deliver = async (subscription: number, delivery: number, message: BrokerMessage) => {
    const handler = handlers.get(subscription);
    let error: string | undefined;
    try {
      if (handler === undefined) throw new Error("no handler: the subscription was closed");
      await handler(message);
    } catch (err) {
      error = describe(err);
    }
    if (!portClosed) port.postMessage({ type: "handled", delivery, error } satisfies WorkerRequest);
  };

  port.on("message", (report: BrokerReport) => {
    switch (report.type) {
      case "answer": {
        const pending = calls.get(report.call);
        calls.delete(report.call);
        if (report.error === undefined) pending?.resolve(report.id);
        else pending?.reject(new Error(report.error));
        break;
      }
      case "deliver":
        void deliver(report.subscription, report.delivery, report.message);
        break;
      case "caughtUp":
        caughtUp.get(report.subscription)?.();
        break;
    }
  });
  port.once("close", () => {
    portClosed = true;
    for (const pending of calls.values())
      pending.reject(new Error("the broker's port closed before it answered"));
    calls.clear();
    for (const done of caughtUp.values()) done();
  });

  const openSubscription = async (
    request: (call: number, subscription: number) => WorkerRequest,
    handler: (message: BrokerMessage) => void | Promise<void>,
    onCaughtUp?: () => void,
  ) => {
    if (closing) throw new Error("the broker is closed");
    const subscription = ++nextId;
    handlers.set(subscription, handler);
    if (onCaughtUp !== undefined) caughtUp.set(subscription, onCaughtUp);
    const subscribed: Subscription = {
      close: async () => {
        if (!open.delete(subscription)) return;
        // Deliveries in flight are answered before the served subscription's close completes.
        await call((id) => ({ type: "close", call: id, subscription })).catch(() => {});
        handlers.delete(subscription);
        caughtUp.get(subscription)?.();
        caughtUp.delete(subscription);
      },
    };
    open.set(subscription, subscribed);
    try {
      await call((id) => request(id, subscription));
    } catch (err) {
      open.delete(subscription);
      handlers.delete(subscription);
      caughtUp.delete(subscription);
      throw err;
    }
    return subscribed;
  };

  return {
    async publish(topic, message) {
      checkOutgoingMessage(message);
      if (closed) throw new Error("the broker is closed");
      return { id: (await call((id) => ({ type: "publish", call: id, topic, message }))) ?? "" };
    },
    publishEphemeral(topic, message) {
      checkOutgoingMessage(message);
      if (closed) throw new Error("the broker is closed");
      if (!portClosed) port.postMessage({ type: "publishEphemeral", topic, message } satisfies WorkerRequest);
    },
    async subscribe(topic, options, handler) {
      return openSubscription(
        (id, subscription) => ({ type: "subscribe", call: id, subscription, topic, options }),
        handler,
      );
    },
    async follow(topic, options, handler): Promise<FollowSubscription> {
      let markCaughtUp = () => {};
      const caughtUpPromise = new Promise<void>((resolve) => {
        markCaughtUp = resolve;
      });
      const subscribed = await openSubscription(
        (call, subscription) => ({ type: "follow", call, subscription, topic, options }),
        handler,
        markCaughtUp,
      );
      return { caughtUp: caughtUpPromise, close: subscribed.close };
    },
    async close() {
      if (closing) return;
      closing = true;
      await Promise.all([...open.values()].map((subscription) => subscription.close()));
      closed = true;
      port.close();
    },
  };
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
