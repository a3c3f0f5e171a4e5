//! `netns::Link` as a bad network, measured with real traffic across it: bandwidth (tbf),
//! random loss (nftables), delay and jitter (NFQUEUE and the link's thread), and that the
//! link leaves nothing behind. Needs root, like the link itself.
//!
//! Each test has links of its own, so they run side by side; the senders are paced, so
//! what is measured is the link, not the machine.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use switchboard_e2e::netns::Link;

/// The datagrams of the bandwidth test.
const PAYLOAD: usize = 1200;
/// What tbf counts of such a datagram: the payload and its UDP, IP and Ethernet headers.
const ON_WIRE: u64 = PAYLOAD as u64 + 8 + 20 + 14;

fn link() -> Link {
    Link::create().expect("a network namespace (root)")
}

/// A UDP socket inside the link's namespace, on its address.
fn inside(link: &Link) -> UdpSocket {
    let ip = link.ns_ip;
    link.in_namespace(move || UdpSocket::bind((ip, 0))).expect("into the namespace").expect("a socket inside")
}

/// A UDP socket on the host's end of the link.
fn outside(link: &Link) -> UdpSocket {
    UdpSocket::bind((link.host_ip, 0)).expect("a socket on the host's end")
}

/// The datagrams' clock.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// What went through the link in [`throughput`].
struct Throughput {
    /// Bits per second, as tbf counts them.
    bps: f64,
    /// The median time from send to receipt, milliseconds: how long the link queued.
    queued_ms: f64,
}

/// Sends 1200-byte datagrams from `tx` to `rx` at `offered` bits per second for `span`,
/// and measures what `rx` received from `settle` on (the bucket's first burst and the
/// queue's filling are over by then).
fn throughput(tx: &UdpSocket, rx: &UdpSocket, offered: u64, span: Duration, settle: Duration) -> Throughput {
    let to = rx.local_addr().unwrap();
    let start = Instant::now();
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let counter = s.spawn(|| {
            rx.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let (mut buf, mut bytes, mut queued) = ([0u8; 2048], 0u64, Vec::new());
            while !done.load(Ordering::Relaxed) {
                if rx.recv(&mut buf).is_ok() {
                    let at = start.elapsed();
                    if at >= settle && at < span {
                        bytes += ON_WIRE;
                        let sent = Duration::from_nanos(u64::from_be_bytes(buf[..8].try_into().unwrap()));
                        queued.push((epoch().elapsed() - sent).as_secs_f64() * 1000.0);
                    }
                }
            }
            queued.sort_by(f64::total_cmp);
            let queued_ms = queued.get(queued.len() / 2).copied().unwrap_or(f64::NAN);
            Throughput { bps: (bytes * 8) as f64 / (span - settle).as_secs_f64(), queued_ms }
        });
        let mut payload = [0x5au8; PAYLOAD];
        let mut sent = 0u64;
        while start.elapsed() < span {
            let due = (start.elapsed().as_secs_f64() * offered as f64 / (ON_WIRE * 8) as f64) as u64;
            while sent < due {
                // Stamped on one clock for all rounds: what the previous round left queued
                // comes out at this one's start.
                payload[..8].copy_from_slice(&(epoch().elapsed().as_nanos() as u64).to_be_bytes());
                // A full tbf queue drops the datagram; send reports nothing of it.
                let _ = tx.send_to(&payload, to);
                sent += 1;
            }
            thread::sleep(Duration::from_millis(2));
        }
        done.store(true, Ordering::Relaxed);
        counter.join().unwrap()
    })
}

fn assert_near(what: &str, measured: f64, expected: f64, tolerance: f64) {
    eprintln!("{what}: {measured:.1} (expected {expected} ± {:.0} %)", tolerance * 100.0);
    assert!(
        (measured - expected).abs() <= expected * tolerance,
        "{what}: measured {measured:.1}, expected {expected} ± {:.0} %",
        tolerance * 100.0
    );
}

/// Overloaded three times, the link queues as an access link does (about 200 ms) and
/// drops the rest, rather than queueing without end.
fn assert_queued(what: &str, measured: &Throughput) {
    eprintln!("{what}: queued {:.1} ms (median)", measured.queued_ms);
    assert!((100.0..=300.0).contains(&measured.queued_ms), "{what}: queued {:.1} ms", measured.queued_ms);
}

