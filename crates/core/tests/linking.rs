//! Linking a second device, on real SQLCipher profiles, with the frames handed between
//! the two messengers directly (the network carries the same bytes): Alice's laptop
//! shows an offer, her new desktop reads it, both show the same code, the laptop hands
//! the account over, and from then on both devices get everything — and Bob's safety
//! number with Alice does not change. Offers that expired, were used or were changed
//! are refused and change nothing. Over loopback, the same link runs through real
//! libp2p nodes.

mod common;
mod world;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_core::{CoreError, Messenger, NewDeviceLink, Unlock, LINK_OFFER_VALIDITY};
use cairn_proto::LinkOffer;
use cairn_store::ProfileDir;
use common::{befriend, loopback, vault, wait_until, Person};
use world::World;

/// Runs the whole link from `existing` to the fresh profile `new`, as a person would.
fn link_by_offer(w: &mut World, existing: usize, new: usize, offer: &LinkOffer) {
    // The new device read the offer from the screen (here: through its link form).
    let offer = LinkOffer::from_link(&offer.to_link()).unwrap();
    let (mut new_side, first) = NewDeviceLink::start(&offer).unwrap();
    let (mut existing_side, answer) = w.m(existing).answer_link(&first).unwrap();
    let code = new_side.answered(&answer).unwrap();
    assert_eq!(code, existing_side.confirmation_code(), "both screens show one code");
    let frames = w.m(existing).hand_over(&mut existing_side).unwrap();
    let card = w.m(new).join_over_link(&mut new_side, &frames).unwrap();
    let out = w.m(existing).finish_link(&mut existing_side, &card).unwrap();
    w.send(out);
    w.deliver_all();
}

#[test]
fn alices_new_device_links_by_offer_and_then_gets_everything_while_bobs_safety_number_stays() {
    let mut w = World::new();
    let laptop = w.account("laptop", "Alice");
    let bob = w.account("bob", "Bob");
    let invite = w.m(laptop).account_info().unwrap().invite_link;
    let (_, out) = w.m(bob).accept_invite(&invite).unwrap();
    w.send(out);
    w.deliver_all();
    let (alice_id, bob_id) = (w.account_id(laptop), w.account_id(bob));
    w.m(laptop).set_verified(&bob_id, true).unwrap();
    let (group, out) = w
        .m(laptop)
        .create_group("Family", std::slice::from_ref(&bob_id))
        .unwrap();
    w.send(out);
    w.deliver_all();
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
    let (_, out) = w.m(bob).send_text(&alice_id, "hi Alice").unwrap();
    w.send(out);
    w.deliver_all();
    let (_, out) = w.m(desktop).send_text(&bob_id, "hi from my desktop").unwrap();
    w.send(out);
    w.deliver_all();
    for device in [laptop, desktop] {
        assert_eq!(w.texts(device, &bob_id), ["hi Alice", "hi from my desktop"]);
    }
    assert_eq!(w.texts(bob, &alice_id), ["hi Alice", "hi from my desktop"]);

    // The desktop is in the group too.
    assert_eq!(w.m(desktop).group(&group.group_id).unwrap().name, "Family");
    let (_, out) = w.m(bob).send_group_text(&group.group_id, "dinner at 7").unwrap();
    w.send(out);
    w.deliver_all();
    assert_eq!(w.texts(desktop, &group.group_id), ["dinner at 7"]);
    assert_eq!(w.texts(laptop, &group.group_id), ["dinner at 7"]);
}

#[test]
fn an_expired_used_or_changed_offer_is_refused_and_changes_nothing() {
    let mut w = World::new();
    let laptop = w.account("laptop", "Alice");
    let version_before = w.m(laptop).account_info().unwrap();

    // Expired: the new device refuses it, and so does the laptop if asked anyway.
    let expired = w.m(laptop).offer_link(Vec::new(), Duration::ZERO).unwrap();
    assert!(matches!(NewDeviceLink::start(&expired), Err(CoreError::LinkRefused(_))));
    let mut extended = expired.clone();
    extended.expires_at += 3600;
    let (_, first) = NewDeviceLink::start(&extended).unwrap();
    assert!(matches!(
        w.m(laptop).answer_link(&first),
        Err(CoreError::LinkRefused(_))
    ));

    // Changed: a secret that is not the laptop's.
    let mut changed = w.m(laptop).offer_link(Vec::new(), LINK_OFFER_VALIDITY).unwrap();
    changed.secret[0] ^= 1;
    let (_, first) = NewDeviceLink::start(&changed).unwrap();
    assert!(matches!(
        w.m(laptop).answer_link(&first),
        Err(CoreError::LinkRefused(_))
    ));

    // Used: the same offer a second time.
    let offer = w.m(laptop).offer_link(Vec::new(), LINK_OFFER_VALIDITY).unwrap();
    let desktop = w.new_profile("desktop");
    link_by_offer(&mut w, laptop, desktop, &offer);
    let stranger = w.new_profile("stranger");
    let (_, first) = NewDeviceLink::start(&offer).unwrap();
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

#[test]
fn a_new_device_links_over_loopback_and_both_devices_get_bobs_message() {
    let vault = vault();
    let laptop = Person::new("Alice", &vault, false);
    let bob = Person::new("Bob", &vault, false);
    befriend(&laptop, &bob);
    let (alice_id, bob_id) = (laptop.account_id(), bob.account_id());
    let addresses = laptop.with(|m| m.invite().unwrap().addresses);
    let offer = laptop.with(|m| m.offer_link(addresses, LINK_OFFER_VALIDITY).unwrap());

    // The new desktop: a profile with no account yet, and the person at the laptop
    // who confirms once the code shows there.
    let dir = tempfile::tempdir().unwrap();
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
                        messenger.confirm_link(true);
                        true
                    }
                    None => false,
                }
            })
        })
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut shown_on_desktop = None;
    runtime
        .block_on(cairn_core::join_by_link(&desktop, &offer, loopback(false), |code| {
            shown_on_desktop = Some(code)
        }))
        .unwrap();
    confirmer.join().unwrap();
    assert_eq!(
        shown_on_desktop,
        *shown_on_laptop.lock().unwrap(),
        "both screens showed one code"
    );
    drop(runtime);

    // Like any node, the desktop's needs a way into the network (here the laptop; in
    // the app also bootstrap nodes and the LAN).
    let mut config = loopback(false);
    config.bootstrap = offer.addresses.iter().map(|a| a.parse().unwrap()).collect();
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
