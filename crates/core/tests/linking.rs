//! Linking a second device, on real SQLCipher profiles, with the frames handed between
//! the two messengers directly (the network carries the same bytes): Alice's laptop
//! shows an offer, her new desktop reads it, both show the same code, the laptop hands
//! the account over, and from then on both devices get everything — and Bob's safety
//! number with Alice does not change. Offers that expired, were used or were changed
//! are refused and change nothing. With the person's consent the history follows, page
//! by page. Over loopback, the same link runs through real libp2p nodes. A removed
//! device learns it was removed and gets nothing new.

mod common;
mod world;

use cairn_core::{AccountId, DeviceId};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_core::{CoreError, GroupView, LinkStep, Messenger, NewDeviceLink, Unlock, LINK_OFFER_VALIDITY};
use cairn_proto::LinkOffer;
use cairn_store::ProfileDir;
use common::{befriend, loopback, vault, wait_until, Person};
use world::World;

/// Runs the whole link from `existing` to the fresh profile `new`, as a person would,
/// without the history.
fn link_by_offer(w: &mut World, existing: usize, new: usize, offer: &LinkOffer) {
    link_with_history(w, existing, new, offer, false);
}

/// Runs the whole link; with `history`, the existing device then passes its message
/// history on, page by page. Returns the progress the new device saw after each page.
fn link_with_history(w: &mut World, existing: usize, new: usize, offer: &LinkOffer, history: bool) -> Vec<(u64, u64)> {
    // The new device read the offer from the screen (here: through its link form).
    let offer = LinkOffer::from_link(&offer.to_link()).unwrap();
    let (mut new_side, first) = NewDeviceLink::start(&offer, w.now()).unwrap();
    let (mut existing_side, answer) = w.m(existing).answer_link(&first).unwrap();
    let code = new_side.answered(&answer).unwrap();
    assert_eq!(code, existing_side.confirmation_code(), "both screens show one code");
    let frames = w.m(existing).hand_over(&mut existing_side).unwrap();
    let card = w.m(new).join_over_link(&mut new_side, &frames).unwrap();
    w.m(existing).finish_link(&mut existing_side, &card).unwrap();
    let mut progress = Vec::new();
    let (mut from, mut received) = (Some(0), 0);
    while let (true, Some(start)) = (history, from) {
        let (frames, sent) = w.m(existing).history_page(&mut existing_side, start).unwrap();
        let page = w.m(new).import_history(&mut new_side, &frames).unwrap();
        assert_eq!(sent, page, "the new device took the page the old one sent");
        received += page.received;
        progress.push((received, page.total));
        from = page.next;
    }
    w.deliver_all();
    progress
}

/// Bob takes the invite of Alice's `laptop`, and Alice starts the group "Family" with
/// him; returns their account ids and the group.
fn bob_joins_alices_family(w: &mut World, laptop: usize, bob: usize) -> (AccountId, AccountId, GroupView) {
    let invite = w.m(laptop).account_info().unwrap().invite_link;
    w.m(bob).accept_invite(&invite).unwrap();
    w.deliver_all();
    let (alice_id, bob_id) = (w.account_id(laptop), w.account_id(bob));
    let (group, _) = w
        .m(laptop)
        .create_group("Family", std::slice::from_ref(&bob_id))
        .unwrap();
    w.deliver_all();
    (alice_id, bob_id, group)
}

/// Everything a conversation shows, message by message.
fn shown(w: &mut World, device: usize, conversation: &str) -> Vec<(String, String, String, bool)> {
    w.m(device)
        .conversation(conversation, 10_000)
        .unwrap()
        .into_iter()
        .map(|m| (m.body, m.sender.to_string(), format!("{:?}", m.state), m.outgoing))
        .collect()
}

