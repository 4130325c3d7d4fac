//! No message lost or stuck, on real SQLCipher profiles: a backlog that waited while
//! newer traffic turned the session's ratchet many times still arrives, every message
//! once; what the recipient cannot open is sent again in the session as it is now; a
//! crash between sending and recording it sends a copy the recipient recognises; and
//! a message nothing will deliver says so (*failed*) and can be retried.

mod world;

use cairn_core::AccountId;
use cairn_core::{CoreError, DeliveryState, Event, Handed};
use cairn_proto::MessageId;
use world::World;

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

/// Alice writes `count` texts to Bob, `backlog 0`, `backlog 1`, …
fn backlog(w: &mut World, alice: usize, bob_id: &AccountId, count: usize) -> Vec<MessageId> {
    (0..count)
        .map(|i| w.m(alice).send_text(bob_id, &format!("backlog {i}")).unwrap().0.id)
        .collect()
}

/// Bob and Alice exchange a message each way `turns` times (all delivered): every
/// exchange turns both sides' ratchets.
fn talk(w: &mut World, alice: usize, bob: usize, turns: usize) {
    let (alice_id, bob_id) = (w.account_id(alice), w.account_id(bob));
    for turn in 0..turns {
        w.m(bob).send_text(&alice_id, &format!("Bob, turn {turn}")).unwrap();
        w.deliver_all();
        w.m(alice).send_text(&bob_id, &format!("Alice, turn {turn}")).unwrap();
        w.deliver_all();
    }
}

/// Checks that Bob holds each backlog text exactly once, in Alice's conversation, and
/// that Alice sees each of them delivered.
fn every_message_arrived_once(w: &mut World, alice: usize, bob: usize, ids: &[MessageId]) {
    let alice_id = w.account_id(alice);
    let texts = w.texts(bob, &alice_id);
    for i in 0..ids.len() {
        let text = format!("backlog {i}");
        assert_eq!(texts.iter().filter(|t| **t == text).count(), 1, "{text} once");
    }
    for id in ids {
        let on_bob = w.m(bob).message(id).unwrap();
        assert_eq!(
            (on_bob.conversation.as_str(), on_bob.outgoing),
            (alice_id.as_str(), false)
        );
        assert_eq!(w.m(alice).message(id).unwrap().state, DeliveryState::Delivered);
    }
    for device in [alice, bob] {
        assert!(
            w.m(device).outbox().unwrap().is_empty(),
            "{}'s outbox is empty",
            w.devices[device].name
        );
    }
}

#[test]
fn a_backlog_held_in_caches_while_the_session_turns_six_times_is_sent_again_and_every_message_arrives_once() {
    let (mut w, alice, bob, _, bob_id) = alice_and_bob();
    // Bob is away: Alice's hundred messages are sealed and left with peer caches.
    w.go_away(bob);
    let ids = backlog(&mut w, alice, &bob_id, 100);
    w.deliver_all();
    assert_eq!(w.cache.len(), 100);
    for id in &ids {
        let message = w.m(alice).message(id).unwrap();
        assert_eq!((message.state, message.held_by), (DeliveryState::Sent, 1));
    }

    // Bob comes back and talks with Alice before he fetches his mail (a laptop that
    // wakes and sleeps): six exchanges, each turning the ratchet on both sides.
    w.come_back(bob);
    talk(&mut w, alice, bob, 6);

    // Now the backlog arrives. Bob keeps only his last five receiving chains, so none
    // of it opens (this is how messages were lost): he asks Alice for all of it again.
    let events = w.fetch(bob);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Message(m) if m.body.starts_with("backlog"))),
        "the backlog's chain is gone"
    );
    let asked = w.m(bob).outbox().unwrap();
    assert_eq!(asked.iter().filter(|e| e.kind == "resend").count(), 100);

    // Alice seals each again in the session as it is now; Bob opens them all.
    w.deliver_all();
    every_message_arrived_once(&mut w, alice, bob, &ids);
}

#[test]
fn a_backlog_waiting_in_the_outbox_is_sealed_as_it_leaves_so_newer_traffic_cannot_age_it() {
    let (mut w, alice, bob, alice_id, bob_id) = alice_and_bob();
    // Nothing reaches Bob, and no cache takes his mail: Alice's messages wait in her
    // outbox, as plaintext in her encrypted profile.
    w.unreachable.insert(bob);
    let ids = backlog(&mut w, alice, &bob_id, 100);
    w.deliver_all();
    for id in &ids {
        assert_eq!(w.m(alice).message(id).unwrap().state, DeliveryState::Sending);
    }
    // Six times Bob is reachable for a moment, long enough for the newest messages
    // (the backlog is backing off): both ratchets turn six times.
    for turn in 0..6 {
        w.unreachable.remove(&bob);
        w.m(bob).send_text(&alice_id, &format!("Bob, turn {turn}")).unwrap();
        w.deliver_all();
        w.m(alice).send_text(&bob_id, &format!("Alice, turn {turn}")).unwrap();
        w.deliver_all();
        w.unreachable.insert(bob);
    }
    // Bob is back for good; the backlog leaves, sealed now, and opens at once: one
    // envelope per message, and nothing is asked for again.
    w.unreachable.remove(&bob);
    w.m(alice).retry_now().unwrap();
    w.deliver_all();
    let carried = |w: &World, id: &MessageId| {
        w.delivered
            .iter()
            .filter(|f| f.to == bob && f.queued.outgoing.message == Some(*id))
            .count()
    };
    assert!(ids.iter().all(|id| carried(&w, id) == 1), "one envelope per message");
    every_message_arrived_once(&mut w, alice, bob, &ids);
}

