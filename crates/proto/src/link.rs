//! The device-link offer: what an existing device shows (as a `cairn://link/...` link
//! or the same text in a QR code) so that a new device of the same person can reach
//! it and prove it saw the screen.
//!
//! It carries a one-time 32-byte secret (the pre-shared key of the Noise handshake
//! that follows), the offering device's transport key and addresses, and when the
//! offer expires. Anyone who reads it can start a handshake, which is why it is
//! one-time, short-lived, and followed by a code both screens show.

use data_encoding::BASE64URL_NOPAD;
use serde::{Deserialize, Serialize};

use crate::{
    decode_versioned, encode_versioned, AccountId, ContactCard, DeviceId, DeviceKeyPackage, PrekeyBundle, ProtoError,
    SignedDeviceList,
};

/// Largest hand-over accepted (contacts' cards are a few KiB each).
pub const MAX_HAND_OVER_BYTES: usize = 16 * 1024 * 1024;

/// The scheme and path every link offer starts with.
pub const LINK_OFFER_PREFIX: &str = "cairn://link/";
/// Largest encoded link offer accepted, in bytes.
pub const MAX_LINK_OFFER_BYTES: usize = 2 * 1024;
/// Longest link offer accepted, in characters.
pub const MAX_LINK_OFFER_LEN: usize = LINK_OFFER_PREFIX.len() + MAX_LINK_OFFER_BYTES * 4 / 3 + 4;
/// Most addresses an offer carries.
const MAX_OFFER_ADDRESSES: usize = 8;
/// Longest address, in bytes.
const MAX_OFFER_ADDRESS_BYTES: usize = 256;

/// An offer to link a new device to this account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkOffer {
    /// One-time secret: the Noise handshake's pre-shared key.
    pub secret: [u8; 32],
    /// The offering device's transport public key (its peer id derives from it).
    pub transport_key: [u8; 32],
    /// Where the offering device listens (multiaddrs).
    pub addresses: Vec<String>,
    /// When the offer stops being accepted, Unix seconds.
    pub expires_at: u64,
}

impl LinkOffer {
    /// The binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Parses the binary form within [`MAX_LINK_OFFER_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let offer: LinkOffer = decode_versioned(bytes, MAX_LINK_OFFER_BYTES)?;
        if offer.addresses.len() > MAX_OFFER_ADDRESSES
            || offer.addresses.iter().any(|a| a.len() > MAX_OFFER_ADDRESS_BYTES)
        {
            return Err(ProtoError::InvalidField {
                field: "addresses",
                reason: "too many or too long".into(),
            });
        }
        Ok(offer)
    }

    /// The `cairn://link/<base64url>` form.
    pub fn to_link(&self) -> String {
        format!("{LINK_OFFER_PREFIX}{}", BASE64URL_NOPAD.encode(&self.to_bytes()))
    }

    /// Parses a link as pasted by a person: surrounding whitespace is ignored.
    pub fn from_link(link: &str) -> Result<Self, ProtoError> {
        let link = link.trim();
        if link.len() > MAX_LINK_OFFER_LEN {
            return Err(ProtoError::TooLarge {
                size: link.len(),
                limit: MAX_LINK_OFFER_LEN,
            });
        }
        let payload = link.strip_prefix(LINK_OFFER_PREFIX).ok_or(ProtoError::WrongLinkKind {
            expected: "cairn device link",
        })?;
        let bytes = BASE64URL_NOPAD
            .decode(payload.as_bytes())
            .map_err(|_| ProtoError::BadLinkEncoding)?;
        Self::from_bytes(&bytes)
    }
}

/// What the existing device hands the new one inside the link channel: the account
/// (its identity private key included), the device id granted, and the person's
/// contacts, verified marks and settings.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkHandOver {
    /// The account id.
    pub account_id: AccountId,
    /// The account identity key pair, private half included.
    pub identity: Vec<u8>,
    /// The account's display name.
    pub display_name: String,
    /// The device id the new device takes.
    pub device_id: DeviceId,
    /// The account's signed device list, as the granting device has it.
    pub device_list: SignedDeviceList,
    /// Prekey bundles of the account's devices.
    pub bundles: Vec<PrekeyBundle>,
    /// MLS key packages of the account's devices.
    pub key_packages: Vec<DeviceKeyPackage>,
    /// The contacts' cards.
    pub contacts: Vec<ContactCard>,
    /// Account ids of the contacts marked verified.
    pub verified: Vec<AccountId>,
    /// Settings, as keys and values.
    pub settings: Vec<(String, String)>,
}

impl std::fmt::Debug for LinkHandOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("LinkHandOver")
            .field("account_id", &self.account_id)
            .field("device_id", &self.device_id)
            .field("contacts", &self.contacts.len())
            .finish_non_exhaustive()
    }
}

impl LinkHandOver {
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Decodes within [`MAX_HAND_OVER_BYTES`] and checks the cards' shapes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let hand_over: LinkHandOver = decode_versioned(bytes, MAX_HAND_OVER_BYTES)?;
        for card in &hand_over.contacts {
            card.check()?;
        }
        Ok(hand_over)
    }
}

