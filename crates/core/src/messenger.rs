//! The [`Messenger`]: an open profile, the account it holds and the parts it is made
//! of, the transaction every operation runs in, this device's prekeys, invite and
//! card. (Sealing content for a device is in `sealing.rs`.)

use cairn_crypto::{
    bundle_of, generate_kyber_prekey, generate_signed_prekey, mailbox_of, new_account_id, sign_device_list,
    verify_device_list, AccountIdentity, DeviceKeys,
};
use cairn_proto::{decode_versioned, AccountId, ContactCard, DeviceEntry, DeviceId, DeviceList, Invite, PrekeyBundle};
use cairn_store::{AccountRecord, DeviceRecord, KdfParams, KeyVault, ProfileDb, ProfileDir};

use crate::{Clock, CoreError, Event, Result};

/// Setting key of the invite secret.
const INVITE_SECRET: &str = "invite_secret";

/// Most addresses an invite carries (the invite decoder's own limit).
const MAX_INVITE_ADDRESSES: usize = 8;

/// Largest stored record decoded (bundles, device lists): far above their real size.
pub(crate) const MAX_STORED_RECORD: usize = 64 * 1024;

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
    pub account_id: AccountId,
    /// The chosen display name.
    pub display_name: String,
    /// This device's id within the account.
    pub device_id: DeviceId,
    /// The invite link others can paste to add this account.
    pub invite_link: String,
}

/// The account this profile holds, and this device's keys in it.
pub(crate) struct Account {
    identity: AccountIdentity,
    device: DeviceKeys,
    display_name: String,
    account_id: AccountId,
}

impl Account {
    /// The account id.
    pub(crate) fn id(&self) -> &AccountId {
        &self.account_id
    }

    /// The account's identity key pair (the same on every device of the account).
    pub(crate) fn identity(&self) -> &AccountIdentity {
        &self.identity
    }

    /// This device's keys.
    pub(crate) fn device(&self) -> &DeviceKeys {
        &self.device
    }

    /// The name the person chose.
    pub(crate) fn display_name(&self) -> &str {
        &self.display_name
    }
}

/// An open profile.
pub struct Messenger {
    db: ProfileDb,
    account: Option<Account>,
    /// Where this device can be reached now (set by the network layer), for invites.
    addresses: Vec<String>,
    /// Groups kept decoded between operations.
    groups: crate::groups::OpenGroups,
    /// Device links under way.
    linking: crate::linking::Linking,
    /// The time, for everything this messenger dates or lets expire.
    clock: Clock,
    /// What happened since the driver last asked ([`Messenger::take_events`]).
    events: Vec<Event>,
    /// Stored signed device lists already checked, by their encoding.
    lists: crate::lists::VerifiedLists,
}

impl Messenger {
    /// Creates a new profile in `dir`, protected as `unlock` says.
    pub fn create_profile(dir: &ProfileDir, unlock: Unlock<'_>) -> Result<Self> {
        let db = match unlock {
            Unlock::Keyring(vault) => dir.create_with_keyring(vault)?,
            Unlock::Passphrase(passphrase) => dir.create_with_passphrase(passphrase, KdfParams::recommended())?,
        };
        Ok(Self {
            db,
            account: None,
            addresses: Vec::new(),
            groups: Default::default(),
            linking: Default::default(),
            clock: Clock::system(),
            events: Vec::new(),
            lists: Default::default(),
        })
    }

    /// Opens the existing profile in `dir`.
    pub fn open_profile(dir: &ProfileDir, unlock: Unlock<'_>) -> Result<Self> {
        let db = match unlock {
            Unlock::Keyring(vault) => dir.open_with_keyring(vault)?,
            Unlock::Passphrase(passphrase) => dir.open_with_passphrase(passphrase)?,
        };
        let account = load_account(&db)?;
        let messenger = Self {
            db,
            account,
            addresses: Vec::new(),
            groups: Default::default(),
            linking: Default::default(),
            clock: Clock::system(),
            events: Vec::new(),
            lists: Default::default(),
        };
        if messenger.account.is_some() {
            messenger.ensure_device_material()?;
        }
        Ok(messenger)
    }

