//! Linking a new device by QR code (or a pasted link), as a conversation of frames
//! between two messengers; the network layer only carries the bytes.
//!
//! 1. The existing device makes a one-time [`LinkOffer`] (secret, address, expiry).
//! 2. The new device reads it and starts a Noise handshake keyed by the secret
//!    ([`NewDeviceLink::start`]); the existing device answers with the offer it has
//!    not used yet ([`Messenger::answer_link`]). Both show the same code.
//! 3. Once the person confirms the code, the existing device hands the account over
//!    ([`Messenger::hand_over`]); the new device joins ([`Messenger::join_over_link`])
//!    and answers with its card; the existing device finishes
//!    ([`Messenger::finish_link`]): a new signed device list that contacts receive, and
//!    the new device in every group this account administers.
//! 4. If the person agreed, the existing device passes the message history in pages
//!    ([`Messenger::history_page`], [`Messenger::import_history`]), inside the same
//!    encrypted channel, so the new device can show a progress bar.
//!
//! An offer that expired, was used, or was not this device's is refused with
//! [`CoreError::LinkRefused`] and changes nothing.

use std::time::Duration;

use cairn_crypto::{answer_link, LinkChannel, LinkInitiator, MAX_LINK_FRAME};
use cairn_proto::{
    decode_versioned, encode_versioned, ContactCard, HistoryConversation, HistoryMessage, HistoryPage, LinkOffer,
    LinkRequest, LinkResponse, MAX_HAND_OVER_BYTES, MAX_HISTORY_PAGE_BYTES,
};
use cairn_store::NewMessage;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::devices::LinkGrant;
use crate::messenger::Messenger;
use crate::{CoreError, DeliveryState, OutboxId, Result};

/// How long an offer is good for unless said otherwise: ten minutes.
pub const LINK_OFFER_VALIDITY: Duration = Duration::from_secs(600);
/// Most messages in one page of history.
const HISTORY_PAGE_MESSAGES: usize = 500;
/// Most text in one page of history (a message holds at most 64 KiB), well inside
/// what a page may decode to.
const HISTORY_PAGE_TEXT_BYTES: usize = 1024 * 1024;

/// An offer this device made and has not used.
struct PendingOffer {
    secret: Zeroizing<[u8; 32]>,
    expires_at: u64,
}

/// The device links under way here: offers made and not used yet (kept in memory
/// only: an offer does not outlive the app that shows it), and the link this device
/// serves over the network once a new device answered.
#[derive(Default)]
pub(crate) struct Linking {
    offers: Vec<PendingOffer>,
    served: Option<ServedLink>,
}

/// A link this device serves over the network: the handshake is done, and the
/// person has or has not confirmed the code yet (and said whether to pass the
/// history on); after the new device's card, the history follows.
struct ServedLink {
    /// The peer that made the handshake: the only one answered from then on.
    peer: String,
    link: ExistingDeviceLink,
    confirmed: bool,
    share_history: bool,
    linked: bool,
    /// Messages of the history passed on so far.
    history_sent: u64,
}

/// Where a link this device serves stands, for its screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServedLinkState {
    /// The new device shows this code; the person is to compare and confirm it.
    WaitingForConfirmation(String),
    /// Confirmed: the account is being handed over.
    Linking,
    /// Linked; the history is going over: `sent` of `total` messages so far.
    PassingHistory {
        /// Messages passed on so far.
        sent: u64,
        /// Messages in the history.
        total: u64,
    },
}

/// How far a new device got with the history passed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryProgress {
    /// Messages in the page just taken.
    pub received: u64,
    /// Messages in the whole history, as the existing device counts them.
    pub total: u64,
    /// Where the next page starts; `None` after the last.
    pub next: Option<u64>,
}

impl HistoryProgress {
    fn of(page: &HistoryPage) -> Self {
        Self {
            received: page.messages.len() as u64,
            total: page.total,
            next: page.next,
        }
    }
}

/// The existing device's side of a link, after the handshake.
pub struct ExistingDeviceLink {
    channel: LinkChannel,
    /// How many messages the history held when its first page went out.
    history_total: Option<u64>,
}

impl ExistingDeviceLink {
    /// The code both screens show; the person confirms they match.
    pub fn confirmation_code(&self) -> &str {
        self.channel.confirmation_code()
    }
}

