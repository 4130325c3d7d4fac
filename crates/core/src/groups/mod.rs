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
//! messages that only admins' are accepted for ([`cairn_proto::GroupInfo`]): a newcomer gets
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
//!
//! Here: the public operations and the group state kept open between them. In
//! `admin`: what an admin's device changes and sends. In `inbound`: what arrives. In
//! `ordering`: where a message goes among the epochs, and the fork choice, without MLS.

use std::collections::{BTreeMap, HashMap};

use cairn_crypto::{key_package_device, Group, GroupIdentity, GroupState, LeafName};
use cairn_proto::{
    check_group_name, AccountId, DeviceId, DeviceKeyPackage, GroupContent, GroupPacket, MessageId, TextMessage,
    MAX_TEXT_BYTES,
};
use cairn_store::GroupRecord;
use data_encoding::HEXLOWER;
use rand::RngCore;

use crate::messenger::Messenger;
use crate::{CoreError, Event, MessageView, OutboxId, Result};

mod admin;
mod inbound;
mod ordering;

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
    pub account_id: AccountId,
    /// Their display name.
    pub display_name: String,
    /// Whether they are an admin.
    pub admin: bool,
    /// How many of their devices are in the group.
    pub devices: usize,
}

/// What an admin's own commit did, to do again if a concurrent commit wins.
enum Redo {
    Add(Vec<AccountId>),
    Remove(Vec<AccountId>),
}

