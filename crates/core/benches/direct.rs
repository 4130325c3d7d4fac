//! 1 KiB messages between two people on one machine, two ways, in the same run:
//!
//! - `raw data channel`: a bare WebRTC data channel (webrtc-rs) between Alice's and
//!   Bob's Tokio runtimes: Alice sends 1 KiB, Bob answers one byte.
//! - `cairn`: the full path over the direct session the couriers opened: `send_text`
//!   (encrypt, seal, store, queue) → the courier sends the envelope over the data
//!   channel → Bob unseals, decrypts, stores, queues a receipt and answers → Alice
//!   marks the message *sent*.
//!
//! Latency: one message at a time, from sending until the answer is back (p50, p99).
//! Throughput: a burst of messages, from the first send until the last answer.
//!
//! Run: `cargo bench -p cairn-core --bench direct`. Results: docs/benchmarks.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cairn_core::DeliveryState;
use common::{contacts, vault, wait_until, Person};
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState, RTCSessionDescription,
};

const MESSAGE: usize = 1024;
const LATENCY_ROUNDS: usize = 300;
const BURST: usize = 1000;

fn main() {
    let vault = vault();
    let (alice, bob) = contacts(&vault, true, true);
    let (alice_id, bob_id) = (alice.account_id(), bob.account_id());
    let bob_keys = alice.keys_of(&bob_id);
    let alice_keys = bob.keys_of(&alice_id);
    wait_until("the direct session is open", || {
        alice.courier.any_direct(&bob_keys) && bob.courier.any_direct(&alice_keys)
    });

    let raw = RawChannel::open(&alice, &bob);
    let raw_latency = raw.latency(&alice, LATENCY_ROUNDS);
    let raw_rate = raw.throughput(&alice, BURST);

    let (direct_before, stream_before) = bob.courier.arrivals();
    let cairn_latency = cairn_latency(&alice, &bob_id, LATENCY_ROUNDS);
    let cairn_rate = cairn_throughput(&alice, &bob_id, BURST);
    let (direct_after, stream_after) = bob.courier.arrivals();
    assert_eq!(stream_after, stream_before, "every envelope took the data channel");
    assert!(direct_after - direct_before >= (LATENCY_ROUNDS + BURST) as u64);

    let (rp50, rp99) = percentiles(raw_latency);
    let (cp50, cp99) = percentiles(cairn_latency);
    println!("1 KiB messages, {LATENCY_ROUNDS} for latency, bursts of {BURST} for throughput");
    println!("| path | p50 | p99 | throughput |");
    println!("|---|---|---|---|");
    println!(
        "| raw data channel | {} | {} | {raw_rate:.0} msg/s |",
        ms(rp50),
        ms(rp99)
    );
    println!(
        "| Cairn full path | {} | {} | {cairn_rate:.0} msg/s |",
        ms(cp50),
        ms(cp99)
    );
    println!(
        "| Cairn ÷ raw | {:.1}× | {:.1}× | {:.1}× slower |",
        cp50.as_secs_f64() / rp50.as_secs_f64(),
        cp99.as_secs_f64() / rp99.as_secs_f64(),
        raw_rate / cairn_rate
    );
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() * 99 / 100])
}

fn body(i: usize) -> String {
    let mut text = format!("message {i} ");
    text.extend(std::iter::repeat_n('x', MESSAGE - text.len()));
    text
}

/// Waits until every one of `ids` is at least *sent*, woken by the courier's changes.
fn wait_sent(alice: &Person, ids: &[cairn_proto::MessageId]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next = 0;
    while next < ids.len() {
        let state = alice.with(|m| m.message(&ids[next]).unwrap().state);
        if state != DeliveryState::Sending {
            next += 1;
            continue;
        }
        assert!(Instant::now() < deadline, "messages not sent in time");
        let _ = alice.changed.recv_timeout(Duration::from_millis(50));
    }
}

fn cairn_latency(alice: &Person, bob: &cairn_core::AccountId, rounds: usize) -> Vec<Duration> {
    (0..rounds)
        .map(|i| {
            while alice.changed.try_recv().is_ok() {}
            let started = Instant::now();
            let id = alice.with(|m| m.send_text(bob, &body(i)).unwrap().0.id);
            alice.courier.wake();
            wait_sent(alice, &[id]);
            started.elapsed()
        })
        .collect()
}

fn cairn_throughput(alice: &Person, bob: &cairn_core::AccountId, count: usize) -> f64 {
    let started = Instant::now();
    let ids: Vec<_> = (0..count)
        .map(|i| {
            let id = alice.with(|m| m.send_text(bob, &body(i)).unwrap().0.id);
            alice.courier.wake();
            id
        })
        .collect();
    wait_sent(alice, &ids);
    count as f64 / started.elapsed().as_secs_f64()
}

