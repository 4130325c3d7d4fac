//! A running node: the libp2p swarm (TCP, QUIC and in-process memory transports with
//! Noise and Yamux, identify, ping, Kademlia, mDNS, circuit relay client and optionally
//! server, DCUtR hole punching, AutoNAT, the envelope protocol and the peer cache
//! protocol) driven on a Tokio task, and the handle the rest of the app talks to it
//! through.
//!
//! Peer cache: the driver answers cache requests from its [`CacheService`] (when this
//! node holds for others), runs DHT lookups and cache requests for the handle, turns
//! envelopes pushed by holders into [`NetEvent::Envelope`]s, and signs and sends the
//! acknowledgement once an envelope from a holder is answered.
//!
//! Relays: when a peer this node dialed says (through identify) that it relays, the
//! node also listens through it (`…/p2p/<relay>/p2p-circuit`), so peers that cannot
//! reach it directly reach it there; DCUtR then tries to turn relayed connections into
//! direct ones.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{behaviour::toggle::Toggle, dial_opts::DialOpts, ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{autonat, dcutr, identify, identity, kad, mdns, noise, ping, relay, tcp, yamux, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};

use cairn_proto::{CacheRefusal, CacheRequest, CacheResponse, Envelope, EnvelopeId, Mailbox, MAX_ACK_IDS};

use crate::cache::{sign_ack, CacheConfig, CacheService, Clock, Effect};
use crate::codec::{CacheCodec, Delivery, EnvelopeCodec, LinkCodec, CACHE_PROTOCOL, ENVELOPE_PROTOCOL, LINK_PROTOCOL};
use crate::direct::{Direct, DirectConfig};
use crate::NetError;

/// How a node starts.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Addresses to listen on (`/ip4/0.0.0.0/udp/0/quic-v1`, `/ip4/127.0.0.1/tcp/0`, …).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start (bootstrap nodes, addresses from invites).
    pub bootstrap: Vec<Multiaddr>,
    /// Find peers on the local network with mDNS.
    pub mdns: bool,
    /// Relay connections for other peers (always-on nodes such as `cairnd node`).
    pub relay_server: bool,
    /// How long a request may wait for its answer.
    pub request_timeout: Duration,
    /// Direct WebRTC sessions.
    pub direct: DirectConfig,
    /// The peer cache: holding for others, placing and fetching this device's envelopes.
    pub cache: CacheConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1".parse().expect("valid multiaddr"),
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr"),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            relay_server: false,
            request_timeout: Duration::from_secs(20),
            direct: DirectConfig::default(),
            cache: CacheConfig::default(),
        }
    }
}

/// Something the node saw.
#[derive(Debug)]
pub enum NetEvent {
    /// The node listens on a new address.
    Listening(Multiaddr),
    /// The node no longer listens on this address.
    ListenerGone(Multiaddr),
    /// An envelope arrived (over libp2p, a direct session, or from a holder of this
    /// device's mailbox); answer it with [`NodeHandle::answer`] once it is stored.
    Envelope {
        /// The sending peer (a device, or a cache node holding it).
        from: PeerId,
        /// The encoded envelope.
        bytes: Vec<u8>,
        /// What to pass to [`NodeHandle::answer`].
        inbound: InboundId,
    },
    /// A peer's addresses were found (on the local network, or through the DHT).
    Discovered(PeerId),
    /// A connection to a peer is up.
    Connected(PeerId),
    /// The last connection to a peer closed.
    Disconnected(PeerId),
    /// A direct (WebRTC) session to a peer opened: envelopes to it take that path now.
    DirectOpened(PeerId),
    /// The direct session to a peer closed.
    DirectClosed(PeerId),
    /// A new device asks to be linked (`/cairn/link/1`); answer with
    /// [`NodeHandle::answer_link`].
    LinkRequest {
        /// The asking peer.
        from: PeerId,
        /// The encoded request.
        request: Vec<u8>,
        /// What to pass to [`NodeHandle::answer_link`].
        reply: LinkReply,
    },
}

/// Identifies an inbound link request until it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkReply(u64);

