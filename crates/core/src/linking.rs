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
//!
//! An offer that expired, was used, or was not this device's is refused with
//! [`CoreError::LinkRefused`] and changes nothing.

use std::time::Duration;

use cairn_crypto::{answer_link, LinkChannel, LinkInitiator, MAX_LINK_FRAME};
use cairn_proto::{
    decode_versioned, encode_versioned, ContactCard, LinkOffer, LinkRequest, LinkResponse, MAX_HAND_OVER_BYTES,
};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::devices::LinkGrant;
use crate::messenger::{unix_millis, Messenger};
use crate::{CoreError, Outgoing, Result};

/// How long an offer is good for unless said otherwise: ten minutes.
pub const LINK_OFFER_VALIDITY: Duration = Duration::from_secs(600);

/// An offer this device made and has not used.
pub(crate) struct PendingOffer {
    secret: Zeroizing<[u8; 32]>,
    expires_at: u64,
}

/// A link this device serves over the network: the handshake is done, and the
/// person has or has not confirmed the code yet.
pub(crate) struct ServedLink {
    link: ExistingDeviceLink,
    confirmed: bool,
}

/// The existing device's side of a link, after the handshake.
pub struct ExistingDeviceLink {
    channel: LinkChannel,
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
    /// handshake message for that device. An expired offer is refused here already.
    pub fn start(offer: &LinkOffer) -> Result<(Self, Vec<u8>)> {
        if offer.expires_at <= now_secs() {
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
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(&mut *secret);
        let expires_at = now_secs() + valid_for.as_secs();
        let offer = LinkOffer {
            secret: *secret,
            transport_key: self.account()?.device.transport_public_key(),
            addresses: addresses.into_iter().take(8).collect(),
            expires_at,
        };
        let now = now_secs();
        self.link_offers.retain(|o| o.expires_at > now);
        self.link_offers.push(PendingOffer { secret, expires_at });
        Ok(offer)
    }

    /// Answers a new device's first handshake message with the offer it was made
    /// with, which is used up by this. An offer that expired, was used or never was
    /// this device's is refused.
    pub fn answer_link(&mut self, first: &[u8]) -> Result<(ExistingDeviceLink, Vec<u8>)> {
        let now = now_secs();
        self.link_offers.retain(|o| o.expires_at > now);
        for (index, offer) in self.link_offers.iter().enumerate() {
            if let Ok((channel, answer)) = answer_link(&offer.secret, first) {
                self.link_offers.remove(index);
                return Ok((ExistingDeviceLink { channel }, answer));
            }
        }
        Err(CoreError::LinkRefused(
            "no open offer of this device matches: it expired, was used, or was changed".into(),
        ))
    }

    /// After the person confirmed the code: the frames that hand the account over.
    pub fn hand_over(&mut self, link: &mut ExistingDeviceLink) -> Result<Vec<Vec<u8>>> {
        let grant = self.grant_link()?;
        let bytes = grant.to_bytes();
        // A length first, then the hand-over in as many frames as it takes.
        let mut frames = vec![link.channel.seal(&encode_versioned(&(bytes.len() as u64)))?];
        for chunk in bytes.chunks(MAX_LINK_FRAME) {
            frames.push(link.channel.seal(chunk)?);
        }
        Ok(frames)
    }

    /// On the new device (a profile without an account): joins the account handed
    /// over in `frames`; returns the frame with this device's card for the other.
    pub fn join_over_link(&mut self, link: &mut NewDeviceLink, frames: &[Vec<u8>]) -> Result<Vec<u8>> {
        let channel = link.channel()?;
        let (first, rest) = frames
            .split_first()
            .ok_or_else(|| CoreError::LinkRefused("nothing was handed over".into()))?;
        let total: u64 = decode_versioned(&channel.open(first)?, 16)?;
        if total as usize > MAX_HAND_OVER_BYTES {
            return Err(CoreError::LinkRefused("the hand-over is too large".into()));
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(total as usize));
        for frame in rest {
            bytes.extend_from_slice(&channel.open(frame)?);
        }
        if bytes.len() as u64 != total {
            return Err(CoreError::LinkRefused("the hand-over is incomplete".into()));
        }
        let card = self.join_account(LinkGrant::from_bytes(&bytes)?)?;
        Ok(link.channel()?.seal(&encode_versioned(&card))?)
    }

    /// On the existing device: takes the new device's card, signs it into the
    /// account, tells contacts, and adds the new device to every group this account
    /// administers.
    pub fn finish_link(&mut self, link: &mut ExistingDeviceLink, card_frame: &[u8]) -> Result<Vec<Outgoing>> {
        let card: ContactCard = decode_versioned(&link.channel.open(card_frame)?, MAX_HAND_OVER_BYTES)?;
        card.check()?;
        let mut out = self.atomically(|this| this.complete_link(card))?;
        let own = self.account()?.account_id.clone();
        for group in self.groups()? {
            if group.active && group.is_admin {
                match self.add_group_members(&group.group_id, std::slice::from_ref(&own)) {
                    Ok(more) => out.extend(more),
                    Err(e) => tracing::warn!(group = group.group_id, %e, "the new device could not join a group"),
                }
            }
        }
        tracing::info!(at = unix_millis(), "a new device is linked");
        Ok(out)
    }
}

impl Messenger {
    /// Answers one request of the link protocol (from the network): the handshake,
    /// "confirmed yet?", and the new device's card. Never fails: a refusal is an
    /// answer too.
    pub fn serve_link(&mut self, request: &[u8]) -> Vec<u8> {
        let response = match LinkRequest::from_bytes(request) {
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
            LinkRequest::Hello(first) => {
                let (link, answer) = self.answer_link(&first)?;
                self.served_link = Some(ServedLink { link, confirmed: false });
                Ok(LinkResponse::Answer(answer))
            }
            LinkRequest::Ready => match self.served_link.take() {
                Some(mut served) if served.confirmed => {
                    let frames = self.hand_over(&mut served.link)?;
                    self.served_link = Some(served);
                    Ok(LinkResponse::HandOver(frames))
                }
                Some(served) => {
                    self.served_link = Some(served);
                    Ok(LinkResponse::Wait)
                }
                None => Err(CoreError::LinkRefused("no link is under way".into())),
            },
            LinkRequest::Card(frame) => match self.served_link.take() {
                Some(mut served) if served.confirmed => {
                    self.finish_link(&mut served.link, &frame)?;
                    Ok(LinkResponse::Done)
                }
                _ => Err(CoreError::LinkRefused("no confirmed link is under way".into())),
            },
        }
    }

    /// The code of a link waiting for the person to confirm it, if any.
    pub fn link_waiting_for_confirmation(&self) -> Option<String> {
        self.served_link
            .as_ref()
            .filter(|s| !s.confirmed)
            .map(|s| s.link.confirmation_code().to_owned())
    }

    /// The person compared the codes: go ahead (`true`) or drop the link.
    pub fn confirm_link(&mut self, same_code: bool) {
        match self.served_link.as_mut() {
            Some(served) if same_code => served.confirmed = true,
            _ => self.served_link = None,
        }
    }
}

fn now_secs() -> u64 {
    unix_millis() as u64 / 1000
}
