//! The device side of the peer cache, on top of the node's DHT lookups and cache
//! requests: placing an envelope with the peers that should hold it while its recipient
//! is away, fetching this device's mailbox from its holders (and subscribing to
//! pushes), and, as a holder, keeping k copies of what it holds available when the
//! holders change and when it shuts down.
//!
//! Holders of a mailbox are the `replicas` peers whose DHT ids are closest to it
//! (never the mailbox's own device, never this node), plus always-on nodes named by
//! the recipient.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_proto::{
    mailbox_of, CacheRefusal, CacheRequest, CacheResponse, Envelope, EnvelopeId, Mailbox, MAX_STORE_BATCH,
};
use futures::future::join_all;
use libp2p::{identity, kad, PeerId};
use tokio::sync::mpsc;

use crate::cache::CacheConfig;
use crate::node::{InboundId, NetEvent, WeakNodeHandle};
use crate::{NetError, NodeHandle};

/// Most proof of work a holder may ask for before this device gives up on it.
const MAX_POW_BITS: u8 = 24;
/// Most pages one fetch from one holder takes (a megabyte each); the rest waits for
/// the next round.
const MAX_FETCH_PAGES: usize = 64;
/// Room kept in the event queue for what arrives live while fetched copies are
/// passed on (presence, direct deliveries).
const LIVE_EVENT_ROOM: usize = 64;
/// A moment to let more connections come up before fetching after one did.
const SETTLE: Duration = Duration::from_millis(300);
/// Most mailboxes one upkeep round looks up (each is a DHT lookup); a holder of many
/// takes turns through them.
const MAILBOXES_PER_ROUND: usize = 16;
/// How long a lookup's holders are reused for more envelopes to the same mailbox.
const HOLDERS_FRESH_FOR: Duration = Duration::from_secs(30);

/// Holders found lately, by mailbox, with when.
#[derive(Default)]
struct RecentHolders(Mutex<HashMap<Mailbox, (Instant, Vec<PeerId>)>>);

impl RecentHolders {
    fn get(&self, mailbox: &Mailbox) -> Option<Vec<PeerId>> {
        let mut recent = self.0.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|_, (found, _)| found.elapsed() < HOLDERS_FRESH_FOR);
        recent.get(mailbox).map(|(_, holders)| holders.clone())
    }

    fn set(&self, mailbox: Mailbox, holders: Option<Vec<PeerId>>) {
        let mut recent = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match holders {
            Some(holders) => recent.insert(mailbox, (Instant::now(), holders)),
            None => recent.remove(&mailbox),
        };
    }
}

/// What the device side of the peer cache keeps in a node's handle.
#[derive(Clone)]
pub(crate) struct MailboxSide {
    cache: Arc<CacheConfig>,
    /// This device's transport public key (its mailbox derives from it).
    transport_key: [u8; 32],
    /// Poked when a peer connects: the mailbox is worth fetching then.
    connected: Arc<tokio::sync::Notify>,
    /// Holders found lately for mailboxes, so a burst of envelopes needs one lookup.
    recent_holders: Arc<RecentHolders>,
}

impl MailboxSide {
    pub(crate) fn new(cache: CacheConfig, transport_key: [u8; 32], connected: Arc<tokio::sync::Notify>) -> Self {
        Self {
            cache: Arc::new(cache),
            transport_key,
            connected,
            recent_holders: Arc::default(),
        }
    }
}

/// The mailbox of the device behind `peer`, when its peer id carries its key.
pub fn mailbox_of_peer(peer: &PeerId) -> Option<Mailbox> {
    let multihash = peer.as_ref();
    // Ed25519 peer ids are the key itself under the identity hash (code 0).
    if multihash.code() != 0 {
        return None;
    }
    let key = identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    Some(mailbox_of(&key.try_into_ed25519().ok()?.to_bytes()))
}

impl NodeHandle {
    /// Places `envelope` with the peers that should hold it while `recipient` is away:
    /// the peers closest to its mailbox and the recipient's always-on nodes `also`,
    /// making the proof of work they ask. Returns the peers that hold it now.
    pub async fn place(&self, envelope: &Envelope, also: &[PeerId]) -> Result<Vec<PeerId>, NetError> {
        let mut holders = match self.mailbox_side().recent_holders.get(&envelope.mailbox) {
            Some(holders) => holders,
            None => {
                self.holders_of(&envelope.mailbox, self.mailbox_side().cache.replicas)
                    .await?
            }
        };
        for peer in also {
            if !holders.contains(peer) && *peer != self.peer_id() {
                holders.push(*peer);
            }
        }
        let worked = solved(
            envelope.clone(),
            envelope.required_work(self.mailbox_side().cache.pow_bits),
        )
        .await;
        let stored = join_all(holders.iter().map(|&peer| self.store_on(peer, worked.clone()))).await;
        let took: Vec<PeerId> = holders
            .iter()
            .zip(stored)
            .filter_map(|(&peer, ok)| ok.then_some(peer))
            .collect();
        // Reuse the holders while they all take envelopes; look again once one does not.
        let all_took = took.len() == holders.len() && took.len() >= self.mailbox_side().cache.replicas;
        self.mailbox_side()
            .recent_holders
            .set(envelope.mailbox, all_took.then_some(holders));
        Ok(took)
    }

