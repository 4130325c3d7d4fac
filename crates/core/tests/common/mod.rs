//! People on one machine, each with a real SQLCipher profile and a courier running a
//! libp2p node on a Tokio runtime of their own, over loopback; they can go offline and
//! come back. Shared by the direct session and peer cache tests and the direct-path
//! benchmark.

#![allow(dead_code)]

use cairn_core::AccountId;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::{Courier, KeyVault, Messenger, SharedMessenger, Unlock};
use cairn_net::{DirectConfig, NodeConfig};
use cairn_store::{CacheLimits, ProfileDir};
use tempfile::TempDir;

/// One person's device: profile, messenger, courier, and the runtime it all runs on.
pub struct Person {
    pub dir: TempDir,
    pub messenger: SharedMessenger,
    pub courier: Courier,
    pub runtime: tokio::runtime::Runtime,
    /// Gets a `()` whenever the courier reports a change.
    pub changed: std::sync::mpsc::Receiver<()>,
    config: NodeConfig,
}

/// A node config for loopback only, without LAN discovery.
pub fn loopback(direct: bool) -> NodeConfig {
    NodeConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        mdns: false,
        direct: DirectConfig {
            enabled: direct,
            udp_addrs: vec!["127.0.0.1:0".into()],
            ..DirectConfig::default()
        },
        ..NodeConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

impl Person {
    pub fn new(name: &str, vault: &KeyVault, direct: bool) -> Self {
        Self::with_config(name, vault, loopback(direct))
    }

    /// A person whose node starts with `config` (its peer cache, when it has one, in
    /// the profile directory).
    pub fn with_config(name: &str, vault: &KeyVault, config: NodeConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut messenger = Messenger::create_profile(&ProfileDir::new(dir.path()), Unlock::Keyring(vault)).unwrap();
        messenger.create_account(name).unwrap();
        Self::from_profile(dir, Arc::new(Mutex::new(Some(messenger))), config)
    }

    /// A person whose profile (with its account) is already open.
    pub fn from_profile(dir: TempDir, messenger: SharedMessenger, config: NodeConfig) -> Self {
        let runtime = runtime();
        let (courier, changed) = start_courier(&runtime, &messenger, config.clone());
        Self {
            dir,
            messenger,
            courier,
            runtime,
            changed,
            config,
        }
    }

    /// Closes the app: the node stops (the profile stays).
    pub fn go_offline(&mut self) {
        let old = std::mem::replace(&mut self.runtime, runtime());
        old.shutdown_timeout(Duration::from_secs(2));
    }

    /// Opens the app again: a new node for the same profile.
    pub fn come_online(&mut self) {
        let (courier, changed) = start_courier(&self.runtime, &self.messenger, self.config.clone());
        self.courier = courier;
        self.changed = changed;
    }

    pub fn with<T>(&self, work: impl FnOnce(&mut Messenger) -> T) -> T {
        work(self.messenger.lock().unwrap().as_mut().unwrap())
    }

    pub fn account_id(&self) -> AccountId {
        self.with(|m| m.account_info().unwrap().account_id)
    }

    /// The transport keys of `account`'s devices.
    pub fn keys_of(&self, account: &AccountId) -> Vec<[u8; 32]> {
        self.with(|m| m.device_keys_of(account).unwrap())
            .into_iter()
            .map(|(_, key)| key)
            .collect()
    }

    pub fn texts_from(&self, peer: &AccountId) -> Vec<String> {
        self.with(|m| m.conversation(peer.as_str(), 100).unwrap())
            .into_iter()
            .filter(|m| !m.outgoing)
            .map(|m| m.body)
            .collect()
    }
}

fn start_courier(
    runtime: &tokio::runtime::Runtime,
    messenger: &SharedMessenger,
    config: NodeConfig,
) -> (Courier, std::sync::mpsc::Receiver<()>) {
    let (changes, changed) = std::sync::mpsc::channel();
    let changes = Mutex::new(changes);
    let _inside = runtime.enter();
    let courier = Courier::start(messenger.clone(), config, move |_event| {
        let _ = changes.lock().unwrap().send(());
    })
    .unwrap();
    (courier, changed)
}

const HOLDER_LIMITS: CacheLimits = CacheLimits {
    max_envelope: 256 * 1024,
    per_mailbox: 4 << 20,
    total: 64 << 20,
};

/// Always-on peer cache nodes (real libp2p nodes, each with its cache database file),
/// on a runtime of their own.
pub struct Holders {
    pub dir: TempDir,
    pub nodes: Vec<cairn_net::NodeHandle>,
    /// Their event queues, kept open (a node stops when nobody listens).
    _events: Vec<tokio::sync::mpsc::Receiver<cairn_net::NetEvent>>,
    pub address: cairn_net::Multiaddr,
    pub runtime: tokio::runtime::Runtime,
}

impl Holders {
    pub fn start(count: u8) -> Self {
        Self::start_from(200, count)
    }

    /// `count` nodes with seeds from `first_seed` on.
    pub fn start_from(first_seed: u8, count: u8) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime();
        let (mut nodes, mut events, mut address) = (Vec::new(), Vec::new(), None);
        for n in 0..count {
            let mut config = loopback(false);
            config.bootstrap = address.clone().into_iter().collect();
            config.cache.store = Some((dir.path().join(format!("holder-{n}.db")), HOLDER_LIMITS));
            let (node, mut node_events) = {
                let _inside = runtime.enter();
                cairn_net::start([first_seed + n; 32], config).unwrap()
            };
            if address.is_none() {
                let listening = runtime.block_on(async {
                    loop {
                        if let Some(cairn_net::NetEvent::Listening(a)) = node_events.recv().await {
                            break a;
                        }
                    }
                });
                address = Some(listening.with_p2p(node.peer_id()).unwrap());
            }
            nodes.push(node);
            events.push(node_events);
        }
        Self {
            dir,
            nodes,
            _events: events,
            address: address.unwrap(),
            runtime,
        }
    }

    /// How many envelopes for `mailbox` the nodes hold in all, read from their files.
    pub fn held_for(&self, mailbox: &[u8; 32]) -> usize {
        (0..self.nodes.len())
            .map(|n| {
                let file = self.dir.path().join(format!("holder-{n}.db"));
                let cache = cairn_store::CacheDb::open(&file, HOLDER_LIMITS).unwrap();
                cache.fetch(mailbox, 0, 0, usize::MAX).unwrap().0.len()
            })
            .sum()
    }

    /// Envelopes held by each node.
    pub fn held(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| self.runtime.block_on(n.cache_usage()).unwrap().0)
            .collect()
    }
}

