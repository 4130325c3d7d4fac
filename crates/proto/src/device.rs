//! An account's devices as others see them: the signed device list and each device's
//! prekey bundle.
//!
//! The list is signed by the account identity key over its exact encoded bytes
//! (`SignedDeviceList::list`), so a verifier checks the bytes it will decode. The
//! bundles carry their own identity-key signatures (as Signal's signed prekeys do),
//! so they can travel apart from the list.

use serde::{Deserialize, Serialize};

use crate::{decode_versioned, encode_versioned, AccountId, DeviceId, ProtoError};

/// Most devices one account may list.
pub const MAX_DEVICES: usize = 32;
/// Largest encoded device list accepted.
pub const MAX_DEVICE_LIST_BYTES: usize = 4 * 1024;
/// Most always-on nodes one account may name.
pub const MAX_ALWAYS_ON: usize = 4;
/// Longest always-on node address, in bytes.
pub const MAX_ALWAYS_ON_BYTES: usize = 256;

/// One device in an account's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// Device id within the account (1..=127).
    pub device_id: DeviceId,
    /// The device's Signal registration id.
    pub registration_id: u32,
    /// The device's transport public key (ed25519); its mailbox derives from it.
    pub transport_key: [u8; 32],
}

/// The devices of an account, at a version that only ever goes up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    /// The account these devices belong to.
    pub account_id: AccountId,
    /// The account identity public key that signs this list.
    pub identity_key: Vec<u8>,
    /// Monotonic version; a receiver refuses one lower than what it has.
    pub version: u64,
    /// The devices.
    pub devices: Vec<DeviceEntry>,
    /// Always-on nodes (the account's own `cairnd`, a friend's) that hold envelopes for
    /// these devices while they are offline, as multiaddrs ending in `/p2p/<peer id>`.
    /// Senders place with them besides the peers closest to a device's mailbox.
    pub always_on: Vec<String>,
}

/// The device list as first released, before it named always-on nodes: lists signed
/// then are still read.
#[derive(Deserialize)]
struct DeviceListV1 {
    account_id: AccountId,
    identity_key: Vec<u8>,
    version: u64,
    devices: Vec<DeviceEntry>,
}

impl DeviceList {
    /// The encoded form that gets signed.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Decodes and sanity-checks a list (also one in the first layout, which had no
    /// always-on nodes: the two layouts cannot be mistaken for each other, since a
    /// decode refuses trailing bytes and a missing field alike).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let list: DeviceList = match decode_versioned(bytes, MAX_DEVICE_LIST_BYTES) {
            Ok(list) => list,
            Err(error @ (ProtoError::TooLarge { .. } | ProtoError::Empty | ProtoError::UnsupportedVersion(_))) => {
                return Err(error)
            }
            Err(error) => match decode_versioned::<DeviceListV1>(bytes, MAX_DEVICE_LIST_BYTES) {
                Ok(v1) => DeviceList {
                    account_id: v1.account_id,
                    identity_key: v1.identity_key,
                    version: v1.version,
                    devices: v1.devices,
                    always_on: Vec::new(),
                },
                Err(_) => return Err(error),
            },
        };
        if list.always_on.len() > MAX_ALWAYS_ON || list.always_on.iter().any(|a| a.len() > MAX_ALWAYS_ON_BYTES) {
            return Err(ProtoError::InvalidField {
                field: "always_on",
                reason: format!("at most {MAX_ALWAYS_ON} addresses of {MAX_ALWAYS_ON_BYTES} bytes"),
            });
        }
        if list.devices.is_empty() || list.devices.len() > MAX_DEVICES {
            return Err(ProtoError::InvalidField {
                field: "devices",
                reason: format!("{} devices, expected 1..={MAX_DEVICES}", list.devices.len()),
            });
        }
        let mut ids: Vec<DeviceId> = list.devices.iter().map(|d| d.device_id).collect();
        ids.sort_unstable();
        ids.dedup();
        // In range already: a `DeviceId` is checked as it is decoded.
        if ids.len() != list.devices.len() {
            return Err(ProtoError::InvalidField {
                field: "devices",
                reason: "device ids must be distinct".into(),
            });
        }
        check_identity_key(&list.identity_key)?;
        Ok(list)
    }

    /// The entry of device `device_id`, if listed.
    pub fn device(&self, device_id: DeviceId) -> Option<&DeviceEntry> {
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
    pub device_id: DeviceId,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn list(always_on: Vec<String>) -> DeviceList {
        DeviceList {
            account_id: AccountId::parse("abcdefghijklmnopqrstuvwxyz").unwrap(),
            identity_key: vec![5; 33],
            version: 3,
            devices: vec![DeviceEntry {
                device_id: DeviceId::FIRST,
                registration_id: 7,
                transport_key: [7; 32],
            }],
            always_on,
        }
    }

    #[test]
    fn a_list_signed_before_always_on_nodes_existed_still_reads() {
        #[derive(Serialize)]
        struct FirstLayout {
            account_id: String,
            identity_key: Vec<u8>,
            version: u64,
            devices: Vec<DeviceEntry>,
        }
        let current = list(Vec::new());
        let old = encode_versioned(&FirstLayout {
            account_id: current.account_id.to_string(),
            identity_key: current.identity_key.clone(),
            version: current.version,
            devices: current.devices.clone(),
        });
        assert_eq!(DeviceList::from_bytes(&old).unwrap(), current);
        let with_node = list(vec!["/ip4/10.0.0.1/tcp/4001/p2p/12D3KooW".into()]);
        assert_eq!(DeviceList::from_bytes(&with_node.to_bytes()).unwrap(), with_node);
    }

    #[test]
    fn too_many_or_too_long_always_on_nodes_are_refused() {
        let many = list(vec!["/ip4/1.2.3.4/tcp/1".into(); MAX_ALWAYS_ON + 1]);
        assert!(matches!(
            DeviceList::from_bytes(&many.to_bytes()),
            Err(ProtoError::InvalidField { field: "always_on", .. })
        ));
        let long = list(vec!["x".repeat(MAX_ALWAYS_ON_BYTES + 1)]);
        assert!(DeviceList::from_bytes(&long.to_bytes()).is_err());
        assert!(matches!(
            DeviceList::from_bytes(&[1, 0xff]),
            Err(ProtoError::Malformed(_))
        ));
    }
}
