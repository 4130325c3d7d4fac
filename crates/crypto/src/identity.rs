//! Account and device identities.
//!
//! The account identity key is a Signal [`IdentityKeyPair`]: it is what contacts pin,
//! what the safety number is computed over, and what certifies the account's devices.
//! Linked devices share it (as Signal's linked devices do), so linking a device does
//! not change the safety number. Each device also has keys of its own: a Signal
//! registration id and an ed25519 transport key whose public half becomes its
//! libp2p peer id.

use std::fmt;

use cairn_proto::{AccountId, DeviceId};
use ed25519_dalek::SigningKey;
use libsignal_protocol::{IdentityKey, IdentityKeyPair};
use rand::{Rng, RngCore};
use zeroize::Zeroizing;

use crate::CryptoError;

/// A fresh random account id.
pub fn new_account_id() -> AccountId {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    AccountId::from_random(bytes)
}

/// The account's long-term identity key pair.
#[derive(Clone)]
pub struct AccountIdentity {
    key_pair: IdentityKeyPair,
}

impl AccountIdentity {
    /// Creates a fresh identity from the OS random number generator.
    pub fn generate() -> Self {
        Self {
            key_pair: IdentityKeyPair::generate(&mut rand::rng()),
        }
    }

    /// Restores an identity from [`AccountIdentity::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let key_pair = IdentityKeyPair::try_from(bytes).map_err(|e| CryptoError::InvalidKey {
            what: "account identity",
            reason: e.to_string(),
        })?;
        Ok(Self { key_pair })
    }

    /// The serialised key pair, private half included: only for the encrypted store.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.key_pair.serialize().into_vec())
    }

    /// The public identity key, as contacts see it.
    pub fn public_key(&self) -> &IdentityKey {
        self.key_pair.identity_key()
    }

    /// The underlying Signal key pair, for the session code.
    pub fn key_pair(&self) -> &IdentityKeyPair {
        &self.key_pair
    }
}

impl fmt::Debug for AccountIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_struct("AccountIdentity").finish_non_exhaustive()
    }
}

/// The keys that belong to one device of an account.
#[derive(Clone)]
pub struct DeviceKeys {
    device_id: DeviceId,
    registration_id: u32,
    transport_key: SigningKey,
}

impl DeviceKeys {
    /// Creates fresh keys for the device with the given id.
    pub fn generate(device_id: DeviceId) -> Result<Self, CryptoError> {
        let mut rng = rand::rng();
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        // Signal registration ids are 14-bit and never zero.
        let registration_id = rng.random_range(1..=0x3fff);
        Self::from_parts(device_id, registration_id, &seed)
    }

    /// Restores device keys from stored parts.
    pub fn from_parts(
        device_id: DeviceId,
        registration_id: u32,
        transport_seed: &[u8; 32],
    ) -> Result<Self, CryptoError> {
        Ok(Self {
            device_id,
            registration_id,
            transport_key: SigningKey::from_bytes(transport_seed),
        })
    }

    /// The device id within the account.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// The Signal registration id of this device.
    pub fn registration_id(&self) -> u32 {
        self.registration_id
    }

    /// The secret seed of the transport key: only for the encrypted store.
    pub fn transport_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.transport_key.to_bytes())
    }

    /// The public transport key (ed25519).
    pub fn transport_public_key(&self) -> [u8; 32] {
        self.transport_key.verifying_key().to_bytes()
    }
}

impl fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKeys")
            .field("device_id", &self.device_id())
            .field("registration_id", &self.registration_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_survives_storage() {
        let identity = AccountIdentity::generate();
        let restored = AccountIdentity::from_bytes(&identity.to_bytes()).unwrap();
        assert_eq!(restored.public_key(), identity.public_key());
    }

    #[test]
    fn two_accounts_get_different_ids_of_fixed_shape() {
        let (a, b) = (new_account_id(), new_account_id());
        assert_ne!(a, b);
        assert_eq!(AccountId::parse(a.as_str()).unwrap(), a);
    }

    #[test]
    fn garbage_identity_bytes_give_a_typed_error() {
        assert!(matches!(
            AccountIdentity::from_bytes(&[1, 2, 3]),
            Err(CryptoError::InvalidKey { .. })
        ));
    }

    #[test]
    fn device_keys_survive_storage() {
        let keys = DeviceKeys::generate(DeviceId::FIRST).unwrap();
        let restored =
            DeviceKeys::from_parts(keys.device_id(), keys.registration_id(), &keys.transport_seed()).unwrap();
        assert_eq!(restored.transport_public_key(), keys.transport_public_key());
        assert!((1..=0x3fff).contains(&keys.registration_id()));
    }
}
