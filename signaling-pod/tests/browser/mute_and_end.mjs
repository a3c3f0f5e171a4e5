// Two headless Chromium pages in one meeting, the host's first. The guest's microphone
// button is clicked: the audio energy arriving at the host (getStats totalAudioEnergy
// of its inbound audio) stops growing, and grows again after unmuting. Then the host
// clicks "End for all": both pages show that the meeting ended and do not reconnect.
// Usage: node mute_and_end.mjs <host-url> <guest-url>; prints `RESULT <json>`.
import { launch, openPage } from "./chromium.mjs";

const [hostUrl, guestUrl] = process.argv.slice(2);
const browser = await launch();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const WINDOW_MS = 3000;
// The host's received audio energy and duration so far (both grow while audio plays out).
const received = (page) => page.evaluate(async () => {
  let energy = 0, seconds = 0;
  if (window.switchboard.sub) (await window.switchboard.sub.getStats()).forEach((x) => {
    if (x.type === "inbound-rtp" && x.kind === "audio") { energy += x.totalAudioEnergy || 0; seconds += x.totalSamplesDuration || 0; }
  });
  return { energy, seconds };
});
// Energy per second of played-out audio over the next window.
async function energyRate(page) {
  const a = await received(page);
  await sleep(WINDOW_MS);
  const b = await received(page);
  return { energyPerSecond: (b.energy - a.energy) / Math.max(1e-3, b.seconds - a.seconds), playedSeconds: b.seconds - a.seconds };
}
try {
  const host = await openPage(browser, hostUrl, "host");
  const guest = await openPage(browser, guestUrl, "guest");
  for (const page of [host, guest]) {
    await page.waitForFunction(() => window.switchboard && window.switchboard.decoded > 10, null, { timeout: 45000, polling: 500 });
  }
  await sleep(1000);
  const report = { speaking: await energyRate(host) };
  await guest.click("#mic");
  report.guestMicLabel = await guest.textContent("#mic");
  await sleep(1000); // what was in flight plays out
  report.muted = await energyRate(host);
  await guest.click("#mic");
  await sleep(1000);
  report.unmuted = await energyRate(host);

  report.endShown = { host: await host.isVisible("#end"), guest: await guest.isVisible("#end") };
  // The host is asked to confirm; a person says yes.
  host.on("dialog", (d) => d.accept());
  await host.click("#end");
  for (const [name, page] of [["host", host], ["guest", guest]]) {
    await page.waitForSelector("#ended:not([hidden])", { timeout: 15000 });
    report[`${name}Ended`] = await page.textContent("#ended-reason");
  }
  await sleep(3000); // nothing reconnects
  report.afterEnd = await Promise.all([host, guest].map((p) => p.evaluate(() => ({
    socket: window.switchboard.ws.readyState,
    media: !!(window.switchboard.pub || window.switchboard.sub),
    status: document.getElementById("status").textContent,
  }))));
  if (process.env.ARTIFACTS) await guest.screenshot({ path: `${process.env.ARTIFACTS}/client-meeting-ended.png` });
  console.log("RESULT " + JSON.stringify(report));
} finally {
  await browser.close();
}
