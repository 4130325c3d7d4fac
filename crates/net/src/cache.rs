//! The holder side of the peer cache: what a node does with the requests other peers
//! send it on `/cairn/cache/1`.
//!
//! A state machine over the cache database, without a network: it takes who asked,
//! what, and the time, and returns the answer and what to send on (pushes to
//! subscribers, an acknowledgement for the other holders). It checks what the database
//! does not: that an envelope decodes, is not dated in the future and carries enough
//! proof of work; that only a mailbox's owner fetches from it; that an acknowledgement
//! is signed by the key its mailbox derives from. Anything else is a typed refusal that
//! changes nothing held.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_proto::{
    mailbox_of, Ack, CacheRefusal, CacheRequest, CacheResponse, Envelope, EnvelopeId, Mailbox, MAX_FETCH_BYTES,
    MAX_TTL_SECS,
};
use cairn_store::{CacheDb, CacheLimits, Held, Page, StoreError, ToHold};
use libp2p::{identity, PeerId};

use crate::{peer_id_of, NetError};

/// How far in the future an envelope may be dated (clocks differ).
const MAX_CLOCK_SKEW_SECS: u64 = 10 * 60;

/// The time as a node (and its messenger) sees it: the system clock, or one a test
/// moves by hand ([`ManualClock`]).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        }))
    }

    /// A clock that reads `now`, in Unix seconds.
    pub fn from_fn(now: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(move || now().saturating_mul(1000)))
    }

    /// The time, Unix seconds.
    pub fn now(&self) -> u64 {
        self.now_millis() / 1000
    }

    /// The time, Unix milliseconds.
    pub fn now_millis(&self) -> u64 {
        (self.0)()
    }

    /// The time as a [`SystemTime`].
    pub fn system_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.now_millis())
    }
}

/// A clock that stands still until a test moves it (every [`Clock`] made from it reads
/// the same time).
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<std::sync::atomic::AtomicU64>);

impl ManualClock {
    /// A clock that starts at the system's time now.
    pub fn starting_now() -> Self {
        Self(Arc::new(Clock::system().now_millis().into()))
    }

    /// A [`Clock`] that reads this one.
    pub fn clock(&self) -> Clock {
        let now = self.0.clone();
        Clock(Arc::new(move || now.load(std::sync::atomic::Ordering::SeqCst)))
    }

    /// Moves the time on.
    pub fn advance(&self, by: Duration) {
        self.0
            .fetch_add(by.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

/// How a node takes part in the peer cache: as a device placing and fetching its
/// envelopes, and (with `store`) as a holder for others.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Where and within which limits this node holds envelopes for others; `None`: it
    /// holds none (it still places and fetches its own).
    pub store: Option<(PathBuf, CacheLimits)>,
    /// How many peers hold each envelope (the k closest to its mailbox).
    pub replicas: usize,
    /// Leading zero bits of proof of work asked of each envelope stored here, and
    /// made for each envelope placed.
    pub pow_bits: u8,
    /// How often held envelopes are swept and re-placed when their holders change.
    pub maintain_every: Duration,
    /// How often this device asks the holders of its mailbox for what they hold
    /// (besides whenever it connects, and the pushes it subscribes to).
    pub fetch_every: Duration,
    /// Always-on nodes this device fetches from besides its mailbox's closest peers.
    pub always_on: Vec<PeerId>,
    /// Keep what is held even when this node is not among the closest to its mailbox
    /// (an always-on node that people name in their device lists).
    pub keep_all: bool,
    /// The time.
    pub clock: Clock,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            store: None,
            replicas: 3,
            pow_bits: DEFAULT_POW_BITS,
            maintain_every: Duration::from_secs(60),
            fetch_every: Duration::from_secs(60),
            always_on: Vec::new(),
            keep_all: false,
            clock: Clock::system(),
        }
    }
}

/// Proof of work asked by default: 2^12 hashes, about a millisecond per envelope.
pub const DEFAULT_POW_BITS: u8 = 12;

