//! What arrives for groups: Welcomes, MLS messages in epoch order (a message made in a
//! later epoch waits for the commits before it; see [`super::ordering`]), the switch to
//! a concurrent commit that wins, proposals an admin device commits, texts, the
//! group's description (admins' only) and the member cards in it, and the pieces of
//! packets too large for one envelope.

use cairn_crypto::{verify_device_list, Group, GroupEvent, GroupState, LeafName, MessageHeader};
use cairn_proto::{is_group_id, AccountId, ContactCard, GroupContent, GroupInfo, GroupPacket, GroupPart, TextMessage};
use cairn_store::{GroupRecord, NewMessage};

use super::ordering::{place, Placement, Position, Standing};
use super::{member_accounts, OpenGroup, Redo};
use crate::messenger::Messenger;
use crate::{CoreError, DeliveryState, Event, Received, Result};

/// Most messages kept for one group while they wait for a commit or a Welcome.
const MAX_HELD_PER_GROUP: usize = 256;
/// Most group messages kept waiting in all.
const MAX_HELD_GROUP_MESSAGES: usize = 4096;
/// The name a group has until its description arrives.
const UNNAMED_GROUP: &str = "New group";
/// How long pieces of a large packet wait for the rest: a day (a sender sends all
/// of them at once, and they are fetched from the cache together).
const PART_KEPT_FOR_MILLIS: i64 = 24 * 3600 * 1000;
/// Most bytes of pieces kept from one sender, and from everyone.
const MAX_PART_BYTES_PER_SENDER: u64 = 8 * 1024 * 1024;
const MAX_PART_BYTES: u64 = 64 * 1024 * 1024;

