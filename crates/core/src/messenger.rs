//! The [`Messenger`]: an open profile and the account it holds.

use std::time::{SystemTime, UNIX_EPOCH};

use cairn_crypto::{AccountIdentity, DeviceKeys, FIRST_DEVICE_ID};
use cairn_proto::Invite;
use cairn_store::{AccountRecord, DeviceRecord, KdfParams, KeyVault, ProfileDb, ProfileDir};
use qrcode::{render::svg, EcLevel, QrCode};

use crate::{CoreError, Result};

/// How to unlock (or protect, when creating) a profile's database.
pub enum Unlock<'a> {
    /// With the key kept in this keyring.
    Keyring(&'a KeyVault),
    /// With a key derived from this passphrase.
    Passphrase(&'a str),
}

/// What a UI shows about the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    /// The account id.
    pub account_id: String,
    /// The chosen display name.
    pub display_name: String,
    /// This device's id within the account.
    pub device_id: u8,
    /// The invite link others can paste to add this account.
    pub invite_link: String,
}

struct Account {
    identity: AccountIdentity,
    device: DeviceKeys,
    display_name: String,
}

/// An open profile.
pub struct Messenger {
    db: ProfileDb,
    account: Option<Account>,
}

impl Messenger {
    /// Creates a new profile in `dir`, protected as `unlock` says.
    pub fn create_profile(dir: &ProfileDir, unlock: Unlock<'_>) -> Result<Self> {
        let db = match unlock {
            Unlock::Keyring(vault) => dir.create_with_keyring(vault)?,
            Unlock::Passphrase(passphrase) => {
                dir.create_with_passphrase(passphrase, KdfParams::recommended())?
            }
        };
        Ok(Self { db, account: None })
    }

    /// Opens the existing profile in `dir`.
    pub fn open_profile(dir: &ProfileDir, unlock: Unlock<'_>) -> Result<Self> {
        let db = match unlock {
            Unlock::Keyring(vault) => dir.open_with_keyring(vault)?,
            Unlock::Passphrase(passphrase) => dir.open_with_passphrase(passphrase)?,
        };
        let account = load_account(&db)?;
        Ok(Self { db, account })
    }

    /// Creates the account identity key and this device's keys, and stores them.
    pub fn create_account(&mut self, display_name: &str) -> Result<AccountInfo> {
        if self.account.is_some() {
            return Err(CoreError::AccountExists);
        }
        let display_name = normalize_display_name(display_name)?;
        let identity = AccountIdentity::generate();
        let device = DeviceKeys::generate(FIRST_DEVICE_ID)?;
        let now = unix_millis();
        self.db.save_identity(
            &AccountRecord {
                account_id: identity.account_id().to_string(),
                display_name: display_name.to_owned(),
                identity_key: identity.to_bytes().to_vec(),
                created_at: now,
            },
            &DeviceRecord {
                device_id: device.device_id(),
                registration_id: device.registration_id(),
                transport_seed: *device.transport_seed(),
                created_at: now,
            },
        )?;
        tracing::info!(account_id = %identity.account_id(), "account created");
        self.account = Some(Account {
            identity,
            device,
            display_name: display_name.to_owned(),
        });
        self.account_info()
    }

    /// The account, once created.
    pub fn account_info(&self) -> Result<AccountInfo> {
        let account = self.account.as_ref().ok_or(CoreError::NoAccount)?;
        Ok(AccountInfo {
            account_id: account.identity.account_id().to_string(),
            display_name: account.display_name.clone(),
            device_id: account.device.device_id(),
            invite_link: self.invite()?.to_link(),
        })
    }

    /// Whether the account has been created.
    pub fn has_account(&self) -> bool {
        self.account.is_some()
    }

    /// This account's contact invite.
    pub fn invite(&self) -> Result<Invite> {
        let account = self.account.as_ref().ok_or(CoreError::NoAccount)?;
        Ok(Invite {
            identity_key: account.identity.public_key().serialize().into_vec(),
            display_name: account.display_name.clone(),
            device_id: account.device.device_id(),
            transport_key: account.device.transport_public_key(),
        })
    }