#[test]
fn with_the_persons_consent_the_new_device_gets_the_whole_history_page_by_page() {
    let mut w = World::new();
    let laptop = w.account("laptop", "Alice");
    let bob = w.account("bob", "Bob");
    let (alice_id, bob_id, group) = bob_joins_alices_family(&mut w, laptop, bob);
    // More history than two pages hold (a page carries up to 1 MiB of text): long
    // messages from Bob, short answers from Alice, and a group text.
    let long = |i: usize| format!("{i:03}{}", "x".repeat(60_000));
    for i in 0..40 {
        w.m(bob).send_text(&alice_id, &long(i)).unwrap();
        w.m(laptop).send_text(&bob_id, &format!("got {i}")).unwrap();
    }
    w.m(bob).send_group_text(&group.group_id, "dinner at 7").unwrap();
    w.deliver_all();
    w.m(laptop).mark_read(bob_id.as_str()).unwrap();
    let on_laptop = shown(&mut w, laptop, bob_id.as_str());
    assert_eq!(on_laptop.len(), 80);

    let desktop = w.new_profile("desktop");
    let offer = w.m(laptop).offer_link(Vec::new(), LINK_OFFER_VALIDITY).unwrap();
    let progress = link_with_history(&mut w, laptop, desktop, &offer, true);

    // Three pages, the progress bar only ever moving forward, to the end.
    assert_eq!(progress.len(), 3, "{progress:?}");
    assert!(progress.windows(2).all(|p| p[0].0 < p[1].0));
    assert_eq!(progress.last().unwrap().0, progress.last().unwrap().1);
    // The desktop shows the conversation as the laptop does: every message, in
    // order, with its sender, delivery state and direction; the group's too.
    assert_eq!(shown(&mut w, desktop, bob_id.as_str()), on_laptop);
    assert_eq!(w.texts(desktop, &group.group_id), ["dinner at 7"]);
    // And it goes on from there.
    w.m(bob).send_text(&alice_id, "and now?").unwrap();
    w.deliver_all();
    assert_eq!(w.texts(desktop, &bob_id).last().unwrap(), "and now?");
}

#[test]
fn without_consent_no_history_goes_to_the_new_device() {
    let vault = vault();
    let laptop = Person::new("Alice", &vault, false);
    let bob = Person::new("Bob", &vault, false);
    befriend(&laptop, &bob);
    let bob_id = bob.account_id();
    laptop.with(|m| m.send_text(&bob_id, "before the link").unwrap());
    for share_history in [false, true] {
        let (desktop, dir, steps) = join_over_loopback(&laptop, share_history);
        let texts = desktop
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .conversation(bob_id.as_str(), 10)
            .unwrap();
        let history: Vec<_> = steps.iter().filter(|s| matches!(s, LinkStep::History { .. })).collect();
        if share_history {
            assert_eq!(texts.len(), 1);
            assert_eq!(history, [&LinkStep::History { received: 1, total: 1 }]);
        } else {
            assert!(texts.is_empty(), "no history without consent");
            assert!(history.is_empty());
        }
        drop((desktop, dir));
    }
}

#[test]
fn alices_new_device_links_by_offer_and_then_gets_everything_while_bobs_safety_number_stays() {
    let mut w = World::new();
    let laptop = w.account("laptop", "Alice");
    let bob = w.account("bob", "Bob");
    let (alice_id, bob_id, group) = bob_joins_alices_family(&mut w, laptop, bob);
    w.m(laptop).set_verified(&bob_id, true).unwrap();
    let number_before = w.m(bob).safety_number(&alice_id).unwrap();

    let desktop = w.new_profile("desktop");
    let offer = w
        .m(laptop)
        .offer_link(vec!["/ip4/127.0.0.1/tcp/4001".into()], LINK_OFFER_VALIDITY)
        .unwrap();
    link_by_offer(&mut w, laptop, desktop, &offer);

    // The desktop is Alice: same account, her contact, marked verified.
    assert_eq!(w.account_id(desktop), alice_id);
    let contacts = w.m(desktop).contacts().unwrap();
    assert_eq!(contacts.len(), 1);
    assert!(contacts[0].verified && contacts[0].display_name == "Bob");
    assert_eq!(
        w.m(bob).contact(&alice_id).unwrap().devices,
        2,
        "Bob learned the new device"
    );
    assert_eq!(
        w.m(bob).safety_number(&alice_id).unwrap().digits(),
        number_before.digits(),
        "the safety number did not change"
    );

    // Bob writes: both of Alice's devices get it. Alice answers from the desktop: Bob
    // gets it and the laptop keeps a copy.
    w.m(bob).send_text(&alice_id, "hi Alice").unwrap();
    w.deliver_all();
    w.m(desktop).send_text(&bob_id, "hi from my desktop").unwrap();
    w.deliver_all();
    for device in [laptop, desktop] {
        assert_eq!(w.texts(device, &bob_id), ["hi Alice", "hi from my desktop"]);
    }
    assert_eq!(w.texts(bob, &alice_id), ["hi Alice", "hi from my desktop"]);

    // The desktop is in the group too.
    assert_eq!(w.m(desktop).group(&group.group_id).unwrap().name, "Family");
    w.m(bob).send_group_text(&group.group_id, "dinner at 7").unwrap();
    w.deliver_all();
    assert_eq!(w.texts(desktop, &group.group_id), ["dinner at 7"]);
    assert_eq!(w.texts(laptop, &group.group_id), ["dinner at 7"]);
}

