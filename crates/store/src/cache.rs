//! The peer cache's own database: sealed envelopes this node holds for other people's
//! devices, within a byte quota per mailbox and for the whole node, until they are
//! acknowledged or expire; and tombstones for acknowledged ones, kept until the
//! envelope would have expired, so a late replica cannot bring one back.
//!
//! Owns storage and limits only. Does not own: checking envelopes, proofs of work or
//! acknowledgement signatures (the caller does that before asking), nor placement and
//! hand-over. Envelopes are sealed to their recipient, so this file holds no plaintext;
//! it is a plain SQLite file, separate from the profile database, with its own quota.
//!
//! Usage per mailbox is kept in a table maintained by triggers, and the node's total
//! in memory, so that holding one envelope costs the same however many are held.

use std::path::Path;

use cairn_proto::{CacheRefusal, EnvelopeId, Mailbox};
use rusqlite::{params, Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};

use crate::{Result, StoreError};

const V1_CACHE: &str = "
CREATE TABLE envelopes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    mailbox BLOB NOT NULL,
    expires INTEGER NOT NULL,
    size INTEGER NOT NULL,
    bytes BLOB NOT NULL
) STRICT;
CREATE INDEX envelopes_by_mailbox ON envelopes(mailbox, seq);
CREATE INDEX envelopes_by_expiry ON envelopes(expires);
CREATE TABLE mailboxes (
    mailbox BLOB PRIMARY KEY,
    bytes INTEGER NOT NULL,
    count INTEGER NOT NULL
) STRICT;
CREATE TRIGGER envelope_held AFTER INSERT ON envelopes BEGIN
    INSERT INTO mailboxes (mailbox, bytes, count) VALUES (new.mailbox, new.size, 1)
    ON CONFLICT(mailbox) DO UPDATE SET bytes = bytes + excluded.bytes, count = count + 1;
END;
CREATE TRIGGER envelope_gone AFTER DELETE ON envelopes BEGIN
    UPDATE mailboxes SET bytes = bytes - old.size, count = count - 1 WHERE mailbox = old.mailbox;
    DELETE FROM mailboxes WHERE mailbox = old.mailbox AND count <= 0;
END;
CREATE TABLE tombstones (
    id BLOB NOT NULL,
    mailbox BLOB NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (id, mailbox)
) STRICT;
CREATE INDEX tombstones_by_expiry ON tombstones(expires);
";

/// Most tombstones kept in all: past this, only envelopes held here get one (an
/// acknowledgement costs its signer nothing, so they must not fill the disk).
const MAX_TOMBSTONES: u64 = 100_000;

/// What a cache node is willing to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Largest single envelope, in bytes.
    pub max_envelope: usize,
    /// Most bytes held for one mailbox.
    pub per_mailbox: u64,
    /// Most bytes held in all.
    pub total: u64,
}

impl CacheLimits {
    /// Limits for a cache of `total` bytes: a sixteenth of it (at least 256 KiB) per
    /// mailbox, so a few senders cannot fill it for everyone; envelopes up to the wire
    /// limit.
    pub fn with_total(total: u64) -> Self {
        Self {
            max_envelope: cairn_proto::MAX_ENVELOPE_BYTES,
            per_mailbox: (total / 16).max(256 << 10).min(total),
            total,
        }
    }
}

/// An envelope to hold: its id, mailbox, expiry (Unix seconds) and encoded bytes.
#[derive(Debug, Clone, Copy)]
pub struct ToHold<'a> {
    /// The envelope's id.
    pub id: EnvelopeId,
    /// Its recipient's mailbox.
    pub mailbox: Mailbox,
    /// When it expires.
    pub expires: u64,
    /// The envelope as received.
    pub bytes: &'a [u8],
}

/// A page of held envelopes: `(position, bytes)` pairs, oldest first, and whether more
/// are held after the last.
pub type Page = (Vec<(u64, Vec<u8>)>, bool);

/// Whether an envelope was new to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Stored now, at this position.
    New(u64),
    /// Already held (a retry or another holder's hand-over): nothing changed.
    Already,
}

/// The peer cache database.
pub struct CacheDb {
    conn: Connection,
    limits: CacheLimits,
    /// Bytes held in all (kept in step with the table).
    total: u64,
    /// Tombstones kept now.
    tombstones: u64,
}

