//! Group chats on MLS: one leaf per device, so every device of every member holds the
//! group's keys, and they change with every membership change.
//!
//! Owns: creating groups, adding and removing members, leaving, renaming, admins;
//! group texts; receiving Welcomes and MLS messages in epoch order (a message that
//! arrives before the commit it follows waits); and the rule that settles two
//! commits made concurrently in one epoch. Every MLS payload travels inside the 1:1
//! Signal sessions to each member device, so it goes direct or through the peer cache
//! like any message; one too large for an envelope (a Welcome to a large group) goes
//! in pieces. The group's name, admins and members' cards travel in MLS application
//! messages that only admins' are accepted for ([`GroupInfo`]): a newcomer gets
//! every card, the others the newcomer's. Leaves of devices their account removed
//! are taken out by the first admin device in tree order.
//!
//! **Concurrent commits.** Two admins may commit in the same epoch. The commit with
//! the lower SHA-256 wins, everywhere: a device keeps its state from before the last
//! commit it applied, and if a competing commit for that epoch with a lower hash
//! arrives, it returns to that state and applies the winner instead. An admin whose
//! own commit lost makes the same change again in the new epoch (re-adding, with the
//! last-resort key packages, whoever its lost commit had welcomed), so no member is
//! stranded on the losing branch.

use std::collections::{BTreeMap, HashMap};

use cairn_crypto::{
    key_package_device, verify_device_list, Group, GroupEvent, GroupIdentity, GroupState, LeafName, MessageHeader,
};
use cairn_proto::{
    check_group_name, decode_versioned, is_group_id, ContactCard, Content, DeviceKeyPackage, GroupContent, GroupInfo,
    GroupPacket, GroupPart, MessageId, TextMessage, MAX_TEXT_BYTES,
};
use cairn_store::{GroupRecord, NewMessage};
use data_encoding::HEXLOWER;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::messenger::{Messenger, MAX_STORED_RECORD};
use crate::{CoreError, Event, MessageView, OutboxId, Received, Result};

/// Most messages kept for one group while they wait for a commit or a Welcome.
const MAX_HELD_PER_GROUP: usize = 256;
/// Most group messages kept waiting in all.
const MAX_HELD_GROUP_MESSAGES: usize = 4096;
/// Most cards in one part of a group's description (each part must fit an envelope).
const CARDS_PER_INFO: usize = 24;
/// The name a group has until its description arrives.
const UNNAMED_GROUP: &str = "New group";
/// How long pieces of a large packet wait for the rest: a day (a sender sends all
/// of them at once, and they are fetched from the cache together).
const PART_KEPT_FOR_MILLIS: i64 = 24 * 3600 * 1000;
/// Most bytes of pieces kept from one sender, and from everyone.
const MAX_PART_BYTES_PER_SENDER: u64 = 8 * 1024 * 1024;
const MAX_PART_BYTES: u64 = 64 * 1024 * 1024;

/// A group as the UI shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// The group id (also the id of its conversation).
    pub group_id: String,
    /// Its name.
    pub name: String,
    /// The members, admins first.
    pub members: Vec<GroupMemberView>,
    /// The MLS epoch (how many commits the group has been through).
    pub epoch: u64,
    /// Whether this account is an admin.
    pub is_admin: bool,
    /// False once this device left or was removed.
    pub active: bool,
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberView {
    /// Their account id.
    pub account_id: String,
    /// Their display name.
    pub display_name: String,
    /// Whether they are an admin.
    pub admin: bool,
    /// How many of their devices are in the group.
    pub devices: usize,
}

/// What an admin's own commit did, to do again if a concurrent commit wins.
enum Redo {
    Add(Vec<String>),
    Remove(Vec<String>),
}

impl Redo {
    fn to_bytes(&self) -> Vec<u8> {
        let (verb, accounts) = match self {
            Redo::Add(accounts) => ("add", accounts),
            Redo::Remove(accounts) => ("remove", accounts),
        };
        format!("{verb} {}", accounts.join(" ")).into_bytes()
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut words = text.split_whitespace();
        let verb = words.next()?;
        let accounts = words.map(str::to_owned).collect();
        match verb {
            "add" => Some(Redo::Add(accounts)),
            "remove" => Some(Redo::Remove(accounts)),
            _ => None,
        }
    }
}

/// A group opened for one operation: its record, openmls's state, the group.
pub(crate) struct OpenGroup {
    record: GroupRecord,
    state: GroupState,
    group: Group,
}

/// Groups kept open between operations, so that each operation pays for what it
/// changes and not for decoding the whole group again. The database stays the truth:
/// an entry is put here only after its changes were written, and the cache is
/// emptied whenever a transaction rolls back.
#[derive(Default)]
pub(crate) struct OpenGroups(HashMap<String, OpenGroup>);

