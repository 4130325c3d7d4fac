//! The profile database schema, as an ordered list of migrations.
//!
//! `PRAGMA user_version` records how many have run. A migration is never edited once
//! released; a schema change is a new entry at the end, and the test below upgrades a
//! database from every earlier version to the latest.

use rusqlite_migration::{Migrations, M};

/// Schema version 1: who this profile is.
const V1_IDENTITY: &str = "
CREATE TABLE account (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    account_id    TEXT    NOT NULL,
    display_name  TEXT    NOT NULL,
    identity_key  BLOB    NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE TABLE device (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    device_id       INTEGER NOT NULL,
    registration_id INTEGER NOT NULL,
    transport_seed  BLOB    NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// Schema version 2: conversations and message history with a full-text index.
const V2_HISTORY: &str = "
CREATE TABLE conversations (
    id          BLOB    PRIMARY KEY,
    title       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE messages (
    seq              INTEGER PRIMARY KEY,
    id               BLOB    NOT NULL UNIQUE,
    conversation_id  BLOB    NOT NULL REFERENCES conversations(id),
    sender           TEXT    NOT NULL,
    sent_at          INTEGER NOT NULL,
    body             TEXT    NOT NULL,
    state            TEXT    NOT NULL
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, sent_at);
CREATE VIRTUAL TABLE messages_fts USING fts5(
    body, content = 'messages', content_rowid = 'seq', tokenize = 'unicode61'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.seq, new.body);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.seq, old.body);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.seq, old.body);
    INSERT INTO messages_fts (rowid, body) VALUES (new.seq, new.body);
END;
";

/// Schema version 3: Signal sessions, prekeys, pinned identities, contacts and
/// their devices, this account's device list, envelopes held back while a
/// contact's changed identity key waits for acceptance, the outbox of sealed
/// envelopes waiting for a transport, addresses learned for peers (from invites), and
/// message direction.
const V3_SESSIONS: &str = "
CREATE TABLE identities (
    account_id    TEXT    PRIMARY KEY,
    identity_key  BLOB    NOT NULL,
    pending_key   BLOB,
    verified      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE contacts (
    account_id           TEXT    PRIMARY KEY,
    display_name         TEXT    NOT NULL,
    device_list          BLOB    NOT NULL,
    device_list_version  INTEGER NOT NULL,
    added_at             INTEGER NOT NULL
);
CREATE TABLE bundles (
    account_id  TEXT    NOT NULL,
    device_id   INTEGER NOT NULL,
    bundle      BLOB    NOT NULL,
    PRIMARY KEY (account_id, device_id)
);
CREATE TABLE sessions (
    account_id  TEXT    NOT NULL,
    device_id   INTEGER NOT NULL,
    record      BLOB    NOT NULL,
    PRIMARY KEY (account_id, device_id)
);
CREATE TABLE signed_prekeys (
    id          INTEGER PRIMARY KEY,
    record      BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE kyber_prekeys (
    id          INTEGER PRIMARY KEY,
    record      BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE kyber_prekey_uses (
    kyber_id   INTEGER NOT NULL,
    signed_id  INTEGER NOT NULL,
    base_key   BLOB    NOT NULL,
    PRIMARY KEY (kyber_id, signed_id, base_key)
);
CREATE TABLE own_device_list (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    signed   BLOB    NOT NULL,
    version  INTEGER NOT NULL
);
CREATE TABLE held_envelopes (
    envelope_id  BLOB    PRIMARY KEY,
    sender       TEXT    NOT NULL,
    envelope     BLOB    NOT NULL,
    received_at  INTEGER NOT NULL
);
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY,
    account_id  TEXT    NOT NULL,
    device_id   INTEGER NOT NULL,
    envelope      BLOB    NOT NULL,
    message_id    BLOB,
    created_at    INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_due ON outbox (next_attempt, seq);
CREATE TABLE peer_addresses (
    transport_key  BLOB    NOT NULL,
    address        TEXT    NOT NULL,
    learned_at     INTEGER NOT NULL,
    PRIMARY KEY (transport_key, address)
);
ALTER TABLE messages ADD COLUMN outgoing INTEGER NOT NULL DEFAULT 0;
";

/// Schema version 4: how many peer caches hold an outgoing message for its offline
/// recipient.
const V4_HELD_BY: &str = "
ALTER TABLE messages ADD COLUMN held_by INTEGER NOT NULL DEFAULT 0;
";

/// Schema version 5: MLS groups (openmls's state for each group as entries, and the
/// entries' values from before the last commit while a concurrent commit may win), group
/// messages that arrived before the commit they follow, this device's group identity,
/// and the key packages others' devices handed out.
const V5_GROUPS: &str = "
CREATE TABLE groups (
    group_id     TEXT    PRIMARY KEY,
    name         TEXT    NOT NULL,
    admins       TEXT    NOT NULL,
    epoch        INTEGER NOT NULL,
    last_commit  BLOB,
    redo         BLOB,
    active       INTEGER NOT NULL DEFAULT 1,
    created_at   INTEGER NOT NULL
);
CREATE TABLE group_state (
    group_id  TEXT NOT NULL,
    key       BLOB NOT NULL,
    value     BLOB NOT NULL,
    PRIMARY KEY (group_id, key)
) WITHOUT ROWID;
CREATE TABLE group_undo (
    group_id  TEXT NOT NULL,
    key       BLOB NOT NULL,
    value     BLOB,
    PRIMARY KEY (group_id, key)
) WITHOUT ROWID;
CREATE TABLE group_pending (
    seq       INTEGER PRIMARY KEY,
    group_id  TEXT    NOT NULL,
    epoch     INTEGER NOT NULL,
    sender    TEXT    NOT NULL,
    message   BLOB    NOT NULL
);
CREATE INDEX group_pending_by_group ON group_pending (group_id, epoch, seq);
CREATE TABLE group_device (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    signer  BLOB    NOT NULL,
    state   BLOB    NOT NULL
);
CREATE TABLE key_packages (
    account_id   TEXT    NOT NULL,
    device_id    INTEGER NOT NULL,
    key_package  BLOB    NOT NULL,
    PRIMARY KEY (account_id, device_id)
);
";

/// Schema version 6: the parts of group packets too large for one envelope (a
/// Welcome to a large group), kept until the last part arrives; and the devices an
/// account's list dropped, whose group leaves are to go.
const V6_GROUP_PARTS: &str = "
CREATE TABLE retired_devices (
    account_id  TEXT    NOT NULL,
    device_id   INTEGER NOT NULL,
    PRIMARY KEY (account_id, device_id)
);
CREATE TABLE group_parts (
    sender       TEXT    NOT NULL,
    packet_id    BLOB    NOT NULL,
    idx          INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    bytes        BLOB    NOT NULL,
    received_at  INTEGER NOT NULL,
    PRIMARY KEY (sender, packet_id, idx)
);
";

/// Schema version 7: the outbox keeps plaintext (inside the encrypted profile) and
/// seals each row only as it leaves, keeping the envelope of an attempt and the
/// sending chain it was sealed in; queued envelopes from before stay as they are
/// (kind `envelope`, no plaintext). The sent log keeps what left, by envelope id, so a
/// recipient that cannot open an envelope can have it sent again. Queue positions are
/// never reused, so a late report on a row that left cannot touch a newer one.
const V7_LATE_SEALING: &str = "
CREATE TABLE outbox_v7 (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id    TEXT    NOT NULL,
    device_id     INTEGER NOT NULL,
    kind          TEXT    NOT NULL,
    content       BLOB,
    message_id    BLOB,
    envelope      BLOB,
    chain         BLOB,
    resends       INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  INTEGER NOT NULL DEFAULT 0,
    CHECK (content IS NOT NULL OR envelope IS NOT NULL)
);
INSERT INTO outbox_v7 (seq, account_id, device_id, kind, message_id, envelope, created_at, attempts, next_attempt)
    SELECT seq, account_id, device_id, 'envelope', message_id, envelope, created_at, attempts, next_attempt
    FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v7 RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (next_attempt, seq);
CREATE INDEX outbox_by_message ON outbox (message_id) WHERE message_id IS NOT NULL;
CREATE TABLE sent_log (
    envelope_id  BLOB    PRIMARY KEY,
    account_id   TEXT    NOT NULL,
    device_id    INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    content      BLOB,
    message_id   BLOB,
    resends      INTEGER NOT NULL,
    sent_at      INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX sent_log_by_message ON sent_log (message_id, account_id, device_id);
CREATE INDEX sent_log_by_expiry ON sent_log (expires_at);
";

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = 7;

/// All migrations, oldest first.
pub fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(V1_IDENTITY),
        M::up(V2_HISTORY),
        M::up(V3_SESSIONS),
        M::up(V4_HELD_BY),
        M::up(V5_GROUPS),
        M::up(V6_GROUP_PARTS),
        M::up(V7_LATE_SEALING),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DbKey, ProfileDb};
    use rusqlite::{params, Connection};

    /// Rows a profile at schema version `version` would hold, written with that
    /// version's SQL, so the upgrade is checked against real older data.
    fn write_fixture(conn: &Connection, version: usize) {
        if version >= 1 {
            conn.execute(
                "INSERT INTO account VALUES (1, 'acctaaaaaaaaaaaaaaaaaaaaaa', 'Alice', x'0102', 10)",
                [],
            )
            .unwrap();
            conn.execute("INSERT INTO device VALUES (1, 1, 42, ?1, 11)", params![vec![7u8; 32]])
                .unwrap();
            conn.execute("INSERT INTO settings VALUES ('read_receipts', 'off')", [])
                .unwrap();
        }
        if version >= 2 {
            conn.execute("INSERT INTO conversations VALUES (x'aa', 'Bob', 12)", [])
                .unwrap();
            conn.execute(
                "INSERT INTO messages (id, conversation_id, sender, sent_at, body, state)
                 VALUES (x'01', x'aa', 'acctaaaaaaaaaaaaaaaaaaaaaa', 13, 'hello from the old schema', 'sent')",
                [],
            )
            .unwrap();
        }
        if (3..7).contains(&version) {
            conn.execute(
                "INSERT INTO outbox (account_id, device_id, envelope, message_id, created_at)
                 VALUES ('bobaaaaaaaaaaaaaaaaaaaaaaa', 2, x'0a0b0c', x'01', 14)",
                [],
            )
            .unwrap();
        }
    }

    fn check_fixture(db: &ProfileDb, version: usize) {
        let account = db.own().account().unwrap();
        let device = db.own().device().unwrap();
        if version >= 1 {
            assert_eq!(account.unwrap().display_name, "Alice");
            assert_eq!(device.unwrap().registration_id, 42);
            assert_eq!(db.settings().get("read_receipts").unwrap().as_deref(), Some("off"));
        } else {
            assert!(account.is_none() && device.is_none());
        }
        let found = db.messages().search("schema", 10).unwrap();
        if version >= 2 {
            assert_eq!(found.len(), 1, "the FTS index survived the upgrade");
        } else {
            assert!(found.is_empty());
        }
        let queued = db.outbox().entries().unwrap();
        if version >= 3 {
            let row = &queued[0];
            assert_eq!(
                (row.kind.as_str(), row.envelope.as_deref(), row.content.as_deref()),
                ("envelope", Some(&[0x0a, 0x0b, 0x0c][..]), None),
                "a queued envelope survived the upgrade as it was"
            );
        } else {
            assert!(queued.is_empty());
        }
    }

    #[test]
    fn an_encrypted_profile_upgrades_from_every_earlier_schema_version() {
        for version in 0..SCHEMA_VERSION {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("profile.db");
            let key = DbKey::random();
            {
                let mut conn = Connection::open(&path).unwrap();
                conn.pragma_update(None, "key", &*key.pragma_value()).unwrap();
                migrations().to_version(&mut conn, version).unwrap();
                write_fixture(&conn, version);
            }
            let db = ProfileDb::open(&path, &key).unwrap();
            assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION, "from version {version}");
            check_fixture(&db, version);
            // The upgraded schema accepts what the latest code writes.
            write_fixture_latest(&db);
        }
    }

    fn write_fixture_latest(db: &ProfileDb) {
        db.messages().ensure_conversation(b"new", "Carol", 20).unwrap();
        let message = crate::NewMessage {
            id: [9; 16],
            conversation_id: b"new",
            sender: &cairn_proto::AccountId::parse("acctaaaaaaaaaaaaaaaaaaaaaa").unwrap(),
            sent_at: 21,
            body: "written after the upgrade",
            state: crate::DeliveryState::Sending,
            outgoing: true,
        };
        assert!(db.messages().insert(&message).unwrap());
        assert_eq!(db.messages().search("upgrade", 10).unwrap().len(), 1);
    }

    #[test]
    fn migrations_are_valid_and_match_the_declared_version() {
        migrations().validate().unwrap();
        let mut conn = Connection::open_in_memory().unwrap();
        migrations().to_latest(&mut conn).unwrap();
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