impl CacheDb {
    /// Opens (creating if needed) the cache file at `path` and brings its schema up
    /// to date.
    pub fn open(path: &Path, limits: CacheLimits) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A cache loses at most its last writes on power loss, never its consistency.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        Migrations::new(vec![M::up(V1_CACHE)])
            .to_latest(&mut conn)
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        let total: i64 = conn.query_row("SELECT COALESCE(SUM(bytes), 0) FROM mailboxes", [], |r| r.get(0))?;
        let tombstones: i64 = conn.query_row("SELECT COUNT(*) FROM tombstones", [], |r| r.get(0))?;
        Ok(Self {
            conn,
            limits,
            total: total as u64,
            tombstones: tombstones as u64,
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    /// Holds an envelope for `mailbox` until `expires` (unix seconds), within the
    /// limits, or says why not ([`StoreError::Refused`]). Holding one twice is a no-op.
    pub fn hold(&mut self, id: &EnvelopeId, mailbox: &Mailbox, expires: u64, bytes: &[u8], now: u64) -> Result<Held> {
        let item = ToHold {
            id: *id,
            mailbox: *mailbox,
            expires,
            bytes,
        };
        match self.hold_all(&[item], now)?.pop() {
            Some(Ok(held)) => Ok(held),
            Some(Err(refusal)) => Err(StoreError::Refused(refusal)),
            None => Err(StoreError::Corrupt("no outcome for a held envelope".into())),
        }
    }

    /// Holds several envelopes in one transaction (one commit for all, which is what
    /// makes a busy holder fast); each gets its own outcome, in order. Only a failure
    /// of the database itself fails them all, and then none is held.
    pub fn hold_all(&mut self, items: &[ToHold<'_>], now: u64) -> Result<Vec<Result<Held, CacheRefusal>>> {
        let tx = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(items.len());
        let mut added = 0;
        for item in items {
            let outcome = hold_one(&tx, &self.limits, self.total + added, item, now)?;
            if let Ok(Held::New(_)) = outcome {
                added += item.bytes.len() as u64;
            }
            outcomes.push(outcome);
        }
        tx.commit()?;
        self.total += added;
        Ok(outcomes)
    }

    /// The envelopes held for `mailbox` after position `after` that have not expired,
    /// oldest first, as `(position, bytes)`, up to about `max_bytes` (at least one);
    /// and whether more are held.
    pub fn fetch(&self, mailbox: &Mailbox, after: u64, now: u64, max_bytes: usize) -> Result<Page> {
        let mut statement = self.conn.prepare_cached(
            "SELECT seq, bytes FROM envelopes WHERE mailbox = ?1 AND seq > ?2 AND expires > ?3 ORDER BY seq",
        )?;
        let mut rows = statement.query(params![&mailbox[..], after as i64, now as i64])?;
        let (mut items, mut bytes) = (Vec::new(), 0);
        while let Some(row) = rows.next()? {
            let envelope: Vec<u8> = row.get(1)?;
            if !items.is_empty() && bytes + envelope.len() > max_bytes {
                return Ok((items, true));
            }
            bytes += envelope.len();
            items.push((row.get::<_, i64>(0)? as u64, envelope));
        }
        Ok((items, false))
    }

    /// The mailbox and expiry of a held envelope (to check an acknowledgement against).
    pub fn held(&self, id: &EnvelopeId) -> Result<Option<(Mailbox, u64)>> {
        let row: Option<(Vec<u8>, i64)> = self
            .conn
            .query_row(
                "SELECT mailbox, expires FROM envelopes WHERE id = ?1",
                [&id[..]],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        row.map(|(mailbox, expires)| Ok((to_mailbox(mailbox)?, expires as u64)))
            .transpose()
    }

    /// Deletes an envelope its recipient acknowledged (the caller checked the
    /// signature against `mailbox`) and keeps a tombstone until `expires`, so a late
    /// replica cannot bring it back. Whether it was held here. An envelope not held
    /// here gets a tombstone only if something else is held for its mailbox (a replica
    /// may still arrive) and the tombstones are within their bound.
    pub fn acknowledge(&mut self, id: &EnvelopeId, mailbox: &Mailbox, expires: u64) -> Result<bool> {
        let tx = self.conn.transaction()?;
        let deleted: Option<i64> = tx
            .query_row(
                "DELETE FROM envelopes WHERE id = ?1 AND mailbox = ?2 RETURNING size",
                [&id[..], &mailbox[..]],
                |r| r.get(0),
            )
            .optional()?;
        let mailbox_held = || {
            tx.query_row("SELECT 1 FROM mailboxes WHERE mailbox = ?1", [&mailbox[..]], |_| Ok(()))
                .optional()
                .map(|row| row.is_some())
        };
        let mut added = 0;
        if deleted.is_some() || (self.tombstones < MAX_TOMBSTONES && mailbox_held()?) {
            added = tx.execute(
                "INSERT INTO tombstones (id, mailbox, expires) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id, mailbox) DO NOTHING",
                params![&id[..], &mailbox[..], expires as i64],
            )?;
            if added == 0 {
                tx.execute(
                    "UPDATE tombstones SET expires = MAX(expires, ?3) WHERE id = ?1 AND mailbox = ?2",
                    params![&id[..], &mailbox[..], expires as i64],
                )?;
            }
        }
        tx.commit()?;
        if let Some(size) = deleted {
            self.total = self.total.saturating_sub(size as u64);
        }
        self.tombstones += added as u64;
        Ok(deleted.is_some())
    }

    /// Deletes a held envelope without a tombstone (it was handed to holders closer to
    /// its mailbox). Whether it was held.
    pub fn release(&mut self, id: &EnvelopeId) -> Result<bool> {
        let size: Option<i64> = self
            .conn
            .query_row("DELETE FROM envelopes WHERE id = ?1 RETURNING size", [&id[..]], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(size) = size {
            self.total = self.total.saturating_sub(size as u64);
        }
        Ok(size.is_some())
    }

    /// Whether a tombstone says the envelope was acknowledged.
    pub fn is_acknowledged(&self, id: &EnvelopeId, mailbox: &Mailbox) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM tombstones WHERE id = ?1 AND mailbox = ?2",
                [&id[..], &mailbox[..]],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Drops expired envelopes and tombstones; how many envelopes went.
    pub fn sweep(&mut self, now: u64) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let (gone, bytes) = {
            let mut statement = tx.prepare("DELETE FROM envelopes WHERE expires <= ?1 RETURNING size")?;
            let sizes = statement
                .query_map([now as i64], |r| r.get::<_, i64>(0))?
                .collect::<rusqlite::Result<Vec<i64>>>()?;
            (sizes.len(), sizes.iter().map(|&s| s as u64).sum::<u64>())
        };
        let tombstones = tx.execute("DELETE FROM tombstones WHERE expires <= ?1", [now as i64])?;
        tx.commit()?;
        self.total = self.total.saturating_sub(bytes);
        self.tombstones = self.tombstones.saturating_sub(tombstones as u64);
        Ok(gone)
    }

    /// The mailboxes something is held for.
    pub fn mailboxes(&self) -> Result<Vec<Mailbox>> {
        let mut statement = self.conn.prepare("SELECT mailbox FROM mailboxes ORDER BY mailbox")?;
        let rows = statement.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|m| to_mailbox(m?)).collect()
    }

    /// How many envelopes are held, and their bytes.
    pub fn usage(&self) -> Result<(u64, u64)> {
        let count: i64 = self
            .conn
            .query_row("SELECT COALESCE(SUM(count), 0) FROM mailboxes", [], |row| row.get(0))?;
        Ok((count as u64, self.total))
    }
}

/// Holds one envelope inside a transaction, given the bytes the node holds in all.
fn hold_one(
    tx: &rusqlite::Transaction<'_>,
    limits: &CacheLimits,
    total: u64,
    item: &ToHold<'_>,
    now: u64,
) -> Result<Result<Held, CacheRefusal>> {
    let (id, mailbox) = (&item.id[..], &item.mailbox[..]);
    let size = item.bytes.len() as u64;
    if item.bytes.len() > limits.max_envelope {
        return Ok(Err(CacheRefusal::TooLarge {
            size,
            limit: limits.max_envelope as u64,
        }));
    }
    if item.expires <= now {
        return Ok(Err(CacheRefusal::Expired));
    }
    let exists = |sql: &str, args: &[&dyn rusqlite::ToSql]| -> Result<bool> {
        Ok(tx
            .prepare_cached(sql)?
            .query_row(args, |_| Ok(()))
            .optional()?
            .is_some())
    };
    if exists(
        "SELECT 1 FROM tombstones WHERE id = ?1 AND mailbox = ?2",
        &[&id, &mailbox],
    )? {
        return Ok(Err(CacheRefusal::Acknowledged));
    }
    if exists("SELECT 1 FROM envelopes WHERE id = ?1", &[&id])? {
        return Ok(Ok(Held::Already));
    }
    let in_mailbox: i64 = tx
        .prepare_cached("SELECT bytes FROM mailboxes WHERE mailbox = ?1")?
        .query_row([mailbox], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    if in_mailbox as u64 + size > limits.per_mailbox {
        return Ok(Err(CacheRefusal::MailboxFull));
    }
    if total + size > limits.total {
        return Ok(Err(CacheRefusal::CacheFull));
    }
    tx.prepare_cached("INSERT INTO envelopes (id, mailbox, expires, size, bytes) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![id, mailbox, item.expires as i64, size as i64, item.bytes])?;
    Ok(Ok(Held::New(tx.last_insert_rowid() as u64)))
}

fn to_mailbox(bytes: Vec<u8>) -> Result<Mailbox> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("a cached envelope's mailbox is not 32 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CacheLimits = CacheLimits {
        max_envelope: 1000,
        per_mailbox: 2500,
        total: 4000,
    };

    fn id(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn bytes_of(items: Vec<(u64, Vec<u8>)>) -> Vec<Vec<u8>> {
        items.into_iter().map(|(_, b)| b).collect()
    }

    #[test]
    fn held_envelopes_come_back_in_order_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.db");
        let mut cache = CacheDb::open(&path, LIMITS).unwrap();
        for n in 1..=3 {
            assert!(matches!(
                cache.hold(&id(n), &[7; 32], 100, &[n; 10], 1).unwrap(),
                Held::New(_)
            ));
        }
        assert_eq!(cache.hold(&id(2), &[7; 32], 100, &[2; 10], 1).unwrap(), Held::Already);
        drop(cache);
        let cache = CacheDb::open(&path, LIMITS).unwrap();
        let (items, more) = cache.fetch(&[7; 32], 0, 2, 1 << 20).unwrap();
        assert!(!more);
        let first = items[0].0;
        assert_eq!(bytes_of(items), vec![vec![1; 10], vec![2; 10], vec![3; 10]]);
        // Paged: a small budget gives one at a time, and `after` moves on.
        let (page, more) = cache.fetch(&[7; 32], first, 2, 5).unwrap();
        assert!(more);
        assert_eq!(bytes_of(page), vec![vec![2; 10]]);
        assert!(cache.fetch(&[8; 32], 0, 2, 1 << 20).unwrap().0.is_empty());
        assert_eq!(cache.usage().unwrap(), (3, 30));
        assert_eq!(cache.mailboxes().unwrap(), vec![[7; 32]]);
        let mut cache = cache;
        assert!(cache.release(&id(1)).unwrap());
        assert!(!cache.release(&id(1)).unwrap());
        assert_eq!(cache.usage().unwrap(), (2, 20));
        assert!(matches!(
            cache.hold(&id(1), &[7; 32], 100, &[1; 10], 1),
            Ok(Held::New(_))
        ));
    }

    #[test]
    fn over_a_limit_an_envelope_is_refused_and_nothing_held_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = CacheDb::open(&dir.path().join("cache.db"), LIMITS).unwrap();
        let refused = |r: Result<Held>| match r {
            Err(StoreError::Refused(refusal)) => refusal,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(
            refused(cache.hold(&id(1), &[1; 32], 100, &[0; 1001], 1)),
            CacheRefusal::TooLarge {
                size: 1001,
                limit: 1000
            }
        );
        assert_eq!(
            refused(cache.hold(&id(1), &[1; 32], 1, &[0; 10], 1)),
            CacheRefusal::Expired
        );
        for n in 0..2 {
            cache.hold(&id(10 + n), &[1; 32], 100, &[n; 1000], 1).unwrap();
        }
        assert_eq!(
            refused(cache.hold(&id(12), &[1; 32], 100, &[0; 600], 1)),
            CacheRefusal::MailboxFull
        );
        for n in 0..2 {
            cache.hold(&id(20 + n), &[2; 32], 100, &[n; 1000], 1).unwrap();
        }
        assert_eq!(
            refused(cache.hold(&id(30), &[3; 32], 100, &[0; 10], 1)),
            CacheRefusal::CacheFull
        );
        assert_eq!(
            cache.usage().unwrap(),
            (4, 4000),
            "everything held before is still there"
        );
    }

    #[test]
    fn an_acknowledged_envelope_is_gone_and_a_late_replica_cannot_bring_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = CacheDb::open(&dir.path().join("cache.db"), LIMITS).unwrap();
        cache.hold(&id(1), &[1; 32], 100, &[1; 10], 1).unwrap();
        assert_eq!(cache.held(&id(1)).unwrap(), Some(([1; 32], 100)));
        assert!(cache.acknowledge(&id(1), &[1; 32], 100).unwrap());
        assert!(cache.fetch(&[1; 32], 0, 2, 1 << 20).unwrap().0.is_empty());
        assert_eq!(cache.usage().unwrap(), (0, 0));
        assert!(matches!(
            cache.hold(&id(1), &[1; 32], 100, &[1; 10], 3),
            Err(StoreError::Refused(CacheRefusal::Acknowledged))
        ));
        // Once the envelope would have expired, its tombstone goes too.
        cache.sweep(100).unwrap();
        assert!(matches!(
            cache.hold(&id(1), &[1; 32], 100, &[1; 10], 101),
            Err(StoreError::Refused(CacheRefusal::Expired))
        ));
    }

    #[test]
    fn an_acknowledgement_for_another_mailbox_deletes_nothing_and_blocks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = CacheDb::open(&dir.path().join("cache.db"), LIMITS).unwrap();
        cache.hold(&id(1), &[1; 32], 100, &[1; 10], 1).unwrap();
        assert!(!cache.acknowledge(&id(1), &[9; 32], 100).unwrap());
        assert_eq!(cache.usage().unwrap(), (1, 10));
        assert!(!cache.acknowledge(&id(2), &[9; 32], 100).unwrap());
        assert!(matches!(
            cache.hold(&id(2), &[1; 32], 100, &[2; 10], 1),
            Ok(Held::New(_))
        ));
        // Mailbox 9 holds nothing here, so its acknowledgements left no tombstones.
        assert_eq!(cache.tombstones, 0);
    }

    #[test]
    fn a_replica_acknowledged_before_it_arrives_is_refused_when_it_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = CacheDb::open(&dir.path().join("cache.db"), LIMITS).unwrap();
        cache.hold(&id(1), &[1; 32], 100, &[1; 10], 1).unwrap();
        // Envelope 2 of the same mailbox is acknowledged (passed on by another holder)
        // before its copy reaches this node, twice: one tombstone.
        assert!(!cache.acknowledge(&id(2), &[1; 32], 100).unwrap());
        assert!(!cache.acknowledge(&id(2), &[1; 32], 100).unwrap());
        assert_eq!(cache.tombstones, 1);
        assert!(matches!(
            cache.hold(&id(2), &[1; 32], 100, &[2; 10], 1),
            Err(StoreError::Refused(CacheRefusal::Acknowledged))
        ));
    }

    #[test]
    fn the_sweep_drops_what_expired_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.db");
        let mut cache = CacheDb::open(&path, LIMITS).unwrap();
        cache.hold(&id(1), &[1; 32], 50, &[1; 10], 1).unwrap();
        cache.hold(&id(2), &[1; 32], 150, &[2; 10], 1).unwrap();
        assert_eq!(
            bytes_of(cache.fetch(&[1; 32], 0, 60, 1 << 20).unwrap().0),
            vec![vec![2; 10]],
            "expired ones are not handed out"
        );
        assert_eq!(cache.sweep(60).unwrap(), 1);
        assert_eq!(cache.usage().unwrap(), (1, 10));
        drop(cache);
        assert_eq!(CacheDb::open(&path, LIMITS).unwrap().usage().unwrap(), (1, 10));
    }
}
