//! Cairn's identities and keys.
//!
//! Owns: the account identity key (a Signal identity key pair shared by every device
//! of the account), each device's own keys, and the account id derived from the
//! identity key. Later: 1:1 Signal sessions, MLS groups, sealing envelopes, device
//! linking. Does not own: IO, the network, or SQL — keys are handed to the store as
//! bytes and come back the same way.

mod identity;

pub use identity::{AccountId, AccountIdentity, DeviceKeys, FIRST_DEVICE_ID};

/// Everything that can go wrong with keys and identities.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Stored or received key bytes do not form a valid key.
    #[error("invalid {what} key: {reason}")]
    InvalidKey { what: &'static str, reason: String },
    /// A device id outside Signal's range of 1..=127.
    #[error("device id {0} is outside 1..=127")]
    InvalidDeviceId(u8),
}
