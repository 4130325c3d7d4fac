//! Two people on one machine, each with a real SQLCipher profile and a courier running
//! a libp2p node on a Tokio runtime of their own, over loopback. Shared by the direct
//! session tests and the direct-path benchmark.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::{Courier, KeyVault, Messenger, SharedMessenger, Unlock};
use cairn_net::{DirectConfig, NodeConfig};
use cairn_store::ProfileDir;
use tempfile::TempDir;

/// One person's device: profile, messenger, courier, and the runtime it all runs on.
pub struct Person {
    _dir: TempDir,
    pub messenger: SharedMessenger,
    pub courier: Courier,
    pub runtime: tokio::runtime::Runtime,
    /// Gets a `()` whenever the courier reports a change.
    pub changed: std::sync::mpsc::Receiver<()>,
}

impl Person {
    pub fn new(name: &str, vault: &KeyVault, direct: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut messenger = Messenger::create_profile(&ProfileDir::new(dir.path()), Unlock::Keyring(vault)).unwrap();
        messenger.create_account(name).unwrap();
        let messenger: SharedMessenger = Arc::new(Mutex::new(Some(messenger)));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let config = NodeConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            mdns: false,
            direct: DirectConfig {
                enabled: direct,
                udp_addrs: vec!["127.0.0.1:0".into()],
                ..DirectConfig::default()
            },
            ..NodeConfig::default()
        };
        let (changes, changed) = std::sync::mpsc::channel();
        let changes = Mutex::new(changes);
        let courier = {
            let _inside = runtime.enter();
            Courier::start(messenger.clone(), config, move || {
                let _ = changes.lock().unwrap().send(());
            })
            .unwrap()
        };
        Self {
            _dir: dir,
            messenger,
            courier,
            runtime,
            changed,
        }
    }

    pub fn with<T>(&self, work: impl FnOnce(&mut Messenger) -> T) -> T {
        work(self.messenger.lock().unwrap().as_mut().unwrap())
    }

    pub fn account_id(&self) -> String {
        self.with(|m| m.account_info().unwrap().account_id)
    }

    /// The transport keys of `account`'s devices.
    pub fn keys_of(&self, account: &str) -> Vec<[u8; 32]> {
        self.with(|m| m.device_keys_of(account).unwrap())
            .into_iter()
            .map(|(_, key)| key)
            .collect()
    }

    pub fn texts_from(&self, peer: &str) -> Vec<String> {
        self.with(|m| m.conversation(peer, 100).unwrap())
            .into_iter()
            .filter(|m| !m.outgoing)
            .map(|m| m.body)
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
    let alice = Person::new("Alice", vault, alice_direct);
    let bob = Person::new("Bob", vault, bob_direct);
    wait_until("Alice's invite carries her address", || {
        alice.with(|m| !m.invite().unwrap().addresses.is_empty())
    });
    let link = alice.with(|m| m.account_info().unwrap().invite_link);
    bob.with(|m| m.accept_invite(&link).unwrap());
    bob.runtime.block_on(bob.courier.reach_inviter(&link)).unwrap();
    let bob_id = bob.account_id();
    wait_until("Alice has Bob as a contact", || {
        alice.with(|m| m.contacts().unwrap().iter().any(|c| c.account_id == bob_id))
    });
    (alice, bob)
}

pub fn vault() -> KeyVault {
    KeyVault::with_store(keyring_core::mock::Store::new().unwrap())
}
