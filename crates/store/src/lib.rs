//! Cairn's encrypted local store.
//!
//! Owns: the SQLCipher profile database (schema migrations, and a view per part of the
//! profile — [`ProfileDb::own`], [`ProfileDb::contacts`], [`ProfileDb::sessions`],
//! [`ProfileDb::messages`], [`ProfileDb::settings`], [`ProfileDb::outbox`],
//! [`ProfileDb::held`], [`ProfileDb::peers`], [`ProfileDb::groups`] — each the only
//! code that touches its tables) and the database key — 32 random
//! bytes kept in the OS keyring, or, where no keyring is reachable, derived from a
//! passphrase with Argon2id. Does not own: the network, or what keys mean (the
//! crypto crate hands keys over as bytes, and the store implements its
//! `SignalStore`).
//!
//! A profile is a directory holding `profile.db` (the SQLCipher database) and
//! `key.json` (plaintext: only *where* the key comes from, never the key). The peer
//! cache keeps the sealed envelopes it holds for others in a database of its own
//! ([`CacheDb`]).

/// Declares a view of the tables one part of a profile owns: the profile's connection,
/// borrowed, and (in the invoking module) the only queries that touch those tables.
macro_rules! tables {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub struct $name<'db> {
            conn: &'db rusqlite::Connection,
        }

        impl<'db> $name<'db> {
            pub(crate) fn new(conn: &'db rusqlite::Connection) -> Self {
                Self { conn }
            }
        }
    };
}

mod cache;
mod contacts;
mod db;
mod groups;
mod held;
mod key;
mod message_state;
mod messages;
mod migrations;
mod outbox;
mod own;
mod peers;
mod profile_dir;
mod settings;
mod signal;

pub use cache::{CacheDb, CacheLimits, Held, Page, ToHold};
pub use contacts::{ContactRecord, Contacts, PinnedIdentity};
pub use db::ProfileDb;
pub use groups::{GroupRecord, Groups, PendingGroupMessage};
pub use held::HeldEnvelopes;
pub use key::{DbKey, KdfParams, KeyVault, KEYRING_SERVICE};
pub use message_state::DeliveryState;
pub use messages::{MessageRecord, Messages, NewMessage};
pub use migrations::{migrations, SCHEMA_VERSION};
pub use outbox::{NewOutgoing, Outbox, QueuedRecord, SentRecord};
pub use own::{AccountRecord, DeviceRecord, OwnAccount};
pub use peers::PeerAddresses;
pub use profile_dir::{KeySource, ProfileDir};
pub use settings::Settings;
pub use signal::Sessions;

/// Everything that can go wrong in the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key (or the passphrase it came from) does not open the database.
    /// Nothing was written to the file.
    #[error("the key does not open this profile's database")]
    WrongKey,
    /// No OS keyring (Secret Service, Keychain, Credential Manager) answered.
    #[error("no OS keyring is available: {0}")]
    KeyringUnavailable(String),
    /// The keyring works but holds no key for this profile.
    #[error("the OS keyring holds no key for this profile")]
    KeyMissing,
    /// The database or profile was expected but is not there.
    #[error("not found: {0}")]
    NotFound(String),
    /// A profile was to be created where one already exists.
    #[error("a profile already exists at {0}")]
    AlreadyExists(String),
    /// Another running Cairn has this profile open.
    #[error("the profile is open in another Cairn window")]
    ProfileInUse,
    /// A file of the profile holds something it should not (it was not changed).
    #[error("corrupt profile data: {0}")]
    Corrupt(String),
    /// The passphrase path could not derive a key.
    #[error("key derivation failed: {0}")]
    Kdf(String),
    /// A schema migration failed; the database stays at its earlier version.
    #[error("schema migration failed: {0}")]
    Migration(String),
    /// The peer cache would not hold an envelope.
    #[error("refused: {0}")]
    Refused(#[from] cairn_proto::CacheRefusal),
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file system reported an error.
    #[error("file error: {0}")]
    Io(#[from] std::io::Error),
}

/// Shorthand for results of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