/// The new device's side of a link.
pub struct NewDeviceLink {
    initiator: Option<LinkInitiator>,
    channel: Option<LinkChannel>,
}

impl NewDeviceLink {
    /// Starts linking to the device that made `offer`: returns the link and the first
    /// handshake message for that device. An offer expired at `now` (Unix seconds) is
    /// refused here already.
    pub fn start(offer: &LinkOffer, now: u64) -> Result<(Self, Vec<u8>)> {
        if offer.expires_at <= now {
            return Err(CoreError::LinkRefused("this link offer has expired".into()));
        }
        let (initiator, first) = LinkInitiator::start(&offer.secret)?;
        Ok((
            Self {
                initiator: Some(initiator),
                channel: None,
            },
            first,
        ))
    }

    /// Takes the existing device's answer: returns the code to show.
    pub fn answered(&mut self, answer: &[u8]) -> Result<String> {
        let initiator = self
            .initiator
            .take()
            .ok_or_else(|| CoreError::LinkRefused("the handshake is already done".into()))?;
        let channel = initiator.finish(answer)?;
        let code = channel.confirmation_code().to_owned();
        self.channel = Some(channel);
        Ok(code)
    }

    fn channel(&mut self) -> Result<&mut LinkChannel> {
        self.channel
            .as_mut()
            .ok_or_else(|| CoreError::LinkRefused("the handshake is not done".into()))
    }
}

impl Messenger {
    /// Makes a one-time offer to link a new device, good for `valid_for`, naming
    /// `addresses` where this device listens.
    pub fn offer_link(&mut self, addresses: Vec<String>, valid_for: Duration) -> Result<LinkOffer> {
        self.ensure_listed()?;
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(&mut *secret);
        let expires_at = self.now_secs() + valid_for.as_secs();
        let offer = LinkOffer {
            secret: *secret,
            transport_key: self.account()?.device().transport_public_key(),
            addresses: addresses.into_iter().take(8).collect(),
            expires_at,
        };
        let now = self.now_secs();
        self.linking_mut().offers.retain(|o| o.expires_at > now);
        self.linking_mut().offers.push(PendingOffer { secret, expires_at });
        Ok(offer)
    }

    /// Answers a new device's first handshake message with the offer it was made
    /// with, which is used up by this. An offer that expired, was used or never was
    /// this device's is refused.
    pub fn answer_link(&mut self, first: &[u8]) -> Result<(ExistingDeviceLink, Vec<u8>)> {
        let now = self.now_secs();
        self.linking_mut().offers.retain(|o| o.expires_at > now);
        for (index, offer) in self.linking_mut().offers.iter().enumerate() {
            if let Ok((channel, answer)) = answer_link(&offer.secret, first) {
                self.linking_mut().offers.remove(index);
                return Ok((
                    ExistingDeviceLink {
                        channel,
                        history_total: None,
                    },
                    answer,
                ));
            }
        }
        Err(CoreError::LinkRefused(
            "no open offer of this device matches: it expired, was used, or was changed".into(),
        ))
    }

    /// After the person confirmed the code: the frames that hand the account over.
    pub fn hand_over(&mut self, link: &mut ExistingDeviceLink) -> Result<Vec<Vec<u8>>> {
        seal_frames(&mut link.channel, &self.grant_link()?.to_bytes())
    }

    /// On the new device (a profile without an account): joins the account handed
    /// over in `frames`; returns the frame with this device's card for the other.
    pub fn join_over_link(&mut self, link: &mut NewDeviceLink, frames: &[Vec<u8>]) -> Result<Vec<u8>> {
        let bytes = open_frames(link.channel()?, frames, MAX_HAND_OVER_BYTES)?;
        let card = self.join_account(LinkGrant::from_bytes(&bytes)?)?;
        Ok(link.channel()?.seal(&encode_versioned(&card))?)
    }

