//! This account's devices: listing, naming and removing them, adding a device to the
//! signed device list (the part of QR linking that does not need a network),
//! rotating this device's signed prekey, and naming the always-on nodes that hold
//! envelopes for the account's devices while they are offline. Each way, contacts
//! and own devices receive the new card. A device removed from the account does none
//! of this any more.

use cairn_crypto::{
    generate_kyber_prekey, generate_signed_prekey, sign_device_list, signed_prekey_due, verify_device_list,
    AccountIdentity,
};
use cairn_proto::{
    encode_versioned, AccountId, ContactCard, Content, DeviceId, DeviceList, LinkHandOver, MAX_ALWAYS_ON,
    MAX_ALWAYS_ON_BYTES, MAX_DEVICES,
};
use data_encoding::HEXLOWER;
use zeroize::{Zeroize, Zeroizing};

use crate::messenger::Messenger;
use crate::{CoreError, Event, OutboxId, Result};

/// How long a replaced signed prekey is kept (as Signal does: 30 days).
const SIGNED_PREKEY_GRACE_MILLIS: i64 = 30 * 24 * 3600 * 1000;

/// What an existing device hands a new one so it can join the account: the account
/// (its identity private key included: it only ever travels inside the encrypted
/// link channel), the device id granted, contacts, verified marks and settings.
pub struct LinkGrant(LinkHandOver);

impl Drop for LinkGrant {
    fn drop(&mut self) {
        self.0.identity.zeroize();
    }
}

impl LinkGrant {
    /// The encoded form, for the link channel.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// Decodes a grant received over the link channel.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(Self(LinkHandOver::from_bytes(bytes)?))
    }
}

/// One of this account's devices, as the UI lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    /// The device id within the account.
    pub device_id: DeviceId,
    /// The name given on this device ("Device 2" until named).
    pub name: String,
    /// Whether it is the device this profile runs on.
    pub this_device: bool,
}

/// Longest device name, in characters.
const MAX_DEVICE_NAME_CHARS: usize = 64;

/// The setting that keeps a removed own device's transport key, so the notice of its
/// removal can still be routed to it.
pub(crate) fn removed_device_key(device_id: DeviceId) -> String {
    format!("removed_device.{device_id}")
}

impl Messenger {
    /// This account's devices, as its signed list names them.
    pub fn devices(&self) -> Result<Vec<DeviceView>> {
        let list = self.own_list()?;
        let this = self.account()?.device().device_id();
        list.devices
            .iter()
            .map(|d| {
                Ok(DeviceView {
                    device_id: d.device_id,
                    name: self
                        .db()
                        .settings()
                        .get(&format!("device_name.{}", d.device_id))?
                        .unwrap_or_else(|| format!("Device {}", d.device_id)),
                    this_device: d.device_id == this,
                })
            })
            .collect()
    }

