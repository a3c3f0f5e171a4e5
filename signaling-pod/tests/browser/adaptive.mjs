// Adaptive quality seen from a subscriber behind a bad link: a publisher page on the
// host sends its camera (simulcast) and microphone; a viewer page, its Chromium run
// inside the test's network namespace, shows the publisher's tile large and publishes
// nothing (camera and microphone off before joining). Once the viewer decodes video the
// script creates `READY_FILE`, then samples the viewer's inbound video and audio
// (getStats) every 200 ms until `STOP_FILE` appears, while the test changes the link.
// With a fourth argument the publisher's Chromium runs inside that namespace too.
// Usage: READY_FILE=… STOP_FILE=… node adaptive.mjs <url-publisher> <url-viewer> <netns> [<netns>];
// prints `RESULT <json>` (`samples`: t (ms since the epoch), w (frameWidth),
// fd (framesDecoded), kf (keyFramesDecoded), vb (video bytes), fc (freezeCount), vl
// (video packetsLost), nk (nackCount), pl (pliCount), rx (retransmittedPacketsReceived), ae
// (totalAudioEnergy), ad (totalSamplesDuration), ac (concealedSamples), as
// (totalSamplesReceived), ap (audio packets), ce (concealmentEvents), al (audio
// packetsLost), pd (audio packetsDiscarded), ept (audio estimatedPlayoutTimestamp: the
// sender's NTP time, in ms, of what plays out now); `rids`: the layers the publisher sends;
// `red`: the audio lines of the SFU's answer to the publisher and offer to the viewer).
import { existsSync, writeFileSync, chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { launch, openPage } from "./chromium.mjs";

const [publisherUrl, viewerUrl, netns, publisherNetns] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// A Chromium that starts inside a namespace (Playwright talks to it over a pipe).
const scratch = [];
const inNamespace = (ns) => {
  const dir = mkdtempSync(join(tmpdir(), "adaptive-"));
  scratch.push(dir);
  const wrapper = join(dir, "chromium-in-netns");
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${ns} ${process.env.CHROMIUM || "/usr/bin/chromium"} "$@"\n`);
  chmodSync(wrapper, 0o755);
  return wrapper;
};
const origin = new URL(viewerUrl).origin;
const publisherBrowser = publisherNetns ? await launch([origin], inNamespace(publisherNetns)) : await launch([origin]);
const viewerBrowser = await launch([origin], inNamespace(netns));
const viewport = { width: 1600, height: 1000 };
const sample = (page) => page.evaluate(async () => {
  const s = { t: Date.now(), w: 0, fd: 0, kf: 0, vb: 0, fc: 0, vl: 0, nk: 0, pl: 0, rx: 0, ae: 0, ad: 0, ac: 0, as: 0, ap: 0, ce: 0, al: 0, pd: 0, ept: 0 };
  (await window.switchboard.sub.getStats()).forEach((x) => {
    if (x.type !== "inbound-rtp") return;
    if (x.kind === "video") {
      s.w = Math.max(s.w, x.frameWidth || 0);
      s.fd += x.framesDecoded || 0; s.kf += x.keyFramesDecoded || 0; s.vb += x.bytesReceived || 0; s.fc += x.freezeCount || 0;
      s.vl += x.packetsLost || 0; s.nk += x.nackCount || 0; s.pl += x.pliCount || 0; s.rx += x.retransmittedPacketsReceived || 0;
    } else if (x.kind === "audio") {
      s.ae += x.totalAudioEnergy || 0; s.ad += x.totalSamplesDuration || 0; s.ac += x.concealedSamples || 0;
      s.as += x.totalSamplesReceived || 0; s.ap += x.packetsReceived || 0;
      s.ce += x.concealmentEvents || 0; s.al += x.packetsLost || 0; s.pd += x.packetsDiscarded || 0;
      if (x.estimatedPlayoutTimestamp) s.ept = x.estimatedPlayoutTimestamp;
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
  // RED (RFC 2198): what the SFU answered the publisher and offered the viewer.
  const audioCodecs = (sdp) => (sdp || "").split("\r\n").filter((l) => l.startsWith("m=audio") || /^a=rtpmap:\d+ (red|opus)\//.test(l));
  const red = {
    publisherAnswer: audioCodecs(await publisher.evaluate(() => window.switchboard.pub.remoteDescription && window.switchboard.pub.remoteDescription.sdp)),
    viewerOffer: audioCodecs(await viewer.evaluate(() => window.switchboard.sub.remoteDescription && window.switchboard.sub.remoteDescription.sdp)),
  };
  console.log("RESULT " + JSON.stringify({ rids, samples, red }));
} finally {
  await publisherBrowser.close();
  await viewerBrowser.close();
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
}
