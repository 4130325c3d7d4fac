//! The outbox: the one way out. Every operation that sends something queues its
//! content for each recipient device, in the transaction of the state change that
//! produced it; a transport (the courier, or a test's in-process one) takes what is
//! due with [`Messenger::due_envelopes`] and says what became of each with
//! [`Messenger::handed`].
//!
//! **Sealed as it leaves.** The outbox keeps plaintext inside the encrypted profile and
//! encrypts each row only when a transport takes it, in the session as it is then, so
//! a backlog never ages behind its own session (a recipient keeps only its last five
//! receiving chains). An attempt that does not go through keeps its envelope, and it is
//! sent as it is while the session still sends in that chain and the envelope has
//! most of its time in caches left; after that (a reply turned the ratchet, or days
//! went by) it is sealed again.
//!
//! **Sent again on request.** What left is kept in the sent log, by envelope id, until
//! the envelope would have expired (or, for a message, until the device confirms it).
//! An envelope that waited in peer caches may still arrive after its chain is gone:
//! the recipient then asks for it again ([`cairn_proto::ResendRequest`], Signal's
//! decryption-error message), and its content goes back in the outbox to be sealed
//! in the current session (a new session, if the report shows the session itself is
//! broken). Only what cannot be produced again — sent too often, the device gone, no
//! plaintext kept — ends the message as *failed*, which the person can retry.

use cairn_crypto::{unseal, Ciphertext, CryptoError};
use cairn_proto::{AccountId, Content, DeviceId, Envelope, FailedEnvelope, MessageId, ResendRequest, SealedBody};
use cairn_store::{NewOutgoing, QueuedRecord};

use crate::messenger::Messenger;
use crate::{CoreError, DeliveryState, Event, MessageView, Outgoing, Result};

/// Most times one thing is sealed again at its recipient's request; then its message
/// fails (a device that can never open it must not keep both sides busy).
const MAX_RESENDS: u32 = 16;
/// Most resend requests waiting in the outbox for one device: envelopes that do not
/// open (forged ones, say) cannot make this device send without end.
const MAX_QUEUED_RESEND_REQUESTS: usize = 256;

/// A row of the outbox: its place in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutboxId(pub i64);

/// An envelope taken from the outbox, sealed for its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEnvelope {
    /// Its row, to report on with [`Messenger::handed`].
    pub id: OutboxId,
    /// The envelope and where it goes.
    pub outgoing: Outgoing,
}

/// What became of an envelope a transport took from the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// The recipient device took it.
    ToDevice,
    /// This many peer caches hold it for the device, which is away.
    ToCaches(u32),
    /// The device will never take it (not for it, from a device it does not know, …).
    Refused,
    /// Nobody took it now: try again later, backing off.
    NotNow,
}

/// A row of the outbox as `cairnd outbox` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its row.
    pub id: OutboxId,
    /// The recipient account.
    pub account_id: AccountId,
    /// The recipient device.
    pub device_id: DeviceId,
    /// What it carries (`text`, `receipt`, `card`, `group`, `resend`, …).
    pub kind: String,
    /// The message it carries, if any.
    pub message: Option<MessageId>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// How often it was sent again on the recipient's request.
    pub resends: u32,
}

impl Messenger {
    /// Queues `content` for every device of `account_id` this device can reach (a
    /// session, or a bundle to start one), or only device `only`. Devices without
    /// either are skipped. Returns the rows queued.
    pub(crate) fn queue_to(
        &self,
        account_id: &AccountId,
        only: Option<DeviceId>,
        content: &Content,
        message: Option<MessageId>,
    ) -> Result<Vec<OutboxId>> {
        let (_, devices) = self.devices_of(account_id)?;
        let padded = content.to_padded_bytes();
        let mut queued = Vec::new();
        for device in devices.iter().filter(|d| only.is_none_or(|id| d.device_id == id)) {
            if !self.can_reach(account_id, device.device_id)? {
                tracing::debug!(%account_id, device = %device.device_id, "no session or bundle yet");
                continue;
            }
            queued.push(self.enqueue(&NewOutgoing {
                account_id,
                device_id: device.device_id,
                kind: content.kind(),
                content: Some(&padded),
                envelope: None,
                message_id: message.as_ref().map(|id| &id[..]),
                resends: 0,
            })?);
        }
        Ok(queued)
    }