#[test]
fn downlink_bandwidth_follows_the_rate_set_while_traffic_flows() {
    let link = link();
    let (tx, rx) = (outside(&link), inside(&link));
    let span = Duration::from_millis(2500);
    let settle = Duration::from_millis(500);
    for (rate, span) in [(3_000_000, span), (600_000, span), (150_000, span + Duration::from_millis(1000))] {
        // Changed in place, the flow going on: the link never goes away.
        link.set_downlink_bps(Some(rate)).unwrap();
        let measured = throughput(&tx, &rx, 3 * rate, span, settle);
        assert_near(&format!("downlink at {rate} bit/s"), measured.bps, rate as f64, 0.25);
        assert_queued(&format!("downlink at {rate} bit/s"), &measured);
    }
    link.set_downlink_bps(None).unwrap();
    let measured = throughput(&tx, &rx, 9_000_000, Duration::from_millis(1000), Duration::from_millis(200));
    assert_near("downlink unlimited, offered 9 Mbit/s", measured.bps, 9_000_000.0, 0.25);
    assert!(measured.queued_ms < 5.0, "unlimited, nothing queues: {:.1} ms", measured.queued_ms);
}

#[test]
fn uplink_bandwidth_is_limited_by_its_own_rate() {
    let link = link();
    // The downlink's limit is not the uplink's.
    link.set_downlink_bps(Some(150_000)).unwrap();
    link.set_uplink_bps(Some(600_000)).unwrap();
    let (tx, rx) = (inside(&link), outside(&link));
    let measured = throughput(&tx, &rx, 1_800_000, Duration::from_millis(2500), Duration::from_millis(500));
    assert_near("uplink at 600000 bit/s", measured.bps, 600_000.0, 0.25);
    assert_queued("uplink at 600000 bit/s", &measured);
}

/// Sends `count` small datagrams from `tx` to `rx`, paced at about 4000 a second, and
/// gives the share lost, in per cent.
fn loss(tx: &UdpSocket, rx: &UdpSocket, count: u32) -> f64 {
    let to = rx.local_addr().unwrap();
    static ROUNDS: AtomicU32 = AtomicU32::new(0);
    // Tells this round's datagrams from an earlier one's.
    let round = ROUNDS.fetch_add(1, Ordering::Relaxed);
    thread::scope(|s| {
        let counter = s.spawn(|| {
            rx.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            let (mut buf, mut seen) = ([0u8; 64], vec![false; count as usize]);
            // Until 300 ms of silence after the last datagram.
            while let Ok(n) = rx.recv(&mut buf) {
                if n == 8 && u32::from_be_bytes(buf[..4].try_into().unwrap()) == round {
                    seen[u32::from_be_bytes(buf[4..8].try_into().unwrap()) as usize] = true;
                }
            }
            seen.iter().filter(|s| **s).count()
        });
        for seq in 0..count {
            let mut datagram = [0u8; 8];
            datagram[..4].copy_from_slice(&round.to_be_bytes());
            datagram[4..].copy_from_slice(&seq.to_be_bytes());
            tx.send_to(&datagram, to).unwrap();
            if seq % 8 == 7 {
                thread::sleep(Duration::from_millis(2));
            }
        }
        let received = counter.join().unwrap();
        100.0 * (1.0 - received as f64 / count as f64)
    })
}

#[test]
fn random_loss_drops_the_share_set_each_way() {
    let link = link();
    let (host, ns) = (outside(&link), inside(&link));
    let count = 4000;
    assert_eq!(loss(&host, &ns, 1000), 0.0, "no loss before any is set");
    // Tolerances: four standard deviations of a binomial over 4000 packets.
    link.set_loss(0.05, 0.0).unwrap();
    let (down, up) = (loss(&host, &ns, count), loss(&ns, &host, 1000));
    assert_near("downlink loss at 5 %, per cent", down, 5.0, 0.3);
    assert_eq!(up, 0.0, "the uplink loses nothing");
    link.set_loss(0.20, 0.20).unwrap();
    let (down, up) = (loss(&host, &ns, count), loss(&ns, &host, count));
    assert_near("downlink loss at 20 %, per cent", down, 20.0, 0.15);
    assert_near("uplink loss at 20 %, per cent", up, 20.0, 0.15);
    link.set_loss(0.0, 0.0).unwrap();
    assert_eq!(loss(&host, &ns, 1000), 0.0, "no loss once it is lifted");
}