impl OpenGroups {
    /// Forgets every open group (after a rollback).
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

impl Messenger {
    /// Creates a group named `name` with this account as its admin, and adds the
    /// given contacts (every device of theirs with a key package) and this account's
    /// other devices.
    pub fn create_group(&mut self, name: &str, members: &[String]) -> Result<(GroupView, Vec<OutboxId>)> {
        let name = name.trim();
        check_group_name(name)?;
        let created = self.atomically(|this| {
            this.ensure_listed()?;
            let own = this.account()?.account_id.clone();
            let mut random = [0u8; 16];
            rand::rng().fill_bytes(&mut random);
            let group_id = format!("g{}", HEXLOWER.encode(&random));
            let state = GroupState::new();
            let group = Group::create(&state.provider(), &this.group_identity()?, group_id.as_bytes())?;
            let now = this.now_millis();
            let mut open = OpenGroup {
                record: GroupRecord {
                    group_id: group_id.clone(),
                    name: name.to_owned(),
                    admins: vec![own.clone()],
                    epoch: 0,
                    last_commit: None,
                    redo: None,
                    active: true,
                    created_at: now,
                },
                state,
                group,
            };
            this.store_group(&mut open)?;
            this.db.ensure_conversation(group_id.as_bytes(), name, now)?;
            let mut accounts: Vec<String> = members.iter().filter(|m| **m != own).cloned().collect();
            accounts.push(own);
            accounts.dedup();
            let queued = this.add_now(&mut open, &accounts)?;
            this.keep_open(open);
            Ok((this.group(&group_id)?, queued))
        })?;
        self.emit([Event::GroupChanged(created.0.group_id.clone())]);
        Ok(created)
    }

    /// Adds contacts to a group (admins only): every device of theirs with a key
    /// package joins in one commit.
    pub fn add_group_members(&mut self, group_id: &str, members: &[String]) -> Result<Vec<OutboxId>> {
        self.as_admin(group_id, |this, open| this.add_now(open, members))
    }

    /// Removes accounts (all their devices) from a group (admins only).
    pub fn remove_group_members(&mut self, group_id: &str, members: &[String]) -> Result<Vec<OutboxId>> {
        self.as_admin(group_id, |this, open| this.remove_now(open, members))
    }

    /// Renames a group (admins only).
    pub fn rename_group(&mut self, group_id: &str, name: &str) -> Result<Vec<OutboxId>> {
        let name = name.trim();
        check_group_name(name)?;
        self.as_admin(group_id, |this, open| {
            open.record.name = name.to_owned();
            this.store_group(open)?;
            this.send_info(open, &[])
        })
    }

    /// Makes a member an admin, or no longer one (admins only; a group keeps at least
    /// one admin).
    pub fn set_group_admin(&mut self, group_id: &str, account_id: &str, admin: bool) -> Result<Vec<OutboxId>> {
        self.as_admin(group_id, |this, open| {
            let admins = &mut open.record.admins;
            if admin && !admins.iter().any(|a| a == account_id) {
                if !open.group.members().iter().any(|m| m.account_id == account_id) {
                    return Err(CoreError::GroupRefused(format!("{account_id} is not a member")));
                }
                admins.push(account_id.to_owned());
            } else if !admin {
                admins.retain(|a| a != account_id);
                if admins.is_empty() {
                    return Err(CoreError::GroupRefused("a group keeps at least one admin".into()));
                }
            }
            this.store_group(open)?;
            this.send_info(open, &[])
        })
    }

    /// Leaves a group: proposes the removal of this account's devices, which an
    /// admin's device commits. The last admin first hands the role to another member.
    pub fn leave_group(&mut self, group_id: &str) -> Result<Vec<OutboxId>> {
        let left = self.atomically(|this| {
            this.ensure_listed()?;
            let mut open = this.open_group(group_id)?;
            let own = this.account()?.account_id.clone();
            let mut out = Vec::new();
            let others: Vec<String> = member_accounts(&open.group).into_keys().filter(|a| *a != own).collect();
            if open.record.admins == [own.clone()] {
                if let Some(heir) = others.first() {
                    open.record.admins = vec![own.clone(), heir.clone()];
                    out.extend(this.send_info(&mut open, &[])?);
                }
            }
            let identity = this.group_identity()?;
            let leaves = open.group.members();
            for proposal in open.group.propose_leaving(&open.state.provider(), &identity)? {
                out.extend(this.to_leaves(&leaves, &GroupPacket::Message(proposal), None)?);
            }
            open.record.admins.retain(|a| *a != own);
            open.record.active = false;
            this.store_group(&mut open)?;
            this.keep_open(open);
            Ok(out)
        })?;
        self.emit([Event::GroupChanged(group_id.to_owned())]);
        Ok(left)
    }

