// MQTT.js against midge, under Node or in headless Chromium; driven by
// tests/websockets.rs, which starts the broker and reads these lines:
//
//   node mqttjs.mjs node    URL [5]   # URL: ws://127.0.0.1:PORT/mqtt or mqtt://127.0.0.1:PORT
//   node mqttjs.mjs browser URL [5]   # ws:// only: a page in Chromium runs MQTT.js's browser bundle
//
// MQTT 3.1.1 (no third argument): the client subscribes to "to/js" at QoS 1
// and prints "READY"; the test publishes one message there (mosquitto_pub
// over TCP); the client prints "GOT <payload>", publishes "hello from
// <where>" to "from/js" at QoS 1 (a TCP subscriber of the test receives
// it), prints "PUBLISHED" and exits 0.
// MQTT 5.0 (`5`): two MQTT.js clients with protocolVersion 5 exchange
// messages through the broker (which must have max_topic_levels 5); each
// check prints "OK <name>", the end "DONE" (see exchange5).
// Anything else (an error, 60 s without finishing) exits non-zero.
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const [where, url, version = '4'] = process.argv.slice(2);
if (!['node', 'browser'].includes(where) || !url || !['4', '5'].includes(version)) {
  console.error('usage: node mqttjs.mjs node|browser URL [5]');
  process.exit(64);
}
const deadline = setTimeout(() => {
  console.log('TIMEOUT');
  process.exit(3);
}, 60000);

// The same steps in Node and in the page: `mqtt` is the library, `report`
// prints a line on the test's side.
async function exchange(mqtt, url, where, report) {
  const client = mqtt.connect(url, { clientId: `mqttjs-${where}`, protocolVersion: 4, reconnectPeriod: 0 });
  await new Promise((resolve, reject) => {
    client.once('connect', resolve);
    client.once('error', reject);
    client.once('close', () => reject(new Error('closed before CONNACK')));
  });
  const got = new Promise((resolve) => client.once('message', (topic, payload) => resolve(`${topic} ${payload}`)));
  await client.subscribeAsync('to/js', { qos: 1 });
  await report('READY');
  await report(`GOT ${await got}`);
  await client.publishAsync('from/js', `hello from ${where}`, { qos: 1 });
  await report('PUBLISHED');
  await client.endAsync();
}

