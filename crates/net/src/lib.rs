//! Cairn's network layer.
//!
//! Owns: the libp2p swarm of a device (TCP and QUIC with Noise and Yamux, identify,
//! ping, Kademlia, mDNS on the LAN) and Cairn's own `/cairn/envelope/1` protocol that
//! carries sealed envelopes between peers with an answer from the receiver. A
//! device's transport key is its peer id. Direct sessions between two online devices
//! run on WebRTC data channels and fall back to libp2p streams. Later: relay and hole
//! punching, the peer cache. Does not own: plaintext, user keys beyond the
//! transport key, or what envelopes mean.

mod codec;
mod direct;
mod node;

pub use codec::{Delivery, EnvelopeCodec, ENVELOPE_PROTOCOL};
pub use direct::{DirectConfig, IceServer, MAX_DIRECT_ENVELOPE};
pub use libp2p::{multiaddr, Multiaddr, PeerId};
pub use node::{keypair_from_seed, peer_id_of, start, InboundId, NetEvent, NodeConfig, NodeHandle};

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
}