/// Identifies an inbound envelope until it is answered, and the path it came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InboundId(Inbound);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Inbound {
    Swarm(u64),
    Direct { peer: PeerId, request: u64 },
    Cached { holder: PeerId, id: EnvelopeId },
}

impl InboundId {
    pub(crate) fn direct(peer: PeerId, request: u64) -> Self {
        Self(Inbound::Direct { peer, request })
    }

    pub(crate) fn cached(holder: PeerId, id: EnvelopeId) -> Self {
        Self(Inbound::Cached { holder, id })
    }

    /// Whether the envelope came over a direct WebRTC session (not a libp2p stream).
    pub fn is_direct(&self) -> bool {
        matches!(self.0, Inbound::Direct { .. })
    }

    /// Whether the envelope came from a peer cache holding it for this device.
    pub fn is_cached(&self) -> bool {
        matches!(self.0, Inbound::Cached { .. })
    }
}

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

/// Work run on the driver's cache service, given the time.
type HoldingWork = Box<dyn FnOnce(Option<&mut CacheService>, u64) + Send>;

enum Command {
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
    pub(crate) cache: Arc<CacheConfig>,
    /// This device's transport public key (its mailbox derives from it).
    pub(crate) transport_key: [u8; 32],
    /// Poked when a peer connects: the mailbox is worth fetching then.
    pub(crate) connected: Arc<tokio::sync::Notify>,
    /// Holders found lately for mailboxes, so a burst of envelopes needs one lookup.
    pub(crate) recent_holders: Arc<crate::mailbox::RecentHolders>,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    envelopes: request_response::Behaviour<EnvelopeCodec>,
    cache: request_response::Behaviour<CacheCodec>,
    link: request_response::Behaviour<LinkCodec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    relay_client: relay::client::Behaviour,
    relay: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    autonat: autonat::Behaviour,
}

/// Lookups give up after 10 s (not libp2p's 60): a lookup that waits on unreachable
/// peers must not keep the next one, which may find a new address, from starting.
fn kad_config() -> kad::Config {
    let mut config = kad::Config::new(kad::PROTOCOL_NAME);
    config.set_query_timeout(Duration::from_secs(10));
    config
}

/// What one relayed circuit may carry: envelopes, not only introductions (libp2p's
/// defaults, 128 KiB and 2 minutes, are meant for hole-punching handshakes).
fn relay_config() -> relay::Config {
    relay::Config {
        max_circuit_duration: Duration::from_secs(60 * 60),
        max_circuit_bytes: 64 << 20,
        ..relay::Config::default()
    }
}

/// The libp2p identity of a device, from its 32-byte ed25519 transport seed.
pub fn keypair_from_seed(seed: [u8; 32]) -> identity::Keypair {
    identity::Keypair::ed25519_from_bytes(seed).expect("any 32 bytes are an ed25519 secret key")
}

/// The peer id of a device, from its ed25519 transport public key (as device lists carry it).
pub fn peer_id_of(transport_key: &[u8; 32]) -> Result<PeerId, NetError> {
    let key = identity::ed25519::PublicKey::try_from_bytes(transport_key).map_err(|_| NetError::InvalidKey)?;
    Ok(identity::PublicKey::from(key).to_peer_id())
}

