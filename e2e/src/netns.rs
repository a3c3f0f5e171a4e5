//! A network namespace joined to this host by a veth pair, for clients that must sit
//! behind a link the test controls: inside, a client (headless Chromium, a Rust peer)
//! reaches the host's services at [`Link::host_ip`] as over a real network, and the test
//! takes the link away and back ([`Link::set_up`]), as a laptop leaving Wi-Fi does, or
//! brings it back with another address, as one that moved to another network does.
//!
//! The link also emulates a bad access network, each direction on its own and changeable
//! while media flows ("down" is host → namespace, "up" is namespace → host):
//!
//! * bandwidth ([`Link::set_downlink_bps`], [`Link::set_uplink_bps`]): a `tbf` qdisc on
//!   the sending end's veth, with a queue of about 200 ms and tail drop behind it, as a
//!   DSL, cable or mobile link has;
//! * random loss ([`Link::set_loss`]): nftables' `numgen random` in a table of the
//!   link's own;
//! * delay and jitter ([`Link::set_delay`]): an NFQUEUE rule hands the packets to a
//!   thread of this process that gives each its verdict after the delay ± the jitter.
//!
//! The kernels these tests run on have no `netem` (nor `fq`, nor tc's `matchall`), which
//! is why delay is emulated in userspace rather than by a qdisc, and why NFQUEUE is
//! reached through an iptables rule: nftables' own `queue` statement (`nft_queue`) is
//! missing too, while xtables' NFQUEUE target, which iptables-nft loads into nftables, is
//! there. So these need `tc`, `nft` and `iptables` (iptables-nft or legacy).
//!
//! Loss and delay act where a packet enters the receiving end (prerouting), not where it
//! leaves the sender: a packet dropped by netfilter on its way out fails the sender's
//! `send` with `EPERM`, which no real network does, and a sender's packet held in an
//! output queue holds its socket's send buffer. Shaping, in contrast, is on the sender's
//! egress, as the bottleneck of an access link is at its sending end; a full tbf queue
//! drops silently, as a modem does. So a packet is first queued by the bottleneck, then
//! may be lost, then is delayed.
//!
//! Needs root (`ip netns`, `ip link`). The namespace, and with it both ends of the
//! veth pair, their qdiscs and the namespace's rules, goes when the [`Link`] is dropped,
//! as do the host's rules and the delay thread; a namespace or host rule left by a killed
//! test is removed by the next one that picks its name.

use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rand::Rng;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Host → namespace, index into the per-direction arrays.
const DOWN: usize = 0;
/// Namespace → host.
const UP: usize = 1;
const DIRECTIONS: [usize; 2] = [DOWN, UP];

/// The largest frame on the veth as tbf counts it: a 1500-byte packet and its Ethernet header.
const FRAME: u64 = 1514;

pub struct Link {
    /// The namespace's name (`ip netns exec <name> …`); also the name of the link's
    /// nftables tables, on the host and in the namespace.
    pub name: String,
    /// The host's end: services the client must reach listen here.
    pub host_ip: Ipv4Addr,
    /// The client's address inside the namespace.
    pub ns_ip: Ipv4Addr,
    /// A second address of the same subnet, for a client that moves (a network change:
    /// its old address, and every path from it, is gone).
    pub ns_ip_moved: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// The interface inside the namespace (its link goes down and up).
    pub ns_if: String,
    /// The host's end of the veth pair.
    pub host_if: String,
    /// The NFQUEUE number of this link's delay, on the host and in the namespace: unique
    /// on the host as the link's name is.
    queue_num: u16,
    /// What is emulated now, and the delay thread.
    path: Mutex<Path>,
}

/// The link's emulation, per direction ([`DOWN`], [`UP`]).
#[derive(Default)]
struct Path {
    /// tbf's rate, bits per second; `None`: no qdisc of ours.
    rate: [Option<u64>; 2],
    /// Loss in packets per thousand.
    loss: [u16; 2],
    /// The link's nftables table exists on that direction's receiving side.
    table: [bool; 2],
    /// The NFQUEUE rule is in place on that direction's receiving side.
    queued: [bool; 2],
    /// Runs while some direction has a delay.
    emulator: Option<Emulator>,
}

