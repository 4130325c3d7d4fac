//! The peer cache with real libp2p nodes on loopback, each holder with its own cache
//! database file: envelopes for an offline device are held by the peers closest to its
//! mailbox, fetched when it comes back, deleted everywhere by its signed
//! acknowledgement, swept when they expire, re-placed when holders leave, and kept
//! across a holder's restart. Forged acknowledgements and spam change nothing held.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_net::{
    keypair_from_seed, start, CacheConfig, CacheLimits, Clock, Delivery, DirectConfig, Multiaddr, NetEvent, NodeConfig,
    NodeHandle,
};
use cairn_proto::{mailbox_of, Ack, CacheRefusal, CacheRequest, CacheResponse, Envelope};
use tokio::sync::mpsc;

const START: u64 = 1_800_000_000;
const POW_BITS: u8 = 6;
const LIMITS: CacheLimits = CacheLimits {
    max_envelope: 64 * 1024,
    per_mailbox: 16 * 1024,
    total: 1 << 20,
};

/// A test's shared time, which holders read through their injected clock.
#[derive(Clone)]
struct TestClock(Arc<AtomicU64>);

impl TestClock {
    fn new() -> Self {
        Self(Arc::new(AtomicU64::new(START)))
    }
    fn clock(&self) -> Clock {
        let now = self.0.clone();
        Clock::from_fn(move || now.load(Ordering::SeqCst))
    }
    fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

struct Peer {
    node: NodeHandle,
    events: mpsc::Receiver<NetEvent>,
    address: Multiaddr,
}

/// Starts a node with `seed`; with `store`, it holds envelopes for others in that file.
async fn peer(seed: u8, store: Option<&Path>, bootstrap: &[Multiaddr], clock: &TestClock) -> Peer {
    peer_with(seed, store, LIMITS, bootstrap, clock).await
}

async fn peer_with(
    seed: u8,
    store: Option<&Path>,
    limits: CacheLimits,
    bootstrap: &[Multiaddr],
    clock: &TestClock,
) -> Peer {
    let config = NodeConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: bootstrap.to_vec(),
        mdns: false,
        request_timeout: Duration::from_secs(5),
        direct: DirectConfig {
            enabled: false,
            ..DirectConfig::default()
        },
        cache: CacheConfig {
            store: store.map(|path| (path.to_path_buf(), limits)),
            pow_bits: POW_BITS,
            maintain_every: Duration::from_millis(300),
            fetch_every: Duration::from_secs(1),
            clock: clock.clock(),
            ..CacheConfig::default()
        },
        ..NodeConfig::default()
    };
    let (node, mut events) = start([seed; 32], config).unwrap();
    let address = loop {
        match events.recv().await {
            Some(NetEvent::Listening(address)) => break address,
            Some(_) => continue,
            None => panic!("node stopped"),
        }
    };
    let address = address.with_p2p(node.peer_id()).unwrap();
    Peer { node, events, address }
}

/// A network of `count` holders (seeds 100..), each with a cache file in `dir`, all
/// bootstrapped from the first.
async fn holders(count: u8, dir: &Path, clock: &TestClock) -> Vec<Peer> {
    let mut holders: Vec<Peer> = Vec::new();
    for n in 0..count {
        let bootstrap: Vec<Multiaddr> = holders.first().map(|h| h.address.clone()).into_iter().collect();
        holders.push(peer(100 + n, Some(&cache_file(dir, 100 + n)), &bootstrap, clock).await);
    }
    holders
}

fn cache_file(dir: &Path, seed: u8) -> PathBuf {
    dir.join(format!("cache-{seed}.db"))
}

fn transport_key(seed: u8) -> [u8; 32] {
    keypair_from_seed([seed; 32])
        .public()
        .try_into_ed25519()
        .unwrap()
        .to_bytes()
}

