//! The task that runs a node's swarm: it carries out the handle's commands, turns
//! swarm events into [`NetEvent`]s, passes acknowledgements on to the other holders of
//! a mailbox (through the DHT), and listens through relays it learns of. The peer cache
//! and link protocols keep their own state in their behaviours (`peer_cache`, `link`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{dial_opts::DialOpts, ConnectionId, SwarmEvent};
use libp2p::{autonat, dcutr, identify, kad, mdns, relay, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};

use cairn_proto::Mailbox;

use super::handle::Command;
use super::protocol::answer;
use super::{link, peer_cache, Behaviour, BehaviourEvent, Inbound, InboundId, Link, NetEvent, NodeConfig};
use crate::codec::Delivery;
use crate::NetError;

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
    replicas: usize,
    /// Closest-peer lookups asked for by the handle.
    closest: HashMap<kad::QueryId, oneshot::Sender<Vec<PeerId>>>,
    /// Wakes the mailbox upkeep to fetch: a first connection to a peer, or a peer new
    /// to the DHT.
    connected: Arc<tokio::sync::Notify>,
    /// Each connected peer's connections and how each goes.
    links: HashMap<PeerId, HashMap<ConnectionId, Link>>,
}

impl Driver {
    /// The best of a peer's connections now, if it has any.
    fn best_link(&self, peer: &PeerId) -> Option<Link> {
        self.links.get(peer)?.values().max().copied()
    }

    /// Reports a peer's best link if it is not `before` any more.
    fn link_changed(&mut self, peer: PeerId, before: Option<Link>) -> Result<(), ()> {
        match self.best_link(&peer) {
            Some(link) if Some(link) != before => self.emit(NetEvent::Reached { peer, link }),
            _ => Ok(()),
        }
    }

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
        if self.offer_circuits_to(peer) {
            self.emit(NetEvent::Discovered(peer))?;
        }
        Ok(())
    }

    /// Offers the swarm `peer`'s address through each relay this node uses (once);
    /// true if there was one not offered before.
    fn offer_circuits_to(&mut self, peer: PeerId) -> bool {
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
        added
    }

    pub(super) async fn run(mut self) {
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    None => break,
                    Some(command) => self.command(command),
                },
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
                if !self.swarm.is_connected(&to) {
                    // The dial tries every address at once: through a relay this node
                    // uses as well as the peer's own, which a NAT may silently drop.
                    self.offer_circuits_to(to);
                }
                let id = self.swarm.behaviour_mut().envelopes.send_request(&to, bytes);
                self.pending.insert(id, done);
            }
            Command::Answer {
                inbound: InboundId(Inbound::Cached { holder, id }),
                delivery,
            } => {
                // Taken, or refused for good: either way the holder may delete it.
                if delivery != Delivery::Later {
                    self.swarm.behaviour_mut().cache.acknowledge(holder, id);
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
            Command::Cache { to, request, done } => self.swarm.behaviour_mut().cache.request(&to, request, done),
            Command::Holding(work) => self.swarm.behaviour_mut().cache.with_holding(work),
            Command::Link { to, request, done } => self.swarm.behaviour_mut().link.request(&to, request, done),
            Command::LinkAnswer { reply, response } => self.swarm.behaviour_mut().link.answer(reply, response),
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
                let link = if endpoint.is_relayed() {
                    Link::Relayed
                } else {
                    Link::Direct
                };
                let before = self.best_link(&peer_id);
                self.links.entry(peer_id).or_default().insert(connection_id, link);
                if let ConnectedPoint::Dialer { address, .. } = endpoint {
                    let relayed = address.iter().any(|p| p == Protocol::P2pCircuit);
                    if !relayed {
                        self.dialed.insert(peer_id, address);
                    }
                }
                if let Some(done) = self.dials.remove(&connection_id) {
                    let _ = done.send(Ok(()));
                }
                // How the peer is reached is known before it is said to be connected.
                self.link_changed(peer_id, before)?;
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
                connection_id,
                num_established,
                ..
            } => {
                let before = self.best_link(&peer_id);
                if let Some(links) = self.links.get_mut(&peer_id) {
                    links.remove(&connection_id);
                }
                if num_established == 0 {
                    self.links.remove(&peer_id);
                    self.emit(NetEvent::Disconnected(peer_id))?
                } else {
                    self.link_changed(peer_id, before)?;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Cache(peer_cache::Event::Pushed {
                from,
                envelope,
                inbound,
            })) => self.emit(NetEvent::Envelope {
                from,
                bytes: envelope,
                inbound,
            })?,
            SwarmEvent::Behaviour(BehaviourEvent::Cache(peer_cache::Event::ForwardAck { mailbox, ack, from })) => {
                let me = *self.swarm.local_peer_id();
                for holder in self.closest_known(&mailbox) {
                    if holder != from && holder != me {
                        self.swarm.behaviour_mut().cache.send_ack(&holder, ack.clone());
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Link(link::Event::Request { from, request, reply })) => {
                self.emit(NetEvent::LinkRequest { from, request, reply })?
            }
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
            // A peer the DHT did not know, while it still knows fewer peers than a
            // fetch asks: a lookup made before it arrived (the mailbox fetch right after
            // the first connection, before identify told the DHT about the peer) may
            // find holders now. Once the table is full a newcomer holds nothing for
            // this device, and a flood of made-up peers must not make it fetch again
            // and again.
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated { is_new_peer: true, .. })) => {
                let known: usize = self.swarm.behaviour_mut().kad.kbuckets().map(|b| b.num_entries()).sum();
                if known <= 2 * self.replicas {
                    self.connected.notify_one()
                }
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
        config: &NodeConfig,
        connected: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            swarm,
            commands,
            events,
            replicas: config.cache.replicas,
            closest: HashMap::new(),
            connected,
            pending: HashMap::new(),
            inbound: HashMap::new(),
            next_inbound: 0,
            dials: HashMap::new(),
            lookups: HashMap::new(),
            dialed: HashMap::new(),
            relays: HashSet::new(),
            links: HashMap::new(),
            circuits_offered: HashSet::new(),
            relay_server: config.relay_server,
        }
    }
}
