// livegate.js: a live list of one query, in the browser, with no build step.
//
//   import { liveQuery } from "/livegate.js";
//   const live = liveQuery("messages", { where: { room: "lobby" }, onChange: (rows) => draw(rows) });
//   // live.rows: Map objectId → object, always the query's current rows; live.close() to stop.
//
// It opens `GET /events/{className}?snapshot=true`: the current rows first, then every change
// after them. The browser's EventSource reconnects by itself and resumes with Last-Event-ID
// (the gateway replays what was missed); when the gateway can no longer replay (history pruned
// or lost) it sends a fresh snapshot that replaces the list, so the list is never stale.

/**
 * @typedef {Object<string, any>} ParseObject  An object as the gateway sends it (`objectId`, fields).
 * @typedef {"connecting" | "open" | "reconnecting" | "closed"} LiveState
 * @typedef {Object} LiveQueryOptions
 * @property {Object<string, any>} [where]  Parse's `where` (default: every row).
 * @property {string[]} [keys]  Fields to send (default: all).
 * @property {string[]} [watch]  Only creates and updates that set or change one of these.
 * @property {string} [base]  The gateway's origin, e.g. "https://live.example.com" (default: this page's).
 * @property {boolean} [withCredentials]  Send cookies to another origin (the token cookie).
 * @property {(rows: Map<string, ParseObject>, change: {event: string, object?: ParseObject}) => void} [onChange]
 * @property {(event: string, id: string, data: any) => void} [onEvent]  Every event, as received.
 * @property {(state: LiveState) => void} [onState]
 * @typedef {Object} LiveQuery
 * @property {Map<string, ParseObject>} rows  objectId → object: the query's current rows.
 * @property {EventSource} source
 * @property {() => void} close
 */

const DATA_EVENTS = ["create", "enter", "update", "leave", "delete"];

/**
 * Keeps `rows` equal to the rows of `className` that match `where`, from a snapshot and then
 * the changes after it.
 * @param {string} className
 * @param {LiveQueryOptions} [options]
 * @returns {LiveQuery}
 */
export function liveQuery(className, options = {}) {
  const { where = {}, keys, watch, base = "", withCredentials = false } = options;
  const onChange = options.onChange ?? (() => {});
  const onEvent = options.onEvent ?? (() => {});
  const onState = options.onState ?? (() => {});
  const rows = new Map();
  let url = `${base}/events/${encodeURIComponent(className)}?snapshot=true&where=${encodeURIComponent(JSON.stringify(where))}`;
  if (keys) url += "&keys=" + encodeURIComponent(keys.join(","));
  if (watch) url += "&watch=" + encodeURIComponent(watch.join(","));

  let source;
  // Chunks of a snapshot replace the list: the first one of each snapshot clears it.
  let snapshotStarted = false;

  const open = () => {
    source = new EventSource(url, { withCredentials });
    live.source = source;
    onState("connecting");
    source.addEventListener("open", () => onState("open"));
    source.addEventListener("snapshot", (e) => {
      const data = JSON.parse(e.data);
      if (!snapshotStarted) {
        rows.clear();
        snapshotStarted = true;
      }
      for (const object of data.objects) rows.set(object.objectId, object);
      onEvent("snapshot", e.lastEventId, data);
      onChange(rows, { event: "snapshot" });
    });
    source.addEventListener("subscribed", (e) => {
      snapshotStarted = false;
      onEvent("subscribed", e.lastEventId, JSON.parse(e.data));
    });
    for (const name of DATA_EVENTS) {
      source.addEventListener(name, (e) => {
        const data = JSON.parse(e.data);
        if (name === "leave" || name === "delete") rows.delete(data.object.objectId);
        else rows.set(data.object.objectId, data.object);
        onEvent(name, e.lastEventId, data);
        onChange(rows, { event: name, object: data.object });
      });
    }
    source.addEventListener("gap", (e) => {
      const data = JSON.parse(e.data);
      onEvent("gap", e.lastEventId, data);
      // A gap a snapshot follows is handled by that snapshot; any other means this list
      // missed changes: start over with a fresh snapshot.
      if (!data.snapshot) restart();
    });
    source.addEventListener("shutdown", (e) => onEvent("shutdown", e.lastEventId, JSON.parse(e.data)));
    source.addEventListener("error", (e) => {
      if (e.data !== undefined) {
        onEvent("error", e.lastEventId, JSON.parse(e.data)); // {code, error} from the gateway
        return;
      }
      snapshotStarted = false; // a snapshot cut short is sent again whole
      onState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
    });
  };

  const restart = () => {
    source.close();
    snapshotStarted = false;
    open(); // a new EventSource has no Last-Event-ID: the gateway sends a fresh snapshot
  };

  const live = { rows, source: undefined, close: () => source.close() };
  open();
  return live;
}

