//! Real libp2p nodes on loopback: envelopes travel over `/cairn/envelope/1`, or over a
//! direct WebRTC data channel once one is open, and the receiver's answer comes back
//! to the sender.

use std::time::Duration;

use cairn_net::{
    multiaddr, peer_id_of, start, Delivery, DirectConfig, InboundId, NetError, NetEvent, NodeConfig, NodeHandle,
};
use tokio::sync::mpsc;

fn loopback(mdns: bool) -> NodeConfig {
    NodeConfig {
        listen: vec![
            "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
            "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
        ],
        bootstrap: Vec::new(),
        mdns,
        relay_server: false,
        request_timeout: Duration::from_secs(5),
        direct: DirectConfig {
            udp_addrs: vec!["127.0.0.1:0".into()],
            request_timeout: Duration::from_secs(3),
            ..DirectConfig::default()
        },
        ..NodeConfig::default()
    }
}

async fn node(seed: u8) -> (NodeHandle, mpsc::Receiver<NetEvent>) {
    let (handle, mut events) = start([seed; 32], loopback(false)).unwrap();
    // Wait until both listeners are up.
    let mut listening = 0;
    while listening < 2 {
        if let Some(NetEvent::Listening(_)) = events.recv().await {
            listening += 1;
        }
    }
    (handle, events)
}

async fn next_envelope(events: &mut mpsc::Receiver<NetEvent>) -> (Vec<u8>, InboundId) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an envelope in time")
        {
            Some(NetEvent::Envelope { bytes, inbound, .. }) => return (bytes, inbound),
            Some(_) => continue,
            None => panic!("node stopped"),
        }
    }
}

/// The first address `node` listens on whose text contains `kind` ("/tcp/", "quic").
async fn address_of(node: &NodeHandle, kind: &str) -> cairn_net::Multiaddr {
    node.listeners()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.to_string().contains(kind))
        .unwrap()
}

/// Alice sends `bytes` to Bob, Bob answers `answer`; returns what Bob got and what
/// Alice heard back.
async fn exchange(
    alice: &NodeHandle,
    bob: &NodeHandle,
    bob_events: &mut mpsc::Receiver<NetEvent>,
    bytes: &[u8],
    answer: Delivery,
) -> (Vec<u8>, Delivery) {
    let (got, heard, _) = exchange_by(alice, bob, bob_events, bytes, answer).await;
    (got, heard)
}

