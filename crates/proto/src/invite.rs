//! The contact invite: what one person hands another (as a `cairn://invite/...` link
//! or the same text in a QR code) so that the other can add them as a contact.
//!
//! It carries the inviter's signed device list (which names the account identity
//! key), the inviting device's prekey bundle, and addresses where the inviter may be
//! reached. It carries one bundle, not all, so that it fits in one QR code
//! (a Kyber public key alone is 1.5 KiB); the other devices' bundles follow in-band
//! once the first session is up.

use data_encoding::BASE64URL_NOPAD;
use serde::{Deserialize, Serialize};

use crate::{decode_versioned, encode_versioned, DeviceId, DeviceList, PrekeyBundle, ProtoError, SignedDeviceList};

/// The scheme and path every invite link starts with.
pub const INVITE_LINK_PREFIX: &str = "cairn://invite/";
/// Largest encoded invite accepted, in bytes.
pub const MAX_INVITE_BYTES: usize = 8 * 1024;
/// Largest invite link accepted, in characters (base64 of the byte limit plus prefix).
pub const MAX_INVITE_LINK_LEN: usize = INVITE_LINK_PREFIX.len() + MAX_INVITE_BYTES * 4 / 3 + 4;
/// Longest display name, in bytes.
pub const MAX_DISPLAY_NAME_BYTES: usize = 256;
/// Largest MLS key package accepted (one is about 300 bytes).
pub const MAX_KEY_PACKAGE_BYTES: usize = 2 * 1024;
const MAX_ADDRESSES: usize = 8;
const MAX_ADDRESS_BYTES: usize = 256;

/// Who someone is and how to start sessions with them: the body of an invite, and
/// what devices send each other in-band when they meet or their devices change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactCard {
    /// The name the person chose to show.
    pub display_name: String,
    /// Their signed device list.
    pub device_list: SignedDeviceList,
    /// Prekey bundles of some or all of the listed devices.
    pub bundles: Vec<PrekeyBundle>,
    /// MLS key packages of some or all of the listed devices, so that others can
    /// add them to groups (left out of invites, which must fit one QR code).
    pub key_packages: Vec<DeviceKeyPackage>,
}

/// One device's MLS key package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeyPackage {
    /// The device.
    pub device_id: DeviceId,
    /// The encoded key package (a last-resort one: it serves every group).
    pub key_package: Vec<u8>,
}

impl ContactCard {
    /// Checks sizes and shapes (not signatures: that needs keys, in the crypto crate).
    pub fn check(&self) -> Result<DeviceList, ProtoError> {
        if self.display_name.len() > MAX_DISPLAY_NAME_BYTES {
            return Err(ProtoError::InvalidField {
                field: "display_name",
                reason: format!("longer than {MAX_DISPLAY_NAME_BYTES} bytes"),
            });
        }
        let list = DeviceList::from_bytes(&self.device_list.list)?;
        if self.bundles.iter().any(|b| list.device(b.device_id).is_none()) {
            return Err(ProtoError::InvalidField {
                field: "bundles",
                reason: "a bundle for a device not in the list".into(),
            });
        }
        if self
            .key_packages
            .iter()
            .any(|k| list.device(k.device_id).is_none() || k.key_package.len() > MAX_KEY_PACKAGE_BYTES)
        {
            return Err(ProtoError::InvalidField {
                field: "key_packages",
                reason: "a key package for a device not in the list, or too large".into(),
            });
        }
        Ok(list)
    }
}

/// A contact invite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The inviter.
    pub card: ContactCard,
    /// Transport addresses (multiaddrs) where the inviting device may be reached.
    pub addresses: Vec<String>,
    /// The inviter's current invite secret: whoever presents it may introduce
    /// themselves. Resetting it makes links handed out before stop working.
    pub secret: [u8; 16],
}