#[test]
fn a_crash_between_sending_and_recording_it_sends_again_and_the_recipient_keeps_one_copy() {
    let (mut w, alice, bob, alice_id, bob_id) = alice_and_bob();
    let ids = backlog(&mut w, alice, &bob_id, 3);
    // Bob takes the envelopes, and Alice's app dies before it records that he did.
    let mut first = Vec::new();
    for flight in w.take(alice) {
        w.m(bob).receive(&flight.bytes()).unwrap();
        first.push(flight.bytes());
    }
    w.reopen_all();
    w.taken.clear();
    // Meanwhile Bob writes, so Alice's sending chain turns: what she sends again is
    // sealed anew, in another chain. Bob recognises the messages by their ids.
    w.m(bob).send_text(&alice_id, "did you write?").unwrap();
    for flight in w.take(bob) {
        w.deliver(flight).unwrap();
    }
    let again = w.take(alice);
    let resent: Vec<_> = again
        .iter()
        .filter(|f| f.queued.outgoing.message.is_some_and(|id| ids.contains(&id)))
        .collect();
    assert_eq!(resent.len(), 3);
    assert!(
        resent.iter().all(|f| !first.contains(&f.bytes())),
        "sealed anew, in Alice's new sending chain"
    );
    w.in_flight.extend(again);
    w.deliver_all();
    let texts = w.texts(bob, &alice_id);
    assert_eq!(texts, ["backlog 0", "backlog 1", "backlog 2", "did you write?"]);
    for id in &ids {
        assert_eq!(w.m(alice).message(id).unwrap().state, DeliveryState::Delivered);
    }
    assert!(w.m(alice).outbox().unwrap().is_empty());
}

#[test]
fn a_message_the_recipient_refuses_for_good_fails_instead_of_sending_forever_and_can_be_retried() {
    let (mut w, alice, bob, alice_id, bob_id) = alice_and_bob();
    let (message, _) = w.m(alice).send_text(&bob_id, "are you there?").unwrap();
    // Bob's device answers that it will never take the envelope (as a device that is
    // not the one the envelope was sealed for does).
    let flight = w.take(alice).into_iter().find(|f| f.to == bob).unwrap();
    let event = w.hand(&flight, Handed::Refused);
    assert_eq!(
        event,
        Some(Event::StateChanged {
            id: message.id,
            state: DeliveryState::Failed
        })
    );
    assert_eq!(w.m(alice).message(&message.id).unwrap().state, DeliveryState::Failed);
    assert!(
        w.m(alice).outbox().unwrap().is_empty(),
        "nothing pretends to still send it"
    );
    assert!(matches!(
        w.m(bob).retry_message(&message.id),
        Err(CoreError::UnknownMessage)
    ));

    // The person taps *retry*: it is sending again, and arrives.
    let retried = w.m(alice).retry_message(&message.id).unwrap();
    assert_eq!(retried.state, DeliveryState::Sending);
    assert!(matches!(
        w.m(alice).retry_message(&message.id),
        Err(CoreError::NotFailed)
    ));
    w.deliver_all();
    assert_eq!(w.texts(bob, &alice_id), ["are you there?"]);
    assert_eq!(w.m(alice).message(&message.id).unwrap().state, DeliveryState::Delivered);
}

#[test]
fn stale_envelopes_replayed_at_bob_make_him_ask_a_bounded_number_of_times() {
    let (mut w, alice, bob, _, bob_id) = alice_and_bob();
    w.go_away(bob);
    backlog(&mut w, alice, &bob_id, 1);
    w.deliver_all();
    let stale = w.cache.pop().unwrap();
    w.come_back(bob);
    talk(&mut w, alice, bob, 6);
    // Someone replays the stale envelope at Bob again and again (anyone can: it is
    // sealed, not secret). Bob asks Alice at most 256 times; after that, he refuses.
    let mut refused = 0;
    for _ in 0..300 {
        match w.m(bob).receive(&stale.bytes()) {
            Ok(_) => {}
            Err(CoreError::Undecryptable(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(refused, 300 - 256);
    let asked = w.m(bob).outbox().unwrap();
    assert_eq!(asked.iter().filter(|e| e.kind == "resend").count(), 256);
    // Alice sends it again at most sixteen times; Bob keeps it once.
    w.deliver_all();
    assert_eq!(
        w.texts(bob, w.account_id(alice))
            .iter()
            .filter(|t| *t == "backlog 0")
            .count(),
        1
    );
    assert!(w.m(alice).outbox().unwrap().is_empty() && w.m(bob).outbox().unwrap().is_empty());
}

#[test]
fn a_message_one_of_bobs_devices_refuses_is_still_on_its_way_to_his_other_device() {
    let (mut w, alice, bob, _, bob_id) = alice_and_bob();
    let phone = w.link(bob, "bob's phone");
    let (message, _) = w.m(alice).send_text(&bob_id, "for both of you").unwrap();
    let flights = w.take(alice);
    let to = |device: usize| flights.iter().find(|f| f.to == device).unwrap().clone();
    // The phone takes its copy; the laptop refuses its own for good.
    w.deliver(to(phone)).unwrap();
    assert_eq!(w.hand(&to(bob), Handed::Refused), None);
    assert_eq!(w.m(alice).message(&message.id).unwrap().state, DeliveryState::Sent);
    w.deliver_all();
    assert_eq!(w.m(alice).message(&message.id).unwrap().state, DeliveryState::Delivered);
}
