//! The peer cache protocol (`/cairn/cache/1`) as a behaviour of its own.
//!
//! As a holder (when this node holds for others) it answers requests from its
//! [`CacheService`], letting stores that arrive together share one database commit, and
//! pushes new envelopes to subscribed mailbox owners. As a device it sends the node's
//! requests (place, fetch, subscribe) with someone waiting for each answer, takes
//! pushes only from holders it subscribed at and only for its own mailbox, and signs
//! and sends, in batches, the acknowledgements of what it answered. The DHT is the
//! node's: an acknowledgement that other holders should hear of is reported to it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::FromSwarm;
use libp2p::{identity, PeerId};
use tokio::sync::oneshot;

use cairn_proto::{Ack, CacheRefusal, CacheRequest, CacheResponse, Envelope, EnvelopeId, Mailbox, MAX_ACK_IDS};

use super::protocol::answer;
use super::InboundId;
use crate::cache::{sign_ack, CacheService, Clock, Effect};
use crate::codec::CacheCodec;
use crate::NetError;

/// Most stores that share one commit.
const STORE_BATCH: usize = 64;
/// Longest a store waits for others to share its commit.
const STORE_BATCH_WAIT: Duration = Duration::from_millis(2);
/// How long answered envelopes gather before their acknowledgements go out.
const ACK_INTERVAL: Duration = Duration::from_millis(100);

/// What the peer cache protocol reports to the node.
#[derive(Debug)]
pub(crate) enum Event {
    /// A holder this node subscribed at pushed an envelope for this device; answer it
    /// (which acknowledges it to the holder) with [`Behaviour::acknowledge`].
    Pushed {
        /// The holder.
        from: PeerId,
        /// The encoded envelope.
        envelope: Vec<u8>,
        /// What the envelope is answered under.
        inbound: InboundId,
    },
    /// An acknowledgement deleted envelopes here; the other holders of `mailbox` (the
    /// node finds them in its DHT), except `from`, should hear of it through
    /// [`Behaviour::send_ack`].
    ForwardAck {
        /// The acknowledged envelopes' mailbox.
        mailbox: Mailbox,
        /// The signed acknowledgement.
        ack: Ack,
        /// Who sent it here.
        from: PeerId,
    },
}

/// The peer cache protocol's behaviour.
pub(crate) struct Behaviour {
    protocol: request_response::Behaviour<CacheCodec>,
    /// Requests whose answer someone waits for.
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<CacheResponse, NetError>>>,
    /// The holder side, when this node holds for others.
    holding: Option<CacheService>,
    clock: Clock,
    /// Signs acknowledgements of envelopes fetched from holders.
    keypair: identity::Keypair,
    /// This device's mailbox.
    mailbox: Mailbox,
    /// Holders this node asked for pushes to its mailbox, while connected: only they
    /// may push.
    subscribed_at: HashSet<PeerId>,
    /// Envelopes answered but not yet acknowledged to the holder they came from.
    acks_due: HashMap<PeerId, Vec<EnvelopeId>>,
    ack_tick: tokio::time::Interval,
    /// Stores waiting to share one database commit, and when they are held at the latest.
    stores_due: Vec<(PeerId, Vec<u8>, ResponseChannel<CacheResponse>)>,
    flush_stores_at: Pin<Box<tokio::time::Sleep>>,
    /// Events to report before anything else.
    events: VecDeque<Event>,
}

