// One headless Chromium page joins through the browser client and uses its controls
// as a person would, reporting what it saw. The test around it (tests/browser.rs) has a
// Rust participant in the meeting (camera, screen share, an earlier chat message) and
// checks the other side: what signaling and the SFU told that participant.
// Usage: node controls.mjs <url>; prints `RESULT <json>`.
import { joinFromPreview, launch, openPage } from "./chromium.mjs";

const [url] = process.argv.slice(2);
const browser = await launch();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
try {
  // Before joining: the preview shows the camera; the microphone goes off and on again.
  let preview = {};
  const page = await openPage(browser, url, "page", { prejoin: async (p) => {
    await p.click("#pre-mic");
    preview = await p.evaluate(() => ({
      playing: document.getElementById("preview").srcObject?.getVideoTracks().length === 1,
      micLabel: document.getElementById("pre-mic").textContent,
      devicesInPreview: document.querySelectorAll("#prejoin-devices select").length,
      joinedBefore: !!window.switchboard.ws,
    }));
    await p.click("#pre-mic");
  } });
  const report = { url: page.url(), preview };
  await page.waitForFunction(() => window.switchboard && window.switchboard.decoded > 10, null, { timeout: 45000, polling: 500 });
  // Both of the other participant's videos, each in its own tile.
  await page.waitForFunction(() => [...window.switchboard.tiles.keys()].some((k) => k.endsWith(":screen")), null, { timeout: 20000, polling: 250 }).catch(() => {});
  await sleep(4000); // simulcast layers ramp up
  Object.assign(report, await page.evaluate(async () => {
    const s = window.switchboard;
    const rids = [];
    if (s.pub) (await s.pub.getStats()).forEach((x) => { if (x.type === "outbound-rtp" && x.kind === "video" && x.bytesSent > 0) rids.push(x.rid || ""); });
    const opus = s.pub && s.pub.currentRemoteDescription ? (s.pub.currentRemoteDescription.sdp.match(/^a=fmtp:\d+ .*useinbandfec.*$/m) || [""])[0] : "";
    return {
      sessionToken: !!sessionStorage.getItem("switchboard-token"),
      localToken: localStorage.getItem("switchboard-token"),
      chat: [...document.querySelectorAll("#chat p")].map((p) => p.textContent),
      tiles: [...s.tiles.keys()],
      tileNames: [...document.querySelectorAll(".tile .name")].map((e) => e.textContent),
      tileIcons: Object.fromEntries([...s.tiles].map(([k, t]) => [k, t.querySelector(".icons").textContent])),
      me: s.me,
      rids: rids.sort(),
      opusFmtp: opus,
    };
  }));
  // Controls: mute, raise a hand, chat.
  await page.click("#mic");
  await page.click("#hand");
  await page.click('#reaction-picker button[title="React 🎉"]');
  await page.fill("#chat-text", "hello from the browser");
  await page.click("#chat-form button");
  // A direct message: the Rust participant chosen in "Send to".
  await page.selectOption("#chat-to", { label: "REX (privately)" });
  await page.fill("#chat-text", "just for rex");
  await page.click("#chat-form button");
  await sleep(1000);
  report.privateLines = await page.evaluate(() => [...document.querySelectorAll("#chat p.private")].map((p) => p.textContent));
  report.micLabel = await page.textContent("#mic");
  report.handLabel = await page.textContent("#hand");
  // Devices: the fake camera and microphone are listed; choosing the camera again swaps
  // the track on the publisher connection without renegotiating.
  report.devices = await page.evaluate(async () => {
    const cams = [...document.querySelectorAll("#camera-select option")].map((o) => o.value);
    const before = window.switchboard.local.getVideoTracks()[0];
    await useDevice("video", cams[0]);
    const after = window.switchboard.local.getVideoTracks()[0];
    const sent = window.switchboard.pub.getSenders().some((s) => s.track === after);
    return { cameras: cams.length, mics: document.querySelectorAll("#mic-select option").length, swapped: before !== after && after.readyState === "live", sent };
  });
  // Keyboard: `m` turns the microphone back on.
  await page.keyboard.press("m");
  await sleep(500);
  report.micAfterKey = await page.textContent("#mic");
  // Views, with screenshots kept as artifacts: the grid, the speaker view, a phone.
  const shots = process.env.ARTIFACTS;
  if (shots) await page.screenshot({ path: `${shots}/client-grid.png` });
  await page.click("#view");
  await sleep(1500);
  report.speakerView = await page.evaluate(() => ({
    grid: document.getElementById("grid").className,
    featured: [...window.switchboard.tiles].filter(([, t]) => t.classList.contains("featured")).map(([k]) => k),
  }));
  if (shots) await page.screenshot({ path: `${shots}/client-speaker-view.png` });
  await page.click("#view");
  await page.setViewportSize({ width: 390, height: 844 });
  await sleep(800);
  if (shots) await page.screenshot({ path: `${shots}/client-phone.png` });
  report.phoneFits = await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1);
  // What sticks out, when something does.
  if (!report.phoneFits) report.phoneWide = await page.evaluate(() => [...document.querySelectorAll("body *")]
    .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1 && e.getClientRects().length)
    .slice(0, 8).map((e) => `${e.tagName.toLowerCase()}#${e.id} ${Math.round(e.getBoundingClientRect().right)}`));
  await page.setViewportSize({ width: 1280, height: 800 });
  report.quality = await page.evaluate(() => window.switchboard.quality || null);
  // Share the screen, then stop it the way the browser's own "Stop sharing" does
  // (the captured track ends).
  await page.click("#screen");
  try {
    await page.waitForFunction(() => window.switchboard.screenSender, null, { timeout: 15000, polling: 250 });
    report.screenTrack = await page.evaluate(() => window.switchboard.screen.getVideoTracks()[0].id);
    await sleep(3000);
    report.sharingLabel = await page.textContent("#screen");
    await page.evaluate(() => { const t = window.switchboard.screen.getVideoTracks()[0]; t.stop(); t.dispatchEvent(new Event("ended")); });
    await page.waitForFunction(() => !window.switchboard.screen && !window.switchboard.screenSender, null, { timeout: 10000, polling: 250 });
    await sleep(2000);
    report.afterStopLabel = await page.textContent("#screen");
  } catch (e) {
    report.screenError = String(e.message || e);
  }
  // The host (the Rust participant) lowers the hand a few seconds after it went up.
  report.handLoweredByHost = await page.waitForFunction(() => document.getElementById("hand").textContent === "Raise hand", null, { timeout: 20000, polling: 250 }).then(() => true, () => false);
  // A forced ICE restart of both connections (what a network change triggers): media
  // keeps being decoded afterwards.
  const before = await page.evaluate(() => window.switchboard.decoded);
  await page.evaluate(async () => { await restartIce(window.switchboard.sub, "subscriber"); await restartIce(window.switchboard.pub, "publisher"); });
  await sleep(6000);
  Object.assign(report, await page.evaluate(() => ({ iceRestarts: window.switchboard.iceRestarts || 0, decodedAfter: window.switchboard.decoded, subState: window.switchboard.sub.connectionState, pubState: window.switchboard.pub.connectionState })));
  report.decodedBefore = before;
  // Leave, then rejoin from the same tab (the token is kept for it, not in the URL).
  await page.click("#leave");
  await page.waitForFunction(() => !document.getElementById("rejoin").hidden, null, { timeout: 10000 });
  report.leftStatus = await page.textContent("#status");
  await page.click("#rejoin");
  await joinFromPreview(page);
  await page.waitForFunction(() => window.switchboard && window.switchboard.decoded > 10, null, { timeout: 45000, polling: 500 });
  report.rejoinedAs = await page.evaluate(() => window.switchboard.me);
  console.log("RESULT " + JSON.stringify(report));
} finally {
  await browser.close();
}