#[test]
fn an_expired_used_or_changed_offer_is_refused_and_changes_nothing() {
    let mut w = World::new();
    let laptop = w.account("laptop", "Alice");
    let version_before = w.m(laptop).account_info().unwrap();

    // Expired (ten minutes and a second later, on the world's clock): the new device
    // refuses it, and so does the laptop if asked anyway.
    let expired = w.m(laptop).offer_link(Vec::new(), LINK_OFFER_VALIDITY).unwrap();
    let (_, first) = NewDeviceLink::start(&expired, w.now()).unwrap();
    w.clock.advance(LINK_OFFER_VALIDITY + Duration::from_secs(1));
    assert!(matches!(
        NewDeviceLink::start(&expired, w.now()),
        Err(CoreError::LinkRefused(_))
    ));
    assert!(matches!(
        w.m(laptop).answer_link(&first),
        Err(CoreError::LinkRefused(_))
    ));
    let mut extended = expired.clone();
    extended.expires_at += 3600;
    let (_, first) = NewDeviceLink::start(&extended, w.now()).unwrap();
    assert!(matches!(
        w.m(laptop).answer_link(&first),
        Err(CoreError::LinkRefused(_))
    ));

    // Changed: a secret that is not the laptop's.
    let mut changed = w.m(laptop).offer_link(Vec::new(), LINK_OFFER_VALIDITY).unwrap();
    changed.secret[0] ^= 1;
    let (_, first) = NewDeviceLink::start(&changed, w.now()).unwrap();
    assert!(matches!(
        w.m(laptop).answer_link(&first),
        Err(CoreError::LinkRefused(_))
    ));

    // Used: the same offer a second time.
    let offer = w.m(laptop).offer_link(Vec::new(), LINK_OFFER_VALIDITY).unwrap();
    let desktop = w.new_profile("desktop");
    link_by_offer(&mut w, laptop, desktop, &offer);
    let stranger = w.new_profile("stranger");
    let (_, first) = NewDeviceLink::start(&offer, w.now()).unwrap();
    assert!(matches!(
        w.m(laptop).answer_link(&first),
        Err(CoreError::LinkRefused(_))
    ));
    assert!(!w.m(stranger).has_account(), "the stranger got nothing");

    // The refusals changed nothing: the account is the same, with two devices.
    let after = w.m(laptop).account_info().unwrap();
    assert_eq!(after.account_id, version_before.account_id);
    assert_eq!(w.m(desktop).account_info().unwrap().account_id, after.account_id);
}