/// [`exchange`], also saying whether the envelope came over a direct session.
async fn exchange_by(
    alice: &NodeHandle,
    bob: &NodeHandle,
    bob_events: &mut mpsc::Receiver<NetEvent>,
    bytes: &[u8],
    answer: Delivery,
) -> (Vec<u8>, Delivery, bool) {
    let sending = tokio::spawn({
        let (alice, to, bytes) = (alice.clone(), bob.peer_id(), bytes.to_vec());
        async move { alice.send(to, bytes).await }
    });
    let (got, inbound) = next_envelope(bob_events).await;
    bob.answer(inbound, answer).await.unwrap();
    (got, sending.await.unwrap().unwrap(), inbound.is_direct())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_envelope_crosses_tcp_and_the_receivers_answer_comes_back() {
    let (alice, _alice_events) = node(1).await;
    let (bob, mut bob_events) = node(2).await;
    alice.dial(address_of(&bob, "/tcp/").await).await.unwrap();
    let (got, heard) = exchange(
        &alice,
        &bob,
        &mut bob_events,
        b"sealed envelope bytes",
        Delivery::Accepted,
    )
    .await;
    assert_eq!(
        (got.as_slice(), heard),
        (&b"sealed envelope bytes"[..], Delivery::Accepted)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn over_quic_a_refusal_and_a_later_are_reported_to_the_sender() {
    let (alice, _alice_events) = node(3).await;
    let (bob, mut bob_events) = node(4).await;
    alice.dial(address_of(&bob, "quic").await).await.unwrap();
    let (_, heard) = exchange(&alice, &bob, &mut bob_events, &[0xff; 10], Delivery::Refused).await;
    assert_eq!(heard, Delivery::Refused);
    let (_, heard) = exchange(&alice, &bob, &mut bob_events, &[0xee; 10], Delivery::Later).await;
    assert_eq!(heard, Delivery::Later);
}

#[tokio::test(flavor = "multi_thread")]
async fn sending_to_a_peer_with_no_known_address_fails_with_a_typed_error() {
    let (alice, _events) = node(5).await;
    let stranger = cairn_net::keypair_from_seed([9; 32]).public().to_peer_id();
    assert!(matches!(
        alice.send(stranger, vec![1, 2, 3]).await,
        Err(NetError::Unreachable(_))
    ));
}

#[test]
fn the_peer_id_follows_from_the_transport_key_in_the_device_list() {
    let keypair = cairn_net::keypair_from_seed([7; 32]);
    let public = keypair.public().try_into_ed25519().unwrap().to_bytes();
    assert_eq!(peer_id_of(&public).unwrap(), keypair.public().to_peer_id());
}

/// mDNS multicasts on every interface, so outside a private network namespace this
/// would send traffic beyond this machine: `./test.sh` runs it inside one it creates
/// (with a veth pair), and it is ignored in plain `cargo test` runs.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "multicasts on every interface; run inside a private network namespace"]
async fn two_nodes_with_no_bootstrap_address_find_each_other_with_mdns_and_talk() {
    let config = || NodeConfig {
        listen: vec!["/ip4/0.0.0.0/tcp/0".parse().unwrap()],
        mdns: true,
        ..loopback(true)
    };
    let (alice, mut alice_events) = start([11; 32], config()).unwrap();
    let (bob, mut bob_events) = start([12; 32], config()).unwrap();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match alice_events.recv().await {
                Some(NetEvent::Discovered(peer)) if peer == bob.peer_id() => return,
                Some(_) => continue,
                None => panic!("node stopped"),
            }
        }
    })
    .await;
    found.expect("alice finds bob on the LAN by mDNS");
    let (got, heard) = exchange(&alice, &bob, &mut bob_events, b"found you", Delivery::Accepted).await;
    assert_eq!((got.as_slice(), heard), (&b"found you"[..], Delivery::Accepted));
}

