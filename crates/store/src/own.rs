//! This account and this device as the profile keeps them: the account record (its
//! identity key pair included), this device's keys, its signed and Kyber prekeys, and
//! the account's signed device list as last adopted.

use cairn_proto::{AccountId, DeviceId};
use rusqlite::{params, OptionalExtension};

use cairn_crypto::IdentityKeyPair;

use crate::{Result, StoreError};

/// The account this profile belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// The account id shown to people.
    pub account_id: AccountId,
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
    pub device_id: DeviceId,
    /// The Signal registration id.
    pub registration_id: u32,
    /// The transport key's secret seed.
    pub transport_seed: [u8; 32],
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
}

tables! {
    /// The tables of this account and device (`account`, `device`, `signed_prekeys`,
    /// `kyber_prekeys`, `kyber_prekey_uses`, `own_device_list`).
    OwnAccount
}

impl OwnAccount<'_> {
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
                        r.get::<_, DeviceId>(0)?,
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
    pub fn save(&self, account: &AccountRecord, device: &DeviceRecord) -> Result<()> {
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

    /// Stores a Kyber prekey record.
    pub fn save_kyber_prekey(&self, id: u32, record: &[u8], created_at: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO kyber_prekeys (id, record, created_at) VALUES (?1, ?2, ?3)",
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

    /// This account's signed device list, as last adopted.
    pub fn device_list(&self) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row("SELECT signed FROM own_device_list WHERE id = 1", [], |r| r.get(0))
            .optional()?)
    }

    /// Adopts a new signed device list for this account.
    pub fn save_device_list(&self, signed: &[u8], version: u64) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO own_device_list (id, signed, version) VALUES (1, ?1, ?2)",
            params![signed, version as i64],
        )?;
        Ok(())
    }

    /// A signed prekey's record by id.
    pub fn signed_prekey(&self, id: u32) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row("SELECT record FROM signed_prekeys WHERE id = ?1", [id], |r| r.get(0))
            .optional()?)
    }

    /// A Kyber prekey's record by id.
    pub fn kyber_prekey(&self, id: u32) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row("SELECT record FROM kyber_prekeys WHERE id = ?1", [id], |r| r.get(0))
            .optional()?)
    }

    /// Records that a Kyber prekey was used with this base key; false if this
    /// exact use was seen before (a replayed first message).
    pub fn record_kyber_prekey_use(&self, kyber_id: u32, signed_id: u32, base_key: &[u8]) -> Result<bool> {
        Ok(self.conn.execute(
            "INSERT OR IGNORE INTO kyber_prekey_uses (kyber_id, signed_id, base_key) VALUES (?1, ?2, ?3)",
            params![kyber_id, signed_id, base_key],
        )? == 1)
    }

    /// The account's identity key pair, decoded.
    pub(crate) fn identity_key_pair(&self) -> Result<IdentityKeyPair> {
        let account = self.account()?.ok_or_else(|| StoreError::NotFound("account".into()))?;
        IdentityKeyPair::try_from(&account.identity_key[..])
            .map_err(|e| StoreError::Corrupt(format!("stored identity key: {e}")))
    }
}
