//! Cairn's identities and end-to-end encryption.
//!
//! Owns: the account identity key (a Signal identity key pair shared by every device
//! of the account), each device's own keys and prekeys, signed device lists, 1:1
//! Signal sessions, sealing envelope bodies to their recipient, safety numbers, and
//! MLS groups (openmls), and the device-link handshake (Noise). Does not own: IO, the network, or SQL —
//! storage is behind [`SignalStore`], which the store crate implements.

mod device_list;
mod group;
mod identity;
mod link;
mod mls_crypto;
mod prekeys;
mod safety_number;
mod seal;
mod session;

pub use cairn_proto::mailbox_of;
pub use cairn_proto::{AccountId, DeviceId};
pub use device_list::{sign_device_list, verify_device_list};
pub use group::{
    key_package_device, Group, GroupEvent, GroupIdentity, GroupProvider, GroupState, LeafName, MessageHeader,
    StateChange, GROUP_CIPHERSUITE, MAX_GROUP_MESSAGE_BYTES, MAX_GROUP_STATE_BYTES,
};
pub use identity::{new_account_id, AccountIdentity, DeviceKeys};
pub use libsignal_protocol::{IdentityKey, IdentityKeyPair};
pub use link::{answer_link, LinkChannel, LinkInitiator, LINK_NOISE_PATTERN, MAX_LINK_FRAME};
pub use mls_crypto::GroupCrypto;
pub use prekeys::{
    bundle_of, generate_kyber_prekey, generate_signed_prekey, signed_prekey_due, to_signal_bundle,
    SIGNED_PREKEY_ROTATION_MILLIS,
};
pub use safety_number::SafetyNumber;
pub use seal::{seal, unseal};
pub use session::{
    archive_session, decrypt, decryption_error, encrypt, has_session, prekey_message_identity, reports_current_chain,
    sending_chain_of, sends_in_chain, start_session, Ciphertext, MemorySignalStore, SignalStore, StoreFailure,
    StoreResult,
};

/// Everything that can go wrong with keys, sessions and sealing.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Stored or received key bytes do not form a valid key.
    #[error("invalid {what} key: {reason}")]
    InvalidKey {
        /// Which key.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Text that is not an account id.
    /// A device id outside Signal's range of 1..=127.
    #[error("device id {0} is outside 1..=127")]
    InvalidDeviceId(u8),
    /// A signature does not verify.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// A sealed body was not sealed to us, or was altered.
    #[error("the envelope's seal is broken (altered, or not for this account)")]
    SealBroken,
    /// A message this session has already decrypted (a replay or a duplicate copy).
    #[error("message already received")]
    DuplicateMessage,
    /// The peer's identity key is not the one pinned for the account.
    #[error("the identity key of {0} has changed")]
    UntrustedIdentity(String),
    /// No session with that peer device.
    #[error("no session with {0}")]
    NoSession(String),
    /// A message that does not decrypt or parse.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// The Signal library failed otherwise.
    #[error("signal protocol error: {0}")]
    Signal(String),
    /// The store failed.
    #[error("store failure: {0}")]
    Store(String),
    /// An MLS group operation failed (the message says which and why).
    #[error("group: {0}")]
    Group(String),
    /// The device-link handshake or channel failed (the message says how).
    #[error("device link: {0}")]
    Link(String),
    /// A wire payload inside was malformed.
    #[error(transparent)]
    Proto(#[from] cairn_proto::ProtoError),
}