/// Round trips of `count` probes sent every 10 ms from `client` to the echo at `echo`, in
/// the order the answers arrived: (sequence number, round-trip time).
fn round_trips(client: &UdpSocket, echo: SocketAddr, count: u64) -> Vec<(u64, Duration)> {
    let base = Instant::now();
    thread::scope(|s| {
        let answers = s.spawn(|| {
            client.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
            let (mut buf, mut answers) = ([0u8; 16], Vec::new());
            while answers.len() < count as usize {
                let Ok(16) = client.recv(&mut buf) else { break };
                let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                let sent = Duration::from_nanos(u64::from_be_bytes(buf[8..].try_into().unwrap()));
                answers.push((seq, base.elapsed() - sent));
            }
            answers
        });
        for seq in 0..count {
            let mut probe = [0u8; 16];
            probe[..8].copy_from_slice(&seq.to_be_bytes());
            probe[8..].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
            client.send_to(&probe, echo).unwrap();
            thread::sleep(Duration::from_millis(10));
        }
        answers.join().unwrap()
    })
}

struct Stats {
    median: f64,
    p5: f64,
    p95: f64,
    std_dev: f64,
    reordered: usize,
}

fn stats(what: &str, answers: &[(u64, Duration)], count: u64) -> Stats {
    assert_eq!(answers.len() as u64, count, "{what}: every probe answered");
    let mut ms: Vec<f64> = answers.iter().map(|(_, rtt)| rtt.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    let std_dev = (ms.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / ms.len() as f64).sqrt();
    let mut highest = 0;
    let reordered = answers
        .iter()
        .filter(|(seq, _)| {
            let late = *seq < highest;
            highest = highest.max(*seq);
            late
        })
        .count();
    let stats = Stats { median: at(0.5), p5: at(0.05), p95: at(0.95), std_dev, reordered };
    eprintln!(
        "{what}: RTT median {:.1} ms, 5th–95th percentile {:.1}–{:.1} ms, σ {:.1} ms, {} of {count} reordered",
        stats.median, stats.p5, stats.p95, stats.std_dev, stats.reordered
    );
    stats
}

#[test]
fn delay_and_jitter_add_to_the_round_trip_and_go_away() {
    let link = link();
    let echo = inside(&link);
    let echo_at = echo.local_addr().unwrap();
    let client = outside(&link);
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            echo.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = echo.recv_from(&mut buf) {
                    let _ = echo.send_to(&buf[..n], from);
                }
            }
        });
        // Stops the echo even when an assertion fails, so the scope ends and the link drops.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        let count = 150;

        let before = stats("no delay", &round_trips(&client, echo_at, count), count);
        assert!(before.median < 5.0, "a plain veth answers in well under 5 ms");

        link.set_delay(Duration::from_millis(100), Duration::ZERO, Duration::from_millis(30)).unwrap();
        let jittery = stats("100 ms ± 30 ms down", &round_trips(&client, echo_at, count), count);
        assert!((jittery.median - before.median - 100.0).abs() <= 15.0, "the median grows by the delay");
        // Uniform over ±30 ms: σ = 30/√3 ≈ 17.3 ms, 5th–95th percentile 54 ms apart.
        assert!((11.0..=24.0).contains(&jittery.std_dev), "the spread is the jitter's");
        assert!(jittery.p95 - jittery.p5 >= 35.0 && jittery.p95 - jittery.p5 <= 65.0, "the spread is the jitter's");
        assert!(jittery.p5 >= 68.0 && jittery.p95 <= 135.0, "nothing is held outside delay ± jitter");
        assert!(jittery.reordered > 0, "jitter wider than the probes' spacing reorders them");

        link.set_delay(Duration::ZERO, Duration::from_millis(60), Duration::ZERO).unwrap();
        let up = stats("60 ms up", &round_trips(&client, echo_at, count), count);
        assert!((up.median - before.median - 60.0).abs() <= 15.0, "the uplink's delay, not the downlink's");
        assert!(up.p95 - up.p5 < 5.0, "no jitter set, little spread");
        assert_eq!(up.reordered, 0, "no jitter, no reordering");

        link.set_delay(Duration::ZERO, Duration::ZERO, Duration::ZERO).unwrap();
        let after = stats("delay removed", &round_trips(&client, echo_at, count), count);
        assert!(after.median < 5.0, "the round trip is back under 5 ms");
    });
}

