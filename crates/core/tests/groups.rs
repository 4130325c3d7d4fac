//! The group story, on real SQLCipher profiles: Alice starts a group with Bob (two
//! devices), Carol, Dave and Erin — who know Alice but not each other — and they chat;
//! a member who is away for three epochs catches up, whatever order their envelopes
//! come in; a removed member is out; two admins change the group at the same moment
//! and everyone ends up in the same epoch; every store closes and reopens.
//! (The same story through real nodes and the peer cache is in `offline.rs`.)

mod world;

use cairn_core::AccountId;
use cairn_core::{CoreError, GroupView};
use world::World;

/// The devices of the story.
struct Cast {
    a: usize,
    b1: usize,
    b2: usize,
    c: usize,
    d: usize,
    e: usize,
}

impl Cast {
    fn all(&self) -> [usize; 6] {
        [self.a, self.b1, self.b2, self.c, self.d, self.e]
    }
}

/// Alice, Bob (two devices), Carol, Dave and Erin; each is Alice's contact.
fn cast() -> (World, Cast) {
    let mut w = World::new();
    let a = w.account("alice", "Alice");
    let b1 = w.account("b1", "Bob");
    let b2 = w.link(b1, "b2");
    let c = w.account("carol", "Carol");
    let d = w.account("dave", "Dave");
    let e = w.account("erin", "Erin");
    let invite = w.m(a).account_info().unwrap().invite_link;
    for friend in [b1, c, d, e] {
        w.m(friend).accept_invite(&invite).unwrap();
        w.deliver_all();
    }
    (w, Cast { a, b1, b2, c, d, e })
}

fn group_of(w: &World, device: usize, group_id: &str) -> GroupView {
    w.devices[device].messenger.group(group_id).unwrap()
}

/// Member account ids, sorted.
fn members(view: &GroupView) -> Vec<AccountId> {
    let mut accounts: Vec<AccountId> = view.members.iter().map(|m| m.account_id.clone()).collect();
    accounts.sort();
    accounts
}

/// Checks that each of `devices` shows exactly `expected` in the group.
fn all_read(w: &World, devices: &[usize], group_id: &str, expected: &[&str]) {
    for &device in devices {
        assert_eq!(
            w.texts(device, group_id),
            expected,
            "what {} reads",
            w.devices[device].name
        );
    }
}

fn say(w: &mut World, device: usize, group_id: &str, text: &str) {
    w.m(device).send_group_text(group_id, text).unwrap();
    w.deliver_all();
}

/// Alice's group with everyone in it, all envelopes delivered.
fn everyone_in_a_group() -> (World, Cast, String) {
    let (mut w, cast) = cast();
    let friends: Vec<AccountId> = [cast.b1, cast.c, cast.d, cast.e].map(|i| w.account_id(i)).to_vec();
    let (view, _) = w.m(cast.a).create_group("Climbing", &friends).unwrap();
    w.deliver_all();
    (w, cast, view.group_id)
}

#[test]
fn five_people_one_with_two_devices_chat_in_a_group_of_six_devices() {
    let (mut w, cast, group) = everyone_in_a_group();
    let alice_view = group_of(&w, cast.a, &group);
    assert_eq!(alice_view.members.len(), 5);
    assert_eq!(alice_view.members.iter().map(|m| m.devices).sum::<usize>(), 6);
    assert!(alice_view.is_admin && alice_view.members[0].admin && alice_view.members[0].display_name == "Alice");
    for device in cast.all() {
        let view = group_of(&w, device, &group);
        assert_eq!(view.name, "Climbing", "{} knows the name", w.devices[device].name);
        assert_eq!(view.epoch, alice_view.epoch);
        assert_eq!(members(&view), members(&alice_view));
    }
    // Carol and Dave never met: the group introduced them.
    let dave = w.account_id(cast.d);
    assert_eq!(w.devices[cast.c].messenger.contact(&dave).unwrap().display_name, "Dave");

    let script = [
        (cast.a, "Saturday at the crag?"),
        (cast.c, "yes, from Carol"),
        (cast.b2, "Bob's phone: count me in"),
        (cast.d, "Dave too"),
        (cast.b1, "Bob's laptop, bringing the rope"),
        (cast.e, "Erin: I'll drive"),
    ];
    for (from, text) in script {
        say(&mut w, from, &group, text);
    }
    let expected: Vec<&str> = script.iter().map(|(_, t)| *t).collect();
    all_read(&w, &cast.all(), &group, &expected);
}

