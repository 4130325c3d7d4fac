//! The contact invite: what one person hands another (as a `cairn://invite/...` link
//! or the same text in a QR code) so that the other can add them as a contact.
//!
//! Today it carries who the inviter is (account identity key, display name) and the
//! inviting device's public keys. Prekey bundles and the signed device list join it
//! with the 1:1 sessions.

use data_encoding::BASE64URL_NOPAD;
use serde::{Deserialize, Serialize};

use crate::{decode_versioned, encode_versioned, ProtoError};

/// The scheme and path every invite link starts with.
pub const INVITE_LINK_PREFIX: &str = "cairn://invite/";
/// Largest encoded invite accepted, in bytes.
pub const MAX_INVITE_BYTES: usize = 8 * 1024;
/// Largest invite link accepted, in characters (base64 of the byte limit plus prefix).
pub const MAX_INVITE_LINK_LEN: usize = INVITE_LINK_PREFIX.len() + MAX_INVITE_BYTES * 4 / 3 + 4;
const MAX_DISPLAY_NAME_BYTES: usize = 256;

/// A contact invite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The inviter's account identity public key (serialised Signal identity key).
    pub identity_key: Vec<u8>,
    /// The name the inviter chose to show.
    pub display_name: String,
    /// The inviting device's id within the account.
    pub device_id: u8,
    /// The inviting device's transport public key (ed25519), from which its peer id follows.
    pub transport_key: [u8; 32],
}

impl Invite {
    /// The binary form: version byte plus postcard.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Parses the binary form, refusing more than [`MAX_INVITE_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let invite: Invite = decode_versioned(bytes, MAX_INVITE_BYTES)?;
        invite.validate()?;
        Ok(invite)
    }

    /// The `cairn://invite/<base64url>` link form.
    pub fn to_link(&self) -> String {
        format!(
            "{INVITE_LINK_PREFIX}{}",
            BASE64URL_NOPAD.encode(&self.to_bytes())
        )
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
        let payload = link
            .strip_prefix(INVITE_LINK_PREFIX)
            .ok_or(ProtoError::WrongLinkKind {
                expected: "cairn invite",
            })?;
        let bytes = BASE64URL_NOPAD
            .decode(payload.as_bytes())
            .map_err(|_| ProtoError::BadLinkEncoding)?;
        Self::from_bytes(&bytes)
    }

    fn validate(&self) -> Result<(), ProtoError> {
        if self.display_name.len() > MAX_DISPLAY_NAME_BYTES {
            return Err(ProtoError::InvalidField {
                field: "display_name",
                reason: format!("longer than {MAX_DISPLAY_NAME_BYTES} bytes"),
            });
        }
        // A Signal identity key is a type byte plus 32 bytes of Curve25519 point.
        if self.identity_key.len() != 33 {
            return Err(ProtoError::InvalidField {
                field: "identity_key",
                reason: format!("{} bytes, expected 33", self.identity_key.len()),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Invite {
        Invite {
            identity_key: [5u8; 33].to_vec(),
            display_name: "Alice".into(),
            device_id: 1,
            transport_key: [7u8; 32],
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
        assert!(matches!(
            Invite::from_link(&link),
            Err(ProtoError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_future_version_is_refused_not_misread() {
        let mut bytes = sample().to_bytes();
        bytes[0] = 9;
        assert_eq!(
            Invite::from_bytes(&bytes),
            Err(ProtoError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = sample().to_bytes();
        bytes.push(0);
        assert_eq!(
            Invite::from_bytes(&bytes),
            Err(ProtoError::TrailingBytes(1))
        );
    }

    #[test]
    fn a_wrong_sized_identity_key_is_refused() {
        let mut invite = sample();
        invite.identity_key.pop();
        assert!(matches!(
            Invite::from_bytes(&invite.to_bytes()),
            Err(ProtoError::InvalidField {
                field: "identity_key",
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Invite::from_bytes(&bytes);
        }

        #[test]
        fn arbitrary_text_never_panics_the_link_parser(text in ".{0,512}") {
            let _ = Invite::from_link(&text);
            let _ = Invite::from_link(&format!("{INVITE_LINK_PREFIX}{text}"));
        }
    }
}
