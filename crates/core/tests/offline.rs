//! Offline delivery through the peer cache, with real profiles, couriers and libp2p
//! nodes on loopback: Alice writes to Bob while he is away and then goes away herself;
//! three always-on nodes hold the sealed envelopes (in their own database files, which
//! never see a word of plaintext); Bob comes back, gets every message once and in
//! order, and his acknowledgement deletes every copy. His receipts wait in the caches
//! in turn until Alice is back. A group member away for three epochs catches up the
//! same way.

mod common;

use cairn_core::AccountId;
use std::time::Duration;

use cairn_core::{CoreError, DeliveryState};
use common::{befriend, contacts_with, loopback, vault, wait_until, Holders, Person};

const SECRET: &str = "the eagle lands at dawn";

/// Every byte of every file in `dir` (databases, their WAL and shared-memory files).
fn all_bytes_under(dir: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A loopback node that bootstraps from the holders and fetches its mailbox often.
fn on_network(holders: &Holders) -> cairn_net::NodeConfig {
    let mut config = loopback(false);
    config.bootstrap = vec![holders.address.clone()];
    config.cache.fetch_every = Duration::from_secs(1);
    config
}

#[test]
fn alice_writes_while_bob_is_offline_then_leaves_and_bob_gets_every_message_later() {
    let vault = vault();
    let holders = Holders::start(3);
    let (mut alice, mut bob) = contacts_with(&vault, on_network(&holders), on_network(&holders));
    let (alice_id, bob_id) = (alice.account_id(), bob.account_id());

    // Bob closes the app.
    bob.go_offline();
    let sent: Vec<String> = (1..=5).map(|i| format!("{SECRET} #{i}")).collect();
    let mut ids = Vec::new();
    for text in &sent {
        ids.push(alice.with(|m| m.send_text(&bob_id, text).unwrap().0.id));
        // Distinct send times, so the history's order is the sending order.
        std::thread::sleep(Duration::from_millis(3));
    }
    alice.courier.wake();
    wait_until("every message is held by three peers", || {
        ids.iter().all(|id| {
            let message = alice.with(|m| m.message(id).unwrap());
            message.state == DeliveryState::Sent && message.held_by == 3
        })
    });
    let bob_mailbox = bob.with(|m| m.mailbox().unwrap());
    assert!(
        holders.held_for(&bob_mailbox) >= 15,
        "three copies of five envelopes (and of anything else queued)"
    );
    // The holders' files hold sealed envelopes only.
    assert!(!contains(&all_bytes_under(holders.dir.path()), SECRET));

    // Alice closes the app too; only the holders are up.
    alice.go_offline();
    bob.come_online();
    wait_until("Bob has every message", || {
        bob.texts_from(&alice_id).len() >= sent.len()
    });
    // Extra copies from the other holders are recognised and change nothing.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(bob.texts_from(&alice_id), sent, "each message once, in order");
    assert!(bob.courier.cached_arrivals() >= 5);
    wait_until("Bob's acknowledgements deleted every copy", || {
        holders.held_for(&bob_mailbox) == 0
    });

    // Bob's delivery receipts waited in the caches for Alice, who sees them on return.
    alice.come_online();
    wait_until("Alice sees every message delivered", || {
        ids.iter()
            .all(|id| alice.with(|m| m.message(id).unwrap().state) == DeliveryState::Delivered)
    });
    wait_until("her acknowledgements emptied the caches", || {
        holders.held().iter().all(|&n| n == 0)
    });
    assert!(!contains(&all_bytes_under(holders.dir.path()), SECRET));
    // Neither person's own cache file holds plaintext either.
    for person in [&alice, &bob] {
        let cache = person.dir.path().join("cache.db");
        if cache.exists() {
            assert!(!contains(&std::fs::read(cache).unwrap(), SECRET));
        }
    }
}

#[test]
fn bob_names_his_always_on_node_and_gets_his_mail_there_when_every_other_holder_is_gone() {
    let vault = vault();
    let holders = Holders::start(3);
    // Bob's own always-on node, on no DHT: only his signed device list names it.
    let home = Holders::start_from(240, 1);
    let (mut alice, mut bob) = contacts_with(&vault, on_network(&holders), on_network(&holders));
    let bob_id = bob.account_id();
    let home_address = home.address.to_string();
    bob.with(|m| m.set_always_on_nodes(std::slice::from_ref(&home_address)).unwrap());
    bob.courier.wake();
    wait_until("Alice learned Bob's always-on node from his new card", || {
        alice.with(|m| m.always_on_of(&bob_id).unwrap()) == [home_address.clone()]
    });

    bob.go_offline();
    let (message, _) = alice.with(|m| m.send_text(&bob_id, "kept at your place").unwrap());
    alice.courier.wake();
    let bob_mailbox = bob.with(|m| m.mailbox().unwrap());
    // (Bob's node may also be one of the closest peers Alice finds, once she knows it.)
    wait_until("the closest peers and Bob's node hold it", || {
        alice.with(|m| m.message(&message.id).unwrap().held_by) >= 3 && home.held_for(&bob_mailbox) > 0
    });
    alice.go_offline();
    // Every holder the DHT chose is gone.
    drop(holders);
    bob.come_online();
    let alice_id = alice.account_id();
    wait_until("Bob got it from his own node", || {
        bob.texts_from(&alice_id) == ["kept at your place"]
    });
    wait_until("and acknowledged it there", || home.held_for(&bob_mailbox) == 0);
}

#[test]
fn a_tampered_envelope_is_rejected_by_bob_and_changes_nothing() {
    let vault = vault();
    let (mut alice, bob) = contacts_with(&vault, loopback(false), loopback(false));
    let (alice_id, bob_id) = (alice.account_id(), bob.account_id());
    // Alice's node stops, so that her envelope reaches Bob only as this test hands it.
    alice.go_offline();
    let (message, due) = alice.with(|m| {
        let (message, _) = m.send_text(&bob_id, "untouched").unwrap();
        (message, m.due_envelopes(100).unwrap())
    });
    let envelope = due
        .iter()
        .find(|q| q.outgoing.account_id == bob_id && q.outgoing.message == Some(message.id))
        .unwrap()
        .outgoing
        .envelope
        .clone();
    for at in [0, envelope.body.len() / 2, envelope.body.len() - 1] {
        let mut tampered = envelope.clone();
        tampered.body[at] ^= 0x20;
        let refused = bob.with(|m| m.receive(&tampered.to_bytes()));
        assert!(
            matches!(refused, Err(CoreError::Crypto(_) | CoreError::Proto(_))),
            "got {refused:?}"
        );
    }
    assert!(bob.texts_from(&alice_id).is_empty(), "nothing tampered was stored");
    // The real one still opens.
    bob.with(|m| m.receive(&envelope.to_bytes()).unwrap());
    assert_eq!(bob.texts_from(&alice_id), ["untouched"]);
}

#[test]
fn dave_is_away_for_three_epochs_and_catches_up_on_the_group_through_the_cache() {
    let vault = vault();
    let holders = Holders::start(3);
    let people: Vec<Person> = ["Alice", "Bob", "Carol", "Dave"]
        .into_iter()
        .map(|name| Person::with_config(name, &vault, on_network(&holders)))
        .collect();
    for friend in &people[1..] {
        befriend(&people[0], friend);
    }
    let ids: Vec<AccountId> = people.iter().map(Person::account_id).collect();
    let [alice, bob, carol, dave] = <[Person; 4]>::try_from(people).ok().unwrap();
    let [_, bob_id, carol_id, _] = <[AccountId; 4]>::try_from(ids.clone()).unwrap();
    let group = alice.with(|m| m.create_group("Trip", &ids[1..]).unwrap().0.group_id);
    alice.courier.wake();
    let in_group = |p: &Person, epoch: u64| p.with(|m| m.group(&group).map(|g| g.epoch >= epoch && g.name == "Trip"));
    let epoch = alice.with(|m| m.group(&group).unwrap().epoch);
    wait_until("everyone is in the group", || {
        [&bob, &carol, &dave]
            .iter()
            .all(|p| in_group(p, epoch).unwrap_or(false))
    });

    let mut dave = dave;
    dave.go_offline();
    let say = |p: &Person, text: &str| {
        p.with(|m| m.send_group_text(&group, text).unwrap());
        p.courier.wake();
    };
    let change = |work: &dyn Fn(&mut cairn_core::Messenger) -> Vec<cairn_core::OutboxId>| {
        alice.with(|m| work(m));
        alice.courier.wake();
        let epoch = alice.with(|m| m.group(&group).unwrap().epoch);
        wait_until("Bob follows Alice's commit", || in_group(&bob, epoch).unwrap());
    };
    say(&alice, "one");
    change(&|m| m.remove_group_members(&group, std::slice::from_ref(&carol_id)).unwrap());
    change(&|m| m.add_group_members(&group, std::slice::from_ref(&carol_id)).unwrap());
    wait_until("Carol is back in", || carol.with(|m| m.group(&group).unwrap().active));
    say(&carol, "two");
    change(&|m| m.remove_group_members(&group, std::slice::from_ref(&bob_id)).unwrap());
    say(&alice, "three");
    let final_epoch = alice.with(|m| m.group(&group).unwrap().epoch);
    assert_eq!(final_epoch, epoch + 3);

    dave.come_online();
    let texts = |p: &Person| -> Vec<String> {
        p.with(|m| m.conversation(group.as_str(), 100).unwrap())
            .into_iter()
            .map(|m| m.body)
            .collect()
    };
    wait_until("Dave caught up through the cache", || {
        dave.with(|m| m.group(&group).unwrap().epoch) == final_epoch && texts(&dave).len() == 3
    });
    assert_eq!(texts(&dave), ["one", "two", "three"]);
    let view = dave.with(|m| m.group(&group).unwrap());
    assert_eq!(view.members.len(), 3, "Alice, Carol and Dave");
    assert!(view.members.iter().all(|m| m.account_id != bob_id));
    assert!(dave.courier.cached_arrivals() > 0, "some of it came from the cache");
}
