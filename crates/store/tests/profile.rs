//! The encrypted profile on real SQLCipher files: what reaches the disk, what a wrong
//! key or passphrase does (and does not do), and the real OS keyring.

use cairn_proto::{AccountId, DeviceId};
use std::fs;
use std::path::Path;

use cairn_store::{
    AccountRecord, DbKey, DeliveryState, DeviceRecord, KdfParams, KeySource, KeyVault, NewMessage, NewOutgoing,
    ProfileDb, ProfileDir, StoreError,
};

/// Weak but valid parameters so the passphrase tests stay quick.
/// The account id of someone in these tests ("bob" → "bobaaaa…", 26 characters).
fn id(name: &str) -> AccountId {
    AccountId::parse(&format!("{name:a<26}")).unwrap()
}

/// A device id.
fn dev(id: u8) -> DeviceId {
    DeviceId::new(id).unwrap()
}

fn quick_kdf() -> KdfParams {
    KdfParams {
        m_cost_kib: 8 * 1024,
        t_cost: 1,
        ..KdfParams::recommended()
    }
}

fn write_marker(db: &ProfileDb, marker: &str) {
    db.messages().ensure_conversation(b"conv-1", "Bob", 1).unwrap();
    let message = NewMessage {
        id: [1; 16],
        conversation_id: b"conv-1",
        sender: &id("alice"),
        sent_at: 2,
        body: marker,
        state: DeliveryState::Sent,
        outgoing: true,
    };
    assert!(db.messages().insert(&message).unwrap());
}

/// Every file under `dir`, read whole (database, WAL, shared memory, journals).
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = fs::read(&path).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

#[test]
fn a_marker_message_never_reaches_the_disk_in_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let profile = ProfileDir::new(dir.path());
    let marker = "MARKER-7f3a-plaintext-must-not-leak";
    let db = profile.create_with_passphrase("pass", quick_kdf()).unwrap();
    write_marker(&db, marker);
    // Look while the database is open (WAL and shm exist) and after it is closed.
    let files: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        files.iter().any(|f| f.to_string_lossy().ends_with("-wal")),
        "WAL present: {files:?}"
    );
    assert_eq!(files_containing(dir.path(), marker.as_bytes()), Vec::<String>::new());
    drop(db);
    assert_eq!(files_containing(dir.path(), marker.as_bytes()), Vec::<String>::new());
    // It is really there, for the right key.
    let db = profile.open_with_passphrase("pass").unwrap();
    assert_eq!(db.messages().search("MARKER", 5).unwrap()[0].body, marker);
}

#[test]
fn the_same_schema_without_a_key_is_plaintext_which_is_what_the_test_above_rules_out() {
    // A control for the test above: the marker search would find an unencrypted file.
    let dir = tempfile::tempdir().unwrap();
    let db = ProfileDb::create_unencrypted(&dir.path().join("plain.db")).unwrap();
    write_marker(&db, "MARKER-control");
    db.checkpoint().unwrap();
    assert!(!files_containing(dir.path(), b"MARKER-control").is_empty());
}

#[test]
fn a_wrong_key_is_a_typed_error_and_leaves_the_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("profile.db");
    let key = DbKey::random();
    {
        let db = ProfileDb::create(&path, &key).unwrap();
        write_marker(&db, "still here");
        db.checkpoint().unwrap();
    }
    let before = fs::read(&path).unwrap();
    for _ in 0..3 {
        assert!(matches!(
            ProfileDb::open(&path, &DbKey::random()),
            Err(StoreError::WrongKey)
        ));
    }
    assert_eq!(fs::read(&path).unwrap(), before, "a failed open wrote nothing");
    let db = ProfileDb::open(&path, &key).unwrap();
    assert_eq!(db.messages().search("still", 5).unwrap().len(), 1);
}

#[test]
fn a_wrong_passphrase_is_a_typed_error_and_the_right_one_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let profile = ProfileDir::new(dir.path());
    write_marker(&profile.create_with_passphrase("right", quick_kdf()).unwrap(), "kept");
    assert!(matches!(
        profile.key_source().unwrap(),
        Some(KeySource::Passphrase { .. })
    ));
    assert!(matches!(
        profile.open_with_passphrase("wrong"),
        Err(StoreError::WrongKey)
    ));
    let db = profile.open_with_passphrase("right").unwrap();
    assert_eq!(db.messages().search("kept", 5).unwrap().len(), 1);
}

#[test]
fn a_profile_cannot_be_opened_twice_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let profile = ProfileDir::new(dir.path());
    let first = profile.create_with_passphrase("pw", quick_kdf()).unwrap();
    assert!(matches!(
        profile.open_with_passphrase("pw"),
        Err(StoreError::ProfileInUse)
    ));
    drop(first);
    profile.open_with_passphrase("pw").unwrap();
}

