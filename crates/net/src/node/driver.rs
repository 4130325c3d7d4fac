//! The task that runs a node's swarm: it carries out the handle's commands, turns
//! swarm events into [`NetEvent`]s, answers the peer cache's requests from this node's
//! cache service, batches stores into shared commits, acknowledges what holders
//! pushed, and listens through relays it learns of.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{dial_opts::DialOpts, ConnectionId, SwarmEvent};
use libp2p::{autonat, dcutr, identify, identity, kad, mdns, relay, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};

use cairn_proto::{CacheRefusal, CacheRequest, CacheResponse, Envelope, EnvelopeId, Mailbox, MAX_ACK_IDS};

use super::handle::Command;
use super::{Behaviour, BehaviourEvent, Inbound, InboundId, LinkReply, NetEvent, NodeConfig};
use crate::cache::{sign_ack, CacheService, Clock, Effect};
use crate::codec::Delivery;
use crate::NetError;

/// Most stores that share one commit.
const STORE_BATCH: usize = 64;
/// Longest a store waits for others to share its commit.
const STORE_BATCH_WAIT: Duration = Duration::from_millis(2);

/// Hands the answer to a request to whoever waits for it (nobody, if they gave up).
fn answer<T>(
    pending: &mut HashMap<OutboundRequestId, oneshot::Sender<Result<T, NetError>>>,
    request: OutboundRequestId,
    outcome: Result<T, NetError>,
) {
    if let Some(done) = pending.remove(&request) {
        let _ = done.send(outcome);
    }
}

pub(super) struct Driver {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Delivery, NetError>>>,
    inbound: HashMap<InboundId, ResponseChannel<Delivery>>,
    next_inbound: u64,
    dials: HashMap<ConnectionId, oneshot::Sender<Result<(), NetError>>>,
    /// DHT lookups under way, by the peer they look for.
    lookups: HashMap<kad::QueryId, PeerId>,
    /// The address each peer this node dialed was reached at.
    dialed: HashMap<PeerId, Multiaddr>,
    /// Relays this node listens through.
    relays: HashSet<PeerId>,
    /// Addresses through relays already offered for peers.
    circuits_offered: HashSet<Multiaddr>,
    relay_server: bool,
    /// Signs acknowledgements of envelopes fetched from holders.
    keypair: identity::Keypair,
    /// The holder side of the peer cache, when this node holds for others.
    holding: Option<CacheService>,
    clock: Clock,
    replicas: usize,
    /// Closest-peer lookups asked for by the handle.
    closest: HashMap<kad::QueryId, oneshot::Sender<Vec<PeerId>>>,
    /// Cache requests whose answer someone waits for.
    cache_pending: HashMap<OutboundRequestId, oneshot::Sender<Result<CacheResponse, NetError>>>,
    /// Link requests whose answer someone waits for.
    link_pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, NetError>>>,
    /// Inbound link requests waiting for the core's answer (ids count up with
    /// `next_inbound`).
    link_inbound: HashMap<LinkReply, ResponseChannel<Vec<u8>>>,
    /// Envelopes answered but not yet acknowledged to the holder they came from.
    acks_due: HashMap<PeerId, Vec<EnvelopeId>>,
    /// Holders this node asked for pushes to its mailbox, while connected: only they
    /// may push.
    subscribed_at: HashSet<PeerId>,
    /// This device's mailbox.
    mailbox: Mailbox,
    /// Stores waiting to share one database commit, and when they are held at the latest.
    stores_due: Vec<(PeerId, Vec<u8>, ResponseChannel<CacheResponse>)>,
    flush_stores_at: tokio::time::Instant,
    connected: Arc<tokio::sync::Notify>,
}

