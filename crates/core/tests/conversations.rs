//! The 1:1 story, on real SQLCipher profiles: Alice and Bob, two devices each,
//! exchange invites and messages through an in-process "network" that can reorder,
//! duplicate, delay, tamper with and replay envelopes.

mod world;

use cairn_core::AccountId;
use cairn_core::DeviceId;
use cairn_core::{CoreError, DeliveryState, Event, Handed};
use world::World;

/// Alice (a1, a2) and Bob (b1, b2), contacts of each other, all envelopes delivered.
fn alice_and_bob() -> (World, [usize; 4]) {
    let mut w = World::new();
    let a1 = w.account("a1", "Alice");
    let a2 = w.link(a1, "a2");
    let b1 = w.account("b1", "Bob");
    let b2 = w.link(b1, "b2");
    let invite = w.m(a1).account_info().unwrap().invite_link;
    let (contact, _) = w.m(b1).accept_invite(&invite).unwrap();
    assert_eq!(contact.display_name, "Alice");
    w.deliver_all();
    (w, [a1, a2, b1, b2])
}

#[test]
fn accepting_an_invite_makes_both_accounts_contacts_on_all_four_devices() {
    let (w, [a1, a2, b1, b2]) = alice_and_bob();
    let (alice, bob) = (w.account_id(a1), w.account_id(b1));
    for (device, peer, name) in [
        (a1, &bob, "Bob"),
        (a2, &bob, "Bob"),
        (b1, &alice, "Alice"),
        (b2, &alice, "Alice"),
    ] {
        let contact = w.devices[device].messenger.contact(peer).unwrap();
        assert_eq!(contact.display_name, name, "on {}", w.devices[device].name);
        assert_eq!(
            contact.devices, 2,
            "{} sees both of {name}'s devices",
            w.devices[device].name
        );
        assert!(!contact.identity_changed && !contact.verified);
    }
}

#[test]
fn alice_and_bob_with_two_devices_each_exchange_messages_and_every_device_holds_the_whole_conversation() {
    let (mut w, [a1, a2, b1, b2]) = alice_and_bob();
    let (alice, bob) = (w.account_id(a1), w.account_id(b1));
    let script = [
        (a1, "hi Bob, from Alice's laptop"),
        (b2, "hi Alice, from Bob's phone"),
        (a2, "Alice's phone here"),
        (b1, "and Bob's laptop"),
    ];
    let mut sent = Vec::new();
    for (from, text) in script {
        let peer = if from == a1 || from == a2 {
            bob.clone()
        } else {
            alice.clone()
        };
        let (message, queued) = w.m(from).send_text(&peer, text).unwrap();
        assert_eq!(message.state, DeliveryState::Sending);
        // One envelope per device of the peer and one for the sender's other device.
        assert_eq!(queued.len(), 3);
        w.deliver_all();
        sent.push((from, message.id));
    }
    let expected: Vec<String> = script.iter().map(|(_, t)| t.to_string()).collect();
    for (device, peer) in [(a1, &bob), (a2, &bob), (b1, &alice), (b2, &alice)] {
        assert_eq!(
            w.texts(device, peer),
            expected,
            "{} holds the whole conversation",
            w.devices[device].name
        );
    }
    // Every message reached the other side, and the sending device heard so.
    for (from, id) in sent {
        assert_eq!(
            w.devices[from].messenger.message(&id).unwrap().state,
            DeliveryState::Delivered
        );
    }
}