/// Starts a node with the device's transport seed; returns its handle and events.
pub fn start(seed: [u8; 32], config: NodeConfig) -> Result<(NodeHandle, mpsc::Receiver<NetEvent>), NetError> {
    let keypair = keypair_from_seed(seed);
    let peer_id = keypair.public().to_peer_id();
    let transport_key = keypair
        .public()
        .try_into_ed25519()
        .map_err(|_| NetError::InvalidKey)?
        .to_bytes();
    let transport = |e: &dyn std::fmt::Display| NetError::Transport(e.to_string());
    let holding = match &config.cache.store {
        Some((path, limits)) => Some(CacheService::open(path, *limits, config.cache.pow_bits)?),
        None => None,
    };
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .map_err(|e| transport(&e))?
        .with_quic()
        // `/memory/N` addresses: many nodes in one process (simulations, tests).
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            use libp2p::core::{transport::MemoryTransport, upgrade::Version, Transport};
            Ok(MemoryTransport::default()
                .upgrade(Version::V1)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default()))
        })
        .map_err(|e| transport(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| transport(&e))?
        .with_behaviour(|key, relay_client| {
            let peer_id = key.public().to_peer_id();
            let mdns = if config.mdns {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)?)
            } else {
                None
            };
            Ok(Behaviour {
                envelopes: request_response::Behaviour::new(
                    [(ENVELOPE_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(config.request_timeout)
                        // Bounds what one connection can make us buffer at once.
                        .with_max_concurrent_streams(16),
                ),
                cache: request_response::Behaviour::new(
                    [(CACHE_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(config.request_timeout)
                        .with_max_concurrent_streams(16),
                ),
                link: request_response::Behaviour::new(
                    [(LINK_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(60))
                        .with_max_concurrent_streams(2),
                ),
                // Pushing new listen addresses tells peers (and so the DHT) about addresses
                // through relays, which come up after the first exchange.
                identify: identify::Behaviour::new(
                    identify::Config::new("/cairn/id/1".into(), key.public()).with_push_listen_addr_updates(true),
                ),
                ping: ping::Behaviour::default(),
                kad: kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config()),
                mdns: mdns.into(),
                relay_client,
                relay: config
                    .relay_server
                    .then(|| relay::Behaviour::new(peer_id, relay_config()))
                    .into(),
                dcutr: dcutr::Behaviour::new(peer_id),
                autonat: autonat::Behaviour::new(peer_id, autonat::Config::default()),
            })
        })
        .map_err(|e| transport(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    // Every node answers DHT queries: peers find each other through any node they share.
    swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
    for address in &config.listen {
        swarm.listen_on(address.clone()).map_err(|e| transport(&e))?;
    }
    for address in &config.bootstrap {
        if let Err(e) = swarm.dial(address.clone()) {
            tracing::warn!(%address, %e, "bootstrap dial failed");
        }
    }
    let (commands, command_rx) = mpsc::channel(256);
    let (events, event_rx) = mpsc::channel(256);
    let direct = Direct::new(peer_id, config.direct.clone(), events.clone())?;
    let connected = Arc::new(tokio::sync::Notify::new());
    let handle = NodeHandle {
        peer_id,
        commands,
        direct,
        cache: Arc::new(config.cache.clone()),
        transport_key,
        connected: connected.clone(),
        recent_holders: Arc::default(),
    };
    tokio::spawn(
        Driver {
            swarm,
            commands: command_rx,
            events: events.clone(),
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
        .run(),
    );
    tokio::spawn(crate::mailbox::upkeep(handle.downgrade(), events));
    Ok((handle, event_rx))
}

/// A [`NodeHandle`] that does not keep the node running.
pub(crate) struct WeakNodeHandle {
    peer_id: PeerId,
    commands: mpsc::WeakSender<Command>,
    direct: Arc<Direct>,
    cache: Arc<CacheConfig>,
    transport_key: [u8; 32],
    connected: Arc<tokio::sync::Notify>,
    recent_holders: Arc<crate::mailbox::RecentHolders>,
}

impl WeakNodeHandle {
    /// The handle, while the node runs.
    pub(crate) fn upgrade(&self) -> Option<NodeHandle> {
        Some(NodeHandle {
            peer_id: self.peer_id,
            commands: self.commands.upgrade()?,
            direct: self.direct.clone(),
            cache: self.cache.clone(),
            transport_key: self.transport_key,
            connected: self.connected.clone(),
            recent_holders: self.recent_holders.clone(),
        })
    }
}

impl NodeHandle {
    fn downgrade(&self) -> WeakNodeHandle {
        WeakNodeHandle {
            peer_id: self.peer_id,
            commands: self.commands.downgrade(),
            direct: self.direct.clone(),
            cache: self.cache.clone(),
            transport_key: self.transport_key,
            connected: self.connected.clone(),
            recent_holders: self.recent_holders.clone(),
        }
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

struct Driver {
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

    async fn run(mut self) {
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