/// One thing a person does.
type Step<'a> = dyn Fn(&mut World) + 'a;

#[test]
fn dave_away_for_three_epochs_catches_up_whatever_order_his_envelopes_arrive_in() {
    let (mut w, cast, group) = everyone_in_a_group();
    let (erin, carol) = (w.account_id(cast.e), w.account_id(cast.c));
    // Erin leaves the group first, so that she can be added back below.
    w.m(cast.a)
        .remove_group_members(&group, std::slice::from_ref(&erin))
        .unwrap();
    w.deliver_all();
    let start = group_of(&w, cast.a, &group).epoch;

    // Dave is away: what is sent to him waits. Three commits happen meanwhile.
    w.go_away(cast.d);
    let steps: [Box<Step>; 7] = [
        Box::new(|w| drop(w.m(cast.b1).send_group_text(&group, "epoch 0 text").unwrap())),
        Box::new(|w| {
            w.m(cast.a)
                .add_group_members(&group, std::slice::from_ref(&erin))
                .unwrap();
        }),
        Box::new(|w| drop(w.m(cast.e).send_group_text(&group, "Erin is back").unwrap())),
        Box::new(|w| {
            w.m(cast.a)
                .remove_group_members(&group, std::slice::from_ref(&carol))
                .unwrap();
        }),
        Box::new(|w| drop(w.m(cast.a).rename_group(&group, "Climbing (Saturday)").unwrap())),
        Box::new(|w| drop(w.m(cast.b2).send_group_text(&group, "rope is packed").unwrap())),
        Box::new(|w| {
            w.m(cast.a)
                .add_group_members(&group, std::slice::from_ref(&carol))
                .unwrap();
        }),
    ];
    for step in steps {
        step(&mut w);
        w.deliver_all();
    }
    let now = group_of(&w, cast.a, &group).epoch;
    assert_eq!(now, start + 3, "three commits while Dave was away");
    assert_eq!(group_of(&w, cast.d, &group).epoch, start);

    // He comes back, and his envelopes arrive newest first.
    w.come_back(cast.d);
    w.cache.reverse();
    w.fetch(cast.d);
    w.deliver_all();
    let view = group_of(&w, cast.d, &group);
    assert_eq!(view.epoch, now);
    assert_eq!(view.name, "Climbing (Saturday)");
    assert_eq!(members(&view), members(&group_of(&w, cast.a, &group)));
    assert!(members(&view).contains(&erin) && members(&view).contains(&carol));
    assert_eq!(
        w.texts(cast.d, &group),
        ["epoch 0 text", "Erin is back", "rope is packed"],
        "Dave reads everything, in order"
    );
    assert_eq!(w.devices[cast.d].messenger.waiting_group_messages(&group).unwrap(), 0);
    say(&mut w, cast.d, &group, "sorry, was offline");
    assert_eq!(w.texts(cast.e, &group).last().unwrap(), "sorry, was offline");
    assert_eq!(w.texts(cast.c, &group).last().unwrap(), "sorry, was offline");
}

