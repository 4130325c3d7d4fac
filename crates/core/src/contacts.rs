//! Contacts: accepting invites, the cards accounts exchange when they meet or their
//! devices change, safety numbers, verification, and changed identity keys.
//!
//! A contact's identity key is pinned the first time it is seen. A different key
//! later never replaces it silently: it is recorded as pending, the conversation is
//! blocked for sending, and envelopes sealed with it wait until the person accepts
//! the change.

use cairn_crypto::{verify_device_list, IdentityKey, SafetyNumber};
use cairn_proto::{
    decode_versioned, encode_versioned, AccountId, ContactCard, Content, DeviceId, DeviceList, Invite, SignedDeviceList,
};
use cairn_store::ContactRecord;

use crate::messenger::{Messenger, MAX_STORED_RECORD};
use crate::{ContactView, CoreError, Event, OutboxId, Received, Result};

impl Messenger {
    /// Accepts an invite (a pasted `cairn://invite/...` link or a decoded QR code):
    /// the inviter becomes a contact, sessions start with the devices the invite has
    /// bundles for, and what is queued introduces this account to them and tells this
    /// account's other devices about the new contact.
    pub fn accept_invite(&mut self, link: &str) -> Result<(ContactView, Vec<OutboxId>)> {
        // Not one transaction: a changed key must stay recorded as pending even
        // though the invite is refused.
        self.ensure_listed()?;
        let invite = Invite::from_link(link)?;
        let (list, identity) = verify_device_list(&invite.card.device_list)?;
        let account_id = list.account_id.clone();
        if account_id == self.account()?.id() {
            return Err(CoreError::OwnInvite);
        }
        self.check_identity(&account_id, &identity)?;
        let is_new = self.db().contacts().get(&account_id)?.is_none();
        self.save_card(&account_id, &invite.card, &list)?;
        // Where the inviting device listens, for the network layer now and after restarts.
        if let Some(device) = invite.card.bundles.first().and_then(|b| list.device(b.device_id)) {
            for address in invite.addresses.iter().take(8) {
                self.db()
                    .peers()
                    .save(&device.transport_key, address, self.now_millis())?;
            }
        }
        let hello = Content::Hello {
            card: self.own_card()?,
            invite_secret: Some(invite.secret),
        };
        let mut queued = self.queue_to(&account_id, None, &hello, None)?;
        if is_new {
            let own = self.account()?.id().to_owned();
            queued.extend(self.queue_to(&own, None, &Content::ContactSync(invite.card), None)?);
        }
        self.emit([Event::ContactChanged(account_id.clone())]);
        Ok((self.contact(&account_id)?, queued))
    }

    /// Pins `identity` for a first contact, or refuses (and records as pending) a key
    /// that differs from the pinned one.
    pub(crate) fn check_identity(&self, account_id: &AccountId, identity: &IdentityKey) -> Result<()> {
        let key = identity.serialize();
        match self.db().contacts().pinned_identity(account_id)? {
            None => Ok(self.db().contacts().pin_identity(account_id, &key)?),
            Some(pinned) if pinned.identity_key[..] == key[..] => Ok(()),
            Some(_) => {
                self.db().contacts().set_pending_identity(account_id, &key)?;
                tracing::warn!(%account_id, "identity key changed; waiting for the person to accept it");
                Err(CoreError::IdentityChanged(account_id.to_owned()))
            }
        }
    }

