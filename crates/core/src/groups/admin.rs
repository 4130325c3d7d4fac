//! What an admin's device does to a group and sends its members: adding and removing
//! devices (commits and Welcomes), taking out the leaves of devices their account
//! removed, the group's description with the cards members need, and the fan-out of
//! every MLS payload to each member device through the 1:1 sessions (in pieces when
//! too large for one envelope).

use cairn_crypto::LeafName;
use cairn_proto::{
    decode_versioned, AccountId, ContactCard, Content, DeviceId, GroupContent, GroupInfo, GroupPacket, MessageId,
};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{member_accounts, OpenGroup, Redo};
use crate::messenger::{Messenger, MAX_STORED_RECORD};
use crate::{CoreError, OutboxId, Result};

/// Most cards in one part of a group's description (each part must fit an envelope).
const CARDS_PER_INFO: usize = 24;

impl Messenger {
    /// Adds the devices of `accounts` that are not in the group yet and have key
    /// packages: a commit to the members, a Welcome to the new devices, and the
    /// group's description to all.
    pub(super) fn add_now(&mut self, open: &mut OpenGroup, accounts: &[AccountId]) -> Result<Vec<OutboxId>> {
        let own = self.own_leaf()?;
        let before = open.group.members();
        let mut packages = Vec::new();
        for account in accounts {
            let listed: Vec<DeviceId> = match self.devices_of(account) {
                Ok((_, devices)) => devices.iter().map(|d| d.device_id).collect(),
                Err(CoreError::UnknownContact(_)) => return Err(CoreError::UnknownContact(account.clone())),
                Err(e) => return Err(e),
            };
            let mut found = false;
            for (device_id, package) in self.db().groups().key_packages(account)? {
                let leaf = LeafName {
                    account_id: account.clone(),
                    device_id,
                };
                if leaf == own || !listed.contains(&device_id) || before.contains(&leaf) {
                    continue;
                }
                found = true;
                packages.push(package);
            }
            let in_group = before.iter().any(|l| l.account_id == *account);
            if !found && !in_group && *account != own.account_id {
                return Err(CoreError::NoKeyPackage(account.clone()));
            }
        }
        if packages.is_empty() {
            return Ok(Vec::new());
        }
        let (commit, welcome) = open
            .group
            .add(&open.state.provider(), &self.group_identity()?, &packages)?;
        let mut out = self.to_leaves(&before, &GroupPacket::Message(commit.clone()), None)?;
        let added: Vec<LeafName> = open
            .group
            .members()
            .into_iter()
            .filter(|l| !before.contains(l))
            .collect();
        out.extend(self.to_leaves(&added, &GroupPacket::Welcome(welcome), None)?);
        self.committed(open, &commit, Some(Redo::Add(accounts.to_vec())))?;
        out.extend(self.send_info(open, &added)?);
        Ok(out)
    }

    /// Removes every device of `accounts`: a commit to all (the removed learn they
    /// are out), and the description to those who stay.
    pub(super) fn remove_now(&mut self, open: &mut OpenGroup, accounts: &[AccountId]) -> Result<Vec<OutboxId>> {
        let own = self.account()?.id().to_owned();
        if accounts.contains(&own) {
            return Err(CoreError::GroupRefused(
                "leave the group instead of removing yourself".into(),
            ));
        }
        let before = open.group.members();
        let removed: Vec<LeafName> = before
            .iter()
            .filter(|l| accounts.contains(&l.account_id))
            .cloned()
            .collect();
        if removed.is_empty() {
            return Ok(Vec::new());
        }
        let commit = open
            .group
            .remove(&open.state.provider(), &self.group_identity()?, &removed)?;
        let mut out = self.to_leaves(&before, &GroupPacket::Message(commit.clone()), None)?;
        open.record.admins.retain(|a| !accounts.contains(a));
        self.committed(open, &commit, Some(Redo::Remove(accounts.to_vec())))?;
        out.extend(self.send_info(open, &[])?);
        Ok(out)
    }

    /// Takes the leaves of `account_id`'s retired devices (ones its device list
    /// dropped: a device merely missing from a list held here may be one so new that
    /// its list is still on the way) out of every group this account administers, one
    /// commit per group. Of the admins' devices, only the first in tree order
    /// commits, so a removal does not set off concurrent commits. Runs outside any
    /// transaction (each group is one); a group that fails is logged and left for the
    /// next change.
    pub(crate) fn remove_unlisted_leaves(&mut self, account_id: &AccountId) -> Result<Vec<OutboxId>> {
        // Never a listed device: a list that names a device takes its mark off.
        let retired = self.db().contacts().retired_devices(account_id)?;
        if retired.is_empty() {
            return Ok(Vec::new());
        }
        let own = self.own_leaf()?;
        let mut out = Vec::new();
        for record in self.db().groups().all()? {
            if !record.active || !record.admins.contains(&own.account_id) {
                continue;
            }
            let outcome = self.atomically(|this| {
                let mut open = this.open_group(&record.group_id)?;
                let before = open.group.members();
                let (gone, staying): (Vec<LeafName>, Vec<LeafName>) = before
                    .iter()
                    .cloned()
                    .partition(|l| l.account_id == account_id && retired.contains(&l.device_id));
                let committer = staying.iter().find(|l| open.record.admins.contains(&l.account_id));
                if gone.is_empty() || committer != Some(&own) {
                    this.keep_open(open);
                    return Ok(Vec::new());
                }
                let commit = open
                    .group
                    .remove(&open.state.provider(), &this.group_identity()?, &gone)?;
                let mut out = this.to_leaves(&staying, &GroupPacket::Message(commit.clone()), None)?;
                this.committed(&mut open, &commit, None)?;
                out.extend(this.send_info(&mut open, &[])?);
                this.keep_open(open);
                Ok(out)
            });
            match outcome {
                Ok(more) => out.extend(more),
                Err(e) => tracing::warn!(group = record.group_id, %e, "could not remove a retired device's leaves"),
            }
        }
        Ok(out)
    }