    /// On the existing device, once linked and if the person agreed: the page of
    /// message history that starts at `from` (0 first, then each page's `next`),
    /// sealed in frames, and what it holds (its `next` is `None` on the last).
    pub fn history_page(&self, link: &mut ExistingDeviceLink, from: u64) -> Result<(Vec<Vec<u8>>, HistoryProgress)> {
        let rows = self.db().messages().history_page(from, HISTORY_PAGE_MESSAGES)?;
        let full = rows.len() == HISTORY_PAGE_MESSAGES;
        let mut page = HistoryPage {
            conversations: Vec::new(),
            messages: Vec::new(),
            // Counted once: counting reads the whole history.
            total: match link.history_total {
                Some(total) => total,
                None => *link.history_total.insert(self.db().messages().count()?),
            },
            next: None,
        };
        let mut text_bytes = 0;
        for (seq, message) in rows {
            if text_bytes + message.body.len() > HISTORY_PAGE_TEXT_BYTES && !page.messages.is_empty() {
                page.next = Some(seq);
                break;
            }
            page.next = full.then_some(seq + 1);
            let Ok(id) = <[u8; 16]>::try_from(message.id.as_slice()) else {
                continue;
            };
            if !page.conversations.iter().any(|c| c.id == message.conversation_id) {
                let (title, created_at) = self
                    .db()
                    .messages()
                    .conversation_info(&message.conversation_id)?
                    .unwrap_or_else(|| (String::new(), message.sent_at));
                page.conversations.push(HistoryConversation {
                    id: message.conversation_id.clone(),
                    title,
                    created_at,
                });
            }
            text_bytes += message.body.len();
            page.messages.push(HistoryMessage {
                id,
                conversation_id: message.conversation_id,
                sender: message.sender,
                sent_at: message.sent_at,
                body: message.body,
                state: message.state.name().to_owned(),
                outgoing: message.outgoing,
            });
        }
        Ok((
            seal_frames(&mut link.channel, &page.to_bytes())?,
            HistoryProgress::of(&page),
        ))
    }

