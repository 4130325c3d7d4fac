//! The peer cache's own database: sealed envelopes this node holds for other people's
//! devices, within a byte quota per mailbox and for the whole node, until they are
//! acknowledged or expire; and tombstones for acknowledged ones, kept until the
//! envelope would have expired, so a late replica cannot bring one back.
//!
//! Owns storage and limits only. Does not own: checking envelopes, proofs of work or
//! acknowledgement signatures (the caller does that before asking), nor placement and
//! hand-over. Envelopes are sealed to their recipient, so this file holds no plaintext;
//! it is a plain SQLite file, separate from the profile database, with its own quota.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};

use crate::{Result, StoreError};

const V1_CACHE: &str = "
CREATE TABLE envelopes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    mailbox BLOB NOT NULL,
    expires INTEGER NOT NULL,
    bytes BLOB NOT NULL
) STRICT;
CREATE INDEX envelopes_by_mailbox ON envelopes(mailbox, seq);
CREATE INDEX envelopes_by_expiry ON envelopes(expires);
CREATE TABLE tombstones (
    id BLOB PRIMARY KEY,
    expires INTEGER NOT NULL
) STRICT;
";

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

/// Why a cache refused to hold an envelope. Nothing already held was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The envelope is over the size limit.
    #[error("an envelope of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Its mailbox already holds as much as one mailbox may.
    #[error("this mailbox is full")]
    MailboxFull,
    /// The node holds as much as it may.
    #[error("this cache is full")]
    CacheFull,
    /// It has already expired.
    #[error("the envelope has expired")]
    Expired,
    /// Its recipient already acknowledged it.
    #[error("the envelope was already acknowledged")]
    Acknowledged,
}

/// Whether an envelope was new to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Stored now.
    New,
    /// Already held (a retry or another holder's hand-over): nothing changed.
    Already,
}

/// The peer cache database.
pub struct CacheDb {
    conn: Connection,
    limits: CacheLimits,
}