    /// The `count` reachable peers closest to `mailbox`, except this node and the
    /// mailbox's own device.
    async fn holders_of(&self, mailbox: &Mailbox, count: usize) -> Result<Vec<PeerId>, NetError> {
        // One more than asked for: the mailbox's own device may be among them.
        let mut peers = self.closest_peers(mailbox.to_vec(), count + 1).await?;
        peers.retain(|p| *p != self.peer_id() && mailbox_of_peer(p).as_ref() != Some(mailbox));
        peers.truncate(count);
        Ok(peers)
    }

    /// Stores one envelope on `peer`, redoing the proof of work once if it asks for
    /// more. Whether it holds it now.
    async fn store_on(&self, peer: PeerId, mut envelope: Envelope) -> bool {
        for _ in 0..2 {
            match self.cache_request(peer, CacheRequest::Store(envelope.to_bytes())).await {
                Ok(CacheResponse::Stored { .. }) => return true,
                Ok(CacheResponse::Refused(CacheRefusal::InsufficientWork { required })) if required <= MAX_POW_BITS => {
                    envelope = solved(envelope, required).await;
                }
                other => {
                    tracing::debug!(%peer, ?other, "a holder did not take an envelope");
                    return false;
                }
            }
        }
        false
    }

    /// Hands everything this node holds to the other holders of each mailbox, as a
    /// holder about to leave does. Returns how many copies were taken.
    pub async fn hand_over(&self) -> Result<usize, NetError> {
        let mut handed = 0;
        for mailbox in self.held_mailboxes().await? {
            let holders = self.holders_of(&mailbox, self.mailbox_side().cache.replicas).await?;
            for copied in join_all(holders.iter().map(|&holder| self.copy_to(holder, mailbox))).await {
                handed += copied.taken;
            }
        }
        Ok(handed)
    }

    async fn held_mailboxes(&self) -> Result<Vec<Mailbox>, NetError> {
        self.holding(|service, _| service.map(|s| s.mailboxes()).transpose())
            .await?
            .map(Option::unwrap_or_default)
    }

    /// Stores what this node holds for `mailbox` on another holder, a page at a time.
    /// An envelope the other holder says was acknowledged counts as done there (it is
    /// not deleted here on its word: only a signed acknowledgement does that).
    async fn copy_to(&self, holder: PeerId, mailbox: Mailbox) -> Copied {
        let mut copied = Copied {
            taken: 0,
            done: HashSet::new(),
            all: true,
        };
        let mut after = 0;
        loop {
            let page = self
                .holding(move |service, now| service.map(|s| s.page(&mailbox, after, now)).transpose())
                .await;
            let Ok(Ok(Some((items, more)))) = page else {
                copied.all = false;
                return copied;
            };
            // One request per page (a megabyte at most, as the page is).
            let mut ids = Vec::with_capacity(items.len());
            let mut batch = Vec::with_capacity(items.len());
            for (position, bytes) in items {
                after = position;
                if let Ok(envelope) = Envelope::from_bytes(&bytes) {
                    ids.push(envelope.id());
                    batch.push(bytes);
                }
            }
            for (ids, batch) in ids.chunks(MAX_STORE_BATCH).zip(chunks_of(batch, MAX_STORE_BATCH)) {
                let outcomes = match self.cache_request(holder, CacheRequest::StoreMany(batch)).await {
                    Ok(CacheResponse::StoredMany(outcomes)) if outcomes.len() == ids.len() => outcomes,
                    _ => {
                        copied.all = false;
                        return copied;
                    }
                };
                for (id, outcome) in ids.iter().zip(outcomes) {
                    match outcome {
                        None => {
                            copied.taken += 1;
                            copied.done.insert(*id);
                        }
                        Some(CacheRefusal::Acknowledged) => {
                            copied.done.insert(*id);
                        }
                        Some(refusal) => {
                            tracing::debug!(%holder, %refusal, "hand-over refused");
                            copied.all = false;
                        }
                    }
                }
            }
            if !more {
                return copied;
            }
        }
    }