/// What the service asks the node to send on after answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// An envelope arrived for a mailbox whose owner subscribed: push it.
    Push {
        to: PeerId,
        position: u64,
        envelope: Vec<u8>,
    },
    /// An acknowledgement deleted envelopes here: the other holders of the mailbox
    /// should hear of it.
    ForwardAck { mailbox: Mailbox, ack: Ack, from: PeerId },
}

/// The holder side of the peer cache on one node.
pub(crate) struct CacheService {
    db: CacheDb,
    pow_bits: u8,
    /// Peers that asked for pushes to a mailbox, while they stay connected.
    subscribers: HashMap<Mailbox, HashSet<PeerId>>,
    /// Requests refused as malformed or forged, for the operator.
    refused: u64,
}

impl CacheService {
    pub(crate) fn open(path: &std::path::Path, limits: CacheLimits, pow_bits: u8) -> Result<Self, NetError> {
        Ok(Self {
            db: CacheDb::open(path, limits)?,
            pow_bits,
            subscribers: HashMap::new(),
            refused: 0,
        })
    }

    /// Answers one request from `from` at time `now`.
    pub(crate) fn handle(&mut self, from: PeerId, request: CacheRequest, now: u64) -> (CacheResponse, Vec<Effect>) {
        let outcome = match request {
            CacheRequest::Store(bytes) => {
                return self
                    .store_all(&[(from, bytes)], now)
                    .pop()
                    .unwrap_or_else(|| (CacheResponse::Refused(CacheRefusal::Unavailable), Vec::new()))
            }
            CacheRequest::StoreMany(envelopes) => {
                let stores: Vec<(PeerId, Vec<u8>)> = envelopes.into_iter().map(|e| (from, e)).collect();
                let (mut outcomes, mut effects) = (Vec::with_capacity(stores.len()), Vec::new());
                for (answer, more) in self.store_all(&stores, now) {
                    outcomes.push(match answer {
                        CacheResponse::Refused(refusal) => Some(refusal),
                        _ => None,
                    });
                    effects.extend(more);
                }
                return (CacheResponse::StoredMany(outcomes), effects);
            }
            CacheRequest::Fetch { key, after, subscribe } => self.fetch(from, key, after, subscribe, now),
            CacheRequest::Ack(ack) => self.acknowledge(from, ack, now),
            // Pushes go from holders to devices; the node handles them itself.
            CacheRequest::Push { .. } => Err(CacheRefusal::Malformed),
        };
        outcome.unwrap_or_else(|refusal| self.refuse(from, refusal))
    }

    /// A refusal, counted when the request was garbage or forged.
    fn refuse(&mut self, from: PeerId, refusal: CacheRefusal) -> (CacheResponse, Vec<Effect>) {
        if matches!(
            refusal,
            CacheRefusal::Malformed | CacheRefusal::BadAck | CacheRefusal::NotYourMailbox
        ) {
            self.refused += 1;
        }
        tracing::debug!(peer = %from, %refusal, "cache request refused");
        (CacheResponse::Refused(refusal), Vec::new())
    }

    /// Answers a batch of stores in one database transaction (a busy holder's stores
    /// are gathered for a moment, so they share one commit). One answer per store, in
    /// order.
    pub(crate) fn store_all(&mut self, stores: &[(PeerId, Vec<u8>)], now: u64) -> Vec<(CacheResponse, Vec<Effect>)> {
        let checked: Vec<Result<Envelope, CacheRefusal>> =
            stores.iter().map(|(_, bytes)| self.check_store(bytes, now)).collect();
        let to_hold: Vec<ToHold<'_>> = checked
            .iter()
            .zip(stores)
            .filter_map(|(checked, (_, bytes))| {
                let envelope = checked.as_ref().ok()?;
                Some(ToHold {
                    id: envelope.id(),
                    mailbox: envelope.mailbox,
                    expires: envelope.expires(),
                    bytes,
                })
            })
            .collect();
        let mut held = match self.db.hold_all(&to_hold, now) {
            Ok(outcomes) => outcomes,
            Err(e) => vec![Err(refusal_of(e)); to_hold.len()],
        }
        .into_iter();
        let mut answers = Vec::with_capacity(stores.len());
        for (checked, (from, bytes)) in checked.into_iter().zip(stores) {
            let outcome = checked.and_then(|envelope| {
                let held = held.next().ok_or(CacheRefusal::Unavailable)??;
                Ok((envelope, held))
            });
            let answer = match outcome {
                Ok((envelope, Held::New(position))) => {
                    let effects = self
                        .subscribers
                        .get(&envelope.mailbox)
                        .into_iter()
                        .flatten()
                        .map(|&to| Effect::Push {
                            to,
                            position,
                            envelope: bytes.clone(),
                        })
                        .collect();
                    (CacheResponse::Stored { new: true }, effects)
                }
                Ok((_, Held::Already)) => (CacheResponse::Stored { new: false }, Vec::new()),
                Err(refusal) => self.refuse(*from, refusal),
            };
            answers.push(answer);
        }
        answers
    }

