//! The versioned envelope every Cairn payload is encoded in: one version byte,
//! then the `postcard` encoding of the payload, nothing after it.
//!
//! Decoding checks the size limit before looking at a single byte, so an attacker
//! cannot make a decoder allocate or parse more than the limit allows.

use serde::{de::DeserializeOwned, Serialize};

use crate::ProtoError;

/// The wire version this build writes and reads.
pub const WIRE_VERSION: u8 = 1;

/// Encodes `value` as `[WIRE_VERSION] ++ postcard(value)`.
pub fn encode_versioned<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION];
    // Serialising our own in-memory types into a Vec cannot fail: postcard only
    // errors on writer exhaustion or unsupported serde features we do not use.
    let body = postcard::to_stdvec(value).expect("postcard encoding of a wire type");
    out.extend_from_slice(&body);
    out
}

/// Decodes bytes written by [`encode_versioned`], refusing anything over `limit`.
pub fn decode_versioned<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, ProtoError> {
    if bytes.len() > limit {
        return Err(ProtoError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(ProtoError::Empty)?;
    if version != WIRE_VERSION {
        return Err(ProtoError::UnsupportedVersion(version));
    }
    let (value, rest) = postcard::take_from_bytes::<T>(body).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtoError::TrailingBytes(rest.len()));
    }
    Ok(value)
}
