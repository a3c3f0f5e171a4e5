// Headless Chromium pages in an end-to-end encrypted meeting (docs/e2ee.md). Two pages
// first: on the second the first's tile is made small then large (simulcast switches on
// keyframes, whose first bytes stay in clear). A third joins: each decodes the others'
// video and hears their audio through the worker's decryption; the page's crypto
// replays the known answers of crates/sframe/tests/vectors.json; the pairwise safety
// codes agree. Then the third page leaves: the other two start a new key generation,
// and their video keeps decoding. Reports, for the Rust side, the
// frames the first two pages sent (key id, counter, plaintext hash, with test hooks on)
// and the media keys each page held, the third's from before it left.
// Usage: node e2ee.mjs <vectors.json> <url-a> <url-b> <url-c>; prints `RESULT <json>`.
import { readFileSync } from "node:fs";
import { launch, openPage, until } from "./chromium.mjs";

const [vectorsPath, ...urls] = process.argv.slice(2);
const vectors = JSON.parse(readFileSync(vectorsPath, "utf8"));
const browser = await launch();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const open = (url, name) => openPage(browser, url, name, { viewport: { width: 1600, height: 1000 }, testHooks: true });

// What a page receives from each other participant: frames shown in its tile, the
// worker's decrypted and dropped counts, and its audio played out.
const received = (page) => page.evaluate(async () => {
  const s = window.switchboard;
  const w = await s.e2ee.stats();
  const out = { me: s.me, sendKid: s.e2ee.sendKid, decrypted: w.stats.decrypted, dropped: w.stats.dropped, why: w.stats.why, missing: w.stats.missing, encrypted: w.stats.encrypted, tiles: {}, audioEnergy: 0, audioSamples: 0, concealed: 0 };
  for (const [id, tile] of s.tiles) {
    if (id === s.me) continue;
    const v = tile.querySelector("video");
    out.tiles[id] = { frames: v.getVideoPlaybackQuality().totalVideoFrames, width: v.videoWidth };
  }
  (await s.sub.getStats()).forEach((x) => {
    if (x.type === "inbound-rtp" && x.kind === "audio") { out.audioEnergy += x.totalAudioEnergy || 0; out.audioSamples += x.totalSamplesReceived || 0; out.concealed += x.concealedSamples || 0; }
  });
  return out;
});
// The picture of `who`'s tile: its width and the frames shown so far.
const widthOf = (page, who) => page.evaluate((who) => {
  const v = window.switchboard.tiles.get(who).querySelector("video");
  return { w: v.videoWidth, frames: v.getVideoPlaybackQuality().totalVideoFrames };
}, who);
const setTile = (page, who, css) => page.evaluate(([who, css]) => {
  document.getElementById("grid").style.gridTemplateColumns = "max-content";
  Object.assign(window.switchboard.tiles.get(who).style, css);
}, [who, css]);

// Each of `pages` decrypted and shows every other page.
async function everyoneShown(pages) {
  for (const [i, page] of pages.entries()) {
    try {
      await until(page, async (n) => {
        const s = window.switchboard;
        if (!s || !s.e2ee || !s.e2ee.on || !s.me) return false;
        const others = [...s.tiles.keys()].filter((k) => k !== s.me && !k.endsWith(":screen"));
        if (others.length < n - 1) return false;
        const w = await s.e2ee.stats();
        return others.every((id) => (w.stats.decrypted[id] || 0) > 50
          && s.tiles.get(id).querySelector("video").getVideoPlaybackQuality().totalVideoFrames > 10);
      }, pages.length, { timeout: 60000, what: "every other page decrypted and shown" });
    } catch (e) {
      throw new Error(`page ${i} did not decode the others: ${JSON.stringify(await received(page))}: ${e.message}`);
    }
  }
}

