//! 1:1 messages: sending (queued for each recipient device and each own other
//! device), receiving (unseal, decrypt, de-duplicate, store; asking for what does not
//! decrypt again), delivery and read receipts, and the history views.

use cairn_crypto::{unseal, verify_device_list, Ciphertext, CryptoError, IdentityKey};
use cairn_proto::{
    AccountId, Content, DeviceId, DirectSignal, Envelope, MessageId, Receipt, ReceiptKind, SealedBody, TextMessage,
    MAX_TEXT_BYTES, MAX_TTL_SECS,
};
use cairn_store::NewMessage;
use rand::RngCore;

use crate::messenger::Messenger;
use crate::{CoreError, DeliveryState, Event, MessageView, OutboxId, Outgoing, Received, Result};

/// Where the device that sent an envelope stands in its account's device list.
enum Standing {
    Listed,
    NotYetListed,
    Removed,
}

/// Most envelopes kept for one sender while their new key waits for a decision.
const MAX_HELD_PER_SENDER: usize = 64;
/// Most envelopes kept in all, whoever they claim to come from.
const MAX_HELD: usize = 1024;

impl Messenger {
    /// Sends a text to a contact: stores the message and queues it for each device of
    /// the contact and each other device of this account; returns the message and the
    /// rows queued. Refused while the contact's changed identity key is not accepted.
    pub fn send_text(&mut self, peer: &AccountId, body: &str) -> Result<(MessageView, Vec<OutboxId>)> {
        let sent = self.atomically(|this| this.send_text_now(peer, body))?;
        self.emit([Event::Message(sent.0.clone())]);
        Ok(sent)
    }

    fn send_text_now(&mut self, peer: &AccountId, body: &str) -> Result<(MessageView, Vec<OutboxId>)> {
        self.ensure_listed()?;
        let contact = self.contact(peer)?;
        if contact.identity_changed {
            return Err(CoreError::IdentityChanged(peer.to_owned()));
        }
        if body.trim().is_empty() || body.len() > MAX_TEXT_BYTES {
            return Err(CoreError::InvalidText);
        }
        let mut id: MessageId = [0; 16];
        rand::rng().fill_bytes(&mut id);
        let sent_at = self.now_millis();
        let text = TextMessage {
            id,
            sent_at: sent_at as u64,
            body: body.to_owned(),
            sync_peer: None,
        };
        let mut queued = self.queue_to(peer, None, &Content::Text(text.clone()), Some(id))?;
        if queued.is_empty() {
            return Err(CoreError::NoReachableDevice(peer.to_owned()));
        }
        let own = self.account()?.id().to_owned();
        let copy = Content::Text(TextMessage {
            sync_peer: Some(peer.to_owned()),
            ..text
        });
        queued.extend(self.queue_to(&own, None, &copy, None)?);
        self.db()
            .messages()
            .ensure_conversation(peer.as_str().as_bytes(), &contact.display_name, sent_at)?;
        Ok((self.keep_outgoing(peer.as_str(), id, sent_at, body)?, queued))
    }

    /// Stores a message this account sends in `conversation` (in the transaction that
    /// queues it).
    pub(crate) fn keep_outgoing(
        &mut self,
        conversation: &str,
        id: MessageId,
        sent_at: i64,
        body: &str,
    ) -> Result<MessageView> {
        let own = self.account()?.id().to_owned();
        self.db().messages().insert(&NewMessage {
            id,
            conversation_id: conversation.as_bytes(),
            sender: &own,
            sent_at,
            body,
            state: DeliveryState::Sending,
            outgoing: true,
        })?;
        self.message(&id)
    }

    /// Seals a direct-session signal for one device of a contact or of this account.
    /// It is not queued: signaling is only worth sending while both devices are online.
    pub fn direct_signal(&mut self, account: &AccountId, device: DeviceId, signal: DirectSignal) -> Result<Outgoing> {
        self.atomically(|this| {
            if account != this.account()?.id() && this.contact(account)?.identity_changed {
                return Err(CoreError::IdentityChanged(account.to_owned()));
            }
            this.seal_now(account, device, &Content::Direct(signal))
        })
    }

