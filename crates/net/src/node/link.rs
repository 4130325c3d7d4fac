//! The device-link protocol (`/cairn/link/1`) as a behaviour of its own: a new device's
//! requests go out with someone waiting for each answer, and an existing device's
//! incoming requests wait, each under a [`LinkReply`], until the core answers them.

use std::collections::HashMap;
use std::task::{Context, Poll};

use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::FromSwarm;
use libp2p::PeerId;
use tokio::sync::oneshot;

use super::protocol::answer;
use super::LinkReply;
use crate::codec::LinkCodec;
use crate::NetError;

/// What the link protocol reports to the node.
#[derive(Debug)]
pub(crate) enum Event {
    /// A device asks to be linked; answer with [`Behaviour::answer`].
    Request {
        /// The asking peer.
        from: PeerId,
        /// The encoded request.
        request: Vec<u8>,
        /// What to answer it under.
        reply: LinkReply,
    },
}

/// The link protocol's behaviour.
pub(crate) struct Behaviour {
    protocol: request_response::Behaviour<LinkCodec>,
    /// Requests whose answer someone waits for.
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, NetError>>>,
    /// Requests waiting for the core's answer.
    waiting: HashMap<LinkReply, ResponseChannel<Vec<u8>>>,
    next_reply: u64,
}

impl Behaviour {
    /// The link protocol over `protocol`.
    pub(super) fn new(protocol: request_response::Behaviour<LinkCodec>) -> Self {
        Self {
            protocol,
            pending: HashMap::new(),
            waiting: HashMap::new(),
            next_reply: 0,
        }
    }

    /// Sends `request` to `to`; `done` gets the answer or why there is none.
    pub(super) fn request(&mut self, to: &PeerId, request: Vec<u8>, done: oneshot::Sender<Result<Vec<u8>, NetError>>) {
        let id = self.protocol.send_request(to, request);
        self.pending.insert(id, done);
    }

    /// Answers the request waiting under `reply` (if its peer is still there).
    pub(super) fn answer(&mut self, reply: LinkReply, response: Vec<u8>) {
        if let Some(channel) = self.waiting.remove(&reply) {
            // The peer may have gone; then there is nobody to tell.
            let _ = self.protocol.send_response(channel, response);
        }
    }

    fn on_swarm(&mut self, _event: FromSwarm) {}

    fn poll_own(&mut self, _cx: &mut Context<'_>) -> Poll<Event> {
        Poll::Pending
    }

    fn on_protocol_event(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) -> Option<Event> {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let reply = LinkReply(self.next_reply);
                    self.next_reply += 1;
                    self.waiting.insert(reply, channel);
                    Some(Event::Request {
                        from: peer,
                        request,
                        reply,
                    })
                }
                request_response::Message::Response { request_id, response } => {
                    answer(&mut self.pending, request_id, Ok(response));
                    None
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                answer(
                    &mut self.pending,
                    request_id,
                    Err(NetError::Unreachable(error.to_string())),
                );
                None
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound link request failed");
                None
            }
            request_response::Event::ResponseSent { .. } => None,
        }
    }
}

over_request_response!(Behaviour, LinkCodec, Event);