impl Invite {
    /// The binary form: version byte plus postcard.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Parses the binary form, refusing more than [`MAX_INVITE_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let invite: Invite = decode_versioned(bytes, MAX_INVITE_BYTES)?;
        invite.card.check()?;
        if invite.card.bundles.is_empty() {
            return Err(ProtoError::InvalidField {
                field: "bundles",
                reason: "no prekey bundle".into(),
            });
        }
        if invite.addresses.len() > MAX_ADDRESSES || invite.addresses.iter().any(|a| a.len() > MAX_ADDRESS_BYTES) {
            return Err(ProtoError::InvalidField {
                field: "addresses",
                reason: "too many or too long".into(),
            });
        }
        Ok(invite)
    }

    /// The `cairn://invite/<base64url>` link form.
    pub fn to_link(&self) -> String {
        format!("{INVITE_LINK_PREFIX}{}", BASE64URL_NOPAD.encode(&self.to_bytes()))
    }

    /// Parses a link as pasted by a person: surrounding whitespace is ignored.
    pub fn from_link(link: &str) -> Result<Self, ProtoError> {
        let link = link.trim();
        if link.len() > MAX_INVITE_LINK_LEN {
            return Err(ProtoError::TooLarge {
                size: link.len(),
                limit: MAX_INVITE_LINK_LEN,
            });
        }
        let payload = link.strip_prefix(INVITE_LINK_PREFIX).ok_or(ProtoError::WrongLinkKind {
            expected: "cairn invite",
        })?;
        let bytes = BASE64URL_NOPAD
            .decode(payload.as_bytes())
            .map_err(|_| ProtoError::BadLinkEncoding)?;
        Self::from_bytes(&bytes)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::AccountId;
    use crate::DeviceEntry;
    use proptest::prelude::*;

    pub(crate) fn sample() -> Invite {
        let list = DeviceList {
            account_id: AccountId::parse("abcdefghijklmnopqrstuvwxyz").unwrap(),
            identity_key: [5u8; 33].to_vec(),
            version: 1,
            devices: vec![DeviceEntry {
                device_id: DeviceId::FIRST,
                registration_id: 7,
                transport_key: [7u8; 32],
            }],
            always_on: Vec::new(),
        };
        Invite {
            card: ContactCard {
                display_name: "Alice".into(),
                device_list: SignedDeviceList {
                    list: list.to_bytes(),
                    signature: vec![1; 64],
                },
                bundles: vec![PrekeyBundle {
                    device_id: DeviceId::FIRST,
                    registration_id: 7,
                    signed_prekey_id: 1,
                    signed_prekey: vec![5; 33],
                    signed_prekey_signature: vec![2; 64],
                    kyber_prekey_id: 1,
                    kyber_prekey: vec![8; 1569],
                    kyber_prekey_signature: vec![3; 64],
                }],
                key_packages: Vec::new(),
            },
            addresses: vec!["/ip4/127.0.0.1/udp/4001/quic-v1".into()],
            secret: [4; 16],
        }
    }

    #[test]
    fn invite_survives_the_link_round_trip() {
        let invite = sample();
        let link = invite.to_link();
        assert!(link.starts_with(INVITE_LINK_PREFIX));
        assert_eq!(Invite::from_link(&format!("  {link}\n")).unwrap(), invite);
    }

    #[test]
    fn a_link_of_another_kind_is_refused_by_name() {
        assert_eq!(
            Invite::from_link("https://example.org/x"),
            Err(ProtoError::WrongLinkKind {
                expected: "cairn invite"
            })
        );
        assert_eq!(
            Invite::from_link("cairn://invite/!!!"),
            Err(ProtoError::BadLinkEncoding)
        );
    }

    #[test]
    fn an_oversized_link_is_refused_before_decoding() {
        let link = format!("{INVITE_LINK_PREFIX}{}", "A".repeat(MAX_INVITE_LINK_LEN));
        assert!(matches!(Invite::from_link(&link), Err(ProtoError::TooLarge { .. })));
    }

    #[test]
    fn a_future_version_is_refused_not_misread() {
        let mut bytes = sample().to_bytes();
        bytes[0] = 9;
        assert_eq!(Invite::from_bytes(&bytes), Err(ProtoError::UnsupportedVersion(9)));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = sample().to_bytes();
        bytes.push(0);
        assert_eq!(Invite::from_bytes(&bytes), Err(ProtoError::TrailingBytes(1)));
    }

    #[test]
    fn a_bundle_for_an_unlisted_device_is_refused() {
        let mut invite = sample();
        invite.card.bundles[0].device_id = DeviceId::new(2).unwrap();
        assert!(matches!(
            Invite::from_bytes(&invite.to_bytes()),
            Err(ProtoError::InvalidField { field: "bundles", .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = Invite::from_bytes(&bytes);
        }

        #[test]
        fn arbitrary_text_never_panics_the_link_parser(text in ".{0,512}") {
            let _ = Invite::from_link(&text);
            let _ = Invite::from_link(&format!("{INVITE_LINK_PREFIX}{text}"));
        }

        #[test]
        fn flipping_any_byte_never_panics(index in 0usize..2000, bit in 0u8..8) {
            let mut bytes = sample().to_bytes();
            let i = index % bytes.len();
            bytes[i] ^= 1 << bit;
            let _ = Invite::from_bytes(&bytes);
        }
    }
}