impl Behaviour {
    /// The peer cache protocol over `protocol` for the device of `keypair`, whose
    /// mailbox is `mailbox`, holding for others with `holding` if given.
    pub(super) fn new(
        protocol: request_response::Behaviour<CacheCodec>,
        keypair: identity::Keypair,
        mailbox: Mailbox,
        holding: Option<CacheService>,
        clock: Clock,
    ) -> Self {
        let mut ack_tick = tokio::time::interval(ACK_INTERVAL);
        ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            protocol,
            pending: HashMap::new(),
            holding,
            clock,
            keypair,
            mailbox,
            subscribed_at: HashSet::new(),
            acks_due: HashMap::new(),
            ack_tick,
            stores_due: Vec::new(),
            flush_stores_at: Box::pin(tokio::time::sleep(Duration::ZERO)),
            events: VecDeque::new(),
        }
    }

    /// Sends `request` to `to`; `done` gets the answer or why there is none.
    pub(super) fn request(
        &mut self,
        to: &PeerId,
        request: CacheRequest,
        done: oneshot::Sender<Result<CacheResponse, NetError>>,
    ) {
        if matches!(request, CacheRequest::Fetch { subscribe: true, .. }) {
            self.subscribed_at.insert(*to);
        }
        let id = self.protocol.send_request(to, request);
        self.pending.insert(id, done);
    }

    /// Runs `work` on the holder side (if this node holds) at the current time.
    pub(super) fn with_holding<T>(&mut self, work: impl FnOnce(Option<&mut CacheService>, u64) -> T) -> T {
        work(self.holding.as_mut(), self.clock.now())
    }

    /// The envelope `id` from `holder` was answered: the holder may delete it (the
    /// acknowledgement goes out with the next batch).
    pub(super) fn acknowledge(&mut self, holder: PeerId, id: EnvelopeId) {
        let due = self.acks_due.entry(holder).or_default();
        due.push(id);
        if due.len() >= MAX_ACK_IDS {
            self.send_acks();
        }
    }

    /// Passes a signed acknowledgement on to another holder of its mailbox.
    pub(super) fn send_ack(&mut self, holder: &PeerId, ack: Ack) {
        self.protocol.send_request(holder, CacheRequest::Ack(ack));
    }

    /// Signs and sends the acknowledgements that are due, one request per holder and
    /// batch; the answers need no waiting for (a lost one leaves a copy that expires or
    /// is fetched and acknowledged again).
    fn send_acks(&mut self) {
        for (holder, ids) in std::mem::take(&mut self.acks_due) {
            for batch in ids.chunks(MAX_ACK_IDS) {
                let Some(ack) = sign_ack(&self.keypair, batch.to_vec()) else {
                    tracing::error!("this node's key cannot sign acknowledgements");
                    return;
                };
                self.send_ack(&holder, ack);
            }
        }
    }

    /// Answers a request on the cache protocol.
    fn on_request(&mut self, peer: PeerId, request: CacheRequest, channel: ResponseChannel<CacheResponse>) {
        let (response, effects) = match (request, self.holding.as_mut()) {
            // A holder of this device's mailbox pushes an envelope that just arrived.
            (CacheRequest::Push { envelope, .. }, _) => match Envelope::from_bytes(&envelope) {
                // Only from a holder this node subscribed at, for this node's mailbox.
                Ok(decoded) if self.subscribed_at.contains(&peer) && decoded.mailbox == self.mailbox => {
                    let inbound = InboundId::cached(peer, decoded.id());
                    self.events.push_back(Event::Pushed {
                        from: peer,
                        envelope,
                        inbound,
                    });
                    (CacheResponse::Taken, Vec::new())
                }
                _ => (CacheResponse::Refused(CacheRefusal::Malformed), Vec::new()),
            },
            // Stores wait a moment for others to share their commit.
            (CacheRequest::Store(bytes), Some(_)) => {
                if self.stores_due.is_empty() {
                    self.flush_stores_at
                        .as_mut()
                        .reset(tokio::time::Instant::now() + STORE_BATCH_WAIT);
                }
                self.stores_due.push((peer, bytes, channel));
                if self.stores_due.len() >= STORE_BATCH {
                    self.flush_stores();
                }
                return;
            }
            (request, Some(service)) => service.handle(peer, request, self.clock.now()),
            (_, None) => (CacheResponse::Refused(CacheRefusal::NotACache), Vec::new()),
        };
        self.respond(channel, response, effects);
    }

    /// Holds the stores that are due, in one transaction, and answers each.
    fn flush_stores(&mut self) {
        let due = std::mem::take(&mut self.stores_due);
        let Some(service) = self.holding.as_mut() else { return };
        let (stores, channels): (Vec<_>, Vec<_>) = due
            .into_iter()
            .map(|(peer, bytes, channel)| ((peer, bytes), channel))
            .unzip();
        let answers = service.store_all(&stores, self.clock.now());
        for (channel, (response, effects)) in channels.into_iter().zip(answers) {
            self.respond(channel, response, effects);
        }
    }

    /// Sends a cache answer and what the service asked to send on.
    fn respond(&mut self, channel: ResponseChannel<CacheResponse>, response: CacheResponse, effects: Vec<Effect>) {
        // The peer may have gone; then there is nobody to tell.
        let _ = self.protocol.send_response(channel, response);
        for effect in effects {
            match effect {
                Effect::Push { to, position, envelope } => {
                    self.protocol
                        .send_request(&to, CacheRequest::Push { position, envelope });
                }
                Effect::ForwardAck { mailbox, ack, from } => {
                    self.events.push_back(Event::ForwardAck { mailbox, ack, from });
                }
            }
        }
    }

    fn on_swarm(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = event {
            if closed.remaining_established == 0 {
                if let Some(service) = self.holding.as_mut() {
                    service.disconnected(&closed.peer_id);
                }
                self.subscribed_at.remove(&closed.peer_id);
            }
        }
    }

    fn poll_own(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if !self.acks_due.is_empty() && self.ack_tick.poll_tick(cx).is_ready() {
            self.send_acks();
        }
        if !self.stores_due.is_empty() && self.flush_stores_at.as_mut().poll(cx).is_ready() {
            self.flush_stores();
        }
        match self.events.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }

    fn on_protocol_event(&mut self, event: request_response::Event<CacheRequest, CacheResponse>) -> Option<Event> {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_request(peer, request, channel);
                }
                request_response::Message::Response { request_id, response } => {
                    answer(&mut self.pending, request_id, Ok(response));
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                tracing::debug!(%peer, %error, "cache request failed");
                answer(
                    &mut self.pending,
                    request_id,
                    Err(NetError::Unreachable(error.to_string())),
                );
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound cache request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
        // What a request led to is queued and reported by `poll_own`.
        None
    }
}

over_request_response!(Behaviour, CacheCodec, Event);