    /// Stores a commit this device made or applied: the values it replaced are
    /// kept, with its hash, while a concurrent commit may still win.
    pub(super) fn committed(&self, open: &mut OpenGroup, commit: &[u8], redo: Option<Redo>) -> Result<()> {
        open.record.last_commit = Some(Sha256::digest(commit).to_vec());
        open.record.redo = redo.map(|r| r.to_bytes());
        self.write_group(open, true)
    }

    /// Sends the group's description: to the members that were there, the name, the
    /// admins and the cards of the accounts whose devices were just `added`; to the
    /// devices just added, every member's card (they have to reach them all). So a
    /// change costs what it changed, not a copy of every card to every member.
    /// Texts and descriptions are MLS application messages; only admins'
    /// descriptions are taken.
    pub(super) fn send_info(&mut self, open: &mut OpenGroup, added: &[LeafName]) -> Result<Vec<OutboxId>> {
        let everyone: Vec<AccountId> = member_accounts(&open.group).into_keys().collect();
        let new_accounts: Vec<AccountId> = everyone
            .iter()
            .filter(|a| added.iter().any(|l| l.account_id == **a))
            .cloned()
            .collect();
        let (new_leaves, old_leaves): (Vec<LeafName>, Vec<LeafName>) =
            open.group.members().into_iter().partition(|l| added.contains(l));
        let mut out = self.send_info_to(open, &old_leaves, &new_accounts)?;
        if !new_leaves.is_empty() {
            out.extend(self.send_info_to(open, &new_leaves, &everyone)?);
        }
        Ok(out)
    }

    /// The description with the cards of `accounts`, to `leaves`. A card with its
    /// prekey bundles is a few KiB: the cards go in parts that each fit one envelope,
    /// and receivers take each part as it comes.
    pub(super) fn send_info_to(
        &mut self,
        open: &mut OpenGroup,
        leaves: &[LeafName],
        accounts: &[AccountId],
    ) -> Result<Vec<OutboxId>> {
        let me = self.own_leaf()?;
        if leaves.iter().all(|l| *l == me) {
            return Ok(Vec::new());
        }
        let own = me.account_id;
        let mut cards = Vec::new();
        for account in accounts {
            let card = if *account == own {
                self.own_card()
            } else {
                self.card_of(account)
            };
            match card {
                Ok(card) => cards.push(card),
                Err(e) => tracing::warn!(%account, %e, "a member without a card"),
            }
        }
        let parts: Vec<Vec<ContactCard>> = if cards.is_empty() {
            vec![Vec::new()]
        } else {
            cards.chunks(CARDS_PER_INFO).map(<[ContactCard]>::to_vec).collect()
        };
        let mut out = Vec::new();
        for cards in parts {
            let info = GroupContent::Info(GroupInfo {
                name: open.record.name.clone(),
                admins: open.record.admins.clone(),
                cards,
            });
            out.extend(self.send_app_to(open, leaves, &info, None)?);
        }
        Ok(out)
    }

    /// A contact's card as this device knows it.
    pub(crate) fn card_of(&self, account_id: &AccountId) -> Result<ContactCard> {
        let contact = self
            .db()
            .contacts()
            .get(account_id)?
            .ok_or_else(|| CoreError::UnknownContact(account_id.to_owned()))?;
        let bundles = self
            .db()
            .contacts()
            .bundles(account_id)?
            .into_iter()
            .map(|(_, bytes)| decode_versioned(&bytes, MAX_STORED_RECORD))
            .collect::<Result<_, _>>()?;
        Ok(ContactCard {
            display_name: contact.display_name,
            device_list: decode_versioned(&contact.device_list, MAX_STORED_RECORD)?,
            bundles,
            key_packages: self.key_packages_of(account_id)?,
        })
    }

    /// Encrypts an application message and queues it for `leaves` (but this device),
    /// as carrying `message` if it is a text.
    pub(super) fn send_app_to(
        &mut self,
        open: &mut OpenGroup,
        leaves: &[LeafName],
        content: &GroupContent,
        message: Option<MessageId>,
    ) -> Result<Vec<OutboxId>> {
        let sealed = open
            .group
            .send(&open.state.provider(), &self.group_identity()?, &content.to_bytes())?;
        self.store_group(open)?;
        self.to_leaves(leaves, &GroupPacket::Message(sealed), message)
    }

    /// Queues `packet` for every device in `leaves` but this one, through the 1:1
    /// sessions (a packet too large for one envelope goes in parts, one envelope
    /// each). A device that cannot be reached yet (no session or bundle) is skipped.
    pub(super) fn to_leaves(
        &self,
        leaves: &[LeafName],
        packet: &GroupPacket,
        message: Option<MessageId>,
    ) -> Result<Vec<OutboxId>> {
        let own = self.own_leaf().ok();
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let contents: Vec<Content> = packet
            .clone()
            .into_parts(id, self.open_groups().part_bytes())?
            .into_iter()
            .map(Content::Group)
            .collect();
        let mut out = Vec::new();
        for leaf in leaves.iter().filter(|l| Some(*l) != own.as_ref()) {
            for content in &contents {
                match self.queue_to(&leaf.account_id, Some(leaf.device_id), content, message) {
                    Ok(queued) => out.extend(queued),
                    Err(e) => {
                        tracing::warn!(account = %leaf.account_id, device = %leaf.device_id, %e, "a member device out of reach");
                        break;
                    }
                }
            }
        }
        Ok(out)
    }
}
