//! The NAT lab: an internet made of network namespaces, with two homes behind NAT
//! routers and a "public" segment where only stand-ins for the public network run —
//! a stock rust-libp2p node (`public-standin`: Kademlia on `/ipfs/kad/1.0.0`, AutoNAT,
//! a circuit relay with libp2p's default limits) and, in some cases, a `cairnd node`.
//! Alice and Bob run `cairnd` in the homes knowing nothing but the stand-in's address.
//!
//! ```text
//!   alice 192.168.81.2 ── router A (NAT) 10.81.0.2 ─┐
//!                                                   ├─ internet ── public 10.80.0.10 (stand-in)
//!   bob   192.168.82.2 ── router B (NAT) 10.82.0.2 ─┘               10.80.0.11 (cairnd node)
//! ```
//!
//! A "cone" router masquerades (Linux keeps the port: one mapping per inside address
//! and port, whatever the destination); a "symmetric" one masquerades `fully-random`
//! (a new port per destination, which defeats hole punching). Nothing is routed to the
//! homes' private networks, so no one outside can reach Alice or Bob unless their own
//! traffic opened the way. Like a home router's firewall, each router drops what
//! arrives for it unasked (before connection tracking confirms it: an unanswered
//! packet that reached the router first would otherwise hold the very port mapping a
//! hole punch needs, as there is no latency in the lab to keep the two sides' packets
//! apart).
//!
//! Each case asserts that Bob's message reaches Alice and prints how (a direct WebRTC
//! session or not) and how long it took from Bob's start. Needs root (namespaces and
//! nftables); without it each case says so and does nothing else.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{init, run, sh, Running};

/// How a home's router maps its inside addresses.
#[derive(Clone, Copy, Debug)]
enum Nat {
    /// Plain masquerade: the outside port follows the inside one.
    Cone,
    /// `masquerade fully-random`: a new outside port for each destination.
    Symmetric,
}

impl Nat {
    fn rule(self) -> &'static str {
        match self {
            Nat::Cone => "masquerade",
            Nat::Symmetric => "masquerade fully-random",
        }
    }
}

/// The namespaces and links of one lab, removed on drop.
struct Lab {
    suffix: String,
}

const HOSTS: [&str; 6] = ["inet", "pub", "ra", "rb", "a", "b"];