/// Waits (up to 30 s) until `done` holds.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Alice and Bob become contacts through Alice's invite (with her node's address).
pub fn contacts(vault: &KeyVault, alice_direct: bool, bob_direct: bool) -> (Person, Person) {
    contacts_with(vault, loopback(alice_direct), loopback(bob_direct))
}

/// [`contacts`], with their nodes configured as given.
pub fn contacts_with(vault: &KeyVault, alice: NodeConfig, bob: NodeConfig) -> (Person, Person) {
    let alice = Person::with_config("Alice", vault, alice);
    let bob = Person::with_config("Bob", vault, bob);
    befriend(&alice, &bob);
    (alice, bob)
}

/// `other` accepts `inviter`'s invite (with the inviter's node address), and both
/// see each other as contacts.
pub fn befriend(inviter: &Person, other: &Person) {
    wait_until("the invite carries the inviter's address", || {
        inviter.with(|m| !m.invite().unwrap().addresses.is_empty())
    });
    let link = inviter.with(|m| m.account_info().unwrap().invite_link);
    other.with(|m| m.accept_invite(&link).unwrap());
    other.runtime.block_on(other.courier.reach_inviter(&link)).unwrap();
    let other_id = other.account_id();
    wait_until("the inviter has the other as a contact", || {
        inviter.with(|m| m.contacts().unwrap().iter().any(|c| c.account_id == other_id))
    });
}

pub fn vault() -> KeyVault {
    KeyVault::with_store(keyring_core::mock::Store::new().unwrap())
}
