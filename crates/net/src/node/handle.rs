//! The handle the rest of the app talks to a running node through: commands to its
//! driver (send, dial, look up, ask a cache, answer what came in) and the answers they
//! wait for. Cheap to clone; the node stops when every handle is gone.

use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use cairn_proto::{CacheRequest, CacheResponse};

use super::{Inbound, InboundId, LinkReply};
use crate::cache::CacheService;
use crate::codec::Delivery;
use crate::direct::Direct;
use crate::mailbox::MailboxSide;
use crate::NetError;

/// Work run on the driver's cache service, given the time.
pub(super) type HoldingWork = Box<dyn FnOnce(Option<&mut CacheService>, u64) + Send>;

pub(super) enum Command {
    Send {
        to: PeerId,
        bytes: Vec<u8>,
        done: oneshot::Sender<Result<Delivery, NetError>>,
    },
    Answer {
        inbound: InboundId,
        delivery: Delivery,
    },
    Dial {
        address: Multiaddr,
        done: oneshot::Sender<Result<(), NetError>>,
    },
    AddAddress {
        peer: PeerId,
        address: Multiaddr,
    },
    Listeners {
        done: oneshot::Sender<Vec<Multiaddr>>,
    },
    /// Finds the peers closest to `key` in the DHT (reachable ones, nearest first).
    ClosestPeers {
        key: Vec<u8>,
        count: std::num::NonZeroUsize,
        done: oneshot::Sender<Vec<PeerId>>,
    },
    /// Sends a cache request and passes the answer back.
    Cache {
        to: PeerId,
        request: CacheRequest,
        done: oneshot::Sender<Result<CacheResponse, NetError>>,
    },
    /// Runs work on this node's cache service (`None` when it holds for no one).
    Holding(HoldingWork),
    /// Sends a link request and passes the answer back.
    Link {
        to: PeerId,
        request: Vec<u8>,
        done: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    /// Answers an inbound link request.
    LinkAnswer {
        reply: LinkReply,
        response: Vec<u8>,
    },
}

/// Talks to a running node; cheap to clone. The node stops when every handle is gone.
#[derive(Clone)]
pub struct NodeHandle {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    direct: Arc<Direct>,
    mailbox: MailboxSide,
}

/// A [`NodeHandle`] that does not keep the node running.
pub(crate) struct WeakNodeHandle {
    peer_id: PeerId,
    commands: mpsc::WeakSender<Command>,
    direct: Arc<Direct>,
    mailbox: MailboxSide,
}

impl WeakNodeHandle {
    /// The handle, while the node runs.
    pub(crate) fn upgrade(&self) -> Option<NodeHandle> {
        Some(NodeHandle {
            peer_id: self.peer_id,
            commands: self.commands.upgrade()?,
            direct: self.direct.clone(),
            mailbox: self.mailbox.clone(),
        })
    }
}

impl NodeHandle {
    pub(super) fn new(
        peer_id: PeerId,
        commands: mpsc::Sender<Command>,
        direct: Arc<Direct>,
        mailbox: MailboxSide,
    ) -> Self {
        Self {
            peer_id,
            commands,
            direct,
            mailbox,
        }
    }

    pub(super) fn downgrade(&self) -> WeakNodeHandle {
        WeakNodeHandle {
            peer_id: self.peer_id,
            commands: self.commands.downgrade(),
            direct: self.direct.clone(),
            mailbox: self.mailbox.clone(),
        }
    }