/**
 * The same live list over a WebSocket, speaking the Parse LiveQuery protocol with livegate's
 * extensions (for clients that are not a Parse SDK): `snapshot: true` on subscribe, and `since`
 * with the last position on every reconnect, so a reconnect replays what was missed and a
 * position the gateway can no longer replay gets a gap and a fresh snapshot (`result`).
 * @param {string} url  e.g. "wss://live.example.com/"
 * @param {string} className
 * @param {LiveQueryOptions & {applicationId?: string, sessionToken?: string, retryMs?: number}} [options]
 * @returns {{rows: Map<string, ParseObject>, position: () => string | undefined, close: () => void}}
 */
export function liveSocket(url, className, options = {}) {
  const { where = {}, keys, watch, applicationId = "livegate", sessionToken, retryMs = 1000 } = options;
  const onChange = options.onChange ?? (() => {});
  const onEvent = options.onEvent ?? (() => {});
  const onState = options.onState ?? (() => {});
  const rows = new Map();
  let position; // the last position received: where a reconnect resumes
  let socket;
  let closed = false;

  const query = { className, where };
  if (keys) query.keys = keys;
  if (watch) query.watch = watch;

  const connect = () => {
    onState("connecting");
    socket = new WebSocket(url);
    socket.addEventListener("open", () => {
      socket.send(JSON.stringify({ op: "connect", applicationId, ...(sessionToken ? { sessionToken } : {}) }));
    });
    socket.addEventListener("message", (message) => {
      const frame = JSON.parse(message.data);
      switch (frame.op) {
        case "connected":
          onState("open");
          socket.send(JSON.stringify({ op: "subscribe", requestId: 1, query, snapshot: true, since: position ?? "now" }));
          break;
        case "result":
          rows.clear();
          for (const object of frame.results) rows.set(object.objectId, object);
          onEvent("result", position, frame);
          onChange(rows, { event: "result" });
          break;
        case "subscribed":
          position = frame.position;
          onEvent("subscribed", position, frame);
          break;
        case "gap":
          onEvent("gap", position, frame);
          if (!frame.snapshot) {
            // History reset while live: start over with a fresh snapshot.
            position = undefined;
            socket.close();
          }
          break;
        case "error":
          onEvent("error", position, frame);
          break;
        default:
          if (!DATA_EVENTS.includes(frame.op)) break;
          if (frame.op === "leave" || frame.op === "delete") rows.delete(frame.object.objectId);
          else rows.set(frame.object.objectId, frame.object);
          if (frame.position) position = frame.position;
          onEvent(frame.op, position, frame);
          onChange(rows, { event: frame.op, object: frame.object });
      }
    });
    socket.addEventListener("close", () => {
      if (closed) return onState("closed");
      onState("reconnecting");
      setTimeout(connect, retryMs);
    });
  };

  connect();
  return {
    rows,
    position: () => position,
    close: () => {
      closed = true;
      socket.close();
    },
  };
}