// MQTT 5.0: a subscriber (Topic Alias Maximum 4) and a publisher (MQTT.js
// assigns its own topic aliases) check CONNACK's properties, SUBACK reason
// codes (0x8F for a filter deeper than max_topic_levels 5), message
// properties and the Subscription Identifier on delivery, topic aliases
// both ways, PUBACK 0x10 and No Local. Self-contained: it runs in the page
// too.
async function exchange5(mqtt, url, where, report) {
  const fail = (what, got) => {
    throw new Error(`${what}: got ${JSON.stringify(got)}`);
  };
  const check = async (name, ok, what, got) => {
    if (!ok) fail(`${name}: ${what}`, got);
    await report(`OK ${name}`);
  };
  const open = (name, options) =>
    new Promise((resolve, reject) => {
      const client = mqtt.connect(url, { clientId: `mqttjs5-${where}-${name}`, protocolVersion: 5, reconnectPeriod: 0, ...options });
      client.once('connect', (connack) => resolve([client, connack]));
      client.once('error', reject);
      client.once('close', () => reject(new Error(`${name}: closed before CONNACK`)));
    });
  // Messages as they arrive, awaited one at a time.
  const inbox = (client) => {
    const queue = [];
    const waiting = [];
    client.on('message', (topic, payload, packet) => {
      const message = { topic, payload: String(payload), properties: packet.properties ?? {} };
      if (waiting.length) waiting.shift()(message);
      else queue.push(message);
    });
    return (ms = 5000) =>
      queue.length
        ? Promise.resolve(queue.shift())
        : new Promise((resolve, reject) => {
            waiting.push(resolve);
            setTimeout(() => reject(new Error(`no message within ${ms} ms`)), ms);
          });
  };

  const [sub, subConnack] = await open('sub', { properties: { topicAliasMaximum: 4 } });
  const limits = subConnack.properties ?? {};
  await check('connack_properties', subConnack.reasonCode === 0 && limits.receiveMaximum === 20 && limits.topicAliasMaximum === 10,
    'CONNACK 0 with Receive Maximum 20, Topic Alias Maximum 10', subConnack);
  const next = inbox(sub);
  const granted = await sub.subscribeAsync({ 'js5/#': { qos: 2 }, 'nl/#': { qos: 1, nl: true } }, { properties: { subscriptionIdentifier: 5 } });
  await check('suback_granted', JSON.stringify(granted.map((g) => g.qos)) === '[2,1]', 'SUBACK [2, 1]', granted);
  const refused = await sub.subscribeAsync({ 'js5/ok': { qos: 1 }, 'a/b/c/d/e/f/g': { qos: 0 } }).then(
    (ok) => fail('a filter of 7 levels with max_topic_levels 5 was granted', ok),
    (error) => error.packet?.granted,
  );
  await check('suback_reason_codes', JSON.stringify(refused) === '[1,143]', 'SUBACK [1, 0x8F] (Topic Filter invalid)', refused);

  const [pub] = await open('pub', { autoAssignTopicAlias: true });
  const sentProperties = {
    payloadFormatIndicator: true,
    messageExpiryInterval: 60,
    contentType: 'text/plain',
    responseTopic: 'js5/reply',
    correlationData: 'corr-42',
    userProperties: { a: '1', b: ['x', 'y'] },
  };
  await pub.publishAsync('js5/props', 'with properties', { qos: 1, properties: sentProperties });
  const m = await next();
  const p = m.properties;
  const same = p.payloadFormatIndicator === true && p.contentType === 'text/plain' && p.responseTopic === 'js5/reply'
    && String(p.correlationData) === 'corr-42' && JSON.stringify(p.userProperties) === JSON.stringify(sentProperties.userProperties);
  await check('properties_round_trip', m.topic === 'js5/props' && same, 'the properties as sent (MQTT-3.3.2-4, -15, -16, -17, -20)', m);
  await check('message_expiry_forwarded', p.messageExpiryInterval <= 60 && p.messageExpiryInterval >= 58,
    'Message Expiry Interval 58..60 (MQTT-3.3.2-6)', p.messageExpiryInterval);
  const ids = [].concat(p.subscriptionIdentifier ?? []);
  await check('subscription_identifier', JSON.stringify(ids) === '[5]', 'Subscription Identifier 5 (MQTT-3.3.4-3)', p);

  let emptyTopics = 0;
  pub.on('packetsend', (packet) => {
    if (packet.cmd === 'publish' && packet.topic === '') emptyTopics += 1;
  });
  for (const n of [1, 2, 3]) await pub.publishAsync('js5/alias', `aliased ${n}`, { qos: 1 });
  const aliased = [await next(), await next(), await next()];
  await check('topic_alias_inbound', emptyTopics >= 2 && aliased.every((a, i) => a.topic === 'js5/alias' && a.payload === `aliased ${i + 1}`),
    'the publisher sent empty topics under its alias and every message arrived on js5/alias (MQTT-3.3.2-12)', { emptyTopics, aliased });
  const outAliases = aliased.map((a) => a.properties.topicAlias);
  await check('topic_alias_outbound', outAliases.every((a) => a >= 1 && a <= 4) && outAliases.length === 3,
    'the broker\'s aliases within the subscriber\'s maximum 4 (MQTT-3.1.2-26)', outAliases);

  // publishAsync resolves with the PUBLISH: the PUBACK is read as it arrives.
  const pubacks = new Map();
  pub.on('packetreceive', (packet) => {
    if (packet.cmd === 'puback') pubacks.set(packet.messageId, packet.reasonCode);
  });
  const { messageId } = await pub.publishAsync('nobody/listens', 'x', { qos: 1 });
  const reason = pubacks.get(messageId);
  await check('puback_no_matching_subscribers', reason === 0x10, 'PUBACK 0x10 (No matching subscribers)', reason);

  await sub.publishAsync('nl/own', 'own', { qos: 1 });
  await pub.publishAsync('nl/other', 'other', { qos: 1 });
  const local = await next();
  await check('no_local', local.topic === 'nl/other', 'No Local: the subscriber\'s own message not sent back (MQTT-3.8.3-3)', local);

  await pub.endAsync();
  await sub.endAsync();
  await report('DONE');
}

const exchanges = { 4: exchange, 5: exchange5 };

async function inNode() {
  const mqtt = require('mqtt');
  await exchanges[version](mqtt, url, 'node', async (line) => console.log(line));
}

async function inBrowser() {
  const { chromium } = require('playwright-core');
  const profile = mkdtempSync(join(tmpdir(), 'midge-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-quic',
      '--no-first-run',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('console', (message) => console.error(`browser console: ${message.text()}`));
    page.on('pageerror', (error) => console.error(`browser error: ${error}`));
    await page.exposeFunction('report', (line) => console.log(line));
    await page.setContent('<!doctype html><title>midge over WebSockets</title>');
    // MQTT.js's own browser bundle, as a web page would load it.
    const bundle = join(dirname(fileURLToPath(import.meta.url)), 'node_modules/mqtt/dist/mqtt.min.js');
    await page.addScriptTag({ path: bundle });
    await page.evaluate(
      async ({ url, source }) => {
        const exchange = new Function(`return (${source})`)();
        await exchange(window.mqtt, url, 'browser', window.report);
      },
      { url, source: exchanges[version].toString() },
    );
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

try {
  await (where === 'node' ? inNode() : inBrowser());
  clearTimeout(deadline);
  process.exit(0);
} catch (error) {
  console.log(`ERROR ${error?.stack ?? error}`);
  process.exit(1);
}
