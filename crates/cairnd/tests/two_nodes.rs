//! Two `cairnd` processes on loopback: Bob adds Alice from the invite her running node
//! printed, writes to her, and her node prints the message.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const CAIRND: &str = env!("CARGO_BIN_EXE_cairnd");

fn cairnd(profile: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(CAIRND);
    command
        .arg("--profile-dir")
        .arg(profile)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
        .args(args)
        .env("CAIRND_PASSPHRASE", "correct horse battery staple");
    command
}

fn run(profile: &std::path::Path, args: &[&str]) -> String {
    let output = cairnd(profile, args).output().unwrap();
    assert!(
        output.status.success(),
        "cairnd {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A running `cairnd` whose stdout lines arrive on a channel; stopped with SIGTERM.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(profile: &std::path::Path, args: &[&str]) -> Self {
        let mut child = cairnd(profile, args).stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    fn line_starting(&self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no {prefix:?} line"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn bob_adds_alice_from_her_running_nodes_invite_and_his_message_reaches_her() {
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice_id = run(alice_dir.path(), &["init", "--name", "Alice"])
        .trim()
        .strip_prefix("account ")
        .unwrap()
        .to_owned();
    run(bob_dir.path(), &["init", "--name", "Bob"]);

    let alice = Running::start(alice_dir.path(), &["node"]);
    let invite = alice.line_starting("invite ");
    let added = run(bob_dir.path(), &["add-contact", &invite]);
    assert_eq!(added.trim(), format!("contact {alice_id} Alice"));
    run(bob_dir.path(), &["send", &alice_id, "hello from a headless Bob"]);

    // Bob's node finds Alice through the address in her invite (as a bootstrap peer).
    let address = invite_address(&invite);
    let _bob = Running::start(bob_dir.path(), &["--bootstrap", &address, "listen", "--for", "60"]);
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
    run(alice_dir.path(), &["init", "--name", "Alice"]);
    let bob_id = run(bob_dir.path(), &["init", "--name", "Bob"])
        .trim()
        .strip_prefix("account ")
        .unwrap()
        .to_owned();

    // They become contacts while both are online.
    let alice = Running::start(alice_dir.path(), &["node"]);
    let invite = alice.line_starting("invite ");
    run(bob_dir.path(), &["add-contact", &invite]);
    {
        let _bob = Running::start(bob_dir.path(), &["--bootstrap", &invite_address(&invite), "node"]);
        assert!(
            alice.line_starting("contact ").starts_with(&bob_id),
            "Alice's node took Bob's introduction"
        );
    }
    drop(alice);

    // Bob is offline. Alice writes, and her node restarts before he comes back.
    run(alice_dir.path(), &["send", &bob_id, "written while you were away"]);
    let alice = Running::start(alice_dir.path(), &["node"]);
    let invite = alice.line_starting("invite ");

    // Bob comes back and reaches Alice; her outbox delivers to him.
    let bob = Running::start(bob_dir.path(), &["--bootstrap", &invite_address(&invite), "node"]);
    let message = bob.line_starting("message ");
    assert!(message.ends_with(" written while you were away"), "{message}");
}
