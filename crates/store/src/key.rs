//! The database key and where it lives.
//!
//! The key is 32 bytes handed to SQLCipher as a raw key (`x'…'`), so SQLCipher's own
//! PBKDF2 is skipped: a random key needs no stretching, and a passphrase has already
//! been stretched with Argon2id here.

use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, Version};
use keyring_core::{CredentialStore, Entry};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{Result, StoreError};

/// The keyring service name every Cairn profile key is stored under.
pub const KEYRING_SERVICE: &str = "cairn";

/// A 256-bit SQLCipher key. Zeroed when dropped; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DbKey(Zeroizing<[u8; 32]>);

impl DbKey {
    /// A fresh random key from the OS random number generator.
    pub fn random() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(key.as_mut());
        Self(key)
    }

    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Derives the key from a passphrase with Argon2id.
    pub fn from_passphrase(passphrase: &str, params: &KdfParams) -> Result<Self> {
        let argon = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
                .map_err(|e| StoreError::Kdf(e.to_string()))?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.as_bytes(), &params.salt, key.as_mut())
            .map_err(|e| StoreError::Kdf(e.to_string()))?;
        Ok(Self(key))
    }

    /// The `PRAGMA key` value: a blob literal that SQLCipher uses as the raw key.
    pub(crate) fn pragma_value(&self) -> Zeroizing<String> {
        let mut hex = Zeroizing::new(String::with_capacity(67));
        hex.push_str("x'");
        for byte in self.0.iter() {
            hex.push_str(&format!("{byte:02x}"));
        }
        hex.push('\'');
        hex
    }
}

impl std::fmt::Debug for DbKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbKey(..)")
    }
}

/// Argon2id parameters and salt for the passphrase path, stored beside the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub m_cost_kib: u32,
    /// Number of passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
    /// Random per-profile salt.
    pub salt: Vec<u8>,
}

impl KdfParams {
    /// Parameters for a new profile: 64 MiB, 3 passes, 1 lane (above OWASP's
    /// Argon2id minimum; about a quarter of a second on a laptop core), fresh salt.
    pub fn recommended() -> Self {
        let mut salt = vec![0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        Self {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
            salt,
        }
    }

    /// Refuses parameters from disk that are too weak to be ours or so large that
    /// deriving would exhaust the machine.
    pub(crate) fn check(&self) -> Result<()> {
        let sane = (8 * 1024..=4 * 1024 * 1024).contains(&self.m_cost_kib)
            && (1..=64).contains(&self.t_cost)
            && (1..=16).contains(&self.p_cost)
            && (16..=64).contains(&self.salt.len());
        if sane {
            Ok(())
        } else {
            Err(StoreError::Corrupt("key derivation parameters are out of range".into()))
        }
    }
}

/// A credential store that holds profile keys: the OS keyring in the app, or any
/// `keyring-core` store (e.g. its mock) in unit tests.
#[derive(Clone)]
pub struct KeyVault {
    store: Arc<CredentialStore>,
}

impl KeyVault {
    /// The platform keyring: Secret Service on Linux, Keychain on macOS,
    /// Credential Manager on Windows. Fails if it does not answer.
    pub fn os() -> Result<Self> {
        keyring::Entry::store_status()
            .as_ref()
            .map_err(|e| StoreError::KeyringUnavailable(e.to_string()))?;
        let store = keyring_core::get_default_store()
            .ok_or_else(|| StoreError::KeyringUnavailable("no default credential store".into()))?;
        let vault = Self { store };
        vault.probe()?;
        Ok(vault)
    }

    /// A vault over a given credential store.
    pub fn with_store(store: Arc<CredentialStore>) -> Self {
        Self { store }
    }

    /// Asks the store for an entry that does not exist: a store that answers
    /// "no such entry" is reachable and unlocked.
    fn probe(&self) -> Result<()> {
        match self.entry("probe")?.get_secret() {
            Ok(_) | Err(keyring_core::Error::NoEntry) => Ok(()),
            Err(e) => Err(StoreError::KeyringUnavailable(e.to_string())),
        }
    }

    fn entry(&self, user: &str) -> Result<Entry> {
        Entry::new_in_store(&self.store, KEYRING_SERVICE, user)
            .map_err(|e| StoreError::KeyringUnavailable(e.to_string()))
    }

    /// Stores `key` under the name `user`, replacing any earlier key of that name.
    pub fn put(&self, user: &str, key: &DbKey) -> Result<()> {
        self.entry(user)?
            .set_secret(key.0.as_ref())
            .map_err(|e| StoreError::KeyringUnavailable(e.to_string()))
    }

    /// Fetches the key stored under `user`.
    pub fn get(&self, user: &str) -> Result<DbKey> {
        let secret = match self.entry(user)?.get_secret() {
            Ok(secret) => Zeroizing::new(secret),
            Err(keyring_core::Error::NoEntry) => return Err(StoreError::KeyMissing),
            Err(e) => return Err(StoreError::KeyringUnavailable(e.to_string())),
        };
        let bytes: [u8; 32] = secret
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt("the keyring entry is not a 32-byte key".into()))?;
        Ok(DbKey::from_bytes(bytes))
    }

    /// Removes the key stored under `user`, if any.
    pub fn delete(&self, user: &str) -> Result<()> {
        match self.entry(user)?.delete_credential() {
            Ok(()) | Err(keyring_core::Error::NoEntry) => Ok(()),
            Err(e) => Err(StoreError::KeyringUnavailable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast_params() -> KdfParams {
        KdfParams {
            m_cost_kib: 8 * 1024,
            t_cost: 1,
            p_cost: 1,
            salt: vec![9; 16],
        }
    }

    #[test]
    fn the_same_passphrase_and_salt_give_the_same_key() {
        let a = DbKey::from_passphrase("correct horse", &fast_params()).unwrap();
        let b = DbKey::from_passphrase("correct horse", &fast_params()).unwrap();
        let c = DbKey::from_passphrase("wrong horse", &fast_params()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut other_salt = fast_params();
        other_salt.salt = vec![8; 16];
        assert_ne!(a, DbKey::from_passphrase("correct horse", &other_salt).unwrap());
    }

    #[test]
    fn recommended_params_pass_the_sanity_check_and_absurd_ones_do_not() {
        KdfParams::recommended().check().unwrap();
        let mut huge = KdfParams::recommended();
        huge.m_cost_kib = u32::MAX;
        assert!(matches!(huge.check(), Err(StoreError::Corrupt(_))));
        let mut weak = KdfParams::recommended();
        weak.salt.clear();
        assert!(weak.check().is_err());
    }

    #[test]
    fn the_key_is_never_printed() {
        assert_eq!(format!("{:?}", DbKey::random()), "DbKey(..)");
        assert_eq!(DbKey::random().pragma_value().len(), 67);
    }

    #[test]
    fn a_vault_over_the_mock_store_round_trips_keys() {
        let vault = KeyVault::with_store(keyring_core::mock::Store::new().unwrap());
        let key = DbKey::random();
        assert!(matches!(vault.get("p"), Err(StoreError::KeyMissing)));
        vault.put("p", &key).unwrap();
        assert_eq!(vault.get("p").unwrap(), key);
        vault.delete("p").unwrap();
        assert!(matches!(vault.get("p"), Err(StoreError::KeyMissing)));
    }
}