    /// Queues an envelope sealed already (one that must be sealed before the state it
    /// was made in changes, such as the notice to a device being removed).
    pub(crate) fn queue_sealed(&self, outgoing: &Outgoing, kind: &str) -> Result<OutboxId> {
        self.enqueue(&NewOutgoing {
            account_id: &outgoing.account_id,
            device_id: outgoing.device_id,
            kind,
            content: None,
            envelope: Some(&outgoing.envelope.to_bytes()),
            message_id: outgoing.message.as_ref().map(|id| &id[..]),
            resends: 0,
        })
    }

    fn enqueue(&self, item: &NewOutgoing<'_>) -> Result<OutboxId> {
        Ok(OutboxId(self.db().outbox().enqueue(item, self.now_millis())?))
    }

    /// Whether a session with the device exists or can start from its bundle.
    fn can_reach(&self, account_id: &AccountId, device_id: DeviceId) -> Result<bool> {
        Ok(cairn_crypto::has_session(self.db(), account_id, device_id)?
            || self
                .db()
                .contacts()
                .bundles(account_id)?
                .iter()
                .any(|(id, _)| *id == device_id))
    }

    /// The oldest `limit` rows of the outbox that are due now, each sealed for its
    /// device in the session as it is now (or as sealed for an earlier attempt, while
    /// the session still sends in that chain). A row that can no longer be sealed
    /// (its device was removed, or has no session and no usable bundle) leaves the
    /// queue, and its message fails if nothing else carries it.
    pub fn due_envelopes(&mut self, limit: usize) -> Result<Vec<QueuedEnvelope>> {
        self.atomically(|this| {
            let mut failed = this.expire_sent_log()?;
            let mut due = Vec::new();
            for row in this.db().outbox().due(limit, this.now_millis())? {
                let message = row.message_id.as_deref();
                match this.seal_row(&row) {
                    Ok(Some(outgoing)) => due.push(QueuedEnvelope {
                        id: OutboxId(row.seq),
                        outgoing,
                    }),
                    Ok(None) => failed.extend(this.give_up(row.seq, message)?),
                    // The store failing is this device's trouble: the pass ends, and
                    // every row waits for the next.
                    Err(e @ (CoreError::Store(_) | CoreError::Crypto(CryptoError::Store(_)))) => return Err(e),
                    // Anything else is this row's: it must not hold up the queue.
                    Err(e) => {
                        tracing::warn!(seq = row.seq, %e, "an outbox row cannot be sealed; giving it up");
                        failed.extend(this.give_up(row.seq, message)?);
                    }
                }
            }
            Ok((due, failed))
        })
        .map(|(due, failed)| {
            self.emit(failed);
            due
        })
    }