impl Driver {
    /// Listens through `relay` (once), at the address this node dialed it on, so peers
    /// that cannot reach this node directly can through the relay.
    fn listen_through_relay(&mut self, relay: PeerId) {
        if self.relay_server || self.relays.contains(&relay) {
            return;
        }
        let Some(circuit) = self.circuit_through(relay) else {
            return;
        };
        match self.swarm.listen_on(circuit.clone()) {
            Ok(_) => {
                tracing::info!(%circuit, "listening through a relay");
                self.relays.insert(relay);
            }
            Err(e) => tracing::warn!(%circuit, %e, "cannot listen through a relay"),
        }
    }

    /// `…/p2p/<relay>/p2p-circuit` at the address this node reached `relay` on.
    fn circuit_through(&self, relay: PeerId) -> Option<Multiaddr> {
        let address = self.dialed.get(&relay)?;
        let mut circuit: Multiaddr = address.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect();
        circuit.push(Protocol::P2p(relay));
        circuit.push(Protocol::P2pCircuit);
        Some(circuit)
    }

    /// A peer this node cannot reach directly may listen through a relay this node
    /// uses too: offers the swarm the address through each (once). The DHT cannot
    /// always say, since its lookups only report peers they could reach themselves.
    /// `Err` when nobody listens for events any more.
    fn try_through_relays(&mut self, peer: PeerId) -> Result<(), ()> {
        let mut added = false;
        for relay in self.relays.clone() {
            let Some(mut circuit) = self.circuit_through(relay) else {
                continue;
            };
            circuit.push(Protocol::P2p(peer));
            if self.circuits_offered.insert(circuit.clone()) {
                self.swarm.add_peer_address(peer, circuit);
                added = true;
            }
        }
        if added {
            self.emit(NetEvent::Discovered(peer))?;
        }
        Ok(())
    }