    /// What happened since the last call, oldest first: messages, state changes,
    /// contacts, groups, devices. The courier (or whoever drives this messenger)
    /// forwards them; every change that was stored is here once.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Queues what happened (once it is stored).
    pub(crate) fn emit(&mut self, events: impl IntoIterator<Item = Event>) {
        self.events.extend(events);
    }

    /// The profile's database: each part's tables through its view.
    pub(crate) fn db(&self) -> &ProfileDb {
        &self.db
    }

    /// The groups kept decoded between operations.
    pub(crate) fn open_groups(&self) -> &crate::groups::OpenGroups {
        &self.groups
    }

    /// The groups kept decoded between operations, to change.
    pub(crate) fn open_groups_mut(&mut self) -> &mut crate::groups::OpenGroups {
        &mut self.groups
    }

    /// The device links under way.
    pub(crate) fn linking(&self) -> &crate::linking::Linking {
        &self.linking
    }

    /// The device links under way, to change.
    pub(crate) fn linking_mut(&mut self) -> &mut crate::linking::Linking {
        &mut self.linking
    }

    /// Signed device lists already checked.
    pub(crate) fn verified_lists(&self) -> &crate::lists::VerifiedLists {
        &self.lists
    }

    /// Reads the time from `clock` from now on (the system clock unless set; tests
    /// move a [`crate::ManualClock`] to let things expire without waiting).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// The time, Unix milliseconds.
    pub(crate) fn now_millis(&self) -> i64 {
        self.clock.now_millis() as i64
    }

    /// The time, Unix seconds.
    pub(crate) fn now_secs(&self) -> u64 {
        self.clock.now()
    }

    /// The time, for the Signal library.
    pub(crate) fn now(&self) -> std::time::SystemTime {
        self.clock.system_time()
    }

    /// Creates the account identity key and this device's keys, and stores them.
    pub fn create_account(&mut self, display_name: &str) -> Result<AccountInfo> {
        self.installing(|this| this.create_account_now(display_name))
    }

    /// Runs an account installation in one transaction; if it fails, this messenger
    /// is left without an account, as its database is.
    pub(crate) fn installing<T>(&mut self, work: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.account.is_some() {
            return Err(CoreError::AccountExists);
        }
        let outcome = self.atomically(work);
        if outcome.is_err() {
            self.account = None;
        }
        outcome
    }

    fn create_account_now(&mut self, display_name: &str) -> Result<AccountInfo> {
        let identity = AccountIdentity::generate();
        self.install_identity(new_account_id(), identity, display_name, DeviceId::FIRST)?;
        let list = DeviceList {
            account_id: self.account()?.id().to_owned(),
            identity_key: self.account()?.identity().public_key().serialize().into_vec(),
            version: 1,
            devices: vec![self.own_entry()?],
            always_on: Vec::new(),
        };
        self.adopt_own_device_list(&sign_device_list(self.account()?.identity(), &list)?)?;
        tracing::info!(account_id = %self.account()?.id(), "account created");
        self.account_info()
    }

