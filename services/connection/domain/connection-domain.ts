import { Contacts } from "./contacts.ts";
import { Conversations } from "./conversations.ts";
import type { ConnectionDomainDeps } from "./deps.ts";

/** The connection service's domain: contacts (pairs of users) and conversations (groups). */
export interface ConnectionDomain {
  readonly contacts: Contacts;
  readonly conversations: Conversations;
}

export function createConnectionDomain(deps: ConnectionDomainDeps): ConnectionDomain {
  return { contacts: new Contacts(deps), conversations: new Conversations(deps) };
}
