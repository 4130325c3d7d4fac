//! What groups send: the [`GroupPacket`] a 1:1 session carries to each member device
//! (an MLS Welcome or an MLS message, opaque here), and the [`GroupContent`] inside
//! MLS application messages — texts, and the group's description as an admin gives it.

use serde::{Deserialize, Serialize};

use crate::{decode_versioned, encode_versioned, AccountId, ContactCard, ProtoError, TextMessage, MAX_TEXT_BYTES};

/// Longest group name, in bytes.
pub const MAX_GROUP_NAME_BYTES: usize = 256;
/// Most accounts one group description may name (its cards must also fit one
/// envelope, which is what limits groups in practice).
pub const MAX_GROUP_ACCOUNTS: usize = 1000;
/// Largest encoded group content accepted.
pub const MAX_GROUP_CONTENT_BYTES: usize = 160 * 1024;
/// Group ids are `g` and 32 hex digits.
pub const GROUP_ID_LEN: usize = 33;

/// Largest piece of a group packet that one envelope carries.
pub const MAX_GROUP_PART_BYTES: usize = 128 * 1024;
/// Most pieces a group packet is cut into (so a packet is at most 4 MiB).
pub const MAX_GROUP_PARTS: u16 = 32;

/// An MLS payload on its way to one member device, inside a 1:1 session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupPacket {
    /// A Welcome: the recipient device has been added to a group.
    Welcome(Vec<u8>),
    /// A commit, proposal or application message of a group.
    Message(Vec<u8>),
    /// One piece of a packet too large for one envelope (a Welcome to a large
    /// group carries its whole ratchet tree).
    Part(GroupPart),
}

/// One piece of an encoded [`GroupPacket`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPart {
    /// Names the packet the piece belongs to (random, per packet).
    pub id: [u8; 16],
    /// Which piece this is, from 0.
    pub index: u16,
    /// How many pieces the packet has.
    pub count: u16,
    /// The piece.
    pub bytes: Vec<u8>,
}

impl GroupPart {
    /// Checks the piece's shape: its index among at most [`MAX_GROUP_PARTS`], and at
    /// most [`MAX_GROUP_PART_BYTES`].
    pub fn check(&self) -> Result<(), ProtoError> {
        if self.count < 2 || self.count > MAX_GROUP_PARTS || self.index >= self.count {
            return Err(ProtoError::InvalidField {
                field: "part",
                reason: format!("piece {} of {}", self.index, self.count),
            });
        }
        if self.bytes.is_empty() || self.bytes.len() > MAX_GROUP_PART_BYTES {
            return Err(ProtoError::TooLarge {
                size: self.bytes.len(),
                limit: MAX_GROUP_PART_BYTES,
            });
        }
        Ok(())
    }
}

impl GroupPacket {
    /// The packet as it goes out: itself, or, when its encoding is longer than
    /// `max_part` bytes, that many [`GroupPacket::Part`]s named `id`.
    pub fn into_parts(self, id: [u8; 16], max_part: usize) -> Result<Vec<GroupPacket>, ProtoError> {
        let bytes = encode_versioned(&self);
        if bytes.len() <= max_part {
            return Ok(vec![self]);
        }
        let count = bytes.len().div_ceil(max_part);
        if count > MAX_GROUP_PARTS as usize || max_part > MAX_GROUP_PART_BYTES {
            return Err(ProtoError::TooLarge {
                size: bytes.len(),
                limit: MAX_GROUP_PARTS as usize * max_part.min(MAX_GROUP_PART_BYTES),
            });
        }
        Ok(bytes
            .chunks(max_part)
            .enumerate()
            .map(|(index, piece)| {
                GroupPacket::Part(GroupPart {
                    id,
                    index: index as u16,
                    count: count as u16,
                    bytes: piece.to_vec(),
                })
            })
            .collect())
    }

