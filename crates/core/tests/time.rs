//! What time does, on the world's clock instead of a sleep: cached copies of a message
//! expire and the message says it failed; a signed prekey falls due for rotation; an
//! envelope from a stranger is not kept forever; an attempt that waited days is sealed
//! again with its full time in caches ahead of it. (Link offers expiring is in the
//! linking story.)

mod world;

use cairn_core::AccountId;
use std::time::Duration;

use cairn_core::{DeliveryState, Handed};
use world::World;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Alice and Bob, one device each, contacts of each other.
fn alice_and_bob() -> (World, usize, usize, AccountId, AccountId) {
    let mut w = World::new();
    let alice = w.account("alice", "Alice");
    let bob = w.account("bob", "Bob");
    let invite = w.m(alice).account_info().unwrap().invite_link;
    w.m(bob).accept_invite(&invite).unwrap();
    w.deliver_all();
    let (alice_id, bob_id) = (w.account_id(alice), w.account_id(bob));
    (w, alice, bob, alice_id, bob_id)
}

#[test]
fn a_message_whose_cached_copies_expired_unconfirmed_fails_and_a_retry_delivers_it() {
    let (mut w, alice, bob, alice_id, bob_id) = alice_and_bob();
    w.go_away(bob);
    let (message, _) = w.m(alice).send_text(&bob_id, "are you back?").unwrap();
    w.deliver_all();
    assert_eq!(w.m(alice).message(&message.id).unwrap().held_by, 1);

    // Six days on the copies still wait; at seven (the TTL) they are gone, and the
    // message is not left claiming to be on its way.
    w.clock.advance(6 * DAY);
    w.m(alice).due_envelopes(10).unwrap();
    assert_eq!(w.m(alice).message(&message.id).unwrap().state, DeliveryState::Sent);
    w.clock.advance(DAY);
    w.m(alice).due_envelopes(10).unwrap();
    assert_eq!(w.m(alice).message(&message.id).unwrap().state, DeliveryState::Failed);

    // Bob is back (the expired copies are gone from the caches); Alice retries.
    w.cache.clear();
    w.come_back(bob);
    w.m(alice).retry_message(&message.id).unwrap();
    w.deliver_all();
    assert_eq!(w.texts(bob, &alice_id), ["are you back?"]);
    assert_eq!(w.m(alice).message(&message.id).unwrap().state, DeliveryState::Delivered);
}

#[test]
fn a_signed_prekey_falls_due_after_a_week_and_contacts_get_the_new_bundle() {
    let (mut w, alice, bob, _, bob_id) = alice_and_bob();
    assert!(
        w.m(bob).rotate_signed_prekey_if_due().unwrap().is_empty(),
        "not due yet"
    );
    w.clock.advance(6 * DAY);
    assert!(
        w.m(bob).rotate_signed_prekey_if_due().unwrap().is_empty(),
        "not due at six days"
    );
    w.clock.advance(DAY);
    let queued = w.m(bob).rotate_signed_prekey_if_due().unwrap();
    assert!(!queued.is_empty(), "due at seven days: Alice hears of the new bundle");
    w.deliver_all();
    assert!(
        w.m(bob).rotate_signed_prekey_if_due().unwrap().is_empty(),
        "and not again"
    );
    // Sessions go on across the rotation.
    w.m(alice).send_text(&bob_id, "still here").unwrap();
    w.deliver_all();
    assert_eq!(w.texts(bob, w.account_id(alice)), ["still here"]);
}

