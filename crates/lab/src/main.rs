//! A stand-in for the public libp2p network in the NAT lab: one stock rust-libp2p node
//! with what the IPFS network's bootstrap and relay nodes offer — Kademlia on
//! `/ipfs/kad/1.0.0` in server mode, identify, an AutoNAT server and a circuit relay v2
//! server with libp2p's default limits (2 minutes and 128 KiB per circuit, as
//! go-libp2p's). Nothing of Cairn's is in it, so what works against it works against
//! nodes Cairn does not run.
//!
//! Prints `peer <id>` and then `listening <address>` for each address, and runs until
//! killed.

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{autonat, identify, identity, kad, noise, ping, relay, tcp, yamux, Multiaddr, StreamProtocol};

/// The options.
#[derive(Parser)]
struct Options {
    /// Addresses to listen on; they are also announced as this node's public addresses.
    #[arg(long, value_delimiter = ',', required = true)]
    listen: Vec<Multiaddr>,
    /// A byte to derive the node's key from, so a test knows its peer id in advance.
    #[arg(long, default_value_t = 1)]
    seed: u8,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
    autonat: autonat::Behaviour,
    relay: relay::Behaviour,
    ping: ping::Behaviour,
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = Options::parse();
    let key = identity::Keypair::ed25519_from_bytes([options.seed; 32])?;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
        .with_quic()
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kad::Config::new(StreamProtocol::new("/ipfs/kad/1.0.0")),
            );
            kad.set_mode(Some(kad::Mode::Server));
            Behaviour {
                kad,
                identify: identify::Behaviour::new(identify::Config::new("/ipfs/id/1.0.0".into(), key.public())),
                // The lab's "public" addresses are private ones inside its namespaces.
                autonat: autonat::Behaviour::new(
                    peer_id,
                    autonat::Config {
                        only_global_ips: false,
                        ..Default::default()
                    },
                ),
                relay: relay::Behaviour::new(peer_id, relay::Config::default()),
                ping: ping::Behaviour::default(),
            }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    for address in &options.listen {
        swarm.listen_on(address.clone())?;
        swarm.add_external_address(address.clone());
    }
    println!("peer {}", swarm.local_peer_id());
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            println!("listening {address}");
        }
    }
}
