//! The outbox and the sent log.
//!
//! The outbox holds what this device has to send, one row per recipient device, as
//! the plaintext it carries (inside the encrypted profile): it is sealed only as it
//! leaves, so a backlog never ages behind its own session. A row sealed for an attempt
//! that did not go through keeps its envelope and the sending chain it was sealed in,
//! to be sent as it is while that chain is still the session's. Rows sealed before
//! they were queued (and those from schema 6 and earlier) have an envelope and no
//! plaintext.
//!
//! The sent log holds what left, by envelope id, until its envelope would have
//! expired: a recipient that cannot open an envelope (its chain of the session was
//! gone by the time it arrived) asks for it again by id, and the row goes back to
//! the outbox.

use cairn_proto::{AccountId, DeviceId};
use rusqlite::{params, OptionalExtension};

use crate::Result;

/// Something to queue for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewOutgoing<'a> {
    /// Recipient account.
    pub account_id: &'a AccountId,
    /// Recipient device.
    pub device_id: DeviceId,
    /// What it is (`text`, `receipt`, `card`, …), for listings and limits.
    pub kind: &'a str,
    /// The padded plaintext, sealed when it leaves (`None`: `envelope` is sealed already).
    pub content: Option<&'a [u8]>,
    /// An envelope sealed before it was queued.
    pub envelope: Option<&'a [u8]>,
    /// The message it carries to a contact, if any.
    pub message_id: Option<&'a [u8]>,
    /// How often it was sent again on the recipient's request.
    pub resends: u32,
}

/// A row of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRecord {
    /// Queue position.
    pub seq: i64,
    /// Recipient account.
    pub account_id: AccountId,
    /// Recipient device.
    pub device_id: DeviceId,
    /// What it is.
    pub kind: String,
    /// The padded plaintext, if it is sealed as it leaves.
    pub content: Option<Vec<u8>>,
    /// The message it carries to a contact, if any.
    pub message_id: Option<Vec<u8>>,
    /// The envelope of the last attempt (or sealed before it was queued).
    pub envelope: Option<Vec<u8>>,
    /// The sending chain `envelope` was sealed in.
    pub chain: Option<Vec<u8>>,
    /// How often it was sent again on the recipient's request.
    pub resends: u32,
    /// When it was queued, Unix milliseconds.
    pub created_at: i64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When it is due, Unix milliseconds.
    pub next_attempt: i64,
}

/// A row of the sent log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRecord {
    /// The id of the envelope that left.
    pub envelope_id: Vec<u8>,
    /// Recipient account.
    pub account_id: AccountId,
    /// Recipient device.
    pub device_id: DeviceId,
    /// What it was.
    pub kind: String,
    /// The plaintext it carried (`None` for envelopes sealed before they were queued:
    /// those cannot be sent again).
    pub content: Option<Vec<u8>>,
    /// The message it carried to a contact, if any.
    pub message_id: Option<Vec<u8>>,
    /// How often it was sent again already.
    pub resends: u32,
    /// When it left, Unix milliseconds.
    pub sent_at: i64,
}

const QUEUED_COLUMNS: &str = "seq, account_id, device_id, kind, content, message_id, envelope, chain, resends, \
                              created_at, attempts, next_attempt";

fn queued_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueuedRecord> {
    Ok(QueuedRecord {
        seq: r.get(0)?,
        account_id: r.get(1)?,
        device_id: r.get(2)?,
        kind: r.get(3)?,
        content: r.get(4)?,
        message_id: r.get(5)?,
        envelope: r.get(6)?,
        chain: r.get(7)?,
        resends: r.get(8)?,
        created_at: r.get(9)?,
        attempts: r.get(10)?,
        next_attempt: r.get(11)?,
    })
}

tables! {
    /// The `outbox` and `sent_log` tables.
    Outbox
}