try {
  const report = {};
  // Simulcast on encrypted frames, with two pages (three encoders of three layers each
  // are more than two cores carry): b shows a's camera small, then large.
  const [a, b] = [await open(urls[0], "a"), await open(urls[1], "b")];
  await everyoneShown([a, b]);
  const aId = await a.evaluate(() => window.switchboard.me);
  // The layer b decodes at the tile's first size (a larger one than the small tile's,
  // when b's estimate allows), then small (a switch down), then large (a switch up once
  // the estimate has probed up to it). Either switch shows the SFU switching layers on
  // encrypted keyframes; a loaded machine's estimate may allow only one of them.
  await sleep(3000);
  const initial = await widthOf(b, aId);
  await setTile(b, aId, { width: "160px", height: "90px", aspectRatio: "auto" });
  await sleep(5000);
  const small0 = await widthOf(b, aId); await sleep(1500); const small1 = await widthOf(b, aId);
  await setTile(b, aId, { width: "1280px", height: "720px", aspectRatio: "auto" });
  // The larger layer comes once the SFU's estimate of b's downlink has probed up to it.
  const widths = [];
  let large0 = small1, large1 = small1;
  for (let i = 0; i < 25 && large1.w <= small1.w; i++) {
    await sleep(1000);
    large0 = large1; large1 = await widthOf(b, aId); widths.push(large1.w);
  }
  // A loaded machine's estimate may step the layer back down a moment after a switch
  // up; that is adaptive quality, not a failed switch.
  await sleep(1500);
  large0 = large1; large1 = await widthOf(b, aId); widths.push(large1.w);
  report.simulcast = { initial: initial.w, small: small1.w, smallFrames: small1.frames - small0.frames, large: Math.max(initial.w, ...widths), largeFrames: large1.frames - large0.frames, widths };
  report.outbound = await a.evaluate(async () => {
    const out = [];
    (await window.switchboard.pub.getStats()).forEach((x) => {
      if (x.type === "outbound-rtp" && x.kind === "video") out.push({ rid: x.rid, fe: x.framesEncoded, kf: x.keyFramesEncoded, w: x.frameWidth, pli: x.pliCount, q: x.qualityLimitationReason, active: x.active, sent: x.packetsSent });
    });
    return { out, layers: window.switchboard.layersActive };
  });

  // c joins: a and b ratchet their keys for it.
  const c = await open(urls[2], "c");
  const pages = [a, b, c];
  await everyoneShown(pages);
  report.badge = await a.evaluate(() => !document.getElementById("e2ee-badge").hidden);
  report.recordHidden = await a.evaluate(() => document.getElementById("record").hidden);
  // The page's crypto against the known answers.
  report.selfTest = await a.evaluate(async (v) => {
    const bytes = (h) => Uint8Array.from(h.match(/../g) || [], (x) => parseInt(x, 16));
    const hex = (u) => [...new Uint8Array(u)].map((x) => x.toString(16).padStart(2, "0")).join("");
    const input = { frames: v.frames.map((f) => ({ ...f, base: bytes(f.base), plaintext: bytes(f.plaintext) })), ratchets: v.ratchets.map((r) => ({ base: bytes(r.base) })) };
    const out = await window.switchboard.e2ee.selfTest(input);
    const bad = [];
    out.frames.forEach((f, i) => { if (hex(f) !== v.frames[i].frame) bad.push(`frame ${v.frames[i].name}`); });
    out.ratchets.forEach((r, i) => { if (hex(r) !== v.ratchets[i].ratcheted) bad.push(`ratchet ${i}`); });
    for (const sc of v.safetyCodes) {
      const code = await window.switchboard.e2ee.safetyCodeOf(sc.idA, bytes(sc.pubA), sc.idB, bytes(sc.pubB));
      if (code !== sc.code) bad.push(`safety code ${sc.idA}/${sc.idB}: ${code} != ${sc.code}`);
    }
    return { checked: out.frames.length + out.ratchets.length + v.safetyCodes.length, bad };
  }, vectors);
  // Pairwise safety codes: the same on both sides of each pair.
  const ids = await Promise.all(pages.map((p) => p.evaluate(() => window.switchboard.me)));
  report.ids = ids;
  report.codes = {};
  for (const [i, p] of pages.entries()) {
    for (const [j, id] of ids.entries()) if (i !== j) report.codes[`${i}->${j}`] = await p.evaluate((id) => window.switchboard.e2ee.safetyCode(id), id);
  }
  report.codeShown = await a.evaluate(() => document.getElementById("people").textContent);
  await sleep(2000);

  report.before = await Promise.all(pages.map(received));
  report.keysOfC = await c.evaluate(() => window.switchboard.e2ee.exportKeys());
  // c leaves: a and b move to a new generation (KID = generation << 8 | step).
  const genOf = (kid) => Math.floor(kid / 256);
  const gens = await Promise.all([a, b].map((p) => p.evaluate(() => window.switchboard.e2ee.sendKid)));
  report.leftAt = Date.now();
  await c.click("#leave");
  for (const [i, p] of [a, b].entries()) {
    await p.waitForFunction((g) => Math.floor(window.switchboard.e2ee.sendKid / 256) > g, genOf(gens[i]), { timeout: 15000, polling: 200 });
  }
  await sleep(4000);
  // Video keeps decoding after the rekey: each of a and b decodes 30 more of the
  // other's frames than before c left, within 20 s.
  const framesOf = (p, id) => p.evaluate((id) => {
    const t = window.switchboard.tiles.get(id);
    return t ? t.querySelector("video").getVideoPlaybackQuality().totalVideoFrames : 0;
  }, id);
  const target = [report.before[0].tiles[ids[1]]?.frames ?? 0, report.before[1].tiles[ids[0]]?.frames ?? 0].map((f) => f + 30);
  for (const t0 = Date.now(); Date.now() - t0 < 20000; await sleep(500)) {
    if ((await framesOf(a, ids[1])) > target[0] && (await framesOf(b, ids[0])) > target[1]) break;
  }
  report.after = await Promise.all([a, b].map(received));
  report.gensBefore = gens;
  report.keysOfB = await b.evaluate(() => window.switchboard.e2ee.exportKeys());
  report.sentByA = await a.evaluate(async () => (await window.switchboard.e2ee.stats()).sent);
  report.sentByB = await b.evaluate(async () => (await window.switchboard.e2ee.stats()).sent);
  console.log("RESULT " + JSON.stringify(report));
} finally {
  await browser.close();
}