    /// Stores an identity and fresh keys for this device (a new account, or a device
    /// joining one) and makes its prekeys.
    pub(crate) fn install_identity(
        &mut self,
        account_id: AccountId,
        identity: AccountIdentity,
        display_name: &str,
        device_id: DeviceId,
    ) -> Result<()> {
        // `installing` has checked that there is no account yet.
        let display_name = normalize_display_name(display_name)?;
        let device = DeviceKeys::generate(device_id)?;
        let now = self.now_millis();
        self.db.own().save(
            &AccountRecord {
                account_id: account_id.clone(),
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
        self.account = Some(Account {
            account_id,
            identity,
            device,
            display_name: display_name.to_owned(),
        });
        self.ensure_device_material()
    }

    /// Makes this device's first signed and Kyber prekeys if they are missing (a
    /// creation interrupted after the identity was stored).
    fn ensure_device_material(&self) -> Result<()> {
        let account = self.account()?;
        if self.db.own().latest_signed_prekey()?.is_none() {
            self.db.own().save_signed_prekey(
                1,
                &generate_signed_prekey(account.identity(), 1, self.now())?,
                self.now_millis(),
            )?;
        }
        if self.db.settings().get(INVITE_SECRET)?.is_none() {
            self.new_invite_secret()?;
        }
        if self.db.own().latest_kyber_prekey()?.is_none() {
            self.db
                .own()
                .save_kyber_prekey(1, &generate_kyber_prekey(account.identity(), 1)?, self.now_millis())?;
        }
        self.ensure_group_device()
    }

    /// The account, once created.
    pub fn account_info(&self) -> Result<AccountInfo> {
        let account = self.account()?;
        Ok(AccountInfo {
            account_id: account.id().to_owned(),
            display_name: account.display_name().to_owned(),
            device_id: account.device().device_id(),
            invite_link: self.invite()?.to_link(),
        })
    }

    /// Whether the account has been created.
    pub fn has_account(&self) -> bool {
        self.account.is_some()
    }

    pub(crate) fn account(&self) -> Result<&Account> {
        self.account.as_ref().ok_or(CoreError::NoAccount)
    }

    /// This device's mailbox: where envelopes for it are addressed.
    pub fn mailbox(&self) -> Result<[u8; 32]> {
        Ok(mailbox_of(&self.account()?.device().transport_public_key()))
    }

    /// This account's contact invite: its signed device list, this device's bundle,
    /// and as many of its addresses (direct ones first, then through relays) as fit
    /// one QR code.
    pub fn invite(&self) -> Result<Invite> {
        let account = self.account()?;
        let mut invite = Invite {
            card: ContactCard {
                display_name: account.display_name().to_owned(),
                device_list: self.own_device_list()?,
                bundles: vec![self.own_bundle()?],
                // They follow in the first Hello: an invite must fit one QR code.
                key_packages: Vec::new(),
            },
            addresses: Vec::new(),
            secret: self.invite_secret()?,
        };
        for address in invite_addresses(&self.addresses).into_iter().take(MAX_INVITE_ADDRESSES) {
            invite.addresses.push(address.clone());
            if invite.to_link().len() > crate::qr::MAX_QR_BYTES {
                invite.addresses.pop();
            }
        }
        Ok(invite)
    }

    /// The secret this account's invites carry; made with the account.
    pub(crate) fn invite_secret(&self) -> Result<[u8; 16]> {
        let text = self.db.settings().get(INVITE_SECRET)?.ok_or(CoreError::NoAccount)?;
        let bytes = data_encoding::HEXLOWER
            .decode(text.as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok());
        bytes.ok_or_else(|| CoreError::Store(cairn_store::StoreError::Corrupt("invite secret".into())))
    }

    /// Makes a new invite secret: invites handed out before no longer let anyone
    /// introduce themselves. Returns the new invite.
    pub fn reset_invite(&self) -> Result<Invite> {
        self.new_invite_secret()?;
        self.invite()
    }

    fn new_invite_secret(&self) -> Result<()> {
        let mut secret = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
        Ok(self
            .db
            .settings()
            .set(INVITE_SECRET, &data_encoding::HEXLOWER.encode(&secret))?)
    }

    /// Tells the messenger where this device can be reached (multiaddrs); invites
    /// carry them from now on.
    pub fn set_addresses(&mut self, addresses: Vec<String>) {
        self.addresses = addresses;
    }

    /// This device's transport seed, from which the network layer derives its peer id.
    pub fn transport_seed(&self) -> Result<[u8; 32]> {
        Ok(*self.account()?.device().transport_seed())
    }

    /// Addresses remembered for peers' devices, as (transport key, multiaddr text).
    pub fn peer_addresses(&self) -> Result<Vec<([u8; 32], String)>> {
        Ok(self
            .db
            .peers()
            .all()?
            .into_iter()
            .filter_map(|(key, address)| Some((key.try_into().ok()?, address)))
            .collect())
    }

    /// The devices of `account_id` with their transport public keys (for routing and
    /// presence).
    pub fn device_keys_of(&self, account_id: &AccountId) -> Result<Vec<(DeviceId, [u8; 32])>> {
        Ok(self
            .devices_of(account_id)?
            .1
            .iter()
            .map(|d| (d.device_id, d.transport_key))
            .collect())
    }

    /// Every account this device talks to: its contacts and its own account.
    pub fn known_accounts(&self) -> Result<Vec<AccountId>> {
        let mut accounts: Vec<AccountId> = self.db.contacts().all()?.into_iter().map(|c| c.account_id).collect();
        accounts.push(self.account()?.id().to_owned());
        Ok(accounts)
    }

    /// The transport public key of a device of `account_id` (a contact's or this
    /// account's), if its device list names it.
    pub fn transport_key_of(&self, account_id: &AccountId, device_id: DeviceId) -> Result<Option<[u8; 32]>> {
        let (_, devices) = self.devices_of(account_id)?;
        if let Some(device) = devices.iter().find(|d| d.device_id == device_id) {
            return Ok(Some(device.transport_key));
        }
        // A device of this account's that was removed still gets the one notice
        // that tells it so.
        if account_id == self.account()?.id() {
            return Ok(self
                .db
                .settings()
                .get(&crate::devices::removed_device_key(device_id))?
                .and_then(|hex| data_encoding::HEXLOWER.decode(hex.as_bytes()).ok())
                .and_then(|key| key.try_into().ok()));
        }
        Ok(None)
    }

    /// The invite link as a QR code in SVG, for the UI to show.
    pub fn invite_qr_svg(&self) -> Result<String> {
        crate::qr::qr_svg(self.invite()?.to_link().as_bytes())
    }

    /// This account's card with the bundles of all its devices that are known here.
    pub(crate) fn own_card(&self) -> Result<ContactCard> {
        let account = self.account()?;
        let mut bundles = vec![self.own_bundle()?];
        for (device_id, bytes) in self.db.contacts().bundles(account.id())? {
            if device_id != account.device().device_id() {
                bundles.push(decode_versioned(&bytes, MAX_STORED_RECORD)?);
            }
        }
        Ok(ContactCard {
            display_name: account.display_name().to_owned(),
            device_list: self.own_device_list()?,
            bundles,
            key_packages: self.key_packages_of(account.id())?,
        })
    }

    /// This device's public prekey bundle, from its newest prekeys.
    pub(crate) fn own_bundle(&self) -> Result<PrekeyBundle> {
        let account = self.account()?;
        let (_, signed) = self.db.own().latest_signed_prekey()?.ok_or(CoreError::NoAccount)?;
        let (_, kyber) = self.db.own().latest_kyber_prekey()?.ok_or(CoreError::NoAccount)?;
        Ok(bundle_of(account.device(), &signed, &kyber)?)
    }

    pub(crate) fn own_entry(&self) -> Result<DeviceEntry> {
        let device = &self.account()?.device();
        Ok(DeviceEntry {
            device_id: device.device_id(),
            registration_id: device.registration_id(),
            transport_key: device.transport_public_key(),
        })
    }

    /// Runs `work` in one store transaction: all of its writes land, or none do.
    pub(crate) fn atomically<T>(&mut self, work: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.db.begin()?;
        let outcome = work(self).and_then(|value| Ok(self.db.commit().map(|()| value)?));
        if outcome.is_err() {
            // What was kept open may hold changes the rollback undoes.
            self.groups.clear();
            // Also after a failed COMMIT, which can leave the transaction open.
            if let Err(rollback) = self.db.rollback() {
                tracing::debug!(%rollback, "rollback after failure");
            }
        }
        outcome
    }
}

/// How useful an address is to someone who got the invite, most useful first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reach {
    /// A public address: anyone can dial it.
    Public,
    /// A private address: someone on the same network can.
    Private,
    /// Through a relay: anyone can, whatever NATs are in the way.
    Relayed,
    /// Loopback, link-local or unspecified: only this machine (tests, two profiles on
    /// one computer).
    ThisMachine,
}

fn reach_of(address: &str) -> Reach {
    use cairn_net::multiaddr::Protocol;
    let Ok(address) = address.parse::<cairn_net::Multiaddr>() else {
        return Reach::ThisMachine;
    };
    if address.iter().any(|p| p == Protocol::P2pCircuit) {
        return Reach::Relayed;
    }
    match address.iter().next() {
        Some(Protocol::Ip4(ip)) if ip.is_loopback() || ip.is_link_local() || ip.is_unspecified() => Reach::ThisMachine,
        Some(Protocol::Ip4(ip)) if ip.is_private() || ip.octets()[0] == 100 && ip.octets()[1] & 0xc0 == 64 => {
            Reach::Private
        }
        Some(Protocol::Ip6(ip)) if ip.is_loopback() || ip.is_unspecified() || ip.segments()[0] & 0xffc0 == 0xfe80 => {
            Reach::ThisMachine
        }
        Some(Protocol::Ip6(ip)) if ip.segments()[0] & 0xfe00 == 0xfc00 => Reach::Private,
        Some(Protocol::Ip4(_) | Protocol::Ip6(_)) => Reach::Public,
        _ => Reach::Private,
    }
}

/// The addresses an invite carries, most useful first: public, private, relayed, and
/// this machine's own only when there is nothing else (a dial to someone else's
/// loopback reaches the dialer itself).
fn invite_addresses(addresses: &[String]) -> Vec<&String> {
    let mut ranked: Vec<(Reach, &String)> = addresses.iter().map(|a| (reach_of(a), a)).collect();
    ranked.sort_by_key(|(reach, _)| *reach);
    if ranked.iter().any(|(reach, _)| *reach != Reach::ThisMachine) {
        ranked.retain(|(reach, _)| *reach != Reach::ThisMachine);
    }
    ranked.into_iter().map(|(_, address)| address).collect()
}

/// Where the device that made an invite can be reached: its transport key and the
/// addresses the invite carries (checked: the device is in the signed list).
pub fn invite_route(link: &str) -> Result<([u8; 32], Vec<String>)> {
    let invite = Invite::from_link(link)?;
    let (list, _) = verify_device_list(&invite.card.device_list)?;
    let device = invite
        .card
        .bundles
        .first()
        .and_then(|b| list.device(b.device_id))
        // `Invite::from_link` already checked there is a bundle for a listed device.
        .ok_or_else(|| {
            CoreError::Proto(cairn_proto::ProtoError::InvalidField {
                field: "bundles",
                reason: "no listed device".into(),
            })
        })?;
    Ok((device.transport_key, invite.addresses))
}

/// Trims a display name and checks that 1 to 64 characters remain.
pub fn normalize_display_name(name: &str) -> Result<&str> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(CoreError::InvalidDisplayName);
    }
    Ok(name)
}