    /// One round of a holder's upkeep: drop what expired, and copy what is held to
    /// each peer that has become one of the closest to its mailbox since the last
    /// round (a holder left, or a closer node joined), so k copies stay available. A
    /// node that is no longer among the closest lets go of its copies once those peers
    /// hold them (or say they were acknowledged), as Kademlia does with records.
    async fn maintain(&self, placed: &mut HashMap<Mailbox, HashSet<PeerId>>, turn: &mut usize) -> Result<(), NetError> {
        let swept = self
            .holding(|service, now| service.map(|s| s.sweep(now)).transpose())
            .await??;
        if let Some(n @ 1..) = swept {
            tracing::debug!(swept = n, "expired envelopes dropped");
        }
        let mailboxes = self.held_mailboxes().await?;
        placed.retain(|mailbox, _| mailboxes.contains(mailbox));
        let start = if mailboxes.is_empty() {
            0
        } else {
            *turn % mailboxes.len()
        };
        let this_round: Vec<Mailbox> = mailboxes
            .iter()
            .cycle()
            .skip(start)
            .take(mailboxes.len().min(MAILBOXES_PER_ROUND))
            .copied()
            .collect();
        *turn = start + this_round.len();
        // Mailboxes are kept up side by side: a round is as slow as its slowest lookup.
        let rounds = this_round.into_iter().map(|mailbox| {
            let known = placed.get(&mailbox).cloned().unwrap_or_default();
            async move { (mailbox, self.maintain_mailbox(mailbox, known).await) }
        });
        let mut stopped = false;
        for (mailbox, outcome) in join_all(rounds).await {
            match outcome {
                Ok(Some(known)) => {
                    placed.insert(mailbox, known);
                }
                Ok(None) => {
                    placed.remove(&mailbox);
                }
                // What was known stays for the next round.
                Err(NetError::Stopped) => stopped = true,
                Err(e) => tracing::debug!(%e, "mailbox upkeep failed"),
            }
        }
        if stopped {
            return Err(NetError::Stopped);
        }
        Ok(())
    }

    /// Keeps up one mailbox, given the holders it was copied to before; returns them
    /// now, or `None` once this node let go of it.
    async fn maintain_mailbox(
        &self,
        mailbox: Mailbox,
        mut known: HashSet<PeerId>,
    ) -> Result<Option<HashSet<PeerId>>, NetError> {
        let holders = self.holders_of(&mailbox, self.mailbox_side().cache.replicas).await?;
        if !self.mailbox_side().cache.keep_all && !self.is_among_closest(&mailbox, &holders) {
            // Hand everything over, then let go of what every closer holder has.
            let copies = join_all(holders.iter().map(|&holder| self.copy_to(holder, mailbox))).await;
            let mut everywhere: Option<HashSet<EnvelopeId>> = None;
            for copy in copies {
                everywhere = Some(match everywhere {
                    None => copy.done,
                    Some(so_far) => so_far.intersection(&copy.done).copied().collect(),
                });
            }
            let released = everywhere.unwrap_or_default();
            self.holding(move |service, _| service.map(|s| s.release(&released)))
                .await?
                .transpose()?;
            return Ok(None);
        }
        known.retain(|peer| holders.contains(peer));
        let new: Vec<PeerId> = holders.into_iter().filter(|p| !known.contains(p)).collect();
        let copies = join_all(new.iter().map(|&holder| self.copy_to(holder, mailbox))).await;
        for (holder, copied) in new.into_iter().zip(copies) {
            tracing::debug!(%holder, taken = copied.taken, "handed over to a new holder");
            if copied.all {
                known.insert(holder);
            }
        }
        Ok(Some(known))
    }

    /// Whether this node is one of the `replicas` closest to `mailbox`, given the
    /// closest others (nearest first).
    fn is_among_closest(&self, mailbox: &Mailbox, others: &[PeerId]) -> bool {
        let target = kad::KBucketKey::new(mailbox.to_vec());
        let distance = |peer: PeerId| kad::KBucketKey::from(peer).distance(&target);
        let replicas = self.mailbox_side().cache.replicas.max(1);
        others.len() < replicas
            || others
                .get(replicas - 1)
                .is_none_or(|farthest| distance(self.peer_id()) < distance(*farthest))
    }

