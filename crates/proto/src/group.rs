//! What groups send: the [`GroupPacket`] a 1:1 session carries to each member device
//! (an MLS Welcome or an MLS message, opaque here), and the [`GroupContent`] inside
//! MLS application messages — texts, and the group's description as an admin gives it.

use serde::{Deserialize, Serialize};

use crate::{decode_versioned, encode_versioned, ContactCard, ProtoError, TextMessage, MAX_TEXT_BYTES};

/// Longest group name, in bytes.
pub const MAX_GROUP_NAME_BYTES: usize = 256;
/// Most accounts one group description may name (its cards must also fit one
/// envelope, which is what limits groups in practice).
pub const MAX_GROUP_ACCOUNTS: usize = 1000;
/// Largest encoded group content accepted.
pub const MAX_GROUP_CONTENT_BYTES: usize = 160 * 1024;
/// Group ids are `g` and 32 hex digits.
pub const GROUP_ID_LEN: usize = 33;

/// An MLS payload on its way to one member device, inside a 1:1 session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupPacket {
    /// A Welcome: the recipient device has been added to a group.
    Welcome(Vec<u8>),
    /// A commit, proposal or application message of a group.
    Message(Vec<u8>),
}

/// The plaintext of an MLS application message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupContent {
    /// A text to the group (`sync_peer` unused).
    Text(TextMessage),
    /// The group as an admin describes it, sent after every change.
    Info(GroupInfo),
}

/// A group's name, admins and members' cards (so that members who are not each
/// other's contacts can reach each other's devices).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The name.
    pub name: String,
    /// Account ids of the admins.
    pub admins: Vec<String>,
    /// The members' cards.
    pub cards: Vec<ContactCard>,
}

impl GroupContent {
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Decodes within [`MAX_GROUP_CONTENT_BYTES`] and checks sizes and shapes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let content: GroupContent = decode_versioned(bytes, MAX_GROUP_CONTENT_BYTES)?;
        match &content {
            GroupContent::Text(text) if text.body.len() > MAX_TEXT_BYTES => {
                return Err(ProtoError::TooLarge {
                    size: text.body.len(),
                    limit: MAX_TEXT_BYTES,
                })
            }
            GroupContent::Info(info) => info.check()?,
            GroupContent::Text(_) => {}
        }
        Ok(content)
    }
}

impl GroupInfo {
    fn check(&self) -> Result<(), ProtoError> {
        check_group_name(&self.name)?;
        if self.admins.is_empty() || self.admins.len() > MAX_GROUP_ACCOUNTS || self.cards.len() > MAX_GROUP_ACCOUNTS {
            return Err(ProtoError::InvalidField {
                field: "admins",
                reason: "no admin, or too many accounts".into(),
            });
        }
        for admin in &self.admins {
            crate::device::check_account_id(admin)?;
        }
        for card in &self.cards {
            card.check()?;
        }
        Ok(())
    }
}

/// A group name has 1 to 256 bytes and no control characters.
pub fn check_group_name(name: &str) -> Result<(), ProtoError> {
    if name.trim().is_empty() || name.len() > MAX_GROUP_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(ProtoError::InvalidField {
            field: "name",
            reason: format!("a group name has 1 to {MAX_GROUP_NAME_BYTES} bytes and no control characters"),
        });
    }
    Ok(())
}

/// Whether `id` has the shape of a group id (`g` and 32 lowercase hex digits).
pub fn is_group_id(id: &str) -> bool {
    id.len() == GROUP_ID_LEN
        && id.starts_with('g')
        && id[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn group_content_round_trips_and_bad_descriptions_are_refused() {
        let info = GroupContent::Info(GroupInfo {
            name: "Climbing".into(),
            admins: vec!["abcdefghijklmnopqrstuvwxyz".into()],
            cards: Vec::new(),
        });
        assert_eq!(GroupContent::from_bytes(&info.to_bytes()).unwrap(), info);
        for (name, admins) in [
            ("", vec!["abcdefghijklmnopqrstuvwxyz".to_owned()]),
            ("a\u{7}b", vec!["abcdefghijklmnopqrstuvwxyz".to_owned()]),
            ("ok", vec![]),
            ("ok", vec!["not an account".to_owned()]),
        ] {
            let bad = GroupContent::Info(GroupInfo {
                name: name.into(),
                admins,
                cards: Vec::new(),
            });
            assert!(matches!(
                GroupContent::from_bytes(&bad.to_bytes()),
                Err(ProtoError::InvalidField { .. })
            ));
        }
    }

    #[test]
    fn group_ids_have_one_shape() {
        assert!(is_group_id("g0123456789abcdef0123456789abcdef"));
        assert!(!is_group_id("g0123456789ABCDEF0123456789abcdef"));
        assert!(!is_group_id("abcdefghijklmnopqrstuvwxyz"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_group_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = GroupContent::from_bytes(&bytes);
        }
    }
}