#[test]
fn out_of_order_duplicated_and_delayed_envelopes_are_handled() {
    let (mut w, [a1, _a2, b1, b2]) = alice_and_bob();
    let bob = w.account_id(b1);
    let alice = w.account_id(a1);
    let mut for_b1 = Vec::new();
    for i in 0..6 {
        w.m(a1).send_text(&bob, &format!("message {i}")).unwrap();
        for flight in w.take(a1) {
            if flight.to == b1 {
                for_b1.push(flight);
            } else {
                w.in_flight.push(flight);
            }
        }
    }
    w.deliver_all();
    // b1: deliver in a scrambled order, twice over, holding two back till last.
    let delayed: Vec<_> = vec![for_b1.remove(1), for_b1.remove(3)];
    for_b1.reverse();
    let mut duplicates = 0;
    for flight in for_b1.iter().chain(for_b1.iter()).chain(delayed.iter()).cloned() {
        match w.deliver(flight) {
            Ok(_) => {}
            Err(CoreError::Duplicate) => duplicates += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    w.deliver_all();
    assert_eq!(duplicates, 4);
    let mut b1_texts = w.texts(b1, &alice);
    b1_texts.sort();
    assert_eq!(b1_texts, (0..6).map(|i| format!("message {i}")).collect::<Vec<_>>());
    assert_eq!(w.texts(b2, &alice).len(), 6);
}

#[test]
fn a_tampered_or_replayed_envelope_is_rejected_with_a_typed_error_and_changes_nothing() {
    let (mut w, [a1, _a2, b1, _b2]) = alice_and_bob();
    let (alice, bob) = (w.account_id(a1), w.account_id(b1));
    w.m(a1).send_text(&bob, "the real one").unwrap();
    let to_b1 = w.take(a1).into_iter().find(|f| f.to == b1).unwrap();

    let mut body_flipped = to_b1.queued.outgoing.envelope.clone();
    let middle = body_flipped.body.len() / 2;
    body_flipped.body[middle] ^= 0x40;
    let mut wrong_mailbox = to_b1.queued.outgoing.envelope.clone();
    wrong_mailbox.mailbox[0] ^= 1;
    let b1m = &mut w.devices[b1].messenger;
    assert!(matches!(
        b1m.receive(&body_flipped.to_bytes()),
        Err(CoreError::Crypto(cairn_crypto::CryptoError::SealBroken))
    ));
    assert!(matches!(
        b1m.receive(&wrong_mailbox.to_bytes()),
        Err(CoreError::WrongMailbox)
    ));
    assert!(matches!(b1m.receive(&[0xff; 40]), Err(CoreError::Proto(_))));
    assert!(
        b1m.conversation(alice.as_str(), 10).unwrap().is_empty(),
        "nothing stored from bad envelopes"
    );

    let bytes = to_b1.bytes();
    assert_eq!(b1m.receive(&bytes).unwrap().events.len(), 1);
    assert!(
        matches!(b1m.receive(&bytes), Err(CoreError::Duplicate)),
        "a replay is refused"
    );
    assert_eq!(w.texts(b1, &alice), vec!["the real one"]);
}

#[test]
fn closing_and_reopening_every_store_mid_conversation_loses_no_session() {
    let (mut w, [a1, a2, b1, b2]) = alice_and_bob();
    let (alice, bob) = (w.account_id(a1), w.account_id(b1));
    w.m(a1).send_text(&bob, "before").unwrap();
    w.deliver_all();
    w.reopen_all();
    for (from, peer, text) in [
        (b2, &alice, "after, from b2"),
        (a2, &bob, "after, from a2"),
        (a1, &bob, "after, from a1"),
    ] {
        w.m(from).send_text(peer, text).unwrap();
        w.deliver_all();
    }
    assert_eq!(
        w.texts(b1, &alice),
        ["before", "after, from b2", "after, from a2", "after, from a1"]
    );
    assert_eq!(w.texts(a2, &bob), w.texts(b1, &alice));
}

#[test]
fn both_sides_see_the_same_safety_number_on_every_device() {
    let (w, [a1, a2, b1, b2]) = alice_and_bob();
    let (alice, bob) = (w.account_id(a1), w.account_id(b1));
    let at = |d: usize, peer: &AccountId| w.devices[d].messenger.safety_number(peer).unwrap();
    let number = at(a1, &bob);
    assert_eq!(number.digits().len(), 60);
    for (device, peer) in [(a2, &bob), (b1, &alice), (b2, &alice)] {
        assert_eq!(at(device, peer).digits(), number.digits());
    }
    assert!(at(b1, &alice).matches_scanned(number.scannable()).unwrap());
}

#[test]
fn read_receipts_reach_the_sender_unless_switched_off() {
    let (mut w, [a1, _a2, b1, b2]) = alice_and_bob();
    let (alice, bob) = (w.account_id(a1), w.account_id(b1));
    let (first, _) = w.m(a1).send_text(&bob, "read me").unwrap();
    w.deliver_all();
    w.m(b1).mark_read(alice.as_str()).unwrap();
    w.deliver_all();
    assert_eq!(w.m(a1).message(&first.id).unwrap().state, DeliveryState::Read);

    w.m(b2).set_read_receipts(false).unwrap();
    let (second, _) = w.m(a1).send_text(&bob, "and me").unwrap();
    w.deliver_all();
    assert!(
        w.m(b2).mark_read(alice.as_str()).unwrap().is_empty(),
        "no receipt with read receipts off"
    );
    assert_eq!(w.m(a1).message(&second.id).unwrap().state, DeliveryState::Delivered);
}

#[test]
fn search_finds_messages_across_conversations() {
    let (mut w, [a1, _a2, b1, _b2]) = alice_and_bob();
    let carol = w.account("c1", "Carol");
    let invite = w.m(carol).account_info().unwrap().invite_link;
    w.m(a1).accept_invite(&invite).unwrap();
    w.deliver_all();
    let (bob, carol_id) = (w.account_id(b1), w.account_id(carol));
    for (peer, text) in [
        (&bob, "the picnic is on saturday"),
        (&carol_id, "bring the picnic blanket"),
        (&bob, "unrelated"),
    ] {
        w.m(a1).send_text(peer, text).unwrap();
        w.deliver_all();
    }
    let hits = w.m(a1).search("picnic", 10).unwrap();
    let mut conversations: Vec<_> = hits.iter().map(|m| m.conversation.clone()).collect();
    conversations.sort();
    let mut expected = vec![bob.to_string(), carol_id.to_string()];
    expected.sort();
    assert_eq!(conversations, expected);
}

#[test]
fn a_rotated_signed_prekey_reaches_contacts_and_new_sessions_start_from_it() {
    let (mut w, [a1, _a2, b1, _b2]) = alice_and_bob();
    let (alice, bob) = (w.account_id(a1), w.account_id(b1));
    let queued = w.m(b1).rotate_signed_prekey().unwrap();
    assert!(!queued.is_empty(), "contacts and own devices hear of it");
    w.deliver_all();
    assert!(
        w.m(b1).rotate_signed_prekey_if_due().unwrap().is_empty(),
        "a fresh key is not due"
    );
    let bundle = Invite::from_link(&w.m(b1).account_info().unwrap().invite_link)
        .unwrap()
        .card
        .bundles[0]
        .clone();
    assert_eq!(
        (bundle.signed_prekey_id, bundle.kyber_prekey_id),
        (2, 2),
        "both prekeys were replaced"
    );
    // The existing sessions go on; a new contact starts from the new bundle.
    w.m(a1).send_text(&bob, "still fine").unwrap();
    w.deliver_all();
    assert_eq!(w.texts(b1, &alice), ["still fine"]);
    let dave = w.account("d1", "Dave");
    let invite = w.m(b1).account_info().unwrap().invite_link;
    w.m(dave).accept_invite(&invite).unwrap();
    w.deliver_all();
    let dave_id = w.account_id(dave);
    w.m(dave).send_text(&bob, "hello from dave").unwrap();
    w.deliver_all();
    assert_eq!(w.texts(b1, &dave_id), ["hello from dave"]);
}

#[test]
fn invites_that_are_ones_own_or_garbage_are_refused() {
    let mut w = World::new();
    let a1 = w.account("a1", "Alice");
    let own = w.m(a1).account_info().unwrap().invite_link;
    assert!(matches!(w.m(a1).accept_invite(&own), Err(CoreError::OwnInvite)));
    assert!(matches!(
        w.m(a1).accept_invite("cairn://invite/AAAA"),
        Err(CoreError::Proto(_))
    ));
    assert!(w.m(a1).contacts().unwrap().is_empty());
}

#[test]
fn an_invite_keeps_to_one_qr_code_however_many_addresses_the_device_has() {
    let mut w = World::new();
    let a1 = w.account("a1", "Alice");
    let relay = "/ip4/203.0.113.9/tcp/4001/p2p/12D3KooWKD7iWxF93EXStusq2EC95H5CErsPwA6yQDAJdfFrXtix/p2p-circuit/p2p/12D3KooWS2udh1tH2k6cYdaPXSuEJCLZCeFT9jdg9unzsfKRvrtr";
    let direct = "/ip4/192.0.2.1/udp/4001/quic-v1/p2p/12D3KooWS2udh1tH2k6cYdaPXSuEJCLZCeFT9jdg9unzsfKRvrtr";
    let mut addresses = vec![relay.to_owned(); 6];
    addresses.push(direct.to_owned());
    w.m(a1).set_addresses(addresses);
    let invite = w.m(a1).invite().unwrap();
    assert_eq!(
        invite.addresses.first().map(String::as_str),
        Some(direct),
        "direct addresses first"
    );
    assert!(invite.addresses.len() < 7, "not every relayed address fits");
    // It renders as one QR code, and the link reads back.
    w.m(a1).invite_qr_svg().unwrap();
    assert_eq!(cairn_proto::Invite::from_link(&invite.to_link()).unwrap(), invite);
    // Always-on nodes that would push the invite past one code are refused.
    let long = format!(
        "/dns4/{}.example/tcp/4001/p2p/12D3KooWKD7iWxF93EXStusq2EC95H5CErsPwA6yQDAJdfFrXtix",
        "a".repeat(150)
    );
    assert!(matches!(
        w.m(a1).set_always_on_nodes(&vec![long; 4]),
        Err(CoreError::InvalidSetting(_))
    ));
    assert!(w.m(a1).always_on_nodes().unwrap().is_empty(), "nothing changed");
}

#[test]
fn the_message_ttl_and_cache_quota_settings_are_checked_and_applied() {
    let (mut w, [a1, _, b1, _]) = alice_and_bob();
    let bob = w.account_id(b1);
    assert_eq!(w.m(a1).message_ttl_days().unwrap(), 7);
    assert_eq!(w.m(a1).cache_quota_mib().unwrap(), 64);
    for days in [0, 31] {
        assert!(matches!(
            w.m(a1).set_message_ttl_days(days),
            Err(CoreError::InvalidSetting(_))
        ));
    }
    assert!(matches!(
        w.m(a1).set_cache_quota_mib(cairn_core::MAX_CACHE_QUOTA_MIB + 1),
        Err(CoreError::InvalidSetting(_))
    ));
    w.m(a1).set_message_ttl_days(2).unwrap();
    w.m(a1).set_cache_quota_mib(16).unwrap();
    w.m(a1).send_text(&bob, "for two days").unwrap();
    assert!(
        w.take(a1).iter().all(|f| f.queued.outgoing.envelope.ttl == 2 * 86_400),
        "new envelopes carry the TTL"
    );
    let limits = w.m(a1).cache_limits().unwrap();
    assert_eq!((limits.total, limits.per_mailbox), (16 << 20, 1 << 20));
    w.m(a1).set_cache_quota_mib(0).unwrap();
    assert_eq!(w.m(a1).cache_limits().unwrap().total, 0, "0 holds nothing for others");
}

/// Someone presenting Bob's account id with another identity key: what a reinstall,
/// or a person in the middle, looks like from Alice's side.
struct Impostor {
    identity: cairn_crypto::AccountIdentity,
    card: ContactCard,
    store: cairn_crypto::MemorySignalStore,
}

fn impostor_of(account_id: &AccountId) -> Impostor {
    use cairn_crypto::*;
    let identity = AccountIdentity::generate();
    let keys = DeviceKeys::generate(DeviceId::FIRST).unwrap();
    let (signed, kyber) = (
        generate_signed_prekey(&identity, 1, std::time::SystemTime::now()).unwrap(),
        generate_kyber_prekey(&identity, 1).unwrap(),
    );
    let list = DeviceList {
        account_id: account_id.to_owned(),
        identity_key: identity.public_key().serialize().into_vec(),
        version: 1,
        devices: vec![DeviceEntry {
            device_id: DeviceId::FIRST,
            registration_id: keys.registration_id(),
            transport_key: keys.transport_public_key(),
        }],
        always_on: Vec::new(),
    };
    let card = ContactCard {
        display_name: "Bob".into(),
        device_list: sign_device_list(&identity, &list).unwrap(),
        bundles: vec![bundle_of(&keys, &signed, &kyber).unwrap()],
        key_packages: Vec::new(),
    };
    let store = MemorySignalStore::new(
        account_id,
        *identity.key_pair(),
        keys.registration_id(),
        &signed,
        &kyber,
    )
    .unwrap();
    Impostor { identity, card, store }
}

use cairn_crypto::IdentityKey;
use cairn_proto::{ContactCard, Content, DeviceEntry, DeviceList, Envelope, Invite, SealedInner, DEFAULT_TTL_SECS};

#[test]
fn an_identity_change_warns_blocks_sending_and_holds_envelopes_until_accepted() {
    let (mut w, [a1, _a2, b1, _b2]) = alice_and_bob();
    let (alice, bob) = (w.account_id(a1), w.account_id(b1));
    w.m(a1).set_verified(&bob, true).unwrap();
    let before = w.m(a1).safety_number(&bob).unwrap();
    let impostor = impostor_of(&bob);

    // An invite with Bob's account id and another key: refused, with the warning.
    let link = Invite {
        card: impostor.card.clone(),
        addresses: Vec::new(),
        secret: [0; 16],
    }
    .to_link();
    assert!(matches!(w.m(a1).accept_invite(&link), Err(CoreError::IdentityChanged(id)) if id == bob));
    let contact = w.m(a1).contact(&bob).unwrap();
    assert!(contact.identity_changed && contact.verified);
    assert!(matches!(
        w.m(a1).send_text(&bob, "are you there?"),
        Err(CoreError::IdentityChanged(_))
    ));
    assert_eq!(
        w.m(a1).safety_number(&bob).unwrap(),
        before,
        "the pinned key still counts"
    );
    let pending = w
        .m(a1)
        .pending_safety_number(&bob)
        .unwrap()
        .expect("a change is pending");
    assert_ne!(
        pending.digits(),
        before.digits(),
        "the new key's number is shown for comparison"
    );

    // An envelope from the new key, claiming to be Bob: held, not opened.
    let alice_card = Invite::from_link(&w.m(a1).account_info().unwrap().invite_link)
        .unwrap()
        .card;
    let (alice_list, alice_key) = cairn_crypto::verify_device_list(&alice_card.device_list).unwrap();
    cairn_crypto::start_session(
        &impostor.store,
        &alice,
        &alice_key,
        &alice_card.bundles[0],
        std::time::SystemTime::now(),
    )
    .unwrap();
    let hello = Content::Hello {
        card: impostor.card.clone(),
        invite_secret: None,
    }
    .to_padded_bytes();
    let ciphertext = cairn_crypto::encrypt(
        &impostor.store,
        &alice,
        DeviceId::FIRST,
        &hello,
        std::time::SystemTime::now(),
    )
    .unwrap();
    let inner = SealedInner {
        sender_account: bob.clone(),
        sender_identity: impostor.identity.public_key().serialize().into_vec(),
        sender_device: DeviceId::FIRST,
        prekey: ciphertext.prekey,
        message: ciphertext.bytes,
    };
    let envelope = Envelope {
        mailbox: cairn_crypto::mailbox_of(&alice_list.device(DeviceId::FIRST).unwrap().transport_key),
        created: 0,
        ttl: DEFAULT_TTL_SECS,
        pow: 0,
        body: cairn_crypto::seal(&alice_key, &inner).unwrap().to_bytes(),
    };
    let received = w.m(a1).receive(&envelope.to_bytes()).unwrap();
    assert_eq!(received.events, vec![Event::IdentityChanged(bob.clone())]);

    // Alice accepts the change: the new key is pinned, verification is gone, the held
    // envelope is opened, and sending works again.
    let accepted = w.m(a1).accept_identity_change(&bob).unwrap();
    assert!(accepted.events.contains(&Event::ContactChanged(bob.clone())));
    let contact = w.m(a1).contact(&bob).unwrap();
    assert!(!contact.identity_changed && !contact.verified);
    assert_ne!(w.m(a1).safety_number(&bob).unwrap().digits(), before.digits());
    assert_eq!(
        w.m(a1).safety_number(&bob).unwrap(),
        pending,
        "the accepted key is the one compared"
    );
    assert!(w.m(a1).pending_safety_number(&bob).unwrap().is_none());
    let (message, _) = w.m(a1).send_text(&bob, "hello, new key").unwrap();
    let due = w.m(a1).due_envelopes(100).unwrap();
    assert_eq!(
        due.iter().filter(|q| q.outgoing.message == Some(message.id)).count(),
        1,
        "to the one device the new key lists"
    );
    assert!(matches!(
        w.m(a1).accept_identity_change(&bob),
        Err(CoreError::NoIdentityChange(_))
    ));
}

#[test]
fn queued_envelopes_survive_a_restart_and_leave_the_outbox_once_delivered() {
    let (mut w, [a1, _a2, b1, _b2]) = alice_and_bob();
    let (alice, bob) = (w.account_id(a1), w.account_id(b1));
    // Queued with the message itself, in one transaction.
    let (_, queued) = w.m(a1).send_text(&bob, "queued while offline").unwrap();
    let outbox = w.m(a1).outbox().unwrap();
    assert!(queued.iter().all(|id| outbox.iter().any(|e| e.id == *id)));
    w.reopen_all();
    assert_eq!(w.m(a1).outbox().unwrap(), outbox, "the outbox survived the restart");
    w.deliver_all();
    assert!(w.m(a1).outbox().unwrap().is_empty(), "delivered ones left the outbox");
    assert_eq!(w.texts(b1, &alice), ["queued while offline"]);
}

/// Encrypts `content` in a session from `author` to Alice's device 1 (started from
/// her invite) and seals it as coming from account `claimed` with `claimed_key`.
fn forged_envelope(
    author: &Impostor,
    claimed: &AccountId,
    claimed_key: &IdentityKey,
    alice: &AccountId,
    alice_link: &str,
) -> Envelope {
    let card = Invite::from_link(alice_link).unwrap().card;
    let (list, key) = cairn_crypto::verify_device_list(&card.device_list).unwrap();
    if !cairn_crypto::has_session(&author.store, alice, DeviceId::FIRST).unwrap() {
        cairn_crypto::start_session(
            &author.store,
            alice,
            &key,
            &card.bundles[0],
            std::time::SystemTime::now(),
        )
        .unwrap();
    }
    let content = Content::Hello {
        card: author.card.clone(),
        invite_secret: None,
    }
    .to_padded_bytes();
    let ciphertext = cairn_crypto::encrypt(
        &author.store,
        alice,
        DeviceId::FIRST,
        &content,
        std::time::SystemTime::now(),
    )
    .unwrap();
    let inner = SealedInner {
        sender_account: claimed.to_owned(),
        sender_identity: claimed_key.serialize().into_vec(),
        sender_device: DeviceId::FIRST,
        prekey: ciphertext.prekey,
        message: ciphertext.bytes,
    };
    Envelope {
        mailbox: cairn_crypto::mailbox_of(&list.device(DeviceId::FIRST).unwrap().transport_key),
        created: 0,
        ttl: DEFAULT_TTL_SECS,
        pow: 0,
        body: cairn_crypto::seal(&key, &inner).unwrap().to_bytes(),
    }
}

#[test]
fn a_key_that_did_not_make_the_message_changes_nothing_and_a_change_can_be_rejected() {
    let (mut w, [a1, _a2, b1, _b2]) = alice_and_bob();
    let (alice, bob) = (w.account_id(a1), w.account_id(b1));
    let link = w.m(a1).account_info().unwrap().invite_link;
    let (mallory, trudy) = (impostor_of(&bob), impostor_of(&bob));
    let (mallory_key, trudy_key) = (*mallory.identity.public_key(), *trudy.identity.public_key());

    // Trudy's message dressed up as sealed by Mallory's key: refused, nothing recorded.
    let forged = forged_envelope(&trudy, &bob, &mallory_key, &alice, &link);
    assert!(matches!(
        w.m(a1).receive(&forged.to_bytes()),
        Err(CoreError::CardMismatch)
    ));
    assert!(!w.m(a1).contact(&bob).unwrap().identity_changed);

    // Mallory's own session start: held, with the warning.
    let genuine = forged_envelope(&mallory, &bob, &mallory_key, &alice, &link);
    assert_eq!(
        w.m(a1).receive(&genuine.to_bytes()).unwrap().events,
        vec![Event::IdentityChanged(bob.clone())]
    );
    // Trudy cannot replace the key that is waiting for Alice's decision.
    let trudys = forged_envelope(&trudy, &bob, &trudy_key, &alice, &link);
    assert!(matches!(
        w.m(a1).receive(&trudys.to_bytes()),
        Err(CoreError::IdentityChanged(_))
    ));

    // Alice refuses the change: Bob's real key stays, and they go on talking.
    w.m(a1).reject_identity_change(&bob).unwrap();
    assert!(!w.m(a1).contact(&bob).unwrap().identity_changed);
    w.m(a1).send_text(&bob, "still the real Bob?").unwrap();
    w.deliver_all();
    assert_eq!(w.texts(b1, &alice), ["still the real Bob?"]);
    assert!(matches!(
        w.m(a1).accept_identity_change(&bob),
        Err(CoreError::NoIdentityChange(_))
    ));
}

#[test]
fn two_links_granted_at_once_cannot_both_take_the_same_device_id() {
    let mut w = World::new();
    let a1 = w.account("a1", "Alice");
    let first_grant = w.m(a1).grant_link().unwrap();
    let second_grant = w.m(a1).grant_link().unwrap();
    let (d2, d3) = (w.new_profile("a2"), w.new_profile("a3"));
    let first = w.m(d2).join_account(first_grant).unwrap();
    let second = w.m(d3).join_account(second_grant).unwrap();
    w.m(a1).complete_link(first).unwrap();
    let result = w.m(a1).complete_link(second);
    assert!(
        matches!(result, Err(CoreError::DeviceListRollback { .. })),
        "{:?}",
        result.map(|o| o.len())
    );
}

#[test]
fn only_someone_holding_the_current_invite_can_introduce_themselves() {
    let mut w = World::new();
    let alice = w.account("a1", "Alice");
    let carol = w.account("c1", "Carol");
    let old_link = w.m(alice).account_info().unwrap().invite_link;
    w.m(alice).reset_invite().unwrap();
    // Carol uses the link Alice has since reset: her introduction is refused.
    w.m(carol).accept_invite(&old_link).unwrap();
    let carol_id = w.account_id(carol);
    for flight in w.take(carol).into_iter().filter(|f| f.to == alice) {
        assert!(matches!(w.deliver(flight), Err(CoreError::Uninvited(id)) if id == carol_id));
    }
    assert!(
        w.m(alice).contacts().unwrap().is_empty(),
        "nothing stored for an uninvited stranger"
    );
    // With the current link she gets in.
    let link = w.m(alice).account_info().unwrap().invite_link;
    w.m(carol).accept_invite(&link).unwrap();
    w.deliver_all();
    assert_eq!(w.m(alice).contact(&carol_id).unwrap().display_name, "Carol");
}

#[test]
fn a_message_that_overtakes_the_news_of_its_sender_waits_for_it() {
    let mut w = World::new();
    let a1 = w.account("a1", "Alice");
    let a2 = w.link(a1, "a2");
    let carol = w.account("c1", "Carol");
    let (alice, carol_id) = (w.account_id(a1), w.account_id(carol));
    let link = w.m(a1).account_info().unwrap().invite_link;
    w.m(carol).accept_invite(&link).unwrap();
    // a1 takes Carol's introduction; its sync to a2 is held back for now.
    for flight in w.take(carol) {
        w.deliver(flight).unwrap();
    }
    let (to_a2, rest): (Vec<_>, Vec<_>) = w.take(a1).into_iter().partition(|f| f.to == a2);
    assert!(!to_a2.is_empty());
    w.in_flight.extend(rest);
    w.deliver_all();
    // Carol writes; the copy for a2 arrives before a2 has heard of Carol: it waits.
    w.m(carol).send_text(&alice, "hi from Carol").unwrap();
    let (for_a2, rest): (Vec<_>, Vec<_>) = w.take(carol).into_iter().partition(|f| f.to == a2);
    assert_eq!(for_a2.len(), 1);
    assert!(
        w.deliver(for_a2[0].clone()).unwrap().is_empty(),
        "held, nothing shown yet"
    );
    assert!(w.texts(a2, &carol_id).is_empty());
    // The sync arrives: Carol becomes a contact on a2 and her message appears.
    w.in_flight.extend(to_a2);
    w.in_flight.extend(rest);
    w.deliver_all();
    assert_eq!(w.texts(a2, &carol_id), ["hi from Carol"]);
    assert_eq!(w.texts(a1, &carol_id), ["hi from Carol"]);
}

#[test]
fn a_failed_delivery_is_retried_later_and_at_once_when_a_peer_comes_online() {
    let (mut w, [a1, _a2, b1, _b2]) = alice_and_bob();
    let bob = w.account_id(b1);
    let (_, queued) = w.m(a1).send_text(&bob, "try again").unwrap();
    let due = w.m(a1).due_envelopes(1000).unwrap();
    assert!(queued.iter().all(|id| due.iter().any(|q| q.id == *id)));
    let last = due.last().unwrap();
    w.m(a1).handed(last, Handed::NotNow).unwrap();
    let due_ids =
        |w: &mut world::World| -> Vec<_> { w.m(a1).due_envelopes(1000).unwrap().iter().map(|q| q.id).collect() };
    assert!(!due_ids(&mut w).contains(&last.id), "a deferred envelope waits");
    w.m(a1).retry_now().unwrap();
    assert!(
        due_ids(&mut w).contains(&last.id),
        "and is due again once a peer comes online"
    );
}

#[test]
fn the_envelopes_for_the_contact_name_their_message_so_a_transport_can_mark_it_sent() {
    let (mut w, [a1, a2, b1, _b2]) = alice_and_bob();
    let bob = w.account_id(b1);
    let (message, _) = w.m(a1).send_text(&bob, "track me").unwrap();
    let flights = w.take(a1);
    for flight in &flights {
        let to_own_device = flight.to == a2;
        let expected = if to_own_device { None } else { Some(message.id) };
        assert_eq!(flight.queued.outgoing.message, expected, "{flight:?}");
    }
    assert!(
        w.m(a1).outbox().unwrap().iter().any(|e| e.message == Some(message.id)),
        "kept in the outbox"
    );
    w.m(a1).mark_sent(&message.id).unwrap();
    assert_eq!(w.m(a1).message(&message.id).unwrap().state, DeliveryState::Sent);
    w.in_flight.extend(flights);
    w.deliver_all();
    assert_eq!(w.m(a1).message(&message.id).unwrap().state, DeliveryState::Delivered);
}

#[test]
fn stun_and_turn_servers_are_a_setting_that_survives_a_restart_and_refuses_junk() {
    let (mut w, [a1, ..]) = alice_and_bob();
    assert!(w.m(a1).ice_servers().unwrap().is_empty(), "none by default");
    let urls = vec![
        " stun:stun.example.org:3478 ".to_owned(),
        String::new(),
        "turn:turn.example.org:3478".to_owned(),
    ];
    let kept = w.m(a1).set_ice_servers(&urls).unwrap();
    assert_eq!(kept, ["stun:stun.example.org:3478", "turn:turn.example.org:3478"]);
    for junk in [
        "http://example.org",
        "stun:has space",
        &format!("stun:{}", "x".repeat(300)),
    ] {
        assert!(matches!(
            w.m(a1).set_ice_servers(&[junk.to_owned()]),
            Err(CoreError::InvalidSetting(_))
        ));
    }
    w.reopen_all();
    assert_eq!(w.m(a1).ice_servers().unwrap(), kept, "kept, and junk changed nothing");
}