fn load_account(db: &ProfileDb) -> Result<Option<Account>> {
    let (Some(account), Some(device)) = (db.own().account()?, db.own().device()?) else {
        return Ok(None);
    };
    Ok(Some(Account {
        account_id: account.account_id,
        identity: AccountIdentity::from_bytes(&account.identity_key)?,
        device: DeviceKeys::from_parts(device.device_id, device.registration_id, &device.transport_seed)?,
        display_name: account.display_name,
    }))
}

#[cfg(test)]
mod tests {
    use super::invite_addresses;

    #[test]
    fn an_invite_names_public_then_private_then_relayed_addresses_and_loopback_only_when_alone() {
        let relay = "/ip4/203.0.113.9/tcp/4001/p2p/12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5/p2p-circuit";
        let addresses: Vec<String> = [
            "/ip4/127.0.0.1/udp/4001/quic-v1",
            relay,
            "/ip4/192.168.1.20/tcp/4001",
            "/ip6/::1/tcp/4001",
            "/ip4/198.51.100.7/tcp/4001",
            "/ip4/100.64.3.2/tcp/4001",
        ]
        .map(String::from)
        .to_vec();
        let ordered: Vec<&str> = invite_addresses(&addresses).into_iter().map(String::as_str).collect();
        assert_eq!(
            ordered,
            [
                "/ip4/198.51.100.7/tcp/4001",
                "/ip4/192.168.1.20/tcp/4001",
                "/ip4/100.64.3.2/tcp/4001",
                relay
            ]
        );
        let only_here = ["/ip4/127.0.0.1/tcp/1".to_owned()];
        assert_eq!(invite_addresses(&only_here), [&only_here[0]]);
    }
}
