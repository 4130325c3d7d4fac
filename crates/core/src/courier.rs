//! The courier: carries a messenger's envelopes over the network. It runs this
//! device's libp2p node, takes what is due from the outbox (sealed as it leaves) and
//! reports what became of each envelope, hands arriving envelopes to the messenger and
//! answers them, and says when something changed. The desktop app and `cairnd` both
//! drive the messenger through it.
//!
//! Arrivals are handled on the event loop; deliveries run as one pass at a time on a
//! task of their own, so a slow or unreachable peer never holds up what comes in.
//!
//! Offline recipients: an envelope that cannot reach its device is placed with the
//! peer cache (the peers closest to the device's mailbox, which hold it until the
//! device fetches and acknowledges it); the message is then *sent, held by N peers*.
//! Envelopes the node fetches from the holders of this device's own mailbox arrive
//! like any other and are acknowledged by answering them.
//!
//! Direct sessions: when a device it knows is connected, the courier opens a WebRTC
//! session to it (the device with the lower peer id offers when a connection comes up;
//! either offers when it has something to deliver). The offer and answer are sealed in
//! the Signal session to that device and sent over libp2p. Once the session is open the
//! node sends envelopes over it; until then, or if it fails, over the libp2p stream.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_net::{peer_id_of, Delivery, Link, NetEvent, NodeConfig, NodeHandle, PeerId};
use cairn_proto::{AccountId, DeviceId, DirectSignal};
use tokio::sync::{mpsc, Notify};

use crate::{CoreError, Event, Handed, Messenger, QueuedEnvelope, Result, Route};

/// A messenger shared between the UI (or CLI) and the courier; `None` until open.
pub type SharedMessenger = Arc<Mutex<Option<Messenger>>>;

/// How often the outbox is looked at when nothing else wakes the courier.
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// Envelopes taken per pass over the outbox.
const BATCH: usize = 64;

type OnEvent = Arc<dyn Fn(Event) + Send + Sync>;

/// A running courier.
#[derive(Clone)]
pub struct Courier {
    handle: NodeHandle,
    wake: Arc<Notify>,
    /// The peers with an open connection now, and the best libp2p link to each.
    links: Arc<Mutex<HashMap<PeerId, Link>>>,
    /// An envelope for an unreachable device found no cache to take it: the next peer
    /// that connects may be one, so what waits becomes due then.
    awaiting_holders: Arc<AtomicBool>,
    /// A delivery pass is running; `again` asks it for one more.
    delivering: Arc<AtomicBool>,
    again: Arc<AtomicBool>,
    arrivals: Arc<Arrivals>,
}

/// How many envelopes arrived by each path.
#[derive(Debug, Default)]
struct Arrivals {
    direct: AtomicU64,
    stream: AtomicU64,
    cached: AtomicU64,
}

impl Courier {
    /// Starts the node for the open messenger's device and the delivery loop; must be
    /// called inside a Tokio runtime. `on_event` hears of everything that happened: what
    /// the messenger reports (messages, states, contacts, groups) and what only the
    /// network knows (presence, this device's addresses).
    pub fn start(
        messenger: SharedMessenger,
        mut config: NodeConfig,
        on_event: impl Fn(Event) + Send + Sync + 'static,
    ) -> Result<Self> {
        let seed = with(&messenger, |m| m.transport_seed()).ok_or(CoreError::NoAccount)??;
        let known = with(&messenger, |m| m.peer_addresses())
            .transpose()?
            .unwrap_or_default();
        // This account's always-on nodes hold its mail too: fetch from them as well.
        let always_on: Vec<_> = with(&messenger, |m| m.always_on_nodes())
            .transpose()?
            .unwrap_or_default()
            .iter()
            .filter_map(|a| crate::always_on_peer(a))
            .collect();
        config.cache.always_on.extend(always_on.iter().map(|(peer, _)| *peer));
        let (handle, events) = cairn_net::start(seed, config)?;
        tracing::info!(peer = %handle.peer_id(), "network node started");
        let courier = Self {
            handle,
            wake: Arc::new(Notify::new()),
            links: Arc::default(),
            awaiting_holders: Arc::default(),
            delivering: Arc::default(),
            again: Arc::default(),
            arrivals: Arc::default(),
        };
        // Where contacts' devices said they listen (from invites), remembered across restarts.
        let node = courier.handle.clone();
        tokio::spawn(async move {
            for (key, address) in known {
                if let (Ok(peer), Ok(address)) = (peer_id_of(&key), address.parse()) {
                    let _ = node.add_address(peer, address).await;
                }
            }
            for (peer, address) in always_on {
                let _ = node.add_address(peer, address).await;
            }
        });
        tokio::spawn(courier.clone().run(messenger, events, Arc::new(on_event)));
        Ok(courier)
    }