    /// What the database does not check about an envelope to store: that it decodes,
    /// is not dated in the future, and carries the work asked for its size.
    fn check_store(&self, bytes: &[u8], now: u64) -> Result<Envelope, CacheRefusal> {
        let envelope = Envelope::from_bytes(bytes).map_err(|_| CacheRefusal::Malformed)?;
        if envelope.created > now + MAX_CLOCK_SKEW_SECS {
            return Err(CacheRefusal::Expired);
        }
        let required = envelope.required_work(self.pow_bits);
        if envelope.work() < u32::from(required) {
            return Err(CacheRefusal::InsufficientWork { required });
        }
        Ok(envelope)
    }

    fn fetch(
        &mut self,
        from: PeerId,
        key: [u8; 32],
        after: u64,
        subscribe: bool,
        now: u64,
    ) -> Result<(CacheResponse, Vec<Effect>), CacheRefusal> {
        // The connection is authenticated with the requester's transport key: only the
        // device whose key the mailbox derives from may read it.
        if peer_id_of(&key).ok() != Some(from) {
            return Err(CacheRefusal::NotYourMailbox);
        }
        let mailbox = mailbox_of(&key);
        if subscribe {
            self.subscribers.entry(mailbox).or_default().insert(from);
        }
        let (items, more) = self
            .db
            .fetch(&mailbox, after, now, MAX_FETCH_BYTES)
            .map_err(refusal_of)?;
        Ok((CacheResponse::Envelopes { items, more }, Vec::new()))
    }

    fn acknowledge(&mut self, from: PeerId, ack: Ack, now: u64) -> Result<(CacheResponse, Vec<Effect>), CacheRefusal> {
        if !verify_ack(&ack) {
            return Err(CacheRefusal::BadAck);
        }
        let mailbox = ack.mailbox();
        let mut deleted = 0u32;
        let mut ids = ack.ids.clone();
        ids.sort_unstable();
        ids.dedup();
        for id in &ids {
            // Keep the tombstone as long as the envelope could live: its own expiry
            // when held here, the longest TTL (from a date that may be ahead) otherwise.
            let expires = match self.db.held(id).map_err(refusal_of)? {
                Some((held_for, expires)) if held_for == mailbox => expires,
                _ => now + u64::from(MAX_TTL_SECS) + MAX_CLOCK_SKEW_SECS,
            };
            if self.db.acknowledge(id, &mailbox, expires).map_err(refusal_of)? {
                deleted += 1;
            }
        }
        // Passed on only when it deleted something here, so forwarding ends.
        let effects = if deleted > 0 {
            vec![Effect::ForwardAck { mailbox, ack, from }]
        } else {
            Vec::new()
        };
        Ok((CacheResponse::Acked { deleted }, effects))
    }

    /// A peer's last connection closed: its subscriptions end.
    pub(crate) fn disconnected(&mut self, peer: &PeerId) {
        self.subscribers.retain(|_, peers| {
            peers.remove(peer);
            !peers.is_empty()
        });
    }

    /// Drops what expired; how many envelopes went.
    pub(crate) fn sweep(&mut self, now: u64) -> Result<usize, NetError> {
        Ok(self.db.sweep(now)?)
    }

    /// The mailboxes something is held for.
    pub(crate) fn mailboxes(&self) -> Result<Vec<Mailbox>, NetError> {
        Ok(self.db.mailboxes()?)
    }

