//! The Signal side of the profile database: pinned identities, sessions, this
//! device's prekeys, contacts with their device lists and bundles, and this account's
//! own device list — and the crypto crate's [`SignalStore`] over them.

use rusqlite::{params, OptionalExtension};

use cairn_crypto::{IdentityKeyPair, SignalStore, StoreFailure, StoreResult};

use crate::{ProfileDb, Result, StoreError};

/// What is pinned about another account's identity key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedIdentity {
    /// The key messages are accepted from and encrypted to.
    pub identity_key: Vec<u8>,
    /// A different key seen since, waiting for the person to accept it.
    pub pending_key: Option<Vec<u8>>,
    /// Whether the person compared safety numbers and marked the contact verified.
    pub verified: bool,
}

/// A contact as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRecord {
    /// Their account id.
    pub account_id: String,
    /// Their chosen display name.
    pub display_name: String,
    /// Their signed device list, encoded.
    pub device_list: Vec<u8>,
    /// That list's version.
    pub device_list_version: u64,
    /// When the contact was added, Unix milliseconds.
    pub added_at: i64,
}

impl ProfileDb {
    /// The identity pinned for `account_id`.
    pub fn pinned_identity(&self, account_id: &str) -> Result<Option<PinnedIdentity>> {
        Ok(self
            .conn
            .query_row(
                "SELECT identity_key, pending_key, verified FROM identities WHERE account_id = ?1",
                [account_id],
                |r| {
                    Ok(PinnedIdentity {
                        identity_key: r.get(0)?,
                        pending_key: r.get(1)?,
                        verified: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Pins `key` for an account seen for the first time (no-op if one is pinned).
    pub fn pin_identity(&self, account_id: &str, key: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO identities (account_id, identity_key) VALUES (?1, ?2)",
            params![account_id, key],
        )?;
        Ok(())
    }

    /// Records a changed key that waits for the person's acceptance. A pending key
    /// is never replaced by yet another one: false if a different key is pending.
    pub fn set_pending_identity(&self, account_id: &str, key: &[u8]) -> Result<bool> {
        let changed = self.conn.execute(
            "UPDATE identities SET pending_key = ?2
             WHERE account_id = ?1 AND identity_key != ?2 AND (pending_key IS NULL OR pending_key = ?2)",
            params![account_id, key],
        )?;
        Ok(changed == 1)
    }

    /// The person refuses a changed key: it is forgotten with what it sent.
    pub fn reject_pending_identity(&self, account_id: &str) -> Result<bool> {
        let changed = self.conn.execute(
            "UPDATE identities SET pending_key = NULL WHERE account_id = ?1 AND pending_key IS NOT NULL",
            [account_id],
        )?;
        self.conn
            .execute("DELETE FROM held_envelopes WHERE sender = ?1", [account_id])?;
        Ok(changed == 1)
    }

    /// The person accepted the changed key: pin it, drop verification and the
    /// sessions made with the old key. Returns false if nothing was pending.
    pub fn accept_pending_identity(&mut self, account_id: &str) -> Result<bool> {
        let tx = self.conn.transaction()?;
        let changed = tx.execute(
            "UPDATE identities SET identity_key = pending_key, pending_key = NULL, verified = 0
             WHERE account_id = ?1 AND pending_key IS NOT NULL",
            [account_id],
        )?;
        if changed == 1 {
            // Sessions, bundles and device lists were all made under the old key.
            tx.execute("DELETE FROM sessions WHERE account_id = ?1", [account_id])?;
            tx.execute("DELETE FROM bundles WHERE account_id = ?1", [account_id])?;
            tx.execute(
                "UPDATE contacts SET device_list_version = 0 WHERE account_id = ?1",
                [account_id],
            )?;
        }
        tx.commit()?;
        Ok(changed == 1)
    }

    /// Marks the pinned identity verified (or not).
    pub fn set_verified(&self, account_id: &str, verified: bool) -> Result<()> {
        self.conn.execute(
            "UPDATE identities SET verified = ?2 WHERE account_id = ?1",
            params![account_id, verified],
        )?;
        Ok(())
    }

    /// Adds or updates a contact.
    pub fn save_contact(&self, contact: &ContactRecord) -> Result<()> {
        self.conn.execute(
            "INSERT INTO contacts (account_id, display_name, device_list, device_list_version, added_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (account_id) DO UPDATE SET display_name = excluded.display_name,
                 device_list = excluded.device_list, device_list_version = excluded.device_list_version",
            params![
                contact.account_id,
                contact.display_name,
                contact.device_list,
                contact.device_list_version as i64,
                contact.added_at
            ],
        )?;
        Ok(())
    }

    /// A contact by account id.
    pub fn contact(&self, account_id: &str) -> Result<Option<ContactRecord>> {
        Ok(self
            .conn
            .query_row(
                "SELECT account_id, display_name, device_list, device_list_version, added_at
                 FROM contacts WHERE account_id = ?1",
                [account_id],
                contact_from_row,
            )
            .optional()?)
    }

    /// All contacts, by name.
    pub fn contacts(&self) -> Result<Vec<ContactRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT account_id, display_name, device_list, device_list_version, added_at
             FROM contacts ORDER BY display_name COLLATE NOCASE",
        )?;
        let rows = stmt.query_map([], contact_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Stores the prekey bundle of an account's device (a contact's or our own other).
    pub fn save_bundle(&self, account_id: &str, device_id: u8, bundle: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO bundles (account_id, device_id, bundle) VALUES (?1, ?2, ?3)",
            params![account_id, device_id, bundle],
        )?;
        Ok(())
    }

    /// Forgets what this profile keeps for the devices of an account that its device
    /// list no longer names: their sessions, bundles and key packages. Returns how
    /// many rows went.
    pub fn forget_unlisted_devices(&self, account_id: &str, listed: &[u8]) -> Result<usize> {
        // Device ids are small integers, so the list can be written into the statement.
        let listed = listed.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
        let mut forgotten = 0;
        for table in ["sessions", "bundles", "key_packages"] {
            forgotten += self.conn.execute(
                &format!("DELETE FROM {table} WHERE account_id = ?1 AND device_id NOT IN ({listed})"),
                params![account_id],
            )?;
        }
        Ok(forgotten)
    }

    /// Marks devices of an account as retired: its device list dropped them.
    pub fn retire_devices(&self, account_id: &str, device_ids: &[u8]) -> Result<()> {
        for device_id in device_ids {
            self.conn.execute(
                "INSERT OR IGNORE INTO retired_devices (account_id, device_id) VALUES (?1, ?2)",
                params![account_id, device_id],
            )?;
        }
        Ok(())
    }

    /// Takes the retired mark off devices an account's list names (again).
    pub fn unretire_devices(&self, account_id: &str, device_ids: &[u8]) -> Result<()> {
        for device_id in device_ids {
            self.conn.execute(
                "DELETE FROM retired_devices WHERE account_id = ?1 AND device_id = ?2",
                params![account_id, device_id],
            )?;
        }
        Ok(())
    }

    /// The retired devices of an account.
    pub fn retired_devices(&self, account_id: &str) -> Result<Vec<u8>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT device_id FROM retired_devices WHERE account_id = ?1 ORDER BY device_id")?;
        let rows = stmt.query_map([account_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The stored bundles of an account's devices.
    pub fn bundles(&self, account_id: &str) -> Result<Vec<(u8, Vec<u8>)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT device_id, bundle FROM bundles WHERE account_id = ?1 ORDER BY device_id")?;
        let rows = stmt.query_map([account_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// This device's newest signed prekey, or `None` before the first.
    pub fn latest_signed_prekey(&self) -> Result<Option<(u32, Vec<u8>)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, record FROM signed_prekeys ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// This device's newest Kyber prekey.
    pub fn latest_kyber_prekey(&self) -> Result<Option<(u32, Vec<u8>)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, record FROM kyber_prekeys ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Stores a signed prekey record (older ones stay, for sessions still starting).
    pub fn save_signed_prekey(&self, id: u32, record: &[u8], created_at: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO signed_prekeys (id, record, created_at) VALUES (?1, ?2, ?3)",
            params![id, record, created_at],
        )?;
        Ok(())
    }

    /// Deletes signed prekeys created before `cutoff`, except `keep` (the current one).
    pub fn delete_signed_prekeys_before(&self, cutoff: i64, keep: u32) -> Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM signed_prekeys WHERE created_at < ?1 AND id != ?2",
            params![cutoff, keep],
        )?)
    }

    /// Deletes Kyber prekeys created before `cutoff`, except `keep`, with the record
    /// of their uses.
    pub fn delete_kyber_prekeys_before(&self, cutoff: i64, keep: u32) -> Result<usize> {
        self.conn.execute(
            "DELETE FROM kyber_prekey_uses WHERE kyber_id IN
                 (SELECT id FROM kyber_prekeys WHERE created_at < ?1 AND id != ?2)",
            params![cutoff, keep],
        )?;
        Ok(self.conn.execute(
            "DELETE FROM kyber_prekeys WHERE created_at < ?1 AND id != ?2",
            params![cutoff, keep],
        )?)
    }

    /// Stores a Kyber prekey record.
    pub fn save_kyber_prekey(&self, id: u32, record: &[u8], created_at: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO kyber_prekeys (id, record, created_at) VALUES (?1, ?2, ?3)",
            params![id, record, created_at],
        )?;
        Ok(())
    }

    /// This account's signed device list, as last adopted.
    pub fn own_device_list(&self) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row("SELECT signed FROM own_device_list WHERE id = 1", [], |r| r.get(0))
            .optional()?)
    }