impl Lab {
    /// Builds the lab with Alice's router doing `alice_nat` and Bob's `bob_nat`;
    /// `None` where this user may not make namespaces or nftables is missing.
    fn create(tag: &str, alice_nat: Nat, bob_nat: Nat) -> Option<Self> {
        if !sh("command -v nft >/dev/null") {
            eprintln!("skipped: nftables (nft) is not installed");
            return None;
        }
        let lab = Self {
            suffix: format!("{tag}{}", std::process::id()),
        };
        for host in HOSTS {
            if !sh(&format!("ip netns add {} 2>/dev/null", lab.ns(host))) {
                eprintln!("skipped: this user may not create network namespaces (needs root or CAP_SYS_ADMIN)");
                return None;
            }
        }
        let [inet, public, ra, rb, a, b] = HOSTS.map(|h| lab.ns(h));
        if !sh(&format!(
            "ip netns exec {ra} nft add table ip probe && ip netns exec {ra} nft delete table ip probe"
        )) {
            eprintln!("skipped: this kernel does not take nftables rules");
            return None;
        }
        let s = std::process::id() % 100_000;
        let script = format!(
            "set -e
            for ns in {inet} {public} {ra} {rb} {a} {b}; do ip -n $ns link set lo up; done
            ip link add p{s} netns {public} type veth peer name ip{s} netns {inet}
            ip link add wa{s} netns {ra} type veth peer name ia{s} netns {inet}
            ip link add wb{s} netns {rb} type veth peer name ib{s} netns {inet}
            ip link add la{s} netns {ra} type veth peer name a{s} netns {a}
            ip link add lb{s} netns {rb} type veth peer name b{s} netns {b}
            ip -n {inet} addr add 10.80.0.1/24 dev ip{s}; ip -n {inet} link set ip{s} up
            ip -n {inet} addr add 10.81.0.1/24 dev ia{s}; ip -n {inet} link set ia{s} up
            ip -n {inet} addr add 10.82.0.1/24 dev ib{s}; ip -n {inet} link set ib{s} up
            ip netns exec {inet} sysctl -qw net.ipv4.ip_forward=1
            ip -n {public} addr add 10.80.0.10/24 dev p{s}; ip -n {public} addr add 10.80.0.11/24 dev p{s}
            ip -n {public} link set p{s} up; ip -n {public} route add default via 10.80.0.1
            ip -n {ra} addr add 10.81.0.2/24 dev wa{s}; ip -n {ra} link set wa{s} up
            ip -n {ra} addr add 192.168.81.1/24 dev la{s}; ip -n {ra} link set la{s} up
            ip -n {ra} route add default via 10.81.0.1
            ip -n {rb} addr add 10.82.0.2/24 dev wb{s}; ip -n {rb} link set wb{s} up
            ip -n {rb} addr add 192.168.82.1/24 dev lb{s}; ip -n {rb} link set lb{s} up
            ip -n {rb} route add default via 10.82.0.1
            ip netns exec {ra} sysctl -qw net.ipv4.ip_forward=1
            ip netns exec {rb} sysctl -qw net.ipv4.ip_forward=1
            ip netns exec {ra} nft add table ip nat
            ip netns exec {ra} nft 'add chain ip nat post {{ type nat hook postrouting priority 100 ; }}'
            ip netns exec {ra} nft add rule ip nat post oifname wa{s} {alice_rule}
            ip netns exec {ra} nft add table ip filter
            ip netns exec {ra} nft 'add chain ip filter input {{ type filter hook input priority 0 ; }}'
            ip netns exec {ra} nft add rule ip filter input iifname wa{s} ct state new drop
            ip netns exec {rb} nft add table ip nat
            ip netns exec {rb} nft 'add chain ip nat post {{ type nat hook postrouting priority 100 ; }}'
            ip netns exec {rb} nft add rule ip nat post oifname wb{s} {bob_rule}
            ip netns exec {rb} nft add table ip filter
            ip netns exec {rb} nft 'add chain ip filter input {{ type filter hook input priority 0 ; }}'
            ip netns exec {rb} nft add rule ip filter input iifname wb{s} ct state new drop
            ip -n {a} addr add 192.168.81.2/24 dev a{s}; ip -n {a} link set a{s} up
            ip -n {a} route add default via 192.168.81.1
            ip -n {b} addr add 192.168.82.2/24 dev b{s}; ip -n {b} link set b{s} up
            ip -n {b} route add default via 192.168.82.1",
            alice_rule = alice_nat.rule(),
            bob_rule = bob_nat.rule(),
        );
        assert!(sh(&script), "building the lab failed");
        Some(lab)
    }

    fn ns(&self, host: &str) -> String {
        format!("cl-{host}-{}", self.suffix)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for host in HOSTS {
            sh(&format!("ip netns del {} 2>/dev/null", self.ns(host)));
        }
    }
}

/// The stand-in for the public network, built beside `cairnd` (`cargo build -p cairn-lab`).
fn standin_binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_cairnd")).with_file_name("public-standin");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p cairn-lab`",
        path.display()
    );
    path
}

/// The stand-in, running in the public segment until dropped.
struct Standin {
    child: Child,
    /// Its address with its peer id, as a bootstrap entry.
    address: String,
}

