// Listening to the backend's typed events (see `events` in bindings.ts) for as long
// as a component lives, so it applies each change where it is instead of fetching
// everything again.
import { onDestroy } from "svelte";
import type { MessageItem } from "./bindings";

type Listenable<T> = { listen: (handler: (event: { payload: T }) => void) => Promise<() => void> };

/** Calls `handle` with each event's payload until the component is destroyed; the
 *  promise resolves once the listener is in place (load after it, and nothing
 *  reported meanwhile is missed). Call it while the component initialises. */
export function whileMounted<T>(source: Listenable<T>, handle: (payload: T) => void): Promise<void> {
  const stop = source.listen((event) => handle(event.payload));
  onDestroy(() => void stop.then((unlisten) => unlisten()));
  return stop.then(() => undefined);
}

/** `items` with `item` in place of the one with the same key, or added. */
export function upsert<T>(items: T[], item: T, key: (item: T) => string): T[] {
  const at = items.findIndex((existing) => key(existing) === key(item));
  if (at < 0) return [...items, item];
  return items.map((existing, i) => (i === at ? item : existing));
}

/** What a read returned, with what events brought while it was under way laid over
 *  it. An event is sent only after its change is stored, so it is as new as the read
 *  or newer: without this, a message that arrives while a conversation opens would be
 *  lost from view when the older read lands. */
export function overlay<T>(read: T[], arrived: T[], key: (item: T) => string): T[] {
  return arrived.reduce((all, item) => upsert(all, item, key), read);
}

/** How far a message has come; a command's answer never moves it back. */
const progress: Record<MessageItem["state"], number> = {
  Sending: 0, Failed: 0, Received: 0, Sent: 1, Delivered: 2, Read: 3,
};

/** `messages` with the newest view of `message` in place, unless the one shown has come
 *  further: a command's answer can land after events about the same message (sent and
 *  delivered over a direct session before `send_text` returned), and events drained on
 *  two threads can land out of order. Failed → sending (a retry) is not a step back. */
export function applied(messages: MessageItem[], message: MessageItem): MessageItem[] {
  const known = messages.find((m) => m.id === message.id);
  if (known && progress[known.state] > progress[message.state]) return messages;
  return upsert(messages, message, (m) => m.id);
}