    /// Adopts a new signed device list for this account.
    pub fn save_own_device_list(&self, signed: &[u8], version: u64) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO own_device_list (id, signed, version) VALUES (1, ?1, ?2)",
            params![signed, version as i64],
        )?;
        Ok(())
    }

    fn signal_identity(&self) -> Result<IdentityKeyPair> {
        let account = self.account()?.ok_or_else(|| StoreError::NotFound("account".into()))?;
        IdentityKeyPair::try_from(&account.identity_key[..])
            .map_err(|e| StoreError::Corrupt(format!("stored identity key: {e}")))
    }
}

fn contact_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ContactRecord> {
    Ok(ContactRecord {
        account_id: r.get(0)?,
        display_name: r.get(1)?,
        device_list: r.get(2)?,
        device_list_version: r.get::<_, i64>(3)? as u64,
        added_at: r.get(4)?,
    })
}

fn failure(e: impl std::fmt::Display) -> StoreFailure {
    StoreFailure(e.to_string())
}

impl SignalStore for ProfileDb {
    fn account_id(&self) -> StoreResult<String> {
        Ok(self
            .account()
            .map_err(failure)?
            .ok_or_else(|| failure("no account"))?
            .account_id)
    }

    fn identity_key_pair(&self) -> StoreResult<IdentityKeyPair> {
        self.signal_identity().map_err(failure)
    }