#[test]
fn an_envelope_from_a_stranger_is_kept_a_while_but_not_for_ever() {
    let mut w = World::new();
    let a1 = w.account("a1", "Alice");
    let a2 = w.link(a1, "a2");
    let carol = w.account("carol", "Carol");
    let (alice, carol_id) = (w.account_id(a1), w.account_id(carol));
    let link = w.m(a1).account_info().unwrap().invite_link;
    // Carol becomes Alice's contact on a1; the news for a2 is held back.
    w.m(carol).accept_invite(&link).unwrap();
    for flight in w.take(carol) {
        w.deliver(flight).unwrap();
    }
    let (to_a2, rest): (Vec<_>, Vec<_>) = w.take(a1).into_iter().partition(|f| f.to == a2);
    w.in_flight.extend(rest);
    w.deliver_all();
    // Carol writes; a2 does not know her yet, so her envelope is kept for later.
    w.m(carol).send_text(&alice, "hi from Carol").unwrap();
    let (for_a2, rest): (Vec<_>, Vec<_>) = w.take(carol).into_iter().partition(|f| f.to == a2);
    w.deliver(for_a2[0].clone()).unwrap();
    w.in_flight.extend(rest);
    w.deliver_all();

    // A month and a day go by (longer than any envelope may live). Then a2 hears of
    // Carol: her old envelope is gone, not opened a month late.
    w.clock.advance(31 * DAY);
    w.in_flight.extend(to_a2);
    w.deliver_all();
    assert_eq!(
        w.devices[a2].messenger.contact(&carol_id).unwrap().display_name,
        "Carol"
    );
    assert!(w.texts(a2, &carol_id).is_empty());
    assert_eq!(w.texts(a1, &carol_id), ["hi from Carol"]);
}

#[test]
fn an_attempt_that_waited_half_its_time_in_caches_is_sealed_again() {
    let (mut w, alice, bob, _, bob_id) = alice_and_bob();
    // Nothing reaches Bob; Alice's attempt keeps its envelope while it is fresh.
    w.unreachable.insert(bob);
    w.m(alice).send_text(&bob_id, "one try").unwrap();
    let first = w.take(alice);
    for flight in &first {
        w.hand(flight, Handed::NotNow);
    }
    w.m(alice).retry_now().unwrap();
    let again = w.take(alice);
    assert_eq!(
        first.iter().map(|f| f.bytes()).collect::<Vec<_>>(),
        again.iter().map(|f| f.bytes()).collect::<Vec<_>>(),
        "sent again as it was"
    );
    for flight in &again {
        w.hand(flight, Handed::NotNow);
    }
    // Four days later (over half of the seven days an envelope may wait in caches),
    // it is sealed again, dated now.
    w.clock.advance(4 * DAY);
    w.m(alice).retry_now().unwrap();
    let later = w.take(alice);
    assert_eq!(later.len(), first.len());
    for (old, new) in first.iter().zip(&later) {
        assert_ne!(old.bytes(), new.bytes());
        assert_eq!(new.queued.outgoing.envelope.created, w.now());
    }
    w.unreachable.remove(&bob);
    w.in_flight.extend(later);
    w.deliver_all();
    assert_eq!(w.texts(bob, w.account_id(alice)), ["one try"]);
}

#[test]
fn a_session_whose_start_went_unanswered_for_a_month_is_started_anew() {
    let mut w = World::new();
    let alice = w.account("alice", "Alice");
    let bob = w.account("bob", "Bob");
    let alice_id = w.account_id(alice);
    // Bob takes Alice's invite, but nothing reaches her for a month: his session with
    // her was started and never answered, which the Signal library calls stale.
    w.unreachable.insert(alice);
    let invite = w.m(alice).account_info().unwrap().invite_link;
    w.m(bob).accept_invite(&invite).unwrap();
    w.m(bob).send_text(&alice_id, "did my invite reach you?").unwrap();
    w.deliver_all();
    w.clock.advance(31 * DAY);
    // Alice is reachable again: Bob's queue does not stall on the stale session; it
    // starts a new one from her bundle, and his introduction and text arrive.
    w.unreachable.remove(&alice);
    w.m(bob).retry_now().unwrap();
    w.deliver_all();
    assert_eq!(w.texts(alice, w.account_id(bob)), ["did my invite reach you?"]);
}