#[test]
fn a_second_create_is_refused_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let profile = ProfileDir::new(dir.path());
    write_marker(&profile.create_with_passphrase("pw", quick_kdf()).unwrap(), "first");
    assert!(matches!(
        profile.create_with_passphrase("other", quick_kdf()),
        Err(StoreError::AlreadyExists(_))
    ));
    let db = profile.open_with_passphrase("pw").unwrap();
    assert_eq!(db.messages().search("first", 5).unwrap().len(), 1);
}

#[test]
fn a_damaged_key_file_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let profile = ProfileDir::new(dir.path());
    drop(profile.create_with_passphrase("pw", quick_kdf()).unwrap());
    for garbage in ["{", "{\"version\":7,\"source\":\"keyring\"}", &"x".repeat(10_000)] {
        fs::write(dir.path().join("key.json"), garbage).unwrap();
        assert!(
            matches!(profile.key_source(), Err(StoreError::Corrupt(_))),
            "{garbage:.20}"
        );
    }
}

#[test]
fn identity_and_messages_survive_a_reopen_and_duplicates_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let profile = ProfileDir::new(dir.path());
    let account = AccountRecord {
        account_id: id("acct"),
        display_name: "Alice".into(),
        identity_key: vec![1, 2, 3],
        created_at: 5,
    };
    let device = DeviceRecord {
        device_id: dev(1),
        registration_id: 77,
        transport_seed: [3; 32],
        created_at: 6,
    };
    {
        let db = profile.create_with_passphrase("pw", quick_kdf()).unwrap();
        db.own().save(&account, &device).unwrap();
        write_marker(&db, "once");
        let again = NewMessage {
            id: [1; 16],
            conversation_id: b"conv-1",
            sender: &id("alice"),
            sent_at: 2,
            body: "once",
            state: DeliveryState::Sent,
            outgoing: true,
        };
        assert!(!db.messages().insert(&again).unwrap(), "same id is a duplicate");
    }
    let db = profile.open_with_passphrase("pw").unwrap();
    assert_eq!(db.own().account().unwrap(), Some(account));
    assert_eq!(db.own().device().unwrap(), Some(device));
    assert_eq!(db.messages().in_conversation(b"conv-1", 10).unwrap().len(), 1);
}

#[test]
fn search_takes_typed_words_literally() {
    let dir = tempfile::tempdir().unwrap();
    let db = ProfileDb::create(&dir.path().join("p.db"), &DbKey::random()).unwrap();
    write_marker(&db, "meet at \"noon\" OR later");
    for query in ["\"noon", "OR", "NEAR(", "*", "noon later", ""] {
        db.messages().search(query, 5).unwrap();
    }
    assert_eq!(db.messages().search("noon later", 5).unwrap().len(), 1);
    assert!(db.messages().search("midnight", 5).unwrap().is_empty());
}

/// The real OS keyring (Secret Service on Linux): the test command starts one.
#[test]
fn a_keyring_profile_reopens_with_the_key_from_the_os_keyring() {
    let vault =
        KeyVault::os().expect("an OS keyring (Secret Service) must be reachable: run the suite through ./test.sh");
    let dir = tempfile::tempdir().unwrap();
    let profile = ProfileDir::new(dir.path());
    write_marker(&profile.create_with_keyring(&vault).unwrap(), "from the keyring");
    assert_eq!(profile.key_source().unwrap(), Some(KeySource::Keyring));
    let db = profile.open_with_keyring(&vault).unwrap();
    assert_eq!(db.messages().search("keyring", 5).unwrap().len(), 1);
    drop(db);
    // Without its key in the keyring the profile does not open, and says why.
    vault.delete(&profile.keyring_user().unwrap()).unwrap();
    assert!(matches!(profile.open_with_keyring(&vault), Err(StoreError::KeyMissing)));
}

/// A text for `account`'s `device`, queued as plaintext (sealed as it leaves).
fn queued_text<'a>(account: &'a AccountId, device: DeviceId, message: Option<&'a [u8]>) -> NewOutgoing<'a> {
    NewOutgoing {
        account_id: account,
        device_id: device,
        kind: "text",
        content: Some(b"padded plaintext"),
        envelope: None,
        message_id: message,
        resends: 0,
    }
}

