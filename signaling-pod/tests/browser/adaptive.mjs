// Adaptive quality seen from a subscriber behind a bad link: a publisher page on the
// host sends its camera (simulcast) and microphone; a viewer page, its Chromium run
// inside the test's network namespace, shows the publisher's tile large and publishes
// nothing (camera and microphone off before joining). Once the viewer decodes video the
// script creates `READY_FILE`, then samples the viewer's inbound video and audio
// (getStats) every 200 ms until `STOP_FILE` appears, while the test changes the link.
// Usage: READY_FILE=… STOP_FILE=… node adaptive.mjs <url-publisher> <url-viewer> <netns>;
// prints `RESULT <json>` (`samples`: t (ms since the epoch), w (frameWidth),
// fd (framesDecoded), kf (keyFramesDecoded), vb (video bytes), fc (freezeCount), ae
// (totalAudioEnergy), ad (totalSamplesDuration), ac (concealedSamples), as
// (totalSamplesReceived), ap (audio packets); `rids`: the layers the publisher sends).
import { existsSync, writeFileSync, chmodSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { launch, openPage } from "./chromium.mjs";

const [publisherUrl, viewerUrl, netns] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// The viewer's Chromium starts inside the namespace (Playwright talks to it over a pipe).
const wrapper = join(mkdtempSync(join(tmpdir(), "adaptive-")), "chromium-in-netns");
writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${netns} ${process.env.CHROMIUM || "/usr/bin/chromium"} "$@"\n`);
chmodSync(wrapper, 0o755);
const origin = new URL(viewerUrl).origin;
const publisherBrowser = await launch([origin]);
const viewerBrowser = await launch([origin], wrapper);
const viewport = { width: 1600, height: 1000 };
const sample = (page) => page.evaluate(async () => {
  const s = { t: Date.now(), w: 0, fd: 0, kf: 0, vb: 0, fc: 0, ae: 0, ad: 0, ac: 0, as: 0, ap: 0 };
  (await window.switchboard.sub.getStats()).forEach((x) => {
    if (x.type !== "inbound-rtp") return;
    if (x.kind === "video") {
      s.w = Math.max(s.w, x.frameWidth || 0);
      s.fd += x.framesDecoded || 0; s.kf += x.keyFramesDecoded || 0; s.vb += x.bytesReceived || 0; s.fc += x.freezeCount || 0;
    } else if (x.kind === "audio") {
      s.ae += x.totalAudioEnergy || 0; s.ad += x.totalSamplesDuration || 0; s.ac += x.concealedSamples || 0;
      s.as += x.totalSamplesReceived || 0; s.ap += x.packetsReceived || 0;
    }
  });
  return s;
});
try {
  const publisher = await openPage(publisherBrowser, publisherUrl, "publisher", { viewport });
  const viewer = await openPage(viewerBrowser, viewerUrl, "viewer", {
    viewport,
    prejoin: async (page) => { await page.click("#pre-cam"); await page.click("#pre-mic"); },
  });
  await viewer.waitForFunction(() => window.switchboard && window.switchboard.decoded > 10, null, { timeout: 60000, polling: 500 });
  // The publisher's tile large, as someone watching it full-window.
  await viewer.evaluate(() => {
    const s = window.switchboard;
    const tile = [...s.tiles].find(([k]) => k !== s.me && !k.endsWith(":screen"))[1];
    document.getElementById("grid").style.gridTemplateColumns = "max-content";
    Object.assign(tile.style, { width: "1280px", height: "720px", aspectRatio: "auto", display: "" });
  });
  writeFileSync(process.env.READY_FILE, "ready");
  const samples = [];
  const deadline = Date.now() + 240000;
  while (!existsSync(process.env.STOP_FILE) && Date.now() < deadline) {
    samples.push(await sample(viewer));
    await sleep(200);
  }
  const rids = await publisher.evaluate(async () => {
    const rids = [];
    (await window.switchboard.pub.getStats()).forEach((x) => { if (x.type === "outbound-rtp" && x.kind === "video" && x.bytesSent > 0) rids.push(`${x.rid}:${x.frameWidth || 0}`); });
    return rids.sort();
  });
  console.log("RESULT " + JSON.stringify({ rids, samples }));
} finally {
  await publisherBrowser.close();
  await viewerBrowser.close();
}
