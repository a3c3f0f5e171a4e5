// Headless Chromium pages join one meeting through the browser client; each must
// decode video from the others (getStats framesDecoded). Saves a screenshot of the first.
// Usage: node peers.mjs <screenshot.png> <url>...
// PEERS_HOLD_MS keeps the pages in the meeting that long after they decoded video
// (so that another participant, e.g. a Rust client, can receive theirs).
import { launch, openPage } from "./chromium.mjs";

const [screenshot, ...urls] = process.argv.slice(2);
const holdMs = Number(process.env.PEERS_HOLD_MS || 0);
// Camera and microphone need a secure origin; signaling on a node's address (the
// real-pods tests) is plain http.
const browser = await launch(urls.map((u) => new URL(u).origin));
try {
  const pages = [];
  for (const [i, url] of urls.entries()) {
    pages.push(await openPage(browser, url, `page ${i}`));
  }
  for (const [i, page] of pages.entries()) {
    try {
      await page.waitForFunction(() => window.switchboard && window.switchboard.decoded > 10, null, { timeout: 45000, polling: 500 });
    } catch (e) {
      const status = await page.evaluate(() => document.getElementById("status").textContent);
      throw new Error(`page ${i} decoded no video (status: ${status}): ${e.message}`);
    }
  }
  await pages[0].screenshot({ path: screenshot });
  if (holdMs > 0) await new Promise((resolve) => setTimeout(resolve, holdMs));
  const report = [];
  for (const page of pages) {
    report.push(await page.evaluate(async () => ({
      frames: window.switchboard.decoded,
      tiles: window.switchboard.tiles.size,
      status: document.getElementById("status").textContent,
      // The "Recording" indicator is shown.
      recording: !document.getElementById("recording").hidden,
      // ...and everyone is asked to take note of it.
      consent: !document.getElementById("consent").hidden,
    })));
  }
  console.log("RESULT " + JSON.stringify(report));
} finally {
  await browser.close();
}
