// Headless Chromium as every browser test starts it: fake camera, microphone and
// screen, the media permissions granted, WebRTC on loopback with real addresses in the
// candidates, and `origins` (plain-http signaling on a node's address) treated as secure.
import { chromium } from "playwright-core";

// `executablePath`: another way to start it (e.g. a wrapper that runs it in a network
// namespace).
export function launch(origins = [], executablePath = process.env.CHROMIUM || "/usr/bin/chromium") {
  return chromium.launch({
    executablePath,
    args: [
      "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream",
      "--auto-select-desktop-capture-source=Entire screen",
      // Media goes to an SFU on 127.0.0.1, with real addresses in the candidates.
      "--allow-loopback-in-peer-connection",
      "--disable-features=WebRtcHideLocalIpsWithMdns",
      "--autoplay-policy=no-user-gesture-required",
      "--no-sandbox",
      ...[...new Set(origins)].map((o) => `--unsafely-treat-insecure-origin-as-secure=${o}`),
    ],
  });
}

// A page of the browser client in a context of its own (its own camera permission and
// session storage), logging as `name`, through the pre-join screen: the preview comes
// up and "Join now" is clicked, as a person would. `prejoin(page)` runs first when given
// (e.g. to turn the microphone off before joining).
// A viewer (a Webinar's attendee) has no pre-join screen: `viewer: true` skips it.
// `testHooks: true` turns on the client's test hooks (E2EE: the frames sent and the keys
// held), which no URL can turn on.
export async function openPage(browser, url, name, { viewport, prejoin, viewer, testHooks } = {}) {
  const context = await browser.newContext({ permissions: ["camera", "microphone"], ...(viewport ? { viewport } : {}) });
  if (testHooks) await context.addInitScript(() => { window.__switchboardTestHooks = true; });
  const page = await context.newPage();
  page.on("console", (m) => console.log(`[${name}] ${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console.log(`[${name}] error: ${e.message}`));
  await page.goto(url);
  if (!viewer) await joinFromPreview(page, prejoin);
  return page;
}

// The pre-join screen: waits for "Join now" to be ready and clicks it.
export async function joinFromPreview(page, prejoin) {
  await page.waitForSelector("#join:not([disabled])", { timeout: 30000 });
  if (prejoin) await prejoin(page);
  await page.click("#join");
}

// Waits until `fn` (evaluated in the page with `arg`) is truthy, checking every `polling`
// ms. Unlike page.waitForFunction, it awaits an async `fn` (a Promise is truthy, so
// waitForFunction would return at once).
export async function until(page, fn, arg, { timeout = 30000, polling = 500, what = "a condition" } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    if (await page.evaluate(fn, arg)) return;
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, polling));
  }
}
