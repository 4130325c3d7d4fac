//! A peer cache network simulated in one process: real Cairn nodes (libp2p swarms on
//! the in-memory transport, each with its own cache database file), k = 3.
//!
//! Senders leave envelopes for recipients who are offline; then 30 % of the nodes leave
//! (without handing anything over) and as many new ones join, in waves; then the
//! recipients come online and fetch. The report gives the delivery ratio and the
//! storage overhead (copies held per envelope).
//!
//! The suite runs a small network; the 200-node run is ignored by default:
//! `cargo test --release -p cairn-net --test simulation -- --ignored --nocapture`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use cairn_net::{
    keypair_from_seed, start, CacheConfig, CacheLimits, Delivery, DirectConfig, Multiaddr, NetEvent, NodeConfig,
    NodeHandle,
};
use cairn_proto::{mailbox_of, Envelope, EnvelopeId};
use cairn_store::CacheDb;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::sync::mpsc;

const LIMITS: CacheLimits = CacheLimits {
    max_envelope: 64 * 1024,
    per_mailbox: 4 << 20,
    total: 64 << 20,
};

/// How often holders sweep and re-place (a minute in the apps; shorter here, so the
/// run is short).
const MAINTAIN_EVERY: Duration = Duration::from_secs(5);

struct Plan {
    nodes: usize,
    recipients: usize,
    envelopes: usize,
    senders: usize,
    churn: f64,
    waves: usize,
}

struct Node {
    handle: NodeHandle,
    _events: mpsc::Receiver<NetEvent>,
    address: Multiaddr,
}

#[derive(Debug)]
struct Report {
    nodes: usize,
    left: usize,
    joined: usize,
    sent: usize,
    placed_copies: f64,
    copies_after_churn: f64,
    lost_in_churn: usize,
    delivered: usize,
    ratio: f64,
    copies_left_after_acks: u64,
    envelope_bytes: usize,
    seconds: f64,
}

fn seed(n: usize) -> [u8; 32] {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(n as u64).to_le_bytes());
    seed[31] = 0x5a;
    seed
}

fn config(port: usize, bootstrap: Vec<Multiaddr>, store: Option<&Path>) -> NodeConfig {
    NodeConfig {
        listen: vec![format!("/memory/{port}").parse().unwrap()],
        bootstrap,
        mdns: false,
        request_timeout: Duration::from_secs(5),
        direct: DirectConfig {
            enabled: false,
            ..DirectConfig::default()
        },
        cache: CacheConfig {
            store: store.map(|path| (path.to_path_buf(), LIMITS)),
            pow_bits: 4,
            maintain_every: MAINTAIN_EVERY,
            // Devices fetch when they connect; the periodic fetch is a backstop.
            fetch_every: Duration::from_secs(60),
            ..CacheConfig::default()
        },
        ..NodeConfig::default()
    }
}

async fn start_node(n: usize, dir: &Path, bootstrap: Vec<Multiaddr>) -> Node {
    let port = 10_000 + n;
    let (handle, events) = start(seed(n), config(port, bootstrap, Some(&dir.join(format!("{n}.db"))))).unwrap();
    let address = format!("/memory/{port}/p2p/{}", handle.peer_id()).parse().unwrap();
    Node {
        handle,
        _events: events,
        address,
    }
}

/// Up to three random addresses of running nodes to bootstrap from.
fn some_addresses(nodes: &HashMap<usize, Node>, rng: &mut StdRng) -> Vec<Multiaddr> {
    let all: Vec<&Node> = nodes.values().collect();
    (0..3.min(all.len()))
        .map(|_| all[rng.random_range(0..all.len())].address.clone())
        .collect()
}

async fn copies_held(nodes: &HashMap<usize, Node>) -> u64 {
    let mut copies = 0;
    for node in nodes.values() {
        copies += node.handle.cache_usage().await.unwrap().0;
    }
    copies
}

