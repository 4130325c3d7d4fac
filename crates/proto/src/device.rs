//! An account's devices as others see them: the signed device list and each device's
//! prekey bundle.
//!
//! The list is signed by the account identity key over its exact encoded bytes
//! (`SignedDeviceList::list`), so a verifier checks the bytes it will decode. The
//! bundles carry their own identity-key signatures (as Signal's signed prekeys do),
//! so they can travel apart from the list.

use serde::{Deserialize, Serialize};

use crate::{decode_versioned, encode_versioned, ProtoError};

/// Most devices one account may list.
pub const MAX_DEVICES: usize = 32;
/// Largest encoded device list accepted.
pub const MAX_DEVICE_LIST_BYTES: usize = 4 * 1024;

/// One device in an account's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// Device id within the account (1..=127).
    pub device_id: u8,
    /// The device's Signal registration id.
    pub registration_id: u32,
    /// The device's transport public key (ed25519); its mailbox derives from it.
    pub transport_key: [u8; 32],
}

/// The devices of an account, at a version that only ever goes up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    /// The account these devices belong to.
    pub account_id: String,
    /// The account identity public key that signs this list.
    pub identity_key: Vec<u8>,
    /// Monotonic version; a receiver refuses one lower than what it has.
    pub version: u64,
    /// The devices.
    pub devices: Vec<DeviceEntry>,
}

impl DeviceList {
    /// The encoded form that gets signed.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Decodes and sanity-checks a list.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let list: DeviceList = decode_versioned(bytes, MAX_DEVICE_LIST_BYTES)?;
        if list.devices.is_empty() || list.devices.len() > MAX_DEVICES {
            return Err(ProtoError::InvalidField {
                field: "devices",
                reason: format!("{} devices, expected 1..={MAX_DEVICES}", list.devices.len()),
            });
        }
        let mut ids: Vec<u8> = list.devices.iter().map(|d| d.device_id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != list.devices.len() || ids.iter().any(|&id| id == 0 || id > 127) {
            return Err(ProtoError::InvalidField {
                field: "devices",
                reason: "device ids must be distinct and in 1..=127".into(),
            });
        }
        check_identity_key(&list.identity_key)?;
        check_account_id(&list.account_id)?;
        Ok(list)
    }

    /// The entry of device `device_id`, if listed.
    pub fn device(&self, device_id: u8) -> Option<&DeviceEntry> {
        self.devices.iter().find(|d| d.device_id == device_id)
    }
}

/// A device list with the account identity key's signature over its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDeviceList {
    /// `DeviceList::to_bytes()` of the signed list.
    pub list: Vec<u8>,
    /// XEdDSA signature by the account identity key over `list`.
    pub signature: Vec<u8>,
}

/// A device's public prekeys, from which another device starts a Signal session
/// (PQXDH: a signed EC prekey and a signed Kyber last-resort prekey).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrekeyBundle {
    /// The device these prekeys belong to.
    pub device_id: u8,
    /// Its Signal registration id.
    pub registration_id: u32,
    /// Signed EC prekey id.
    pub signed_prekey_id: u32,
    /// Signed EC prekey (serialised public key).
    pub signed_prekey: Vec<u8>,
    /// Identity-key signature over `signed_prekey`.
    pub signed_prekey_signature: Vec<u8>,
    /// Kyber prekey id.
    pub kyber_prekey_id: u32,
    /// Kyber public key (serialised).
    pub kyber_prekey: Vec<u8>,
    /// Identity-key signature over `kyber_prekey`.
    pub kyber_prekey_signature: Vec<u8>,
}

/// Account ids are 26 characters of lowercase base32.
pub(crate) fn check_account_id(id: &str) -> Result<(), ProtoError> {
    if id.len() != 26 || !id.bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)) {
        return Err(ProtoError::InvalidField {
            field: "account_id",
            reason: "not 26 base32 characters".into(),
        });
    }
    Ok(())
}

/// A Signal identity key is a type byte plus 32 bytes of Curve25519 point.
pub(crate) fn check_identity_key(key: &[u8]) -> Result<(), ProtoError> {
    if key.len() != 33 {
        return Err(ProtoError::InvalidField {
            field: "identity_key",
            reason: format!("{} bytes, expected 33", key.len()),
        });
    }
    Ok(())
}
