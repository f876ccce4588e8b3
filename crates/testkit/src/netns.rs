//! Network namespaces for tests that need iptables: a "pod" host and a "vendor" host joined by a
//! veth pair, each with its own loopback, addresses and netfilter tables.
//!
//! Creating namespaces needs root (or `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`), `ip` (iproute2) and,
//! for redirect rules, `iptables`. A test that uses this module fails loudly, naming what is
//! missing, when it cannot create them: it never passes by skipping. Namespaces are deleted when
//! dropped.
//!
//! Code runs inside a namespace in two ways: a process started through [`Netns::command`]
//! (`ip netns exec`), or a future run on a [`NsRuntime`], a Tokio runtime whose every thread
//! joined the namespace when it started (a namespace is a per-thread property on Linux). The
//! future must be spawned, not `block_on`'d, since `block_on` polls on the calling thread.

use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Fails the test, loudly, unless namespaces can be made here.
pub fn require_root() {
    let uid = rustix::process::geteuid();
    assert!(
        uid.is_root(),
        "this test creates network namespaces and iptables rules and must run as root \
         (it does not skip itself); run it as root, e.g. in CI, or filter it out explicitly"
    );
    for tool in ["ip", "iptables", "ip6tables"] {
        let found = Command::new(tool).arg("--version").output().is_ok()
            || Command::new(tool).arg("-V").output().is_ok();
        assert!(
            found,
            "this test needs `{tool}` (apt-get install iproute2 iptables)"
        );
    }
}

/// Runs a command and fails the test with its output unless it succeeds.
pub fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// A new namespace with its loopback up. The name is unique to this process and call.
    pub fn create(tag: &str) -> Netns {
        require_root();
        let name = format!(
            "pt-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` started inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `ip -n <ns> args…`, failing the test unless it succeeds.
    pub fn ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A Tokio runtime whose threads all live in this namespace.
    pub fn runtime(&self) -> NsRuntime {
        let path = format!("/run/netns/{}", self.name);
        let file = Arc::new(File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}")));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .expect("a runtime thread joins the network namespace");
            })
            .build()
            .expect("a runtime starts");
        NsRuntime {
            runtime: Some(runtime),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// A Tokio runtime inside a namespace; see the module documentation.
#[derive(Debug)]
pub struct NsRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl NsRuntime {
    /// Runs `future` on one of the runtime's threads (inside the namespace) to completion.
    pub fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self.runtime.as_ref().expect("present until drop");
        runtime
            .block_on(runtime.spawn(future))
            .expect("the task completes without panicking")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Two hosts on one link: `pod` at [`Link::POD_V4`] / [`Link::POD_V6`], `vendor` at
/// [`Link::VENDOR_V4`] / [`Link::VENDOR_V6`]. Every link has the same addresses: each lives
/// in namespaces of its own.
#[derive(Debug)]
pub struct Link {
    pub pod: Netns,
    pub vendor: Netns,
}

impl Link {
    pub const POD_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    pub const VENDOR_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
    pub const POD_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 1);
    pub const VENDOR_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 2);

    pub fn new() -> Link {
        let pod = Netns::create("pod");
        let vendor = Netns::create("vendor");
        // Interface names are at most 15 bytes and live in the namespace that holds them; they
        // are created in `pod` so as never to clash with the host's.
        pod.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]);
        pod.ip(&["link", "set", "peer0", "netns", vendor.name()]);
        pod.ip(&["link", "set", "eth0", "up"]);
        vendor.ip(&["link", "set", "peer0", "name", "eth0"]);
        vendor.ip(&["link", "set", "eth0", "up"]);
        for (netns, v4, v6) in [
            (&pod, Self::POD_V4, Self::POD_V6),
            (&vendor, Self::VENDOR_V4, Self::VENDOR_V6),
        ] {
            netns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
            // `nodad`: usable at once, without duplicate address detection's delay.
            netns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
        }
        Link { pod, vendor }
    }

    pub fn vendor_ip(v6: bool) -> IpAddr {
        if v6 {
            Self::VENDOR_V6.into()
        } else {
            Self::VENDOR_V4.into()
        }
    }
}

impl Default for Link {
    fn default() -> Self {
        Link::new()
    }
}
