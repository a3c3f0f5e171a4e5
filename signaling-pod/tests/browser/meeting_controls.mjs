// Two headless Chromium pages in one meeting, the host's first, and a Rust participant
// (`other`, by name) the test runs. Each control is clicked on one page and its effect
// checked on the other:
// - the guest raises a hand: the host's list shows it; the guest reloads the page and
//   the hand is still up on both;
// - the guest shares its screen: the host gets a second tile whose picture moves;
//   stopping the share removes it;
// - the guest's microphone: the audio energy arriving at the host (getStats
//   totalAudioEnergy of what it plays out) stops growing, and grows again on unmute;
// - the host mutes the guest (silence at the host; the guest's unmute is refused),
//   allows it again (the guest unmutes: sound), and stops the guest's camera (the
//   guest's page shows it off, the host's tile shows initials);
// - the host removes the Rust participant (the test checks it was told and closed);
// - the host starts a recording (both pages show the badge) and stops it;
// - the host clicks "End for all": both pages show that the meeting ended and do not
//   reconnect.
// Usage: node meeting_controls.mjs <host-url> <guest-url> <other-name>; prints `RESULT <json>`.
import { joinFromPreview, launch, openPage } from "./chromium.mjs";

const [hostUrl, guestUrl, otherName] = process.argv.slice(2);
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
  const report = {};
  const people = (page) => page.evaluate(() => [...document.querySelectorAll("#people li span")].map((e) => e.textContent));
  const guestId = await guest.evaluate(() => window.switchboard.me);

  // A raised hand: shown at the host, and still up after the guest reloads.
  await guest.click("#hand");
  await host.waitForFunction(() => [...document.querySelectorAll("#people li span")].some((e) => e.textContent.startsWith("✋ GIL")), null, { timeout: 10000 });
  await guest.reload();
  await joinFromPreview(guest);
  await guest.waitForFunction(() => window.switchboard && window.switchboard.decoded > 5, null, { timeout: 45000, polling: 250 });
  report.hand = { guestLabel: await guest.textContent("#hand"), hostSees: (await people(host)).filter((p) => p.includes("GIL")) };

  // Screen share: a second tile at the host, with a moving picture; gone when stopped.
  const newGuestId = await guest.evaluate(() => window.switchboard.me);
  await guest.click("#screen");
  const screenKey = `${newGuestId}:screen`;
  await host.waitForFunction((k) => window.switchboard.tiles.has(k), screenKey, { timeout: 20000, polling: 250 });
  // Two frames of the tile's video, half a second apart, drawn and compared.
  const frame = () => host.evaluate(async (k) => {
    const video = window.switchboard.tiles.get(k).querySelector("video");
    for (let i = 0; i < 40 && !(video.videoWidth > 0); i++) await new Promise((r) => setTimeout(r, 250));
    const canvas = document.createElement("canvas");
    canvas.width = 160; canvas.height = 90;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(video, 0, 0, 160, 90);
    const d = ctx.getImageData(0, 0, 160, 90).data;
    let sum = 0;
    for (let i = 0; i < d.length; i += 4) sum = (sum * 31 + d[i] + d[i + 1] * 3 + d[i + 2] * 7) >>> 0;
    return { width: video.videoWidth, sum };
  }, screenKey);
  const first = await frame();
  await sleep(700);
  const second = await frame();
  report.screen = { tiles: await host.evaluate(() => [...window.switchboard.tiles.keys()]), key: screenKey, width: second.width, moving: first.sum !== second.sum };
  await guest.click("#screen");
  report.screen.removed = await host.waitForFunction((k) => !window.switchboard.tiles.has(k), screenKey, { timeout: 15000, polling: 250 }).then(() => true, () => false);
  report.firstGuestId = guestId;

  report.speaking = await energyRate(host);
  await guest.click("#mic");
  report.guestMicLabel = await guest.textContent("#mic");
  await sleep(1000); // what was in flight plays out
  report.muted = await energyRate(host);
  await guest.click("#mic");
  await sleep(1000);
  report.unmuted = await energyRate(host);

  // The host's controls on the guest: mute (the guest cannot undo it), allow unmute
  // (the guest then can), stop the camera.
  const onGuest = (label) => `#people li:has-text("GIL") button:text-is("${label}")`;
  await host.click(onGuest("Mute"));
  await guest.waitForFunction(() => document.getElementById("mic").textContent === "Unmute", null, { timeout: 10000 });
  await sleep(1000);
  report.hostMuted = await energyRate(host);
  await guest.click("#mic"); // refused: a host's mute holds
  await sleep(1000);
  report.unmuteRefusedLabel = await guest.textContent("#mic");
  await host.click(onGuest("Allow unmute"));
  await guest.waitForFunction(() => [...document.querySelectorAll("#chat p")].some((p) => p.textContent.includes("allows you to turn your microphone")), null, { timeout: 10000 });
  await guest.click("#mic");
  await sleep(1000);
  report.allowedBack = { label: await guest.textContent("#mic"), ...(await energyRate(host)) };
  await host.click(onGuest("Stop video"));
  await guest.waitForFunction(() => document.getElementById("cam").textContent === "Start video", null, { timeout: 10000 });
  report.cameraStopped = await host.waitForFunction((id) => window.switchboard.tiles.get(id)?.classList.contains("camera-off"), guestId, { timeout: 10000 }).then(() => true, () => false);

  // The host removes the Rust participant from the people list.
  await host.click(`#people li:has-text("${otherName}") button:has-text("Remove")`);
  report.removedGone = await host.waitForFunction((n) => ![...document.querySelectorAll("#people li span")].some((e) => e.textContent.includes(n)), otherName, { timeout: 10000 }).then(() => true, () => false);

  // Recording: the host starts it (both pages show the badge), then stops it (the test
  // checks the RecordingJob was asked to stop; with no recorder here it stays running).
  await host.click("#record");
  for (const page of [host, guest]) await page.waitForSelector("#recording:not([hidden])", { timeout: 15000 });
  // Everyone is told a recording started; the host takes note.
  if (await host.isVisible("#consent")) await host.click("#consent-ok");
  report.recordLabel = await host.textContent("#record");
  await host.click("#record");
  await sleep(1000);
  report.recordErrors = await host.evaluate(() => document.getElementById("status").textContent);

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