/// Links a fresh profile to `laptop`'s account over real libp2p nodes on loopback,
/// with the person at the laptop confirming once the code shows there. Returns the
/// new device's messenger, its directory and the steps it showed; checks both
/// screens showed one code.
fn join_over_loopback(
    laptop: &Person,
    share_history: bool,
) -> (cairn_core::SharedMessenger, tempfile::TempDir, Vec<LinkStep>) {
    let addresses = laptop.with(|m| m.invite().unwrap().addresses);
    let offer = laptop.with(|m| m.offer_link(addresses, LINK_OFFER_VALIDITY).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let vault = vault();
    let profile = Messenger::create_profile(&ProfileDir::new(dir.path()), Unlock::Keyring(&vault)).unwrap();
    let desktop: cairn_core::SharedMessenger = Arc::new(Mutex::new(Some(profile)));
    let shown_on_laptop = Arc::new(Mutex::new(None));
    let confirmer = {
        let (laptop_messenger, shown) = (laptop.messenger.clone(), shown_on_laptop.clone());
        std::thread::spawn(move || {
            wait_until("the laptop shows a code", || {
                let mut slot = laptop_messenger.lock().unwrap();
                let messenger = slot.as_mut().unwrap();
                match messenger.link_waiting_for_confirmation() {
                    Some(code) => {
                        *shown.lock().unwrap() = Some(code);
                        messenger.confirm_link(true, share_history);
                        true
                    }
                    None => false,
                }
            })
        })
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut steps = Vec::new();
    runtime
        .block_on(cairn_core::join_by_link(&desktop, &offer, loopback(false), |step| {
            steps.push(step)
        }))
        .unwrap();
    confirmer.join().unwrap();
    assert_eq!(
        laptop.with(|m| m.served_link_state()),
        None,
        "the laptop's side is done"
    );
    let on_laptop = shown_on_laptop.lock().unwrap().clone().unwrap();
    assert_eq!(
        steps.first(),
        Some(&LinkStep::Code(on_laptop)),
        "both screens showed one code"
    );
    (desktop, dir, steps)
}

#[test]
fn a_new_device_links_over_loopback_and_both_devices_get_bobs_message() {
    let vault = vault();
    let laptop = Person::new("Alice", &vault, false);
    let bob = Person::new("Bob", &vault, false);
    befriend(&laptop, &bob);
    let (alice_id, bob_id) = (laptop.account_id(), bob.account_id());
    let (desktop, dir, _) = join_over_loopback(&laptop, false);

    // Like any node, the desktop's needs a way into the network (here the laptop; in
    // the app also bootstrap nodes and the LAN).
    let mut config = loopback(false);
    config.bootstrap = laptop
        .with(|m| m.invite().unwrap().addresses)
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let desktop = Person::from_profile(dir, desktop, config);
    assert_eq!(desktop.account_id(), alice_id);
    laptop.courier.wake();
    wait_until("Bob knows Alice's second device", || {
        bob.with(|m| m.contact(&alice_id).unwrap().devices) == 2
    });
    bob.with(|m| m.send_text(&alice_id, "hello both of you").unwrap());
    bob.courier.wake();
    wait_until("both of Alice's devices have Bob's message", || {
        laptop.texts_from(&bob_id) == ["hello both of you"] && desktop.texts_from(&bob_id) == ["hello both of you"]
    });
}

#[test]
fn a_removed_device_learns_it_was_removed_and_gets_nothing_new() {
    let mut w = World::new();
    let laptop = w.account("laptop", "Alice");
    let desktop = w.link(laptop, "desktop");
    let bob = w.account("bob", "Bob");
    // Two groups: one Alice runs, one Bob runs (there Bob's device takes the
    // desktop's leaf out when he hears of the new list).
    let (alice_id, bob_id, alices) = bob_joins_alices_family(&mut w, laptop, bob);
    let (bobs, _) = w
        .m(bob)
        .create_group("Climbing", std::slice::from_ref(&alice_id))
        .unwrap();
    w.deliver_all();
    for group in [&alices.group_id, &bobs.group_id] {
        assert_eq!(w.m(desktop).group(group).unwrap().members.len(), 2);
    }
    let epochs = (alices.epoch, w.m(bob).group(&bobs.group_id).unwrap().epoch);
    // The desktop writes to Bob; the envelope is slow and arrives after the removal.
    w.m(desktop).send_text(&bob_id, "sent just before the removal").unwrap();
    let late: Vec<_> = w.take(desktop).into_iter().filter(|f| f.to == bob).collect();

    // The laptop lists both devices, names the desktop, and removes it.
    let devices = w.m(laptop).devices().unwrap();
    assert_eq!(devices.len(), 2);
    assert!(devices[0].this_device && !devices[1].this_device);
    let desktop_id = devices[1].device_id;
    w.m(laptop).rename_device(desktop_id, "Old desktop").unwrap();
    assert_eq!(w.m(laptop).devices().unwrap()[1].name, "Old desktop");
    assert!(matches!(
        w.m(laptop).rename_device(desktop_id, " "),
        Err(CoreError::InvalidSetting(_))
    ));
    assert!(matches!(
        w.m(laptop).remove_device(devices[0].device_id),
        Err(CoreError::InvalidSetting(_))
    ));
    w.m(laptop).remove_device(desktop_id).unwrap();
    let flights = w.take(laptop);
    assert_eq!(
        flights.iter().filter(|f| f.to == desktop).count(),
        1,
        "the desktop gets one envelope: the list that tells it it was removed"
    );
    w.in_flight.extend(flights);
    w.deliver_all();
    assert!(!w.m(desktop).is_listed().unwrap(), "the desktop knows it was removed");
    assert!(w.m(laptop).is_listed().unwrap());
    assert_eq!(w.m(laptop).devices().unwrap().len(), 1);
    assert_eq!(w.m(bob).contact(&alice_id).unwrap().devices, 1, "Bob has the new list");
    assert!(matches!(
        w.m(laptop).remove_device(desktop_id),
        Err(CoreError::InvalidSetting(_))
    ));
    // Both groups went one epoch on, without the desktop's leaf.
    assert_eq!(w.m(laptop).group(&alices.group_id).unwrap().epoch, epochs.0 + 1);
    assert_eq!(w.m(laptop).group(&bobs.group_id).unwrap().epoch, epochs.1 + 1);
    for group in [&alices.group_id, &bobs.group_id] {
        let view = w.m(bob).group(group).unwrap();
        assert!(view.members.iter().all(|m| m.devices == 1), "{view:?}");
    }

    // Nothing new is even addressed to the removed desktop: not Bob's texts, not the
    // laptop's copies.
    w.m(bob).send_text(&alice_id, "after the removal").unwrap();
    w.m(bob)
        .send_group_text(&alices.group_id, "group, after the removal")
        .unwrap();
    w.m(laptop).send_text(&bob_id, "just me now").unwrap();
    let mut flights = w.take(bob);
    flights.extend(w.take(laptop));
    assert!(flights.iter().all(|f| f.to != desktop));
    w.in_flight.extend(flights);
    w.deliver_all();
    assert_eq!(w.texts(laptop, &bob_id), ["after the removal", "just me now"]);
    assert_eq!(w.texts(desktop, &bob_id), ["sent just before the removal"]);
    assert_eq!(w.texts(laptop, &alices.group_id), ["group, after the removal"]);
    assert!(w.texts(desktop, &alices.group_id).is_empty());

    // The desktop's slow envelope is refused: Bob closed his session with it (and
    // would not start a new one with a device Alice's list dropped). And the desktop
    // does nothing more as Alice: no texts, no links, no device lists, no contacts.
    for flight in late {
        let outcome = w.deliver(flight);
        assert!(
            matches!(outcome, Err(CoreError::Crypto(_) | CoreError::FromRemovedDevice(_))),
            "{outcome:?}"
        );
    }
    assert_eq!(w.texts(bob, &alice_id), ["after the removal", "just me now"]);
    let laptop_id = devices[0].device_id;
    let carol = w.account("carol", "Carol");
    let carols_invite = w.m(carol).account_info().unwrap().invite_link;
    let d = w.m(desktop);
    assert!(matches!(
        d.send_text(&bob_id, "still here?"),
        Err(CoreError::DeviceRemoved)
    ));
    assert!(matches!(
        d.offer_link(Vec::new(), LINK_OFFER_VALIDITY),
        Err(CoreError::DeviceRemoved)
    ));
    assert!(matches!(d.remove_device(laptop_id), Err(CoreError::DeviceRemoved)));
    assert!(matches!(d.set_always_on_nodes(&[]), Err(CoreError::DeviceRemoved)));
    assert!(matches!(d.accept_invite(&carols_invite), Err(CoreError::DeviceRemoved)));

    // A device linked later gets an id of its own, not the removed desktop's.
    let tablet = w.link(laptop, "tablet");
    let ids: Vec<DeviceId> = w.m(tablet).devices().unwrap().iter().map(|d| d.device_id).collect();
    assert_eq!(ids, [laptop_id, desktop_id.next().unwrap()]);
}

#[test]
fn a_device_whose_list_has_not_arrived_yet_is_not_taken_for_a_removed_one() {
    let mut w = World::new();
    let laptop = w.account("laptop", "Alice");
    let bob = w.account("bob", "Bob");
    let invite = w.m(laptop).account_info().unwrap().invite_link;
    w.m(bob).accept_invite(&invite).unwrap();
    w.deliver_all();
    let alice_id = w.account_id(laptop);
    // Bob's group, with Alice as a second admin: Bob's device, first in the tree,
    // is the one that would take removed devices' leaves out.
    let (climbing, _) = w
        .m(bob)
        .create_group("Climbing", std::slice::from_ref(&alice_id))
        .unwrap();
    w.deliver_all();
    w.m(bob).set_group_admin(&climbing.group_id, &alice_id, true).unwrap();
    w.deliver_all();
    // A card of Alice's that Bob has already seen (her prekey rotation), slow.
    w.m(laptop).rotate_signed_prekey().unwrap();
    let stale: Vec<_> = w.take(laptop).into_iter().filter(|f| f.to == bob).collect();

    // Alice links a tablet; her laptop adds it to Climbing.
    let tablet = w.new_profile("tablet");
    let offer = w.m(laptop).offer_link(Vec::new(), LINK_OFFER_VALIDITY).unwrap();
    let (mut new_side, first) = NewDeviceLink::start(&offer, w.now()).unwrap();
    let (mut existing_side, answer) = w.m(laptop).answer_link(&first).unwrap();
    new_side.answered(&answer).unwrap();
    let frames = w.m(laptop).hand_over(&mut existing_side).unwrap();
    let card = w.m(tablet).join_over_link(&mut new_side, &frames).unwrap();
    w.m(laptop).finish_link(&mut existing_side, &card).unwrap();
    // Bob gets the commit that adds the tablet before anything with Alice's new
    // list, then the stale card: his list of Alice does not name the tablet yet.
    // (To Bob, in order: Alice's new card, the commit, the tablet's card.)
    let (mut to_bob, rest): (Vec<_>, Vec<_>) = w.take(laptop).into_iter().partition(|f| f.to == bob);
    assert_eq!(to_bob.len(), 3);
    let commit = to_bob.remove(1);
    let events = w.deliver(commit).unwrap();
    assert!(events.iter().any(|e| matches!(e, cairn_core::Event::GroupChanged(_))));
    for flight in stale {
        w.deliver(flight).unwrap();
    }
    assert_eq!(w.m(bob).contact(&alice_id).unwrap().devices, 1);
    // Nothing of Bob's takes the tablet out; once the rest arrives, all agree.
    w.in_flight.extend(to_bob);
    w.in_flight.extend(rest);
    w.deliver_all();
    let epoch = w.m(laptop).group(&climbing.group_id).unwrap().epoch;
    for device in [laptop, tablet, bob] {
        let view = w.m(device).group(&climbing.group_id).unwrap();
        assert_eq!(view.epoch, epoch, "{}", w.devices[device].name);
        let alice = view.members.iter().find(|m| m.account_id == alice_id).unwrap();
        assert_eq!(
            alice.devices, 2,
            "the tablet stays in Climbing for {}",
            w.devices[device].name
        );
    }
    w.m(bob).send_group_text(&climbing.group_id, "hi tablet").unwrap();
    w.deliver_all();
    assert_eq!(w.texts(tablet, &climbing.group_id), ["hi tablet"]);
}