#[test]
fn a_removed_member_is_out_and_gets_nothing_sent_after_the_removal() {
    let (mut w, cast, group) = everyone_in_a_group();
    let carol = w.account_id(cast.c);
    w.m(cast.a)
        .remove_group_members(&group, std::slice::from_ref(&carol))
        .unwrap();
    w.deliver_all();
    let view = group_of(&w, cast.c, &group);
    assert!(!view.active, "Carol's device applied its own removal");
    assert!(!members(&group_of(&w, cast.a, &group)).contains(&carol));

    w.m(cast.b1).send_group_text(&group, "after Carol left").unwrap();
    let flights = w.take(cast.b1);
    assert!(
        flights.iter().all(|f| f.to != cast.c),
        "nothing is even addressed to her"
    );
    w.in_flight.extend(flights);
    w.deliver_all();
    assert!(!w.texts(cast.c, &group).contains(&"after Carol left".to_string()));
    assert!(matches!(
        w.m(cast.c).send_group_text(&group, "let me back"),
        Err(CoreError::GroupRefused(_))
    ));
    // Only admins change the group.
    let erin = w.account_id(cast.e);
    assert!(matches!(
        w.m(cast.d).remove_group_members(&group, &[erin]),
        Err(CoreError::NotGroupAdmin)
    ));
}

#[test]
fn a_member_who_leaves_is_removed_by_the_admin_and_the_last_admin_hands_over() {
    let (mut w, cast, group) = everyone_in_a_group();
    let (alice, dave) = (w.account_id(cast.a), w.account_id(cast.d));
    w.m(cast.d).leave_group(&group).unwrap();
    w.deliver_all();
    assert!(!group_of(&w, cast.d, &group).active);
    for device in [cast.a, cast.b1, cast.c, cast.e] {
        assert!(!members(&group_of(&w, device, &group)).contains(&dave));
    }
    // Alice, the only admin, leaves: another member becomes admin and commits it.
    w.m(cast.a).leave_group(&group).unwrap();
    w.deliver_all();
    let view = group_of(&w, cast.b1, &group);
    assert!(!members(&view).contains(&alice));
    assert_eq!(view.members.iter().filter(|m| m.admin).count(), 1);
    let admin = view.members.iter().find(|m| m.admin).unwrap().account_id.clone();
    let admin_device = [cast.b1, cast.c, cast.e]
        .into_iter()
        .find(|d| w.account_id(*d) == admin)
        .unwrap();
    w.m(admin_device).rename_group(&group, "Climbing, new admin").unwrap();
    w.deliver_all();
    assert_eq!(group_of(&w, cast.e, &group).name, "Climbing, new admin");
}

#[test]
fn two_admins_change_the_group_at_once_and_every_member_converges() {
    let (mut w, cast, group) = everyone_in_a_group();
    let (bob, dave, erin) = (w.account_id(cast.b1), w.account_id(cast.d), w.account_id(cast.e));
    w.m(cast.a).set_group_admin(&group, &bob, true).unwrap();
    w.deliver_all();
    w.m(cast.a)
        .remove_group_members(&group, std::slice::from_ref(&erin))
        .unwrap();
    w.deliver_all();
    let before = group_of(&w, cast.a, &group).epoch;

    // In the same epoch, Alice adds Erin back and Bob removes Dave.
    w.m(cast.a)
        .add_group_members(&group, std::slice::from_ref(&erin))
        .unwrap();
    let from_alice = w.take(cast.a);
    w.m(cast.b1)
        .remove_group_members(&group, std::slice::from_ref(&dave))
        .unwrap();
    let from_bob = w.take(cast.b1);
    // Bob's phone and Carol hear Alice first, the others Bob (Alice and Bob each
    // applied their own commit already).
    let (first, second): (Vec<_>, Vec<_>) = from_alice
        .into_iter()
        .chain(from_bob)
        .partition(|f| [cast.b2, cast.c].contains(&f.to));
    w.in_flight.extend(first);
    w.deliver_all();
    w.in_flight.extend(second);
    w.deliver_all();

    let reference = group_of(&w, cast.a, &group);
    assert!(reference.epoch > before + 1, "the loser's change was made again");
    assert!(members(&reference).contains(&erin), "Erin is in");
    assert!(!members(&reference).contains(&dave), "Dave is out");
    for device in [cast.b1, cast.b2, cast.c, cast.e] {
        let view = group_of(&w, device, &group);
        assert_eq!(
            view.epoch, reference.epoch,
            "{} is in the same epoch",
            w.devices[device].name
        );
        assert_eq!(members(&view), members(&reference));
    }
    for (from, text) in [(cast.e, "Erin here"), (cast.c, "Carol here"), (cast.b2, "Bob here")] {
        say(&mut w, from, &group, text);
    }
    all_read(
        &w,
        &[cast.a, cast.b1, cast.b2, cast.c, cast.e],
        &group,
        &["Erin here", "Carol here", "Bob here"],
    );
}