    /// Sends a text to a group: stores the message and queues it for every other
    /// member device; returns the message and the rows queued.
    pub fn send_group_text(&mut self, group_id: &str, body: &str) -> Result<(MessageView, Vec<OutboxId>)> {
        if body.trim().is_empty() || body.len() > MAX_TEXT_BYTES {
            return Err(CoreError::InvalidText);
        }
        let sent = self.atomically(|this| {
            this.ensure_listed()?;
            let mut open = this.open_group(group_id)?;
            if !open.record.active {
                return Err(CoreError::GroupRefused("you are no longer in this group".into()));
            }
            let mut id: MessageId = [0; 16];
            rand::rng().fill_bytes(&mut id);
            let sent_at = this.now_millis();
            let text = GroupContent::Text(TextMessage {
                id,
                sent_at: sent_at as u64,
                body: body.to_owned(),
                sync_peer: None,
            });
            let members = open.group.members();
            let queued = this.send_app_to(&mut open, &members, &text, Some(id))?;
            this.keep_open(open);
            Ok((this.keep_outgoing(group_id, id, sent_at, body)?, queued))
        })?;
        self.emit([Event::Message(sent.0.clone())]);
        Ok(sent)
    }

    /// Queues a failed group text again, as a new MLS message of the group's current
    /// epoch with the same id (members that have it already keep one copy).
    pub(crate) fn resend_group_text(&mut self, message: &MessageView) -> Result<Vec<OutboxId>> {
        let mut open = self.open_group(&message.conversation)?;
        if !open.record.active {
            return Err(CoreError::GroupRefused("you are no longer in this group".into()));
        }
        let text = GroupContent::Text(TextMessage {
            id: message.id,
            sent_at: message.sent_at as u64,
            body: message.body.clone(),
            sync_peer: None,
        });
        let members = open.group.members();
        let queued = self.send_app_to(&mut open, &members, &text, Some(message.id))?;
        self.keep_open(open);
        Ok(queued)
    }

    /// Every group this device is or was in, newest first.
    pub fn groups(&self) -> Result<Vec<GroupView>> {
        self.db
            .groups()?
            .into_iter()
            .map(|record| self.group(&record.group_id))
            .collect()
    }

    /// One group.
    pub fn group(&self, group_id: &str) -> Result<GroupView> {
        let open = self.load_group(group_id)?;
        let own = self.account()?;
        let admins = &open.record.admins;
        let mut members: Vec<GroupMemberView> = member_accounts(&open.group)
            .into_iter()
            .map(|(account_id, devices)| {
                let display_name = if account_id == own.account_id {
                    own.display_name.clone()
                } else {
                    self.db
                        .contact(&account_id)
                        .ok()
                        .flatten()
                        .map_or_else(|| account_id.clone(), |c| c.display_name)
                };
                GroupMemberView {
                    admin: admins.contains(&account_id),
                    display_name,
                    devices: devices.len(),
                    account_id,
                }
            })
            .collect();
        members.sort_by(|a, b| b.admin.cmp(&a.admin).then_with(|| a.display_name.cmp(&b.display_name)));
        Ok(GroupView {
            group_id: open.record.group_id.clone(),
            name: open.record.name.clone(),
            epoch: open.group.epoch(),
            is_admin: admins.contains(&own.account_id),
            active: open.record.active,
            members,
        })
    }

    /// How many messages wait for `group_id` to reach a later epoch (or for its
    /// Welcome).
    pub fn waiting_group_messages(&self, group_id: &str) -> Result<usize> {
        Ok(self.db.held_group_message_count(group_id)?)
    }

    /// This device's identity in groups, made on first use.
    pub(crate) fn group_identity(&self) -> Result<GroupIdentity> {
        self.ensure_group_device()?;
        let (signer, _) = self.db.group_device()?.ok_or(CoreError::NoAccount)?;
        Ok(GroupIdentity::from_bytes(self.own_leaf()?, &signer)?)
    }

    fn own_leaf(&self) -> Result<LeafName> {
        let account = self.account()?;
        Ok(LeafName {
            account_id: account.account_id.clone(),
            device_id: account.device.device_id(),
        })
    }

    /// Makes this device's group signature key and key package if it has none.
    pub(crate) fn ensure_group_device(&self) -> Result<()> {
        if self.db.group_device()?.is_none() {
            let identity = GroupIdentity::generate(self.own_leaf()?)?;
            self.renew_key_package_with(&identity, GroupState::new())?;
        }
        Ok(())
    }

    /// Replaces this device's key package (with its signed prekey: a key package
    /// expires, and a last-resort one should not live forever).
    pub(crate) fn renew_key_package(&self) -> Result<()> {
        let identity = self.group_identity()?;
        self.renew_key_package_with(&identity, GroupState::new())
    }

    fn renew_key_package_with(&self, identity: &GroupIdentity, state: GroupState) -> Result<()> {
        let key_package = identity.key_package(&state.provider())?;
        self.db.save_group_device(&identity.to_bytes()?, &state.to_bytes()?)?;
        let leaf = self.own_leaf()?;
        self.db
            .save_key_package(&leaf.account_id, leaf.device_id, &key_package)?;
        Ok(())
    }

    /// The key packages known for `account_id`'s listed devices.
    pub(crate) fn key_packages_of(&self, account_id: &str) -> Result<Vec<DeviceKeyPackage>> {
        Ok(self
            .db
            .key_packages(account_id)?
            .into_iter()
            .map(|(device_id, key_package)| DeviceKeyPackage { device_id, key_package })
            .collect())
    }