    /// Puts a packet together from all its pieces, in order (each checked); a packet
    /// of pieces may not be a piece itself.
    pub fn from_parts(parts: &[GroupPart]) -> Result<GroupPacket, ProtoError> {
        let whole = parts.first().map(|p| (p.id, p.count));
        let complete = parts
            .iter()
            .enumerate()
            .all(|(i, p)| p.check().is_ok() && Some((p.id, p.count)) == whole && usize::from(p.index) == i)
            && whole.is_some_and(|(_, count)| usize::from(count) == parts.len());
        if !complete {
            return Err(ProtoError::InvalidField {
                field: "part",
                reason: "the pieces of a packet are missing, repeated or mixed".into(),
            });
        }
        let bytes: Vec<u8> = parts.iter().flat_map(|p| p.bytes.iter().copied()).collect();
        match decode_versioned(&bytes, MAX_GROUP_PARTS as usize * MAX_GROUP_PART_BYTES)? {
            GroupPacket::Part(_) => Err(ProtoError::InvalidField {
                field: "part",
                reason: "a piece made of pieces".into(),
            }),
            packet => Ok(packet),
        }
    }
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
    pub admins: Vec<AccountId>,
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
            admins: vec![AccountId::parse("abcdefghijklmnopqrstuvwxyz").unwrap()],
            cards: Vec::new(),
        });
        assert_eq!(GroupContent::from_bytes(&info.to_bytes()).unwrap(), info);
        for (name, admins) in [
            ("", vec![AccountId::parse("abcdefghijklmnopqrstuvwxyz").unwrap()]),
            ("a\u{7}b", vec![AccountId::parse("abcdefghijklmnopqrstuvwxyz").unwrap()]),
            ("ok", vec![]),
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

    fn pieces_of(packets: Vec<GroupPacket>) -> Vec<GroupPart> {
        packets
            .into_iter()
            .map(|p| match p {
                GroupPacket::Part(part) => part,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_large_packet_goes_in_pieces_and_comes_back_whole_only_from_all_of_them() {
        let packet = GroupPacket::Welcome((0..300_000u32).map(|i| i as u8).collect());
        let pieces = pieces_of(packet.clone().into_parts([7; 16], MAX_GROUP_PART_BYTES).unwrap());
        assert_eq!(pieces.len(), 3);
        assert!(pieces.iter().all(|p| p.check().is_ok()));
        assert_eq!(GroupPacket::from_parts(&pieces).unwrap(), packet);
        // Missing, repeated or out-of-order pieces are refused.
        for bad in [
            vec![pieces[0].clone(), pieces[1].clone()],
            vec![pieces[0].clone(), pieces[0].clone(), pieces[2].clone()],
            vec![pieces[1].clone(), pieces[0].clone(), pieces[2].clone()],
        ] {
            assert!(GroupPacket::from_parts(&bad).is_err());
        }
        // A packet made of pieces that are themselves a piece is refused.
        let nested = pieces_of(
            GroupPacket::Part(pieces[0].clone())
                .into_parts([8; 16], 50_000)
                .unwrap(),
        );
        assert!(matches!(
            GroupPacket::from_parts(&nested),
            Err(ProtoError::InvalidField { reason, .. }) if reason.contains("made of pieces")
        ));
        // A small packet stays whole; one too large for every piece is refused.
        let small = GroupPacket::Message(vec![1, 2, 3]);
        assert_eq!(
            small.clone().into_parts([0; 16], MAX_GROUP_PART_BYTES).unwrap(),
            [small]
        );
        let huge = GroupPacket::Message(vec![0; MAX_GROUP_PARTS as usize * MAX_GROUP_PART_BYTES + 1]);
        assert!(huge.into_parts([0; 16], MAX_GROUP_PART_BYTES).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_group_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = GroupContent::from_bytes(&bytes);
            // Cut into two pieces, whatever it decodes to (if anything) must not be a piece.
            if bytes.len() >= 2 {
                let half = bytes.len() / 2;
                let pieces: Vec<GroupPart> = [&bytes[..half], &bytes[half..]]
                    .iter()
                    .enumerate()
                    .map(|(index, piece)| GroupPart { id: [1; 16], index: index as u16, count: 2, bytes: piece.to_vec() })
                    .collect();
                if let Ok(packet) = GroupPacket::from_parts(&pieces) {
                    prop_assert!(!matches!(packet, GroupPacket::Part(_)));
                }
            }
        }
    }
}
