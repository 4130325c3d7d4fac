//! Passing a long message history to a newly linked device, three ways, in one run:
//!
//! - `store alone`: the messages written straight into an SQLCipher profile in one
//!   transaction — the floor for what the new device must do anyway.
//! - `sans-IO link`: the existing device pages its history and the new device
//!   imports each page (sealed in the Noise link channel), both in this process.
//! - `over loopback`: the whole link through real libp2p nodes (`join_by_link`);
//!   the history is timed from the moment the device is linked to the last page.
//!
//! Run: `cargo bench -p cairn-core --bench linking`. Results: docs/benchmarks.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::{LinkStep, Messenger, NewDeviceLink, Unlock, LINK_OFFER_VALIDITY};
use cairn_store::{DeliveryState, NewMessage, ProfileDir};
use common::{loopback, vault, wait_until, Person};

const MESSAGES: usize = 20_000;
const BODY: usize = 100;
const CONTACT: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

fn main() {
    let vault = vault();
    let bodies: Vec<String> = (0..MESSAGES)
        .map(|i| format!("{i:08}{}", "m".repeat(BODY - 8)))
        .collect();
    let contact = cairn_proto::AccountId::parse("abcdefghijklmnopqrstuvwxyz").unwrap();
    let messages = || {
        bodies.iter().enumerate().map(|(i, body)| NewMessage {
            id: (i as u128 + 1).to_be_bytes(),
            conversation_id: CONTACT,
            sender: &contact,
            sent_at: i as i64,
            body,
            state: DeliveryState::Read,
            outgoing: false,
        })
    };

    // Alice's laptop with the history, written through the store.
    let laptop_dir = tempfile::tempdir().unwrap();
    let profile = ProfileDir::new(laptop_dir.path());
    Messenger::create_profile(&profile, Unlock::Keyring(&vault))
        .unwrap()
        .create_account("Alice")
        .unwrap();
    let store_alone = {
        let db = profile.open_with_keyring(&vault).unwrap();
        db.messages().ensure_conversation(CONTACT, "Bob", 0).unwrap();
        let started = Instant::now();
        assert_eq!(db.messages().insert_all(messages()).unwrap(), MESSAGES);
        started.elapsed()
    };
    let laptop = Messenger::open_profile(&profile, Unlock::Keyring(&vault)).unwrap();
    let laptop = Person::from_profile(laptop_dir, Arc::new(Mutex::new(Some(laptop))), loopback(false));

    let sans_io = sans_io_link(&laptop, &vault);
    let (without, _) = over_loopback(&laptop, &vault, false);
    let (with, history) = over_loopback(&laptop, &vault, true);

    let rate = |d: Duration| MESSAGES as f64 / d.as_secs_f64();
    println!("{MESSAGES} messages of {BODY} bytes");
    println!("| path | time | messages/s | ÷ store alone |");
    println!("|---|---:|---:|---:|");
    for (name, time) in [
        ("store alone (one transaction)", store_alone),
        ("sans-IO link: page, seal, open, import", sans_io),
        ("over loopback: history part of the link", history),
    ] {
        println!(
            "| {name} | {:.0} ms | {:.0} | {:.2}× |",
            time.as_secs_f64() * 1000.0,
            rate(time),
            time.as_secs_f64() / store_alone.as_secs_f64()
        );
    }
    println!(
        "whole link over loopback: {:.0} ms without history, {:.0} ms with it",
        without.as_secs_f64() * 1000.0,
        with.as_secs_f64() * 1000.0
    );
}

/// Links a fresh profile in this process and passes the whole history, page by page;
/// returns the time the history took.
fn sans_io_link(laptop: &Person, vault: &cairn_core::KeyVault) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let mut desktop = Messenger::create_profile(&ProfileDir::new(dir.path()), Unlock::Keyring(vault)).unwrap();
    laptop.with(|existing| {
        let offer = existing.offer_link(Vec::new(), LINK_OFFER_VALIDITY).unwrap();
        let (mut new_side, first) = NewDeviceLink::start(&offer, cairn_core::Clock::system().now()).unwrap();
        let (mut existing_side, answer) = existing.answer_link(&first).unwrap();
        new_side.answered(&answer).unwrap();
        let frames = existing.hand_over(&mut existing_side).unwrap();
        let card = desktop.join_over_link(&mut new_side, &frames).unwrap();
        existing.finish_link(&mut existing_side, &card).unwrap();
        let started = Instant::now();
        let (mut from, mut received) = (Some(0), 0);
        while let Some(start) = from {
            let (frames, _) = existing.history_page(&mut existing_side, start).unwrap();
            let page = desktop.import_history(&mut new_side, &frames).unwrap();
            received += page.received;
            from = page.next;
        }
        assert_eq!(received as usize, MESSAGES);
        started.elapsed()
    })
}

/// Links a fresh profile over real nodes on loopback, the person at the laptop
/// confirming at once; returns how long `join_by_link` took, and how much of that
/// came after the device was linked (the history).
fn over_loopback(laptop: &Person, vault: &cairn_core::KeyVault, share_history: bool) -> (Duration, Duration) {
    let addresses = laptop.with(|m| m.invite().unwrap().addresses);
    let offer = laptop.with(|m| m.offer_link(addresses, LINK_OFFER_VALIDITY).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let profile = Messenger::create_profile(&ProfileDir::new(dir.path()), Unlock::Keyring(vault)).unwrap();
    let desktop: cairn_core::SharedMessenger = Arc::new(Mutex::new(Some(profile)));
    let confirmer = {
        let laptop = laptop.messenger.clone();
        std::thread::spawn(move || {
            wait_until("the laptop shows a code", || {
                let mut slot = laptop.lock().unwrap();
                let messenger = slot.as_mut().unwrap();
                let waiting = messenger.link_waiting_for_confirmation().is_some();
                if waiting {
                    messenger.confirm_link(true, share_history);
                }
                waiting
            })
        })
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (mut received, mut linked) = (0, None);
    let started = Instant::now();
    runtime
        .block_on(cairn_core::join_by_link(
            &desktop,
            &offer,
            loopback(false),
            |step| match step {
                LinkStep::Linked => linked = Some(Instant::now()),
                LinkStep::History { received: r, .. } => received = r,
                _ => {}
            },
        ))
        .unwrap();
    let took = started.elapsed();
    confirmer.join().unwrap();
    assert_eq!(received as usize, if share_history { MESSAGES } else { 0 });
    (took, linked.expect("linked").elapsed())
}