#[test]
fn what_leaves_the_outbox_waits_in_the_sent_log_until_confirmed_asked_for_again_or_expired() {
    let dir = tempfile::tempdir().unwrap();
    let db = ProfileDb::create(&dir.path().join("profile.db"), &DbKey::random()).unwrap();
    let (first, second) = (b"message-1_______", b"message-2_______");
    let a = db
        .outbox()
        .enqueue(&queued_text(&id("bob"), dev(1), Some(first)), 10)
        .unwrap();
    let b = db
        .outbox()
        .enqueue(&queued_text(&id("bob"), dev(1), Some(second)), 10)
        .unwrap();
    let c = db.outbox().enqueue(&queued_text(&id("bob"), dev(2), None), 10).unwrap();
    assert_eq!(db.outbox().copies_in_flight(first).unwrap(), 1);
    // A sealed attempt keeps its envelope and chain; a failed one backs off.
    db.outbox().seal_queued(a, b"sealed-a", Some(b"chain")).unwrap();
    db.outbox().defer(a, 1_000).unwrap();
    let due: Vec<i64> = db.outbox().due(10, 1_000).unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(due, [b, c]);
    let row = db.outbox().queued(a).unwrap().unwrap();
    assert_eq!(
        (row.envelope.as_deref(), row.chain.as_deref(), row.attempts),
        (Some(&b"sealed-a"[..]), Some(&b"chain"[..]), 1)
    );

    // Taken: the rows move to the sent log.
    db.outbox().log_sent(a, b"envelope-a", 2_000, 50_000).unwrap();
    db.outbox().log_sent(b, b"envelope-b", 2_000, 90_000).unwrap();
    db.outbox().log_sent(c, b"envelope-c", 2_000, 50_000).unwrap();
    assert!(db.outbox().entries().unwrap().is_empty());
    assert_eq!(db.outbox().sent_log_len().unwrap(), 3);
    assert_eq!(
        db.outbox().copies_in_flight(first).unwrap(),
        1,
        "sent, not yet confirmed"
    );
    let logged = db.outbox().sent(b"envelope-a").unwrap().unwrap();
    assert_eq!(
        (logged.account_id, logged.device_id, logged.resends),
        (id("bob"), dev(1), 0)
    );

    // Bob's device 1 confirms the second message: its entry goes.
    db.outbox()
        .forget_sent_messages(&id("bob"), dev(1), &[*second])
        .unwrap();
    assert!(db.outbox().sent(b"envelope-b").unwrap().is_none());
    // Bob asks for the first again: back in the outbox, due now, one resend more.
    let again = db.outbox().requeue_sent(b"envelope-a", 3_000).unwrap().unwrap();
    let row = db.outbox().queued(again).unwrap().unwrap();
    assert_eq!((row.resends, row.envelope, row.content.is_some()), (1, None, true));
    assert!(db.outbox().sent(b"envelope-a").unwrap().is_none());
    assert!(
        db.outbox().requeue_sent(b"envelope-a", 3_000).unwrap().is_none(),
        "asked twice, sent once"
    );
    // Expiry takes the rest and says which messages they carried.
    assert!(db.outbox().expire_sent(49_999).unwrap().is_empty());
    assert_eq!(
        db.outbox().expire_sent(50_000).unwrap(),
        Vec::<Vec<u8>>::new(),
        "envelope-c carried no message"
    );
    assert_eq!(db.outbox().sent_log_len().unwrap(), 0);
}

#[test]
fn a_removed_devices_sessions_queue_and_old_held_envelopes_go_and_its_retired_mark_stays() {
    let dir = tempfile::tempdir().unwrap();
    let db = ProfileDb::create(&dir.path().join("profile.db"), &DbKey::random()).unwrap();
    for device in [dev(1), dev(2)] {
        db.contacts().save_bundle(&id("bob"), device, b"bundle").unwrap();
        db.outbox().enqueue(&queued_text(&id("bob"), device, None), 10).unwrap();
    }
    // Bob's list now names device 1 only: what was kept for device 2 goes.
    assert_eq!(db.contacts().forget_unlisted_devices(&id("bob"), &[dev(1)]).unwrap(), 1);
    assert_eq!(db.contacts().bundles(&id("bob")).unwrap().len(), 1);
    assert_eq!(db.outbox().drop_queued_for(&id("bob"), &[dev(2)]).unwrap(), 1);
    assert_eq!(db.outbox().due(10, i64::MAX).unwrap().len(), 1);
    db.contacts().retire_devices(&id("bob"), &[dev(2)]).unwrap();
    db.contacts().retire_devices(&id("bob"), &[dev(2)]).unwrap();
    assert_eq!(db.contacts().retired_devices(&id("bob")).unwrap(), [dev(2)]);
    assert!(db.contacts().retired_devices(&id("carol")).unwrap().is_empty());
    // Named again (say, a list from before the removal was wrong): no longer retired.
    db.contacts().unretire_devices(&id("bob"), &[dev(1), dev(2)]).unwrap();
    assert!(db.contacts().retired_devices(&id("bob")).unwrap().is_empty());

    // Held envelopes older than the cutoff go; newer ones stay.
    db.held().hold(b"old", &id("stranger"), b"sealed", 100).unwrap();
    db.held().hold(b"new", &id("stranger"), b"sealed", 300).unwrap();
    assert_eq!(db.held().forget_before(200).unwrap(), 1);
    let held: Vec<Vec<u8>> = db
        .held()
        .from_sender(&id("stranger"))
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(held, [b"new".to_vec()]);
}