    /// Stores a verified card: name, device list (refusing a rollback), bundles.
    pub(crate) fn save_card(&self, account_id: &AccountId, card: &ContactCard, list: &DeviceList) -> Result<()> {
        let mut previous = None;
        if let Some(existing) = self.db().contacts().get(account_id)? {
            if list.version < existing.device_list_version {
                return Err(CoreError::DeviceListRollback {
                    have: existing.device_list_version,
                    got: list.version,
                });
            }
            previous = decode_versioned::<SignedDeviceList>(&existing.device_list, MAX_STORED_RECORD)
                .ok()
                .and_then(|signed| verify_device_list(&signed).ok())
                .map(|(list, _)| list);
        }
        self.db().contacts().save(&ContactRecord {
            account_id: account_id.to_owned(),
            display_name: card.display_name.clone(),
            device_list: encode_versioned(&card.device_list),
            device_list_version: list.version,
            added_at: self.now_millis(),
        })?;
        let identity = IdentityKey::decode(&list.identity_key).map_err(|e| {
            CoreError::Crypto(cairn_crypto::CryptoError::InvalidKey {
                what: "contact identity",
                reason: e.to_string(),
            })
        })?;
        for bundle in &card.bundles {
            // Bundles travel beside the signed list: each must carry valid signatures
            // by the list's key, or it is dropped.
            match cairn_crypto::to_signal_bundle(&identity, bundle) {
                Ok(_) => self
                    .db()
                    .contacts()
                    .save_bundle(account_id, bundle.device_id, &encode_versioned(bundle))?,
                Err(e) => tracing::warn!(%account_id, device = %bundle.device_id, %e, "dropping a bad prekey bundle"),
            }
        }
        self.save_key_packages(account_id, &card.key_packages)?;
        // A device the list no longer names was removed: its session is closed.
        self.note_device_list(account_id, previous.as_ref(), list)
    }

    /// Handles a card received in-band from `sender` (a contact, or one of our own
    /// devices telling us about itself).
    pub(crate) fn receive_hello(
        &mut self,
        sender: &AccountId,
        card: ContactCard,
        reply: bool,
        out: &mut Received,
    ) -> Result<()> {
        let (list, identity) = verify_device_list(&card.device_list)?;
        let own = self.account()?.id().to_owned();
        if sender == own {
            // One of our devices, e.g. after linking or a prekey rotation. Its list may
            // be older than ours (it has not heard of a newer link yet): keep ours then,
            // but take its fresh bundle.
            let before = self.own_device_list()?;
            let current = match self.adopt_own_device_list(&card.device_list) {
                Ok(list) => {
                    if before != card.device_list {
                        out.events.push(Event::DevicesChanged);
                    }
                    list
                }
                Err(CoreError::DeviceListRollback { .. }) => verify_device_list(&before)?.0,
                Err(e) => return Err(e),
            };
            let this_device = self.account()?.device().device_id();
            let listed = |id: DeviceId| id != this_device && current.device(id).is_some();
            for bundle in card.bundles.iter().filter(|b| listed(b.device_id)) {
                match cairn_crypto::to_signal_bundle(&identity, bundle) {
                    Ok(_) => self
                        .db()
                        .contacts()
                        .save_bundle(&own, bundle.device_id, &encode_versioned(bundle))?,
                    Err(e) => tracing::warn!(device = %bundle.device_id, %e, "dropping a bad own-device bundle"),
                }
            }
            let packages: Vec<_> = card
                .key_packages
                .iter()
                .filter(|k| listed(k.device_id))
                .cloned()
                .collect();
            return self.save_key_packages(&own, &packages);
        }
        if list.account_id != sender {
            return Err(CoreError::CardMismatch);
        }
        self.check_identity(sender, &identity)?;
        let is_new = self.db().contacts().get(sender)?.is_none();
        self.save_card(sender, &card, &list)?;
        out.events.push(Event::ContactChanged(sender.to_owned()));
        if reply {
            let hello = Content::Hello {
                card: self.own_card()?,
                invite_secret: None,
            };
            self.queue_to(sender, None, &hello, None)?;
        }
        if is_new {
            self.queue_to(&own, None, &Content::ContactSync(card), None)?;
        }
        Ok(())
    }

    /// Handles "I added this contact" from one of our own devices.
    pub(crate) fn receive_contact_sync(&mut self, card: ContactCard, out: &mut Received) -> Result<()> {
        let (list, identity) = verify_device_list(&card.device_list)?;
        let account_id = list.account_id.clone();
        if account_id == self.account()?.id() {
            return Err(CoreError::SelfAsContact);
        }
        self.check_identity(&account_id, &identity)?;
        self.save_card(&account_id, &card, &list)?;
        out.events.push(Event::ContactChanged(account_id));
        Ok(())
    }

    /// One contact.
    pub fn contact(&self, account_id: &AccountId) -> Result<ContactView> {
        let record = self
            .db()
            .contacts()
            .get(account_id)?
            .ok_or_else(|| CoreError::UnknownContact(account_id.into()))?;
        self.view_of(record)
    }

