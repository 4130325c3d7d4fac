//! Message history: conversations, messages with their delivery state, full-text
//! search, and the pages history is handed to a newly linked device in.

use cairn_proto::AccountId;
use rusqlite::{params, Connection, OptionalExtension};

use crate::{DeliveryState, Result, StoreError};

/// A message to be written to history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage<'a> {
    /// Random 128-bit message id.
    pub id: [u8; 16],
    /// The conversation it belongs to.
    pub conversation_id: &'a [u8],
    /// The sender's account id.
    pub sender: &'a AccountId,
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
    pub sender: AccountId,
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

tables! {
    /// The history tables (`conversations`, `messages`, `messages_fts`).
    Messages
}

impl Messages<'_> {
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
    pub fn insert(&self, message: &NewMessage<'_>) -> Result<bool> {
        Ok(insert_message(self.conn, message)?)
    }

    /// Adds many messages in one transaction (history import, benchmarks).
    pub fn insert_all<'a>(&self, messages: impl IntoIterator<Item = NewMessage<'a>>) -> Result<usize> {
        let tx = self.conn.unchecked_transaction()?;
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
    pub fn in_conversation(&self, conversation_id: &[u8], limit: usize) -> Result<Vec<MessageRecord>> {
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
    pub fn count(&self) -> Result<u64> {
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
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<MessageRecord>> {
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
    pub fn get(&self, id: &[u8]) -> Result<Option<MessageRecord>> {
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
    pub fn advance(&self, id: &[u8], state: DeliveryState) -> Result<bool> {
        let Some(new_progress) = state.progress().filter(|_| state != DeliveryState::Failed) else {
            return Err(StoreError::Corrupt(format!("{} is not a step forward", state.name())));
        };
        let Some(current) = self.get(id)? else {
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
    pub fn fail(&self, id: &[u8]) -> Result<bool> {
        Ok(self.conn.execute(
            "UPDATE messages SET state = 'failed', held_by = 0
             WHERE id = ?1 AND outgoing = 1 AND state IN ('sending', 'sent')",
            [id],
        )? == 1)
    }

    /// Puts a failed outgoing message back to `sending` (the person asked to try
    /// again). True if it was failed.
    pub fn unfail(&self, id: &[u8]) -> Result<bool> {
        Ok(self.conn.execute(
            "UPDATE messages SET state = 'sending' WHERE id = ?1 AND outgoing = 1 AND state = 'failed'",
            [id],
        )? == 1)
    }

    /// Records that `holders` peer caches took an outgoing message for its offline
    /// recipient (kept only while it is `sent`; later states say more).
    pub fn set_holders(&self, id: &[u8], holders: u32) -> Result<()> {
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
