//! Three hosts made of network namespaces: Alice and Bob each in their own, and a
//! `cairnd` bootstrap node in a third that routes between them. Neither knows where
//! the other is; they find each other through the bootstrap node's DHT and talk.
//!
//! Needs the privilege to create network namespaces (root or CAP_SYS_ADMIN); without
//! it the test says so and does nothing else.

mod common;

use std::process::Command;

use common::{init, run, Running};

fn sh(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", command])
        .status()
        .is_ok_and(|s| s.success())
}

/// The namespaces and links of one test run, removed on drop.
struct Hosts {
    suffix: String,
}

impl Hosts {
    fn create() -> Option<Self> {
        let suffix = format!("{}", std::process::id());
        let hosts = Self { suffix };
        for host in ["hub", "a", "b"] {
            if !sh(&format!("ip netns add {} 2>/dev/null", hosts.ns(host))) {
                return None;
            }
        }
        let (hub, a, b) = (hosts.ns("hub"), hosts.ns("a"), hosts.ns("b"));
        let s = &hosts.suffix;
        let script = format!(
            "set -e
            ip link add ca{s} netns {a} type veth peer name ha{s} netns {hub}
            ip link add cb{s} netns {b} type veth peer name hb{s} netns {hub}
            ip -n {hub} link set lo up; ip -n {a} link set lo up; ip -n {b} link set lo up
            ip -n {hub} addr add 10.210.1.1/24 dev ha{s}; ip -n {hub} link set ha{s} up
            ip -n {hub} addr add 10.210.2.1/24 dev hb{s}; ip -n {hub} link set hb{s} up
            ip -n {a} addr add 10.210.1.2/24 dev ca{s}; ip -n {a} link set ca{s} up
            ip -n {b} addr add 10.210.2.2/24 dev cb{s}; ip -n {b} link set cb{s} up
            ip -n {a} route add default via 10.210.1.1
            ip -n {b} route add default via 10.210.2.1
            ip netns exec {hub} sysctl -qw net.ipv4.ip_forward=1"
        );
        assert!(sh(&script), "setting up the namespaces failed");
        Some(hosts)
    }

    fn ns(&self, host: &str) -> String {
        format!("cairn-{host}-{}", self.suffix)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in ["hub", "a", "b"] {
            sh(&format!("ip netns del {} 2>/dev/null", self.ns(host)));
        }
    }
}

#[test]
fn alice_and_bob_in_separate_namespaces_find_each_other_through_a_cairnd_bootstrap_node() {
    let Some(hosts) = Hosts::create() else {
        eprintln!("skipped: this user may not create network namespaces (needs root or CAP_SYS_ADMIN)");
        return;
    };
    let (hub_dir, alice_dir, bob_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    init(hub_dir.path(), "Hub");
    let alice_id = init(alice_dir.path(), "Alice");
    init(bob_dir.path(), "Bob");

    let hub = Running::start(
        Some(&hosts.ns("hub")),
        hub_dir.path(),
        &["--listen", "/ip4/10.210.1.1/tcp/4001,/ip4/10.210.2.1/tcp/4001", "node"],
    );
    hub.line_starting("peer ");
    let alice = Running::start(
        Some(&hosts.ns("a")),
        alice_dir.path(),
        &[
            "--listen",
            "/ip4/10.210.1.2/tcp/0",
            "--bootstrap",
            "/ip4/10.210.1.1/tcp/4001",
            "node",
        ],
    );
    let invite = alice.line_starting("invite ");

    // Bob adds Alice and writes to her while his node is down; then it starts in his
    // namespace knowing only the bootstrap node.
    run(bob_dir.path(), &["add-contact", &invite]);
    run(bob_dir.path(), &["send", &alice_id, "hello across namespaces"]);
    let _bob = Running::start(
        Some(&hosts.ns("b")),
        bob_dir.path(),
        &[
            "--listen",
            "/ip4/10.210.2.2/tcp/0",
            "--bootstrap",
            "/ip4/10.210.2.1/tcp/4001",
            "node",
        ],
    );
    assert!(alice.line_starting("contact ").ends_with(" Bob"));
    let message = alice.line_starting("message ");
    assert!(message.ends_with(" hello across namespaces"), "{message}");
}