impl CacheDb {
    /// Opens (creating if needed) the cache file at `path` and brings its schema up
    /// to date.
    pub fn open(path: &Path, limits: CacheLimits) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        Migrations::new(vec![M::up(V1_CACHE)])
            .to_latest(&mut conn)
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(Self { conn, limits })
    }

    /// The limits in force.
    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    /// Holds an envelope for `mailbox` until `expires` (unix seconds), within the
    /// limits, or says why not ([`StoreError::Refused`]). Holding one twice is a no-op.
    pub fn hold(&mut self, id: &[u8; 32], mailbox: &[u8; 32], expires: u64, bytes: &[u8], now: u64) -> Result<Held> {
        let refuse = |refusal| Err(StoreError::Refused(refusal));
        if bytes.len() > self.limits.max_envelope {
            return refuse(Refusal::TooLarge {
                size: bytes.len(),
                limit: self.limits.max_envelope,
            });
        }
        if expires <= now {
            return refuse(Refusal::Expired);
        }
        let tx = self.conn.transaction()?;
        let known = |sql: &str| tx.query_row(sql, [&id[..]], |_| Ok(())).optional();
        if known("SELECT 1 FROM tombstones WHERE id = ?1")?.is_some() {
            return refuse(Refusal::Acknowledged);
        }
        if known("SELECT 1 FROM envelopes WHERE id = ?1")?.is_some() {
            return Ok(Held::Already);
        }
        let size = bytes.len() as u64;
        let in_mailbox: u64 = tx.query_row(
            "SELECT COALESCE(SUM(length(bytes)), 0) FROM envelopes WHERE mailbox = ?1",
            [&mailbox[..]],
            |row| row.get(0),
        )?;
        if in_mailbox + size > self.limits.per_mailbox {
            return refuse(Refusal::MailboxFull);
        }
        let in_all: u64 = tx.query_row("SELECT COALESCE(SUM(length(bytes)), 0) FROM envelopes", [], |row| {
            row.get(0)
        })?;
        if in_all + size > self.limits.total {
            return refuse(Refusal::CacheFull);
        }
        tx.execute(
            "INSERT INTO envelopes (id, mailbox, expires, bytes) VALUES (?1, ?2, ?3, ?4)",
            params![&id[..], &mailbox[..], expires as i64, bytes],
        )?;
        tx.commit()?;
        Ok(Held::New)
    }

    /// The envelopes held for `mailbox` that have not expired, oldest first, at most
    /// `limit` of them.
    pub fn fetch(&self, mailbox: &[u8; 32], now: u64, limit: usize) -> Result<Vec<Vec<u8>>> {
        let mut statement = self
            .conn
            .prepare("SELECT bytes FROM envelopes WHERE mailbox = ?1 AND expires > ?2 ORDER BY seq LIMIT ?3")?;
        let rows = statement.query_map(params![&mailbox[..], now as i64, limit as i64], |row| row.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The mailbox and expiry of a held envelope (to check an acknowledgement against).
    pub fn held(&self, id: &[u8; 32]) -> Result<Option<([u8; 32], u64)>> {
        let row: Option<(Vec<u8>, i64)> = self
            .conn
            .query_row(
                "SELECT mailbox, expires FROM envelopes WHERE id = ?1",
                [&id[..]],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        row.map(|(mailbox, expires)| {
            let mailbox = mailbox
                .try_into()
                .map_err(|_| StoreError::Corrupt("a cached envelope's mailbox is not 32 bytes".into()))?;
            Ok((mailbox, expires as u64))
        })
        .transpose()
    }

    /// Deletes an envelope its recipient acknowledged (the caller checked the
    /// signature) and keeps a tombstone until `expires`. Whether it was held.
    pub fn acknowledge(&mut self, id: &[u8; 32], expires: u64) -> Result<bool> {
        let tx = self.conn.transaction()?;
        let deleted = tx.execute("DELETE FROM envelopes WHERE id = ?1", [&id[..]])?;
        tx.execute(
            "INSERT INTO tombstones (id, expires) VALUES (?1, ?2)
             ON CONFLICT(id) DO UPDATE SET expires = MAX(expires, excluded.expires)",
            params![&id[..], expires as i64],
        )?;
        tx.commit()?;
        Ok(deleted > 0)
    }

    /// Drops expired envelopes and tombstones; how many envelopes went.
    pub fn sweep(&mut self, now: u64) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let gone = tx.execute("DELETE FROM envelopes WHERE expires <= ?1", [now as i64])?;
        tx.execute("DELETE FROM tombstones WHERE expires <= ?1", [now as i64])?;
        tx.commit()?;
        Ok(gone)
    }

    /// How many envelopes are held, and their bytes.
    pub fn usage(&self) -> Result<(u64, u64)> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(length(bytes)), 0) FROM envelopes",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?)
    }
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

    #[test]
    fn held_envelopes_come_back_in_order_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.db");
        let mut cache = CacheDb::open(&path, LIMITS).unwrap();
        for n in 1..=3 {
            assert_eq!(cache.hold(&id(n), &[7; 32], 100, &[n; 10], 1).unwrap(), Held::New);
        }
        assert_eq!(cache.hold(&id(2), &[7; 32], 100, &[2; 10], 1).unwrap(), Held::Already);
        drop(cache);
        let cache = CacheDb::open(&path, LIMITS).unwrap();
        assert_eq!(
            cache.fetch(&[7; 32], 2, 10).unwrap(),
            vec![vec![1; 10], vec![2; 10], vec![3; 10]]
        );
        assert!(cache.fetch(&[8; 32], 2, 10).unwrap().is_empty());
        assert_eq!(cache.usage().unwrap(), (3, 30));
    }

    #[test]
    fn over_a_limit_an_envelope_is_refused_and_nothing_held_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = CacheDb::open(&dir.path().join("cache.db"), LIMITS).unwrap();
        let refused = |r: Result<Held>| match r {
            Err(StoreError::Refused(refusal)) => refusal,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(matches!(
            refused(cache.hold(&id(1), &[1; 32], 100, &[0; 1001], 1)),
            Refusal::TooLarge {
                size: 1001,
                limit: 1000
            }
        ));
        assert_eq!(refused(cache.hold(&id(1), &[1; 32], 1, &[0; 10], 1)), Refusal::Expired);
        for n in 0..2 {
            cache.hold(&id(10 + n), &[1; 32], 100, &[n; 1000], 1).unwrap();
        }
        assert_eq!(
            refused(cache.hold(&id(12), &[1; 32], 100, &[0; 600], 1)),
            Refusal::MailboxFull
        );
        for n in 0..2 {
            cache.hold(&id(20 + n), &[2; 32], 100, &[n; 1000], 1).unwrap();
        }
        assert_eq!(
            refused(cache.hold(&id(30), &[3; 32], 100, &[0; 10], 1)),
            Refusal::CacheFull
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
        assert!(cache.acknowledge(&id(1), 100).unwrap());
        assert!(cache.fetch(&[1; 32], 2, 10).unwrap().is_empty());
        assert!(matches!(
            cache.hold(&id(1), &[1; 32], 100, &[1; 10], 3),
            Err(StoreError::Refused(Refusal::Acknowledged))
        ));
        // Once the envelope would have expired, its tombstone goes too.
        cache.sweep(100).unwrap();
        assert!(matches!(
            cache.hold(&id(1), &[1; 32], 100, &[1; 10], 101),
            Err(StoreError::Refused(Refusal::Expired))
        ));
    }

    #[test]
    fn the_sweep_drops_what_expired_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = CacheDb::open(&dir.path().join("cache.db"), LIMITS).unwrap();
        cache.hold(&id(1), &[1; 32], 50, &[1; 10], 1).unwrap();
        cache.hold(&id(2), &[1; 32], 150, &[2; 10], 1).unwrap();
        assert_eq!(
            cache.fetch(&[1; 32], 60, 10).unwrap(),
            vec![vec![2; 10]],
            "expired ones are not handed out"
        );
        assert_eq!(cache.sweep(60).unwrap(), 1);
        assert_eq!(cache.usage().unwrap(), (1, 10));
    }
}