    pub(super) async fn run(mut self) {
        // Acknowledgements go out in batches, a moment after their envelopes were answered.
        let mut ack_tick = tokio::time::interval(Duration::from_millis(100));
        ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    None => break,
                    Some(command) => self.command(command),
                },
                _ = ack_tick.tick(), if !self.acks_due.is_empty() => self.send_acks(),
                _ = tokio::time::sleep_until(self.flush_stores_at), if !self.stores_due.is_empty() => self.flush_stores(),
                event = self.swarm.select_next_some() => {
                    if self.handle(event).is_err() {
                        break;
                    }
                }
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Send { to, bytes, done } => {
                let id = self.swarm.behaviour_mut().envelopes.send_request(&to, bytes);
                self.pending.insert(id, done);
            }
            Command::Answer {
                inbound: InboundId(Inbound::Cached { holder, id }),
                delivery,
            } => {
                // Taken, or refused for good: either way the holder may delete it.
                if delivery != Delivery::Later {
                    let due = self.acks_due.entry(holder).or_default();
                    due.push(id);
                    if due.len() >= MAX_ACK_IDS {
                        self.send_acks();
                    }
                }
            }
            Command::Answer { inbound, delivery } => {
                if let Some(channel) = self.inbound.remove(&inbound) {
                    // The peer may have gone; then there is nobody to tell.
                    let _ = self.swarm.behaviour_mut().envelopes.send_response(channel, delivery);
                }
            }
            Command::Dial { address, done } => {
                let opts = DialOpts::from(address);
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.dials.insert(id, done);
                    }
                    Err(e) => {
                        let _ = done.send(Err(NetError::Dial(e.to_string())));
                    }
                }
            }
            Command::AddAddress { peer, address } => {
                self.swarm.behaviour_mut().kad.add_address(&peer, address.clone());
                self.swarm.add_peer_address(peer, address);
            }
            Command::Listeners { done } => {
                let _ = done.send(self.swarm.listeners().cloned().collect());
            }
            Command::ClosestPeers { key, count, done } => {
                let query = self.swarm.behaviour_mut().kad.get_n_closest_peers(key, count);
                self.closest.insert(query, done);
            }
            Command::Cache { to, request, done } => {
                if matches!(request, CacheRequest::Fetch { subscribe: true, .. }) {
                    self.subscribed_at.insert(to);
                }
                let id = self.swarm.behaviour_mut().cache.send_request(&to, request);
                self.cache_pending.insert(id, done);
            }
            Command::Holding(work) => work(self.holding.as_mut(), self.clock.now()),
            Command::Link { to, request, done } => {
                let id = self.swarm.behaviour_mut().link.send_request(&to, request);
                self.link_pending.insert(id, done);
            }
            Command::LinkAnswer { reply, response } => {
                if let Some(channel) = self.link_inbound.remove(&reply) {
                    let _ = self.swarm.behaviour_mut().link.send_response(channel, response);
                }
            }
        }
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
                self.swarm
                    .behaviour_mut()
                    .cache
                    .send_request(&holder, CacheRequest::Ack(ack));
            }
        }
    }

    /// The peers in this node's routing table closest to `mailbox`.
    fn closest_known(&mut self, mailbox: &Mailbox) -> Vec<PeerId> {
        let target = kad::KBucketKey::new(mailbox.to_vec());
        self.swarm
            .behaviour_mut()
            .kad
            .get_closest_local_peers(&target)
            .take(self.replicas)
            .map(|key| *key.preimage())
            .collect()
    }

    /// Answers a request on the cache protocol.
    fn cache_request(
        &mut self,
        peer: PeerId,
        request: CacheRequest,
        channel: ResponseChannel<CacheResponse>,
    ) -> Result<(), ()> {
        let (response, effects) = match (request, self.holding.as_mut()) {
            // A holder of this device's mailbox pushes an envelope that just arrived.
            (CacheRequest::Push { envelope, .. }, _) => {
                match Envelope::from_bytes(&envelope) {
                    // Only from a holder this node subscribed at, for this node's mailbox.
                    Ok(decoded) if self.subscribed_at.contains(&peer) && decoded.mailbox == self.mailbox => {
                        let inbound = InboundId::cached(peer, decoded.id());
                        self.emit(NetEvent::Envelope {
                            from: peer,
                            bytes: envelope,
                            inbound,
                        })?;
                        (CacheResponse::Taken, Vec::new())
                    }
                    _ => (CacheResponse::Refused(CacheRefusal::Malformed), Vec::new()),
                }
            }
            // Stores wait a moment for others to share their commit.
            (CacheRequest::Store(bytes), Some(_)) => {
                if self.stores_due.is_empty() {
                    self.flush_stores_at = tokio::time::Instant::now() + STORE_BATCH_WAIT;
                }
                self.stores_due.push((peer, bytes, channel));
                if self.stores_due.len() >= STORE_BATCH {
                    self.flush_stores();
                }
                return Ok(());
            }
            (request, Some(service)) => service.handle(peer, request, self.clock.now()),
            (_, None) => (CacheResponse::Refused(CacheRefusal::NotACache), Vec::new()),
        };
        self.respond(channel, response, effects);
        Ok(())
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
        let _ = self.swarm.behaviour_mut().cache.send_response(channel, response);
        for effect in effects {
            match effect {
                Effect::Push { to, position, envelope } => {
                    self.swarm
                        .behaviour_mut()
                        .cache
                        .send_request(&to, CacheRequest::Push { position, envelope });
                }
                Effect::ForwardAck { mailbox, ack, from } => {
                    let me = *self.swarm.local_peer_id();
                    for holder in self.closest_known(&mailbox) {
                        if holder != from && holder != me {
                            self.swarm
                                .behaviour_mut()
                                .cache
                                .send_request(&holder, CacheRequest::Ack(ack.clone()));
                        }
                    }
                }
            }
        }
    }

    /// Passes an event on without ever waiting: the driver must keep serving the
    /// swarm and commands whatever the consumer does. When the queue is full the event
    /// is dropped (an envelope's request then fails and its sender retries later).
    /// `Err` when nobody listens any more.
    fn emit(&mut self, event: NetEvent) -> Result<(), ()> {
        match self.events.try_send(event) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(NetEvent::Envelope { inbound, .. })) => {
                tracing::warn!("event queue full: an inbound envelope is dropped for its sender to retry");
                self.inbound.remove(&inbound);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(event)) => {
                tracing::debug!(?event, "event queue full: dropped");
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        }
    }

    /// Handles one swarm event; `Err` when nobody listens for events any more.
    fn handle(&mut self, event: SwarmEvent<BehaviourEvent>) -> Result<(), ()> {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                // A relay is configured on an always-on node whose operator says it is
                // reachable: its listen addresses are what it offers (libp2p only
                // advertises relaying from confirmed external addresses).
                if self.relay_server && !address.iter().any(|p| p == Protocol::P2pCircuit) {
                    self.swarm.add_external_address(address.clone());
                }
                self.emit(NetEvent::Listening(address))?
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => self.emit(NetEvent::ListenerGone(address))?,
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                connection_id,
                endpoint,
                ..
            } => {
                if let ConnectedPoint::Dialer { address, .. } = endpoint {
                    let relayed = address.iter().any(|p| p == Protocol::P2pCircuit);
                    if !relayed {
                        self.dialed.insert(peer_id, address);
                    }
                }
                if let Some(done) = self.dials.remove(&connection_id) {
                    let _ = done.send(Ok(()));
                }
                if num_established.get() == 1 {
                    self.connected.notify_one();
                    self.emit(NetEvent::Connected(peer_id))?
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id, error, ..
            } => {
                if let Some(done) = self.dials.remove(&connection_id) {
                    let _ = done.send(Err(NetError::Dial(error.to_string())));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                if let Some(service) = self.holding.as_mut() {
                    service.disconnected(&peer_id);
                }
                self.subscribed_at.remove(&peer_id);
                self.emit(NetEvent::Disconnected(peer_id))?
            }
            SwarmEvent::Behaviour(BehaviourEvent::Cache(event)) => match event {
                request_response::Event::Message { peer, message, .. } => match message {
                    request_response::Message::Request { request, channel, .. } => {
                        self.cache_request(peer, request, channel)?
                    }
                    request_response::Message::Response { request_id, response } => {
                        answer(&mut self.cache_pending, request_id, Ok(response))
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
                        &mut self.cache_pending,
                        request_id,
                        Err(NetError::Unreachable(error.to_string())),
                    );
                }
                request_response::Event::InboundFailure { peer, error, .. } => {
                    tracing::debug!(%peer, %error, "inbound cache request failed");
                }
                request_response::Event::ResponseSent { .. } => {}
            },
            SwarmEvent::Behaviour(BehaviourEvent::Link(event)) => match event {
                request_response::Event::Message { peer, message, .. } => match message {
                    request_response::Message::Request { request, channel, .. } => {
                        let reply = LinkReply(self.next_inbound);
                        self.next_inbound += 1;
                        self.link_inbound.insert(reply, channel);
                        self.emit(NetEvent::LinkRequest {
                            from: peer,
                            request,
                            reply,
                        })?
                    }
                    request_response::Message::Response { request_id, response } => {
                        answer(&mut self.link_pending, request_id, Ok(response))
                    }
                },
                request_response::Event::OutboundFailure { request_id, error, .. } => answer(
                    &mut self.link_pending,
                    request_id,
                    Err(NetError::Unreachable(error.to_string())),
                ),
                request_response::Event::InboundFailure { peer, error, .. } => {
                    tracing::debug!(%peer, %error, "inbound link request failed");
                }
                request_response::Event::ResponseSent { .. } => {}
            },
            SwarmEvent::Behaviour(BehaviourEvent::Envelopes(event)) => match event {
                request_response::Event::Message { peer, message, .. } => match message {
                    request_response::Message::Request { request, channel, .. } => {
                        let inbound = InboundId(Inbound::Swarm(self.next_inbound));
                        self.next_inbound += 1;
                        self.inbound.insert(inbound, channel);
                        self.emit(NetEvent::Envelope {
                            from: peer,
                            bytes: request,
                            inbound,
                        })?;
                    }
                    request_response::Message::Response { request_id, response } => {
                        answer(&mut self.pending, request_id, Ok(response))
                    }
                },
                request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    peer,
                    ..
                } => {
                    answer(
                        &mut self.pending,
                        request_id,
                        Err(NetError::Unreachable(error.to_string())),
                    );
                    // No way to the peer: try through relays, and ask the DHT where it is
                    // (once at a time).
                    let unreachable = matches!(error, request_response::OutboundFailure::DialFailure);
                    if unreachable {
                        self.try_through_relays(peer)?;
                    }
                    if unreachable && !self.lookups.values().any(|p| *p == peer) {
                        let query = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                        self.lookups.insert(query, peer);
                    }
                }
                request_response::Event::InboundFailure { peer, error, .. } => {
                    tracing::debug!(%peer, %error, "inbound envelope failed");
                }
                request_response::Event::ResponseSent { .. } => {}
            },
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, address) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, address.clone());
                    self.swarm.add_peer_address(peer, address);
                    self.emit(NetEvent::Discovered(peer))?;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                tracing::debug!(peer = %peer_id, protocols = ?info.protocols, "identified");
                if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
                    self.listen_through_relay(peer_id);
                }
                for address in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, address);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(event)) => {
                tracing::debug!(?event, "relay client");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id, result, ..
            })) => {
                tracing::debug!(peer = %remote_peer_id, ?result, "hole punching");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. })) => {
                tracing::info!(status = ?new, "reachability");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetClosestPeers(result),
                step,
                ..
            })) => {
                let (key, peers) = match result {
                    Ok(ok) => (ok.key, ok.peers),
                    Err(kad::GetClosestPeersError::Timeout { key, peers }) => (key, peers),
                };
                let wanted = self.lookups.get(&id).copied();
                if let Some(done) = self.closest.remove(&id) {
                    // Nearest first: the answer's order is not promised.
                    let target = kad::KBucketKey::new(key.clone());
                    let mut found: Vec<PeerId> = peers.iter().map(|p| p.peer_id).collect();
                    found.sort_by_key(|p| kad::KBucketKey::from(*p).distance(&target));
                    let _ = done.send(found);
                }
                for info in peers {
                    for address in &info.addrs {
                        self.swarm.add_peer_address(info.peer_id, address.clone());
                    }
                    if Some(info.peer_id) == wanted && !info.addrs.is_empty() {
                        self.emit(NetEvent::Discovered(info.peer_id))?;
                    }
                }
                if step.last {
                    self.lookups.remove(&id);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Driver {
    /// The driver of a node built from `swarm`, taking `commands` from its handles
    /// and telling `events`.
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<NetEvent>,
        keypair: identity::Keypair,
        holding: Option<CacheService>,
        config: &NodeConfig,
        connected: Arc<tokio::sync::Notify>,
    ) -> Self {
        let transport_key = keypair
            .public()
            .try_into_ed25519()
            .map(|key| key.to_bytes())
            .unwrap_or_default();
        Self {
            swarm,
            commands,
            events,
            keypair,
            holding,
            clock: config.cache.clock.clone(),
            replicas: config.cache.replicas,
            closest: HashMap::new(),
            cache_pending: HashMap::new(),
            link_pending: HashMap::new(),
            link_inbound: HashMap::new(),
            acks_due: HashMap::new(),
            subscribed_at: HashSet::new(),
            mailbox: cairn_proto::mailbox_of(&transport_key),
            stores_due: Vec::new(),
            flush_stores_at: tokio::time::Instant::now(),
            connected,
            pending: HashMap::new(),
            inbound: HashMap::new(),
            next_inbound: 0,
            dials: HashMap::new(),
            lookups: HashMap::new(),
            dialed: HashMap::new(),
            relays: HashSet::new(),
            circuits_offered: HashSet::new(),
            relay_server: config.relay_server,
        }
    }
}