    /// Names a device of this account (on this device only).
    pub fn rename_device(&self, device_id: DeviceId, name: &str) -> Result<()> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_DEVICE_NAME_CHARS {
            return Err(CoreError::InvalidSetting(format!(
                "a device name has 1 to {MAX_DEVICE_NAME_CHARS} characters"
            )));
        }
        if !self.devices()?.iter().any(|d| d.device_id == device_id) {
            return Err(CoreError::InvalidSetting(format!(
                "no device {device_id} in this account"
            )));
        }
        Ok(self.db().settings().set(&format!("device_name.{device_id}"), name)?)
    }

    /// Removes another device from this account: a new signed device list without it,
    /// which contacts and the other own devices receive (each then forgets its
    /// sessions with it and stops encrypting for it); its leaves go from the groups
    /// this account administers. The removed device gets one last
    /// envelope, the new list, so it can tell its person it was removed. Returns
    /// what was queued.
    pub fn remove_device(&mut self, device_id: DeviceId) -> Result<Vec<OutboxId>> {
        self.ensure_listed()?;
        if device_id == self.account()?.device().device_id() {
            return Err(CoreError::InvalidSetting("this device cannot remove itself".into()));
        }
        let own = self.account()?.id().to_owned();
        let mut queued = self.atomically(|this| {
            let mut list = this.own_list()?;
            let index = list
                .devices
                .iter()
                .position(|d| d.device_id == device_id)
                .ok_or_else(|| CoreError::InvalidSetting(format!("no device {device_id} in this account")))?;
            let removed = list.devices.remove(index);
            list.version += 1;
            let signed = sign_device_list(this.account()?.identity(), &list)?;
            let mut card = this.own_card()?;
            card.device_list = signed.clone();
            card.bundles.retain(|b| list.device(b.device_id).is_some());
            card.key_packages.retain(|k| list.device(k.device_id).is_some());
            let notice = Content::Hello {
                card,
                invite_secret: None,
            };
            // Sealed now: the session with the removed device goes with the new list.
            let identity = *this.account()?.identity().public_key();
            let notice = this.envelope_to_entry(&own, &identity, &removed, &notice.to_padded_bytes())?;
            this.adopt_own_device_list(&signed)?;
            this.db()
                .settings()
                .set(&removed_device_key(device_id), &HEXLOWER.encode(&removed.transport_key))?;
            let mut queued = Vec::new();
            if let Some((notice, _)) = notice {
                queued.push(this.queue_sealed(&notice, "card")?);
            }
            queued.extend(this.announce_card()?);
            Ok(queued)
        })?;
        queued.extend(self.remove_unlisted_leaves(&own)?);
        self.emit([Event::DevicesChanged]);
        Ok(queued)
    }

    /// Whether this device is still in its account's device list (false once another
    /// of the account's devices removed it).
    pub fn is_listed(&self) -> Result<bool> {
        let list = self.own_list()?;
        Ok(list.device(self.account()?.device().device_id()).is_some())
    }

    /// [`CoreError::DeviceRemoved`] once this device is no longer in its account's list.
    pub(crate) fn ensure_listed(&self) -> Result<()> {
        if self.is_listed()? {
            Ok(())
        } else {
            Err(CoreError::DeviceRemoved)
        }
    }

    /// Grants a new device a place in this account: the next free device id and what
    /// it needs to act as this account.
    pub fn grant_link(&self) -> Result<LinkGrant> {
        self.ensure_listed()?;
        let account = self.account()?;
        let list = self.own_list()?;
        if list.devices.len() >= MAX_DEVICES {
            return Err(CoreError::TooManyDevices);
        }
        // An id no device of the account had yet, as far as this device knows: a
        // removed device's id given to a new one would let what the old one sends
        // pass for the new one's.
        let retired = self.db().contacts().retired_devices(account.id())?;
        let highest = list
            .devices
            .iter()
            .map(|d| d.device_id)
            .chain(retired.iter().copied())
            .max();
        let after_highest = DeviceId::all().skip_while(|id| highest.is_some_and(|highest| *id <= highest));
        let device_id = after_highest
            .chain(DeviceId::all())
            .find(|id| list.device(*id).is_none() && !retired.contains(id))
            .ok_or(CoreError::TooManyDevices)?;
        let own = self.own_card()?;
        let mut contacts = Vec::new();
        let mut verified = Vec::new();
        for contact in self.contacts()? {
            contacts.push(self.card_of(&contact.account_id)?);
            if contact.verified {
                verified.push(contact.account_id);
            }
        }
        Ok(LinkGrant(LinkHandOver {
            account_id: account.id().to_owned(),
            identity: account.identity().to_bytes().to_vec(),
            display_name: account.display_name().to_owned(),
            device_id,
            device_list: self.own_device_list()?,
            bundles: own.bundles,
            key_packages: own.key_packages,
            contacts,
            verified,
            settings: self.db().settings().all()?,
        }))
    }

    /// On the new device: takes the granted identity, makes this device's keys, adds
    /// it to the device list (one version up), takes the contacts, verified marks and
    /// settings, and returns this account's card for the granting device.
    pub fn join_account(&mut self, grant: LinkGrant) -> Result<ContactCard> {
        self.installing(|this| this.join_account_now(grant))
    }

    fn join_account_now(&mut self, grant: LinkGrant) -> Result<ContactCard> {
        let grant = &grant.0;
        let identity = AccountIdentity::from_bytes(&grant.identity)?;
        let (mut list, signer) = verify_device_list(&grant.device_list)?;
        if signer != *identity.public_key() || list.account_id != grant.account_id {
            return Err(CoreError::NotOurAccount);
        }
        // The settings first: the invite secret among them is the account's.
        for (key, value) in &grant.settings {
            self.db().settings().set(key, value)?;
        }
        self.install_identity(grant.account_id.clone(), identity, &grant.display_name, grant.device_id)?;
        list.version += 1;
        list.devices.push(self.own_entry()?);
        let signed = sign_device_list(self.account()?.identity(), &list)?;
        self.adopt_own_device_list(&signed)?;
        for bundle in &grant.bundles {
            self.db()
                .contacts()
                .save_bundle(&grant.account_id, bundle.device_id, &encode_versioned(bundle))?;
        }
        self.save_key_packages(&grant.account_id, &grant.key_packages)?;
        for card in &grant.contacts {
            let (list, identity) = verify_device_list(&card.device_list)?;
            self.check_identity(&list.account_id, &identity)?;
            self.save_card(&list.account_id, card, &list)?;
        }
        for account_id in &grant.verified {
            self.db().contacts().set_verified(account_id, true)?;
        }
        self.own_card()
    }

    /// On the granting device: adopts the list the new device signed, keeps its
    /// bundle, and tells contacts and the other own devices about it.
    pub fn complete_link(&mut self, card: ContactCard) -> Result<Vec<OutboxId>> {
        let list: DeviceList = self.adopt_own_device_list(&card.device_list)?;
        let own = self.account()?.id().to_owned();
        for bundle in card.bundles.iter().filter(|b| list.device(b.device_id).is_some()) {
            if bundle.device_id != self.account()?.device().device_id() {
                self.db()
                    .contacts()
                    .save_bundle(&own, bundle.device_id, &encode_versioned(bundle))?;
            }
        }
        self.save_key_packages(&own, &card.key_packages)?;
        let queued = self.announce_card()?;
        self.emit([Event::DevicesChanged]);
        Ok(queued)
    }

    /// Replaces this device's signed prekey if it is older than the rotation period.
    pub fn rotate_signed_prekey_if_due(&mut self) -> Result<Vec<OutboxId>> {
        if !self.is_listed()? {
            return Ok(Vec::new());
        }
        let (_, current) = self.db().own().latest_signed_prekey()?.ok_or(CoreError::NoAccount)?;
        if signed_prekey_due(&current, self.now())? {
            self.rotate_signed_prekey()
        } else {
            Ok(Vec::new())
        }
    }

    /// Makes a new signed prekey now. Older ones stay, so sessions that started from
    /// them still complete; contacts and own devices get the new bundle.
    pub fn rotate_signed_prekey(&mut self) -> Result<Vec<OutboxId>> {
        self.atomically(|this| {
            let identity = this.account()?.identity().clone();
            let now = this.now_millis();
            // The Kyber last-resort key is rotated with the signed prekey.
            let (signed_id, _) = this.db().own().latest_signed_prekey()?.ok_or(CoreError::NoAccount)?;
            let (kyber_id, _) = this.db().own().latest_kyber_prekey()?.ok_or(CoreError::NoAccount)?;
            let (signed_next, kyber_next) = (signed_id.wrapping_add(1).max(1), kyber_id.wrapping_add(1).max(1));
            this.db().own().save_signed_prekey(
                signed_next,
                &generate_signed_prekey(&identity, signed_next, this.now())?,
                now,
            )?;
            this.db()
                .own()
                .save_kyber_prekey(kyber_next, &generate_kyber_prekey(&identity, kyber_next)?, now)?;
            // Replaced keys stay long enough for sessions that started from them, then
            // go: a key kept forever would let a later thief open every recorded start.
            let cutoff = now - SIGNED_PREKEY_GRACE_MILLIS;
            this.db().own().delete_signed_prekeys_before(cutoff, signed_next)?;
            this.db().own().delete_kyber_prekeys_before(cutoff, kyber_next)?;
            this.renew_key_package()?;
            this.announce_card()
        })
    }

    /// The always-on nodes this account names in its device list.
    pub fn always_on_nodes(&self) -> Result<Vec<String>> {
        self.always_on_of(self.account()?.id())
    }

    /// The always-on nodes `account_id` (a contact, or this account) names in its
    /// signed device list: senders place envelopes for its devices there too.
    pub fn always_on_of(&self, account_id: &AccountId) -> Result<Vec<String>> {
        if account_id == self.account()?.id() {
            return Ok(self.own_list()?.always_on);
        }
        let contact = self
            .db()
            .contacts()
            .get(account_id)?
            .ok_or_else(|| CoreError::UnknownContact(account_id.into()))?;
        Ok(self.stored_list(&contact.device_list)?.0.always_on)
    }

    /// Names this account's always-on nodes (multiaddrs ending in `/p2p/<peer id>`, at
    /// most four): a new signed device list, which contacts and own devices receive.
    pub fn set_always_on_nodes(&mut self, addresses: &[String]) -> Result<Vec<OutboxId>> {
        self.ensure_listed()?;
        let addresses: Vec<String> = addresses
            .iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        if addresses.len() > MAX_ALWAYS_ON {
            return Err(CoreError::InvalidSetting(format!(
                "at most {MAX_ALWAYS_ON} always-on nodes"
            )));
        }
        for address in &addresses {
            if address.len() > MAX_ALWAYS_ON_BYTES || always_on_peer(address).is_none() {
                return Err(CoreError::InvalidSetting(format!(
                    "{address:?} is not an address ending in /p2p/<peer id>"
                )));
            }
        }
        self.atomically(|this| {
            let mut list = this.own_list()?;
            if list.always_on == addresses {
                return Ok(Vec::new());
            }
            list.version += 1;
            list.always_on = addresses;
            let signed = sign_device_list(this.account()?.identity(), &list)?;
            this.adopt_own_device_list(&signed)?;
            // The invite carries the list, and must still fit one QR code.
            if this.invite()?.to_link().len() > crate::qr::MAX_QR_BYTES {
                return Err(CoreError::InvalidSetting(
                    "those addresses make the invite too long for a QR code".into(),
                ));
            }
            this.announce_card()
        })
    }

    /// Sends this account's card to every contact's devices and to own other devices.
    fn announce_card(&self) -> Result<Vec<OutboxId>> {
        let hello = Content::Hello {
            card: self.own_card()?,
            invite_secret: None,
        };
        let mut queued = self.queue_to(self.account()?.id(), None, &hello, None)?;
        for contact in self.db().contacts().all()? {
            queued.extend(self.queue_to(&contact.account_id, None, &hello, None)?);
        }
        Ok(queued)
    }
}

/// The peer id and address of an always-on node's multiaddr (`…/p2p/<peer id>`).
pub fn always_on_peer(address: &str) -> Option<(cairn_net::PeerId, cairn_net::Multiaddr)> {
    let address: cairn_net::Multiaddr = address.parse().ok()?;
    match address.iter().last()? {
        cairn_net::multiaddr::Protocol::P2p(peer) => Some((peer, address)),
        _ => None,
    }
}
