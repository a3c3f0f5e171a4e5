// Breakout rooms from the browser client: a host page and a guest page (headless
// Chromium, fake camera and microphone) in one meeting.
// - The guest writes in the main room's chat.
// - The host opens one room with a 5-minute timer from its "Breakout rooms" panel,
//   assigning the guest to it by hand (#bo-count, #bo-assignment, the guest's
//   [data-bo-assign] select, #bo-minutes, #bo-countdown, #bo-open).
// - The guest's page moves into the room: its badge (#bo-badge) names the room and
//   counts down; the main room's chat is not shown there; the session token kept for the
//   tab is the room's. The guest reloads the page and is in the room again.
// - The guest asks for help (#bo-ask-help); the host's page shows it (#help-banner) and
//   the host joins the room from there (#help-join): both pages decode each other's
//   video in the room; the guest's chat line there reaches the host.
// - The host's broadcast (#bo-broadcast-text, #bo-broadcast-send) shows on the guest's
//   page (#broadcast-banner).
// - The host closes the rooms with a 4 s warning (#bo-countdown, #bo-close): both pages
//   count down (#closing-banner), come back to the main meeting and decode each other's
//   video there; the main room's chat is back, the room's is not.
// In an E2EE meeting, each video check also reports the frames the page's worker
// decrypted meanwhile and the key id it sends with.
// Usage: node breakouts.mjs <host-url> <guest-url> <guest-name>; prints `RESULT <json>`.
import { joinFromPreview, launch, openPage, until } from "./chromium.mjs";

const [hostUrl, guestUrl, guestName] = process.argv.slice(2);
const browser = await launch();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const text = (page, selector) => page.evaluate((s) => document.querySelector(s)?.textContent ?? null, selector);
const shown = (page, selector) => page.evaluate((s) => { const e = document.querySelector(s); return !!e && !e.closest("[hidden]"); }, selector);
const place = (page) => page.evaluate(() => ({ meeting: window.switchboard.meeting, room: window.switchboard.room, me: window.switchboard.me }));
const chatLines = (page) => page.evaluate(() => [...document.querySelectorAll("#chat p")].map((p) => p.textContent));
const people = (page) => page.evaluate(() => [...document.querySelectorAll("#people li span")].map((e) => e.textContent));
// The session token kept for the tab (what a reload resumes with) is the one in use.
const keptToken = (page) => page.evaluate(() => {
  const key = Object.keys(sessionStorage).find((k) => k.startsWith("switchboard-grant:"));
  const kept = key && JSON.parse(sessionStorage.getItem(key));
  return !!kept && kept.sessionToken === window.switchboard.grant.sessionToken;
});
// Video frames decoded from `from`'s tile on the page's current subscriber connection.
const framesFrom = (page, from) => page.evaluate(async (from) => {
  const s = window.switchboard;
  const tile = s.tiles.get(from);
  if (!tile || !s.sub) return 0;
  const ids = new Set(tile.querySelector("video").srcObject.getVideoTracks().map((t) => t.id));
  let n = 0;
  (await s.sub.getStats()).forEach((x) => { if (x.type === "inbound-rtp" && x.kind === "video" && ids.has(x.trackIdentifier)) n += x.framesDecoded || 0; });
  return n;
}, from);
// In an E2EE meeting: frames from `from` the page's worker decrypted so far, and the
// key id it sends with now; null otherwise.
const e2eeOf = (page, from) => page.evaluate(async (from) => {
  const e = window.switchboard.e2ee;
  if (!e.on) return null;
  const w = await e.stats();
  return { decrypted: w.stats.decrypted[from] || 0, sendKid: e.sendKid };
}, from);
// `page` decodes `from`'s video: more than 10 frames, and 2 s later more again (in an
// E2EE meeting, decrypted by the page's worker meanwhile).
async function decodes(page, from, what) {
  await until(page, async (from) => {
    const s = window.switchboard;
    const tile = s.tiles.get(from);
    if (!tile || !s.sub) return false;
    const ids = new Set(tile.querySelector("video").srcObject.getVideoTracks().map((t) => t.id));
    let n = 0;
    (await s.sub.getStats()).forEach((x) => { if (x.type === "inbound-rtp" && x.kind === "video" && ids.has(x.trackIdentifier)) n += x.framesDecoded || 0; });
    return n > 10;
  }, from, { timeout: 45000, what });
  const [first, e2eeFirst] = [await framesFrom(page, from), await e2eeOf(page, from)];
  await sleep(2000);
  const [later, e2eeLater] = [await framesFrom(page, from), await e2eeOf(page, from)];
  const e2ee = e2eeFirst && { decryptedGrew: e2eeLater.decrypted - e2eeFirst.decrypted, sendKid: e2eeLater.sendKid };
  return { first, grew: later - first, e2ee, tiles: await page.evaluate(() => [...window.switchboard.tiles.keys()]) };
}
async function say(page, line) {
  await page.fill("#chat-text", line);
  await page.press("#chat-text", "Enter");
}
const artifacts = process.env.ARTIFACTS;