impl Redo {
    fn to_bytes(&self) -> Vec<u8> {
        let (verb, accounts) = match self {
            Redo::Add(accounts) => ("add", accounts),
            Redo::Remove(accounts) => ("remove", accounts),
        };
        let accounts: Vec<&str> = accounts.iter().map(AccountId::as_str).collect();
        format!("{verb} {}", accounts.join(" ")).into_bytes()
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut words = text.split_whitespace();
        let verb = words.next()?;
        let accounts = words.map(AccountId::parse).collect::<Result<_, _>>().ok()?;
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
pub(crate) struct OpenGroups {
    open: HashMap<String, OpenGroup>,
    /// Group packets longer than this go in parts (smaller in tests).
    part_bytes: usize,
}

impl Default for OpenGroups {
    fn default() -> Self {
        Self {
            open: HashMap::new(),
            part_bytes: cairn_proto::MAX_GROUP_PART_BYTES,
        }
    }
}

impl OpenGroups {
    /// Forgets every open group (after a rollback).
    pub(crate) fn clear(&mut self) {
        self.open.clear();
    }

    /// Forgets one group (it was left, or its state was replaced).
    pub(crate) fn forget(&mut self, group_id: &str) {
        self.open.remove(group_id);
    }

    /// The longest group packet sent in one piece.
    pub(crate) fn part_bytes(&self) -> usize {
        self.part_bytes
    }
}

impl Messenger {
    /// Creates a group named `name` with this account as its admin, and adds the
    /// given contacts (every device of theirs with a key package) and this account's
    /// other devices.
    pub fn create_group(&mut self, name: &str, members: &[AccountId]) -> Result<(GroupView, Vec<OutboxId>)> {
        let name = name.trim();
        check_group_name(name)?;
        let created = self.atomically(|this| {
            this.ensure_listed()?;
            let own = this.account()?.id().to_owned();
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
            this.db()
                .messages()
                .ensure_conversation(group_id.as_bytes(), name, now)?;
            let mut accounts: Vec<AccountId> = members.iter().filter(|m| **m != own).cloned().collect();
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
    pub fn add_group_members(&mut self, group_id: &str, members: &[AccountId]) -> Result<Vec<OutboxId>> {
        self.as_admin(group_id, |this, open| this.add_now(open, members))
    }

    /// Removes accounts (all their devices) from a group (admins only).
    pub fn remove_group_members(&mut self, group_id: &str, members: &[AccountId]) -> Result<Vec<OutboxId>> {
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
    pub fn set_group_admin(&mut self, group_id: &str, account_id: &AccountId, admin: bool) -> Result<Vec<OutboxId>> {
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
            let own = this.account()?.id().to_owned();
            let mut out = Vec::new();
            let others: Vec<AccountId> = member_accounts(&open.group).into_keys().filter(|a| *a != own).collect();
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
        self.db()
            .groups()
            .all()?
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
                let display_name = if account_id == own.id() {
                    own.display_name().to_owned()
                } else {
                    self.db()
                        .contacts()
                        .get(&account_id)
                        .ok()
                        .flatten()
                        .map_or_else(|| account_id.to_string(), |c| c.display_name)
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
            is_admin: admins.iter().any(|a| a == own.id()),
            active: open.record.active,
            members,
        })
    }

    /// How many messages wait for `group_id` to reach a later epoch (or for its
    /// Welcome).
    pub fn waiting_group_messages(&self, group_id: &str) -> Result<usize> {
        Ok(self.db().groups().held_message_count(group_id)?)
    }

    /// This device's identity in groups, made on first use.
    pub(crate) fn group_identity(&self) -> Result<GroupIdentity> {
        self.ensure_group_device()?;
        let (signer, _) = self.db().groups().device()?.ok_or(CoreError::NoAccount)?;
        Ok(GroupIdentity::from_bytes(self.own_leaf()?, &signer)?)
    }

    fn own_leaf(&self) -> Result<LeafName> {
        let account = self.account()?;
        Ok(LeafName {
            account_id: account.id().to_owned(),
            device_id: account.device().device_id(),
        })
    }

    /// Makes this device's group signature key and key package if it has none.
    pub(crate) fn ensure_group_device(&self) -> Result<()> {
        if self.db().groups().device()?.is_none() {
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
        self.db()
            .groups()
            .save_device(&identity.to_bytes()?, &state.to_bytes()?)?;
        let leaf = self.own_leaf()?;
        self.db()
            .groups()
            .save_key_package(&leaf.account_id, leaf.device_id, &key_package)?;
        Ok(())
    }

    /// The key packages known for `account_id`'s listed devices.
    pub(crate) fn key_packages_of(&self, account_id: &AccountId) -> Result<Vec<DeviceKeyPackage>> {
        Ok(self
            .db()
            .groups()
            .key_packages(account_id)?
            .into_iter()
            .map(|(device_id, key_package)| DeviceKeyPackage { device_id, key_package })
            .collect())
    }

    /// Keeps the key packages (from a card) that name the device they are for.
    pub(crate) fn save_key_packages(&self, account_id: &AccountId, packages: &[DeviceKeyPackage]) -> Result<()> {
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
                    self.db()
                        .groups()
                        .save_key_package(account_id, package.device_id, &package.key_package)?
                }
                Ok(_) => tracing::warn!(%account_id, "dropping a key package for another device"),
                Err(e) => tracing::warn!(%account_id, %e, "dropping a bad key package"),
            }
        }
        Ok(())
    }

    /// Takes a group out of the open ones, or loads it.
    fn open_group(&mut self, group_id: &str) -> Result<OpenGroup> {
        match self.open_groups_mut().open.remove(group_id) {
            Some(open) => Ok(open),
            None => self.load_group(group_id),
        }
    }

    /// Reads a group from the database.
    fn load_group(&self, group_id: &str) -> Result<OpenGroup> {
        let record = self
            .db()
            .groups()
            .get(group_id)?
            .ok_or_else(|| CoreError::UnknownGroup(group_id.to_owned()))?;
        let state = GroupState::from_entries(self.db().groups().state(group_id)?)?;
        let group = Group::load(&state.provider(), group_id.as_bytes())?
            .ok_or_else(|| CoreError::UnknownGroup(group_id.to_owned()))?;
        Ok(OpenGroup { record, state, group })
    }

    /// Puts a group whose changes are stored back among the open ones.
    fn keep_open(&mut self, open: OpenGroup) {
        self.open_groups_mut().open.insert(open.record.group_id.clone(), open);
    }

    /// Writes what changed in a group. While a concurrent commit may still win (the
    /// last commit is known), the values replaced are remembered to go back to.
    fn store_group(&self, open: &mut OpenGroup) -> Result<()> {
        self.write_group(open, false)
    }

    fn write_group(&self, open: &mut OpenGroup, commit: bool) -> Result<()> {
        let group_id = &open.record.group_id;
        let changes = open.state.take_changes()?;
        self.db().groups().write_state(group_id, &changes)?;
        if commit || open.record.last_commit.is_some() {
            self.db().groups().remember_undo(group_id, &changes, commit)?;
        }
        open.record.epoch = open.group.epoch();
        Ok(self.db().groups().save(&open.record)?)
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
            let own = this.account()?.id();
            if !open.record.active || !open.record.admins.iter().any(|a| a == own) {
                return Err(CoreError::NotGroupAdmin);
            }
            let queued = change(this, &mut open)?;
            this.keep_open(open);
            Ok(queued)
        })?;
        self.emit([Event::GroupChanged(group_id.to_owned())]);
        Ok(queued)
    }
}

/// The member accounts and their device ids, from the tree.
fn member_accounts(group: &Group) -> BTreeMap<AccountId, Vec<DeviceId>> {
    let mut accounts: BTreeMap<AccountId, Vec<DeviceId>> = BTreeMap::new();
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
        alice.open_groups_mut().part_bytes = 1_500;
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
        assert_eq!(
            bob.db().groups().part_bytes(None).unwrap(),
            0,
            "no piece is left behind"
        );
    }
}