impl Standin {
    fn start(lab: &Lab) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.ns("pub")])
            .arg(standin_binary())
            .args(["--listen", "/ip4/10.80.0.10/tcp/4001,/ip4/10.80.0.10/udp/4001/quic-v1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut first).unwrap();
        let peer = first
            .trim()
            .strip_prefix("peer ")
            .expect("the stand-in names itself first")
            .to_owned();
        Self {
            child,
            address: format!("/ip4/10.80.0.10/udp/4001/quic-v1/p2p/{peer},/ip4/10.80.0.10/tcp/4001/p2p/{peer}"),
        }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where Alice and Bob listen: what the app listens on by default.
const HOME_LISTEN: &str = "/ip4/0.0.0.0/udp/0/quic-v1,/ip4/0.0.0.0/tcp/0";

/// Alice's and Bob's profiles, and what runs on the public segment.
struct World<'lab> {
    lab: &'lab Lab,
    _standin: Standin,
    _node: Option<Running>,
    /// What Alice and Bob know of the network: the stand-in (and the node).
    bootstrap: String,
    alice_dir: tempfile::TempDir,
    bob_dir: tempfile::TempDir,
    _node_dir: tempfile::TempDir,
    alice_id: String,
    bob_id: String,
}

impl<'lab> World<'lab> {
    /// Starts the stand-in (and a `cairnd node` on the public segment with
    /// `with_node`), and makes Alice's and Bob's profiles.
    fn new(lab: &'lab Lab, with_node: bool) -> Self {
        let standin = Standin::start(lab);
        let [node_dir, alice_dir, bob_dir] = [(); 3].map(|()| tempfile::tempdir().unwrap());
        let mut bootstrap = vec![standin.address.clone()];
        let node = with_node.then(|| {
            init(node_dir.path(), "Node");
            let node = Running::start(
                Some(&lab.ns("pub")),
                node_dir.path(),
                &[
                    "--listen",
                    "/ip4/10.80.0.11/tcp/4001",
                    "--bootstrap",
                    &standin.address,
                    "node",
                ],
            );
            let peer = node.line_starting("peer ");
            bootstrap.push(format!("/ip4/10.80.0.11/tcp/4001/p2p/{peer}"));
            node
        });
        Self {
            lab,
            alice_id: init(alice_dir.path(), "Alice"),
            bob_id: init(bob_dir.path(), "Bob"),
            _standin: standin,
            _node: node,
            bootstrap: bootstrap.join(","),
            alice_dir,
            bob_dir,
            _node_dir: node_dir,
        }
    }

    /// Runs Alice's (`a`) or Bob's (`b`) `cairnd listen` at home.
    fn listen(&self, home: &str, extra: &[&str]) -> Running {
        let dir = if home == "a" { &self.alice_dir } else { &self.bob_dir };
        let mut args = vec!["--listen", HOME_LISTEN, "--bootstrap", &self.bootstrap, "listen"];
        args.extend(extra);
        Running::start(Some(&self.lab.ns(home)), dir.path(), &args)
    }

    /// Alice listens; Bob adds her from her invite and writes while his node is
    /// down, then starts it. Returns both running once Alice has the message, and
    /// how long it took from Bob's start.
    fn bob_writes_to_alice(&self) -> (Running, Running, Duration) {
        let alice = self.listen("a", &[]);
        let invite = alice.line_starting("invite ");
        run(self.bob_dir.path(), &["add-contact", &invite]);
        run(
            self.bob_dir.path(),
            &["send", &self.alice_id, "hello from another home"],
        );
        let started = Instant::now();
        let bob = self.listen("b", &[]);
        let message = alice.line_starting("message ");
        let took = started.elapsed();
        assert!(message.ends_with(" hello from another home"), "{message}");
        (alice, bob, took)
    }
}

/// What one case of the lab measured.
struct Outcome {
    /// From Bob's start to Alice printing his message.
    first_message: Duration,
    /// How Alice reaches Bob once things settled: `direct` (WebRTC), `connected` (a
    /// libp2p connection of their own: here only a hole punch makes one), `relayed`.
    route: String,
}

/// Bob writes to Alice across the lab; how it went.
fn both_online(lab: &Lab, with_node: bool) -> Outcome {
    let world = World::new(lab, with_node);
    let (alice, bob, first_message) = world.bob_writes_to_alice();
    // A moment for a hole punch or a direct session that is on its way.
    std::thread::sleep(Duration::from_secs(5));
    alice.drain();
    let route = alice
        .seen()
        .iter()
        .rev()
        .find_map(|line| {
            line.strip_prefix(&format!("route {} ", world.bob_id))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into());
    drop(bob);
    Outcome { first_message, route }
}

/// Runs one case with both online and prints its row of the matrix.
fn case(name: &str, alice_nat: Nat, bob_nat: Nat, with_node: bool) -> Option<Outcome> {
    let lab = Lab::create(name, alice_nat, bob_nat)?;
    let outcome = both_online(&lab, with_node);
    let segment = if with_node {
        "with a cairnd node"
    } else {
        "stand-ins only"
    };
    eprintln!(
        "nat-lab {alice_nat:?}-{bob_nat:?}, {segment}: first message after {:.1} s, then {}",
        outcome.first_message.as_secs_f64(),
        outcome.route
    );
    assert_ne!(outcome.route, "away", "Alice got the message but does not reach Bob");
    Some(outcome)
}

#[test]
fn cone_to_cone_through_the_public_network_alone_ends_on_a_hole_punched_connection() {
    if let Some(outcome) = case("cc", Nat::Cone, Nat::Cone, false) {
        assert!(
            ["direct", "connected"].contains(&outcome.route.as_str()),
            "still {} after the hole punch had its chance",
            outcome.route
        );
    }
}

#[test]
fn cone_to_symmetric_through_the_public_network_alone() {
    case("cs", Nat::Cone, Nat::Symmetric, false);
}

#[test]
fn symmetric_to_symmetric_through_the_public_network_alone() {
    case("ss", Nat::Symmetric, Nat::Symmetric, false);
}

#[test]
fn cone_to_cone_with_a_cairnd_node_on_the_public_segment() {
    case("cn", Nat::Cone, Nat::Cone, true);
}

#[test]
fn symmetric_to_symmetric_with_a_cairnd_node_on_the_public_segment() {
    case("sn", Nat::Symmetric, Nat::Symmetric, true);
}

#[test]
fn alice_writes_while_bob_is_away_and_the_cairnd_node_holds_it_until_he_returns() {
    let Some(lab) = Lab::create("off", Nat::Symmetric, Nat::Cone) else {
        return;
    };
    let world = World::new(&lab, true);
    // They become contacts, then both go.
    let (alice, bob, _) = world.bob_writes_to_alice();
    drop((alice, bob));
    // Alice writes while Bob is away, and stays online until the message left her
    // outbox (for the node's peer cache), then goes too.
    let args = [
        "--listen",
        HOME_LISTEN,
        "--bootstrap",
        &world.bootstrap,
        "listen",
        "--stdin",
    ];
    let mut alice = Running::start_in_with_commands(&lab.ns("a"), world.alice_dir.path(), &args);
    let sent = alice.command(
        &format!("send {} while you were away", world.bob_id),
        Duration::from_secs(30),
    );
    assert!(sent.is_some(), "Alice could not send");
    let deadline = Instant::now() + Duration::from_secs(60);
    while alice
        .command("outbox", Duration::from_secs(30))
        .is_none_or(|rows| !rows.is_empty())
    {
        assert!(Instant::now() < deadline, "the message never left Alice's outbox");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(alice);
    // Bob comes back with Alice away: the message comes from the cache.
    let started = Instant::now();
    let bob = world.listen("b", &[]);
    let message = bob.line_starting("message ");
    assert!(message.ends_with(" while you were away"), "{message}");
    eprintln!(
        "nat-lab Symmetric-Cone, with a cairnd node, Alice away: held message after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