    /// Tells the node where the device that made an invite listens (from the link),
    /// and retries the outbox, where the introduction waits.
    pub async fn reach_inviter(&self, link: &str) -> Result<()> {
        let (key, addresses) = crate::invite_route(link)?;
        let peer = peer_id_of(&key)?;
        for address in addresses.iter().filter_map(|a| a.parse().ok()) {
            self.handle.add_address(peer, address).await?;
        }
        self.wake();
        Ok(())
    }

    /// Looks at the outbox now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether any of these devices (by transport key) is connected now.
    pub fn any_online(&self, transport_keys: &[[u8; 32]]) -> bool {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        transport_keys
            .iter()
            .filter_map(|k| peer_id_of(k).ok())
            .any(|peer| links.contains_key(&peer))
    }

    /// How this device reaches the best-connected of these devices now.
    pub fn route_to(&self, transport_keys: &[[u8; 32]]) -> Route {
        if self.any_direct(transport_keys) {
            return Route::Direct;
        }
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let best = transport_keys
            .iter()
            .filter_map(|k| peer_id_of(k).ok())
            .filter_map(|peer| links.get(&peer).copied())
            .max();
        match best {
            Some(Link::Direct) => Route::Connected,
            Some(Link::Relayed) => Route::Relayed,
            None => Route::Away,
        }
    }

    /// Whether a direct (WebRTC) session to any of these devices is open now.
    pub fn any_direct(&self, transport_keys: &[[u8; 32]]) -> bool {
        transport_keys
            .iter()
            .filter_map(|k| peer_id_of(k).ok())
            .any(|peer| self.handle.is_direct(&peer))
    }

    /// How many envelopes have arrived so far over direct sessions and over libp2p
    /// streams.
    pub fn arrivals(&self) -> (u64, u64) {
        (
            self.arrivals.direct.load(Ordering::SeqCst),
            self.arrivals.stream.load(Ordering::SeqCst),
        )
    }

    /// How many envelopes have arrived so far from peer caches (holders of this
    /// device's mailbox), copies from several holders included.
    pub fn cached_arrivals(&self) -> u64 {
        self.arrivals.cached.load(Ordering::SeqCst)
    }

    /// The node's handle (peer id, dialing, listeners).
    pub fn node(&self) -> &NodeHandle {
        &self.handle
    }

