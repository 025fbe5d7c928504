// Subscribes with the official Parse JS SDK (Parse.LiveQueryClient) and prints one JSON line per
// event on stdout, so the Rust integration test can check what a real Parse client sees.
// Usage: node parse_sdk_client.mjs ws://127.0.0.1:PORT/ CLASS_NAME [find]
// With `find`, it calls subscription.find() once subscribed and prints the `result` objects.
import Parse from 'parse/node';
import WebSocket from 'ws';

const [serverURL, className, mode] = process.argv.slice(2);
const print = (line) => process.stdout.write(JSON.stringify(line) + '\n');

Parse.initialize('livegate-test', 'js-key');
Parse.CoreManager.setWebSocketController(WebSocket);

const client = new Parse.LiveQueryClient({
  applicationId: 'livegate-test',
  serverURL,
  javascriptKey: 'js-key',
  installationId: 'sdk-installation',
});
client.on('error', (error) => print({ event: 'client-error', error: String(error) }));
client.open();

const query = new Parse.Query(className);
query.equalTo('room', 'sdk');
query.greaterThanOrEqualTo('n', 1);
const subscription = client.subscribe(query);
subscription.on('open', () => {
  print({ event: 'open' });
  if (mode === 'find') {
    subscription.find();
  }
});
subscription.on('result', (objects) => {
  print({
    event: 'result',
    objects: objects.map((o) => ({ className: o.className, id: o.id, attributes: o.toJSON() })),
  });
  if (mode === 'find') {
    client.close().then(() => process.exit(0));
  }
});
subscription.on('error', (error) => print({ event: 'subscription-error', error: String(error) }));
for (const op of ['create', 'enter', 'update', 'leave', 'delete']) {
  // create and delete get (object, response); enter, update and leave (object, original, response).
  subscription.on(op, (object, second, third) => {
    const hasOriginal = ['enter', 'update', 'leave'].includes(op);
    const original = hasOriginal ? second : null;
    const response = hasOriginal ? third : second;
    print({
      event: op,
      className: object.className,
      id: object.id,
      createdAt: object.createdAt instanceof Date ? object.createdAt.toISOString() : null,
      attributes: object.toJSON(),
      original: original ? original.toJSON() : null,
      response,
    });
    if (op === 'delete') {
      client.close().then(() => process.exit(0));
    }
  });
}
setTimeout(() => {
  print({ event: 'timeout' });
  process.exit(1);
}, 30000);