fn output(c: &mut Command) -> (bool, String) {
    let out = c.output().expect("the command runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the delay thread of the link named `link` runs in this process.
fn delay_thread_runs(link: &str) -> bool {
    let name = format!("{link}-nfq");
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .any(|comm| comm.trim() == name)
}

/// The NFQUEUE rule of the host's end, if any: (the rule, its queue number).
fn host_queue_rule(host_if: &str) -> Option<(String, String)> {
    let (_, rules) = output(Command::new("iptables").args(["-w", "-t", "raw", "-S", "PREROUTING"]));
    let rule = rules.lines().find(|r| r.contains(&format!("-i {host_if} ")) && r.contains("NFQUEUE"))?;
    let num = rule.split_whitespace().skip_while(|w| *w != "--queue-num").nth(1)?.to_string();
    Some((rule.to_string(), num))
}

/// Whether a socket of this host's network namespace is bound to queue `num`.
fn queue_bound(num: &str) -> bool {
    let queues = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue").unwrap_or_default();
    queues.lines().any(|l| l.split_whitespace().next() == Some(num))
}

#[test]
fn a_dropped_link_leaves_no_table_qdisc_rule_or_thread() {
    let link = link();
    link.set_downlink_bps(Some(3_000_000)).unwrap();
    link.set_uplink_bps(Some(600_000)).unwrap();
    link.set_loss(0.01, 0.01).unwrap();
    link.set_delay(Duration::from_millis(20), Duration::from_millis(20), Duration::from_millis(5)).unwrap();

    let table = ["list", "table", "ip", &link.name];
    assert!(output(Command::new("nft").args(table)).0, "the host's table");
    assert!(output(link.command("nft").args(table)).0, "the namespace's table");
    assert!(output(Command::new("tc").args(["qdisc", "show", "dev", &link.host_if])).1.contains("tbf"));
    assert!(output(link.command("tc").args(["qdisc", "show", "dev", &link.ns_if])).1.contains("tbf"));
    let (_, num) = host_queue_rule(&link.host_if).expect("the host's NFQUEUE rule");
    assert!(queue_bound(&num), "the delay thread's host socket on queue {num}");
    assert!(delay_thread_runs(&link.name));

    // No delay: no rule, no thread.
    link.set_delay(Duration::ZERO, Duration::ZERO, Duration::ZERO).unwrap();
    assert!(host_queue_rule(&link.host_if).is_none(), "no NFQUEUE rule without delay");
    assert!(!queue_bound(&num) && !delay_thread_runs(&link.name), "no thread without delay");
    link.set_delay(Duration::from_millis(20), Duration::from_millis(20), Duration::ZERO).unwrap();
    assert!(host_queue_rule(&link.host_if).is_some() && delay_thread_runs(&link.name), "back with a delay");

    let (name, host_if) = (link.name.clone(), link.host_if.clone());
    drop(link);

    assert!(!output(Command::new("nft").args(["list", "table", "ip", &name])).0, "the host's table is gone");
    assert!(!output(Command::new("ip").args(["netns", "list"])).1.contains(&name), "the namespace is gone");
    let (_, qdiscs) = output(Command::new("tc").args(["qdisc", "show"]));
    assert!(!qdiscs.contains(&format!(" dev {host_if} ")), "the veth, and its qdisc, are gone: {qdiscs}");
    assert!(host_queue_rule(&host_if).is_none(), "the host's NFQUEUE rule is gone");
    assert!(!queue_bound(&num), "queue {num} is unbound");
    assert!(!delay_thread_runs(&name), "the delay thread has stopped");
}