    async fn run(self, messenger: SharedMessenger, mut events: mpsc::Receiver<NetEvent>, on_event: OnEvent) {
        let mut retry = tokio::time::interval(RETRY_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut addresses: Vec<String> = Vec::new();
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    None => break,
                    Some(NetEvent::Listening(address)) => {
                        addresses.push(format!("{address}/p2p/{}", self.handle.peer_id()));
                        with(&messenger, |m| m.set_addresses(addresses.clone()));
                        on_event(Event::AccountChanged);
                    }
                    Some(NetEvent::ListenerGone(address)) => {
                        let gone = format!("{address}/p2p/{}", self.handle.peer_id());
                        addresses.retain(|a| *a != gone);
                        with(&messenger, |m| m.set_addresses(addresses.clone()));
                        on_event(Event::AccountChanged);
                    }
                    Some(NetEvent::Envelope { bytes, inbound, from }) => {
                        let path = if inbound.is_direct() {
                            &self.arrivals.direct
                        } else if inbound.is_cached() {
                            &self.arrivals.cached
                        } else {
                            &self.arrivals.stream
                        };
                        path.fetch_add(1, Ordering::SeqCst);
                        let delivery = match off_thread(&messenger, move |m| m.receive(&bytes)).await {
                            Some(outcome) => {
                                if let Err(e) = &outcome {
                                    tracing::debug!(%from, %e, "an envelope was not taken");
                                }
                                let answer = answer_for(&outcome);
                                for event in outcome.map(|r| r.events).unwrap_or_default() {
                                    if let Event::DirectSignal { account, device, signal } = event {
                                        tokio::spawn(self.clone().signaled(messenger.clone(), account, device, signal));
                                    }
                                }
                                answer
                            }
                            None => Delivery::Later,
                        };
                        let _ = self.handle.answer(inbound, delivery).await;
                        forward(&messenger, &on_event);
                        self.kick(&messenger, &on_event);
                    }
                    Some(NetEvent::Connected(peer)) => {
                        // What waited for this peer is worth trying at once, and what
                        // waited for a cache to hold it, if this peer may be one.
                        let for_holders = self.awaiting_holders.swap(false, Ordering::SeqCst);
                        off_thread(&messenger, move |m| {
                            retry_for_peer(m, peer);
                            if for_holders {
                                if let Err(e) = m.retry_now() {
                                    tracing::error!(%e, "could not update the outbox");
                                }
                            }
                        })
                        .await;
                        // One side offers, so both do not at once.
                        if self.handle.peer_id() < peer {
                            tokio::spawn(self.clone().open_direct(messenger.clone(), peer));
                        }
                        // Its presence was told as it was reached, just before.
                        self.kick(&messenger, &on_event);
                    }
                    Some(NetEvent::DirectOpened(peer) | NetEvent::DirectClosed(peer)) => {
                        presence_changed(&messenger, peer, &on_event)
                    }
                    Some(NetEvent::Reached { peer, link }) => {
                        self.links.lock().unwrap_or_else(|p| p.into_inner()).insert(peer, link);
                        presence_changed(&messenger, peer, &on_event);
                    }
                    Some(NetEvent::Disconnected(peer)) => {
                        self.links.lock().unwrap_or_else(|p| p.into_inner()).remove(&peer);
                        presence_changed(&messenger, peer, &on_event);
                    }
                    Some(NetEvent::LinkRequest { from, request, reply }) => {
                        tracing::info!(%from, "a device asks to be linked");
                        let asker = from.to_string();
                        let response = off_thread(&messenger, move |m| m.serve_link(&asker, &request)).await.unwrap_or_default();
                        let _ = self.handle.answer_link(reply, response).await;
                        on_event(Event::LinkChanged);
                        forward(&messenger, &on_event);
                        self.kick(&messenger, &on_event);
                    }
                    Some(NetEvent::Discovered(peer)) => {
                        // Now there is a way to it: what waits for it can go.
                        off_thread(&messenger, move |m| retry_for_peer(m, peer)).await;
                        self.kick(&messenger, &on_event);
                    }
                },
                _ = retry.tick() => self.kick(&messenger, &on_event),
                _ = self.wake.notified() => self.kick(&messenger, &on_event),
            }
        }
    }

    /// Starts a delivery pass on its own task, or asks the running one for another.
    fn kick(&self, messenger: &SharedMessenger, on_event: &OnEvent) {
        if self.delivering.swap(true, Ordering::SeqCst) {
            self.again.store(true, Ordering::SeqCst);
            return;
        }
        let (courier, messenger, on_event) = (self.clone(), messenger.clone(), on_event.clone());
        tokio::spawn(async move {
            loop {
                courier.deliver(&messenger, &on_event).await;
                if !courier.again.swap(false, Ordering::SeqCst) {
                    break;
                }
            }
            courier.delivering.store(false, Ordering::SeqCst);
        });
    }

    /// One pass over the due part of the outbox, each envelope sealed as it leaves.
    /// Taken envelopes move to the sent log, refused ones leave the queue (their
    /// message fails unless another copy carries it), the others back off. An
    /// envelope whose device cannot be reached goes to the peer cache; after one
    /// failure for a peer, its other envelopes go there without trying the device
    /// again, and if no cache takes them they wait for the next pass.
    async fn deliver(&self, messenger: &SharedMessenger, on_event: &OnEvent) {
        let batch = match off_thread(messenger, |m| m.due_envelopes(BATCH)).await {
            Some(Ok(batch)) => batch,
            Some(Err(e)) => {
                tracing::error!(%e, "cannot read the outbox");
                return;
            }
            None => return,
        };
        let mut unreachable = HashSet::new();
        // Peers a direct session was asked for in this pass (once each, not per envelope).
        let mut asked_direct = HashSet::new();
        for queued in batch {
            let (account, device) = (&queued.outgoing.account_id, queued.outgoing.device_id);
            let route = with(messenger, |m| m.transport_key_of(account, device)).and_then(|r| r.ok().flatten());
            let how = match route.and_then(|key| peer_id_of(&key).ok()) {
                // No device to send to (yet): keep it, backing off.
                None => Handed::NotNow,
                Some(peer) => {
                    self.carry(messenger, &queued, peer, &mut unreachable, &mut asked_direct)
                        .await
                }
            };
            let reported = queued.clone();
            if let Some(Err(e)) = off_thread(messenger, move |m| m.handed(&reported, how)).await {
                tracing::error!(%e, "could not update the outbox");
            }
        }
        forward(messenger, on_event);
    }

    /// Carries one envelope to the device behind `peer`, or to the peer cache when the
    /// device cannot be reached.
    async fn carry(
        &self,
        messenger: &SharedMessenger,
        queued: &QueuedEnvelope,
        peer: PeerId,
        unreachable: &mut HashSet<PeerId>,
        asked_direct: &mut HashSet<PeerId>,
    ) -> Handed {
        if !unreachable.contains(&peer)
            && !self.handle.is_direct(&peer)
            && self.links.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&peer)
            && asked_direct.insert(peer)
        {
            // This one goes over libp2p; later ones may find a direct session.
            tokio::spawn(self.clone().open_direct(messenger.clone(), peer));
        }
        let outcome = if unreachable.contains(&peer) {
            Err(cairn_net::NetError::Unreachable(peer.to_string()))
        } else {
            self.handle.send(peer, queued.outgoing.envelope.to_bytes()).await
        };
        match outcome {
            Ok(answer) => {
                if answer == Delivery::Refused {
                    tracing::warn!(%peer, "an envelope was refused for good");
                }
                Handed::from(answer)
            }
            Err(e) => {
                tracing::debug!(%peer, %e, "device unreachable; trying the peer cache");
                unreachable.insert(peer);
                let account = &queued.outgoing.account_id;
                let also = with(messenger, |m| m.always_on_of(account).unwrap_or_default()).unwrap_or_default();
                self.place(&queued.outgoing.envelope, &also).await
            }
        }
    }

    /// Leaves an envelope with the peer cache (the peers closest to its mailbox, and
    /// the recipient's always-on nodes `also`): [`Handed::ToCaches`] if any holder
    /// took it.
    async fn place(&self, envelope: &cairn_proto::Envelope, also: &[String]) -> Handed {
        let mut always_on = Vec::new();
        for (peer, address) in also.iter().filter_map(|a| crate::always_on_peer(a)) {
            let _ = self.handle.add_address(peer, address).await;
            always_on.push(peer);
        }
        match self.handle.place(envelope, &always_on).await {
            Ok(holders) if !holders.is_empty() => Handed::ToCaches(holders.len() as u32),
            Ok(_) => {
                tracing::debug!("no peer cache took the envelope yet");
                self.awaiting_holders.store(true, Ordering::SeqCst);
                Handed::NotNow
            }
            Err(e) => {
                tracing::debug!(%e, "placing with the peer cache failed");
                self.awaiting_holders.store(true, Ordering::SeqCst);
                Handed::NotNow
            }
        }
    }
}

