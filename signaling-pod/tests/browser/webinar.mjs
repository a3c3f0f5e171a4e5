// A Webinar from two headless Chromium pages: the host (camera and microphone) and an
// attendee, who joins receive-only. The attendee:
// - sees the host's video, the host in the people list and the audience counted
//   (other attendees are not listed to it);
// - raises its hand, which the host's page shows;
// - is invited to speak from the host's page ("Invite to speak"): its page reconnects
//   media and publishes, its hand goes down, and the host hears it (the audio energy
//   the host's page plays out grows, from nothing before);
// - is moved back to the audience: the host hears nothing from it again.
// Usage: node webinar.mjs <host-url> <attendee-url> <attendee-name>; prints `RESULT <json>`.
import { launch, openPage, until } from "./chromium.mjs";

const [hostUrl, attendeeUrl, attendeeName] = process.argv.slice(2);
const browser = await launch();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const energy = (page) => page.evaluate(async () => {
  let e = 0;
  if (window.switchboard.sub) (await window.switchboard.sub.getStats()).forEach((x) => {
    if (x.type === "inbound-rtp" && x.kind === "audio") e += x.totalAudioEnergy || 0;
  });
  return e;
});
// Audio energy the page played out over the next 2 s.
async function heard(page) {
  const a = await energy(page);
  await sleep(2000);
  return (await energy(page)) - a;
}
const peopleText = (page) => page.evaluate(() => [...document.querySelectorAll("#people li > span")].map((s) => s.textContent));
try {
  const host = await openPage(browser, hostUrl, "host");
  const attendee = await openPage(browser, attendeeUrl, "attendee", { viewer: true });
  await attendee.waitForFunction(() => window.switchboard && window.switchboard.decoded > 10, null, { timeout: 45000, polling: 500 });
  const report = {};
  report.attendeeRole = await attendee.evaluate(() => window.switchboard.role);
  report.attendeeSees = await peopleText(attendee);
  report.audience = await attendee.textContent("#audience");
  report.attendeeControls = await attendee.evaluate(() => ({ mic: !document.getElementById("mic").hidden, cam: !document.getElementById("cam").hidden }));
  report.heardBefore = await heard(host);

  await attendee.click("#hand");
  await host.waitForFunction((n) => [...document.querySelectorAll("#people li > span")].some((s) => s.textContent.startsWith("✋") && s.textContent.includes(n)), attendeeName, { timeout: 10000 });
  report.hostSawHand = true;

  await host.click(`button[aria-label="Invite to speak: ${attendeeName}"]`);
  const invitedAt = Date.now();
  await attendee.waitForFunction(() => window.switchboard.role === "participant" && window.switchboard.pub && window.switchboard.pub.connectionState === "connected", null, { timeout: 20000, polling: 250 });
  await until(host, async () => {
    let e = 0;
    (await window.switchboard.sub.getStats()).forEach((x) => { if (x.type === "inbound-rtp" && x.kind === "audio") e += x.totalAudioEnergy || 0; });
    return e > 0;
  }, null, { timeout: 20000, polling: 250, what: "the host hearing the invited attendee" });
  report.heardAfterMs = Date.now() - invitedAt;
  report.heardAfter = await heard(host);
  report.handAfter = await attendee.textContent("#hand");
  report.attendeeControlsAfter = await attendee.evaluate(() => ({ mic: !document.getElementById("mic").hidden, cam: !document.getElementById("cam").hidden }));

  await host.click(`button[aria-label="Move to audience: ${attendeeName}"]`);
  await attendee.waitForFunction(() => window.switchboard.role === "viewer", null, { timeout: 10000 });
  await sleep(1500);
  report.heardMovedBack = await heard(host);
  report.attendeeLocalAfter = await attendee.evaluate(() => !!window.switchboard.local);
  console.log("RESULT " + JSON.stringify(report));
} finally {
  await browser.close();
}
