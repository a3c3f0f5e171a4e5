// Headless Chromium as every browser test starts it: fake camera, microphone and
// screen, the media permissions granted, WebRTC on loopback with real addresses in the
// candidates, and `origins` (plain-http signaling on a node's address) treated as secure.
import { chromium } from "playwright-core";

export function launch(origins = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
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