/// Largest page of history accepted, encoded.
pub const MAX_HISTORY_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Most messages one page of history carries.
pub const MAX_HISTORY_PAGE_MESSAGES: usize = 2_000;

/// A conversation a page of history has messages of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryConversation {
    /// The conversation id (a contact's account id, or a group id).
    pub id: Vec<u8>,
    /// Its title.
    pub title: String,
    /// When it started, Unix milliseconds.
    pub created_at: i64,
}

/// One message of the history, as the existing device stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryMessage {
    /// The message id.
    pub id: [u8; 16],
    /// The conversation it belongs to.
    pub conversation_id: Vec<u8>,
    /// The sender's account id.
    pub sender: AccountId,
    /// Send time, Unix milliseconds.
    pub sent_at: i64,
    /// The text.
    pub body: String,
    /// Its delivery state (`sent`, `delivered`, `read`, `received`).
    pub state: String,
    /// Whether this account sent it.
    pub outgoing: bool,
}

/// One page of the message history an existing device passes to a new one, if its
/// person agreed, inside the link channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The conversations this page's messages belong to.
    pub conversations: Vec<HistoryConversation>,
    /// Messages, oldest first.
    pub messages: Vec<HistoryMessage>,
    /// How many messages the whole history holds (for a progress bar).
    pub total: u64,
    /// Where the next page starts; `None` on the last.
    pub next: Option<u64>,
}

impl HistoryPage {
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Decodes within [`MAX_HISTORY_PAGE_BYTES`] and [`MAX_HISTORY_PAGE_MESSAGES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let page: HistoryPage = decode_versioned(bytes, MAX_HISTORY_PAGE_BYTES)?;
        if page.messages.len() > MAX_HISTORY_PAGE_MESSAGES {
            return Err(ProtoError::InvalidField {
                field: "messages",
                reason: format!("more than {MAX_HISTORY_PAGE_MESSAGES} in one page"),
            });
        }
        if page
            .messages
            .iter()
            .any(|m| !page.conversations.iter().any(|c| c.id == m.conversation_id))
        {
            return Err(ProtoError::InvalidField {
                field: "messages",
                reason: "a message of a conversation the page does not name".into(),
            });
        }
        Ok(page)
    }
}

/// Largest link protocol message: a hand-over and its framing.
pub const MAX_LINK_MESSAGE_BYTES: usize = MAX_HAND_OVER_BYTES + 64 * 1024;

/// What the new device asks the offering device, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkRequest {
    /// The first handshake message.
    Hello(Vec<u8>),
    /// "Has the person confirmed the code?"
    Ready,
    /// The new device's card, sealed in the channel.
    Card(Vec<u8>),
    /// The page of history that starts at `from` (0 for the first).
    History {
        /// Where the page starts (the previous page's `next`).
        from: u64,
    },
}

/// What the offering device answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkResponse {
    /// The handshake answer.
    Answer(Vec<u8>),
    /// Not confirmed yet: ask again.
    Wait,
    /// Confirmed: the hand-over, sealed in frames.
    HandOver(Vec<Vec<u8>>),
    /// Linked.
    Done,
    /// A page of history ([`HistoryPage`]), sealed in frames.
    History(Vec<Vec<u8>>),
    /// The person did not pass the history on (or it has all been sent).
    NoHistory,
    /// Refused, and why.
    Refused(String),
}

impl LinkRequest {
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }
    /// Decodes within [`MAX_LINK_MESSAGE_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        decode_versioned(bytes, MAX_LINK_MESSAGE_BYTES)
    }
}

impl LinkResponse {
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }
    /// Decodes within [`MAX_LINK_MESSAGE_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        decode_versioned(bytes, MAX_LINK_MESSAGE_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn offer() -> LinkOffer {
        LinkOffer {
            secret: [7; 32],
            transport_key: [9; 32],
            addresses: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            expires_at: 1_800_000_000,
        }
    }

    #[test]
    fn a_link_offer_survives_the_link_round_trip_and_other_links_are_refused() {
        let link = offer().to_link();
        assert_eq!(LinkOffer::from_link(&format!("  {link}\n")).unwrap(), offer());
        assert!(matches!(
            LinkOffer::from_link("cairn://invite/AAAA"),
            Err(ProtoError::WrongLinkKind { .. })
        ));
        assert!(matches!(
            LinkOffer::from_link("cairn://link/!!"),
            Err(ProtoError::BadLinkEncoding)
        ));
        let mut crowded = offer();
        crowded.addresses = vec!["/ip4/1.2.3.4/tcp/1".into(); MAX_OFFER_ADDRESSES + 1];
        assert!(LinkOffer::from_bytes(&crowded.to_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_links_never_panic(text in ".{0,512}", bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = LinkOffer::from_link(&text);
            let _ = LinkOffer::from_bytes(&bytes);
            let _ = LinkRequest::from_bytes(&bytes);
            let _ = LinkResponse::from_bytes(&bytes);
            let _ = HistoryPage::from_bytes(&bytes);
        }
    }
}
