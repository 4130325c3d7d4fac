//! Cairn's wire types and their binary codec.
//!
//! Owns: everything that leaves a device — envelopes, their sealed bodies, the
//! content inside Signal sessions, group packets and group content, device lists, prekey bundles, invites, device-link offers — and a
//! versioned encoding (a version byte, then `postcard`) with a hard size limit on
//! every decode and typed decode errors; the peer cache's requests, answers and
//! signed acknowledgements, and the mailbox and proof-of-work derivations. Does not
//! own: keys, signatures, or IO.

mod cache;
mod codec;
mod device;
mod envelope;
mod group;
mod ids;
mod invite;
mod link;

pub use cache::{
    mailbox_of, Ack, CacheRefusal, CacheRequest, CacheResponse, EnvelopeId, Mailbox, MAX_ACK_IDS,
    MAX_CACHE_REQUEST_BYTES, MAX_CACHE_RESPONSE_BYTES, MAX_FETCH_BYTES, MAX_STORE_BATCH,
};
pub use codec::{decode_versioned, encode_versioned, WIRE_VERSION};
pub use device::{
    DeviceEntry, DeviceList, PrekeyBundle, SignedDeviceList, MAX_ALWAYS_ON, MAX_ALWAYS_ON_BYTES, MAX_DEVICES,
    MAX_DEVICE_LIST_BYTES,
};
pub use envelope::{
    Content, DirectSignal, Envelope, FailedEnvelope, MessageId, Receipt, ReceiptKind, ResendRequest, SealedBody,
    SealedInner, TextMessage, DEFAULT_TTL_SECS, MAX_CONTENT_BYTES, MAX_DECRYPTION_ERROR_BYTES, MAX_ENVELOPE_BYTES,
    MAX_RECEIPT_IDS, MAX_RESEND_ENVELOPES, MAX_SDP_BYTES, MAX_TEXT_BYTES, MAX_TTL_SECS,
};
pub use group::{
    check_group_name, is_group_id, GroupContent, GroupInfo, GroupPacket, GroupPart, GROUP_ID_LEN, MAX_GROUP_ACCOUNTS,
    MAX_GROUP_CONTENT_BYTES, MAX_GROUP_NAME_BYTES, MAX_GROUP_PARTS, MAX_GROUP_PART_BYTES,
};
pub use ids::{AccountId, DeviceId};
pub use invite::{
    ContactCard, DeviceKeyPackage, Invite, INVITE_LINK_PREFIX, MAX_DISPLAY_NAME_BYTES, MAX_INVITE_BYTES,
    MAX_INVITE_LINK_LEN, MAX_KEY_PACKAGE_BYTES,
};
pub use link::{
    HistoryConversation, HistoryMessage, HistoryPage, LinkHandOver, LinkOffer, LinkRequest, LinkResponse,
    LINK_OFFER_PREFIX, MAX_HAND_OVER_BYTES, MAX_HISTORY_PAGE_BYTES, MAX_HISTORY_PAGE_MESSAGES, MAX_LINK_MESSAGE_BYTES,
    MAX_LINK_OFFER_BYTES, MAX_LINK_OFFER_LEN,
};

/// Everything that can go wrong turning bytes or text from outside into a wire type.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// The input is larger than the decoder accepts for this type.
    #[error("input of {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The input is empty where a payload was expected.
    #[error("input is empty")]
    Empty,
    /// The version byte names an encoding this build does not speak.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// The bytes do not form a valid payload of the expected type.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// Bytes were left over after a complete payload.
    #[error("{0} trailing bytes after the payload")]
    TrailingBytes(usize),
    /// A link does not start with the scheme and path this type uses.
    #[error("not a {expected} link")]
    WrongLinkKind {
        /// What kind of link was expected.
        expected: &'static str,
    },
    /// A link's payload is not valid base64url.
    #[error("link payload is not valid base64url")]
    BadLinkEncoding,
    /// A field holds a value outside what the type allows.
    #[error("invalid field {field}: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
}
