//! What the core hands to its callers: envelopes to deliver, events to show, and
//! read-only views of contacts and messages.

use cairn_proto::{AccountId, DeviceId, Envelope, MessageId};
pub use cairn_store::DeliveryState;
use cairn_store::MessageRecord;

/// An envelope to deliver to one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The recipient account.
    pub account_id: AccountId,
    /// The recipient device.
    pub device_id: DeviceId,
    /// The sealed envelope (its `mailbox` names the device).
    pub envelope: Envelope,
    /// The message it carries to the contact, if any: once a device or cache takes
    /// the envelope, that message is *sent*.
    pub message: Option<MessageId>,
}

/// A message in a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    /// Random 128-bit id.
    pub id: MessageId,
    /// The other party's account id (1:1 conversations are named by it).
    pub conversation: String,
    /// The sender's account id.
    pub sender: AccountId,
    /// Whether this account sent it.
    pub outgoing: bool,
    /// Send time, Unix milliseconds.
    pub sent_at: i64,
    /// The text.
    pub body: String,
    /// Delivery state.
    pub state: DeliveryState,
    /// While `Sent` to an offline recipient: how many peer caches hold it (0 when it
    /// went straight to a device).
    pub held_by: u32,
}

impl MessageView {
    pub(crate) fn of(record: MessageRecord) -> Option<Self> {
        Some(Self {
            id: record.id.as_slice().try_into().ok()?,
            conversation: String::from_utf8(record.conversation_id).ok()?,
            sender: record.sender,
            outgoing: record.outgoing,
            sent_at: record.sent_at,
            body: record.body,
            state: record.state,
            held_by: record.held_by,
        })
    }
}

/// A contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactView {
    /// Their account id.
    pub account_id: AccountId,
    /// Their display name.
    pub display_name: String,
    /// Marked verified after comparing safety numbers.
    pub verified: bool,
    /// Their identity key changed and the change is not accepted: sending is blocked.
    pub identity_changed: bool,
    /// How many devices their list names.
    pub devices: usize,
}

/// Something that happened, for the UI and `cairnd`: the messenger queues them as they
/// happen ([`crate::Messenger::take_events`]), the courier adds what only the network
/// knows (presence, addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new message: arrived, a copy of one sent from another own device, or sent here.
    Message(MessageView),
    /// An outgoing message moved to a new delivery state.
    StateChanged {
        /// The message.
        id: MessageId,
        /// Its new state.
        state: DeliveryState,
    },
    /// A contact was added or changed (name, devices).
    ContactChanged(AccountId),
    /// This account's device list changed (a device was linked or removed; this
    /// device itself may be the one removed, see [`crate::Messenger::is_listed`]).
    DevicesChanged,
    /// A group was joined, or its members, name or admins changed.
    GroupChanged(String),
    /// A contact's identity key changed; sending to them is blocked until accepted.
    IdentityChanged(AccountId),
    /// A device of this contact (or of this account) came online or went away, or a
    /// direct session with it opened or closed.
    PresenceChanged(AccountId),
    /// Where this device can be reached changed (its invite with it).
    AccountChanged,
    /// A device link this device serves moved on (a code to confirm, the hand-over,
    /// history passed on).
    LinkChanged,
    /// A device (of a contact, or this account's own) signals about a direct session;
    /// for the courier, not for display.
    DirectSignal {
        /// The sending account.
        account: AccountId,
        /// The sending device.
        device: DeviceId,
        /// The offer or answer.
        signal: cairn_proto::DirectSignal,
    },
}

/// How this device reaches a contact now (the best of their devices), best first;
/// what a conversation's header and `cairnd` show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "specta", derive(specta::Type))]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// A direct WebRTC session is open.
    Direct,
    /// A libp2p connection of their own: the same network, a reachable address, or a
    /// hole punched through both NATs.
    Connected,
    /// Only through a relay's circuit (which sees who talks to whom, not what).
    Relayed,
    /// Not connected: what is sent waits with peers that hold it until they return.
    Away,
}

impl Route {
    /// The route's name, as `cairnd` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Connected => "connected",
            Route::Relayed => "relayed",
            Route::Away => "away",
        }
    }
}

/// The outcome of processing an incoming envelope (what it makes this device send
/// in answer, receipts and cards, is in the outbox).
#[derive(Debug, Default)]
pub struct Received {
    /// What to show.
    pub events: Vec<Event>,
}
