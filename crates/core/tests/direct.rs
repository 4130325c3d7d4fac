//! Alice and Bob, each with a real SQLCipher profile, a courier and a libp2p node on a
//! Tokio runtime of their own, talk over loopback: once they are contacts a WebRTC
//! session opens between their devices (signaled inside the Signal session) and their
//! messages ride it; with WebRTC unavailable the libp2p stream carries them instead.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::{Courier, DeliveryState, KeyVault, Messenger, SharedMessenger, Unlock};
use cairn_net::{DirectConfig, NodeConfig};
use cairn_store::ProfileDir;
use tempfile::TempDir;

/// One person's device: profile, messenger, courier, and the runtime it all runs on.
struct Person {
    _dir: TempDir,
    messenger: SharedMessenger,
    courier: Courier,
    runtime: tokio::runtime::Runtime,
}

impl Person {
    fn new(name: &str, vault: &KeyVault, direct: bool) -> Self {
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
        let courier = {
            let _inside = runtime.enter();
            Courier::start(messenger.clone(), config, || {}).unwrap()
        };
        Self {
            _dir: dir,
            messenger,
            courier,
            runtime,
        }
    }

    fn with<T>(&self, work: impl FnOnce(&mut Messenger) -> T) -> T {
        work(self.messenger.lock().unwrap().as_mut().unwrap())
    }

    fn account_id(&self) -> String {
        self.with(|m| m.account_info().unwrap().account_id)
    }

    /// The transport keys of `account`'s devices.
    fn keys_of(&self, account: &str) -> Vec<[u8; 32]> {
        self.with(|m| m.device_keys_of(account).unwrap())
            .into_iter()
            .map(|(_, key)| key)
            .collect()
    }

    fn texts_from(&self, peer: &str) -> Vec<String> {
        self.with(|m| m.conversation(peer, 100).unwrap())
            .into_iter()
            .filter(|m| !m.outgoing)
            .map(|m| m.body)
            .collect()
    }
}

/// Waits (up to 30 s) until `done` holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Alice and Bob become contacts through Alice's invite (with her node's address).
fn contacts(vault: &KeyVault, alice_direct: bool, bob_direct: bool) -> (Person, Person) {
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

fn vault() -> KeyVault {
    KeyVault::with_store(keyring_core::mock::Store::new().unwrap())
}

#[test]
fn alice_and_bob_exchange_messages_over_a_webrtc_data_channel_not_the_fallback() {
    let vault = vault();
    let (alice, bob) = contacts(&vault, true, true);
    let (alice_id, bob_id) = (alice.account_id(), bob.account_id());
    let (alice_keys, bob_keys) = (bob.keys_of(&alice_id), alice.keys_of(&bob_id));
    wait_until("a direct session is open on both sides", || {
        alice.courier.any_direct(&bob_keys) && bob.courier.any_direct(&alice_keys)
    });
    let (bob_direct_before, bob_stream_before) = bob.courier.arrivals();
    let (alice_direct_before, alice_stream_before) = alice.courier.arrivals();

    let sent: Vec<String> = (1..=5).map(|i| format!("over webrtc #{i}")).collect();
    let ids: Vec<_> = sent
        .iter()
        .map(|text| alice.with(|m| m.send_text(&bob_id, text).unwrap().0.id))
        .collect();
    alice.courier.wake();
    wait_until("Bob has every message", || {
        bob.texts_from(&alice_id).len() == sent.len()
    });
    assert_eq!(bob.texts_from(&alice_id), sent);
    wait_until("Alice sees them delivered", || {
        ids.iter()
            .all(|id| alice.with(|m| m.message(id).unwrap().state) == DeliveryState::Delivered)
    });

    let (bob_direct, bob_stream) = bob.courier.arrivals();
    assert!(
        bob_direct - bob_direct_before >= sent.len() as u64,
        "every message came over the data channel"
    );
    assert_eq!(bob_stream, bob_stream_before, "nothing came over the libp2p stream");
    let (alice_direct, alice_stream) = alice.courier.arrivals();
    assert!(
        alice_direct - alice_direct_before >= 1,
        "the receipts came back over it too"
    );
    assert_eq!(alice_stream, alice_stream_before);

    // And Bob answers over the same session.
    bob.with(|m| m.send_text(&alice_id, "got them all").unwrap());
    bob.courier.wake();
    wait_until("Alice has Bob's answer", || {
        alice.texts_from(&bob_id) == ["got them all"]
    });
    assert_eq!(alice.courier.arrivals().1, alice_stream_before);
}

#[test]
fn when_webrtc_is_unavailable_messages_still_arrive_over_the_libp2p_stream() {
    let vault = vault();
    // Bob's WebRTC is off: he answers no offer, so Alice's attempt never opens.
    let (alice, bob) = contacts(&vault, true, false);
    let (alice_id, bob_id) = (alice.account_id(), bob.account_id());
    for text in ["one", "two", "three"] {
        alice.with(|m| m.send_text(&bob_id, text).unwrap());
    }
    alice.courier.wake();
    wait_until("Bob has every message", || bob.texts_from(&alice_id).len() == 3);
    assert_eq!(bob.texts_from(&alice_id), ["one", "two", "three"]);
    let (direct, stream) = bob.courier.arrivals();
    assert_eq!(direct, 0, "no direct session ever opened");
    assert!(stream >= 3);
    assert!(!alice.courier.any_direct(&alice.keys_of(&bob_id)));
}