    /// The transport handed a message's envelope to a device or a cache.
    pub fn mark_sent(&self, id: &MessageId) -> Result<Option<Event>> {
        Ok(self
            .db()
            .messages()
            .advance(id, DeliveryState::Sent)?
            .then_some(Event::StateChanged {
                id: *id,
                state: DeliveryState::Sent,
            }))
    }

    /// Peer caches took a message's envelope for its offline recipient: it is sent,
    /// held by `holders` peers.
    pub fn mark_held(&self, id: &MessageId, holders: u32) -> Result<Option<Event>> {
        let event = self.mark_sent(id)?;
        self.db().messages().set_holders(id, holders)?;
        Ok(event)
    }

    /// Processes one envelope from a transport or cache. A duplicate (an envelope
    /// already processed) is [`CoreError::Duplicate`]; anything malformed, tampered
    /// with or not for this device is a typed error and changes nothing stored. An
    /// envelope from a known device that does not decrypt is taken: its sender is
    /// asked to send what it carried again.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Received> {
        let mut received = match self.atomically(|this| this.receive_now(bytes)) {
            // From an account this one does not know (yet): its session state was rolled
            // back with everything else, and the envelope waits until the account
            // becomes a contact (a sync from an own device usually follows).
            Err(CoreError::UnknownSender(sender)) => {
                self.hold(&sender, bytes)?;
                return Ok(Received::default());
            }
            Err(CoreError::Undecryptable(_)) => {
                self.atomically(|this| this.ask_resend(bytes))?;
                return Ok(Received::default());
            }
            other => other?,
        };
        let own = self.account()?.id().to_owned();
        let changed: Vec<AccountId> = received
            .events
            .iter()
            .filter_map(|e| match e {
                Event::ContactChanged(account) => Some(account.clone()),
                Event::DevicesChanged => Some(own.clone()),
                _ => None,
            })
            .collect();
        for account in changed {
            // Envelopes that waited for this account (or for a device its list now
            // names), and the leaves of devices it no longer names.
            let drained = self.drain_held(&account)?;
            received.events.extend(drained.events);
            // The envelope is in; a group that cannot change now changes next time.
            if let Err(e) = self.remove_unlisted_leaves(&account) {
                tracing::warn!(%account, %e, "could not take removed devices out of groups");
            }
        }
        let shown = received
            .events
            .iter()
            .filter(|e| !matches!(e, Event::DirectSignal { .. }))
            .cloned();
        let shown: Vec<Event> = shown.collect();
        self.emit(shown);
        Ok(received)
    }

    /// Keeps an envelope for later, within per-sender and overall bounds, and for at
    /// most as long as an envelope may live.
    fn hold(&mut self, sender: &AccountId, bytes: &[u8]) -> Result<()> {
        self.forget_old_held()?;
        if self.db().held().from_sender(sender)?.len() >= MAX_HELD_PER_SENDER || self.db().held().count()? >= MAX_HELD {
            return Err(CoreError::UnknownSender(sender.to_owned()));
        }
        self.db()
            .held()
            .hold(&Envelope::from_bytes(bytes)?.id(), sender, bytes, self.now_millis())?;
        Ok(())
    }

    /// Forgets held envelopes older than any envelope may live.
    fn forget_old_held(&self) -> Result<()> {
        self.db()
            .held()
            .forget_before(self.now_millis() - MAX_TTL_SECS as i64 * 1000)?;
        Ok(())
    }

    /// Processes the envelopes held for `account`, releasing each once it went through
    /// (those older than any envelope may live are forgotten unopened).
    pub(crate) fn drain_held(&mut self, account: &AccountId) -> Result<Received> {
        self.forget_old_held()?;
        let mut received = Received::default();
        for (envelope_id, envelope) in self.db().held().from_sender(account)? {
            match self.atomically(|this| this.receive_now(&envelope)) {
                // Held again (yet another key): it stays for that decision.
                Ok(r) if r.events.iter().any(|e| matches!(e, Event::IdentityChanged(_))) => {}
                Ok(r) => {
                    // Signaling that waited is stale: the session it was for is long gone.
                    let current = r
                        .events
                        .into_iter()
                        .filter(|e| !matches!(e, Event::DirectSignal { .. }));
                    received.events.extend(current);
                    self.db().held().release(&envelope_id)?;
                }
                Err(CoreError::Duplicate | CoreError::FromRemovedDevice(_)) => {
                    self.db().held().release(&envelope_id)?
                }
                Err(CoreError::Undecryptable(_)) => {
                    if let Err(e) = self.atomically(|this| this.ask_resend(&envelope)) {
                        tracing::warn!(%e, "a held envelope did not open and cannot be asked for again");
                    }
                    self.db().held().release(&envelope_id)?
                }
                Err(CoreError::UnknownSender(_)) => {}
                Err(e) => tracing::warn!(%e, "a held envelope did not open"),
            }
        }
        Ok(received)
    }

    fn receive_now(&mut self, bytes: &[u8]) -> Result<Received> {
        let envelope = Envelope::from_bytes(bytes)?;
        if envelope.mailbox != self.mailbox()? {
            return Err(CoreError::WrongMailbox);
        }
        let account = self.account()?;
        let inner = unseal(account.identity(), &SealedBody::from_bytes(&envelope.body)?)?;
        let sender = inner.sender_account.clone();
        let from_own_device = sender == account.id();
        let sender_key = IdentityKey::decode(&inner.sender_identity).map_err(|e| CryptoError::InvalidKey {
            what: "sender identity",
            reason: e.to_string(),
        })?;
        if from_own_device && sender_key != *account.identity().public_key() {
            return Err(CoreError::NotOurAccount);
        }
        if !from_own_device {
            if let Some(pinned) = self.db().contacts().pinned_identity(&sender)? {
                if pinned.identity_key[..] != sender_key.serialize()[..] {
                    return self.hold_for_identity_change(&sender, &sender_key, &inner, &envelope, bytes);
                }
            }
        }
        // Known before decrypting: decrypting a session start pins the sender's key.
        let known = from_own_device || self.db().contacts().pinned_identity(&sender)?.is_some();
        let ciphertext = Ciphertext {
            prekey: inner.prekey,
            bytes: inner.message,
        };
        let plaintext = match cairn_crypto::decrypt(self.db(), &sender, inner.sender_device, &ciphertext) {
            Err(CryptoError::DuplicateMessage) => return Err(CoreError::Duplicate),
            // A known device's message from a chain (or session) this device no longer
            // has: what it carried is asked for again (see `ask_resend`).
            Err(CryptoError::InvalidMessage(_) | CryptoError::NoSession(_)) if known => {
                return Err(CoreError::Undecryptable(sender))
            }
            other => other?,
        };
        let content = Content::from_padded_bytes(&plaintext)?;
        if !known {
            // Only someone holding this account's invite may introduce themselves.
            match &content {
                Content::Hello {
                    invite_secret: Some(secret),
                    ..
                } if *secret == self.invite_secret()? => {}
                Content::Hello { .. } => return Err(CoreError::Uninvited(sender)),
                _ => return Err(CoreError::UnknownSender(sender)),
            }
        }
        match self.sender_standing(&sender, inner.sender_device, &content)? {
            Standing::Listed => {}
            // Linked so recently that its account's new list is still on its way: the
            // envelope waits for the list.
            Standing::NotYetListed => return Err(CoreError::UnknownSender(sender)),
            // Removed from its account: what it sends is dropped.
            Standing::Removed => return Err(CoreError::FromRemovedDevice(sender)),
        }
        let mut out = Received::default();
        let device = inner.sender_device;
        match content {
            Content::Text(text) => self.receive_text(&sender, from_own_device, text, &mut out)?,
            Content::Receipt(receipt) => self.receive_receipt(&sender, device, receipt, &mut out)?,
            Content::Hello { card, invite_secret } => {
                self.receive_hello(&sender, card, invite_secret.is_some(), &mut out)?
            }
            Content::ContactSync(card) if from_own_device => self.receive_contact_sync(card, &mut out)?,
            Content::ContactSync(_) => return Err(CoreError::NotFromOwnDevice),
            Content::Direct(signal) => out.events.push(Event::DirectSignal {
                account: sender,
                device: inner.sender_device,
                signal,
            }),
            Content::Group(packet) => self.receive_group(&sender, packet, &mut out)?,
            Content::Resend(request) => out.events.extend(self.receive_resend(&sender, device, request)?),
        }
        Ok(out)
    }

    /// Whether the list of `sender`'s account names the device that sent `content`.
    /// A card may introduce its own sender's device, with a list newer than the one
    /// held here.
    fn sender_standing(&self, sender: &AccountId, device_id: DeviceId, content: &Content) -> Result<Standing> {
        let own = self.account()?.id().to_owned();
        let (listed, held_version) = if sender == own {
            let list = self.own_list()?;
            (list.device(device_id).is_some(), Some(list.version))
        } else {
            match self.devices_of(sender) {
                Ok((_, devices)) => (
                    devices.iter().any(|d| d.device_id == device_id),
                    self.db().contacts().get(sender)?.map(|c| c.device_list_version),
                ),
                Err(CoreError::UnknownContact(_)) => (false, None),
                Err(e) => return Err(e),
            }
        };
        if listed {
            return Ok(Standing::Listed);
        }
        if let Content::Hello { card, .. } = content {
            let (list, _) = verify_device_list(&card.device_list)?;
            if list.account_id == sender
                && list.device(device_id).is_some()
                && held_version.is_none_or(|held| list.version > held)
            {
                return Ok(Standing::Listed);
            }
        }
        if self.db().contacts().retired_devices(sender)?.contains(&device_id) {
            Ok(Standing::Removed)
        } else {
            Ok(Standing::NotYetListed)
        }
    }

    /// An envelope from a known account with a different key: if it really is a
    /// session start made with that key, keep it (bounded) until the person decides,
    /// and warn. Anything else claiming a new key is refused and changes nothing.
    fn hold_for_identity_change(
        &mut self,
        sender: &AccountId,
        sender_key: &IdentityKey,
        inner: &cairn_proto::SealedInner,
        envelope: &Envelope,
        bytes: &[u8],
    ) -> Result<Received> {
        let made_with = inner
            .prekey
            .then(|| cairn_crypto::prekey_message_identity(&inner.message));
        if !matches!(made_with, Some(Ok(key)) if key == *sender_key) {
            return Err(CoreError::CardMismatch);
        }
        if self.db().held().from_sender(sender)?.len() >= MAX_HELD_PER_SENDER
            || !self
                .db()
                .contacts()
                .set_pending_identity(sender, &sender_key.serialize())?
        {
            return Err(CoreError::IdentityChanged(sender.to_owned()));
        }
        self.db()
            .held()
            .hold(&envelope.id(), sender, bytes, self.now_millis())?;
        Ok(Received {
            events: vec![Event::IdentityChanged(sender.to_owned())],
        })
    }

    fn receive_text(
        &mut self,
        sender: &AccountId,
        from_own_device: bool,
        text: TextMessage,
        out: &mut Received,
    ) -> Result<()> {
        let own = self.account()?.id().to_owned();
        let (conversation, state) = match (&text.sync_peer, from_own_device) {
            // A copy of a message this account sent from another device.
            (Some(peer), true) => (peer.clone(), DeliveryState::Sent),
            (None, false) => (sender.to_owned(), DeliveryState::Received),
            _ => return Err(CoreError::NotFromOwnDevice),
        };
        let title = self
            .db()
            .contacts()
            .get(&conversation)?
            .map_or_else(|| conversation.to_string(), |c| c.display_name);
        let conversation_id = conversation.as_str().as_bytes();
        self.db()
            .messages()
            .ensure_conversation(conversation_id, &title, text.sent_at as i64)?;
        let new = self.db().messages().insert(&NewMessage {
            id: text.id,
            conversation_id,
            sender: if from_own_device { &own } else { sender },
            sent_at: text.sent_at as i64,
            body: &text.body,
            state,
            outgoing: from_own_device,
        })?;
        if !new {
            // Ids are random: the same id from another sender or conversation is not
            // a copy but a collision (or an attempt to shadow a message).
            let existing = self.message(&text.id)?;
            let stored_sender = if from_own_device { &own } else { sender };
            if existing.conversation != conversation.as_str() || existing.sender != *stored_sender {
                return Err(CoreError::MessageIdCollision);
            }
            return Ok(());
        }
        out.events.push(Event::Message(self.message(&text.id)?));
        if !from_own_device {
            let receipt = Content::Receipt(Receipt {
                kind: ReceiptKind::Delivered,
                message_ids: vec![text.id],
            });
            // A failed receipt must not undo the message (a card may not have arrived yet).
            if let Err(e) = self.queue_to(sender, None, &receipt, None) {
                tracing::debug!(%sender, %e, "no delivery receipt");
            }
        }
        Ok(())
    }

    fn receive_receipt(
        &mut self,
        sender: &AccountId,
        device: DeviceId,
        receipt: Receipt,
        out: &mut Received,
    ) -> Result<()> {
        let state = match receipt.kind {
            ReceiptKind::Delivered => DeliveryState::Delivered,
            ReceiptKind::Read => DeliveryState::Read,
        };
        // The device has them: they will not be asked for again.
        self.db()
            .outbox()
            .forget_sent_messages(sender, device, &receipt.message_ids)?;
        for id in receipt.message_ids {
            // Only the account a message went to can acknowledge it.
            let Some(message) = self.db().messages().get(&id)? else {
                continue;
            };
            if message.conversation_id != sender.as_str().as_bytes() {
                continue;
            }
            if self.db().messages().advance(&id, state)? {
                out.events.push(Event::StateChanged { id, state });
            }
        }
        Ok(())
    }

    /// The person has seen a conversation: its received messages become read and, if
    /// read receipts are on, the sender is told.
    pub fn mark_read(&mut self, peer: &str) -> Result<Vec<OutboxId>> {
        self.atomically(|this| this.mark_read_now(peer))
    }

    fn mark_read_now(&mut self, peer: &str) -> Result<Vec<OutboxId>> {
        let ids: Vec<MessageId> = self
            .db()
            .messages()
            .mark_conversation_read(peer.as_bytes())?
            .into_iter()
            .filter_map(|id| id.try_into().ok())
            .collect();
        if ids.is_empty() || !self.read_receipts()? {
            return Ok(Vec::new());
        }
        let receipt = Content::Receipt(Receipt {
            kind: ReceiptKind::Read,
            message_ids: ids,
        });
        // A group's messages get no read receipts (its conversation is named by the
        // group id), nor does someone who is not a contact; the messages are read all
        // the same.
        let Ok(peer) = AccountId::parse(peer) else {
            return Ok(Vec::new());
        };
        match self.queue_to(&peer, None, &receipt, None) {
            Err(CoreError::UnknownContact(_)) => Ok(Vec::new()),
            other => other,
        }
    }

    /// One message.
    pub fn message(&self, id: &MessageId) -> Result<MessageView> {
        self.db()
            .messages()
            .get(id)?
            .and_then(MessageView::of)
            .ok_or(CoreError::UnknownMessage)
    }

    /// The newest `limit` messages with a contact, oldest first.
    pub fn conversation(&self, peer: &str, limit: usize) -> Result<Vec<MessageView>> {
        Ok(self
            .db()
            .messages()
            .in_conversation(peer.as_bytes(), limit)?
            .into_iter()
            .filter_map(MessageView::of)
            .collect())
    }

    /// Full-text search across every conversation, best matches first.
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<MessageView>> {
        Ok(self
            .db()
            .messages()
            .search(query, limit)?
            .into_iter()
            .filter_map(MessageView::of)
            .collect())
    }
}