fn envelope_for(seed: u8, n: u32, clock: &TestClock, ttl: u32) -> Envelope {
    Envelope {
        mailbox: mailbox_of(&transport_key(seed)),
        created: clock.0.load(Ordering::SeqCst),
        ttl,
        pow: 0,
        body: format!("sealed body #{n}").into_bytes(),
    }
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `node` sees at least `count` other peers in the DHT.
async fn knows_peers(node: &NodeHandle, count: usize) {
    eventually("the DHT knows enough peers", || async {
        node.closest_peers(vec![0; 32], 20).await.unwrap().len() >= count
    })
    .await;
}

async fn usage(peer: &Peer) -> (u64, u64) {
    peer.node.cache_usage().await.unwrap()
}

/// Takes envelopes that arrive from holders, answering each `Accepted` (which
/// acknowledges it), until `count` distinct ones came; returns them in arrival order.
async fn take_from_holders(peer: &mut Peer, count: usize) -> Vec<Envelope> {
    let mut got: Vec<Envelope> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < count {
        let event = tokio::time::timeout_at(deadline, peer.events.recv())
            .await
            .expect("the envelopes in time")
            .expect("node running");
        if let NetEvent::Envelope { bytes, inbound, .. } = event {
            assert!(inbound.is_cached());
            let envelope = Envelope::from_bytes(&bytes).unwrap();
            if !got.iter().any(|e| e.id() == envelope.id()) {
                got.push(envelope);
            }
            peer.node.answer(inbound, Delivery::Accepted).await.unwrap();
        }
    }
    got
}

fn bodies(envelopes: &[Envelope]) -> Vec<String> {
    envelopes
        .iter()
        .map(|e| String::from_utf8(e.body.clone()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_leaves_envelopes_for_offline_bob_and_his_ack_deletes_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let holders = holders(4, dir.path(), &clock).await;
    let alice = peer(1, None, &[holders[0].address.clone()], &clock).await;
    knows_peers(&alice.node, 4).await;

    // Bob (seed 2) is offline: Alice leaves five envelopes with his mailbox's holders.
    let sent: Vec<Envelope> = (1..=5).map(|n| envelope_for(2, n, &clock, 3600)).collect();
    for envelope in &sent {
        let held_by = alice.node.place(envelope, &[]).await.unwrap();
        assert_eq!(held_by.len(), 3, "k = 3 peers hold each envelope");
    }
    let mut total = 0;
    for holder in &holders {
        total += usage(holder).await.0;
    }
    assert_eq!(total, 15, "three copies of each of five envelopes");
    // Alice goes offline.
    drop(alice);

    let mut bob = peer(2, None, &[holders[1].address.clone()], &clock).await;
    let got = take_from_holders(&mut bob, 5).await;
    assert_eq!(bodies(&got), bodies(&sent), "every envelope, in the order sent");
    // Bob answers every copy that comes (as his messenger does, duplicates included).
    let answering = tokio::spawn(async move {
        while let Some(event) = bob.events.recv().await {
            if let NetEvent::Envelope { inbound, .. } = event {
                bob.node.answer(inbound, Delivery::Accepted).await.unwrap();
            }
        }
    });
    for holder in &holders {
        eventually("Bob's acknowledgement reached every holder", || async {
            usage(holder).await == (0, 0)
        })
        .await;
    }
    answering.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_placed_while_bob_is_online_is_pushed_to_him() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let holders = holders(3, dir.path(), &clock).await;
    let mut bob = peer(2, None, &[holders[0].address.clone()], &clock).await;
    let alice = peer(1, None, &[holders[2].address.clone()], &clock).await;
    knows_peers(&alice.node, 4).await;
    knows_peers(&bob.node, 4).await;
    // Let Bob's first fetch subscribe him at every holder.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let envelope = envelope_for(2, 1, &clock, 3600);
    assert_eq!(alice.node.place(&envelope, &[]).await.unwrap().len(), 3);
    let got = take_from_holders(&mut bob, 1).await;
    assert_eq!(bodies(&got), bodies(&[envelope]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_from_a_peer_bob_never_subscribed_at_is_refused_and_never_reaches_him() {
    let clock = TestClock::new();
    let mut bob = peer(2, None, &[], &clock).await;
    let mallory = peer(3, None, &[bob.address.clone()], &clock).await;
    let bob_id = bob.node.peer_id();
    // An envelope truly for Bob's mailbox, pushed by someone he never asked.
    let envelope = envelope_for(2, 1, &clock, 3600);
    let pushed = CacheRequest::Push {
        position: 1,
        envelope: envelope.to_bytes(),
    };
    let answer = mallory.node.cache_request(bob_id, pushed).await.unwrap();
    assert_eq!(answer, CacheResponse::Refused(CacheRefusal::Malformed));
    // The refusal is decided before anything is passed on: no envelope was reported.
    while let Ok(event) = bob.events.try_recv() {
        assert!(!matches!(event, NetEvent::Envelope { .. }), "{event:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_ack_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let holders = holders(1, dir.path(), &clock).await;
    let holder = holders[0].node.peer_id();
    let eve = peer(3, None, &[holders[0].address.clone()], &clock).await;
    let mut envelope = envelope_for(2, 1, &clock, 3600);
    envelope.solve_work(POW_BITS);
    let stored = eve
        .node
        .cache_request(holder, CacheRequest::Store(envelope.to_bytes()))
        .await
        .unwrap();
    assert_eq!(stored, CacheResponse::Stored { new: true });

    // Bob's key with a signature Bob never made.
    let forged = Ack {
        key: transport_key(2),
        ids: vec![envelope.id()],
        signature: vec![7; 64],
    };
    let answer = eve.node.cache_request(holder, CacheRequest::Ack(forged)).await.unwrap();
    assert_eq!(answer, CacheResponse::Refused(CacheRefusal::BadAck));
    // Eve fetching Bob's mailbox is refused too.
    let fetch = CacheRequest::Fetch {
        key: transport_key(2),
        after: 0,
        subscribe: false,
    };
    let answer = eve.node.cache_request(holder, fetch).await.unwrap();
    assert_eq!(answer, CacheResponse::Refused(CacheRefusal::NotYourMailbox));
    assert_eq!(usage(&holders[0]).await, (1, envelope.to_bytes().len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_expires_when_its_ttl_runs_out_on_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let holders = holders(3, dir.path(), &clock).await;
    let alice = peer(1, None, &[holders[0].address.clone()], &clock).await;
    knows_peers(&alice.node, 3).await;
    let short = envelope_for(2, 1, &clock, 60);
    let long = envelope_for(2, 2, &clock, 7 * 24 * 3600);
    assert_eq!(alice.node.place(&short, &[]).await.unwrap().len(), 3);
    assert_eq!(alice.node.place(&long, &[]).await.unwrap().len(), 3);

    clock.advance(61);
    for holder in &holders {
        eventually("the sweep dropped the expired envelope", || async {
            usage(holder).await.0 == 1
        })
        .await;
    }
    let mut bob = peer(2, None, &[holders[0].address.clone()], &clock).await;
    let got = take_from_holders(&mut bob, 1).await;
    assert_eq!(bodies(&got), bodies(&[long]));
    // Nothing else comes: the expired one is gone everywhere.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Ok(event) = bob.events.try_recv() {
        if let NetEvent::Envelope { bytes, .. } = event {
            assert_ne!(Envelope::from_bytes(&bytes).unwrap().id(), short.id());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_restarts_and_still_holds_its_envelopes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let mut holders = holders(1, dir.path(), &clock).await;
    let alice = peer(1, None, &[holders[0].address.clone()], &clock).await;
    knows_peers(&alice.node, 1).await;
    for n in 1..=3 {
        assert_eq!(
            alice
                .node
                .place(&envelope_for(2, n, &clock, 3600), &[])
                .await
                .unwrap()
                .len(),
            1
        );
    }
    drop(alice);
    let before = usage(&holders[0]).await;
    assert_eq!(before.0, 3);

    // The holder stops (the file stays) and starts again from the same file.
    let old = holders.pop().unwrap();
    drop(old);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = peer(100, Some(&cache_file(dir.path(), 100)), &[], &clock).await;
    assert_eq!(usage(&restarted).await, before);

    let mut bob = peer(2, None, std::slice::from_ref(&restarted.address), &clock).await;
    assert_eq!(take_from_holders(&mut bob, 3).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_holders_leave_the_others_re_place_and_bob_still_gets_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let mut holders = holders(6, dir.path(), &clock).await;
    let alice = peer(1, None, &[holders[0].address.clone()], &clock).await;
    knows_peers(&alice.node, 6).await;
    let envelope = envelope_for(2, 1, &clock, 3600);
    let first = alice.node.place(&envelope, &[]).await.unwrap();
    assert_eq!(first.len(), 3);
    drop(alice);

    // Two of the three holders vanish without a word.
    let mut gone = Vec::new();
    for peer_id in &first[..2] {
        let at = holders.iter().position(|h| h.node.peer_id() == *peer_id).unwrap();
        gone.push(holders.remove(at));
    }
    drop(gone);
    // The one left copies the envelope to the peers that are now closest.
    eventually("three copies again", || async {
        let mut copies = 0;
        for holder in &holders {
            copies += usage(holder).await.0;
        }
        copies >= 3
    })
    .await;
    // Now the last of the first holders leaves cleanly, handing over first.
    let at = holders.iter().position(|h| h.node.peer_id() == first[2]).unwrap();
    let last = holders.remove(at);
    last.node.hand_over().await.unwrap();
    drop(last);

    let mut bob = peer(2, None, &[holders[0].address.clone()], &clock).await;
    assert_eq!(bodies(&take_from_holders(&mut bob, 1).await), bodies(&[envelope]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spammer_over_quota_is_refused_and_nothing_held_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let limits = CacheLimits {
        max_envelope: 4096,
        per_mailbox: 3000,
        total: 6000,
    };
    let holder = peer_with(100, Some(&cache_file(dir.path(), 100)), limits, &[], &clock).await;
    let alice = peer(1, None, std::slice::from_ref(&holder.address), &clock).await;
    let spammer = peer(3, None, std::slice::from_ref(&holder.address), &clock).await;
    let to = holder.node.peer_id();
    let mut mine = envelope_for(2, 1, &clock, 3600);
    mine.solve_work(POW_BITS);
    let stored = alice.node.cache_request(to, CacheRequest::Store(mine.to_bytes())).await;
    assert_eq!(stored.unwrap(), CacheResponse::Stored { new: true });

    // Without the proof of work, nothing is taken at all.
    let lazy = envelope_for(4, 0, &clock, 3600);
    if lazy.work() < u32::from(POW_BITS) {
        let answer = spammer
            .node
            .cache_request(to, CacheRequest::Store(lazy.to_bytes()))
            .await;
        assert_eq!(
            answer.unwrap(),
            CacheResponse::Refused(CacheRefusal::InsufficientWork { required: POW_BITS })
        );
    }
    // With it, the spammer fills Bob's mailbox, then the node, and is refused.
    let mut refusals = Vec::new();
    for n in 0..40u32 {
        let mailbox_owner = if n < 20 { 2 } else { 5 + (n % 5) as u8 };
        let mut spam = envelope_for(mailbox_owner, 1000 + n, &clock, 3600);
        spam.body = vec![n as u8; 700];
        spam.solve_work(POW_BITS);
        match spammer
            .node
            .cache_request(to, CacheRequest::Store(spam.to_bytes()))
            .await
            .unwrap()
        {
            CacheResponse::Stored { .. } => {}
            CacheResponse::Refused(refusal) => refusals.push(refusal),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(refusals.contains(&CacheRefusal::MailboxFull));
    assert!(refusals.contains(&CacheRefusal::CacheFull));
    let (_, bytes) = usage(&holder).await;
    assert!(bytes <= limits.total);

    // Bob still gets Alice's envelope.
    let mut bob = peer(2, None, std::slice::from_ref(&holder.address), &clock).await;
    let got = take_from_holders(&mut bob, 1).await;
    assert_eq!(got[0].id(), mine.id(), "Alice's envelope was not dropped");
}
