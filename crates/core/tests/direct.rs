//! Alice and Bob, each with a real SQLCipher profile, a courier and a libp2p node on a
//! Tokio runtime of their own, talk over loopback: once they are contacts a WebRTC
//! session opens between their devices (signaled inside the Signal session) and their
//! messages ride it; with WebRTC unavailable the libp2p stream carries them instead.

mod common;

use cairn_core::DeliveryState;
use common::{contacts, vault, wait_until};

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