async fn simulate(plan: Plan) -> Report {
    let began = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut nodes: HashMap<usize, Node> = HashMap::new();
    for n in 0..plan.nodes {
        let bootstrap = some_addresses(&nodes, &mut rng);
        nodes.insert(n, start_node(n, dir.path(), bootstrap).await);
    }
    // Every node looks itself up once, as Kademlia's bootstrap does, to fill its table.
    let lookups = nodes.values().map(|node| {
        let handle = node.handle.clone();
        async move { handle.closest_peers(handle.peer_id().to_bytes(), 20).await.map(|_| ()) }
    });
    futures::future::join_all(lookups).await;
    eprintln!("phase: started {:?}", began.elapsed());

    // Recipients are devices that are offline now: seeds past every node's.
    let recipients: Vec<usize> = (0..plan.recipients).map(|r| 1_000_000 + r).collect();
    let key_of = |n: usize| {
        keypair_from_seed(seed(n))
            .public()
            .try_into_ed25519()
            .unwrap()
            .to_bytes()
    };
    let mut sent: HashMap<usize, HashSet<EnvelopeId>> = HashMap::new();
    let mut placed = 0usize;
    let mut envelope_bytes = 0;
    // A few senders, each with many envelopes (as people write several messages).
    let mut senders: Vec<usize> = nodes.keys().copied().collect();
    senders.sort_unstable();
    senders.truncate(plan.senders);
    for i in 0..plan.envelopes {
        let sender = &nodes[&senders[rng.random_range(0..senders.len())]];
        let recipient = recipients[i % recipients.len()];
        let mut envelope = Envelope {
            mailbox: mailbox_of(&key_of(recipient)),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            ttl: 7 * 24 * 3600,
            pow: 0,
            body: vec![(i % 251) as u8; 600],
        };
        let holders = sender.handle.place(&envelope, &[]).await.unwrap();
        placed += holders.len();
        envelope.solve_work(4);
        envelope_bytes = envelope.to_bytes().len();
        // The id recipients see is that of the envelope with its proof of work.
        sent.entry(recipient).or_default().insert(envelope.id());
    }
    let total_sent: usize = sent.values().map(HashSet::len).sum();
    let placed_copies = placed as f64 / total_sent as f64;
    eprintln!("phase: placed {:?}", began.elapsed());

    // Churn: 30 % leave (no hand-over), as many new nodes join, in waves.
    let leaving = (plan.nodes as f64 * plan.churn).round() as usize;
    let per_wave = leaving.div_ceil(plan.waves);
    let (mut left, mut joined) = (0, 0);
    let mut next = plan.nodes;
    while left < leaving {
        let wave = per_wave.min(leaving - left);
        let mut alive: Vec<usize> = nodes.keys().copied().collect();
        alive.sort_unstable();
        for _ in 0..wave {
            let gone = alive.swap_remove(rng.random_range(0..alive.len()));
            nodes.remove(&gone);
            left += 1;
        }
        for _ in 0..wave {
            let bootstrap = some_addresses(&nodes, &mut rng);
            nodes.insert(next, start_node(next, dir.path(), bootstrap).await);
            next += 1;
            joined += 1;
        }
        // Time for the holders' upkeep to re-place what the leavers held.
        tokio::time::sleep(MAINTAIN_EVERY * 3).await;
    }
    let copies_after_churn = copies_held(&nodes).await as f64 / total_sent as f64;
    eprintln!("phase: churned {:?}", began.elapsed());

    // Envelopes of which no node still running holds a copy: lost to churn.
    let mut lost_in_churn = 0;
    for (recipient, ids) in &sent {
        let mailbox = mailbox_of(&key_of(*recipient));
        let mut held = HashSet::new();
        for n in nodes.keys() {
            let db = CacheDb::open(&dir.path().join(format!("{n}.db")), LIMITS).unwrap();
            let (items, _) = db.fetch(&mailbox, 0, 0, usize::MAX).unwrap();
            held.extend(items.iter().map(|(_, bytes)| Envelope::from_bytes(bytes).unwrap().id()));
        }
        lost_in_churn += ids.iter().filter(|id| !held.contains(*id)).count();
    }

    // The recipients come online and take what waits for them, answering every copy
    // (which acknowledges it to its holder) until they have all or time runs out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut receiving = Vec::new();
    for &recipient in &recipients {
        let bootstrap = some_addresses(&nodes, &mut rng);
        let (handle, mut events) = start(seed(recipient), config(10_000 + recipient, bootstrap, None)).unwrap();
        let wanted = sent[&recipient].clone();
        receiving.push(tokio::spawn(async move {
            let mut got = HashSet::new();
            let mut settle = deadline;
            while let Ok(Some(event)) = tokio::time::timeout_at(settle, events.recv()).await {
                if let NetEvent::Envelope { bytes, inbound, .. } = event {
                    if let Ok(envelope) = Envelope::from_bytes(&bytes) {
                        if wanted.contains(&envelope.id()) {
                            got.insert(envelope.id());
                        }
                    }
                    handle.answer(inbound, Delivery::Accepted).await.unwrap();
                }
                if got.len() == wanted.len() && settle == deadline {
                    // Keep answering a little longer, so acknowledgements reach every holder.
                    settle = tokio::time::Instant::now() + Duration::from_secs(10);
                }
            }
            (got.len(), handle)
        }));
    }
    let mut delivered = 0;
    let mut handles = Vec::new();
    for task in receiving {
        let (got, handle) = task.await.unwrap();
        delivered += got;
        handles.push(handle);
    }
    eprintln!("phase: delivered {:?}", began.elapsed());
    Report {
        nodes: plan.nodes,
        left,
        joined,
        sent: total_sent,
        placed_copies,
        copies_after_churn,
        lost_in_churn,
        delivered,
        ratio: delivered as f64 / total_sent as f64,
        copies_left_after_acks: copies_held(&nodes).await,
        envelope_bytes,
        seconds: began.elapsed().as_secs_f64(),
    }
}

fn print(report: &Report) {
    println!(
        "peer cache simulation: {} nodes, {} left and {} joined; {} envelopes of {} bytes; \
         {:.2} copies placed per envelope, {:.2} held per envelope after churn, {} with no copy left; \
         delivered {} ({:.2} %); {} copies left after acknowledgements; {:.0} s",
        report.nodes,
        report.left,
        report.joined,
        report.sent,
        report.envelope_bytes,
        report.placed_copies,
        report.copies_after_churn,
        report.lost_in_churn,
        report.delivered,
        report.ratio * 100.0,
        report.copies_left_after_acks,
        report.seconds,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_with_a_third_churning_deliver_everything() {
    let report = simulate(Plan {
        nodes: 30,
        recipients: 4,
        envelopes: 30,
        senders: 3,
        churn: 0.3,
        waves: 2,
    })
    .await;
    print(&report);
    assert!(report.placed_copies >= 2.9, "{report:?}");
    assert_eq!(report.delivered, report.sent, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes minutes; run for docs/benchmarks.md"]
async fn two_hundred_nodes_with_thirty_percent_churn() {
    let report = simulate(Plan {
        nodes: 200,
        recipients: 20,
        envelopes: 1000,
        senders: 50,
        churn: 0.3,
        waves: 6,
    })
    .await;
    print(&report);
    assert!(report.ratio >= 0.999, "{report:?}");
}