try {
  const host = await openPage(browser, hostUrl, "host");
  const guest = await openPage(browser, guestUrl, "guest");
  for (const page of [host, guest]) await until(page, () => window.switchboard && window.switchboard.decoded > 10, null, { timeout: 45000, what: "video in the main meeting" });
  const report = {};
  report.mainMedia = { host: await decodes(host, await guest.evaluate(() => window.switchboard.me), "the guest's video"), guest: await decodes(guest, await host.evaluate(() => window.switchboard.me), "the host's video") };
  const hostAt = await place(host), guestAt = await place(guest);
  report.start = { host: hostAt, guest: guestAt, title: await text(guest, "#title"), e2ee: await shown(guest, "#e2ee-badge"), panel: { host: await shown(host, "#bo-panel"), guest: await shown(guest, "#bo-panel") } };
  const [hostId, guestId] = [hostAt.me, guestAt.me];

  await say(guest, "said in the main room");
  await until(host, () => document.getElementById("chat").textContent.includes("said in the main room"), null, { what: "the guest's chat line at the host" });

  // The host opens one room, the guest put in it by hand, with a 5-minute timer.
  await host.fill("#bo-count", "1");
  await host.selectOption("#bo-assignment", "manual");
  await host.selectOption(`[data-bo-assign="${guestId}"]`, "0");
  await host.fill("#bo-minutes", "5");
  await host.fill("#bo-countdown", "4");
  await host.click("#bo-open");
  await until(guest, () => window.switchboard.room !== null, null, { timeout: 30000, what: "the guest moved into a room" });
  await until(host, (n) => document.querySelector('[data-bo-room="0"]')?.textContent.includes(n), guestName, { what: "the guest in room 0 of the host's panel" });
  await sleep(500);
  report.opened = {
    guest: await place(guest),
    badge: await text(guest, "#bo-badge"),
    badgeShown: await shown(guest, "#bo-badge"),
    askHelpShown: await shown(guest, "#bo-ask-help"),
    keptToken: await keptToken(guest),
    guestChat: await chatLines(guest),
    guestTitle: await text(guest, "#title"),
    hostPanelRoom: await text(host, '[data-bo-room="0"]'),
    hostPeople: await people(host),
    hostLive: await shown(host, "#bo-live"),
    hostBadgeShown: await shown(host, "#bo-badge"),
  };
  await sleep(2500);
  report.opened.badgeLater = await text(guest, "#bo-badge");

  // A reload in the room resumes there (the kept token is the room's).
  await guest.reload();
  await joinFromPreview(guest);
  await until(guest, () => window.switchboard && window.switchboard.room !== null && window.switchboard.admitted, null, { timeout: 30000, what: "the reloaded guest in its room" });
  report.reloaded = { guest: await place(guest), badge: await text(guest, "#bo-badge") };

  // Help: asked in the room, shown at the host, who joins the room from the banner.
  await guest.click("#bo-ask-help");
  await host.waitForSelector("#help-banner:not([hidden])", { timeout: 15000 });
  report.help = await text(host, "#help-text");
  await host.click("#help-join");
  await until(host, () => window.switchboard.room !== null, null, { timeout: 30000, what: "the host in the room" });
  report.visit = { host: await place(host), backShown: await shown(host, "#bo-back"), askHelpShown: await shown(host, "#bo-ask-help") };
  report.inRoom = { host: await decodes(host, guestId, "the guest's video in the room"), guest: await decodes(guest, hostId, "the host's video in the room") };
  report.inRoom.hostPeople = await people(host);

  await say(guest, "said in the room");
  await until(host, () => document.getElementById("chat").textContent.includes("said in the room"), null, { what: "the room's chat line at the host" });

  // A broadcast to every room.
  await host.fill("#bo-broadcast-text", "Two minutes left, wrap up");
  await host.click("#bo-broadcast-send");
  await guest.waitForSelector("#broadcast-banner:not([hidden])", { timeout: 15000 });
  report.broadcast = { banner: await text(guest, "#broadcast-text"), chat: (await chatLines(guest)).filter((l) => l.includes("Two minutes left")) };
  if (artifacts) {
    await host.screenshot({ path: `${artifacts}/client-breakout-host.png` });
    await guest.screenshot({ path: `${artifacts}/client-breakout-room.png` });
  }

  // Closing with a 4 s warning: both pages count down, then both are back home.
  const closedAt = Date.now();
  await host.click("#bo-close");
  for (const page of [host, guest]) await page.waitForSelector("#closing-banner:not([hidden])", { timeout: 10000 });
  report.closing = { host: await text(host, "#closing-banner"), guest: await text(guest, "#closing-banner"), guestBadge: await text(guest, "#bo-badge") };
  for (const page of [host, guest]) await until(page, () => window.switchboard.room === null, null, { timeout: 30000, what: "back in the main meeting" });
  report.closing.backAfterMs = Date.now() - closedAt;
  report.back = { host: await place(host), guest: await place(guest) };
  report.back.media = { host: await decodes(host, guestId, "the guest's video back in the main meeting"), guest: await decodes(guest, hostId, "the host's video back in the main meeting") };
  await until(host, () => !document.getElementById("bo-setup").hidden, null, { timeout: 10000, what: "the host's panel ready to open again" });
  await until(guest, () => document.getElementById("chat").textContent.includes("said in the main room"), null, { timeout: 10000, what: "the main room's chat back at the guest" });
  report.back.guestChat = await chatLines(guest);
  report.back.hostChat = await chatLines(host);
  report.back.badgeShown = await shown(guest, "#bo-badge");
  report.back.askHelpShown = await shown(guest, "#bo-ask-help");
  report.back.closingShown = await shown(guest, "#closing-banner");
  report.back.keptToken = await keptToken(guest);
  report.back.title = await text(guest, "#title");
  console.log("RESULT " + JSON.stringify(report));
} finally {
  await browser.close();
}