impl Messenger {
    /// Handles a group packet that `sender`'s device sent this device.
    pub(crate) fn receive_group(&mut self, sender: &AccountId, packet: GroupPacket, out: &mut Received) -> Result<()> {
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
    fn receive_part(&mut self, sender: &AccountId, part: GroupPart) -> Result<Option<GroupPacket>> {
        part.check()?;
        let now = self.now_millis();
        self.db().groups().forget_parts_before(now - PART_KEPT_FOR_MILLIS)?;
        let mut kept = self.db().groups().parts(sender, &part.id)?;
        if kept.iter().any(|(_, count, _)| *count != part.count) {
            return Err(CoreError::GroupRefused(
                "pieces of one packet disagree on their number".into(),
            ));
        }
        if self.db().groups().part_bytes(Some(sender))? + part.bytes.len() as u64 > MAX_PART_BYTES_PER_SENDER
            || self.db().groups().part_bytes(None)? + part.bytes.len() as u64 > MAX_PART_BYTES
        {
            return Err(CoreError::GroupRefused(
                "too many pieces of group packets waiting".into(),
            ));
        }
        if let Err(at) = kept.binary_search_by_key(&part.index, |(index, _, _)| *index) {
            self.db()
                .groups()
                .hold_part(sender, &part.id, part.index, part.count, &part.bytes, now)?;
            kept.insert(at, (part.index, part.count, part.bytes));
        }
        if kept.len() < usize::from(part.count) {
            return Ok(None);
        }
        self.db().groups().release_parts(sender, &part.id)?;
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

    fn receive_welcome(&mut self, sender: &AccountId, welcome: &[u8], out: &mut Received) -> Result<String> {
        let (_, device_state) = self.db().groups().device()?.ok_or(CoreError::NoAccount)?;
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
        let existing = self.db().groups().get(&group_id)?;
        if let Some(existing) = existing.as_ref().filter(|g| g.active) {
            // A second Welcome to a group this device is in: an admin re-adding it
            // after a concurrent commit won. Nobody else may reset the group.
            if !existing.admins.iter().any(|a| a == sender) {
                return Err(CoreError::GroupRefused("a Welcome to a group this device is in".into()));
            }
        }
        self.db().groups().clear_state(&group_id)?;
        self.open_groups_mut().forget(&group_id);
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
        self.db()
            .messages()
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
        sender: &AccountId,
        message: &[u8],
        out: &mut Received,
    ) -> Result<()> {
        let Some(record) = self.db().groups().get(group_id)? else {
            // Before its Welcome.
            return self.keep_waiting(group_id, header.epoch, sender, message);
        };
        if !record.active {
            return Ok(());
        }
        let position = Position {
            epoch: header.epoch,
            commit: header.commit,
            bytes: message,
        };
        let standing = Standing {
            epoch: record.epoch,
            last_commit: record.last_commit.as_deref(),
        };
        match place(position, standing) {
            Placement::Wait => self.keep_waiting(group_id, header.epoch, sender, message),
            Placement::Apply { may_wait } => match self.apply(group_id, sender, message, out) {
                // While a fork may still be settled, a message of this epoch that does
                // not open may belong to the other branch: it waits for the switch.
                Err(e) if may_wait && !is_final(&e) => {
                    tracing::debug!(group_id, %e, "a group message that may follow the other commit waits");
                    self.keep_waiting(group_id, header.epoch, sender, message)
                }
                other => other,
            },
            Placement::SwitchTo => self.switch_to(group_id, record, sender, message, out),
            Placement::ApplyLate => self.apply(group_id, sender, message, out),
            Placement::Drop => {
                tracing::debug!(
                    group_id,
                    epoch = header.epoch,
                    "dropping a commit from an earlier epoch"
                );
                Ok(())
            }
        }
    }

    /// A concurrent commit with a lower hash than the one applied: return to the
    /// epoch before, apply it instead, and redo this device's own lost change.
    fn switch_to(
        &mut self,
        group_id: &str,
        mut record: GroupRecord,
        sender: &AccountId,
        commit: &[u8],
        out: &mut Received,
    ) -> Result<()> {
        tracing::info!(group_id, "a concurrent commit wins; switching to it");
        let redo = record.redo.take().and_then(|r| Redo::from_bytes(&r));
        self.open_groups_mut().forget(group_id);
        self.db().groups().undo_commit(group_id)?;
        record.epoch = record.epoch.saturating_sub(1);
        record.last_commit = None;
        self.db().groups().save(&record)?;
        self.apply(group_id, sender, commit, out)?;
        let Some(redo) = redo else { return Ok(()) };
        let mut open = self.open_group(group_id)?;
        let own = self.account()?.id();
        if !open.record.admins.iter().any(|a| a == own) {
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
    fn apply(&mut self, group_id: &str, sender: &AccountId, message: &[u8], out: &mut Received) -> Result<()> {
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
    fn commits_for(&self, open: &OpenGroup, proposer: &AccountId) -> Result<bool> {
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
        let own = from.account_id == self.account()?.id();
        let new = self.db().messages().insert(&NewMessage {
            id: text.id,
            conversation_id: group_id.as_bytes(),
            sender: &from.account_id,
            sent_at: text.sent_at as i64,
            body: &text.body,
            state: if own {
                DeliveryState::Sent
            } else {
                DeliveryState::Received
            },
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
        let own = self.account()?.id().to_owned();
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
    fn adopt_member_card(&mut self, own: &AccountId, card: &ContactCard, out: &mut Received) -> Result<()> {
        let (list, identity) = verify_device_list(&card.device_list)?;
        let account_id = list.account_id.clone();
        if account_id == own {
            return Ok(());
        }
        match self.db().contacts().pinned_identity(&account_id)? {
            Some(pinned) if pinned.identity_key[..] != identity.serialize()[..] => return Ok(()),
            Some(_) => {}
            None => self.db().contacts().pin_identity(&account_id, &identity.serialize())?,
        }
        let is_new = self.db().contacts().get(&account_id)?.is_none();
        match self.save_card(&account_id, card, &list) {
            Ok(()) | Err(CoreError::DeviceListRollback { .. }) => {}
            Err(e) => return Err(e),
        }
        if is_new {
            out.events.push(Event::ContactChanged(account_id));
        }
        Ok(())
    }

    fn keep_waiting(&self, group_id: &str, epoch: u64, sender: &AccountId, message: &[u8]) -> Result<()> {
        if self.db().groups().held_message_count(group_id)? >= MAX_HELD_PER_GROUP
            || self.db().groups().held_message_total()? >= MAX_HELD_GROUP_MESSAGES
        {
            return Err(CoreError::GroupRefused("too many group messages waiting".into()));
        }
        Ok(self.db().groups().hold_message(group_id, epoch, sender, message)?)
    }

    /// Processes the messages that waited for the group's current epoch, epoch by
    /// epoch, until none moves it further.
    fn process_waiting(&mut self, group_id: &str, out: &mut Received) -> Result<()> {
        loop {
            let Some(record) = self.db().groups().get(group_id)? else {
                return Ok(());
            };
            let mut moved = false;
            for waiting in self.db().groups().held_messages(group_id, record.epoch)? {
                self.db().groups().release_message(waiting.seq)?;
                let Ok(header) = MessageHeader::of(&waiting.message) else {
                    continue;
                };
                if let Err(e) = self.receive_group_message(group_id, &header, &waiting.sender, &waiting.message, out) {
                    tracing::debug!(group_id, %e, "a waiting group message did not open");
                }
                let now = self.db().groups().get(group_id)?.map(|g| (g.epoch, g.active));
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