    /// A page of what is held for `mailbox` after position `after`, to hand over:
    /// `(position, bytes)`, and whether more follow.
    pub(crate) fn page(&self, mailbox: &Mailbox, after: u64, now: u64) -> Result<Page, NetError> {
        Ok(self.db.fetch(mailbox, after, now, MAX_FETCH_BYTES)?)
    }

    /// Lets go of envelopes handed to holders closer to their mailbox.
    pub(crate) fn release<'a>(&mut self, ids: impl IntoIterator<Item = &'a EnvelopeId>) -> Result<(), NetError> {
        for id in ids {
            self.db.release(id)?;
        }
        Ok(())
    }

    /// Envelopes and bytes held.
    pub(crate) fn usage(&self) -> Result<(u64, u64), NetError> {
        Ok(self.db.usage()?)
    }
}

/// A refusal for a database failure: the limits' own refusals pass through, anything
/// else is the node's trouble, not the requester's.
fn refusal_of(error: StoreError) -> CacheRefusal {
    match error {
        StoreError::Refused(refusal) => refusal,
        other => {
            tracing::error!(%other, "the cache database failed");
            CacheRefusal::Unavailable
        }
    }
}

/// Signs an acknowledgement of `ids` with this device's transport key.
pub(crate) fn sign_ack(keypair: &identity::Keypair, ids: Vec<EnvelopeId>) -> Option<Ack> {
    let key = keypair.public().try_into_ed25519().ok()?.to_bytes();
    let signature = keypair.sign(&Ack::signed_bytes(&key, &ids)).ok()?;
    Some(Ack { key, ids, signature })
}

