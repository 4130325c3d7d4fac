//! The Tauri commands the UI calls, the shapes they return, and the mapping of core
//! errors to the plain words the UI shows.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use cairn_core::{CoreError, KeyVault, Messenger, Unlock};
use cairn_store::{KeySource, ProfileDir, StoreError};
use serde::Serialize;
use specta::Type;

/// Shortest passphrase accepted when the keyring is not used.
const MIN_PASSPHRASE_CHARS: usize = 8;

/// What the shell keeps between commands.
pub struct AppState {
    profile: ProfileDir,
    messenger: Mutex<Option<Messenger>>,
    vault: OnceLock<Result<KeyVault, String>>,
}

impl AppState {
    /// State for the profile in `dir`; nothing is opened until the UI asks.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            profile: ProfileDir::new(dir),
            messenger: Mutex::new(None),
            vault: OnceLock::new(),
        }
    }

    /// The OS keyring, asked once per run.
    fn vault(&self) -> Result<&KeyVault, AppError> {
        self.vault
            .get_or_init(|| KeyVault::os().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| CoreError::Store(StoreError::KeyringUnavailable(e.clone())).into())
    }
}

/// The account as the UI shows it.
#[derive(Debug, Clone, Serialize, Type)]
#[serde(rename_all = "camelCase")]
pub struct AccountView {
    account_id: String,
    display_name: String,
    device_id: u8,
    invite_link: String,
    /// The invite link as a QR code, an SVG document made by the `qrcode` crate.
    invite_qr_svg: String,
}

impl AccountView {
    fn of(messenger: &Messenger) -> Result<Self, AppError> {
        let info = messenger.account_info()?;
        Ok(Self {
            account_id: info.account_id,
            display_name: info.display_name,
            device_id: info.device_id,
            invite_link: info.invite_link,
            invite_qr_svg: messenger.invite_qr_svg()?,
        })
    }
}

/// Where the profile stands, which decides the screen the UI shows.
#[derive(Debug, Clone, Serialize, Type)]
#[serde(tag = "state")]
pub enum ProfileStatus {
    /// No profile yet: onboarding. `keyring` says whether the OS keyring can hold the
    /// key (otherwise the person must choose a passphrase).
    New { keyring: bool },
    /// A passphrase profile that is not unlocked yet.
    Locked,
    /// Open, but onboarding was interrupted before the account was created.
    NeedsAccount,
    /// Open, with its account.
    Ready { account: AccountView },
}

/// Error kinds the UI can react to.
#[derive(Debug, Clone, Copy, Serialize, Type, PartialEq, Eq)]
pub enum ErrorCode {
    WrongPassphrase,
    KeyringUnavailable,
    KeyMissing,
    ProfileInUse,
    InvalidInput,
    ProfileDamaged,
    Internal,
}

/// A failed command: a code for the UI's logic and a sentence for the person.
#[derive(Debug, Clone, Serialize, Type)]
pub struct AppError {
    code: ErrorCode,
    message: String,
}

impl AppError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::InvalidInput,
            message: message.into(),
        }
    }
}

impl From<CoreError> for AppError {
    fn from(error: CoreError) -> Self {
        use ErrorCode::*;
        let (code, message) = match &error {
            CoreError::Store(StoreError::WrongKey) => (
                WrongPassphrase,
                "That passphrase does not open this profile. Nothing was changed; try again.".into(),
            ),
            CoreError::Store(StoreError::KeyringUnavailable(detail)) => (
                KeyringUnavailable,
                format!(
                    "The system keyring is not available, so Cairn cannot unlock this profile by itself ({detail})."
                ),
            ),
            CoreError::Store(StoreError::KeyMissing) => (
                KeyMissing,
                "The system keyring no longer holds this profile's key, so the profile cannot be opened.".into(),
            ),
            CoreError::Store(StoreError::ProfileInUse) => (
                ProfileInUse,
                "This profile is already open in another Cairn window.".into(),
            ),
            CoreError::Store(StoreError::Corrupt(detail)) => (
                ProfileDamaged,
                format!("This profile's files are damaged and were left as they are: {detail}."),
            ),
            CoreError::InvalidDisplayName | CoreError::InvalidProfileName => (InvalidInput, error.to_string()),
            _ => (Internal, format!("Something went wrong: {error}.")),
        };
        tracing::warn!(?code, %error, "command failed");
        Self { code, message }
    }
}

impl From<StoreError> for AppError {
    fn from(error: StoreError) -> Self {
        CoreError::Store(error).into()
    }
}

fn status_of(messenger: &Messenger) -> Result<ProfileStatus, AppError> {
    if messenger.has_account() {
        Ok(ProfileStatus::Ready {
            account: AccountView::of(messenger)?,
        })
    } else {
        Ok(ProfileStatus::NeedsAccount)
    }
}

/// Where the profile stands. A keyring profile is opened here, without a prompt.
#[tauri::command]
#[specta::specta]
pub async fn profile_status(state: tauri::State<'_, AppState>) -> Result<ProfileStatus, AppError> {
    let mut slot = state.messenger.lock().expect("messenger lock");
    if let Some(messenger) = slot.as_ref() {
        return status_of(messenger);
    }
    match state.profile.key_source()? {
        None => Ok(ProfileStatus::New {
            keyring: state.vault().is_ok(),
        }),
        Some(KeySource::Passphrase { .. }) => Ok(ProfileStatus::Locked),
        Some(KeySource::Keyring) => {
            let messenger = Messenger::open_profile(&state.profile, Unlock::Keyring(state.vault()?))?;
            status_of(slot.insert(messenger))
        }
    }
}

/// Onboarding: creates the profile (unless an interrupted onboarding left one open)
/// and the account. Without a passphrase the key goes into the OS keyring.
#[tauri::command]
#[specta::specta]
pub async fn create_account(
    state: tauri::State<'_, AppState>,
    display_name: String,
    passphrase: Option<String>,
) -> Result<AccountView, AppError> {
    let mut slot = state.messenger.lock().expect("messenger lock");
    let messenger = match slot.take() {
        Some(messenger) => messenger,
        None => {
            // Check the name before anything is written to disk.
            cairn_core::normalize_display_name(&display_name)?;
            let unlock = match passphrase.as_deref() {
                Some(p) if p.chars().count() < MIN_PASSPHRASE_CHARS => {
                    return Err(AppError::invalid(format!(
                        "A passphrase needs at least {MIN_PASSPHRASE_CHARS} characters."
                    )))
                }
                Some(p) => Unlock::Passphrase(p),
                None => Unlock::Keyring(state.vault()?),
            };
            Messenger::create_profile(&state.profile, unlock)?
        }
    };
    let messenger = slot.insert(messenger);
    messenger.create_account(&display_name)?;
    AccountView::of(messenger)
}

/// Opens a passphrase profile.
#[tauri::command]
#[specta::specta]
pub async fn unlock(state: tauri::State<'_, AppState>, passphrase: String) -> Result<ProfileStatus, AppError> {
    let mut slot = state.messenger.lock().expect("messenger lock");
    if slot.is_none() {
        *slot = Some(Messenger::open_profile(
            &state.profile,
            Unlock::Passphrase(&passphrase),
        )?);
    }
    status_of(slot.as_ref().expect("just opened"))
}