impl Courier {
    /// Offers a direct session to the device behind `peer`, if it is one this account
    /// knows and no session is open or under way.
    async fn open_direct(self, messenger: SharedMessenger, peer: PeerId) {
        let Some((account, device)) = with(&messenger, |m| devices_behind(m, peer).into_iter().next()).flatten() else {
            return;
        };
        match self.handle.direct_offer(peer).await {
            Ok(Some(offer)) => {
                self.signal(&messenger, peer, &account, device, DirectSignal::Offer(offer))
                    .await
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(%peer, %e, "no direct session"),
        }
    }

    /// Acts on signaling from a device: answers an offer, or applies an answer. The
    /// session is made with the peer id of the device that sealed the signal.
    async fn signaled(self, messenger: SharedMessenger, account: AccountId, device: DeviceId, signal: DirectSignal) {
        let key = with(&messenger, |m| m.transport_key_of(&account, device)).and_then(|k| k.ok().flatten());
        let Some(peer) = key.and_then(|k| peer_id_of(&k).ok()) else {
            return;
        };
        let outcome = match signal {
            DirectSignal::Offer(offer) => match self.handle.direct_answer(peer, offer).await {
                Ok(Some(answer)) => {
                    self.signal(&messenger, peer, &account, device, DirectSignal::Answer(answer))
                        .await;
                    Ok(())
                }
                other => other.map(drop),
            },
            DirectSignal::Answer(answer) => self.handle.direct_accept(peer, answer).await,
        };
        if let Err(e) = outcome {
            tracing::debug!(%peer, %e, "direct session signaling failed");
        }
    }

    /// Seals a signal for one device and sends it over libp2p.
    async fn signal(
        &self,
        messenger: &SharedMessenger,
        peer: PeerId,
        account: &AccountId,
        device: DeviceId,
        signal: DirectSignal,
    ) {
        let (to, signal) = (account.to_owned(), signal);
        let sealed = off_thread(messenger, move |m| m.direct_signal(&to, device, signal)).await;
        let sent = match sealed {
            Some(Ok(out)) => self
                .handle
                .send_over_swarm(peer, out.envelope.to_bytes())
                .await
                .map_err(CoreError::from),
            Some(Err(e)) => Err(e),
            None => return,
        };
        match sent {
            Ok(Delivery::Accepted) => {}
            other => tracing::debug!(%peer, ?other, "direct session signal not taken"),
        }
    }
}

/// What a device answers the sender of an envelope it processed: taken (also a copy it
/// has already), not now (this device's own trouble, or a decision the person has
/// still to make), or refused for good. Transports in tests answer the same way.
pub fn answer_for(outcome: &Result<crate::Received>) -> Delivery {
    match outcome {
        Ok(_) | Err(CoreError::Duplicate) => Delivery::Accepted,
        Err(e) if e.is_temporary() => Delivery::Later,
        Err(_) => Delivery::Refused,
    }
}

impl From<Delivery> for Handed {
    /// What a device's answer means for the envelope in the sender's outbox.
    fn from(answer: Delivery) -> Self {
        match answer {
            Delivery::Accepted => Handed::ToDevice,
            Delivery::Refused => Handed::Refused,
            Delivery::Later => Handed::NotNow,
        }
    }
}

/// Passes on what the messenger reports happened since it was last asked.
fn forward(messenger: &SharedMessenger, on_event: &OnEvent) {
    for event in with(messenger, Messenger::take_events).unwrap_or_default() {
        on_event(event);
    }
}

/// Tells of a change in `peer`'s presence (connected, gone, a direct session opened
/// or closed) to the accounts whose devices it is.
fn presence_changed(messenger: &SharedMessenger, peer: PeerId, on_event: &OnEvent) {
    let accounts = with(messenger, |m| devices_behind(m, peer)).unwrap_or_default();
    let mut told = HashSet::new();
    for (account, _) in accounts {
        if told.insert(account.clone()) {
            on_event(Event::PresenceChanged(account));
        }
    }
}

/// Makes what is queued for the devices behind `peer` due now.
fn retry_for_peer(messenger: &mut Messenger, peer: PeerId) {
    for (account, device) in devices_behind(messenger, peer) {
        if let Err(e) = messenger.retry_now_for(&account, device) {
            tracing::error!(%e, "could not update the outbox");
        }
    }
}

/// The known devices (account, device id) whose transport key is `peer`.
fn devices_behind(messenger: &Messenger, peer: PeerId) -> Vec<(AccountId, DeviceId)> {
    let accounts = messenger.known_accounts().unwrap_or_default();
    let mut found = Vec::new();
    for account in accounts {
        for (device, key) in messenger.device_keys_of(&account).unwrap_or_default() {
            if peer_id_of(&key).is_ok_and(|p| p == peer) {
                found.push((account.clone(), device));
            }
        }
    }
    found
}

/// Runs `work` on the messenger, if it is open, on a thread for blocking work: what
/// commits to the profile (an fsync each) or seals must not stall the async threads,
/// which keep the network, and DTLS handshakes with their timers, moving.
async fn off_thread<T: Send + 'static>(
    messenger: &SharedMessenger,
    work: impl FnOnce(&mut Messenger) -> T + Send + 'static,
) -> Option<T> {
    let messenger = messenger.clone();
    tokio::task::spawn_blocking(move || with(&messenger, work))
        .await
        .ok()
        .flatten()
}

/// Runs `work` on the messenger if it is open. The lock is never held across an await.
pub(crate) fn with<T>(messenger: &SharedMessenger, work: impl FnOnce(&mut Messenger) -> T) -> Option<T> {
    let mut slot = messenger.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    slot.as_mut().map(work)
}
