//! Direct sessions: a WebRTC data channel (webrtc-rs) between two online devices,
//! carrying the same envelopes and answers as `/cairn/envelope/1`.
//!
//! Owns the peer connections and their channels, keyed by the peer id of the device at
//! the other end. Does not own signaling: the offer and answer SDP (with every ICE
//! candidate gathered, so no trickle) are handed to the caller, who seals them inside
//! the Signal session to that device and sends them over libp2p. Because the SDP carries
//! the DTLS fingerprint and arrives sealed by that device, the channel is bound to it.
//!
//! Frames on the channel: `[1][request id: u64 BE][envelope]` and
//! `[2][request id: u64 BE][answer byte]`. Anything else is logged and dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot, Notify};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceGatheringState,
    RTCIceServer, RTCPeerConnectionState, RTCSessionDescription,
};
use webrtc::runtime::Runtime;

use crate::codec::Delivery;
use crate::node::{InboundId, NetEvent};
use crate::NetError;

/// Largest envelope sent over a data channel; bigger ones take the libp2p stream.
/// (64 KiB is the message size every WebRTC stack accepts.)
pub const MAX_DIRECT_ENVELOPE: usize = 64 * 1024 - FRAME_HEADER;

const FRAME_HEADER: usize = 9;
const REQUEST: u8 = 1;
const ANSWER: u8 = 2;
/// The data channel's label.
const CHANNEL_LABEL: &str = "cairn/envelope/1";
/// How long ICE candidate gathering may take before the SDP goes out with what it has.
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a session may take to open before it is given up.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// After a session failed to open, how long before offering to that peer again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// A STUN or TURN server for ICE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:host:port` or `turn:host:port?transport=udp`.
    pub urls: Vec<String>,
    /// TURN user name (empty for STUN).
    pub username: String,
    /// TURN credential (empty for STUN).
    pub credential: String,
}

/// How direct sessions are made.
#[derive(Debug, Clone)]
pub struct DirectConfig {
    /// Offer and answer WebRTC sessions at all.
    pub enabled: bool,
    /// Local UDP addresses for ICE host candidates; `0.0.0.0:0` means every interface
    /// (loopback excluded, as RFC 8445 asks), `127.0.0.1:0` loopback only (tests).
    pub udp_addrs: Vec<String>,
    /// STUN/TURN servers; none are needed between hosts that can reach each other.
    pub ice_servers: Vec<IceServer>,
    /// How long a request on a channel may wait for its answer.
    pub request_timeout: Duration,
}

impl Default for DirectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            udp_addrs: vec!["0.0.0.0:0".into()],
            ice_servers: Vec::new(),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The direct sessions of one node.
pub(crate) struct Direct {
    local: PeerId,
    config: DirectConfig,
    runtime: Arc<dyn Runtime>,
    events: mpsc::Sender<NetEvent>,
    sessions: Mutex<HashMap<PeerId, Arc<Session>>>,
    /// When a session to a peer last failed to open.
    failed: Mutex<HashMap<PeerId, Instant>>,
    next: AtomicU64,
}

struct Session {
    generation: u64,
    offering: bool,
    pc: Box<dyn PeerConnection>,
    channel: Mutex<Option<Arc<dyn DataChannel>>>,
    open: AtomicBool,
    gathered: Arc<Notify>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Delivery>>>,
}

/// The peer connection's callbacks, pointing back at its session.
struct Callbacks {
    direct: Weak<Direct>,
    peer: PeerId,
    generation: u64,
    gathered: Arc<Notify>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Callbacks {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(peer = %self.peer, %state, "direct session");
        if matches!(state, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed) {
            if let Some(direct) = self.direct.upgrade() {
                direct.drop_session(self.peer, self.generation);
            }
        }
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        // Only the answering side gets here, with the channel the offer made, already open.
        if let Some(direct) = self.direct.upgrade() {
            direct.attach(self.peer, self.generation, channel, true);
        }
    }
}