    /// Seals one row, or `None` if it cannot be sealed any more.
    fn seal_row(&self, row: &QueuedRecord) -> Result<Option<Outgoing>> {
        let message = row.message_id.as_deref().and_then(|id| id.try_into().ok());
        let as_it_is = |envelope: Envelope| Outgoing {
            account_id: row.account_id.clone(),
            device_id: row.device_id,
            envelope,
            message,
        };
        if let Some(bytes) = &row.envelope {
            let now = self.now_secs();
            match Envelope::from_bytes(bytes) {
                // Sealed before it was queued: it goes as it is, until it expires.
                Ok(envelope) if row.content.is_none() => {
                    return Ok((now < envelope.created + u64::from(envelope.ttl)).then(|| as_it_is(envelope)))
                }
                // Sealed for an earlier attempt: sent again as it is while the session
                // still sends in its chain and it has most of its time in caches left.
                Ok(envelope) if now < envelope.created + u64::from(envelope.ttl) / 2 => {
                    if let Some(chain) = &row.chain {
                        if cairn_crypto::sends_in_chain(self.db(), &row.account_id, row.device_id, chain)? {
                            return Ok(Some(as_it_is(envelope)));
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!(seq = row.seq, %e, "an unreadable envelope in the outbox"),
            }
        }
        let Some(content) = &row.content else { return Ok(None) };
        let (identity, devices) = match self.devices_of(&row.account_id) {
            Ok(found) => found,
            Err(CoreError::UnknownContact(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(device) = devices.iter().find(|d| d.device_id == row.device_id) else {
            tracing::info!(
                account = %row.account_id,
                device = %row.device_id,
                "a queued envelope's device is gone"
            );
            return Ok(None);
        };
        let Some((mut outgoing, chain)) = self.envelope_to_entry(&row.account_id, &identity, device, content)? else {
            return Ok(None);
        };
        self.db()
            .outbox()
            .seal_queued(row.seq, &outgoing.envelope.to_bytes(), chain.as_deref())?;
        outgoing.message = message;
        Ok(Some(outgoing))
    }

    /// A row leaves the outbox undelivered; its message fails unless another copy of
    /// it is still queued or a device has it.
    fn give_up(&self, seq: i64, message: Option<&[u8]>) -> Result<Option<Event>> {
        self.db().outbox().dequeue(seq)?;
        match message {
            Some(id) => self.fail_unless_carried(id),
            None => Ok(None),
        }
    }

    /// Marks a message failed if no copy of it is on its way any more (queued, or sent
    /// to a device that may still open it) and no device confirmed it; the state change
    /// if it did.
    fn fail_unless_carried(&self, id: &[u8]) -> Result<Option<Event>> {
        if self.db().outbox().copies_in_flight(id)? > 0 || !self.db().messages().fail(id)? {
            return Ok(None);
        }
        tracing::warn!("a message could not be delivered and is marked failed");
        Ok(id.try_into().ok().map(|id| Event::StateChanged {
            id,
            state: DeliveryState::Failed,
        }))
    }

    /// Records what became of an envelope taken with [`Self::due_envelopes`]: taken
    /// by the device or by caches, it moves to the sent log (and its message is
    /// *sent*); refused, it leaves the queue and its message fails unless another
    /// copy carries it; not taken, it waits, backing off. Returns the state change.
    pub fn handed(&mut self, queued: &QueuedEnvelope, how: Handed) -> Result<Option<Event>> {
        let changed = self.atomically(|this| {
            let seq = queued.id.0;
            if this.db().outbox().queued(seq)?.is_none() {
                // Reported twice, or its device was removed meanwhile.
                return Ok(None);
            }
            let message = queued.outgoing.message;
            let now = this.now_millis();
            match how {
                Handed::NotNow => {
                    this.db().outbox().defer(seq, now)?;
                    Ok(None)
                }
                Handed::Refused => this.give_up(seq, message.as_ref().map(|id| &id[..])),
                Handed::ToDevice | Handed::ToCaches(_) => {
                    let envelope = &queued.outgoing.envelope;
                    let expires = (envelope.created as i64 + i64::from(envelope.ttl)) * 1000;
                    this.db().outbox().log_sent(seq, &envelope.id(), now, expires)?;
                    match (message, how) {
                        (Some(id), Handed::ToCaches(holders)) => this.mark_held(&id, holders),
                        (Some(id), _) => this.mark_sent(&id),
                        (None, _) => Ok(None),
                    }
                }
            }
        })?;
        self.emit(changed.clone());
        Ok(changed)
    }

    /// Forgets sent envelopes that have expired: no cache holds them any more, so
    /// nobody can ask for them again. A message that went only into those and that no
    /// device confirmed has failed.
    fn expire_sent_log(&self) -> Result<Vec<Event>> {
        let mut failed = Vec::new();
        for id in self.db().outbox().expire_sent(self.now_millis())? {
            if self
                .db()
                .messages()
                .get(&id)?
                .is_some_and(|m| m.state == DeliveryState::Sent)
            {
                failed.extend(self.fail_unless_carried(&id)?);
            }
        }
        Ok(failed)
    }

    /// Every row of the outbox, due or not, oldest first.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        Ok(self
            .db()
            .outbox()
            .entries()?
            .into_iter()
            .map(|row| OutboxEntry {
                id: OutboxId(row.seq),
                account_id: row.account_id,
                device_id: row.device_id,
                kind: row.kind,
                message: row.message_id.and_then(|id| id.try_into().ok()),
                attempts: row.attempts,
                resends: row.resends,
            })
            .collect())
    }

    /// Makes every queued envelope due now.
    pub fn retry_now(&self) -> Result<()> {
        Ok(self.db().outbox().retry_now(None)?)
    }

    /// Makes the envelopes queued for one device due now (it came online).
    pub fn retry_now_for(&self, account_id: &AccountId, device_id: DeviceId) -> Result<()> {
        Ok(self.db().outbox().retry_now(Some((account_id, device_id)))?)
    }

    /// An envelope from a known device did not decrypt (its chain of the session was
    /// gone, or the session itself): asks that device to send what it carried again.
    /// `Err` if it cannot be asked (the device is not listed, or has too many requests
    /// waiting already): the envelope is then refused.
    pub(crate) fn ask_resend(&mut self, bytes: &[u8]) -> Result<()> {
        let envelope = Envelope::from_bytes(bytes)?;
        let inner = unseal(self.account()?.identity(), &SealedBody::from_bytes(&envelope.body)?)?;
        let (sender, device) = (inner.sender_account.clone(), inner.sender_device);
        let undecryptable = || CoreError::Undecryptable(sender.clone());
        if self.db().contacts().retired_devices(&sender)?.contains(&device) {
            return Err(CoreError::FromRemovedDevice(sender));
        }
        let (_, devices) = self.devices_of(&sender)?;
        if !devices.iter().any(|d| d.device_id == device)
            || self.db().outbox().queued_count(&sender, device, "resend")? >= MAX_QUEUED_RESEND_REQUESTS
        {
            return Err(undecryptable());
        }
        let ciphertext = Ciphertext {
            prekey: inner.prekey,
            bytes: inner.message,
        };
        let error = cairn_crypto::decryption_error(&ciphertext, envelope.created.saturating_mul(1000), device)?;
        let request = Content::Resend(ResendRequest {
            failed: vec![FailedEnvelope {
                envelope_id: envelope.id(),
                error,
            }],
        });
        if self.queue_to(&sender, Some(device), &request, None)?.is_empty() {
            return Err(undecryptable());
        }
        tracing::info!(%sender, %device, "an envelope did not decrypt; asked for it again");
        Ok(())
    }

    /// A device asks for envelopes it could not open: what each carried goes back in
    /// the outbox, to be sealed in the session as it is now. Only the device an
    /// envelope went to can ask for it. If a report names the chain the session sends
    /// in now, the session is broken on the other side: the next envelope starts a
    /// new one. What cannot be sent again (too many resends, no plaintext kept) fails.
    pub(crate) fn receive_resend(
        &mut self,
        sender: &AccountId,
        device: DeviceId,
        request: ResendRequest,
    ) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        let mut session_reset = false;
        for failed in request.failed {
            let Some(entry) = self.db().outbox().sent(&failed.envelope_id)? else {
                tracing::debug!(%sender, %device, "a resend request for an envelope no longer kept");
                continue;
            };
            if entry.account_id != sender || entry.device_id != device {
                tracing::warn!(%sender, %device, "a resend request for an envelope that went elsewhere");
                continue;
            }
            if !session_reset
                && cairn_crypto::reports_current_chain(self.db(), sender, device, &failed.error).unwrap_or(false)
            {
                tracing::warn!(
                    %sender,
                    %device,
                    "the other side cannot open the current session; starting a new one"
                );
                cairn_crypto::archive_session(self.db(), sender, device)?;
                session_reset = true;
            }
            if entry.resends < MAX_RESENDS
                && self
                    .db()
                    .outbox()
                    .requeue_sent(&failed.envelope_id, self.now_millis())?
                    .is_some()
            {
                continue;
            }
            self.db().outbox().forget_sent(&failed.envelope_id)?;
            if let Some(id) = entry.message_id.as_deref() {
                events.extend(self.fail_unless_carried(id)?);
            }
        }
        Ok(events)
    }

    /// The person asks to send a failed message again: it is queued anew for every
    /// device of the conversation's other members, and is *sending* again.
    pub fn retry_message(&mut self, id: &MessageId) -> Result<MessageView> {
        let retried = self.atomically(|this| {
            let message = this.message(id)?;
            if message.state != DeliveryState::Failed {
                return Err(CoreError::NotFailed);
            }
            if cairn_proto::is_group_id(&message.conversation) {
                if this.resend_group_text(&message)?.is_empty() {
                    return Err(CoreError::GroupRefused("no member device can be reached yet".into()));
                }
            } else {
                let text = Content::Text(cairn_proto::TextMessage {
                    id: message.id,
                    sent_at: message.sent_at as u64,
                    body: message.body.clone(),
                    sync_peer: None,
                });
                let contact = AccountId::parse(&message.conversation)?;
                if this.queue_to(&contact, None, &text, Some(message.id))?.is_empty() {
                    return Err(CoreError::NoReachableDevice(contact));
                }
            }
            this.db().messages().unfail(id)?;
            this.message(id)
        })?;
        self.emit([Event::StateChanged {
            id: *id,
            state: retried.state,
        }]);
        Ok(retried)
    }
}