    /// What the device side of the peer cache keeps.
    pub(crate) fn mailbox_side(&self) -> &MailboxSide {
        &self.mailbox
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Sends an encoded envelope to a peer and waits for its answer: over the direct
    /// session if one is open, else (or if it fails) over a libp2p stream.
    pub async fn send(&self, to: PeerId, bytes: Vec<u8>) -> Result<Delivery, NetError> {
        match self.direct.send(to, &bytes).await {
            Some(Ok(delivery)) => Ok(delivery),
            Some(Err(e)) => {
                tracing::info!(peer = %to, %e, "direct session failed; falling back to libp2p");
                self.send_over_swarm(to, bytes).await
            }
            None => self.send_over_swarm(to, bytes).await,
        }
    }

    /// Sends an encoded envelope over a libp2p stream (never a direct session), as
    /// signaling for direct sessions must.
    pub async fn send_over_swarm(&self, to: PeerId, bytes: Vec<u8>) -> Result<Delivery, NetError> {
        self.ask(|done| Command::Send { to, bytes, done }).await?
    }

    /// Answers an inbound envelope, by the path it came.
    pub async fn answer(&self, inbound: InboundId, delivery: Delivery) -> Result<(), NetError> {
        match inbound.0 {
            Inbound::Direct { peer, request } => {
                self.direct.reply(peer, request, delivery).await;
                Ok(())
            }
            Inbound::Swarm(_) | Inbound::Cached { .. } => self.tell(Command::Answer { inbound, delivery }).await,
        }
    }

    /// Starts a direct session to `peer`: returns the SDP offer to send it (sealed, over
    /// libp2p), or `None` when a session exists or is under way, direct sessions are
    /// off, or a recent attempt failed.
    pub async fn direct_offer(&self, peer: PeerId) -> Result<Option<String>, NetError> {
        self.direct.offer(peer).await
    }

    /// Answers `peer`'s SDP offer with the SDP to send back; `None` when this side's
    /// own concurrent offer wins or direct sessions are off.
    pub async fn direct_answer(&self, peer: PeerId, offer: String) -> Result<Option<String>, NetError> {
        self.direct.answer(peer, offer).await
    }

    /// Applies `peer`'s SDP answer to this side's offer; the session opens shortly after.
    pub async fn direct_accept(&self, peer: PeerId, answer: String) -> Result<(), NetError> {
        self.direct.accept(peer, answer).await
    }

    /// Whether a direct session to `peer` is open.
    pub fn is_direct(&self, peer: &PeerId) -> bool {
        self.direct.is_open(peer)
    }

    /// Closes the direct sessions; the libp2p node stops when the last handle goes.
    pub async fn close_direct_sessions(&self) {
        self.direct.close_all().await;
    }

    /// Dials an address and waits until the connection is up.
    pub async fn dial(&self, address: Multiaddr) -> Result<(), NetError> {
        self.ask(|done| Command::Dial { address, done }).await?
    }

    /// Tells the node where a peer can be reached (e.g. from an invite).
    pub async fn add_address(&self, peer: PeerId, address: Multiaddr) -> Result<(), NetError> {
        self.tell(Command::AddAddress { peer, address }).await
    }

    /// The addresses the node listens on now.
    pub async fn listeners(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.ask(|done| Command::Listeners { done }).await
    }

    /// The `count` peers closest to `key` in the DHT that answered (at most 20),
    /// nearest first.
    pub async fn closest_peers(&self, key: Vec<u8>, count: usize) -> Result<Vec<PeerId>, NetError> {
        let count = std::num::NonZeroUsize::new(count).unwrap_or(std::num::NonZeroUsize::MIN);
        self.ask(|done| Command::ClosestPeers { key, count, done }).await
    }

    /// Sends one request to a cache node and waits for its answer.
    pub async fn cache_request(&self, to: PeerId, request: CacheRequest) -> Result<CacheResponse, NetError> {
        self.ask(|done| Command::Cache { to, request, done }).await?
    }

    /// Sends one request of the device-link protocol and waits for the answer.
    pub async fn link_request(&self, to: PeerId, request: Vec<u8>) -> Result<Vec<u8>, NetError> {
        self.ask(|done| Command::Link { to, request, done }).await?
    }

    /// Answers an inbound link request.
    pub async fn answer_link(&self, reply: LinkReply, response: Vec<u8>) -> Result<(), NetError> {
        self.tell(Command::LinkAnswer { reply, response }).await
    }

    /// Runs `work` on this node's cache service, with the time.
    pub(crate) async fn holding<T: Send + 'static>(
        &self,
        work: impl FnOnce(Option<&mut CacheService>, u64) -> T + Send + 'static,
    ) -> Result<T, NetError> {
        self.ask(|done| {
            Command::Holding(Box::new(move |service, now| {
                let _ = done.send(work(service, now));
            }))
        })
        .await
    }

    /// Envelopes and bytes this node holds for others (zeros when it holds for no one).
    pub async fn cache_usage(&self) -> Result<(u64, u64), NetError> {
        self.holding(|service, _| service.map_or(Ok((0, 0)), |s| s.usage()))
            .await?
    }

    /// Hands the driver a command.
    async fn tell(&self, command: Command) -> Result<(), NetError> {
        self.commands.send(command).await.map_err(|_| NetError::Stopped)
    }

    /// Hands the driver a command and waits for what it sends back.
    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NetError> {
        let (done, answer) = oneshot::channel();
        self.tell(command(done)).await?;
        answer.await.map_err(|_| NetError::Stopped)
    }
}
