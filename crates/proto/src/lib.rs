//! Cairn's wire types and their binary codec.
//!
//! Owns: the payloads that leave a device (today the contact invite), a versioned
//! encoding (a version byte, then `postcard`), hard size limits on every decode, and
//! typed decode errors. Does not own: keys, IO, or any notion of who may read what.

mod codec;
mod invite;

pub use codec::{decode_versioned, encode_versioned, WIRE_VERSION};
pub use invite::{Invite, INVITE_LINK_PREFIX, MAX_INVITE_BYTES, MAX_INVITE_LINK_LEN};

/// Everything that can go wrong turning bytes or text from outside into a wire type.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// The input is larger than the decoder accepts for this type.
    #[error("input of {size} bytes is over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
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
    WrongLinkKind { expected: &'static str },
    /// A link's payload is not valid base64url.
    #[error("link payload is not valid base64url")]
    BadLinkEncoding,
    /// A field holds a value outside what the type allows.
    #[error("invalid field {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
}
