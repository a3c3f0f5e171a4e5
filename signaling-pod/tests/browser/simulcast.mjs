// Two headless Chromium pages in one meeting: the first publishes its camera as
// simulcast; on the second, the first's tile is made large, then small, then hidden,
// then shown again. Reports the decoded picture's width (getStats frameWidth) and the
// frames decoded at each step, and the SFU layers the first page sends.
// Usage: node simulcast.mjs <url-publisher> <url-viewer>; prints `RESULT <json>`.
import { launch, openPage } from "./chromium.mjs";

const [publisherUrl, viewerUrl] = process.argv.slice(2);
const browser = await launch();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const open = (url, name) => openPage(browser, url, name, { viewport: { width: 1600, height: 1000 } });
// The viewer's inbound video: the decoded width and the frames decoded so far.
const inbound = (page) => page.evaluate(async () => {
  let best = { frameWidth: 0, framesDecoded: 0, packets: 0 };
  (await window.switchboard.sub.getStats()).forEach((x) => {
    if (x.type === "inbound-rtp" && x.kind === "video") {
      best.framesDecoded += x.framesDecoded || 0;
      best.packets += x.packetsReceived || 0;
      if (x.frameWidth) best.frameWidth = Math.max(best.frameWidth, x.frameWidth);
    }
  });
  return best;
});
const setTile = (page, css) => page.evaluate((css) => {
  const s = window.switchboard;
  const tile = [...s.tiles].find(([k]) => k !== s.me && !k.endsWith(":screen"))[1];
  document.getElementById("grid").style.gridTemplateColumns = "max-content";
  Object.assign(tile.style, css);
}, css);
try {
  const publisher = await open(publisherUrl, "publisher");
  const viewer = await open(viewerUrl, "viewer");
  for (const page of [publisher, viewer]) {
    await page.waitForFunction(() => window.switchboard && window.switchboard.decoded > 10, null, { timeout: 45000, polling: 500 });
  }
  await sleep(3000);
  const report = {};
  report.rids = await publisher.evaluate(async () => {
    const rids = [];
    (await window.switchboard.pub.getStats()).forEach((x) => { if (x.type === "outbound-rtp" && x.kind === "video" && x.bytesSent > 0) rids.push(`${x.rid}:${x.frameWidth || 0}`); });
    return rids.sort();
  });
  const step = async (name, css, waitMs) => {
    await setTile(viewer, css);
    await sleep(waitMs);
    const a = await inbound(viewer);
    await sleep(1500);
    const b = await inbound(viewer);
    report[name] = { frameWidth: b.frameWidth, decodedDuring: b.framesDecoded - a.framesDecoded, packetsDuring: b.packets - a.packets };
  };
  // The large layer comes once the SFU's estimate of the viewer's downlink has probed up
  // to it (from 300 kbps; 3–6 s on this machine): 10 s to get there.
  await step("large", { width: "1280px", height: "720px", aspectRatio: "auto", display: "" }, 10000);
  await step("small", { width: "160px", height: "90px", aspectRatio: "auto", display: "" }, 5000);
  await step("hidden", { display: "none" }, 3000);
  // Small, then hidden for 8 s: the SFU told the publisher to send only its lowest layer.
  report.activeWhileHidden = await publisher.evaluate(() => window.switchboard.layersActive || null);
  // Shown again, the SFU asks for the layers back at once; the large layer returns once
  // the publisher's encoder restarted it and the estimate carries it: 10 s, like "large".
  await step("shown", { width: "1280px", height: "720px", aspectRatio: "auto", display: "" }, 10000);
  report.activeWhenShown = await publisher.evaluate(() => window.switchboard.layersActive || null);
  report.wishes = await viewer.evaluate(() => [...window.switchboard.wishes.values()]);
  console.log("RESULT " + JSON.stringify(report));
} finally {
  await browser.close();
}
