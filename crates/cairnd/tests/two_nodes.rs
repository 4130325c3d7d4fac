//! Two `cairnd` processes on loopback: Bob adds Alice from the invite her running node
//! printed, writes to her, and her node prints the message.

mod common;

use common::{init, run, Running};

const LOOPBACK: [&str; 2] = ["--listen", "/ip4/127.0.0.1/tcp/0"];

/// `args` after the loopback listen option.
fn on_loopback<'a>(args: &[&'a str]) -> Vec<&'a str> {
    LOOPBACK.iter().copied().chain(args.iter().copied()).collect()
}

#[test]
fn bob_adds_alice_from_her_running_nodes_invite_and_his_message_reaches_her() {
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice_id = init(alice_dir.path(), "Alice");
    init(bob_dir.path(), "Bob");

    let alice = Running::start(None, alice_dir.path(), &on_loopback(&["node"]));
    let invite = alice.line_starting("invite ");
    let added = run(bob_dir.path(), &["add-contact", &invite]);
    assert_eq!(added.trim(), format!("contact {alice_id} Alice"));
    run(bob_dir.path(), &["send", &alice_id, "hello from a headless Bob"]);

    // Bob's node was told nothing: it reaches Alice at the address her invite carried,
    // which `add-contact` remembered in his profile.
    let _bob = Running::start(None, bob_dir.path(), &on_loopback(&["listen", "--for", "60"]));
    let message = alice.line_starting("message ");
    assert!(message.ends_with(" hello from a headless Bob"), "{message}");

    // Once her node stops (SIGTERM, a clean shutdown), the profile opens again.
    drop(alice);
    let contacts = run(alice_dir.path(), &["contacts"]);
    assert!(contacts.contains(" Bob"), "Alice's node added Bob: {contacts}");
}

/// The first address an invite carries (decoded as the app does).
fn invite_address(invite: &str) -> String {
    cairn_core::invite_route(invite)
        .unwrap()
        .1
        .into_iter()
        .next()
        .expect("the invite carries an address")
}

#[test]
fn a_message_for_an_offline_bob_waits_in_alices_outbox_across_her_restart_and_reaches_him_when_he_returns() {
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    init(alice_dir.path(), "Alice");
    let bob_id = init(bob_dir.path(), "Bob");

    // They become contacts while both are online.
    let alice = Running::start(None, alice_dir.path(), &on_loopback(&["node"]));
    let invite = alice.line_starting("invite ");
    run(bob_dir.path(), &["add-contact", &invite]);
    {
        let _bob = Running::start(
            None,
            bob_dir.path(),
            &on_loopback(&["--bootstrap", &invite_address(&invite), "node"]),
        );
        assert!(
            alice.line_starting("contact ").starts_with(&bob_id),
            "Alice's node took Bob's introduction"
        );
    }
    drop(alice);

    // Bob is offline. Alice writes, and her node restarts before he comes back.
    run(alice_dir.path(), &["send", &bob_id, "written while you were away"]);
    let alice = Running::start(None, alice_dir.path(), &on_loopback(&["node"]));
    let invite = alice.line_starting("invite ");

    // Bob comes back and reaches Alice; her outbox delivers to him.
    let bob = Running::start(
        None,
        bob_dir.path(),
        &on_loopback(&["--bootstrap", &invite_address(&invite), "node"]),
    );
    let message = bob.line_starting("message ");
    assert!(message.ends_with(" written while you were away"), "{message}");
}
