// MQTT.js against midge, under Node or in headless Chromium; driven by
// tests/websockets.rs, which starts the broker and reads these lines:
//
//   node mqttjs.mjs node    URL   # URL: ws://127.0.0.1:PORT/mqtt or mqtt://127.0.0.1:PORT
//   node mqttjs.mjs browser URL   # ws:// only: a page in Chromium runs MQTT.js's browser bundle
//
// The client subscribes to "to/js" at QoS 1 and prints "READY"; the test
// publishes one message there (mosquitto_pub over TCP); the client prints
// "GOT <payload>", publishes "hello from <where>" to "from/js" at QoS 1
// (a TCP subscriber of the test receives it), prints "PUBLISHED" and exits 0.
// Anything else (an error, 60 s without finishing) exits non-zero.
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const [where, url] = process.argv.slice(2);
if (!['node', 'browser'].includes(where) || !url) {
  console.error('usage: node mqttjs.mjs node|browser URL');
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

async function inNode() {
  const mqtt = require('mqtt');
  await exchange(mqtt, url, 'node', async (line) => console.log(line));
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
      { url, source: exchange.toString() },
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