impl Direct {
    pub(crate) fn new(
        local: PeerId,
        config: DirectConfig,
        events: mpsc::Sender<NetEvent>,
    ) -> Result<Arc<Self>, NetError> {
        let runtime = webrtc::runtime::default_runtime()
            .ok_or_else(|| NetError::Transport("webrtc has no async runtime".into()))?;
        Ok(Arc::new(Self {
            local,
            config,
            runtime,
            events,
            sessions: Mutex::default(),
            failed: Mutex::default(),
            next: AtomicU64::new(1),
        }))
    }

    fn session(&self, peer: &PeerId) -> Option<Arc<Session>> {
        lock(&self.sessions).get(peer).cloned()
    }

    /// Whether a channel to `peer` is open.
    pub(crate) fn is_open(&self, peer: &PeerId) -> bool {
        self.session(peer).is_some_and(|s| s.open.load(Ordering::SeqCst))
    }

    /// Starts a session to `peer` and returns the offer to send it, or `None` when one
    /// exists or is being made, direct sessions are off, or the last attempt failed
    /// only a short while ago.
    pub(crate) async fn offer(self: &Arc<Self>, peer: PeerId) -> Result<Option<String>, NetError> {
        if !self.config.enabled || self.session(&peer).is_some() {
            return Ok(None);
        }
        if lock(&self.failed)
            .get(&peer)
            .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE)
        {
            return Ok(None);
        }
        // Two offers may start at once (a connection came up while a delivery pass
        // ran): the one that registers its session first goes on.
        let Some(session) = self.create(peer, true).await? else {
            return Ok(None);
        };
        let made = async {
            let channel = session.pc.create_data_channel(CHANNEL_LABEL, None).await?;
            self.attach(peer, session.generation, channel, false);
            let offer = session.pc.create_offer(None).await?;
            session.pc.set_local_description(offer).await
        };
        if let Err(e) = made.await {
            self.drop_session(peer, session.generation);
            return Err(rtc_error(e));
        }
        self.local_sdp(peer, &session).await.map(Some)
    }

    /// Answers `peer`'s offer; `None` when both sides offered at once and this side's
    /// offer wins (the lower peer id keeps its offer), or direct sessions are off. An
    /// offer replaces any session there was: the peer has evidently lost it.
    pub(crate) async fn answer(self: &Arc<Self>, peer: PeerId, offer: String) -> Result<Option<String>, NetError> {
        if !self.config.enabled {
            return Ok(None);
        }
        if let Some(existing) = self.session(&peer) {
            let glare = existing.offering && !existing.open.load(Ordering::SeqCst);
            if glare && self.local < peer {
                return Ok(None);
            }
            self.drop_session(peer, existing.generation);
        }
        let Some(session) = self.create(peer, false).await? else {
            return Ok(None);
        };
        let made = async {
            session
                .pc
                .set_remote_description(RTCSessionDescription::offer(offer)?)
                .await?;
            let answer = session.pc.create_answer(None).await?;
            session.pc.set_local_description(answer).await
        };
        if let Err(e) = made.await {
            self.drop_session(peer, session.generation);
            return Err(rtc_error(e));
        }
        self.local_sdp(peer, &session).await.map(Some)
    }

    /// Applies `peer`'s answer to this side's offer.
    pub(crate) async fn accept(&self, peer: PeerId, answer: String) -> Result<(), NetError> {
        let session = self
            .session(&peer)
            .filter(|s| s.offering)
            .ok_or_else(|| NetError::Direct("an answer without an offer".into()))?;
        let applied = async {
            session
                .pc
                .set_remote_description(RTCSessionDescription::answer(answer)?)
                .await
        };
        if let Err(e) = applied.await {
            self.drop_session(peer, session.generation);
            return Err(rtc_error(e));
        }
        Ok(())
    }

    /// Sends an envelope over the open channel to `peer` and waits for the answer;
    /// `None` when there is no open channel or the envelope is too big for one. A
    /// failed or unanswered request closes the session, so the caller's fallback
    /// takes over.
    pub(crate) async fn send(&self, peer: PeerId, bytes: &[u8]) -> Option<Result<Delivery, NetError>> {
        if bytes.len() > MAX_DIRECT_ENVELOPE {
            return None;
        }
        let session = self.session(&peer).filter(|s| s.open.load(Ordering::SeqCst))?;
        let channel = lock(&session.channel).clone()?;
        let request = self.next.fetch_add(1, Ordering::SeqCst);
        let (done, answer) = oneshot::channel();
        lock(&session.waiting).insert(request, done);
        let sent = channel.send(frame(REQUEST, request, bytes)).await;
        let outcome = match sent {
            Err(e) => Err(NetError::Direct(e.to_string())),
            Ok(()) => match tokio::time::timeout(self.config.request_timeout, answer).await {
                Ok(Ok(delivery)) => Ok(delivery),
                Ok(Err(_)) => Err(NetError::Direct("the session closed".into())),
                Err(_) => Err(NetError::Direct("no answer in time".into())),
            },
        };
        if outcome.is_err() {
            lock(&session.waiting).remove(&request);
            self.drop_session(peer, session.generation);
        }
        Some(outcome)
    }

    /// Sends the answer to a request that came over a channel.
    pub(crate) async fn reply(&self, peer: PeerId, request: u64, delivery: Delivery) {
        let Some(channel) = self.session(&peer).and_then(|s| lock(&s.channel).clone()) else {
            return;
        };
        if let Err(e) = channel.send(frame(ANSWER, request, &[delivery.to_byte()])).await {
            tracing::debug!(%peer, %e, "could not answer over the direct session");
        }
    }

    /// Closes every session (at node shutdown).
    pub(crate) async fn close_all(&self) {
        let sessions: Vec<_> = lock(&self.sessions).drain().collect();
        for (peer, session) in sessions {
            let _ = session.pc.close().await;
            let _ = self.events.try_send(NetEvent::DirectClosed(peer));
        }
    }

    /// Makes a peer connection and registers it as the session with `peer`. An offering
    /// session only registers where there is none (`None` otherwise); an answering one
    /// replaces whatever is there.
    async fn create(self: &Arc<Self>, peer: PeerId, offering: bool) -> Result<Option<Arc<Session>>, NetError> {
        let generation = self.next.fetch_add(1, Ordering::SeqCst);
        let gathered = Arc::new(Notify::new());
        let callbacks = Callbacks {
            direct: Arc::downgrade(self),
            peer,
            generation,
            gathered: gathered.clone(),
        };
        let ice_servers = self
            .config
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().with_ice_servers(ice_servers).build())
            .with_handler(Arc::new(callbacks))
            .with_runtime(self.runtime.clone())
            .with_udp_addrs(self.config.udp_addrs.clone())
            .build()
            .await
            .map_err(rtc_error)?;
        let session = Arc::new(Session {
            generation,
            offering,
            pc: Box::new(pc),
            channel: Mutex::default(),
            open: AtomicBool::new(false),
            gathered,
            waiting: Mutex::default(),
        });
        {
            let mut sessions = lock(&self.sessions);
            if offering && sessions.contains_key(&peer) {
                drop(sessions);
                tokio::spawn(async move {
                    let _ = session.pc.close().await;
                });
                return Ok(None);
            }
            sessions.insert(peer, session.clone());
        }
        // A session that never opens is given up, and the peer left alone for a while.
        let direct = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(OPEN_TIMEOUT).await;
            let Some(direct) = direct.upgrade() else { return };
            let stuck = direct
                .session(&peer)
                .is_some_and(|s| s.generation == generation && !s.open.load(Ordering::SeqCst));
            if stuck {
                tracing::info!(%peer, "direct session did not open; staying on the fallback");
                direct.drop_session(peer, generation);
            }
        });
        Ok(Some(session))
    }

    /// Waits for candidate gathering and returns the local SDP with the candidates in it.
    async fn local_sdp(&self, peer: PeerId, session: &Session) -> Result<String, NetError> {
        let _ = tokio::time::timeout(GATHER_TIMEOUT, session.gathered.notified()).await;
        match session.pc.local_description().await {
            Some(description) => Ok(description.sdp),
            None => {
                self.drop_session(peer, session.generation);
                Err(NetError::Direct("no local description".into()))
            }
        }
    }

    /// Takes a session's data channel and reads it on a task of its own.
    fn attach(self: &Arc<Self>, peer: PeerId, generation: u64, channel: Arc<dyn DataChannel>, open: bool) {
        let Some(session) = self.session(&peer).filter(|s| s.generation == generation) else {
            return;
        };
        *lock(&session.channel) = Some(channel.clone());
        if open {
            self.opened(peer, &session);
        }
        let direct = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(event) = channel.poll().await {
                let Some(direct) = direct.upgrade() else { return };
                match event {
                    DataChannelEvent::OnOpen => direct.opened(peer, &session),
                    DataChannelEvent::OnMessage(message) => direct.received(peer, &session, &message.data).await,
                    DataChannelEvent::OnClose => break,
                    _ => {}
                }
            }
            if let Some(direct) = direct.upgrade() {
                direct.drop_session(peer, generation);
            }
        });
    }

    fn opened(&self, peer: PeerId, session: &Session) {
        if !session.open.swap(true, Ordering::SeqCst) {
            tracing::info!(%peer, "direct session open");
            lock(&self.failed).remove(&peer);
            let _ = self.events.try_send(NetEvent::DirectOpened(peer));
        }
    }

    async fn received(&self, peer: PeerId, session: &Session, data: &[u8]) {
        let Some((&kind, rest)) = data.split_first() else {
            return;
        };
        let Some((request, body)) = rest.split_first_chunk::<8>() else {
            tracing::debug!(%peer, "a direct frame too short to be one");
            return;
        };
        let request = u64::from_be_bytes(*request);
        match kind {
            REQUEST => {
                let event = NetEvent::Envelope {
                    from: peer,
                    bytes: body.to_vec(),
                    inbound: InboundId::direct(peer, request),
                };
                // A full queue: tell the sender to try again rather than leave it waiting.
                if self.events.try_send(event).is_err() {
                    self.reply(peer, request, Delivery::Later).await;
                }
            }
            ANSWER => match body.first().copied().and_then(Delivery::from_byte) {
                Some(delivery) => {
                    if let Some(done) = lock(&session.waiting).remove(&request) {
                        let _ = done.send(delivery);
                    }
                }
                None => tracing::debug!(%peer, "an unknown answer on the direct session"),
            },
            other => tracing::debug!(%peer, kind = other, "an unknown direct frame"),
        }
    }

    /// Forgets a session (if it is still this generation) and closes its connection in
    /// the background: from a connection's own callback, closing must not wait on it.
    fn drop_session(&self, peer: PeerId, generation: u64) {
        if let Some(session) = self.remove(peer, generation) {
            tokio::spawn(async move {
                let _ = session.pc.close().await;
            });
        }
    }

    fn remove(&self, peer: PeerId, generation: u64) -> Option<Arc<Session>> {
        let mut sessions = lock(&self.sessions);
        if sessions.get(&peer).is_none_or(|s| s.generation != generation) {
            return None;
        }
        let session = sessions.remove(&peer)?;
        drop(sessions);
        if session.open.load(Ordering::SeqCst) {
            let _ = self.events.try_send(NetEvent::DirectClosed(peer));
        } else {
            lock(&self.failed).insert(peer, Instant::now());
        }
        // Requests waiting on it fail now instead of at their timeout.
        lock(&session.waiting).clear();
        Some(session)
    }
}

fn frame(kind: u8, request: u64, body: &[u8]) -> BytesMut {
    let mut frame = BytesMut::with_capacity(FRAME_HEADER + body.len());
    frame.extend_from_slice(&[kind]);
    frame.extend_from_slice(&request.to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

fn rtc_error(e: impl std::fmt::Display) -> NetError {
    NetError::Direct(e.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