    fn registration_id(&self) -> StoreResult<u32> {
        Ok(self
            .device()
            .map_err(failure)?
            .ok_or_else(|| failure("no device keys"))?
            .registration_id)
    }

    fn peer_identity(&self, account_id: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .pinned_identity(account_id)
            .map_err(failure)?
            .map(|p| p.identity_key))
    }

    fn save_peer_identity(&self, account_id: &str, identity_key: &[u8]) -> StoreResult<()> {
        // Never pin a key for our own account id: our devices share our key.
        if self.account_id()? == account_id {
            return Err(failure("refusing to pin a key for our own account"));
        }
        self.pin_identity(account_id, identity_key).map_err(failure)
    }

    fn session(&self, account_id: &str, device_id: u8) -> StoreResult<Option<Vec<u8>>> {
        self.conn
            .query_row(
                "SELECT record FROM sessions WHERE account_id = ?1 AND device_id = ?2",
                params![account_id, device_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(failure)
    }

    fn save_session(&self, account_id: &str, device_id: u8, record: &[u8]) -> StoreResult<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO sessions (account_id, device_id, record) VALUES (?1, ?2, ?3)",
                params![account_id, device_id, record],
            )
            .map(drop)
            .map_err(failure)
    }

    fn signed_prekey(&self, id: u32) -> StoreResult<Option<Vec<u8>>> {
        self.conn
            .query_row("SELECT record FROM signed_prekeys WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(failure)
    }

    fn kyber_prekey(&self, id: u32) -> StoreResult<Option<Vec<u8>>> {
        self.conn
            .query_row("SELECT record FROM kyber_prekeys WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(failure)
    }

    fn record_kyber_prekey_use(&self, kyber_id: u32, signed_id: u32, base_key: &[u8]) -> StoreResult<bool> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO kyber_prekey_uses (kyber_id, signed_id, base_key) VALUES (?1, ?2, ?3)",
                params![kyber_id, signed_id, base_key],
            )
            .map(|n| n == 1)
            .map_err(failure)
    }
}
