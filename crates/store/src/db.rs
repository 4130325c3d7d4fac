//! The SQLCipher profile database: opening it with its key, running migrations, and
//! the views of the tables each part of a profile owns (one connection, so one
//! transaction can span them).
//!
//! Opening sets the key before any other statement and then reads the schema; with a
//! wrong key that read fails and nothing has been written, so the file is untouched.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::{
    migrations::migrations, Contacts, DbKey, Groups, HeldEnvelopes, Messages, Outbox, OwnAccount, PeerAddresses,
    Result, Sessions, Settings, StoreError,
};

/// An open profile database.
pub struct ProfileDb {
    conn: Connection,
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

    /// This account and device: identity, prekeys, own device list.
    pub fn own(&self) -> OwnAccount<'_> {
        OwnAccount::new(&self.conn)
    }

    /// Other accounts: pinned identities, contacts, bundles, removed devices.
    pub fn contacts(&self) -> Contacts<'_> {
        Contacts::new(&self.conn)
    }

    /// The Signal sessions with other devices.
    pub fn sessions(&self) -> Sessions<'_> {
        Sessions::new(&self.conn)
    }

    /// Conversations and message history.
    pub fn messages(&self) -> Messages<'_> {
        Messages::new(&self.conn)
    }

    /// The profile's settings.
    pub fn settings(&self) -> Settings<'_> {
        Settings::new(&self.conn)
    }

    /// What this device has to send, and what it sent lately.
    pub fn outbox(&self) -> Outbox<'_> {
        Outbox::new(&self.conn)
    }

    /// Envelopes held back on receipt.
    pub fn held(&self) -> HeldEnvelopes<'_> {
        HeldEnvelopes::new(&self.conn)
    }

    /// Where other devices were last reachable.
    pub fn peers(&self) -> PeerAddresses<'_> {
        PeerAddresses::new(&self.conn)
    }

    /// MLS groups and what waits for them.
    pub fn groups(&self) -> Groups<'_> {
        Groups::new(&self.conn)
    }

    /// Writes the WAL back into the main file (used before the profile is closed).
    pub fn checkpoint(&self) -> Result<()> {
        self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}
