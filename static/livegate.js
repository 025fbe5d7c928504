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