    /// Keeps the key packages (from a card) that name the device they are for.
    pub(crate) fn save_key_packages(&self, account_id: &str, packages: &[DeviceKeyPackage]) -> Result<()> {
        let own = self.own_leaf()?;
        for package in packages {
            let expected = LeafName {
                account_id: account_id.to_owned(),
                device_id: package.device_id,
            };
            if expected == own {
                continue;
            }
            match key_package_device(&package.key_package) {
                Ok(device) if device == expected => {
                    self.db
                        .save_key_package(account_id, package.device_id, &package.key_package)?
                }
                Ok(_) => tracing::warn!(account_id, "dropping a key package for another device"),
                Err(e) => tracing::warn!(account_id, %e, "dropping a bad key package"),
            }
        }
        Ok(())
    }

    /// Takes a group out of the open ones, or loads it.
    fn open_group(&mut self, group_id: &str) -> Result<OpenGroup> {
        match self.open_groups.0.remove(group_id) {
            Some(open) => Ok(open),
            None => self.load_group(group_id),
        }
    }

    /// Reads a group from the database.
    fn load_group(&self, group_id: &str) -> Result<OpenGroup> {
        let record = self
            .db
            .group(group_id)?
            .ok_or_else(|| CoreError::UnknownGroup(group_id.to_owned()))?;
        let state = GroupState::from_entries(self.db.group_state(group_id)?)?;
        let group = Group::load(&state.provider(), group_id.as_bytes())?
            .ok_or_else(|| CoreError::UnknownGroup(group_id.to_owned()))?;
        Ok(OpenGroup { record, state, group })
    }

    /// Puts a group whose changes are stored back among the open ones.
    fn keep_open(&mut self, open: OpenGroup) {
        self.open_groups.0.insert(open.record.group_id.clone(), open);
    }

    /// Writes what changed in a group. While a concurrent commit may still win (the
    /// last commit is known), the values replaced are remembered to go back to.
    fn store_group(&self, open: &mut OpenGroup) -> Result<()> {
        self.write_group(open, false)
    }

    fn write_group(&self, open: &mut OpenGroup, commit: bool) -> Result<()> {
        let group_id = &open.record.group_id;
        let changes = open.state.take_changes()?;
        self.db.write_group_state(group_id, &changes)?;
        if commit || open.record.last_commit.is_some() {
            self.db.remember_group_undo(group_id, &changes, commit)?;
        }
        open.record.epoch = open.group.epoch();
        Ok(self.db.save_group(&open.record)?)
    }

    /// Runs an admin's change in one transaction and queues what it sends.
    fn as_admin(
        &mut self,
        group_id: &str,
        change: impl FnOnce(&mut Self, &mut OpenGroup) -> Result<Vec<OutboxId>>,
    ) -> Result<Vec<OutboxId>> {
        let queued = self.atomically(|this| {
            this.ensure_listed()?;
            let mut open = this.open_group(group_id)?;
            if !open.record.active || !open.record.admins.contains(&this.account()?.account_id) {
                return Err(CoreError::NotGroupAdmin);
            }
            let queued = change(this, &mut open)?;
            this.keep_open(open);
            Ok(queued)
        })?;
        self.emit([Event::GroupChanged(group_id.to_owned())]);
        Ok(queued)
    }

