// A meeting with mixed audio (`spec.audio: Mixed`) from two headless Chromium pages,
// each with a fake camera and microphone (Chromium's fake microphone beeps). Each page:
// - plays one audio stream, the SFU's mix, from an <audio> element of its own, with no
//   tile for the mixer, and receives no other audio stream;
// - hears the other page through the mix (the audio energy it plays out grows);
// - still shows the other's camera.
// Usage: node mixed.mjs <url-a> <url-b>; prints `RESULT <json>`.
import { launch, openPage } from "./chromium.mjs";

const [urlA, urlB] = process.argv.slice(2);
const browser = await launch();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Inbound audio streams that received packets, and their played-out energy.
const audioIn = (page) => page.evaluate(async () => {
  const streams = [];
  if (window.switchboard.sub) (await window.switchboard.sub.getStats()).forEach((x) => {
    if (x.type === "inbound-rtp" && x.kind === "audio" && x.packetsReceived > 0) streams.push(x.totalAudioEnergy || 0);
  });
  return streams;
});
async function heard(page) {
  const sum = (a) => a.reduce((x, y) => x + y, 0);
  const before = sum(await audioIn(page));
  await sleep(2000);
  return sum(await audioIn(page)) - before;
}
const seen = (page) => page.evaluate(() => ({
  mix: !!document.getElementById("mix") && !!document.getElementById("mix").srcObject
    && document.getElementById("mix").srcObject.getAudioTracks().length === 1,
  mixerTile: !!document.querySelector('[data-participant="~mixer"]'),
  tiles: [...document.querySelectorAll(".tile")].map((t) => t.dataset.participant),
  me: window.switchboard.me,
}));
try {
  const a = await openPage(browser, urlA, "a");
  const b = await openPage(browser, urlB, "b");
  for (const p of [a, b]) {
    await p.waitForFunction(() => window.switchboard && window.switchboard.decoded > 10 && document.getElementById("mix"), null, { timeout: 45000, polling: 500 });
  }
  await sleep(2000);
  const report = { a: await seen(a), b: await seen(b) };
  report.a.audioStreams = (await audioIn(a)).length;
  report.b.audioStreams = (await audioIn(b)).length;
  report.a.heard = await heard(a);
  report.b.heard = await heard(b);
  console.log("RESULT " + JSON.stringify(report));
} finally {
  await browser.close();
}