    /// The invite link as a QR code in SVG, for the UI to show.
    pub fn invite_qr_svg(&self) -> Result<String> {
        Ok(qr_svg(&self.invite()?.to_link()))
    }
}

/// Trims a display name and checks that 1 to 64 characters remain.
pub fn normalize_display_name(name: &str) -> Result<&str> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(CoreError::InvalidDisplayName);
    }
    Ok(name)
}

/// Renders `text` as a QR code in SVG (medium error correction, quiet zone included).
pub(crate) fn qr_svg(text: &str) -> String {
    // An invite link is far below the QR capacity at level M (2331 bytes), so this
    // cannot fail for text we produce.
    let code =
        QrCode::with_error_correction_level(text, EcLevel::M).expect("text fits in a QR code");
    code.render::<svg::Color<'_>>()
        .min_dimensions(256, 256)
        .build()
}

fn load_account(db: &ProfileDb) -> Result<Option<Account>> {
    let (Some(account), Some(device)) = (db.account()?, db.device()?) else {
        return Ok(None);
    };
    Ok(Some(Account {
        identity: AccountIdentity::from_bytes(&account.identity_key)?,
        device: DeviceKeys::from_parts(
            device.device_id,
            device.registration_id,
            &device.transport_seed,
        )?,
        display_name: account.display_name,
    }))
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> KeyVault {
        KeyVault::with_store(keyring_core::mock::Store::new().unwrap())
    }

    #[test]
    fn alice_creates_an_account_and_finds_it_again_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let profile = ProfileDir::new(dir.path());
        let vault = vault();
        let created = {
            let mut messenger =
                Messenger::create_profile(&profile, Unlock::Keyring(&vault)).unwrap();
            assert!(matches!(
                messenger.account_info(),
                Err(CoreError::NoAccount)
            ));
            messenger.create_account("  Alice ").unwrap()
        };
        assert_eq!(created.display_name, "Alice");
        let reopened = Messenger::open_profile(&profile, Unlock::Keyring(&vault)).unwrap();
        assert_eq!(reopened.account_info().unwrap(), created);
        assert_eq!(
            Invite::from_link(&created.invite_link).unwrap(),
            reopened.invite().unwrap()
        );
    }

    #[test]
    fn an_account_is_created_once_and_needs_a_sensible_name() {
        let dir = tempfile::tempdir().unwrap();
        let vault = vault();
        let mut messenger =
            Messenger::create_profile(&ProfileDir::new(dir.path()), Unlock::Keyring(&vault))
                .unwrap();
        assert!(matches!(
            messenger.create_account("   "),
            Err(CoreError::InvalidDisplayName)
        ));
        assert!(matches!(
            messenger.create_account(&"x".repeat(65)),
            Err(CoreError::InvalidDisplayName)
        ));
        messenger.create_account("Bob").unwrap();
        assert!(matches!(
            messenger.create_account("Bob"),
            Err(CoreError::AccountExists)
        ));
    }

    #[test]
    fn the_invite_qr_code_decodes_to_the_invite_link() {
        let dir = tempfile::tempdir().unwrap();
        let vault = vault();
        let mut messenger =
            Messenger::create_profile(&ProfileDir::new(dir.path()), Unlock::Keyring(&vault))
                .unwrap();
        let info = messenger.create_account("Carol").unwrap();
        assert!(messenger.invite_qr_svg().unwrap().starts_with("<?xml"));
        // Render the same code as pixels and read it back with an independent decoder.
        let code = QrCode::with_error_correction_level(&info.invite_link, EcLevel::M).unwrap();
        let image = code
            .render::<image::Luma<u8>>()
            .module_dimensions(4, 4)
            .build();
        let mut prepared = rqrr::PreparedImage::prepare(image);
        let grids = prepared.detect_grids();
        assert_eq!(grids.len(), 1);
        let (_, text) = grids[0].decode().unwrap();
        assert_eq!(text, info.invite_link);
    }
}
