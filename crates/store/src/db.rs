//! The SQLCipher profile database: opening it with its key, running migrations, and
//! the records a profile keeps.
//!
//! Opening sets the key before any other statement and then reads the schema; with a
//! wrong key that read fails and nothing has been written, so the file is untouched.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::{migrations::migrations, DbKey, DeliveryState, Result, StoreError};

/// The account this profile belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// The account id shown to people.
    pub account_id: String,
    /// The name this person chose.
    pub display_name: String,
    /// The serialised identity key pair (private half included).
    pub identity_key: Vec<u8>,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
}

/// This device's own keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device id within the account (1..=127).
    pub device_id: u8,
    /// The Signal registration id.
    pub registration_id: u32,
    /// The transport key's secret seed.
    pub transport_seed: [u8; 32],
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
}

/// A message to be written to history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage<'a> {
    /// Random 128-bit message id.
    pub id: [u8; 16],
    /// The conversation it belongs to.
    pub conversation_id: &'a [u8],
    /// The sender's account id.
    pub sender: &'a str,
    /// Send time, Unix milliseconds.
    pub sent_at: i64,
    /// The text.
    pub body: &'a str,
    /// Delivery state.
    pub state: DeliveryState,
    /// Whether this device's account sent it.
    pub outgoing: bool,
}

/// A message read back from history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// Random 128-bit message id.
    pub id: Vec<u8>,
    /// The conversation it belongs to.
    pub conversation_id: Vec<u8>,
    /// The sender's account id.
    pub sender: String,
    /// Send time, Unix milliseconds.
    pub sent_at: i64,
    /// The text.
    pub body: String,
    /// Delivery state.
    pub state: DeliveryState,
    /// Whether this device's account sent it.
    pub outgoing: bool,
    /// How many peer caches last took it for its offline recipient (0: none).
    pub held_by: u32,
}

/// An open profile database.
pub struct ProfileDb {
    pub(crate) conn: Connection,
    /// The profile lock file, held for as long as the database is open.
    _lock: Option<std::fs::File>,
}

impl ProfileDb {
    /// Creates a new encrypted database at `path`; fails if a file is already there.
    pub fn create(path: &Path, key: &DbKey) -> Result<Self> {
        Self::open_with(path, Some(key), true)
    }

    /// Opens the existing encrypted database at `path` and brings its schema up to date.
    pub fn open(path: &Path, key: &DbKey) -> Result<Self> {
        Self::open_with(path, Some(key), false)
    }

    /// Creates an *unencrypted* database with the same schema. The app never uses
    /// this; it exists so benchmarks can measure what SQLCipher costs.
    pub fn create_unencrypted(path: &Path) -> Result<Self> {
        Self::open_with(path, None, true)
    }

