//! Cairn's core: the [`Messenger`], the one API the desktop app and `cairnd` drive.
//!
//! Owns: opening and creating profiles, the account and this device's keys,
//! contacts and invites, 1:1 conversations (sealed envelopes in; out only through the
//! outbox, sealed as they leave; delivery states), safety numbers and identity
//! changes, and this account's device list. It is transport-agnostic: it consumes
//! envelopes and hands out what its outbox holds, and the network layer moves them. Does not own: any UI, SQL, or wire encoding — those live
//! in the app, store and proto crates.

pub use cairn_proto::{AccountId, DeviceId};

mod contacts;
mod courier;
mod devices;
mod groups;
mod joining;
mod linking;
mod lists;
mod messaging;
mod messenger;
mod outbox;
mod paths;
mod qr;
mod sealing;
mod settings;
mod views;

pub use cairn_crypto::SafetyNumber;
pub use cairn_net::{
    CacheConfig, CacheLimits, Clock, Delivery, DirectConfig, IceServer, ManualClock, Multiaddr, NodeConfig,
};
pub use cairn_proto::LinkOffer;
pub use cairn_store::KeyVault;
pub use courier::{answer_for, Courier, SharedMessenger};
pub use devices::{always_on_peer, DeviceView, LinkGrant};
pub use groups::{GroupMemberView, GroupView};
pub use joining::{join_by_link, LinkStep};
pub use linking::{ExistingDeviceLink, HistoryProgress, NewDeviceLink, ServedLinkState, LINK_OFFER_VALIDITY};
pub use messenger::{invite_route, normalize_display_name, AccountInfo, Messenger, Unlock};
pub use outbox::{Handed, OutboxEntry, OutboxId, QueuedEnvelope};
pub use paths::{default_profile_dir, validate_profile_name, DEFAULT_PROFILE};
pub use qr::{qr_svg, read_qr_frame, read_qr_image};
pub use settings::{DEFAULT_CACHE_QUOTA_MIB, DEFAULT_MESSAGE_TTL_DAYS, MAX_CACHE_QUOTA_MIB, MAX_MESSAGE_TTL_DAYS};
pub use views::{ContactView, DeliveryState, Event, MessageView, Outgoing, Received, Route};

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The local store failed (wrong key, keyring unavailable, disk, …).
    #[error(transparent)]
    Store(#[from] cairn_store::StoreError),
    /// Keys, sessions or seals failed.
    #[error(transparent)]
    Crypto(#[from] cairn_crypto::CryptoError),
    /// Bytes or text from outside did not decode.
    #[error(transparent)]
    Proto(#[from] cairn_proto::ProtoError),
    /// The profile has no account yet.
    #[error("this profile has no account yet")]
    NoAccount,
    /// The profile already has an account.
    #[error("this profile already has an account")]
    AccountExists,
    /// A display name that is empty or too long.
    #[error("a display name needs 1 to 64 characters")]
    InvalidDisplayName,
    /// A profile name that cannot be a directory name.
    #[error("profile names use 1 to 64 letters, digits, '-' or '_'")]
    InvalidProfileName,
    /// The platform gave no per-user data directory.
    #[error("no data directory is known for this user")]
    NoDataDir,
    /// The text is empty or too long to send.
    #[error("a message needs some text and at most 64 KiB")]
    InvalidText,
    /// A setting value that cannot be used (the message says which and why).
    #[error("invalid setting: {0}")]
    InvalidSetting(String),
    /// No such contact.
    #[error("no contact {0}")]
    UnknownContact(AccountId),
    /// No such message.
    #[error("no such message")]
    UnknownMessage,
    /// Only a failed message can be retried.
    #[error("the message has not failed")]
    NotFailed,
    /// An envelope from a known device that its session could not decrypt (its
    /// chain was gone by the time it arrived); the device is asked to send it again.
    #[error("an envelope from {0} did not decrypt")]
    Undecryptable(AccountId),
    /// This is this account's own invite.
    #[error("that is your own invite")]
    OwnInvite,
    /// An own device named this account itself as a contact.
    #[error("an own device sent this account as a contact")]
    SelfAsContact,
    /// The contact's identity key changed; nothing is sent until the change is accepted.
    #[error("the safety number with {0} has changed; accept the change before sending")]
    IdentityChanged(AccountId),
    /// No identity change is pending for that contact.
    #[error("no identity change is pending for {0}")]
    NoIdentityChange(AccountId),
    /// A device list older than the one already held.
    #[error("device list version {got} is older than the known version {have}")]
    DeviceListRollback {
        /// The version held.
        have: u64,
        /// The version received.
        got: u64,
    },
    /// A card or list claims to be this account's but is not.
    #[error("not signed by this account")]
    NotOurAccount,
    /// A card whose account does not match its sender.
    #[error("a card that does not belong to its sender")]
    CardMismatch,
    /// Content only this account's own devices may send came from elsewhere.
    #[error("content only an own device may send")]
    NotFromOwnDevice,
    /// An envelope for another device's mailbox.
    #[error("the envelope is for another device")]
    WrongMailbox,
    /// An envelope this device has already processed.
    #[error("duplicate envelope")]
    Duplicate,
    /// No device of the contact can be reached yet (no session, no bundle).
    #[error("no device of {0} can be reached yet")]
    NoReachableDevice(AccountId),
    /// An envelope from an account that is not a contact (kept until it becomes one).
    #[error("{0} is not a contact")]
    UnknownSender(AccountId),
    /// Someone who does not hold this account's invite tried to introduce themselves.
    #[error("{0} tried to add you without your invite")]
    Uninvited(AccountId),
    /// A message id already used by another sender or conversation.
    #[error("a message id collides with another message")]
    MessageIdCollision,
    /// The account already has as many devices as a device list may hold.
    #[error("the account has as many devices as it can")]
    TooManyDevices,
    /// The network layer failed.
    #[error(transparent)]
    Net(#[from] cairn_net::NetError),
    /// A QR code could not be rendered.
    #[error("QR code: {0}")]
    QrCode(String),
    /// No group with this id on this device.
    #[error("no group {0}")]
    UnknownGroup(String),
    /// Only a group's admins may do this (or this device is no longer in the group).
    #[error("only an admin of the group may do that")]
    NotGroupAdmin,
    /// A contact's devices have handed out no key package yet, so none can be added.
    #[error("{0} cannot be added to groups yet (no key package from their devices)")]
    NoKeyPackage(AccountId),
    /// A group message or request that is not allowed.
    #[error("group: {0}")]
    GroupRefused(String),
    /// An envelope from a device its account removed (dropped).
    #[error("an envelope from a device {0} removed")]
    FromRemovedDevice(AccountId),
    /// Another device of this account removed this one: it sends nothing more.
    #[error("this device was removed from your account on another of your devices")]
    DeviceRemoved,
    /// A device link that cannot go ahead (the offer expired, was used or changed).
    #[error("device link refused: {0}")]
    LinkRefused(String),
}

/// Who has to act before an operation that failed can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorOwner {
    /// The person: a choice to make or change (a name, a setting, accepting a new
    /// safety number, adding a contact), or an action this device may not take.
    Person,
    /// Another device: it sent something malformed, forged, replayed, out of order or
    /// about something this device does not have. Sending it again changes nothing.
    Peer,
    /// This machine: its disk, keyring or network. The same step may succeed later.
    Machine,
}

impl CoreError {
    /// Who has to act for this error to go away.
    pub fn owner(&self) -> ErrorOwner {
        use cairn_store::StoreError as S;
        match self {
            Self::Store(S::WrongKey | S::KeyMissing | S::ProfileInUse | S::AlreadyExists(_))
            | Self::NoAccount
            | Self::AccountExists
            | Self::InvalidDisplayName
            | Self::InvalidProfileName
            | Self::InvalidText
            | Self::InvalidSetting(_)
            | Self::NotFailed
            | Self::OwnInvite
            | Self::IdentityChanged(_)
            | Self::NoIdentityChange(_)
            | Self::UnknownSender(_)
            | Self::TooManyDevices
            | Self::DeviceRemoved => ErrorOwner::Person,
            Self::Store(_)
            | Self::Crypto(cairn_crypto::CryptoError::Store(_))
            | Self::Net(_)
            | Self::NoDataDir
            | Self::QrCode(_) => ErrorOwner::Machine,
            Self::Crypto(_)
            | Self::Proto(_)
            | Self::UnknownContact(_)
            | Self::UnknownMessage
            | Self::Undecryptable(_)
            | Self::SelfAsContact
            | Self::DeviceListRollback { .. }
            | Self::NotOurAccount
            | Self::CardMismatch
            | Self::NotFromOwnDevice
            | Self::WrongMailbox
            | Self::Duplicate
            | Self::NoReachableDevice(_)
            | Self::Uninvited(_)
            | Self::MessageIdCollision
            | Self::UnknownGroup(_)
            | Self::NotGroupAdmin
            | Self::NoKeyPackage(_)
            | Self::GroupRefused(_)
            | Self::FromRemovedDevice(_)
            | Self::LinkRefused(_) => ErrorOwner::Peer,
        }
    }

    /// Whether the same step may go through later, so what caused it is kept (an
    /// envelope is answered *not now*): the trouble is on this side — the machine, or
    /// a decision the person has yet to make. What a peer got wrong stays wrong.
    pub fn is_temporary(&self) -> bool {
        self.owner() != ErrorOwner::Peer
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Delivery;

    /// The account id of someone in these tests ("bob" → "bobaaaa…").
    fn someone(name: &str) -> AccountId {
        AccountId::parse(&format!("{name:a<26}")).unwrap()
    }

    #[test]
    fn what_this_side_must_fix_is_answered_not_now_and_what_a_peer_got_wrong_is_refused() {
        let this_side = [
            CoreError::Store(cairn_store::StoreError::Io(std::io::Error::other("disk full"))),
            CoreError::Crypto(cairn_crypto::CryptoError::Store("busy".into())),
            CoreError::IdentityChanged(someone("bob")),
            CoreError::UnknownSender(someone("carol")),
            CoreError::NoAccount,
        ];
        for error in this_side {
            assert_ne!(error.owner(), ErrorOwner::Peer, "{error}");
            assert_eq!(answer_for(&Err(error)), Delivery::Later);
        }
        let peers_fault = [
            CoreError::WrongMailbox,
            CoreError::NotFromOwnDevice,
            CoreError::SelfAsContact,
            CoreError::MessageIdCollision,
            CoreError::FromRemovedDevice(someone("bob")),
            CoreError::DeviceListRollback { have: 3, got: 2 },
        ];
        for error in peers_fault {
            assert_eq!(error.owner(), ErrorOwner::Peer, "{error}");
            assert_eq!(answer_for(&Err(error)), Delivery::Refused);
        }
        // A copy already taken is answered as taken, whoever sent it again.
        assert_eq!(answer_for(&Err(CoreError::Duplicate)), Delivery::Accepted);
    }
}