    /// Adds the devices of `accounts` that are not in the group yet and have key
    /// packages: a commit to the members, a Welcome to the new devices, and the
    /// group's description to all.
    fn add_now(&mut self, open: &mut OpenGroup, accounts: &[String]) -> Result<Vec<OutboxId>> {
        let own = self.own_leaf()?;
        let before = open.group.members();
        let mut packages = Vec::new();
        for account in accounts {
            let listed: Vec<u8> = match self.devices_of(account) {
                Ok((_, devices)) => devices.iter().map(|d| d.device_id).collect(),
                Err(CoreError::UnknownContact(_)) => return Err(CoreError::UnknownContact(account.clone())),
                Err(e) => return Err(e),
            };
            let mut found = false;
            for (device_id, package) in self.db.key_packages(account)? {
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
    fn remove_now(&mut self, open: &mut OpenGroup, accounts: &[String]) -> Result<Vec<OutboxId>> {
        let own = self.account()?.account_id.clone();
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
    pub(crate) fn remove_unlisted_leaves(&mut self, account_id: &str) -> Result<Vec<OutboxId>> {
        // Never a listed device: a list that names a device takes its mark off.
        let retired = self.db.retired_devices(account_id)?;
        if retired.is_empty() {
            return Ok(Vec::new());
        }
        let own = self.own_leaf()?;
        let mut out = Vec::new();
        for record in self.db.groups()? {
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
    fn committed(&self, open: &mut OpenGroup, commit: &[u8], redo: Option<Redo>) -> Result<()> {
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
    fn send_info(&mut self, open: &mut OpenGroup, added: &[LeafName]) -> Result<Vec<OutboxId>> {
        let everyone: Vec<String> = member_accounts(&open.group).into_keys().collect();
        let new_accounts: Vec<String> = everyone
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
    fn send_info_to(
        &mut self,
        open: &mut OpenGroup,
        leaves: &[LeafName],
        accounts: &[String],
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
                Err(e) => tracing::warn!(account, %e, "a member without a card"),
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
    pub(crate) fn card_of(&self, account_id: &str) -> Result<ContactCard> {
        let contact = self
            .db
            .contact(account_id)?
            .ok_or_else(|| CoreError::UnknownContact(account_id.to_owned()))?;
        let bundles = self
            .db
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
    fn send_app_to(
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
    fn to_leaves(
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
            .into_parts(id, self.group_part_bytes)?
            .into_iter()
            .map(Content::Group)
            .collect();
        let mut out = Vec::new();
        for leaf in leaves.iter().filter(|l| Some(*l) != own.as_ref()) {
            for content in &contents {
                match self.queue_to(&leaf.account_id, Some(leaf.device_id), content, message) {
                    Ok(queued) => out.extend(queued),
                    Err(e) => {
                        tracing::warn!(account = leaf.account_id, device = leaf.device_id, %e, "a member device out of reach");
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Handles a group packet that `sender`'s device sent this device.
    pub(crate) fn receive_group(&mut self, sender: &str, packet: GroupPacket, out: &mut Received) -> Result<()> {
        let group_id = match packet {
            GroupPacket::Welcome(welcome) => self.receive_welcome(sender, &welcome, out)?,
            GroupPacket::Message(message) => {
                let header = MessageHeader::of(&message)?;
                let group_id = String::from_utf8(header.group_id.clone())
                    .ok()
                    .filter(|id| is_group_id(id))
                    .ok_or_else(|| CoreError::GroupRefused("a message for a malformed group id".into()))?;
                self.receive_group_message(&group_id, &header, sender, &message, out)?;
                group_id
            }
            GroupPacket::Part(part) => match self.receive_part(sender, part)? {
                Some(whole) => return self.receive_group(sender, whole, out),
                None => return Ok(()),
            },
        };
        self.process_waiting(&group_id, out)
    }

    /// Keeps one piece of a large packet; once every piece is here, returns the packet.
    /// Pieces are bounded per sender and in all, and those whose packet never
    /// completes go after [`PART_KEPT_FOR_MILLIS`].
    fn receive_part(&mut self, sender: &str, part: GroupPart) -> Result<Option<GroupPacket>> {
        part.check()?;
        let now = self.now_millis();
        self.db.forget_group_parts_before(now - PART_KEPT_FOR_MILLIS)?;
        let mut kept = self.db.group_parts(sender, &part.id)?;
        if kept.iter().any(|(_, count, _)| *count != part.count) {
            return Err(CoreError::GroupRefused(
                "pieces of one packet disagree on their number".into(),
            ));
        }
        if self.db.group_part_bytes(Some(sender))? + part.bytes.len() as u64 > MAX_PART_BYTES_PER_SENDER
            || self.db.group_part_bytes(None)? + part.bytes.len() as u64 > MAX_PART_BYTES
        {
            return Err(CoreError::GroupRefused(
                "too many pieces of group packets waiting".into(),
            ));
        }
        if let Err(at) = kept.binary_search_by_key(&part.index, |(index, _, _)| *index) {
            self.db
                .hold_group_part(sender, &part.id, part.index, part.count, &part.bytes, now)?;
            kept.insert(at, (part.index, part.count, part.bytes));
        }
        if kept.len() < usize::from(part.count) {
            return Ok(None);
        }
        self.db.release_group_parts(sender, &part.id)?;
        let pieces: Vec<GroupPart> = kept
            .into_iter()
            .map(|(index, count, bytes)| GroupPart {
                id: part.id,
                index,
                count,
                bytes,
            })
            .collect();
        Ok(Some(GroupPacket::from_parts(&pieces)?))
    }

    fn receive_welcome(&mut self, sender: &str, welcome: &[u8], out: &mut Received) -> Result<String> {
        let (_, device_state) = self.db.group_device()?.ok_or(CoreError::NoAccount)?;
        // The join leaves the group in a copy of the device's key-package state.
        let mut state = GroupState::from_bytes(&device_state)?;
        state.mark_unsaved();
        let group = Group::join(&state.provider(), welcome)?;
        let group_id = String::from_utf8(group.id())
            .ok()
            .filter(|id| is_group_id(id))
            .ok_or_else(|| CoreError::GroupRefused("a Welcome to a malformed group id".into()))?;
        if !group.members().iter().any(|l| l.account_id == sender) {
            return Err(CoreError::GroupRefused("a Welcome from outside the group".into()));
        }
        let existing = self.db.group(&group_id)?;
        if let Some(existing) = existing.as_ref().filter(|g| g.active) {
            // A second Welcome to a group this device is in: an admin re-adding it
            // after a concurrent commit won. Nobody else may reset the group.
            if !existing.admins.iter().any(|a| a == sender) {
                return Err(CoreError::GroupRefused("a Welcome to a group this device is in".into()));
            }
        }
        self.db.clear_group_state(&group_id)?;
        self.open_groups.0.remove(&group_id);
        let now = self.now_millis();
        let mut open = OpenGroup {
            record: GroupRecord {
                group_id: group_id.clone(),
                name: existing
                    .as_ref()
                    .map_or_else(|| UNNAMED_GROUP.to_owned(), |g| g.name.clone()),
                admins: existing
                    .as_ref()
                    .filter(|g| !g.admins.is_empty())
                    .map_or_else(|| vec![sender.to_owned()], |g| g.admins.clone()),
                epoch: 0,
                last_commit: None,
                redo: None,
                active: true,
                created_at: existing.as_ref().map_or(now, |g| g.created_at),
            },
            state,
            group,
        };
        self.store_group(&mut open)?;
        self.db
            .ensure_conversation(group_id.as_bytes(), &open.record.name, now)?;
        self.keep_open(open);
        out.events.push(Event::GroupChanged(group_id.clone()));
        Ok(group_id)
    }

    /// Applies, keeps for later, or drops one group message by its epoch.
    fn receive_group_message(
        &mut self,
        group_id: &str,
        header: &MessageHeader,
        sender: &str,
        message: &[u8],
        out: &mut Received,
    ) -> Result<()> {
        let Some(record) = self.db.group(group_id)? else {
            // Before its Welcome.
            return self.keep_waiting(group_id, header.epoch, sender, message);
        };
        if !record.active {
            return Ok(());
        }
        match header.epoch.cmp(&record.epoch) {
            std::cmp::Ordering::Greater => self.keep_waiting(group_id, header.epoch, sender, message),
            std::cmp::Ordering::Equal => match self.apply(group_id, sender, message, out) {
                Ok(()) => Ok(()),
                // While a fork may still be settled, a message of this epoch that does
                // not open may belong to the other branch: it waits for the switch.
                Err(e) if record.last_commit.is_some() && !is_final(&e) => {
                    tracing::debug!(group_id, %e, "a group message that may follow the other commit waits");
                    self.keep_waiting(group_id, header.epoch, sender, message)
                }
                Err(e) => Err(e),
            },
            std::cmp::Ordering::Less => {
                let wins = header.commit
                    && header.epoch + 1 == record.epoch
                    && record
                        .last_commit
                        .as_deref()
                        .is_some_and(|applied| Sha256::digest(message).as_slice() < applied);
                if wins {
                    self.switch_to(group_id, record, sender, message, out)
                } else if !header.commit {
                    // An application message overtaken by a commit: its epoch's keys
                    // are kept a while.
                    self.apply(group_id, sender, message, out)
                } else {
                    tracing::debug!(
                        group_id,
                        epoch = header.epoch,
                        "dropping a message from an earlier epoch"
                    );
                    Ok(())
                }
            }
        }
    }

    /// A concurrent commit with a lower hash than the one applied: return to the
    /// epoch before, apply it instead, and redo this device's own lost change.
    fn switch_to(
        &mut self,
        group_id: &str,
        mut record: GroupRecord,
        sender: &str,
        commit: &[u8],
        out: &mut Received,
    ) -> Result<()> {
        tracing::info!(group_id, "a concurrent commit wins; switching to it");
        let redo = record.redo.take().and_then(|r| Redo::from_bytes(&r));
        self.open_groups.0.remove(group_id);
        self.db.undo_group_commit(group_id)?;
        record.epoch = record.epoch.saturating_sub(1);
        record.last_commit = None;
        self.db.save_group(&record)?;
        self.apply(group_id, sender, commit, out)?;
        let Some(redo) = redo else { return Ok(()) };
        let mut open = self.open_group(group_id)?;
        if !open.record.admins.contains(&self.account()?.account_id) {
            return Ok(());
        }
        let again = match redo {
            Redo::Add(accounts) => self.add_now(&mut open, &accounts),
            Redo::Remove(accounts) => self.remove_now(&mut open, &accounts),
        };
        self.keep_open(open);
        if let Err(e) = again {
            tracing::warn!(group_id, %e, "could not redo a change a concurrent commit displaced");
        }
        Ok(())
    }

    /// Processes a message of the group's current epoch.
    fn apply(&mut self, group_id: &str, sender: &str, message: &[u8], out: &mut Received) -> Result<()> {
        let mut open = self.open_group(group_id)?;
        let event = open.group.receive(&open.state.provider(), message)?;
        match event {
            GroupEvent::Message { from, plaintext } => {
                if from.account_id != sender {
                    return Err(CoreError::GroupRefused("the group sender is not the session's".into()));
                }
                self.store_group(&mut open)?;
                match GroupContent::from_bytes(&plaintext)? {
                    GroupContent::Text(text) => self.receive_group_text(group_id, &from, text, out)?,
                    GroupContent::Info(info) => self.receive_info(&mut open, &from, info, out)?,
                }
            }
            GroupEvent::Committed { from, removed_self, .. } => {
                let from = from.ok_or_else(|| CoreError::GroupRefused("a commit from outside the group".into()))?;
                if from.account_id != sender || !open.record.admins.contains(&from.account_id) {
                    // Nothing is stored: the transaction and the state stay as they were.
                    return Err(CoreError::NotGroupAdmin);
                }
                open.record.active = !removed_self;
                self.committed(&mut open, message, None)?;
                out.events.push(Event::GroupChanged(group_id.to_owned()));
            }
            GroupEvent::Proposed { from } => {
                if from.account_id != sender {
                    return Err(CoreError::GroupRefused("the proposer is not the session's".into()));
                }
                self.store_group(&mut open)?;
                if self.commits_for(&open, &from.account_id)? {
                    let before = open.group.members();
                    let (commit, _) = open
                        .group
                        .commit_proposals(&open.state.provider(), &self.group_identity()?)?;
                    self.to_leaves(&before, &GroupPacket::Message(commit.clone()), None)?;
                    open.record.admins.retain(|a| *a != from.account_id);
                    self.committed(&mut open, &commit, None)?;
                    self.send_info(&mut open, &[])?;
                    out.events.push(Event::GroupChanged(group_id.to_owned()));
                }
            }
        }
        self.keep_open(open);
        Ok(())
    }

    /// Whether this device is the one to commit `proposer`'s proposal: the first
    /// leaf, in tree order, of an admin other than the proposer.
    fn commits_for(&self, open: &OpenGroup, proposer: &str) -> Result<bool> {
        let committer = open
            .group
            .members()
            .into_iter()
            .find(|l| l.account_id != proposer && open.record.admins.contains(&l.account_id));
        Ok(committer == Some(self.own_leaf()?))
    }

    fn receive_group_text(
        &mut self,
        group_id: &str,
        from: &LeafName,
        text: TextMessage,
        out: &mut Received,
    ) -> Result<()> {
        let own = from.account_id == self.account()?.account_id;
        let new = self.db.insert_message(&NewMessage {
            id: text.id,
            conversation_id: group_id.as_bytes(),
            sender: &from.account_id,
            sent_at: text.sent_at as i64,
            body: &text.body,
            state: if own { "sent" } else { "received" },
            outgoing: own,
        })?;
        if new {
            out.events.push(Event::Message(self.message(&text.id)?));
        } else {
            let existing = self.message(&text.id)?;
            if existing.conversation != group_id || existing.sender != from.account_id {
                return Err(CoreError::MessageIdCollision);
            }
        }
        Ok(())
    }

    /// An admin's description of the group: name, admins, and the members' cards,
    /// which make members who are not yet contacts reachable.
    fn receive_info(
        &mut self,
        open: &mut OpenGroup,
        from: &LeafName,
        info: GroupInfo,
        out: &mut Received,
    ) -> Result<()> {
        if !open.record.admins.contains(&from.account_id) {
            return Err(CoreError::NotGroupAdmin);
        }
        let own = self.account()?.account_id.clone();
        for card in &info.cards {
            if let Err(e) = self.adopt_member_card(&own, card, out) {
                tracing::warn!(%e, "a member card that does not fit");
            }
        }
        let members = member_accounts(&open.group);
        open.record.name = info.name;
        open.record.admins = info.admins.into_iter().filter(|a| members.contains_key(a)).collect();
        if open.record.admins.is_empty() {
            open.record.admins.push(from.account_id.clone());
        }
        self.store_group(open)?;
        out.events.push(Event::GroupChanged(open.record.group_id.clone()));
        Ok(())
    }

    /// Keeps a member's card: a stranger becomes a contact (so their devices can be
    /// reached); a known account's newer card updates it. A card whose key differs
    /// from the one pinned for that account is ignored: only the person can change it.
    fn adopt_member_card(&mut self, own: &str, card: &ContactCard, out: &mut Received) -> Result<()> {
        let (list, identity) = verify_device_list(&card.device_list)?;
        let account_id = list.account_id.clone();
        if account_id == own {
            return Ok(());
        }
        match self.db.pinned_identity(&account_id)? {
            Some(pinned) if pinned.identity_key[..] != identity.serialize()[..] => return Ok(()),
            Some(_) => {}
            None => self.db.pin_identity(&account_id, &identity.serialize())?,
        }
        let is_new = self.db.contact(&account_id)?.is_none();
        match self.save_card(&account_id, card, &list) {
            Ok(()) | Err(CoreError::DeviceListRollback { .. }) => {}
            Err(e) => return Err(e),
        }
        if is_new {
            out.events.push(Event::ContactChanged(account_id));
        }
        Ok(())
    }

    fn keep_waiting(&self, group_id: &str, epoch: u64, sender: &str, message: &[u8]) -> Result<()> {
        if self.db.held_group_message_count(group_id)? >= MAX_HELD_PER_GROUP
            || self.db.held_group_message_total()? >= MAX_HELD_GROUP_MESSAGES
        {
            return Err(CoreError::GroupRefused("too many group messages waiting".into()));
        }
        Ok(self.db.hold_group_message(group_id, epoch, sender, message)?)
    }

    /// Processes the messages that waited for the group's current epoch, epoch by
    /// epoch, until none moves it further.
    fn process_waiting(&mut self, group_id: &str, out: &mut Received) -> Result<()> {
        loop {
            let Some(record) = self.db.group(group_id)? else {
                return Ok(());
            };
            let mut moved = false;
            for waiting in self.db.held_group_messages(group_id, record.epoch)? {
                self.db.release_group_message(waiting.seq)?;
                let Ok(header) = MessageHeader::of(&waiting.message) else {
                    continue;
                };
                if let Err(e) = self.receive_group_message(group_id, &header, &waiting.sender, &waiting.message, out) {
                    tracing::debug!(group_id, %e, "a waiting group message did not open");
                }
                let now = self.db.group(group_id)?.map(|g| (g.epoch, g.active));
                if now != Some((record.epoch, record.active)) {
                    moved = true;
                    break;
                }
            }
            if !moved {
                return Ok(());
            }
        }
    }
}

/// Errors that waiting cannot cure: the sender had no right to send it.
fn is_final(error: &CoreError) -> bool {
    matches!(error, CoreError::NotGroupAdmin | CoreError::GroupRefused(_))
}

/// The member accounts and their device ids, from the tree.
fn member_accounts(group: &Group) -> BTreeMap<String, Vec<u8>> {
    let mut accounts: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for leaf in group.members() {
        accounts.entry(leaf.account_id).or_default().push(leaf.device_id);
    }
    accounts
}

#[cfg(test)]
mod tests {
    use cairn_store::{KeyVault, ProfileDir};

    use crate::{Handed, Messenger, QueuedEnvelope, Unlock};

    fn person(vault: &KeyVault, name: &str) -> (tempfile::TempDir, Messenger) {
        let dir = tempfile::tempdir().unwrap();
        let mut messenger = Messenger::create_profile(&ProfileDir::new(dir.path()), Unlock::Keyring(vault)).unwrap();
        messenger.create_account(name).unwrap();
        (dir, messenger)
    }

    /// Delivers `in_flight` (taken from person `from`'s outbox) and then whatever the
    /// outboxes hold, each round's envelopes last first.
    fn deliver_backwards(people: &mut [&mut Messenger], mut in_flight: Vec<(usize, QueuedEnvelope)>) {
        loop {
            if in_flight.is_empty() {
                for (from, m) in people.iter_mut().enumerate() {
                    in_flight.extend(m.due_envelopes(1000).unwrap().into_iter().map(|q| (from, q)));
                }
            }
            if in_flight.is_empty() {
                return;
            }
            for (from, queued) in std::mem::take(&mut in_flight).into_iter().rev() {
                let mailbox = queued.outgoing.envelope.mailbox;
                let to = people.iter().position(|m| m.mailbox().ok() == Some(mailbox)).unwrap();
                people[to].receive(&queued.outgoing.envelope.to_bytes()).unwrap();
                people[from].handed(&queued, Handed::ToDevice).unwrap();
            }
        }
    }

    #[test]
    fn packets_too_large_for_an_envelope_go_in_parts_that_may_arrive_in_any_order() {
        let vault = KeyVault::with_store(keyring_core::mock::Store::new().unwrap());
        let (_a, mut alice) = person(&vault, "Alice");
        let (_b, mut bob) = person(&vault, "Bob");
        bob.accept_invite(&alice.account_info().unwrap().invite_link).unwrap();
        deliver_backwards(&mut [&mut alice, &mut bob], Vec::new());
        let bob_id = bob.account_info().unwrap().account_id;

        // Pieces of at most 1,500 bytes: the Welcome and the description with every
        // card take several each.
        alice.group_part_bytes = 1_500;
        let (group, queued) = alice.create_group("Climbing", std::slice::from_ref(&bob_id)).unwrap();
        let due = alice.due_envelopes(1000).unwrap();
        assert_eq!(due.len(), queued.len());
        let parts = due.iter().filter(|q| q.outgoing.envelope.body.len() < 4_000).count();
        assert!(due.len() > 4 && parts == due.len(), "{} envelopes", due.len());
        deliver_backwards(&mut [&mut alice, &mut bob], due.into_iter().map(|q| (0, q)).collect());
        let view = bob.group(&group.group_id).unwrap();
        assert_eq!((view.name.as_str(), view.members.len()), ("Climbing", 2));

        alice.send_group_text(&group.group_id, "rope at 8").unwrap();
        deliver_backwards(&mut [&mut alice, &mut bob], Vec::new());
        assert_eq!(bob.conversation(&group.group_id, 10).unwrap()[0].body, "rope at 8");
        assert_eq!(bob.db.group_part_bytes(None).unwrap(), 0, "no piece is left behind");
    }
}