impl Outbox<'_> {
    /// Queues something for one device; returns its queue position.
    pub fn enqueue(&self, item: &NewOutgoing<'_>, now: i64) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO outbox (account_id, device_id, kind, content, envelope, message_id, resends, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                item.account_id,
                item.device_id,
                item.kind,
                item.content,
                item.envelope,
                item.message_id,
                item.resends,
                now
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The oldest `limit` queued rows that are due at `now`.
    pub fn due(&self, limit: usize, now: i64) -> Result<Vec<QueuedRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {QUEUED_COLUMNS} FROM outbox WHERE next_attempt <= ?2 ORDER BY seq LIMIT ?1"
        ))?;
        let rows = stmt.query_map(params![limit as i64, now], queued_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One queued row.
    pub fn queued(&self, seq: i64) -> Result<Option<QueuedRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {QUEUED_COLUMNS} FROM outbox WHERE seq = ?1"))?;
        Ok(stmt.query_row([seq], queued_from_row).optional()?)
    }

    /// Every queued row, due or not, oldest first.
    pub fn entries(&self) -> Result<Vec<QueuedRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {QUEUED_COLUMNS} FROM outbox ORDER BY seq"))?;
        let rows = stmt.query_map([], queued_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Keeps the envelope a queued row was sealed into, and the sending chain.
    pub fn seal_queued(&self, seq: i64, envelope: &[u8], chain: Option<&[u8]>) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET envelope = ?2, chain = ?3 WHERE seq = ?1",
            params![seq, envelope, chain],
        )?;
        Ok(())
    }

    /// Puts a queued row off after a failed attempt: 2 s, doubling per attempt, at
    /// most 5 minutes.
    pub fn defer(&self, seq: i64, now: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET attempts = attempts + 1,
                 next_attempt = ?2 + min(2000 * (1 << min(attempts, 8)), 300000)
             WHERE seq = ?1",
            params![seq, now],
        )?;
        Ok(())
    }

    /// Makes queued rows due now: all of them, or those for one device.
    pub fn retry_now(&self, device: Option<(&AccountId, DeviceId)>) -> Result<()> {
        match device {
            None => self.conn.execute("UPDATE outbox SET next_attempt = 0", [])?,
            Some((account_id, device_id)) => self.conn.execute(
                "UPDATE outbox SET next_attempt = 0 WHERE account_id = ?1 AND device_id = ?2",
                params![account_id, device_id],
            )?,
        };
        Ok(())
    }

    /// Removes a row from the queue.
    pub fn dequeue(&self, seq: i64) -> Result<()> {
        self.conn.execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
        Ok(())
    }

    /// Drops what is queued or logged for devices of an account (ones its list
    /// dropped). Returns how many queued rows went.
    pub fn drop_queued_for(&self, account_id: &AccountId, device_ids: &[DeviceId]) -> Result<usize> {
        let mut dropped = 0;
        for device_id in device_ids {
            dropped += self.conn.execute(
                "DELETE FROM outbox WHERE account_id = ?1 AND device_id = ?2",
                params![account_id, device_id],
            )?;
            self.conn.execute(
                "DELETE FROM sent_log WHERE account_id = ?1 AND device_id = ?2",
                params![account_id, device_id],
            )?;
        }
        Ok(dropped)
    }

    /// How many rows of one kind are queued for a device.
    pub fn queued_count(&self, account_id: &AccountId, device_id: DeviceId, kind: &str) -> Result<usize> {
        let count: i64 = self.conn.query_row(
            "SELECT count(*) FROM outbox WHERE account_id = ?1 AND device_id = ?2 AND kind = ?3",
            params![account_id, device_id, kind],
            |r| r.get(0),
        )?;
        Ok(count as usize)
    }

    /// How many copies of a message (to any device) are still on their way: queued,
    /// or sent and not yet confirmed (so they may be asked for again).
    pub fn copies_in_flight(&self, message_id: &[u8]) -> Result<usize> {
        let count: i64 = self.conn.query_row(
            "SELECT (SELECT count(*) FROM outbox WHERE message_id = ?1)
                  + (SELECT count(*) FROM sent_log WHERE message_id = ?1)",
            [message_id],
            |r| r.get(0),
        )?;
        Ok(count as usize)
    }

    /// A queued row left as envelope `envelope_id`: it moves to the sent log, kept
    /// until `expires_at` (Unix milliseconds). The same envelope logged twice (sent
    /// again after a crash) is one entry.
    pub fn log_sent(&self, seq: i64, envelope_id: &[u8], sent_at: i64, expires_at: i64) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO sent_log
                 (envelope_id, account_id, device_id, kind, content, message_id, resends, sent_at, expires_at)
             SELECT ?2, account_id, device_id, kind, content, message_id, resends, ?3, ?4 FROM outbox WHERE seq = ?1",
            params![seq, envelope_id, sent_at, expires_at],
        )?;
        self.dequeue(seq)
    }

    /// The sent log's entry for an envelope.
    pub fn sent(&self, envelope_id: &[u8]) -> Result<Option<SentRecord>> {
        Ok(self
            .conn
            .query_row(
                "SELECT envelope_id, account_id, device_id, kind, content, message_id, resends, sent_at
                 FROM sent_log WHERE envelope_id = ?1",
                [envelope_id],
                |r| {
                    Ok(SentRecord {
                        envelope_id: r.get(0)?,
                        account_id: r.get(1)?,
                        device_id: r.get(2)?,
                        kind: r.get(3)?,
                        content: r.get(4)?,
                        message_id: r.get(5)?,
                        resends: r.get(6)?,
                        sent_at: r.get(7)?,
                    })
                },
            )
            .optional()?)
    }

    /// Puts what a logged envelope carried back in the outbox, due now, to be sealed
    /// again (one resend more). Returns its queue position; `None` if the entry is
    /// gone or holds no plaintext.
    pub fn requeue_sent(&self, envelope_id: &[u8], now: i64) -> Result<Option<i64>> {
        let moved = self.conn.execute(
            "INSERT INTO outbox (account_id, device_id, kind, content, message_id, resends, created_at)
             SELECT account_id, device_id, kind, content, message_id, resends + 1, ?2
             FROM sent_log WHERE envelope_id = ?1 AND content IS NOT NULL",
            params![envelope_id, now],
        )?;
        let seq = (moved == 1).then(|| self.conn.last_insert_rowid());
        self.forget_sent(envelope_id)?;
        Ok(seq)
    }

    /// Drops a sent log entry.
    pub fn forget_sent(&self, envelope_id: &[u8]) -> Result<()> {
        self.conn
            .execute("DELETE FROM sent_log WHERE envelope_id = ?1", [envelope_id])?;
        Ok(())
    }

    /// Drops the sent log's entries of messages a device confirmed it has.
    pub fn forget_sent_messages(
        &self,
        account_id: &AccountId,
        device_id: DeviceId,
        message_ids: &[[u8; 16]],
    ) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM sent_log WHERE account_id = ?1 AND device_id = ?2 AND message_id = ?3")?;
        for id in message_ids {
            stmt.execute(params![account_id, device_id, &id[..]])?;
        }
        Ok(())
    }

    /// Drops the sent log's entries whose envelopes have expired by `now`; returns
    /// the messages they carried.
    pub fn expire_sent(&self, now: i64) -> Result<Vec<Vec<u8>>> {
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM sent_log WHERE expires_at <= ?1 RETURNING message_id")?;
        let rows = stmt.query_map([now], |r| r.get::<_, Option<Vec<u8>>>(0))?;
        let mut ids: Vec<Vec<u8>> = rows.filter_map(|r| r.transpose()).collect::<rusqlite::Result<_>>()?;
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// How many entries the sent log holds.
    pub fn sent_log_len(&self) -> Result<usize> {
        let count: i64 = self.conn.query_row("SELECT count(*) FROM sent_log", [], |r| r.get(0))?;
        Ok(count as usize)
    }
}