/// Whether `ack` is signed by the key it names.
pub fn verify_ack(ack: &Ack) -> bool {
    identity::ed25519::PublicKey::try_from_bytes(&ack.key)
        .is_ok_and(|key| key.verify(&Ack::signed_bytes(&ack.key, &ack.ids), &ack.signature))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keypair_from_seed;

    const LIMITS: CacheLimits = CacheLimits {
        max_envelope: 4096,
        per_mailbox: 8192,
        total: 16384,
    };
    const NOW: u64 = 1_000_000;

    struct Device {
        keypair: identity::Keypair,
    }

    impl Device {
        fn new(seed: u8) -> Self {
            Self {
                keypair: keypair_from_seed([seed; 32]),
            }
        }
        fn peer(&self) -> PeerId {
            self.keypair.public().to_peer_id()
        }
        fn key(&self) -> [u8; 32] {
            self.keypair.public().try_into_ed25519().unwrap().to_bytes()
        }
        fn mailbox(&self) -> Mailbox {
            mailbox_of(&self.key())
        }
        fn envelope(&self, n: u8, bits: u8) -> Envelope {
            let mut envelope = Envelope {
                mailbox: self.mailbox(),
                created: NOW,
                ttl: 3600,
                pow: 0,
                body: vec![n; 200],
            };
            envelope.solve_work(bits);
            envelope
        }
        fn fetch(&self, service: &mut CacheService, subscribe: bool) -> Vec<Vec<u8>> {
            let request = CacheRequest::Fetch {
                key: self.key(),
                after: 0,
                subscribe,
            };
            match service.handle(self.peer(), request, NOW).0 {
                CacheResponse::Envelopes { items, .. } => items.into_iter().map(|(_, e)| e).collect(),
                other => panic!("expected envelopes, got {other:?}"),
            }
        }
    }

    fn service(dir: &tempfile::TempDir) -> CacheService {
        CacheService::open(&dir.path().join("cache.db"), LIMITS, 8).unwrap()
    }

    fn store(service: &mut CacheService, from: &Device, envelope: &Envelope) -> (CacheResponse, Vec<Effect>) {
        service.handle(from.peer(), CacheRequest::Store(envelope.to_bytes()), NOW)
    }

    #[test]
    fn only_the_mailbox_owner_fetches_and_only_its_signed_ack_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = service(&dir);
        let (alice, bob, eve) = (Device::new(1), Device::new(2), Device::new(3));
        let envelope = bob.envelope(1, 8);
        assert_eq!(
            store(&mut cache, &alice, &envelope).0,
            CacheResponse::Stored { new: true }
        );
        assert_eq!(
            store(&mut cache, &alice, &envelope).0,
            CacheResponse::Stored { new: false }
        );

        // Eve asks for Bob's mailbox with Bob's key: her connection is not Bob's.
        let stolen = CacheRequest::Fetch {
            key: bob.key(),
            after: 0,
            subscribe: true,
        };
        assert_eq!(
            cache.handle(eve.peer(), stolen, NOW).0,
            CacheResponse::Refused(CacheRefusal::NotYourMailbox)
        );

        // Eve's own signature over Bob's envelope id names her mailbox, not Bob's.
        let eves = sign_ack(&eve.keypair, vec![envelope.id()]).unwrap();
        assert_eq!(
            cache.handle(eve.peer(), CacheRequest::Ack(eves), NOW).0,
            CacheResponse::Acked { deleted: 0 }
        );
        // Bob's key with a signature that is not Bob's.
        let mut forged = sign_ack(&eve.keypair, vec![envelope.id()]).unwrap();
        forged.key = bob.key();
        assert_eq!(
            cache.handle(eve.peer(), CacheRequest::Ack(forged), NOW).0,
            CacheResponse::Refused(CacheRefusal::BadAck)
        );
        assert_eq!(
            bob.fetch(&mut cache, false),
            vec![envelope.to_bytes()],
            "nothing was deleted"
        );

        let real = sign_ack(&bob.keypair, vec![envelope.id()]).unwrap();
        let (answer, effects) = cache.handle(bob.peer(), CacheRequest::Ack(real.clone()), NOW);
        assert_eq!(answer, CacheResponse::Acked { deleted: 1 });
        assert_eq!(
            effects,
            vec![Effect::ForwardAck {
                mailbox: bob.mailbox(),
                ack: real.clone(),
                from: bob.peer()
            }]
        );
        assert!(bob.fetch(&mut cache, false).is_empty());
        // The same ack again deletes nothing, so it is not passed on again.
        assert!(cache.handle(bob.peer(), CacheRequest::Ack(real), NOW).1.is_empty());
        // And a late replica cannot bring the envelope back.
        assert_eq!(
            store(&mut cache, &alice, &envelope).0,
            CacheResponse::Refused(CacheRefusal::Acknowledged)
        );
    }

    #[test]
    fn too_little_work_a_future_date_and_garbage_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = service(&dir);
        let (alice, bob) = (Device::new(1), Device::new(2));
        let mut lazy = bob.envelope(1, 0);
        while lazy.work() >= 8 {
            lazy.pow += 1;
        }
        assert_eq!(
            store(&mut cache, &alice, &lazy).0,
            CacheResponse::Refused(CacheRefusal::InsufficientWork { required: 8 })
        );
        let mut future = bob.envelope(2, 0);
        future.created = NOW + 3600;
        future.solve_work(8);
        assert_eq!(
            store(&mut cache, &alice, &future).0,
            CacheResponse::Refused(CacheRefusal::Expired)
        );
        let garbage = cache.handle(alice.peer(), CacheRequest::Store(vec![1, 2, 3]), NOW).0;
        assert_eq!(garbage, CacheResponse::Refused(CacheRefusal::Malformed));
        assert_eq!(cache.refused, 1);
        assert_eq!(cache.usage().unwrap(), (0, 0));
    }

    #[test]
    fn a_subscriber_gets_new_envelopes_pushed_until_it_disconnects() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = service(&dir);
        let (alice, bob) = (Device::new(1), Device::new(2));
        assert!(bob.fetch(&mut cache, true).is_empty());
        let envelope = bob.envelope(1, 8);
        let (_, effects) = store(&mut cache, &alice, &envelope);
        assert!(matches!(
            &effects[..],
            [Effect::Push { to, envelope: pushed, .. }] if *to == bob.peer() && *pushed == envelope.to_bytes()
        ));
        cache.disconnected(&bob.peer());
        assert!(store(&mut cache, &alice, &bob.envelope(2, 8)).1.is_empty());
    }
}
