//! One peer cache node under load, on loopback, in the same run:
//!
//! - `database alone`: `CacheDb::hold` on a real SQLite file, one envelope per call —
//!   the floor the node cannot beat.
//! - `node over loopback`: a client node sends `Store` requests for 1 KiB envelopes
//!   (proof of work made beforehand) to a holder node over TCP, 64 in flight; the
//!   holder decodes, checks date and work, hashes, and holds each in its database.
//! - Fetch latency: the client asks the holder for its mailbox (10 envelopes held),
//!   one request at a time (p50, p99).
//! - Memory: the process's resident set after the first and after all stores, to show
//!   it stays bounded while the database grows.
//!
//! Run: `cargo bench -p cairn-net --bench cache`. Results: docs/benchmarks.md.

use std::time::{Duration, Instant};

use cairn_net::{keypair_from_seed, start, CacheConfig, CacheLimits, DirectConfig, NetEvent, NodeConfig, NodeHandle};
use cairn_proto::{mailbox_of, CacheRequest, CacheResponse, Envelope};
use cairn_store::CacheDb;
use futures::StreamExt;

const ENVELOPE_BODY: usize = 1024;
const FIRST: usize = 20_000;
const MORE: usize = 80_000;
const IN_FLIGHT: usize = 64;
const FETCH_ROUNDS: usize = 500;
/// The holder checks work with one hash whatever the difficulty; a lower one here only
/// makes preparing 100,000 envelopes quicker.
const POW_BITS: u8 = 8;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let limits = CacheLimits::with_total(8 << 30);

    // Spread over a thousand mailboxes, as a real node sees its load.
    let envelopes: Vec<Vec<u8>> = (0..FIRST + MORE)
        .map(|n| {
            let mut mailbox = [0u8; 32];
            mailbox[..2].copy_from_slice(&((n % 1000) as u16).to_le_bytes());
            envelope(n, mailbox)
        })
        .collect();

    let floor = {
        let mut db = CacheDb::open(&dir.path().join("floor.db"), limits).unwrap();
        let began = Instant::now();
        for bytes in &envelopes[..FIRST] {
            let envelope = Envelope::from_bytes(bytes).unwrap();
            db.hold(&envelope.id(), &envelope.mailbox, envelope.expires(), bytes, now())
                .unwrap();
        }
        FIRST as f64 / began.elapsed().as_secs_f64()
    };

    let (node_rate, more_rate, rss_first, rss_all, fetch) = runtime.block_on(async {
        let (holder, _holder_events) = node(1, Some((dir.path().join("holder.db"), limits)));
        let holder_address = listening(&holder).await;
        let (client, _client_events) = node(2, None);
        client.dial(holder_address).await.unwrap();
        let to = holder.peer_id();

        let node_rate = store_all(&client, to, &envelopes[..FIRST]).await;
        let rss_first = resident_kib();
        let more_rate = store_all(&client, to, &envelopes[FIRST..]).await;
        let rss_all = resident_kib();
        assert_eq!(holder.cache_usage().await.unwrap().0, (FIRST + MORE) as u64);

        // The client's own mailbox, with ten envelopes in it.
        let key = keypair_from_seed([2; 32])
            .public()
            .try_into_ed25519()
            .unwrap()
            .to_bytes();
        for n in 0..10 {
            let request = CacheRequest::Store(envelope(1_000_000 + n, mailbox_of(&key)));
            assert!(matches!(
                client.cache_request(to, request).await.unwrap(),
                CacheResponse::Stored { .. }
            ));
        }
        let mut fetch = Vec::with_capacity(FETCH_ROUNDS);
        for _ in 0..FETCH_ROUNDS {
            let began = Instant::now();
            let answer = client
                .cache_request(
                    to,
                    CacheRequest::Fetch {
                        key,
                        after: 0,
                        subscribe: false,
                    },
                )
                .await
                .unwrap();
            fetch.push(began.elapsed());
            assert!(matches!(answer, CacheResponse::Envelopes { ref items, .. } if items.len() == 10));
        }
        (node_rate, more_rate, rss_first, rss_all, fetch)
    });
    let (p50, p99) = percentiles(fetch);
    let file_mib = std::fs::metadata(dir.path().join("holder.db")).map_or(0, |m| m.len()) >> 20;
    println!("1 KiB envelopes; {FIRST} then {MORE} more stores, {IN_FLIGHT} in flight; fetch of 10 held, {FETCH_ROUNDS} rounds");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| database alone (`CacheDb::hold`) | {floor:.0} stores/s |");
    println!(
        "| node over loopback, first {FIRST} | {node_rate:.0} stores/s ({:.2}× the database alone) |",
        node_rate / floor
    );
    println!("| node over loopback, next {MORE} | {more_rate:.0} stores/s |");
    println!("| fetch latency (10 envelopes) | p50 {p50:.2?}, p99 {p99:.2?} |");
    println!(
        "| resident memory after {FIRST} / after {} stores | {} MiB / {} MiB (holder file: {file_mib} MiB) |",
        FIRST + MORE,
        rss_first >> 10,
        rss_all >> 10
    );
}

/// An encoded 1 KiB envelope for `mailbox`, with the proof of work the holder asks.
fn envelope(n: usize, mailbox: [u8; 32]) -> Vec<u8> {
    let mut body = vec![0u8; ENVELOPE_BODY];
    body[..8].copy_from_slice(&(n as u64).to_le_bytes());
    let mut envelope = Envelope {
        mailbox,
        created: now(),
        ttl: 7 * 24 * 3600,
        pow: 0,
        body,
    };
    envelope.solve_work(POW_BITS);
    envelope.to_bytes()
}

fn node(
    seed: u8,
    store: Option<(std::path::PathBuf, CacheLimits)>,
) -> (NodeHandle, tokio::sync::mpsc::Receiver<NetEvent>) {
    let config = NodeConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        mdns: false,
        request_timeout: Duration::from_secs(30),
        direct: DirectConfig {
            enabled: false,
            ..DirectConfig::default()
        },
        cache: CacheConfig {
            store,
            pow_bits: POW_BITS,
            ..CacheConfig::default()
        },
        ..NodeConfig::default()
    };
    start([seed; 32], config).unwrap()
}

async fn listening(node: &NodeHandle) -> cairn_net::Multiaddr {
    loop {
        if let Some(address) = node.listeners().await.unwrap().into_iter().next() {
            return address.with_p2p(node.peer_id()).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stores every envelope on `to`, `IN_FLIGHT` at a time; stores per second.
async fn store_all(client: &NodeHandle, to: cairn_net::PeerId, envelopes: &[Vec<u8>]) -> f64 {
    let began = Instant::now();
    let stored = futures::stream::iter(envelopes)
        .map(|bytes| client.cache_request(to, CacheRequest::Store(bytes.clone())))
        .buffer_unordered(IN_FLIGHT)
        .filter(|answer| std::future::ready(matches!(answer, Ok(CacheResponse::Stored { new: true }))))
        .count()
        .await;
    assert_eq!(stored, envelopes.len(), "every store taken");
    envelopes.len() as f64 / began.elapsed().as_secs_f64()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// This process's resident set, KiB.
fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}
