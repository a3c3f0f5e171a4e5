"use strict";
// End-to-end encryption of media frames (docs/e2ee.md): SFrame (RFC 9605) with the
// AES_128_GCM_SHA256_128 suite and the header moved to a trailer, so the codec's first
// bytes stay in clear at the start of the frame (the SFU switches simulcast layers on
// VP8 keyframes, which it finds there). One worker per page: every sender's and
// receiver's RTCRtpScriptTransform runs here, so one counter per key id covers all of
// this page's tracks and layers. The page's main thread does the key exchange and
// posts raw media keys here; keys never leave this worker again (test hooks aside).

const SUITE = 0x0004;
const RATCHET_INFO = "SFrame 1.0 Ratchet";
// The bytes left in clear: a VP8 keyframe's frame tag, start code and size (libwebrtc's
// depacketizer and the SFU read them), a delta frame's tag (its P bit), Opus's TOC.
const CLEAR = { key: 10, delta: 3, audio: 1 };
// Superseded receive keys stay this long for frames still in flight.
const OLD_KEY_MS = 2000;
// Frames older than this many counters behind the newest are replays.
const REPLAY_WINDOW = 1024;
const enc = new TextEncoder();

let hooks = false;
let send = null; // { kid, key, salt, ctr }
const receivers = new Map(); // sender -> { kid (newest), base, keys: Map kid -> {key, salt, until}, seen: Map kid -> {top, set} }
const transformers = new Map(); // sender -> Set of receive transformers (for key frame requests)
// dropped: frames that did not open, per sender; why: per reason (shape, auth, replay).
const stats = { encrypted: 0, sendDropped: 0, decrypted: {}, dropped: {}, why: {}, missing: {}, unsupported: 0 };
// Test hooks: the last frames sent, {kind, type, kid, ctr, clear, len, sha (of the plaintext)}.
const sentLog = [];
const SENT_LOG_MAX = 3000;
const missingAsked = new Map(); // sender -> when we last asked the page for its key
const starved = new Set(); // senders whose video frames were dropped for want of a key

function bump(map, k) { map[k] = (map[k] || 0) + 1; }
function drop(sender, why) { bump(stats.dropped, sender); bump(stats.why, why); }

async function hkdf(base, info, bits) {
  const k = await crypto.subtle.importKey("raw", base, "HKDF", false, ["deriveBits"]);
  return new Uint8Array(await crypto.subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info }, k, bits));
}
function u64be(n) { const b = new Uint8Array(8); for (let i = 7; i >= 0; i--) { b[i] = n % 256; n = Math.floor(n / 256); } return b; }
function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}
function label(prefix, kid) {
  return concat(enc.encode(prefix), u64be(kid), new Uint8Array([SUITE >> 8, SUITE & 255]));
}
async function ratchet(base) { return hkdf(base, enc.encode(RATCHET_INFO), 256); }
async function derive(base, kid) {
  const raw = await hkdf(base, label("SFrame 1.0 Secret key ", kid), 128);
  const salt = await hkdf(base, label("SFrame 1.0 Secret salt ", kid), 96);
  const key = await crypto.subtle.importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);
  return { key, salt };
}
function nonce(salt, ctr) {
  const n = salt.slice();
  const c = u64be(ctr);
  for (let i = 0; i < 8; i++) n[4 + i] ^= c[i];
  return n;
}
// Minimal big-endian bytes of n (n > 0).
function minimal(n) { const b = []; while (n > 0) { b.unshift(n % 256); n = Math.floor(n / 256); } return b; }
// RFC 9605 section 4.3: config byte X|KKK|Y|CCC, then the long KID, then the long CTR.
function header(kid, ctr) {
  let cfg = 0; const rest = [];
  if (kid < 8) cfg |= kid << 4; else { const b = minimal(kid); cfg |= 0x80 | ((b.length - 1) << 4); rest.push(...b); }
  if (ctr < 8) cfg |= ctr; else { const b = minimal(ctr); cfg |= 0x08 | (b.length - 1); rest.push(...b); }
  return new Uint8Array([cfg, ...rest]);
}
function parseHeader(h) {
  if (h.length < 1) return null;
  const cfg = h[0]; let at = 1;
  const read = (len) => { if (at + len > h.length) return null; let v = 0; for (let i = 0; i < len; i++) v = v * 256 + h[at + i]; at += len; return v; };
  const kid = cfg & 0x80 ? read(((cfg >> 4) & 7) + 1) : (cfg >> 4) & 7;
  const ctr = cfg & 0x08 ? read((cfg & 7) + 1) : cfg & 7;
  if (kid === null || ctr === null || at !== h.length) return null;
  return { kid, ctr };
}

