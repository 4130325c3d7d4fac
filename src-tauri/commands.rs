//! The Tauri commands the UI calls, the shapes they return, and the mapping of core
//! errors to the plain words the UI shows.

use std::path::PathBuf;
use std::sync::OnceLock;

use cairn_core::{
    AccountId, ContactView, CoreError, DeliveryState, DeviceId, GroupView, KeyVault, LinkStep, MessageView, Messenger,
    Route, ServedLinkState, SharedMessenger, Unlock,
};
use cairn_store::{KeySource, ProfileDir, StoreError};
use serde::Serialize;
use specta::Type;
use tauri::AppHandle;

/// Shortest passphrase accepted when the keyring is not used.
const MIN_PASSPHRASE_CHARS: usize = 8;

/// What the shell keeps between commands.
pub struct AppState {
    pub(crate) profile: ProfileDir,
    pub(crate) messenger: SharedMessenger,
    vault: OnceLock<Result<KeyVault, String>>,
    /// The network node, once started.
    pub(crate) network: OnceLock<cairn_core::Courier>,
    pub(crate) network_starting: std::sync::atomic::AtomicBool,
    /// The app, once it runs: events go to its window.
    pub(crate) app: OnceLock<AppHandle>,
}

impl AppState {
    /// State for the profile in `dir`; nothing is opened until the UI asks.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            profile: ProfileDir::new(dir),
            messenger: SharedMessenger::default(),
            vault: OnceLock::new(),
            network: OnceLock::new(),
            network_starting: Default::default(),
            app: OnceLock::new(),
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
    /// How many addresses the invite carries (0 until the network listens).
    addresses: u32,
    /// Another device of the account removed this one: it receives and sends nothing new.
    removed: bool,
}