    /// Asks the holders of this device's mailbox for what they hold, subscribing to
    /// pushes, and passes each envelope on as a [`NetEvent::Envelope`] (answering it
    /// acknowledges it to its holder).
    async fn fetch_mailbox(&self, events: &mpsc::Sender<NetEvent>) -> Result<(), NetError> {
        let mailbox = mailbox_of(&self.mailbox_side().transport_key);
        // More than the placement's k: views of the DHT differ a little between peers.
        let mut holders = self
            .holders_of(&mailbox, 2 * self.mailbox_side().cache.replicas)
            .await?;
        for peer in &self.mailbox_side().cache.always_on {
            if !holders.contains(peer) && *peer != self.peer_id() {
                holders.push(*peer);
            }
        }
        join_all(holders.into_iter().map(|holder| self.fetch_from(holder, events))).await;
        Ok(())
    }

    async fn fetch_from(&self, holder: PeerId, events: &mpsc::Sender<NetEvent>) {
        let mut after = 0;
        for _ in 0..MAX_FETCH_PAGES {
            let request = CacheRequest::Fetch {
                key: self.mailbox_side().transport_key,
                after,
                subscribe: true,
            };
            let (items, more) = match self.cache_request(holder, request).await {
                Ok(CacheResponse::Envelopes { items, more }) => (items, more),
                other => {
                    tracing::debug!(%holder, ?other, "no mailbox fetch");
                    return;
                }
            };
            let before = after;
            for (position, bytes) in items {
                after = after.max(position);
                let Ok(envelope) = Envelope::from_bytes(&bytes) else {
                    tracing::debug!(%holder, "a holder handed over garbage");
                    continue;
                };
                let event = NetEvent::Envelope {
                    from: holder,
                    inbound: InboundId::cached(holder, envelope.id()),
                    bytes,
                };
                // The driver drops what does not fit: leave it room for live events.
                while events.capacity() < LIVE_EVENT_ROOM && !events.is_closed() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if events.send(event).await.is_err() {
                    return;
                }
            }
            // A holder that says `more` without moving on is not followed further.
            if !more || after == before {
                return;
            }
        }
    }
}

/// Runs beside the driver until the node stops: fetches the mailbox when peers connect
/// or the filling DHT learns of a new peer, and every `fetch_every`, and keeps up what this node holds every `maintain_every`.
pub(crate) async fn upkeep(node: WeakNodeHandle, events: mpsc::Sender<NetEvent>) {
    let Some(first) = node.upgrade() else { return };
    let (fetch_every, maintain_every, connected) = (
        first.mailbox_side().cache.fetch_every,
        first.mailbox_side().cache.maintain_every,
        first.mailbox_side().connected.clone(),
    );
    drop(first);
    let mut fetch = tokio::time::interval(fetch_every);
    let mut maintain = tokio::time::interval(maintain_every);
    for timer in [&mut fetch, &mut maintain] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let (mut placed, mut turn) = (HashMap::new(), 0);
    loop {
        let maintaining = tokio::select! {
            _ = fetch.tick() => false,
            _ = connected.notified() => {
                tokio::time::sleep(SETTLE).await;
                false
            }
            _ = maintain.tick() => true,
            _ = events.closed() => return,
        };
        // Only a strong handle while working, so dropping the last one stops the node.
        let Some(node) = node.upgrade() else { return };
        let outcome = if maintaining {
            node.maintain(&mut placed, &mut turn).await
        } else {
            node.fetch_mailbox(&events).await
        };
        if let Err(NetError::Stopped) = outcome {
            return;
        }
    }
}

/// What a copy of one mailbox to another holder achieved.
struct Copied {
    /// Envelopes it took.
    taken: usize,
    /// Envelopes it has now (taken, or acknowledged there).
    done: HashSet<EnvelopeId>,
    /// Whether it has every one.
    all: bool,
}

/// `items` in owned chunks of at most `size`.
fn chunks_of<T>(items: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let mut chunks = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        chunks.push(items.by_ref().take(size).collect());
    }
    chunks
}

/// `envelope` with a proof of work of `bits`, made off the async threads (at high
/// difficulties it takes a while).
async fn solved(mut envelope: Envelope, bits: u8) -> Envelope {
    let fallback = envelope.clone();
    tokio::task::spawn_blocking(move || {
        envelope.solve_work(bits);
        envelope
    })
    .await
    .unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keypair_from_seed;

    #[test]
    fn a_peer_id_gives_the_mailbox_of_its_device() {
        let keypair = keypair_from_seed([4; 32]);
        let key = keypair.public().try_into_ed25519().unwrap().to_bytes();
        assert_eq!(mailbox_of_peer(&keypair.public().to_peer_id()), Some(mailbox_of(&key)));
        assert_eq!(mailbox_of_peer(&PeerId::random()), None);
    }
}