    fn open_with(path: &Path, key: Option<&DbKey>, create: bool) -> Result<Self> {
        let exists = path.exists();
        if create && exists {
            return Err(StoreError::AlreadyExists(path.display().to_string()));
        }
        if !create && !exists {
            return Err(StoreError::NotFound(path.display().to_string()));
        }
        let flags = if create {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        };
        let mut conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        // A wrong key is an expected outcome we report as a typed error; SQLCipher
        // would also print it to stderr.
        conn.pragma_update(None, "cipher_log_level", "NONE")?;
        if let Some(key) = key {
            // Must come before anything reads the database.
            conn.pragma_update(None, "key", &*key.pragma_value())?;
        }
        // The first read of the schema is where a wrong key shows: SQLCipher cannot
        // decrypt page 1 and reports "file is not a database". Nothing is written.
        if let Err(e) = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
            return Err(match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::NotADatabase) => StoreError::WrongKey,
                _ => e.into(),
            });
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Freed pages are overwritten so deleted messages do not linger in the file.
        conn.pragma_update(None, "secure_delete", "ON")?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(Self { conn, _lock: None })
    }

    pub(crate) fn holding(mut self, lock: std::fs::File) -> Self {
        self._lock = Some(lock);
        self
    }

    /// Starts a transaction that [`ProfileDb::commit`] or [`ProfileDb::rollback`]
    /// ends. The core wraps each envelope it processes (and each message it sends)
    /// in one, so a ratchet step and the message it carried are stored together or
    /// not at all.
    pub fn begin(&self) -> Result<()> {
        Ok(self.conn.execute_batch("BEGIN IMMEDIATE")?)
    }

    /// Commits the transaction [`ProfileDb::begin`] started.
    pub fn commit(&self) -> Result<()> {
        Ok(self.conn.execute_batch("COMMIT")?)
    }

    /// Undoes everything since [`ProfileDb::begin`].
    pub fn rollback(&self) -> Result<()> {
        Ok(self.conn.execute_batch("ROLLBACK")?)
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<usize> {
        Ok(self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// The account record, if the account has been created.
    pub fn account(&self) -> Result<Option<AccountRecord>> {
        Ok(self
            .conn
            .query_row(
                "SELECT account_id, display_name, identity_key, created_at FROM account WHERE id = 1",
                [],
                |r| {
                    Ok(AccountRecord {
                        account_id: r.get(0)?,
                        display_name: r.get(1)?,
                        identity_key: r.get(2)?,
                        created_at: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// This device's keys, if created.
    pub fn device(&self) -> Result<Option<DeviceRecord>> {
        let row = self
            .conn
            .query_row(
                "SELECT device_id, registration_id, transport_seed, created_at FROM device WHERE id = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, u8>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get(3)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(device_id, registration_id, seed, created_at)| {
            let transport_seed = seed
                .try_into()
                .map_err(|_| StoreError::Corrupt("device transport seed is not 32 bytes".into()))?;
            Ok(DeviceRecord {
                device_id,
                registration_id,
                transport_seed,
                created_at,
            })
        })
        .transpose()
    }

    /// Saves the account and device records. Callers run it inside
    /// [`ProfileDb::begin`]/[`ProfileDb::commit`] with what else makes an account.
    pub fn save_identity(&self, account: &AccountRecord, device: &DeviceRecord) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO account (id, account_id, display_name, identity_key, created_at)
             VALUES (1, ?1, ?2, ?3, ?4)",
            params![
                account.account_id,
                account.display_name,
                account.identity_key,
                account.created_at
            ],
        )?;
        self.conn.execute(
            "INSERT OR REPLACE INTO device (id, device_id, registration_id, transport_seed, created_at)
             VALUES (1, ?1, ?2, ?3, ?4)",
            params![
                device.device_id,
                device.registration_id,
                &device.transport_seed[..],
                device.created_at
            ],
        )?;
        Ok(())
    }

    /// Creates the conversation if it does not exist yet.
    pub fn ensure_conversation(&self, id: &[u8], title: &str, created_at: i64) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO conversations (id, title, created_at) VALUES (?1, ?2, ?3)",
            params![id, title, created_at],
        )?;
        Ok(())
    }

    /// Adds a message to history. Returns `false` if a message with this id is already
    /// stored (receivers de-duplicate by id).
    pub fn insert_message(&self, message: &NewMessage<'_>) -> Result<bool> {
        Ok(insert_message(&self.conn, message)?)
    }

    /// Adds many messages in one transaction (history import, benchmarks).
    pub fn insert_messages<'a>(&mut self, messages: impl IntoIterator<Item = NewMessage<'a>>) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let mut count = 0;
        {
            for m in messages {
                count += usize::from(insert_message(&tx, &m)?);
            }
        }
        tx.commit()?;
        Ok(count)
    }

    /// The newest `limit` messages of a conversation, oldest first.
    pub fn conversation_messages(&self, conversation_id: &[u8], limit: usize) -> Result<Vec<MessageRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, conversation_id, sender, sent_at, body, state, outgoing, held_by FROM (
                 SELECT * FROM messages WHERE conversation_id = ?1 ORDER BY sent_at DESC, seq DESC LIMIT ?2
             ) ORDER BY sent_at, seq",
        )?;
        let rows = stmt.query_map(params![conversation_id, limit as i64], message_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A page of the whole history in the order it was stored: up to `limit`
    /// messages from position `from` on, with the position of each (the next page
    /// starts one past the last). For passing history to a newly linked device.
    pub fn history_page(&self, from: u64, limit: usize) -> Result<Vec<(u64, MessageRecord)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, conversation_id, sender, sent_at, body, state, outgoing, held_by, seq
             FROM messages WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![from as i64, limit as i64], |r| {
            Ok((r.get::<_, i64>(8)? as u64, message_from_row(r)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many messages history holds.
    pub fn message_count(&self) -> Result<u64> {
        let count: i64 = self.conn.query_row("SELECT count(*) FROM messages", [], |r| r.get(0))?;
        Ok(count as u64)
    }

    /// A conversation's title and start time.
    pub fn conversation_info(&self, id: &[u8]) -> Result<Option<(String, i64)>> {
        Ok(self
            .conn
            .query_row("SELECT title, created_at FROM conversations WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    /// Full-text search over every conversation, best matches first. The query is
    /// taken as plain words (each quoted), so FTS5 operators typed by a person cannot
    /// produce a syntax error.
    pub fn search_messages(&self, query: &str, limit: usize) -> Result<Vec<MessageRecord>> {
        let fts_query = query
            .split_whitespace()
            .map(|word| format!("\"{}\"", word.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" ");
        if fts_query.is_empty() {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT m.id, m.conversation_id, m.sender, m.sent_at, m.body, m.state, m.outgoing, m.held_by
             FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid
             WHERE messages_fts MATCH ?1 ORDER BY rank LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![fts_query, limit as i64], message_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A message by id.
    pub fn message(&self, id: &[u8]) -> Result<Option<MessageRecord>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, conversation_id, sender, sent_at, body, state, outgoing, held_by FROM messages WHERE id = ?1",
                [id],
                message_from_row,
            )
            .optional()?)
    }

    /// Moves an outgoing message's state forward (`sending` or `failed` → `sent` →
    /// `delivered` → `read`); a receipt that arrives late never moves it back. True if
    /// it moved.
    pub fn advance_message_state(&self, id: &[u8], state: DeliveryState) -> Result<bool> {
        let Some(new_progress) = state.progress().filter(|_| state != DeliveryState::Failed) else {
            return Err(StoreError::Corrupt(format!("{} is not a step forward", state.name())));
        };
        let Some(current) = self.message(id)? else {
            return Ok(false);
        };
        if !current.outgoing || current.state.progress().is_some_and(|p| p >= new_progress) {
            return Ok(false);
        }
        self.conn
            .execute("UPDATE messages SET state = ?2 WHERE id = ?1", params![id, state])?;
        Ok(true)
    }

    /// Marks an outgoing message that nothing will deliver any more `failed` (from
    /// `sending` or `sent`; a message a device confirmed stays as it is). True if it
    /// changed.
    pub fn fail_message(&self, id: &[u8]) -> Result<bool> {
        Ok(self.conn.execute(
            "UPDATE messages SET state = 'failed', held_by = 0
             WHERE id = ?1 AND outgoing = 1 AND state IN ('sending', 'sent')",
            [id],
        )? == 1)
    }

    /// Puts a failed outgoing message back to `sending` (the person asked to try
    /// again). True if it was failed.
    pub fn unfail_message(&self, id: &[u8]) -> Result<bool> {
        Ok(self.conn.execute(
            "UPDATE messages SET state = 'sending' WHERE id = ?1 AND outgoing = 1 AND state = 'failed'",
            [id],
        )? == 1)
    }

    /// Records that `holders` peer caches took an outgoing message for its offline
    /// recipient (kept only while it is `sent`; later states say more).
    pub fn set_message_holders(&self, id: &[u8], holders: u32) -> Result<()> {
        self.conn.execute(
            "UPDATE messages SET held_by = ?2 WHERE id = ?1 AND state = 'sent'",
            params![id, holders],
        )?;
        Ok(())
    }

    /// Marks a conversation's received messages read; returns their ids (for read
    /// receipts).
    pub fn mark_conversation_read(&self, conversation_id: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE messages SET state = 'read'
             WHERE conversation_id = ?1 AND outgoing = 0 AND state = 'received' RETURNING id",
        )?;
        let ids = stmt.query_map([conversation_id], |r| r.get(0))?;
        Ok(ids.collect::<rusqlite::Result<_>>()?)
    }

    /// Reads a setting.
    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Every setting, as keys and values.
    pub fn settings(&self) -> Result<Vec<(String, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, value FROM settings ORDER BY key")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Writes a setting.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Writes the WAL back into the main file (used before the profile is closed).
    pub fn checkpoint(&self) -> Result<()> {
        self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

/// Inserts one message unless its id is already stored; `true` if it was new.
fn insert_message(conn: &Connection, m: &NewMessage<'_>) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR IGNORE INTO messages (id, conversation_id, sender, sent_at, body, state, outgoing)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    Ok(stmt.execute(params![
        &m.id[..],
        m.conversation_id,
        m.sender,
        m.sent_at,
        m.body,
        m.state,
        m.outgoing
    ])? == 1)
}

fn message_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRecord> {
    Ok(MessageRecord {
        id: r.get(0)?,
        conversation_id: r.get(1)?,
        sender: r.get(2)?,
        sent_at: r.get(3)?,
        body: r.get(4)?,
        state: r.get(5)?,
        outgoing: r.get(6)?,
        held_by: r.get(7)?,
    })
}