#[test]
fn closing_and_reopening_every_store_keeps_every_group() {
    let (mut w, cast, group) = everyone_in_a_group();
    say(&mut w, cast.c, &group, "before");
    let erin = w.account_id(cast.e);
    w.m(cast.a).create_group("Second group", &[erin]).unwrap();
    w.deliver_all();
    w.reopen_all();
    assert_eq!(w.devices[cast.a].messenger.groups().unwrap().len(), 2);
    assert_eq!(w.devices[cast.e].messenger.groups().unwrap().len(), 2);
    for (from, text) in [(cast.b2, "after, from Bob's phone"), (cast.e, "after, from Erin")] {
        say(&mut w, from, &group, text);
    }
    all_read(
        &w,
        &cast.all(),
        &group,
        &["before", "after, from Bob's phone", "after, from Erin"],
    );
}

#[test]
fn group_names_and_strangers_are_checked() {
    let (mut w, cast) = cast();
    assert!(matches!(w.m(cast.a).create_group("  ", &[]), Err(CoreError::Proto(_))));
    // Carol and Dave are not contacts: Carol cannot put Dave in a group.
    let dave = w.account_id(cast.d);
    assert!(matches!(
        w.m(cast.c).create_group("Strangers", &[dave]),
        Err(CoreError::UnknownContact(_))
    ));
    assert!(
        w.m(cast.c).groups().unwrap().is_empty(),
        "nothing was kept of the failed group"
    );
    assert!(matches!(
        w.m(cast.a).group("g0123456789abcdef0123456789abcdef"),
        Err(CoreError::UnknownGroup(_))
    ));
}

#[test]
fn a_newcomer_gets_every_members_card_and_the_others_only_the_newcomers() {
    let (mut w, cast) = cast();
    let friends: Vec<AccountId> = [cast.b1, cast.c, cast.d].map(|i| w.account_id(i)).to_vec();
    let (view, _) = w.m(cast.a).create_group("Climbing", &friends).unwrap();
    w.deliver_all();
    let erin = w.account_id(cast.e);
    w.m(cast.a)
        .add_group_members(&view.group_id, std::slice::from_ref(&erin))
        .unwrap();
    let flights = w.take(cast.a);
    let bytes_to = |device: usize| -> usize {
        flights
            .iter()
            .filter(|f| f.to == device)
            .map(|f| f.queued.outgoing.envelope.body.len())
            .sum()
    };
    // Erin needs everyone's card to reach them; Carol only Erin's, with the commit.
    let (to_erin, to_carol) = (bytes_to(cast.e), bytes_to(cast.c));
    assert!(to_carol * 2 < to_erin, "Carol gets {to_carol} bytes, Erin {to_erin}");
    w.in_flight.extend(flights);
    w.deliver_all();
    // And everyone can reach everyone: Erin and Carol never met.
    say(&mut w, cast.e, &view.group_id, "Erin here");
    say(&mut w, cast.c, &view.group_id, "hi Erin, Carol");
    all_read(&w, &cast.all(), &view.group_id, &["Erin here", "hi Erin, Carol"]);
}
