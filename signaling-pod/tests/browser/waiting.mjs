// The host's page in a meeting with a waiting room: guests wait (Rust clients the test
// connects); the page shows them, a screenshot of the waiting room is kept, the host
// denies the first, admits the second, and admits the rest with "Admit all".
// Usage: node waiting.mjs <host-url> <denied> <admitted> [<others>...]; prints `RESULT <json>`.
import { launch, openPage } from "./chromium.mjs";

const [url, denied, admitted, ...rest] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await openPage(browser, url, "host");
  const waiting = (name) => `#waiting li:has-text("${name}")`;
  await page.waitForSelector(waiting(denied), { timeout: 30000 });
  await page.waitForSelector(waiting(admitted), { timeout: 30000 });
  const report = { waitingRoomShown: !(await page.evaluate(() => document.getElementById("waiting-room").hidden)) };
  if (process.env.ARTIFACTS) await page.screenshot({ path: `${process.env.ARTIFACTS}/client-waiting-room.png` });
  for (const name of rest) await page.waitForSelector(waiting(name), { timeout: 30000 });
  await page.click(`${waiting(denied)} button:has-text("Deny")`);
  await page.click(`${waiting(admitted)} button:has-text("Admit")`);
  // The rest come in together.
  if (rest.length) await page.click("#admit-all");
  await page.waitForFunction((n) => [...document.querySelectorAll("#people li")].some((li) => li.textContent.includes(n)), admitted.toUpperCase(), { timeout: 15000 });
  // "Admit all" takes effect apart from the admission above: wait for the list to empty
  // (the report says what is left if it does not).
  if (rest.length) await page.waitForFunction(() => document.querySelectorAll("#waiting li").length === 0, null, { timeout: 15000 }).catch(() => {});
  report.people = await page.evaluate(() => [...document.querySelectorAll("#people li span")].map((e) => e.textContent));
  report.stillWaiting = await page.evaluate(() => [...document.querySelectorAll("#waiting li span")].map((e) => e.textContent));
  console.log("RESULT " + JSON.stringify(report));
} finally {
  await browser.close();
}