impl AccountView {
    pub(crate) fn of(messenger: &Messenger) -> Result<Self, AppError> {
        let info = messenger.account_info()?;
        Ok(Self {
            account_id: info.account_id.to_string(),
            display_name: info.display_name,
            device_id: info.device_id.get(),
            invite_link: info.invite_link,
            invite_qr_svg: messenger.invite_qr_svg()?,
            addresses: messenger.invite()?.addresses.len() as u32,
            removed: !messenger.is_listed()?,
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
    NotOpen,
    IdentityChanged,
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

/// An account id the UI passed, checked.
fn account_id(text: &str) -> Result<AccountId, AppError> {
    AccountId::parse(text).map_err(|_| AppError::invalid("not an account id"))
}

/// Account ids the UI passed, checked.
fn account_ids(texts: &[String]) -> Result<Vec<AccountId>, AppError> {
    texts.iter().map(|text| account_id(text)).collect()
}

/// A device id the UI passed, checked.
fn checked_device(id: u8) -> Result<DeviceId, AppError> {
    DeviceId::new(id).map_err(|_| AppError::invalid("not a device id"))
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
            CoreError::IdentityChanged(_) => (
                IdentityChanged,
                "The safety number with this contact has changed. Nothing is sent until you accept the change.".into(),
            ),
            CoreError::Proto(_) => (InvalidInput, "That is not a valid Cairn invite link.".into()),
            CoreError::OwnInvite => (InvalidInput, "That is your own invite.".into()),
            CoreError::QrCode(detail) => (
                InvalidInput,
                format!("No invite could be read from that picture: {detail}."),
            ),
            CoreError::NoReachableDevice(_) => (
                InvalidInput,
                "None of this contact's devices can be reached yet: wait for their reply to your invite.".into(),
            ),
            CoreError::InvalidDisplayName
            | CoreError::InvalidProfileName
            | CoreError::InvalidText
            | CoreError::InvalidSetting(_)
            | CoreError::UnknownContact(_)
            | CoreError::UnknownGroup(_)
            | CoreError::NotGroupAdmin
            | CoreError::NoKeyPackage(_)
            | CoreError::GroupRefused(_)
            | CoreError::LinkRefused(_)
            | CoreError::DeviceRemoved => (InvalidInput, error.to_string()),
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
pub async fn profile_status(app: AppHandle, state: tauri::State<'_, AppState>) -> Result<ProfileStatus, AppError> {
    let status = profile_status_now(&state);
    crate::network::ensure_started(&app);
    status
}

fn profile_status_now(state: &AppState) -> Result<ProfileStatus, AppError> {
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
            let messenger = open(&state.profile, Unlock::Keyring(state.vault()?))?;
            status_of(slot.insert(messenger))
        }
    }
}

/// Onboarding: creates the profile (unless an interrupted onboarding left one open)
/// and the account. Without a passphrase the key goes into the OS keyring.
#[tauri::command]
#[specta::specta]
pub async fn create_account(
    app: AppHandle,
    state: tauri::State<'_, AppState>,
    display_name: String,
    passphrase: Option<String>,
) -> Result<AccountView, AppError> {
    let view = create_account_now(&state, display_name, passphrase);
    crate::network::ensure_started(&app);
    view
}

fn create_account_now(
    state: &AppState,
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
pub async fn unlock(
    app: AppHandle,
    state: tauri::State<'_, AppState>,
    passphrase: String,
) -> Result<ProfileStatus, AppError> {
    let status = {
        let mut slot = state.messenger.lock().expect("messenger lock");
        if slot.is_none() {
            *slot = Some(open(&state.profile, Unlock::Passphrase(&passphrase))?);
        }
        status_of(slot.as_ref().expect("just opened"))
    };
    crate::network::ensure_started(&app);
    status
}

/// The account as it stands now (its invite carries the addresses the node listens on).
#[tauri::command]
#[specta::specta]
pub async fn account(state: tauri::State<'_, AppState>) -> Result<AccountView, AppError> {
    let slot = state.messenger.lock().expect("messenger lock");
    AccountView::of(slot.as_ref().ok_or_else(|| AppError {
        code: ErrorCode::NotOpen,
        message: "The profile is not open yet.".into(),
    })?)
}

/// Wakes the delivery loop, if the network runs.
fn wake_network(state: &AppState) {
    if let Some(network) = state.network.get() {
        network.wake();
    }
}

/// Opens the profile and does what is due on every start: a signed prekey older than
/// the rotation period is replaced, and contacts are told (through the outbox).
fn open(profile: &ProfileDir, unlock: Unlock<'_>) -> Result<Messenger, CoreError> {
    let mut messenger = Messenger::open_profile(profile, unlock)?;
    if messenger.has_account() {
        messenger.rotate_signed_prekey_if_due()?;
    }
    Ok(messenger)
}

/// Runs `work` on the open messenger.
/// Runs `work` on the open messenger, then tells the UI what it changed (the events
/// it queued, as the courier does for what arrives). The work commits to the profile
/// (an fsync) or seals: it runs as blocking work, so the runtime's other threads keep
/// the network and its handshakes moving meanwhile.
fn with_messenger<T>(
    state: &AppState,
    work: impl FnOnce(&mut Messenger) -> Result<T, CoreError>,
) -> Result<T, AppError> {
    tokio::task::block_in_place(|| with_messenger_now(state, work))
}

fn with_messenger_now<T>(
    state: &AppState,
    work: impl FnOnce(&mut Messenger) -> Result<T, CoreError>,
) -> Result<T, AppError> {
    let (outcome, events) = {
        let mut slot = state.messenger.lock().expect("messenger lock");
        let messenger = slot.as_mut().ok_or_else(|| AppError {
            code: ErrorCode::NotOpen,
            message: "The profile is not open yet.".into(),
        })?;
        let outcome = work(messenger);
        let events: Vec<_> = messenger
            .take_events()
            .into_iter()
            .flat_map(|event| crate::events::for_ui(messenger, state.network.get(), event))
            .collect();
        (outcome, events)
    };
    if let Some(app) = state.app.get() {
        for event in &events {
            event.emit(app);
        }
    }
    Ok(outcome?)
}

/// A contact as the UI lists it.
#[derive(Debug, Clone, Serialize, Type)]
#[serde(rename_all = "camelCase")]
pub struct ContactItem {
    account_id: String,
    display_name: String,
    verified: bool,
    /// Their identity key changed; the conversation shows a warning and sending is off.
    identity_changed: bool,
    devices: u32,
    /// A device of theirs is connected to this one now.
    online: bool,
    /// A direct (WebRTC) session to a device of theirs is open now.
    direct: bool,
    /// How this device reaches theirs now.
    route: Route,
}

impl From<ContactView> for ContactItem {
    fn from(c: ContactView) -> Self {
        Self {
            account_id: c.account_id.to_string(),
            display_name: c.display_name,
            verified: c.verified,
            identity_changed: c.identity_changed,
            devices: c.devices as u32,
            online: false,
            direct: false,
            route: Route::Away,
        }
    }
}

/// A message as the UI shows it.
#[derive(Debug, Clone, Serialize, Type)]
#[serde(rename_all = "camelCase")]
pub struct MessageItem {
    /// Hex of the 128-bit message id.
    id: String,
    /// The contact's account id, or the group's id.
    conversation: String,
    sender: String,
    outgoing: bool,
    /// Unix milliseconds.
    sent_at: f64,
    body: String,
    state: DeliveryState,
    /// While sent to an offline recipient: how many peers hold it for them (0 when it
    /// went to a device directly).
    held_by: u32,
}

impl From<MessageView> for MessageItem {
    fn from(m: MessageView) -> Self {
        Self {
            id: m.id.iter().map(|b| format!("{b:02x}")).collect(),
            conversation: m.conversation,
            sender: m.sender.to_string(),
            outgoing: m.outgoing,
            sent_at: m.sent_at as f64,
            body: m.body,
            state: m.state,
            held_by: m.held_by,
        }
    }
}

/// A safety number: 12 groups of 5 digits and the scannable form as a QR code.
#[derive(Debug, Clone, Serialize, Type)]
#[serde(rename_all = "camelCase")]
pub struct SafetyNumberView {
    groups: Vec<String>,
    qr_svg: String,
    verified: bool,
    /// The number a changed, not yet accepted key would give (to compare first).
    pending_groups: Option<Vec<String>>,
}

/// The settings a person can change.
#[derive(Debug, Clone, Serialize, Type)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    read_receipts: bool,
    /// STUN/TURN server URLs for direct sessions (used from the next start).
    ice_servers: Vec<String>,
    /// How much this device holds for others' offline contacts, in MiB (used from the
    /// next start; 0 holds nothing).
    cache_quota_mib: u32,
    /// How long this device's messages may wait in peer caches, in days.
    message_ttl_days: u32,
    /// Always-on nodes (multiaddrs ending in `/p2p/<peer id>`) that hold this account's
    /// mail while its devices are offline; contacts learn them from the device list.
    always_on_nodes: Vec<String>,
}

fn settings_of(m: &Messenger) -> Result<Settings, CoreError> {
    Ok(Settings {
        read_receipts: m.read_receipts()?,
        ice_servers: m.ice_servers()?,
        cache_quota_mib: m.cache_quota_mib()?,
        message_ttl_days: m.message_ttl_days()?,
        always_on_nodes: m.always_on_nodes()?,
    })
}

/// A contact with its presence (from the courier, when the network runs).
pub(crate) fn contact_item(
    m: &Messenger,
    courier: Option<&cairn_core::Courier>,
    account_id: &AccountId,
) -> Result<ContactItem, CoreError> {
    let contact = m.contact(account_id)?;
    let keys: Vec<[u8; 32]> = m.device_keys_of(account_id)?.into_iter().map(|(_, key)| key).collect();
    Ok(ContactItem {
        online: courier.is_some_and(|courier| courier.any_online(&keys)),
        direct: courier.is_some_and(|courier| courier.any_direct(&keys)),
        route: courier.map_or(Route::Away, |courier| courier.route_to(&keys)),
        ..ContactItem::from(contact)
    })
}

/// All contacts, by name.
#[tauri::command]
#[specta::specta]
pub async fn contacts(state: tauri::State<'_, AppState>) -> Result<Vec<ContactItem>, AppError> {
    with_messenger(&state, |m| {
        m.contacts()?
            .into_iter()
            .map(|c| contact_item(m, state.network.get(), &c.account_id))
            .collect()
    })
}

/// Adds the person behind an invite link; the introduction waits in the outbox.
#[tauri::command]
#[specta::specta]
pub async fn accept_invite(state: tauri::State<'_, AppState>, link: String) -> Result<ContactItem, AppError> {
    let contact = with_messenger(&state, |m| Ok(m.accept_invite(&link)?.0.into()))?;
    if let Some(courier) = state.network.get() {
        if let Err(e) = courier.reach_inviter(&link).await {
            tracing::debug!(%e, "the invite names no address to reach");
        }
    }
    Ok(contact)
}

/// Reads an invite link from a picture of its QR code (PNG or JPEG bytes).
#[tauri::command]
#[specta::specta]
pub async fn read_qr_image(bytes: Vec<u8>) -> Result<String, AppError> {
    Ok(cairn_core::read_qr_image(&bytes)?)
}

/// Looks for a QR code in one camera frame (grey bytes, `width` to a row); `None`
/// while the frame shows none.
#[tauri::command]
#[specta::specta]
pub async fn read_qr_frame(width: u32, height: u32, luma: Vec<u8>) -> Result<Option<String>, AppError> {
    Ok(cairn_core::read_qr_frame(width, height, luma)?)
}

/// The newest messages with a contact; marks received ones read.
#[tauri::command]
#[specta::specta]
pub async fn conversation(state: tauri::State<'_, AppState>, peer: String) -> Result<Vec<MessageItem>, AppError> {
    with_messenger(&state, |m| {
        m.mark_read(&peer)?;
        Ok(m.conversation(&peer, 500)?.into_iter().map(MessageItem::from).collect())
    })
    .inspect(|_| wake_network(&state))
}

/// The person sees a conversation: its received messages are read (and, if read
/// receipts are on, the sender is told). For a conversation that is open when a
/// message arrives in it.
#[tauri::command]
#[specta::specta]
pub async fn mark_read(state: tauri::State<'_, AppState>, peer: String) -> Result<(), AppError> {
    with_messenger(&state, |m| m.mark_read(&peer).map(drop)).inspect(|_| wake_network(&state))
}

/// Sends a text to a contact.
#[tauri::command]
#[specta::specta]
pub async fn send_text(state: tauri::State<'_, AppState>, peer: String, body: String) -> Result<MessageItem, AppError> {
    let peer = account_id(&peer)?;
    with_messenger(&state, |m| Ok(m.send_text(&peer, &body)?.0.into())).inspect(|_| wake_network(&state))
}

/// Sends a failed message again (its id in hex), in a contact's conversation or a
/// group's.
#[tauri::command]
#[specta::specta]
pub async fn retry_message(state: tauri::State<'_, AppState>, id: String) -> Result<MessageItem, AppError> {
    let id = message_id(&id)?;
    with_messenger(&state, |m| Ok(m.retry_message(&id)?.into())).inspect(|_| wake_network(&state))
}

/// A message id from its hex form (as [`MessageItem`] gives it).
fn message_id(hex: &str) -> Result<[u8; 16], AppError> {
    let mut id = [0u8; 16];
    let digits = hex.as_bytes();
    if digits.len() != 2 * id.len() {
        return Err(AppError::invalid("not a message id"));
    }
    for (byte, pair) in id.iter_mut().zip(digits.chunks(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| AppError::invalid("not a message id"))?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| AppError::invalid("not a message id"))?;
    }
    Ok(id)
}

/// The safety number with a contact.
#[tauri::command]
#[specta::specta]
pub async fn safety_number(state: tauri::State<'_, AppState>, peer: String) -> Result<SafetyNumberView, AppError> {
    let peer = account_id(&peer)?;
    with_messenger(&state, |m| {
        let number = m.safety_number(&peer)?;
        Ok(SafetyNumberView {
            groups: number.groups(),
            qr_svg: cairn_core::qr_svg(number.scannable())?,
            verified: m.contact(&peer)?.verified,
            pending_groups: m.pending_safety_number(&peer)?.map(|n| n.groups()),
        })
    })
}

/// Marks a contact verified (or not) after comparing safety numbers.
#[tauri::command]
#[specta::specta]
pub async fn set_verified(state: tauri::State<'_, AppState>, peer: String, verified: bool) -> Result<(), AppError> {
    let peer = account_id(&peer)?;
    with_messenger(&state, |m| m.set_verified(&peer, verified))
}

/// Accepts a contact's changed identity key.
#[tauri::command]
#[specta::specta]
pub async fn accept_identity_change(state: tauri::State<'_, AppState>, peer: String) -> Result<ContactItem, AppError> {
    let peer = account_id(&peer)?;
    with_messenger(&state, |m| {
        m.accept_identity_change(&peer)?;
        Ok(m.contact(&peer)?.into())
    })
}

/// Refuses a contact's changed identity key: the old one stays.
#[tauri::command]
#[specta::specta]
pub async fn reject_identity_change(state: tauri::State<'_, AppState>, peer: String) -> Result<ContactItem, AppError> {
    let peer = account_id(&peer)?;
    with_messenger(&state, |m| {
        m.reject_identity_change(&peer)?;
        Ok(m.contact(&peer)?.into())
    })
}

/// Searches every conversation.
#[tauri::command]
#[specta::specta]
pub async fn search(state: tauri::State<'_, AppState>, query: String) -> Result<Vec<MessageItem>, AppError> {
    with_messenger(&state, |m| {
        Ok(m.search(&query, 100)?.into_iter().map(MessageItem::from).collect())
    })
}

/// The current settings.
#[tauri::command]
#[specta::specta]
pub async fn settings(state: tauri::State<'_, AppState>) -> Result<Settings, AppError> {
    with_messenger(&state, |m| settings_of(m))
}

/// Switches read receipts on or off.
#[tauri::command]
#[specta::specta]
pub async fn set_read_receipts(state: tauri::State<'_, AppState>, on: bool) -> Result<Settings, AppError> {
    with_messenger(&state, |m| {
        m.set_read_receipts(on)?;
        settings_of(m)
    })
}

/// Sets the STUN/TURN servers (one URL each); they apply from the next start.
#[tauri::command]
#[specta::specta]
pub async fn set_ice_servers(state: tauri::State<'_, AppState>, urls: Vec<String>) -> Result<Settings, AppError> {
    with_messenger(&state, |m| {
        m.set_ice_servers(&urls)?;
        settings_of(m)
    })
}

/// Sets the peer cache's quota in MiB; it applies from the next start.
#[tauri::command]
#[specta::specta]
pub async fn set_cache_quota(state: tauri::State<'_, AppState>, mib: u32) -> Result<Settings, AppError> {
    with_messenger(&state, |m| {
        m.set_cache_quota_mib(mib)?;
        settings_of(m)
    })
}

/// Sets how many days messages may wait in peer caches, from the next message on.
#[tauri::command]
#[specta::specta]
pub async fn set_message_ttl(state: tauri::State<'_, AppState>, days: u32) -> Result<Settings, AppError> {
    with_messenger(&state, |m| {
        m.set_message_ttl_days(days)?;
        settings_of(m)
    })
}

/// Names this account's always-on nodes; contacts are told through the outbox.
#[tauri::command]
#[specta::specta]
pub async fn set_always_on_nodes(
    state: tauri::State<'_, AppState>,
    addresses: Vec<String>,
) -> Result<Settings, AppError> {
    with_messenger(&state, |m| {
        m.set_always_on_nodes(&addresses)?;
        settings_of(m)
    })
    .inspect(|_| wake_network(&state))
}

/// A group as the UI shows it.
#[derive(Debug, Clone, Serialize, Type)]
#[serde(rename_all = "camelCase")]
pub struct GroupItem {
    group_id: String,
    name: String,
    /// Admins first.
    members: Vec<GroupMemberItem>,
    epoch: f64,
    is_admin: bool,
    /// False once this device left or was removed.
    active: bool,
}

/// A member of a group.
#[derive(Debug, Clone, Serialize, Type)]
#[serde(rename_all = "camelCase")]
pub struct GroupMemberItem {
    account_id: String,
    display_name: String,
    admin: bool,
    devices: u32,
}

impl From<GroupView> for GroupItem {
    fn from(g: GroupView) -> Self {
        Self {
            group_id: g.group_id,
            name: g.name,
            epoch: g.epoch as f64,
            is_admin: g.is_admin,
            active: g.active,
            members: g
                .members
                .into_iter()
                .map(|m| GroupMemberItem {
                    account_id: m.account_id.to_string(),
                    display_name: m.display_name,
                    admin: m.admin,
                    devices: m.devices as u32,
                })
                .collect(),
        }
    }
}

/// Every group, newest first.
#[tauri::command]
#[specta::specta]
pub async fn groups(state: tauri::State<'_, AppState>) -> Result<Vec<GroupItem>, AppError> {
    with_messenger(&state, |m| Ok(m.groups()?.into_iter().map(GroupItem::from).collect()))
}

/// Runs a group change and returns the group as it is afterwards.
fn group_change(
    state: &AppState,
    group_id: &str,
    change: impl FnOnce(&mut Messenger) -> Result<Vec<cairn_core::OutboxId>, CoreError>,
) -> Result<GroupItem, AppError> {
    with_messenger(state, |m| {
        change(m)?;
        Ok(m.group(group_id)?.into())
    })
    .inspect(|_| wake_network(state))
}

/// Creates a group with some contacts; this account is its admin.
#[tauri::command]
#[specta::specta]
pub async fn create_group(
    state: tauri::State<'_, AppState>,
    name: String,
    members: Vec<String>,
) -> Result<GroupItem, AppError> {
    let members = account_ids(&members)?;
    with_messenger(&state, |m| Ok(m.create_group(&name, &members)?.0.into())).inspect(|_| wake_network(&state))
}

/// Adds contacts to a group (admins).
#[tauri::command]
#[specta::specta]
pub async fn add_group_members(
    state: tauri::State<'_, AppState>,
    group_id: String,
    members: Vec<String>,
) -> Result<GroupItem, AppError> {
    let members = account_ids(&members)?;
    group_change(&state, &group_id, |m| m.add_group_members(&group_id, &members))
}

/// Removes members from a group (admins).
#[tauri::command]
#[specta::specta]
pub async fn remove_group_members(
    state: tauri::State<'_, AppState>,
    group_id: String,
    members: Vec<String>,
) -> Result<GroupItem, AppError> {
    let members = account_ids(&members)?;
    group_change(&state, &group_id, |m| m.remove_group_members(&group_id, &members))
}

/// Renames a group (admins).
#[tauri::command]
#[specta::specta]
pub async fn rename_group(
    state: tauri::State<'_, AppState>,
    group_id: String,
    name: String,
) -> Result<GroupItem, AppError> {
    group_change(&state, &group_id, |m| m.rename_group(&group_id, &name))
}

/// Makes a member an admin or not (admins).
#[tauri::command]
#[specta::specta]
pub async fn set_group_admin(
    state: tauri::State<'_, AppState>,
    group_id: String,
    member: String,
    admin: bool,
) -> Result<GroupItem, AppError> {
    let member = account_id(&member)?;
    group_change(&state, &group_id, |m| m.set_group_admin(&group_id, &member, admin))
}

/// Leaves a group.
#[tauri::command]
#[specta::specta]
pub async fn leave_group(state: tauri::State<'_, AppState>, group_id: String) -> Result<GroupItem, AppError> {
    group_change(&state, &group_id, |m| m.leave_group(&group_id))
}

/// Sends a text to a group.
#[tauri::command]
#[specta::specta]
pub async fn send_group_text(
    state: tauri::State<'_, AppState>,
    group_id: String,
    body: String,
) -> Result<MessageItem, AppError> {
    with_messenger(&state, |m| Ok(m.send_group_text(&group_id, &body)?.0.into())).inspect(|_| wake_network(&state))
}

/// An offer to link a new device: the link to paste and the same text as a QR code.
#[derive(Debug, Clone, Serialize, Type)]
#[serde(rename_all = "camelCase")]
pub struct LinkOfferView {
    link: String,
    /// SVG of the QR code.
    qr_svg: String,
    /// Unix seconds.
    expires_at: f64,
}

/// Makes a one-time offer to link a new device (ten minutes), with where this
/// device listens now.
#[tauri::command]
#[specta::specta]
pub async fn offer_link(state: tauri::State<'_, AppState>) -> Result<LinkOfferView, AppError> {
    with_messenger(&state, |m| {
        let addresses = m.invite()?.addresses;
        let offer = m.offer_link(addresses, cairn_core::LINK_OFFER_VALIDITY)?;
        let link = offer.to_link();
        Ok(LinkOfferView {
            qr_svg: cairn_core::qr_svg(link.as_bytes())?,
            link,
            expires_at: offer.expires_at as f64,
        })
    })
}

/// Where a link this device serves stands, for Settings to show.
#[derive(Debug, Clone, Serialize, Type)]
#[serde(tag = "stage", rename_all = "camelCase")]
pub enum ServedLinkView {
    /// The new device shows `code`: the person compares and confirms.
    Confirm { code: String },
    /// Confirmed; the account is being handed over.
    Linking,
    /// Linked; the history is going over.
    History { sent: u32, total: u32 },
}

/// Where the link this device serves stands (`None` once it is done).
pub(crate) fn served_link_view(m: &Messenger) -> Option<ServedLinkView> {
    m.served_link_state().map(|s| match s {
        ServedLinkState::WaitingForConfirmation(code) => ServedLinkView::Confirm { code },
        ServedLinkState::Linking => ServedLinkView::Linking,
        ServedLinkState::PassingHistory { sent, total } => ServedLinkView::History {
            sent: sent.min(u32::MAX.into()) as u32,
            total: total.min(u32::MAX.into()) as u32,
        },
    })
}

/// The link this device serves, if one is under way (`None` once it is done).
#[tauri::command]
#[specta::specta]
pub async fn served_link(state: tauri::State<'_, AppState>) -> Result<Option<ServedLinkView>, AppError> {
    with_messenger(&state, |m| Ok(served_link_view(m)))
}

/// The person compared the codes on both screens: link (`true`), passing the message
/// history on if `share_history`, or cancel.
#[tauri::command]
#[specta::specta]
pub async fn confirm_link(
    state: tauri::State<'_, AppState>,
    same_code: bool,
    share_history: bool,
) -> Result<(), AppError> {
    with_messenger(&state, |m| {
        m.confirm_link(same_code, share_history);
        Ok(())
    })
}

/// One of the account's devices, as Settings lists them.
#[derive(Debug, Clone, Serialize, Type)]
#[serde(rename_all = "camelCase")]
pub struct DeviceItem {
    device_id: u8,
    name: String,
    this_device: bool,
}

/// The account's devices as Settings lists them.
pub(crate) fn device_items(m: &Messenger) -> Result<Vec<DeviceItem>, CoreError> {
    Ok(m.devices()?
        .into_iter()
        .map(|d| DeviceItem {
            device_id: d.device_id.get(),
            name: d.name,
            this_device: d.this_device,
        })
        .collect())
}

/// The account's devices, from its signed device list.
#[tauri::command]
#[specta::specta]
pub async fn devices(state: tauri::State<'_, AppState>) -> Result<Vec<DeviceItem>, AppError> {
    with_messenger(&state, |m| device_items(m))
}

/// Names one of the account's devices (on this device).
#[tauri::command]
#[specta::specta]
pub async fn rename_device(
    state: tauri::State<'_, AppState>,
    device_id: u8,
    name: String,
) -> Result<Vec<DeviceItem>, AppError> {
    let device_id = checked_device(device_id)?;
    with_messenger(&state, |m| m.rename_device(device_id, &name))?;
    devices(state).await
}

/// Removes another device from the account: contacts and the account's other devices
/// get the new device list and stop encrypting for it.
#[tauri::command]
#[specta::specta]
pub async fn remove_device(state: tauri::State<'_, AppState>, device_id: u8) -> Result<Vec<DeviceItem>, AppError> {
    let device_id = checked_device(device_id)?;
    with_messenger(&state, |m| m.remove_device(device_id))?;
    wake_network(&state);
    devices(state).await
}

/// Onboarding by linking: this new device joins the account of the device whose
/// offer was pasted (or scanned). The code to compare arrives as an event meanwhile.
#[tauri::command]
#[specta::specta]
pub async fn join_by_link(
    app: AppHandle,
    state: tauri::State<'_, AppState>,
    link: String,
    passphrase: Option<String>,
) -> Result<AccountView, AppError> {
    let offer =
        cairn_core::LinkOffer::from_link(&link).map_err(|_| AppError::invalid("That is not a Cairn device link."))?;
    {
        let mut slot = state.messenger.lock().expect("messenger lock");
        if slot.is_none() {
            let unlock = match passphrase.as_deref() {
                Some(p) if p.chars().count() < MIN_PASSPHRASE_CHARS => {
                    return Err(AppError::invalid(format!(
                        "A passphrase needs at least {MIN_PASSPHRASE_CHARS} characters."
                    )))
                }
                Some(p) => Unlock::Passphrase(p),
                None => Unlock::Keyring(state.vault()?),
            };
            *slot = Some(Messenger::create_profile(&state.profile, unlock)?);
        }
    }
    let emitter = app.clone();
    cairn_core::join_by_link(
        &state.messenger,
        &offer,
        crate::network::config_from_env(),
        move |step| {
            use crate::events::{JoinCode, JoinHistory};
            use tauri_specta::Event as _;
            let history = |received: u64, total: u64, failed| JoinHistory {
                received: received as f64,
                total: total as f64,
                failed,
            };
            let _ = match step {
                LinkStep::Code(code) => JoinCode { code }.emit(&emitter),
                LinkStep::Linked => Ok(()),
                LinkStep::History { received, total } => history(received, total, None).emit(&emitter),
                LinkStep::HistoryFailed(why) => history(0, 0, Some(why)).emit(&emitter),
            };
        },
    )
    .await?;
    crate::network::ensure_started(&app);
    account(state).await
}
