// One headless Chromium page, run inside a network namespace whose only link to the
// host (signaling and the SFU) this script takes away and gives back with another
// address, as a laptop that moves from one network to another does: every path from
// the old address is gone, so only an ICE restart (and a new signaling connection)
// brings media back. Measures the video frames decoded during the outage, how long
// after the link is back the page decodes video again, and any freeze after that.
// Usage: node network_change.mjs <url> <interface> <outage-ms> <new-address/prefix>;
// prints `RESULT <json>`.
import { execFileSync } from "node:child_process";
import { launch, openPage } from "./chromium.mjs";

const [url, iface, outageMs, moved] = process.argv.slice(2);
const browser = await launch([new URL(url).origin]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const link = (state) => execFileSync("ip", ["link", "set", iface, state]);
// Frames decoded so far, read straight from getStats (not the page's 500 ms sample).
const decoded = (page) => page.evaluate(async () => {
  let n = 0;
  if (window.switchboard.sub) (await window.switchboard.sub.getStats()).forEach((x) => { if (x.type === "inbound-rtp" && x.kind === "video") n += x.framesDecoded || 0; });
  return n;
});
// The link goes down for `outageMs` (and, with `moveTo`, comes back with that address
// instead of its own), then up; measures what the page decoded meanwhile and after.
async function outage(page, moveTo) {
  const r = { before: await decoded(page) };
  link("down");
  const downAt = Date.now();
  if (moveTo) {
    execFileSync("ip", ["addr", "flush", "dev", iface]);
    execFileSync("ip", ["addr", "add", moveTo, "dev", iface]);
  }
  // Two seconds in, what was in flight or waiting in the jitter buffer and the decoder
  // has been decoded (a loaded machine decodes a backlog late: counted from one second
  // in, 14 frames were seen once in a CI run); from then on nothing should.
  await sleep(2000);
  const outageStart = await decoded(page);
  await sleep(Number(outageMs) - 2000);
  r.decodedDuringOutage = (await decoded(page)) - outageStart;
  r.bannerDuringOutage = await page.evaluate(() => document.getElementById("banner").hidden ? "" : document.getElementById("banner").textContent);
  const restartsBefore = await page.evaluate(() => window.switchboard.iceRestarts || 0);
  link("up");
  const upAt = Date.now();
  r.outageMs = upAt - downAt;
  await page.evaluate(() => window.mark("link up"));
  // Resumed: new frames decoding (three, so a frame decoded from a buffer does not
  // count). Then, for 10 s, the longest stretch without a new frame (the ICE restart
  // moving to its new credentials must not freeze the picture again).
  const atUp = await decoded(page);
  r.resumeMs = null;
  let last = atUp, lastFrameAt = upAt, longest = 0;
  while (Date.now() - upAt < 10000) {
    const n = await decoded(page);
    const now = Date.now();
    if (n > last) {
      if (r.resumeMs !== null) longest = Math.max(longest, now - lastFrameAt);
      // Back for good from the end of the last gap of a second or more.
      if (r.resumeMs !== null && now - lastFrameAt >= 1000) r.stableMs = now - upAt;
      last = n; lastFrameAt = now;
    }
    if (r.resumeMs === null && n >= atUp + 3) { r.resumeMs = now - upAt; r.stableMs = r.resumeMs; await page.evaluate(() => window.mark("resumed")); }
    await sleep(50);
  }
  r.longestFreezeAfterResumeMs = Math.max(longest, Date.now() - lastFrameAt);
  Object.assign(r, await page.evaluate(() => ({
    bothConnected: [window.switchboard.sub, window.switchboard.pub].every((pc) => pc && pc.connectionState === "connected"),
    banner: document.getElementById("banner").hidden ? "" : document.getElementById("banner").textContent,
    iceRestarts: window.switchboard.iceRestarts || 0,
  })));
  r.iceRestarts -= restartsBefore;
  return r;
}

try {
  const page = await openPage(browser, url, "page");
  // Every connection state change, with its time (for the report).
  await page.evaluate(() => {
    const t0 = performance.now();
    window.timeline = [];
    const watch = () => {
      for (const [name, pc] of [["pub", window.switchboard.pub], ["sub", window.switchboard.sub]]) {
        if (pc && !pc.watched) { pc.watched = true; pc.addEventListener("connectionstatechange", () => window.timeline.push(`${Math.round(performance.now() - t0)} ${name} ${pc.connectionState}`)); pc.addEventListener("iceconnectionstatechange", () => window.timeline.push(`${Math.round(performance.now() - t0)} ${name} ice ${pc.iceConnectionState}`)); pc.addEventListener("icecandidate", (e) => window.timeline.push(`${Math.round(performance.now() - t0)} ${name} cand ${e.candidate ? e.candidate.address : "end"}`)); }
      }
    };
    setInterval(watch, 100);
    window.addEventListener("online", () => window.timeline.push(`${Math.round(performance.now() - t0)} online`));
    window.mark = (what) => window.timeline.push(`${Math.round(performance.now() - t0)} ${what}`);
    const send = WebSocket.prototype.send;
    WebSocket.prototype.send = function (data) { try { const t = JSON.parse(data).type; if (t !== "ping" && t !== "candidate") window.mark(`send ${t}`); } catch (_) {} return send.call(this, data); };
    window.addEventListener("offline", () => window.timeline.push(`${Math.round(performance.now() - t0)} offline`));
  });
  await page.waitForFunction(() => window.switchboard && window.switchboard.decoded > 10, null, { timeout: 45000, polling: 500 });
  await sleep(1000);
  const report = {};
  // The same network back (the old path works again), then another address (it does not).
  report.flap = await outage(page, null);
  report.moved = await outage(page, moved);
  Object.assign(report, await page.evaluate(() => ({
    iceRestarts: window.switchboard.iceRestarts || 0,
    sub: window.switchboard.sub && window.switchboard.sub.connectionState,
    pub: window.switchboard.pub && window.switchboard.pub.connectionState,
    socket: window.switchboard.ws.readyState,
    timeline: window.timeline,
    banner: document.getElementById("banner").hidden ? "" : document.getElementById("banner").textContent,
  })));
  report.after = await decoded(page);
  console.log("RESULT " + JSON.stringify(report));
} finally {
  link("up");
  await browser.close();
}