// Encrypts one frame's bytes: U || AES-GCM(P[n..]) || H || n || L, AAD = H || n || L || U.
async function seal(k, data, n, ctr) {
  const h = header(k.kid, ctr);
  const tail = concat(h, new Uint8Array([n, 0x20 | h.length]));
  const clear = data.subarray(0, n);
  const sealed = new Uint8Array(await crypto.subtle.encrypt({ name: "AES-GCM", iv: nonce(k.salt, ctr), additionalData: concat(tail, clear), tagLength: 128 }, k.key, data.subarray(n)));
  return concat(clear, sealed, tail);
}
// The trailer of an encrypted frame, or null when it has not the shape of one.
function trailer(data) {
  const len = data.length;
  if (len < 2) return null;
  const L = data[len - 1], n = data[len - 2], h = L & 31;
  if (L >> 5 !== 1 || h < 1 || h > 17 || len < n + 16 + h + 2) return null;
  const parsed = parseHeader(data.subarray(len - 2 - h, len - 2));
  return parsed && { ...parsed, n, h };
}

function clearBytes(frame, kind) {
  if (kind === "audio") return CLEAR.audio;
  return frame.type === "key" ? CLEAR.key : CLEAR.delta;
}
// v1 encrypts VP8 and Opus only (their clear bytes are known); anything else is dropped.
function supported(frame, kind) {
  const mime = frame.getMetadata && frame.getMetadata().mimeType;
  if (!mime) return true;
  return kind === "audio" ? mime.toLowerCase() === "audio/opus" : mime.toLowerCase() === "video/vp8";
}

