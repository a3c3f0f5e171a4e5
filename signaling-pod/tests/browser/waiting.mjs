// The host's page in a meeting with a waiting room: two guests wait (Rust clients the
// test connects); the page shows them, a screenshot of the waiting room is kept, the
// host denies the first and admits the second.
// Usage: node waiting.mjs <host-url> <first-guest-name> <second-guest-name>; prints `RESULT <json>`.
import { launch, openPage } from "./chromium.mjs";

const [url, denied, admitted] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await openPage(browser, url, "host");
  const waiting = (name) => `#waiting li:has-text("${name}")`;
  await page.waitForSelector(waiting(denied), { timeout: 30000 });
  await page.waitForSelector(waiting(admitted), { timeout: 30000 });
  const report = { waitingRoomShown: !(await page.evaluate(() => document.getElementById("waiting-room").hidden)) };
  if (process.env.ARTIFACTS) await page.screenshot({ path: `${process.env.ARTIFACTS}/client-waiting-room.png` });
  await page.click(`${waiting(denied)} button:has-text("Deny")`);
  await page.click(`${waiting(admitted)} button:has-text("Admit")`);
  await page.waitForFunction((n) => [...document.querySelectorAll("#people li")].some((li) => li.textContent.includes(n)), admitted.toUpperCase(), { timeout: 15000 });
  report.people = await page.evaluate(() => [...document.querySelectorAll("#people li span")].map((e) => e.textContent));
  report.stillWaiting = await page.evaluate(() => [...document.querySelectorAll("#waiting li span")].map((e) => e.textContent));
  console.log("RESULT " + JSON.stringify(report));
} finally {
  await browser.close();
}
