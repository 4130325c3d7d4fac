//! Cairn's network layer.
//!
//! Owns: the libp2p swarm of a device (TCP, QUIC and in-process memory transports with
//! Noise and Yamux, identify, ping, Kademlia, mDNS on the LAN, relay, hole punching)
//! and Cairn's own protocols: `/cairn/envelope/1` carries sealed envelopes between
//! peers with an answer from the receiver, and `/cairn/cache/1` is the peer cache —
//! envelopes for offline devices held by the peers closest to their mailbox, fetched
//! and acknowledged (with a signature only the mailbox's device can make) when the
//! device returns, swept when they expire, and handed over when holders change. A
//! device's transport key is its peer id. Direct sessions between two online devices
//! run on WebRTC data channels and fall back to libp2p streams. Does not own:
//! plaintext, user keys beyond the transport key, or what envelopes mean; the cache's
//! database itself is the store crate's.

mod cache;
mod codec;
mod direct;
mod mailbox;
mod node;

pub use cache::{verify_ack, CacheConfig, Clock, ManualClock, DEFAULT_POW_BITS};
pub use cairn_store::CacheLimits;
pub use codec::{CacheCodec, Delivery, EnvelopeCodec, LinkCodec, CACHE_PROTOCOL, ENVELOPE_PROTOCOL, LINK_PROTOCOL};
pub use direct::{DirectConfig, IceServer, MAX_DIRECT_ENVELOPE};
pub use libp2p::{multiaddr, Multiaddr, PeerId};
pub use mailbox::mailbox_of_peer;
pub use node::{keypair_from_seed, peer_id_of, start, InboundId, Link, LinkReply, NetEvent, NodeConfig, NodeHandle};

/// Everything that can go wrong in the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The transport could not be set up (listen address, QUIC, …).
    #[error("transport: {0}")]
    Transport(String),
    /// A dial failed.
    #[error("dial failed: {0}")]
    Dial(String),
    /// The peer could not be reached, or did not answer in time.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// A transport key that is not an ed25519 public key.
    #[error("not an ed25519 transport key")]
    InvalidKey,
    /// A direct (WebRTC) session could not be made or used.
    #[error("direct session: {0}")]
    Direct(String),
    /// The node has stopped.
    #[error("the network node has stopped")]
    Stopped,
    /// The peer cache's database failed.
    #[error("peer cache: {0}")]
    Cache(#[from] cairn_store::StoreError),
}
