//! The crypto crate's [`SignalStore`] over the profile: this device's keys from
//! [`crate::OwnAccount`], pinned identities from [`crate::Contacts`], and the Signal
//! sessions, which this module owns.

use cairn_proto::{AccountId, DeviceId};
use rusqlite::{params, OptionalExtension};

use cairn_crypto::{IdentityKeyPair, SignalStore, StoreFailure, StoreResult};

use crate::{ProfileDb, Result};

tables! {
    /// The Signal session table (`sessions`).
    Sessions
}

impl Sessions<'_> {
    /// The session with one device of an account.
    pub fn get(&self, account_id: &AccountId, device_id: DeviceId) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT record FROM sessions WHERE account_id = ?1 AND device_id = ?2",
                params![account_id, device_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Stores the session with one device of an account.
    pub fn save(&self, account_id: &AccountId, device_id: DeviceId, record: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO sessions (account_id, device_id, record) VALUES (?1, ?2, ?3)",
            params![account_id, device_id, record],
        )?;
        Ok(())
    }

    /// Drops every session with an account (its identity key changed: they were made
    /// under the old one).
    pub fn forget_account(&self, account_id: &AccountId) -> Result<()> {
        self.conn
            .execute("DELETE FROM sessions WHERE account_id = ?1", [account_id])?;
        Ok(())
    }
}

fn failure(e: impl std::fmt::Display) -> StoreFailure {
    StoreFailure(e.to_string())
}

impl SignalStore for ProfileDb {
    fn account_id(&self) -> StoreResult<AccountId> {
        Ok(self
            .own()
            .account()
            .map_err(failure)?
            .ok_or_else(|| failure("no account"))?
            .account_id)
    }

    fn identity_key_pair(&self) -> StoreResult<IdentityKeyPair> {
        self.own().identity_key_pair().map_err(failure)
    }

    fn registration_id(&self) -> StoreResult<u32> {
        Ok(self
            .own()
            .device()
            .map_err(failure)?
            .ok_or_else(|| failure("no device keys"))?
            .registration_id)
    }

    fn peer_identity(&self, account_id: &AccountId) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .contacts()
            .pinned_identity(account_id)
            .map_err(failure)?
            .map(|p| p.identity_key))
    }

    fn save_peer_identity(&self, account_id: &AccountId, identity_key: &[u8]) -> StoreResult<()> {
        // Never pin a key for our own account id: our devices share our key.
        if self.account_id()? == *account_id {
            return Err(failure("refusing to pin a key for our own account"));
        }
        self.contacts().pin_identity(account_id, identity_key).map_err(failure)
    }

    fn session(&self, account_id: &AccountId, device_id: DeviceId) -> StoreResult<Option<Vec<u8>>> {
        self.sessions().get(account_id, device_id).map_err(failure)
    }

    fn save_session(&self, account_id: &AccountId, device_id: DeviceId, record: &[u8]) -> StoreResult<()> {
        self.sessions().save(account_id, device_id, record).map_err(failure)
    }

    fn signed_prekey(&self, id: u32) -> StoreResult<Option<Vec<u8>>> {
        self.own().signed_prekey(id).map_err(failure)
    }

    fn kyber_prekey(&self, id: u32) -> StoreResult<Option<Vec<u8>>> {
        self.own().kyber_prekey(id).map_err(failure)
    }

    fn record_kyber_prekey_use(&self, kyber_id: u32, signed_id: u32, base_key: &[u8]) -> StoreResult<bool> {
        self.own()
            .record_kyber_prekey_use(kyber_id, signed_id, base_key)
            .map_err(failure)
    }
}
