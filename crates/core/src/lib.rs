//! Cairn's core: the [`Messenger`], the one API the desktop app and `cairnd` drive.
//!
//! Owns: opening and creating profiles (which key source, which directory), creating
//! the account and this device's keys, and presenting the account to a UI (account
//! id, invite link and QR code). Later: contacts, conversations, delivery. Does not
//! own: any UI, SQL, or wire encoding — those live in the app, store and proto crates.

mod messenger;
mod paths;

pub use cairn_store::KeyVault;
pub use messenger::{normalize_display_name, AccountInfo, Messenger, Unlock};
pub use paths::{default_profile_dir, validate_profile_name, DEFAULT_PROFILE};

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The local store failed (wrong key, keyring unavailable, disk, …).
    #[error(transparent)]
    Store(#[from] cairn_store::StoreError),
    /// Keys were invalid.
    #[error(transparent)]
    Crypto(#[from] cairn_crypto::CryptoError),
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
}

/// Shorthand for results of this crate.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
