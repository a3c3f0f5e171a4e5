//! A network namespace joined to this host by a veth pair, for clients that must sit
//! behind a link the test controls: inside, a client (headless Chromium, a Rust peer)
//! reaches the host's services at [`Link::host_ip`] as over a real network, and the test
//! takes the link away and back ([`Link::set_up`]), as a laptop leaving Wi-Fi does, or
//! brings it back with another address, as one that moved to another network does.
//! Shaping and loss on the same link (tbf/htb, nftables) come with issue #30.
//!
//! Needs root (`ip netns`, `ip link`). The namespace, and with it both ends of the
//! veth pair, goes when the [`Link`] is dropped; a namespace left by a killed test is
//! removed by the next one that picks its name.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Link {
    /// The namespace's name (`ip netns exec <name> …`).
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
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
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
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let link = Link { name: name.clone(), host_ip, ns_ip, ns_ip_moved, prefix, ns_if: ns_if.clone() };
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
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the host's.
        let _ = ip(&["netns", "del", &self.name]);
    }
}
