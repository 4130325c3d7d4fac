//! A running node: the libp2p swarm (TCP, QUIC and in-process memory transports with
//! Noise and Yamux, identify, ping, Kademlia, mDNS, circuit relay client and optionally
//! server, DCUtR hole punching, AutoNAT, the envelope protocol and the peer cache
//! protocol) driven on a Tokio task, and the handle the rest of the app talks to it
//! through.
//!
//! Peer cache: its behaviour (`peer_cache`) answers cache requests from its
//! [`CacheService`] (when this node holds for others), sends the handle's cache
//! requests, takes pushes from holders and signs and sends the acknowledgement once an
//! envelope from a holder is answered; the driver turns pushes into
//! [`NetEvent::Envelope`]s and runs the DHT lookups.
//!
//! Relays: when a peer this node dialed says (through identify) that it relays, the
//! node also listens through it (`…/p2p/<relay>/p2p-circuit`), so peers that cannot
//! reach it directly reach it there; DCUtR then tries to turn relayed connections into
//! direct ones.
//!
//! Here: how a node starts, what it reports, and its libp2p behaviours. In `handle`:
//! the handle the rest of the app talks to a node through. In `driver`: the task that
//! runs the swarm and answers the handle. In `peer_cache` and `link`: Cairn's cache and
//! device-link protocols as behaviours of their own (`protocol`: what they share).

#[macro_use]
mod protocol;
mod driver;
mod handle;
mod link;
mod peer_cache;

use std::sync::Arc;
use std::time::Duration;

use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{behaviour::toggle::Toggle, NetworkBehaviour};
use libp2p::{autonat, dcutr, identify, identity, kad, mdns, noise, ping, relay, tcp, yamux, Multiaddr, PeerId};
use tokio::sync::mpsc;

use cairn_proto::EnvelopeId;

use crate::cache::{CacheConfig, CacheService};
use crate::codec::{EnvelopeCodec, CACHE_PROTOCOL, ENVELOPE_PROTOCOL, LINK_PROTOCOL};
use crate::direct::{Direct, DirectConfig};
use crate::NetError;

use driver::Driver;
pub use handle::NodeHandle;
pub(crate) use handle::WeakNodeHandle;

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
    /// The best libp2p link to a connected peer is now `link`: on its first
    /// connection (just before [`NetEvent::Connected`]), when a hole punch (or a dial to a reachable address) adds a direct
    /// connection to a relayed one, and when the direct one closes.
    Reached {
        /// The peer.
        peer: PeerId,
        /// How it is reached now.
        link: Link,
    },
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

/// How a libp2p connection to a peer goes; the better one is the greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Link {
    /// Through a relay's circuit: the relay sees who talks to whom and how much, not
    /// what (everything in it is end-to-end encrypted).
    Relayed,
    /// Straight to the peer: on the same network, at an address it can be reached on,
    /// or through a hole punched in both sides' NATs.
    Direct,
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

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    envelopes: request_response::Behaviour<EnvelopeCodec>,
    cache: peer_cache::Behaviour,
    link: link::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    relay_client: relay::client::Behaviour,
    relay: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    autonat: autonat::Behaviour,
}

/// Cairn's own DHT (the peer cache's placement, finding devices): a protocol name of
/// its own, so it never merges into the public IPFS DHT (`/ipfs/kad/1.0.0`) and never
/// asks a node that is not Cairn's to hold mail.
pub const CAIRN_KAD_PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/cairn/kad/1.0.0");

/// Lookups give up after 10 s (not libp2p's 60): a lookup that waits on unreachable
/// peers must not keep the next one, which may find a new address, from starting.
fn kad_config() -> kad::Config {
    let mut config = kad::Config::new(CAIRN_KAD_PROTOCOL);
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
                cache: peer_cache::Behaviour::new(
                    request_response::Behaviour::new(
                        [(CACHE_PROTOCOL, ProtocolSupport::Full)],
                        request_response::Config::default()
                            .with_request_timeout(config.request_timeout)
                            .with_max_concurrent_streams(16),
                    ),
                    key.clone(),
                    cairn_proto::mailbox_of(&transport_key),
                    holding,
                    config.cache.clock.clone(),
                ),
                link: link::Behaviour::new(request_response::Behaviour::new(
                    [(LINK_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(60))
                        .with_max_concurrent_streams(2),
                )),
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
    let mailbox = crate::mailbox::MailboxSide::new(config.cache.clone(), transport_key, connected.clone());
    let handle = NodeHandle::new(peer_id, commands, direct, mailbox);
    tokio::spawn(Driver::new(swarm, command_rx, events.clone(), &config, connected).run());
    tokio::spawn(crate::mailbox::upkeep(handle.downgrade(), events));
    Ok((handle, event_rx))
}
