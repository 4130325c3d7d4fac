//! Account and device identities.
//!
//! The account identity key is a Signal [`IdentityKeyPair`]: it is what contacts pin,
//! what the safety number is computed over, and what certifies the account's devices.
//! Linked devices share it (as Signal's linked devices do), so linking a device does
//! not change the safety number. Each device also has keys of its own: a Signal
//! registration id and an ed25519 transport key whose public half becomes its
//! libp2p peer id.

use std::fmt;

use data_encoding::BASE32_NOPAD;
use ed25519_dalek::SigningKey;
use libsignal_protocol::{DeviceId, IdentityKey, IdentityKeyPair};
use rand::{Rng, RngCore};
use zeroize::Zeroizing;

use crate::CryptoError;

/// The device id of the device that created the account.
pub const FIRST_DEVICE_ID: u8 = 1;

/// The stable name of an account: 128 random bits in lowercase base32 (26
/// characters), chosen when the account is created.
///
/// It is deliberately *not* derived from the identity key. Like Signal's account
/// identifier, it stays the same while the key behind it is what contacts pin: a
/// different key presented under a known account id is exactly the identity change
/// (a reinstall, or someone in the middle) that people are warned about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountId(String);

impl AccountId {
    /// A fresh random account id.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        Self(BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
    }

    /// Checks the shape of an account id received from elsewhere.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let ok = text.len() == 26
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
        ok.then(|| Self(text.to_owned()))
            .ok_or_else(|| CryptoError::InvalidAccountId(text.chars().take(40).collect()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
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
    /// Creates fresh keys for the device with the given id (1..=127).
    pub fn generate(device_id: u8) -> Result<Self, CryptoError> {
        let mut rng = rand::rng();
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        // Signal registration ids are 14-bit and never zero.
        let registration_id = rng.random_range(1..=0x3fff);
        Self::from_parts(device_id, registration_id, &seed)
    }

    /// Restores device keys from stored parts.
    pub fn from_parts(device_id: u8, registration_id: u32, transport_seed: &[u8; 32]) -> Result<Self, CryptoError> {
        Ok(Self {
            device_id: DeviceId::new(device_id).map_err(|_| CryptoError::InvalidDeviceId(device_id))?,
            registration_id,
            transport_key: SigningKey::from_bytes(transport_seed),
        })
    }

    /// The device id within the account.
    pub fn device_id(&self) -> u8 {
        self.device_id.into()
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
        let (a, b) = (AccountId::generate(), AccountId::generate());
        assert_ne!(a, b);
        assert_eq!(AccountId::parse(a.as_str()).unwrap(), a);
        for bad in ["", "UPPERCASEUPPERCASEUPPERCAS", "abc", "aaaaaaaaaaaaaaaaaaaaaaaaa1"] {
            assert!(
                matches!(AccountId::parse(bad), Err(CryptoError::InvalidAccountId(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn garbage_identity_bytes_give_a_typed_error() {
        assert!(matches!(
            AccountIdentity::from_bytes(&[1, 2, 3]),
            Err(CryptoError::InvalidKey { .. })
        ));
    }

    #[test]
    fn device_keys_survive_storage_and_refuse_bad_ids() {
        let keys = DeviceKeys::generate(FIRST_DEVICE_ID).unwrap();
        let restored =
            DeviceKeys::from_parts(keys.device_id(), keys.registration_id(), &keys.transport_seed()).unwrap();
        assert_eq!(restored.transport_public_key(), keys.transport_public_key());
        assert!((1..=0x3fff).contains(&keys.registration_id()));
        assert!(matches!(DeviceKeys::generate(0), Err(CryptoError::InvalidDeviceId(0))));
        assert!(matches!(
            DeviceKeys::generate(128),
            Err(CryptoError::InvalidDeviceId(128))
        ));
    }
}