/// Waits for an event matching `pick`.
async fn wait_for(events: &mut mpsc::Receiver<NetEvent>, pick: impl Fn(&NetEvent) -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.recv().await {
                Some(event) if pick(&event) => return,
                Some(_) => continue,
                None => panic!("node stopped"),
            }
        }
    })
    .await
    .expect("the event in time");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_peers_that_share_only_a_bootstrap_node_find_each_other_through_the_dht() {
    let (hub, _hub_events) = node(21).await;
    let hub_address = address_of(&hub, "/tcp/").await;
    let through_hub = |seed: u8| {
        let mut config = loopback(false);
        config.bootstrap = vec![hub_address.clone()];
        start([seed; 32], config).unwrap()
    };
    let (alice, mut alice_events) = through_hub(22);
    let (bob, mut bob_events) = through_hub(23);
    let hub_id = hub.peer_id();
    wait_for(
        &mut alice_events,
        |e| matches!(e, NetEvent::Connected(p) if *p == hub_id),
    )
    .await;
    wait_for(&mut bob_events, |e| matches!(e, NetEvent::Connected(p) if *p == hub_id)).await;
    // Bob takes whatever arrives.
    let (got_tx, mut got) = mpsc::unbounded_channel();
    tokio::spawn({
        let bob = bob.clone();
        async move {
            while let Some(event) = bob_events.recv().await {
                if let NetEvent::Envelope { bytes, inbound, .. } = event {
                    bob.answer(inbound, Delivery::Accepted).await.unwrap();
                    let _ = got_tx.send(bytes);
                }
            }
        }
    });
    // Alice knows Bob only by peer id. Each failed try starts a DHT lookup through the
    // hub (as the courier's retries do); once one has found Bob, the envelope goes.
    let mut delivered = false;
    for _ in 0..40 {
        if alice
            .send(bob.peer_id(), b"found through the hub".to_vec())
            .await
            .is_ok()
        {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(delivered, "the DHT lookup through the hub finds Bob");
    assert_eq!(got.recv().await.unwrap(), b"found through the hub");
    // Alice's events were listened to until here: a node stops when nobody listens.
    drop(alice_events);
}

/// Opens a direct session from Alice to Bob, passing the offer and answer by hand (the
/// courier seals them into the Signal session and sends them over libp2p).
async fn open_direct(
    alice: &NodeHandle,
    alice_events: &mut mpsc::Receiver<NetEvent>,
    bob: &NodeHandle,
    bob_events: &mut mpsc::Receiver<NetEvent>,
) {
    let offer = alice.direct_offer(bob.peer_id()).await.unwrap().expect("an offer");
    assert!(offer.contains("a=candidate"), "the offer carries its ICE candidates");
    let answer = bob
        .direct_answer(alice.peer_id(), offer)
        .await
        .unwrap()
        .expect("an answer");
    alice.direct_accept(bob.peer_id(), answer).await.unwrap();
    let (a, b) = (alice.peer_id(), bob.peer_id());
    wait_for(alice_events, |e| matches!(e, NetEvent::DirectOpened(p) if *p == b)).await;
    wait_for(bob_events, |e| matches!(e, NetEvent::DirectOpened(p) if *p == a)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn once_a_webrtc_session_is_open_envelopes_and_answers_ride_the_data_channel_both_ways() {
    let (alice, mut alice_events) = node(31).await;
    let (bob, mut bob_events) = node(32).await;
    alice.dial(address_of(&bob, "/tcp/").await).await.unwrap();
    // Before: the libp2p stream.
    let (_, heard, direct) = exchange_by(&alice, &bob, &mut bob_events, b"hello", Delivery::Accepted).await;
    assert_eq!((heard, direct), (Delivery::Accepted, false));

    open_direct(&alice, &mut alice_events, &bob, &mut bob_events).await;
    assert!(alice.is_direct(&bob.peer_id()) && bob.is_direct(&alice.peer_id()));
    for answer in [Delivery::Accepted, Delivery::Later, Delivery::Refused] {
        let (got, heard, direct) = exchange_by(&alice, &bob, &mut bob_events, b"over webrtc", answer).await;
        assert_eq!((got.as_slice(), heard, direct), (&b"over webrtc"[..], answer, true));
    }
    let (got, heard, direct) = exchange_by(&bob, &alice, &mut alice_events, &[7; 4096], Delivery::Accepted).await;
    assert_eq!((got, heard, direct), (vec![7; 4096], Delivery::Accepted, true));
    // Too big for a data channel message: the libp2p stream takes it.
    let big = vec![1; cairn_net::MAX_DIRECT_ENVELOPE + 1];
    let (got, _, direct) = exchange_by(&alice, &bob, &mut bob_events, &big, Delivery::Accepted).await;
    assert_eq!((got.len(), direct), (big.len(), false));
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_webrtc_session_goes_away_envelopes_fall_back_to_the_libp2p_stream() {
    let (alice, mut alice_events) = node(33).await;
    let (bob, mut bob_events) = node(34).await;
    alice.dial(address_of(&bob, "/tcp/").await).await.unwrap();
    open_direct(&alice, &mut alice_events, &bob, &mut bob_events).await;
    bob.close_direct_sessions().await;
    let (got, heard, direct) = exchange_by(&alice, &bob, &mut bob_events, b"still here", Delivery::Accepted).await;
    assert_eq!(
        (got.as_slice(), heard, direct),
        (&b"still here"[..], Delivery::Accepted, false)
    );
    assert!(!alice.is_direct(&bob.peer_id()));
}

#[tokio::test(flavor = "multi_thread")]
async fn when_both_sides_offer_at_once_the_lower_peer_ids_offer_wins_and_one_session_opens() {
    let (alice, mut alice_events) = node(35).await;
    let (bob, mut bob_events) = node(36).await;
    let (a, b) = (alice.peer_id(), bob.peer_id());
    let alice_offer = alice.direct_offer(b).await.unwrap().unwrap();
    let bob_offer = bob.direct_offer(a).await.unwrap().unwrap();
    let alice_answer = alice.direct_answer(b, bob_offer).await.unwrap();
    let bob_answer = bob.direct_answer(a, alice_offer).await.unwrap();
    // Exactly one side yields and answers; the other keeps its offer.
    let (winner, answer) = match (alice_answer, bob_answer) {
        (None, Some(answer)) => (&alice, answer),
        (Some(answer), None) => (&bob, answer),
        other => panic!("expected exactly one answer, got {other:?}"),
    };
    assert_eq!(winner.peer_id(), a.min(b), "the lower peer id keeps its offer");
    let loser = if winner.peer_id() == a { b } else { a };
    winner.direct_accept(loser, answer).await.unwrap();
    wait_for(&mut alice_events, |e| matches!(e, NetEvent::DirectOpened(p) if *p == b)).await;
    wait_for(&mut bob_events, |e| matches!(e, NetEvent::DirectOpened(p) if *p == a)).await;
    let (_, heard, direct) = exchange_by(&alice, &bob, &mut bob_events, b"one session", Delivery::Accepted).await;
    assert_eq!((heard, direct), (Delivery::Accepted, true));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_garbled_offer_is_a_typed_error_and_leaves_no_session() {
    let (alice, _alice_events) = node(37).await;
    let (bob, _bob_events) = node(38).await;
    let answered = bob.direct_answer(alice.peer_id(), "v=0\r\nnot an sdp".into()).await;
    assert!(matches!(answered, Err(NetError::Direct(_))), "{answered:?}");
    assert!(!bob.is_direct(&alice.peer_id()));
    // An answer nobody asked for is refused too.
    let accepted = bob.direct_accept(alice.peer_id(), "v=0".into()).await;
    assert!(matches!(accepted, Err(NetError::Direct(_))), "{accepted:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_dials_a_relay_listens_through_it_and_is_reached_there() {
    let mut relay_config = loopback(false);
    relay_config.relay_server = true;
    let (relay, _relay_events) = start([41; 32], relay_config).unwrap();
    let relay_address = loop {
        let listeners = relay.listeners().await.unwrap();
        if let Some(address) = listeners.into_iter().find(|a| a.to_string().contains("/tcp/")) {
            break address;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut bob_config = loopback(false);
    bob_config.bootstrap = vec![relay_address.clone()];
    let (bob, mut bob_events) = start([42; 32], bob_config).unwrap();
    let circuit = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match bob_events.recv().await {
                Some(NetEvent::Listening(address)) if address.to_string().contains("p2p-circuit") => return address,
                Some(_) => continue,
                None => panic!("node stopped"),
            }
        }
    })
    .await
    .expect("Bob listens through the relay");
    assert!(circuit.to_string().contains(&relay.peer_id().to_string()));

    // Alice knows Bob only by his address through the relay.
    let (alice, _alice_events) = node(43).await;
    assert_eq!(circuit.iter().last(), Some(multiaddr::Protocol::P2p(bob.peer_id())));
    alice.dial(circuit).await.unwrap();
    let (got, heard) = exchange(&alice, &bob, &mut bob_events, b"relayed", Delivery::Accepted).await;
    assert_eq!((got.as_slice(), heard), (&b"relayed"[..], Delivery::Accepted));
}

#[tokio::test(flavor = "multi_thread")]
async fn offers_started_at_the_same_moment_make_one_session_not_two() {
    let (alice, mut alice_events) = node(39).await;
    let (bob, mut bob_events) = node(40).await;
    let b = bob.peer_id();
    let (first, second) = tokio::join!(alice.direct_offer(b), alice.direct_offer(b));
    let offers: Vec<String> = [first.unwrap(), second.unwrap()].into_iter().flatten().collect();
    assert_eq!(offers.len(), 1, "one offer goes out");
    let answer = bob
        .direct_answer(alice.peer_id(), offers[0].clone())
        .await
        .unwrap()
        .unwrap();
    alice.direct_accept(b, answer).await.unwrap();
    let a = alice.peer_id();
    wait_for(&mut alice_events, |e| matches!(e, NetEvent::DirectOpened(p) if *p == b)).await;
    wait_for(&mut bob_events, |e| matches!(e, NetEvent::DirectOpened(p) if *p == a)).await;
}

/// A stock libp2p node of the public IPFS DHT (Kademlia on `/ipfs/kad/1.0.0` in server
/// mode, identify), on loopback; returns its address with its peer id.
fn stock_ipfs_dht_node() -> cairn_net::Multiaddr {
    use futures::StreamExt;
    use libp2p::{identify, kad, noise, swarm::NetworkBehaviour, tcp, yamux, StreamProtocol};

    #[derive(NetworkBehaviour)]
    struct Stock {
        kad: kad::Behaviour<kad::store::MemoryStore>,
        identify: identify::Behaviour,
    }

    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(
                peer,
                kad::store::MemoryStore::new(peer),
                kad::Config::new(StreamProtocol::new("/ipfs/kad/1.0.0")),
            );
            kad.set_mode(Some(kad::Mode::Server));
            Stock {
                kad,
                identify: identify::Behaviour::new(identify::Config::new("/ipfs/id/1.0.0".into(), key.public())),
            }
        })
        .unwrap()
        .build();
    let address: cairn_net::Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    swarm.listen_on(address).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let peer = *swarm.local_peer_id();
    tokio::spawn(async move {
        loop {
            if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                let _ = tx.send(address.with(multiaddr::Protocol::P2p(peer)));
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_of_the_public_ipfs_dht_never_joins_cairns_dht_nor_is_asked_to_hold_mail() {
    let stock = stock_ipfs_dht_node();
    let stock_peer = match stock.iter().last() {
        Some(multiaddr::Protocol::P2p(peer)) => peer,
        _ => unreachable!("the address ends with the peer id"),
    };
    let (hub, _hub_events) = node(31).await;
    let hub_address = address_of(&hub, "/tcp/").await;
    let mut config = loopback(false);
    config.bootstrap = vec![stock, hub_address];
    let (alice, mut alice_events) = start([32; 32], config).unwrap();
    let mut waiting = std::collections::HashSet::from([stock_peer, hub.peer_id()]);
    while !waiting.is_empty() {
        match tokio::time::timeout(Duration::from_secs(10), alice_events.recv()).await {
            Ok(Some(NetEvent::Connected(peer))) => {
                waiting.remove(&peer);
            }
            Ok(Some(_)) => {}
            other => panic!("not connected to {waiting:?}: {other:?}"),
        }
    }
    // Connected to both, Alice's DHT knows the Cairn node and not the stock one: the
    // two speak different DHT protocols, so no lookup of Cairn's (the peer cache's
    // holders) ever names a node that is not Cairn's.
    let mut closest = Vec::new();
    for _ in 0..40 {
        closest = alice.closest_peers(vec![7; 32], 20).await.unwrap();
        if closest.contains(&hub.peer_id()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closest.contains(&hub.peer_id()), "{closest:?}");
    assert!(!closest.contains(&stock_peer), "{closest:?}");
    drop(alice_events);
}