/// A bare data channel from Alice's runtime to Bob's; Bob answers every message with
/// one byte.
struct RawChannel {
    _pcs: (Box<dyn PeerConnection>, Box<dyn PeerConnection>),
    channel: Arc<dyn DataChannel>,
    answers: std::sync::Mutex<mpsc::UnboundedReceiver<()>>,
}

struct Handler {
    gathered: Arc<tokio::sync::Notify>,
    incoming: Option<mpsc::UnboundedSender<Arc<dyn DataChannel>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        if let Some(incoming) = &self.incoming {
            let _ = incoming.send(channel);
        }
    }
}

async fn peer_connection(
    incoming: Option<mpsc::UnboundedSender<Arc<dyn DataChannel>>>,
) -> (Box<dyn PeerConnection>, Arc<tokio::sync::Notify>) {
    let gathered = Arc::new(tokio::sync::Notify::new());
    let pc = PeerConnectionBuilder::new()
        .with_handler(Arc::new(Handler {
            gathered: gathered.clone(),
            incoming,
        }))
        .with_runtime(webrtc::runtime::default_runtime().unwrap())
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await
        .unwrap();
    (Box::new(pc), gathered)
}

impl RawChannel {
    fn open(alice: &Person, bob: &Person) -> Self {
        let (offerer, offer_gathered) = alice.runtime.block_on(peer_connection(None));
        let (incoming_tx, mut incoming) = mpsc::unbounded_channel();
        let (answerer, answer_gathered) = bob.runtime.block_on(peer_connection(Some(incoming_tx)));
        let (channel, offer) = alice.runtime.block_on(async {
            let channel = offerer.create_data_channel("raw", None).await.unwrap();
            let offer = offerer.create_offer(None).await.unwrap();
            offerer.set_local_description(offer).await.unwrap();
            offer_gathered.notified().await;
            (channel, offerer.local_description().await.unwrap().sdp)
        });
        let answer = bob.runtime.block_on(async {
            answerer
                .set_remote_description(RTCSessionDescription::offer(offer).unwrap())
                .await
                .unwrap();
            let answer = answerer.create_answer(None).await.unwrap();
            answerer.set_local_description(answer).await.unwrap();
            answer_gathered.notified().await;
            answerer.local_description().await.unwrap().sdp
        });
        let (answers_tx, answers) = mpsc::unbounded_channel();
        alice.runtime.block_on(async {
            offerer
                .set_remote_description(RTCSessionDescription::answer(answer).unwrap())
                .await
                .unwrap();
        });
        // Alice's side: every message Bob sends back is one answer.
        alice.runtime.spawn({
            let channel = channel.clone();
            async move {
                while let Some(event) = channel.poll().await {
                    if let DataChannelEvent::OnMessage(_) = event {
                        let _ = answers_tx.send(());
                    }
                }
            }
        });
        // Bob's side: answer each message with one byte.
        let bob_channel = bob.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), incoming.recv())
                .await
                .expect("the raw channel opens")
                .unwrap()
        });
        bob.runtime.spawn(async move {
            while let Some(event) = bob_channel.poll().await {
                if let DataChannelEvent::OnMessage(_) = event {
                    let _ = bob_channel.send(BytesMut::from(&[1u8][..])).await;
                }
            }
        });
        Self {
            _pcs: (offerer, answerer),
            channel,
            answers: std::sync::Mutex::new(answers),
        }
    }

    fn latency(&self, alice: &Person, rounds: usize) -> Vec<Duration> {
        let mut answers = self.answers.lock().unwrap();
        alice.runtime.block_on(async {
            let mut samples = Vec::with_capacity(rounds);
            for i in 0..rounds {
                let started = Instant::now();
                self.channel.send(BytesMut::from(body(i).as_bytes())).await.unwrap();
                answers.recv().await.unwrap();
                samples.push(started.elapsed());
            }
            samples
        })
    }

    fn throughput(&self, alice: &Person, count: usize) -> f64 {
        let mut answers = self.answers.lock().unwrap();
        alice.runtime.block_on(async {
            let started = Instant::now();
            for i in 0..count {
                self.channel.send(BytesMut::from(body(i).as_bytes())).await.unwrap();
            }
            for _ in 0..count {
                answers.recv().await.unwrap();
            }
            count as f64 / started.elapsed().as_secs_f64()
        })
    }
}
