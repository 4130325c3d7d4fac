//! One peer cache node under load, on loopback, in the same run:
//!
//! - `database alone`: `CacheDb::hold_all` on a real SQLite file, one envelope per
//!   commit and 64 per commit (the node gathers the stores that arrive within 2 ms into
//!   one commit) — the floor the node cannot beat.
//! - `node over loopback`: a client node sends `Store` requests for 1 KiB envelopes
//!   (proof of work made beforehand) to a holder node over TCP, 16 in flight; the
//!   holder decodes, checks date and work, hashes, and holds each in its database.
//! - `StoreMany`: the same with 64 envelopes per request, as a holder hands over.
//! - Fetch latency: the client asks the holder for its mailbox (10 envelopes held),
//!   one request at a time (p50, p99).
//! - Memory: the process's resident set after the first and after all stores, to show
//!   it stays bounded while the database grows.
//!
//! Run: `cargo bench -p cairn-net --bench cache`. Results: docs/benchmarks.md.

use std::time::{Duration, Instant};

use cairn_net::{keypair_from_seed, start, CacheConfig, CacheLimits, DirectConfig, NetEvent, NodeConfig, NodeHandle};
use cairn_proto::{mailbox_of, CacheRequest, CacheResponse, Envelope, MAX_STORE_BATCH};
use cairn_store::{CacheDb, ToHold};
use futures::StreamExt;

const ENVELOPE_BODY: usize = 1024;
const FIRST: usize = 20_000;
const MORE: usize = 80_000;
/// As many as a holder serves at once on one connection (more are refused).
const IN_FLIGHT: usize = 16;
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

    // The database alone: one commit per envelope, and 64 envelopes per commit (as the
    // node batches the stores that arrive together).
    let hold = |name: &str, batch: usize| {
        let mut db = CacheDb::open(&dir.path().join(name), limits).unwrap();
        let decoded: Vec<Envelope> = envelopes[..FIRST]
            .iter()
            .map(|b| Envelope::from_bytes(b).unwrap())
            .collect();
        let began = Instant::now();
        for (chunk, bytes) in decoded.chunks(batch).zip(envelopes[..FIRST].chunks(batch)) {
            let items: Vec<ToHold<'_>> = chunk
                .iter()
                .zip(bytes)
                .map(|(envelope, bytes)| ToHold {
                    id: envelope.id(),
                    mailbox: envelope.mailbox,
                    expires: envelope.expires(),
                    bytes,
                })
                .collect();
            assert!(db.hold_all(&items, now()).unwrap().iter().all(Result::is_ok));
        }
        FIRST as f64 / began.elapsed().as_secs_f64()
    };
    let floor = hold("one-by-one.db", 1);
    let floor_batched = hold("batched.db", 64);

    let (node_rate, more_rate, batched_rate, rss_first, rss_all, fetch, again) = runtime.block_on(async {
        let (holder, _holder_events) = node(1, Some((dir.path().join("holder.db"), limits)));
        let holder_address = listening(&holder).await;
        let (client, _client_events) = node(2, None);
        client.dial(holder_address).await.unwrap();
        let to = holder.peer_id();

        let (node_rate, again_first) = store_all(&client, to, &envelopes[..FIRST]).await;
        let rss_first = resident_kib();
        let (more_rate, again_more) = store_all(&client, to, &envelopes[FIRST..FIRST + MORE / 2]).await;
        let batched_rate = store_batches(&client, to, &envelopes[FIRST + MORE / 2..]).await;
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
        (
            node_rate,
            more_rate,
            batched_rate,
            rss_first,
            rss_all,
            fetch,
            again_first + again_more,
        )
    });
    let (p50, p99) = percentiles(fetch);
    let file_mib = std::fs::metadata(dir.path().join("holder.db")).map_or(0, |m| m.len()) >> 20;
    println!("1 KiB envelopes; {FIRST} then {MORE} more stores, {IN_FLIGHT} in flight; fetch of 10 held, {FETCH_ROUNDS} rounds");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| database alone, one commit per envelope | {floor:.0} stores/s |");
    println!("| database alone, 64 envelopes per commit | {floor_batched:.0} stores/s |");
    println!(
        "| node over loopback, first {FIRST} | {node_rate:.0} stores/s ({:.2}× the batched database alone) |",
        node_rate / floor_batched
    );
    println!("| node over loopback, next {} | {more_rate:.0} stores/s |", MORE / 2);
    println!(
        "| node over loopback, last {} as `StoreMany` of {MAX_STORE_BATCH} | {batched_rate:.0} stores/s ({:.2}× the batched database alone) |",
        MORE / 2,
        batched_rate / floor_batched
    );
    println!("| stores sent again (connection lost under them) | {again} |");
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

/// Stores every envelope on `to`, `IN_FLIGHT` at a time; stores per second and how
/// many had to be sent again (a lost connection fails what is in flight on it, and a
/// sender tries again, as the app's courier does).
async fn store_all(client: &NodeHandle, to: cairn_net::PeerId, envelopes: &[Vec<u8>]) -> (f64, usize) {
    let taken = |answer: &Result<CacheResponse, _>| matches!(answer, Ok(CacheResponse::Stored { .. }));
    let began = Instant::now();
    let answers: Vec<_> = futures::stream::iter(envelopes)
        .map(|bytes| async move {
            (
                bytes,
                client.cache_request(to, CacheRequest::Store(bytes.clone())).await,
            )
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let mut again = 0;
    for (bytes, answer) in answers {
        if !taken(&answer) {
            again += 1;
            let retried = client.cache_request(to, CacheRequest::Store(bytes.clone())).await;
            assert!(taken(&retried), "not taken twice: {answer:?}, then {retried:?}");
        }
    }
    (envelopes.len() as f64 / began.elapsed().as_secs_f64(), again)
}

/// Stores every envelope on `to` in `StoreMany` requests of `MAX_STORE_BATCH`, four in
/// flight (as a holder hands over); stores per second.
async fn store_batches(client: &NodeHandle, to: cairn_net::PeerId, envelopes: &[Vec<u8>]) -> f64 {
    let began = Instant::now();
    let answers: Vec<_> = futures::stream::iter(envelopes.chunks(MAX_STORE_BATCH))
        .map(|chunk| client.cache_request(to, CacheRequest::StoreMany(chunk.to_vec())))
        .buffer_unordered(4)
        .collect()
        .await;
    for answer in answers {
        assert!(
            matches!(&answer, Ok(CacheResponse::StoredMany(outcomes)) if outcomes.iter().all(Option::is_none)),
            "{answer:?}"
        );
    }
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