    /// On the new device: stores a page of history (messages it already has stay as
    /// they are) in one transaction, and says how far the history has come.
    pub fn import_history(&mut self, link: &mut NewDeviceLink, frames: &[Vec<u8>]) -> Result<HistoryProgress> {
        let bytes = open_frames(link.channel()?, frames, MAX_HISTORY_PAGE_BYTES)?;
        let page = HistoryPage::from_bytes(&bytes)?;
        let states = page
            .messages
            .iter()
            .map(|m| {
                DeliveryState::from_name(&m.state).ok_or_else(|| {
                    CoreError::LinkRefused(format!("history with an unknown message state {:?}", m.state))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.atomically(|this| {
            for conversation in &page.conversations {
                this.db().messages().ensure_conversation(
                    &conversation.id,
                    &conversation.title,
                    conversation.created_at,
                )?;
            }
            for (m, state) in page.messages.iter().zip(states) {
                this.db().messages().insert(&NewMessage {
                    id: m.id,
                    conversation_id: &m.conversation_id,
                    sender: &m.sender,
                    sent_at: m.sent_at,
                    body: &m.body,
                    state,
                    outgoing: m.outgoing,
                })?;
            }
            Ok(())
        })?;
        Ok(HistoryProgress::of(&page))
    }

    /// On the existing device: takes the new device's card, signs it into the
    /// account, tells contacts, and adds the new device to every group this account
    /// administers.
    pub fn finish_link(&mut self, link: &mut ExistingDeviceLink, card_frame: &[u8]) -> Result<Vec<OutboxId>> {
        let card: ContactCard = decode_versioned(&link.channel.open(card_frame)?, MAX_HAND_OVER_BYTES)?;
        card.check()?;
        let mut out = self.atomically(|this| this.complete_link(card))?;
        let own = self.account()?.id().to_owned();
        for group in self.groups()? {
            if group.active && group.is_admin {
                match self.add_group_members(&group.group_id, std::slice::from_ref(&own)) {
                    Ok(more) => out.extend(more),
                    Err(e) => tracing::warn!(group = group.group_id, %e, "the new device could not join a group"),
                }
            }
        }
        tracing::info!("a new device is linked");
        Ok(out)
    }
}

impl Messenger {
    /// Answers one request of the link protocol from the peer `from` (the network's
    /// name for the device asking): the handshake, "confirmed yet?", the new device's
    /// card, pages of history. Once a handshake is done, only the peer that made it is
    /// answered: the channel's frames are sealed in order, and a frame sealed for
    /// anyone else would break it. Never fails: a refusal is an answer too.
    pub fn serve_link(&mut self, from: &str, request: &[u8]) -> Vec<u8> {
        let response = match LinkRequest::from_bytes(request) {
            Ok(LinkRequest::Hello(first)) => self.answer_link(&first).map(|(link, answer)| {
                self.linking_mut().served = Some(ServedLink {
                    peer: from.to_owned(),
                    link,
                    confirmed: false,
                    share_history: false,
                    linked: false,
                    history_sent: 0,
                });
                LinkResponse::Answer(answer)
            }),
            Ok(_) if self.linking_mut().served.as_ref().is_some_and(|s| s.peer != from) => {
                Err(CoreError::LinkRefused("another device is linking here".into()))
            }
            Ok(request) => self.serve_link_request(request),
            Err(e) => Err(e.into()),
        };
        response
            .unwrap_or_else(|e| {
                tracing::info!(%e, "a link request was refused");
                LinkResponse::Refused(e.to_string())
            })
            .to_bytes()
    }

    fn serve_link_request(&mut self, request: LinkRequest) -> Result<LinkResponse> {
        match request {
            LinkRequest::Hello(_) => Err(CoreError::LinkRefused("a handshake out of turn".into())),
            LinkRequest::Ready => match self.linking_mut().served.take() {
                Some(mut served) if served.confirmed && !served.linked => {
                    let frames = self.hand_over(&mut served.link)?;
                    self.linking_mut().served = Some(served);
                    Ok(LinkResponse::HandOver(frames))
                }
                Some(served) if !served.linked => {
                    self.linking_mut().served = Some(served);
                    Ok(LinkResponse::Wait)
                }
                _ => Err(CoreError::LinkRefused("no link is under way".into())),
            },
            LinkRequest::Card(frame) => match self.linking_mut().served.take() {
                Some(mut served) if served.confirmed && !served.linked => {
                    self.finish_link(&mut served.link, &frame)?;
                    served.linked = true;
                    self.linking_mut().served = Some(served);
                    Ok(LinkResponse::Done)
                }
                _ => Err(CoreError::LinkRefused("no confirmed link is under way".into())),
            },
            LinkRequest::History { from } => match self.linking_mut().served.take() {
                Some(mut served) if served.linked && served.share_history => {
                    let (frames, page) = self.history_page(&mut served.link, from)?;
                    if page.next.is_some() {
                        served.history_sent += page.received;
                        self.linking_mut().served = Some(served);
                    }
                    Ok(LinkResponse::History(frames))
                }
                Some(served) if served.linked => Ok(LinkResponse::NoHistory),
                _ => Err(CoreError::LinkRefused("no device was linked here".into())),
            },
        }
    }

    /// Where the link this device serves stands, if one is under way: `None` once
    /// it is done (the history passed on too) or was dropped.
    pub fn served_link_state(&self) -> Option<ServedLinkState> {
        let served = self.linking().served.as_ref()?;
        Some(if !served.confirmed {
            ServedLinkState::WaitingForConfirmation(served.link.confirmation_code().to_owned())
        } else if served.linked && served.share_history {
            ServedLinkState::PassingHistory {
                sent: served.history_sent,
                total: served.link.history_total.unwrap_or(0),
            }
        } else {
            ServedLinkState::Linking
        })
    }

    /// The code of a link waiting for the person to confirm it, if any.
    pub fn link_waiting_for_confirmation(&self) -> Option<String> {
        self.linking()
            .served
            .as_ref()
            .filter(|s| !s.confirmed)
            .map(|s| s.link.confirmation_code().to_owned())
    }

    /// The person compared the codes: go ahead (`same_code`), passing the message
    /// history on if `share_history`, or drop the link.
    pub fn confirm_link(&mut self, same_code: bool, share_history: bool) {
        match self.linking_mut().served.as_mut() {
            Some(served) if same_code => {
                served.confirmed = true;
                served.share_history = share_history;
            }
            _ => self.linking_mut().served = None,
        }
    }
}

/// Seals `bytes` for the link channel: a frame with the length, then as many frames
/// as the bytes take.
fn seal_frames(channel: &mut LinkChannel, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut frames = vec![channel.seal(&encode_versioned(&(bytes.len() as u64)))?];
    for chunk in bytes.chunks(MAX_LINK_FRAME) {
        frames.push(channel.seal(chunk)?);
    }
    Ok(frames)
}

/// Opens what [`seal_frames`] made, refusing more than `limit` bytes.
fn open_frames(channel: &mut LinkChannel, frames: &[Vec<u8>], limit: usize) -> Result<Zeroizing<Vec<u8>>> {
    let (first, rest) = frames
        .split_first()
        .ok_or_else(|| CoreError::LinkRefused("nothing was handed over".into()))?;
    let total: u64 = decode_versioned(&channel.open(first)?, 16)?;
    if total > limit as u64 || rest.len() > (limit / MAX_LINK_FRAME) + 1 {
        return Err(CoreError::LinkRefused("the hand-over is too large".into()));
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(total as usize));
    for frame in rest {
        bytes.extend_from_slice(&channel.open(frame)?);
        if bytes.len() as u64 > total {
            break;
        }
    }
    if bytes.len() as u64 != total {
        return Err(CoreError::LinkRefused("the hand-over is incomplete".into()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use cairn_store::{KeyVault, ProfileDir};

    use super::*;
    use crate::Unlock;

    fn profile(vault: &KeyVault) -> (tempfile::TempDir, Messenger) {
        let dir = tempfile::tempdir().unwrap();
        let messenger = Messenger::create_profile(&ProfileDir::new(dir.path()), Unlock::Keyring(vault)).unwrap();
        (dir, messenger)
    }

    #[test]
    fn a_long_history_goes_over_in_pages_of_at_most_500_messages_and_none_is_lost_nor_changed() {
        let vault = KeyVault::with_store(keyring_core::mock::Store::new().unwrap());
        let (_laptop_dir, mut laptop) = profile(&vault);
        laptop.create_account("Alice").unwrap();
        laptop
            .db()
            .messages()
            .ensure_conversation(b"a-contact", "Bob", 0)
            .unwrap();
        let bodies: Vec<String> = (0..1_234).map(|i| format!("message {i}")).collect();
        let contact = cairn_proto::AccountId::parse("acontactaaaaaaaaaaaaaaaaaa").unwrap();
        laptop
            .db()
            .messages()
            .insert_all(bodies.iter().enumerate().map(|(i, body)| NewMessage {
                id: (i as u128).to_be_bytes(),
                conversation_id: b"a-contact",
                sender: &contact,
                sent_at: i as i64,
                body,
                // The last one failed to send: history carries failed messages too.
                state: if i == 1_233 {
                    DeliveryState::Failed
                } else {
                    DeliveryState::Received
                },
                outgoing: i == 1_233,
            }))
            .unwrap();

        let (_desktop_dir, mut desktop) = profile(&vault);
        let offer = laptop.offer_link(Vec::new(), LINK_OFFER_VALIDITY).unwrap();
        let (mut new_side, first) = NewDeviceLink::start(&offer, crate::Clock::system().now()).unwrap();
        let (mut existing_side, answer) = laptop.answer_link(&first).unwrap();
        new_side.answered(&answer).unwrap();
        let frames = laptop.hand_over(&mut existing_side).unwrap();
        let card = desktop.join_over_link(&mut new_side, &frames).unwrap();
        laptop.finish_link(&mut existing_side, &card).unwrap();

        let (mut from, mut pages) = (Some(0), Vec::new());
        while let Some(start) = from {
            let (frames, _) = laptop.history_page(&mut existing_side, start).unwrap();
            let page = desktop.import_history(&mut new_side, &frames).unwrap();
            pages.push(page.received);
            from = page.next;
        }
        assert_eq!(pages, [500, 500, 234]);
        let shown: Vec<String> = desktop
            .db()
            .messages()
            .in_conversation(b"a-contact", 2_000)
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(shown, bodies);
        let last = desktop.db().messages().get(&1_233u128.to_be_bytes()).unwrap().unwrap();
        assert_eq!((last.state, last.outgoing), (DeliveryState::Failed, true));

        // Pages open only in the order they were sealed: one that comes early, or one
        // replayed, does not open, and the channel goes on after either.
        let (first, _) = laptop.history_page(&mut existing_side, 0).unwrap();
        let (second, _) = laptop.history_page(&mut existing_side, 0).unwrap();
        assert!(desktop.import_history(&mut new_side, &second).is_err(), "out of order");
        desktop.import_history(&mut new_side, &first).unwrap();
        assert!(desktop.import_history(&mut new_side, &first).is_err(), "replayed");
        desktop.import_history(&mut new_side, &second).unwrap();
        assert_eq!(desktop.db().messages().count().unwrap(), 1_234, "nothing twice");
    }
}
