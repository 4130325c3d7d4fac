//! Three hosts made of network namespaces: Alice and Bob each in their own, and a
//! `cairnd` node in a third. Neither knows where the other is; they find each other
//! through the node's DHT. Where the middle host routes between them they open a
//! direct WebRTC session; where it does not (WebRTC cannot connect), the node relays
//! and the messages still arrive.
//!
//! Needs the privilege to create network namespaces (root or CAP_SYS_ADMIN); without
//! it the test says so and does nothing else.

mod common;

use common::{init, run, sh, Running};

/// The namespaces and links of one test run, removed on drop.
struct Hosts {
    suffix: String,
}

impl Hosts {
    /// Alice's host is 10.210.1.2 and Bob's 10.210.2.2; the hub is .1 on both links.
    /// With `routed` the hub forwards between them; without, they can reach only it.
    fn create(tag: &str, routed: bool) -> Option<Self> {
        let suffix = format!("{tag}{}", std::process::id());
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
            ip link add a{s} netns {a} type veth peer name ha{s} netns {hub}
            ip link add b{s} netns {b} type veth peer name hb{s} netns {hub}
            ip -n {hub} link set lo up; ip -n {a} link set lo up; ip -n {b} link set lo up
            ip -n {hub} addr add 10.210.1.1/24 dev ha{s}; ip -n {hub} link set ha{s} up
            ip -n {hub} addr add 10.210.2.1/24 dev hb{s}; ip -n {hub} link set hb{s} up
            ip -n {a} addr add 10.210.1.2/24 dev a{s}; ip -n {a} link set a{s} up
            ip -n {b} addr add 10.210.2.2/24 dev b{s}; ip -n {b} link set b{s} up
            ip -n {a} route add default via 10.210.1.1
            ip -n {b} route add default via 10.210.2.1
            ip netns exec {hub} sysctl -qw net.ipv4.ip_forward={}",
            u8::from(routed)
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

/// Alice's node runs; Bob adds her from her invite and writes to her while his node
/// is down, then starts it knowing only the hub. Returns Alice's and Bob's running
/// nodes once Alice has the message.
fn bob_writes_to_alice_across_the_hub(hosts: &Hosts) -> (Running, Running, Running, [tempfile::TempDir; 3]) {
    let dirs = [
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    ];
    let [hub_dir, alice_dir, bob_dir] = &dirs;
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
            "listen",
        ],
    );
    let invite = alice.line_starting("invite ");
    run(bob_dir.path(), &["add-contact", &invite]);
    run(bob_dir.path(), &["send", &alice_id, "hello across namespaces"]);
    let bob = Running::start(
        Some(&hosts.ns("b")),
        bob_dir.path(),
        &[
            "--listen",
            "/ip4/10.210.2.2/tcp/0",
            "--bootstrap",
            "/ip4/10.210.2.1/tcp/4001",
            "listen",
        ],
    );
    assert!(alice.line_starting("contact ").ends_with(" Bob"));
    let message = alice.line_starting("message ");
    assert!(message.ends_with(" hello across namespaces"), "{message}");
    (hub, alice, bob, dirs)
}

fn skipped() {
    eprintln!("skipped: this user may not create network namespaces (needs root or CAP_SYS_ADMIN)");
}

#[test]
fn alice_and_bob_in_separate_namespaces_find_each_other_through_a_cairnd_node_and_go_direct() {
    let Some(hosts) = Hosts::create("r", true) else {
        return skipped();
    };
    let (_hub, alice, bob, _dirs) = bob_writes_to_alice_across_the_hub(&hosts);
    // With a route between them, a WebRTC session opens between the two hosts.
    assert!(alice.line_starting("direct ").ends_with(" open"));
    assert!(bob.line_starting("direct ").ends_with(" open"));
}

#[test]
fn with_no_route_between_them_the_cairnd_node_relays_and_messages_arrive_without_webrtc() {
    let Some(hosts) = Hosts::create("n", false) else {
        return skipped();
    };
    let (_hub, alice, bob, _dirs) = bob_writes_to_alice_across_the_hub(&hosts);
    // Neither host can reach the other: the message came through the relay, and no
    // WebRTC session (whose candidates are the unreachable host addresses) opened.
    assert!(!alice.saw("direct ") && !bob.saw("direct "));
}