    /// All contacts, by name.
    pub fn contacts(&self) -> Result<Vec<ContactView>> {
        self.db()
            .contacts()
            .all()?
            .into_iter()
            .map(|c| self.view_of(c))
            .collect()
    }

    fn view_of(&self, record: ContactRecord) -> Result<ContactView> {
        let pinned = self.db().contacts().pinned_identity(&record.account_id)?;
        let devices = self.devices_of(&record.account_id).map(|(_, d)| d.len()).unwrap_or(0);
        Ok(ContactView {
            account_id: record.account_id,
            display_name: record.display_name,
            verified: pinned.as_ref().is_some_and(|p| p.verified),
            identity_changed: pinned.is_some_and(|p| p.pending_key.is_some()),
            devices,
        })
    }

    /// The safety number with a contact (as pinned: a pending key does not count).
    pub fn safety_number(&self, account_id: &AccountId) -> Result<SafetyNumber> {
        let pinned = self
            .db()
            .contacts()
            .pinned_identity(account_id)?
            .ok_or_else(|| CoreError::UnknownContact(account_id.into()))?;
        self.safety_number_with(account_id, &pinned.identity_key)
    }

    /// The safety number the contact's changed (pending) key would give, so the person
    /// can compare it before accepting; `None` when no change is pending.
    pub fn pending_safety_number(&self, account_id: &AccountId) -> Result<Option<SafetyNumber>> {
        let pinned = self
            .db()
            .contacts()
            .pinned_identity(account_id)?
            .ok_or_else(|| CoreError::UnknownContact(account_id.into()))?;
        pinned
            .pending_key
            .map(|key| self.safety_number_with(account_id, &key))
            .transpose()
    }

    fn safety_number_with(&self, account_id: &AccountId, their_key: &[u8]) -> Result<SafetyNumber> {
        let account = self.account()?;
        let theirs = IdentityKey::decode(their_key).map_err(|e| {
            CoreError::Crypto(cairn_crypto::CryptoError::InvalidKey {
                what: "contact identity",
                reason: e.to_string(),
            })
        })?;
        Ok(SafetyNumber::compute(
            account.id(),
            account.identity().public_key(),
            account_id,
            &theirs,
        )?)
    }

    /// Marks a contact verified (after comparing safety numbers) or not.
    pub fn set_verified(&mut self, account_id: &AccountId, verified: bool) -> Result<()> {
        self.contact(account_id)?;
        self.db().contacts().set_verified(account_id, verified)?;
        self.emit([Event::ContactChanged(account_id.to_owned())]);
        Ok(())
    }

    /// The person accepts a contact's changed identity key: it is pinned, old
    /// sessions are dropped, verification is cleared, and the envelopes that waited
    /// for this are processed now.
    pub fn accept_identity_change(&mut self, account_id: &AccountId) -> Result<Received> {
        let accepted = self.atomically(|this| {
            let accepted = this.db().contacts().accept_pending_identity(account_id)?;
            if accepted {
                // They were made under the old key.
                this.db().sessions().forget_account(account_id)?;
            }
            Ok(accepted)
        })?;
        // Held envelopes left by an interrupted acceptance are drained on a retry.
        if !accepted && self.db().held().from_sender(account_id)?.is_empty() {
            return Err(CoreError::NoIdentityChange(account_id.into()));
        }
        let mut received = self.drain_held(account_id)?;
        received.events.push(Event::ContactChanged(account_id.to_owned()));
        self.emit(received.events.clone());
        Ok(received)
    }

    /// The person refuses a contact's changed key: the old key stays pinned and what
    /// came with the new one is dropped.
    pub fn reject_identity_change(&mut self, account_id: &AccountId) -> Result<()> {
        let rejected = self.atomically(|this| {
            let rejected = this.db().contacts().reject_pending_identity(account_id)?;
            this.db().held().forget_sender(account_id)?;
            Ok(rejected)
        })?;
        if rejected {
            self.emit([Event::ContactChanged(account_id.to_owned())]);
            Ok(())
        } else {
            Err(CoreError::NoIdentityChange(account_id.into()))
        }
    }
}