fn run(c: &mut Command, input: Option<&str>) -> Result<(), String> {
    let what = format!("{c:?}");
    c.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("{what}: {e}"))?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(input.as_bytes()).map_err(|e| format!("{what}: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim())) }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run(Command::new("ip").args(args), None)
}

/// Moves the calling thread into the network namespace at `path` (`/var/run/netns/<name>`):
/// sockets it opens from then on belong to that namespace for their whole life.
fn enter(path: &str) -> Result<(), String> {
    let ns = File::open(path).map_err(|e| format!("{path}: {e}"))?;
    // SAFETY: setns(2) on a descriptor we own; it changes only this thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns {path}: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// tbf's bucket and queue, in bytes, for `bps`.
///
/// The bucket is 5 ms of the rate, and at least two full frames: tbf cannot pass a frame
/// larger than its bucket, and its timer fires late by a fraction of a millisecond on a
/// busy host, which a bucket of one frame would turn into lost rate at high rates. Much
/// more would let bursts through at the veth's speed, which an access link, serialising
/// every packet at its own rate, does not.
///
/// The queue is 200 ms of the rate (at least three full frames, so that a low rate still
/// queues a packet or two behind the one on the wire), then tail drop: what modems and
/// base stations hold. A sender that overshoots first sees the delay grow, as WebRTC's
/// delay-based congestion control expects of a real link, and only then loses packets; a
/// short queue would make every overshoot a loss, a long one (seconds) is bufferbloat.
/// So 3 Mbps → 3028-byte bucket, 75 000-byte queue; 600 kbps → 3028, 15 000; 150 kbps →
/// 3028, 4542 (three full frames: 240 ms).
fn tbf_sizes(bps: u64) -> (u64, u64) {
    let bytes_per_s = bps / 8;
    ((bytes_per_s * 5 / 1000).max(2 * FRAME), (bytes_per_s / 5).max(3 * FRAME))
}

impl Link {
    /// A namespace with one veth link to the host on its own /29 of 10.251.0.0/16.
    pub fn create() -> Result<Self, String> {
        // Distinct per process and per link, so parallel tests and test binaries do not meet.
        let n = (std::process::id() % 4000) * 16 + NEXT.fetch_add(1, Ordering::Relaxed) % 16;
        let (third, fourth) = ((n / 32) % 256, (n % 32) * 8);
        let host_ip = Ipv4Addr::new(10, 251, third as u8, fourth as u8 + 1);
        let ns_ip = Ipv4Addr::new(10, 251, third as u8, fourth as u8 + 2);
        let ns_ip_moved = Ipv4Addr::new(10, 251, third as u8, fourth as u8 + 3);
        let prefix = 29;
        let name = format!("sbnet{n}");
        let (host_if, ns_if) = (format!("sbh{n}"), format!("sbn{n}"));
        let queue_num = n as u16;
        let _ = ip(&["netns", "del", &name]);
        // A killed test's host rules would act on this link's interface, of the same name.
        let _ = run(Command::new("nft").args(["delete", "table", "ip", &name]), None);
        for _ in 0..4 {
            let rule = queue_rule("-D", &host_if, queue_num);
            if run(Command::new("iptables").args(&rule), None).is_err() {
                break;
            }
        }
        ip(&["netns", "add", &name])?;
        let link = Link {
            name: name.clone(),
            host_ip,
            ns_ip,
            ns_ip_moved,
            prefix,
            ns_if: ns_if.clone(),
            host_if: host_if.clone(),
            queue_num,
            path: Mutex::default(),
        };
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/{prefix}"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&["-n", &name, "addr", "add", &format!("{ns_ip}/{prefix}"), "dev", &ns_if])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        link.set_up(true)?;
        Ok(link)
    }

    /// Brings the namespace's end of the link up or down: down, nothing passes either
    /// way and the client's system sees no network (a browser fires `offline`).
    pub fn set_up(&self, up: bool) -> Result<(), String> {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, if up { "up" } else { "down" }])
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// `f` run on a thread inside the namespace, for a Rust peer behind the link: the
    /// sockets it opens belong to the namespace for their whole life, whichever thread
    /// uses them afterwards (a `std::net::UdpSocket` made here becomes a tokio one with
    /// `from_std`).
    pub fn in_namespace<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, String> {
        let path = format!("/var/run/netns/{}", self.name);
        thread::scope(|s| {
            let inside = s.spawn(|| enter(&path).map(|()| f()));
            inside.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Limits host → namespace to `bps` bits per second (tbf on the host's end: a bucket
    /// of 5 ms, a queue of 200 ms, then tail drop); `None` lifts the limit. A change keeps
    /// the qdisc, and what it has queued: the link never goes away.
    pub fn set_downlink_bps(&self, bps: Option<u64>) -> Result<(), String> {
        self.set_rate(DOWN, bps)
    }

    /// Limits namespace → host to `bps` bits per second (tbf on the namespace's end);
    /// `None` lifts the limit.
    pub fn set_uplink_bps(&self, bps: Option<u64>) -> Result<(), String> {
        self.set_rate(UP, bps)
    }

    /// Drops each IP packet host → namespace with probability `down` and each one
    /// namespace → host with probability `up` (0 to 1, in steps of 0.001), independently
    /// (no bursts). ARP is never dropped, so the link's neighbours stay known.
    pub fn set_loss(&self, down: f64, up: f64) -> Result<(), String> {
        let per_mille = |p: f64| {
            if (0.0..=1.0).contains(&p) {
                Ok((p * 1000.0).round() as u16)
            } else {
                Err(format!("loss {p} not in 0..=1"))
            }
        };
        let loss = [per_mille(down)?, per_mille(up)?];
        let mut path = self.path();
        for dir in DIRECTIONS {
            if loss[dir] == path.loss[dir] {
                continue;
            }
            self.write_table(&mut path, dir, loss[dir])?;
            path.loss[dir] = loss[dir];
        }
        Ok(())
    }

    /// Delays each IP packet host → namespace by `down`, each one namespace → host by
    /// `up`, both ± `jitter` (uniform, floored at no delay; a direction with no delay
    /// gets no jitter either). Packets leave in the order of their scheduled times, so
    /// jitter larger than the gap between two packets reorders them, as a real jittery
    /// path (several routes, a radio's retransmissions) does.
    ///
    /// A thread of this process holds the packets (NFQUEUE), waking each millisecond, so
    /// a packet leaves up to about a millisecond after its time. At most 4096 packets are
    /// held per direction (enough for a 100 ms delay up to some 400 Mbit/s of 1200-byte
    /// packets); past that, or should the thread not keep up, packets are dropped, not
    /// let through undelayed (the queue is not fail-open): a path that briefly skipped
    /// its delay would reorder and hide the very conditions under test, while drops are
    /// what an overloaded router does anyway. All three `Duration::ZERO` removes the rules
    /// and stops the thread, and what it held goes on at once.
    pub fn set_delay(&self, down: Duration, up: Duration, jitter: Duration) -> Result<(), String> {
        let timing = Timing { delay: [down, up], jitter };
        let mut path = self.path();
        if down.is_zero() && up.is_zero() {
            // Rules first: a packet queued with no thread to take it would be dropped.
            for dir in DIRECTIONS {
                self.set_queued(&mut path, dir, false)?;
            }
            path.emulator = None;
            return Ok(());
        }
        match &path.emulator {
            Some(emulator) => *emulator.shared.timing.lock().unwrap_or_else(|e| e.into_inner()) = timing,
            None => path.emulator = Some(Emulator::start(&self.name, self.queue_num, timing)?),
        }
        for dir in DIRECTIONS {
            self.set_queued(&mut path, dir, !timing.delay[dir].is_zero())?;
        }
        Ok(())
    }

    fn path(&self) -> MutexGuard<'_, Path> {
        self.path.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `program` run in the host (`false`) or in the namespace (`true`).
    fn on(&self, in_namespace: bool, program: &str) -> Command {
        if in_namespace { self.command(program) } else { Command::new(program) }
    }

    /// The sending end of `dir`: its egress is shaped.
    fn egress(&self, dir: usize) -> (bool, &str) {
        if dir == DOWN { (false, &self.host_if) } else { (true, &self.ns_if) }
    }

    /// The receiving end of `dir`: packets entering there are dropped and delayed.
    fn ingress(&self, dir: usize) -> (bool, &str) {
        if dir == DOWN { (true, &self.ns_if) } else { (false, &self.host_if) }
    }

    fn set_rate(&self, dir: usize, bps: Option<u64>) -> Result<(), String> {
        let (in_namespace, dev) = self.egress(dir);
        let mut path = self.path();
        let tc = || {
            let mut c = self.on(in_namespace, "tc");
            c.args(["qdisc"]);
            c
        };
        match bps {
            Some(0) => return Err("a rate of 0: take the link down instead (set_up)".into()),
            Some(bps) => {
                let (burst, limit) = tbf_sizes(bps);
                let (rate, burst, limit) = (format!("{bps}bit"), burst.to_string(), limit.to_string());
                // replace: a change of rate or sizes happens in place (tbf_change), the link stays.
                let args = ["replace", "dev", dev, "root", "tbf", "rate", &rate, "burst", &burst, "limit", &limit];
                run(tc().args(args), None)?;
            }
            None if path.rate[dir].is_some() => run(tc().args(["del", "dev", dev, "root"]), None)?,
            None => {}
        }
        path.rate[dir] = bps;
        Ok(())
    }

    /// Writes the link's table on `dir`'s receiving side, dropping `per_mille` of its
    /// packets. The table is created on first use and rewritten in one transaction, so
    /// a change never lets a packet through unruled.
    fn write_table(&self, path: &mut Path, dir: usize, per_mille: u16) -> Result<(), String> {
        let (in_namespace, iif) = self.ingress(dir);
        let t = &self.name;
        // Before iptables' raw table (-300), where the delay's rule is: a packet lost is
        // never held.
        let mut script = format!(
            "table ip {t} {{\n\tchain path {{\n\t\ttype filter hook prerouting priority -350; policy accept;\n\t}}\n}}\n\
             flush chain ip {t} path\n"
        );
        if per_mille > 0 {
            script += &format!("add rule ip {t} path iifname \"{iif}\" numgen random mod 1000 < {per_mille} drop\n");
        }
        run(self.on(in_namespace, "nft").args(["-f", "-"]), Some(&script))?;
        path.table[dir] = true;
        Ok(())
    }

    /// Adds or removes the rule that hands `dir`'s packets to the delay thread.
    fn set_queued(&self, path: &mut Path, dir: usize, queued: bool) -> Result<(), String> {
        if path.queued[dir] == queued {
            return Ok(());
        }
        let (in_namespace, iif) = self.ingress(dir);
        run(
            self.on(in_namespace, "iptables").args(queue_rule(if queued { "-A" } else { "-D" }, iif, self.queue_num)),
            None,
        )?;
        path.queued[dir] = queued;
        Ok(())
    }
}

/// iptables' arguments to add (`-A`) or delete (`-D`) the NFQUEUE rule for packets coming
/// in on `iif`. Without `--queue-bypass`: no thread listening, no packet passes.
fn queue_rule(op: &str, iif: &str, queue_num: u16) -> Vec<String> {
    let num = queue_num.to_string();
    ["-w", "-t", "raw", op, "PREROUTING", "-i", iif, "-j", "NFQUEUE", "--queue-num", &num].map(String::from).to_vec()
}

// Tests share a link between threads (`Arc<Link>`).
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Link>()
};

impl Drop for Link {
    fn drop(&mut self) {
        let mut path = std::mem::take(&mut *self.path());
        // The host's rules by hand, before the thread they feed stops; the namespace's go
        // with it.
        let _ = self.set_queued(&mut path, UP, false);
        if path.table[UP] {
            let _ = run(Command::new("nft").args(["delete", "table", "ip", &self.name]), None);
        }
        drop(path.emulator.take());
        // The veth pair (with its qdiscs) by hand too: the namespace itself is torn down
        // by the kernel later, once no socket made in it is left open, and its end of the
        // pair with it; this way the pair is gone when drop returns.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Delay per direction and the jitter around it.
#[derive(Clone, Copy)]
struct Timing {
    delay: [Duration; 2],
    jitter: Duration,
}

impl Timing {
    /// How long to hold a packet going `dir`.
    fn hold(&self, dir: usize) -> Duration {
        let delay = self.delay[dir];
        if self.jitter.is_zero() || delay.is_zero() {
            return delay;
        }
        let jitter = self.jitter.as_nanos() as i64;
        let nanos = delay.as_nanos() as i64 + rand::rng().random_range(-jitter..=jitter);
        Duration::from_nanos(nanos.max(0) as u64)
    }
}

struct Shared {
    stop: AtomicBool,
    timing: Mutex<Timing>,
}

/// The thread that holds delayed packets: one NFQUEUE socket in the namespace (down), one
/// on the host (up), both bound to the link's queue number.
struct Emulator {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// How often the thread looks for new packets. The crate gives no descriptor to wait on,
/// so the thread polls its sockets, never blocking; a millisecond keeps that cheap and
/// well under the delays and jitters emulated.
const TICK: Duration = Duration::from_millis(1);

/// Packets held per direction at most (the kernel counts those awaiting a verdict).
const QUEUE_MAX_LEN: u32 = 4096;

fn open_queue(num: u16) -> Result<nfq::Queue, String> {
    let e = |what: &'static str| move |err: io::Error| format!("NFQUEUE {num}: {what}: {err}");
    let mut queue = nfq::Queue::open().map_err(e("open"))?;
    queue.bind(num).map_err(e("bind"))?;
    // Metadata only: a verdict needs the packet's id, the packet stays in the kernel.
    queue.set_copy_range(num, 0).map_err(e("copy range"))?;
    queue.set_fail_open(num, false).map_err(e("fail-open"))?;
    queue.set_queue_max_len(num, QUEUE_MAX_LEN).map_err(e("max length"))?;
    queue.set_nonblocking(true);
    Ok(queue)
}

/// A packet held until `due`; the heap's top is the earliest (then the first received).
struct Held {
    due: Instant,
    seq: u64,
    dir: usize,
    msg: nfq::Message,
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
    }
}

impl Eq for Held {}

impl Emulator {
    /// Starts the thread once both queues are bound, so that no rule is ever added
    /// before a socket takes its packets.
    fn start(netns: &str, queue_num: u16, timing: Timing) -> Result<Self, String> {
        let shared = Arc::new(Shared { stop: AtomicBool::new(false), timing: Mutex::new(timing) });
        let (ready, bound) = mpsc::channel();
        let ns_path = format!("/var/run/netns/{netns}");
        let thread = thread::Builder::new()
            .name(format!("{netns}-nfq"))
            .spawn({
                let shared = shared.clone();
                move || {
                    // The host's queue first: the thread stays in the namespace once in.
                    let queues = open_queue(queue_num).and_then(|up| {
                        enter(&ns_path)?;
                        Ok([open_queue(queue_num)?, up])
                    });
                    match queues {
                        Ok(queues) => {
                            let _ = ready.send(Ok(()));
                            hold(queues, &shared);
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                }
            })
            .map_err(|e| format!("delay thread: {e}"))?;
        let started = bound.recv().unwrap_or_else(|_| Err("the delay thread died".into()));
        let emulator = Emulator { shared, thread: Some(thread) };
        started.map(|()| emulator)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread's loop: takes what the kernel queued, lets each packet go at its time; when
/// stopped, lets everything held go at once and unbinds.
fn hold(mut queues: [nfq::Queue; 2], shared: &Shared) {
    let mut held = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        let timing = *shared.timing.lock().unwrap_or_else(|e| e.into_inner());
        for (dir, queue) in queues.iter_mut().enumerate() {
            loop {
                match queue.recv() {
                    Ok(msg) => {
                        held.push(Held { due: Instant::now() + timing.hold(dir), seq, dir, msg });
                        seq += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // A verdict for a packet the kernel already dropped (its device
                        // went down) comes back as an error; nothing to do.
                        tracing::debug!(error = %e, "NFQUEUE");
                        break;
                    }
                }
            }
        }
        let now = Instant::now();
        while held.peek().is_some_and(|h: &Held| stopping || h.due <= now) {
            let h = held.pop().expect("peeked");
            let _ = queues[h.dir].verdict(h.msg);
        }
        if stopping {
            break;
        }
        let wait = held.peek().map_or(TICK, |h| h.due.saturating_duration_since(now).min(TICK));
        if !wait.is_zero() {
            thread::sleep(wait);
        }
    }
    // Closing the sockets (dropping `queues`) unbinds them.
}
