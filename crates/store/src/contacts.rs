//! Contacts: other accounts' pinned identity keys (with a changed key waiting for
//! the person, and whether they verified it), their names and signed device lists,
//! their devices' prekey bundles, and their removed devices.

use cairn_proto::{AccountId, DeviceId};
use rusqlite::{params, OptionalExtension};

use crate::Result;

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
    pub account_id: AccountId,
    /// Their chosen display name.
    pub display_name: String,
    /// Their signed device list, encoded.
    pub device_list: Vec<u8>,
    /// That list's version.
    pub device_list_version: u64,
    /// When the contact was added, Unix milliseconds.
    pub added_at: i64,
}

tables! {
    /// The tables of other accounts (`identities`, `contacts`, `bundles`, `retired_devices`).
    Contacts
}

impl Contacts<'_> {
    /// The identity pinned for `account_id`.
    pub fn pinned_identity(&self, account_id: &AccountId) -> Result<Option<PinnedIdentity>> {
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
    pub fn pin_identity(&self, account_id: &AccountId, key: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO identities (account_id, identity_key) VALUES (?1, ?2)",
            params![account_id, key],
        )?;
        Ok(())
    }

    /// Records a changed key that waits for the person's acceptance. A pending key
    /// is never replaced by yet another one: false if a different key is pending.
    pub fn set_pending_identity(&self, account_id: &AccountId, key: &[u8]) -> Result<bool> {
        let changed = self.conn.execute(
            "UPDATE identities SET pending_key = ?2
             WHERE account_id = ?1 AND identity_key != ?2 AND (pending_key IS NULL OR pending_key = ?2)",
            params![account_id, key],
        )?;
        Ok(changed == 1)
    }

    /// The person refuses a changed key: it is forgotten (what it sent is the held
    /// envelopes' to drop).
    pub fn reject_pending_identity(&self, account_id: &AccountId) -> Result<bool> {
        let changed = self.conn.execute(
            "UPDATE identities SET pending_key = NULL WHERE account_id = ?1 AND pending_key IS NOT NULL",
            [account_id],
        )?;
        Ok(changed == 1)
    }

    /// The person accepted the changed key: pin it, drop verification and the
    /// bundles and device list version had under the old key (the sessions made with
    /// it are [`crate::Sessions`]'). Returns false if nothing was pending.
    pub fn accept_pending_identity(&self, account_id: &AccountId) -> Result<bool> {
        let changed = self.conn.execute(
            "UPDATE identities SET identity_key = pending_key, pending_key = NULL, verified = 0
             WHERE account_id = ?1 AND pending_key IS NOT NULL",
            [account_id],
        )?;
        if changed == 1 {
            self.conn
                .execute("DELETE FROM bundles WHERE account_id = ?1", [account_id])?;
            self.conn.execute(
                "UPDATE contacts SET device_list_version = 0 WHERE account_id = ?1",
                [account_id],
            )?;
        }
        Ok(changed == 1)
    }

    /// Marks the pinned identity verified (or not).
    pub fn set_verified(&self, account_id: &AccountId, verified: bool) -> Result<()> {
        self.conn.execute(
            "UPDATE identities SET verified = ?2 WHERE account_id = ?1",
            params![account_id, verified],
        )?;
        Ok(())
    }

    /// Adds or updates a contact.
    pub fn save(&self, contact: &ContactRecord) -> Result<()> {
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
    pub fn get(&self, account_id: &AccountId) -> Result<Option<ContactRecord>> {
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
    pub fn all(&self) -> Result<Vec<ContactRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT account_id, display_name, device_list, device_list_version, added_at
             FROM contacts ORDER BY display_name COLLATE NOCASE",
        )?;
        let rows = stmt.query_map([], contact_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Stores the prekey bundle of an account's device (a contact's or our own other).
    pub fn save_bundle(&self, account_id: &AccountId, device_id: DeviceId, bundle: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO bundles (account_id, device_id, bundle) VALUES (?1, ?2, ?3)",
            params![account_id, device_id, bundle],
        )?;
        Ok(())
    }

    /// Forgets what this profile keeps for the devices of an account that its device
    /// list no longer names: their sessions, bundles and key packages. Returns how
    /// many rows went.
    pub fn forget_unlisted_devices(&self, account_id: &AccountId, listed: &[DeviceId]) -> Result<usize> {
        // Device ids are small integers, so the list can be written into the statement.
        let listed = listed.iter().map(DeviceId::to_string).collect::<Vec<_>>().join(",");
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
    pub fn retire_devices(&self, account_id: &AccountId, device_ids: &[DeviceId]) -> Result<()> {
        for device_id in device_ids {
            self.conn.execute(
                "INSERT OR IGNORE INTO retired_devices (account_id, device_id) VALUES (?1, ?2)",
                params![account_id, device_id],
            )?;
        }
        Ok(())
    }

    /// Takes the retired mark off devices an account's list names (again).
    pub fn unretire_devices(&self, account_id: &AccountId, device_ids: &[DeviceId]) -> Result<()> {
        for device_id in device_ids {
            self.conn.execute(
                "DELETE FROM retired_devices WHERE account_id = ?1 AND device_id = ?2",
                params![account_id, device_id],
            )?;
        }
        Ok(())
    }

    /// The retired devices of an account.
    pub fn retired_devices(&self, account_id: &AccountId) -> Result<Vec<DeviceId>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT device_id FROM retired_devices WHERE account_id = ?1 ORDER BY device_id")?;
        let rows = stmt.query_map([account_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The stored bundles of an account's devices.
    pub fn bundles(&self, account_id: &AccountId) -> Result<Vec<(DeviceId, Vec<u8>)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT device_id, bundle FROM bundles WHERE account_id = ?1 ORDER BY device_id")?;
        let rows = stmt.query_map([account_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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