async function sha256hex(bytes) {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return [...d].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function encryptFrame(kind, frame, controller) {
  const data = new Uint8Array(frame.data);
  if (data.length === 0) { controller.enqueue(frame); return; }
  const k = send;
  if (!k || !supported(frame, kind)) { if (k) stats.unsupported++; stats.sendDropped++; return; }
  // The counter is taken before any await: no two frames share (KID, CTR).
  const ctr = k.ctr++;
  const n = Math.min(clearBytes(frame, kind), data.length);
  if (hooks) {
    const entry = { kind, type: frame.type || "audio", kid: k.kid, ctr, clear: n, len: data.length };
    sentLog.push(entry);
    if (sentLog.length > SENT_LOG_MAX) sentLog.shift();
    entry.sha = await sha256hex(data);
  }
  frame.data = (await seal(k, data, n, ctr)).buffer;
  stats.encrypted++;
  controller.enqueue(frame);
}

// The key for `kid` of `sender`: one it holds, or a later ratchet step of the same
// generation, which it derives (and keeps: a join ratchets every sender's key).
async function keyFor(sender, kid) {
  const r = receivers.get(sender);
  if (!r) return null;
  const have = r.keys.get(kid);
  if (have && have.until && have.until < Date.now()) { r.keys.delete(kid); return null; }
  if (have) return have;
  const gen = Math.floor(kid / 256), step = kid % 256;
  if (gen !== Math.floor(r.kid / 256) || step <= r.kid % 256) return null;
  let base = r.base;
  for (let s = r.kid % 256; s < step; s++) base = await ratchet(base);
  // Another frame may have installed it meanwhile.
  if (r.keys.has(kid)) return r.keys.get(kid);
  install(r, kid, base, await derive(base, kid));
  return r.keys.get(kid);
}
function install(r, kid, base, k) {
  const now = Date.now();
  for (const [old, v] of r.keys) if (v.until && v.until < now) r.keys.delete(old);
  // A later generation always has a larger KID (generation << 8 | step): a newer key
  // supersedes the others, which serve frames in flight a moment longer; an older one
  // (a late or repeated delivery) is kept as already superseded.
  if (kid >= r.kid) {
    for (const [old, v] of r.keys) if (old !== kid && !v.until) v.until = now + OLD_KEY_MS;
    r.kid = kid; r.base = base;
  } else {
    k.until = now + OLD_KEY_MS;
  }
  r.keys.set(kid, k);
}
// Replay protection per (sender, KID): a CTR seen, or more than REPLAY_WINDOW behind
// the newest, is dropped.
function fresh(r, kid, ctr) {
  let w = r.seen.get(kid);
  if (!w) { w = { top: -1, set: new Set() }; r.seen.set(kid, w); if (r.seen.size > 8) r.seen.delete(r.seen.keys().next().value); }
  if (ctr + REPLAY_WINDOW <= w.top || w.set.has(ctr)) return false;
  w.set.add(ctr);
  if (ctr > w.top) { w.top = ctr; for (const c of w.set) if (c + REPLAY_WINDOW <= ctr) w.set.delete(c); }
  return true;
}

async function decryptFrame(sender, frame, controller) {
  const data = new Uint8Array(frame.data);
  if (data.length === 0) { controller.enqueue(frame); return; }
  const t = trailer(data);
  if (!t) { drop(sender, "shape"); return; }
  const k = await keyFor(sender, t.kid);
  if (!k) { bump(stats.missing, sender); starved.add(sender); askForKey(sender); return; }
  const r = receivers.get(sender);
  const end = data.length - 2 - t.h;
  const tail = data.subarray(end);
  const clear = data.subarray(0, t.n);
  let plain;
  try {
    plain = new Uint8Array(await crypto.subtle.decrypt({ name: "AES-GCM", iv: nonce(k.salt, t.ctr), additionalData: concat(tail, clear), tagLength: 128 }, k.key, data.subarray(t.n, end)));
  } catch (_) { drop(sender, "auth"); return; }
  if (!fresh(r, t.kid, t.ctr)) { drop(sender, "replay"); return; }
  frame.data = concat(clear, plain).buffer;
  bump(stats.decrypted, sender);
  controller.enqueue(frame);
}

// A sender's frames arrive and no key opens them: the page asks that sender to send
// its key again, at most every 5 s.
function askForKey(sender) {
  const now = Date.now();
  if (now - (missingAsked.get(sender) || 0) < 5000) return;
  missingAsked.set(sender, now);
  self.postMessage({ op: "missingKey", sender });
}

function attach(transformer) {
  const { side, kind, sender } = transformer.options;
  if (side === "receive") {
    if (!transformers.has(sender)) transformers.set(sender, new Set());
    if (kind === "video") transformers.get(sender).add(transformer);
  }
  const transform = new TransformStream({
    transform: side === "send" ? (frame, c) => encryptFrame(kind, frame, c) : (frame, c) => decryptFrame(sender, frame, c),
  });
  transformer.readable.pipeThrough(transform).pipeTo(transformer.writable).catch(() => {});
}

self.onrtctransform = (event) => attach(event.transformer);

self.onmessage = async (event) => {
  const m = event.data;
  switch (m.op) {
    case "hooks": hooks = true; break;
    // The key this page encrypts with from now on (its counter starts at 0).
    case "sendKey": send = { kid: m.kid, ctr: 0, ...(await derive(m.base, m.kid)) }; break;
    case "stopSending": send = null; break;
    case "receiveKey": {
      let r = receivers.get(m.sender);
      if (!r) { r = { kid: m.kid, base: m.base, keys: new Map(), seen: new Map() }; receivers.set(m.sender, r); }
      install(r, m.kid, m.base, await derive(m.base, m.kid));
      missingAsked.delete(m.sender);
      // Its frames were dropped while the key was missing: ask for a keyframe rather
      // than waiting for the decoder to notice.
      if (starved.delete(m.sender)) for (const t of transformers.get(m.sender) || []) try { t.sendKeyFrameRequest(); } catch (_) {}
      break;
    }
    // A member left: nothing of its keys stays.
    case "forget": receivers.delete(m.sender); transformers.delete(m.sender); starved.delete(m.sender); break;
    case "stats": self.postMessage({ op: "stats", id: m.id, stats, sendKid: send && send.kid, sent: hooks ? sentLog : undefined }); break;
    // Test hook: the page replays docs' vectors through this code.
    case "selfTest": {
      const out = [];
      for (const v of m.vectors.frames) {
        const k = { kid: v.kid, ...(await derive(v.base, v.kid)) };
        out.push(await seal(k, v.plaintext, v.clear, v.ctr));
      }
      const ratchets = [];
      for (const v of m.vectors.ratchets) ratchets.push(await ratchet(v.base));
      self.postMessage({ op: "selfTest", id: m.id, frames: out, ratchets });
      break;
    }
  }
};
