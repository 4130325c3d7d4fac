//! The courier: carries a messenger's envelopes over the network. It runs this
//! device's libp2p node, delivers what waits in the outbox, hands arriving envelopes
//! to the messenger and answers them, and says when something changed. The desktop
//! app and `cairnd` both drive the messenger through it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::HashSet;

use cairn_net::{peer_id_of, Delivery, NetEvent, NodeConfig, NodeHandle, PeerId};
use tokio::sync::{mpsc, Notify};

use crate::{CoreError, Messenger, Result};

/// A messenger shared between the UI (or CLI) and the courier; `None` until open.
pub type SharedMessenger = Arc<Mutex<Option<Messenger>>>;

/// How often the outbox is retried when nothing else wakes the courier.
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// Envelopes sent per pass over the outbox.
const BATCH: usize = 64;

/// A running courier.
#[derive(Clone)]
pub struct Courier {
    handle: NodeHandle,
    wake: Arc<Notify>,
    /// Peers with an open connection now.
    online: Arc<Mutex<HashSet<PeerId>>>,
}

impl Courier {
    /// Starts the node for the open messenger's device and the delivery loop; must be
    /// called inside a Tokio runtime. `on_change` runs whenever stored state changed
    /// (a message or receipt arrived, the outbox moved, the node's addresses changed).
    pub fn start(
        messenger: SharedMessenger,
        config: NodeConfig,
        on_change: impl Fn() + Send + Sync + 'static,
    ) -> Result<Self> {
        let seed = with(&messenger, |m| m.transport_seed()).ok_or(CoreError::NoAccount)??;
        let (handle, events) = cairn_net::start(seed, config)?;
        tracing::info!(peer = %handle.peer_id(), "network node started");
        let courier = Self {
            handle,
            wake: Arc::new(Notify::new()),
            online: Arc::default(),
        };
        tokio::spawn(courier.clone().run(messenger, events, on_change));
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

    /// Retries the outbox now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether any of these devices (by transport key) is connected now.
    pub fn any_online(&self, transport_keys: &[[u8; 32]]) -> bool {
        let online = self.online.lock().unwrap_or_else(|p| p.into_inner());
        transport_keys
            .iter()
            .filter_map(|k| peer_id_of(k).ok())
            .any(|peer| online.contains(&peer))
    }

    /// The node's handle (peer id, dialing, listeners).
    pub fn node(&self) -> &NodeHandle {
        &self.handle
    }

    async fn run(
        self,
        messenger: SharedMessenger,
        mut events: mpsc::Receiver<NetEvent>,
        on_change: impl Fn() + Send + Sync + 'static,
    ) {
        let mut retry = tokio::time::interval(RETRY_EVERY);
        let mut addresses = Vec::new();
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    None => break,
                    Some(NetEvent::Listening(address)) => {
                        addresses.push(format!("{address}/p2p/{}", self.handle.peer_id()));
                        with(&messenger, |m| m.set_addresses(addresses.clone()));
                        on_change();
                    }
                    Some(NetEvent::Envelope { bytes, inbound, from }) => {
                        let delivery = match with(&messenger, |m| m.receive(&bytes)) {
                            Some(Ok(_)) | Some(Err(CoreError::Duplicate)) => Delivery::Accepted,
                            Some(Err(e)) => {
                                tracing::debug!(%from, %e, "refused an envelope");
                                Delivery::Refused
                            }
                            None => Delivery::Refused,
                        };
                        let _ = self.handle.answer(inbound, delivery).await;
                        on_change();
                        self.deliver(&messenger, &on_change).await;
                    }
                    Some(NetEvent::Connected(peer)) => {
                        self.online.lock().unwrap_or_else(|p| p.into_inner()).insert(peer);
                        // Whatever waited for this peer (or any) is worth trying at once.
                        with(&messenger, |m| m.retry_now());
                        on_change();
                        self.deliver(&messenger, &on_change).await;
                    }
                    Some(NetEvent::Disconnected(peer)) => {
                        self.online.lock().unwrap_or_else(|p| p.into_inner()).remove(&peer);
                        on_change();
                    }
                    Some(_) => {}
                },
                _ = retry.tick() => self.deliver(&messenger, &on_change).await,
                _ = self.wake.notified() => self.deliver(&messenger, &on_change).await,
            }
        }
    }

    /// One pass over the outbox: each envelope goes to its device's peer; answered ones
    /// (taken or refused) leave the queue, unreachable ones stay for the next pass.
    async fn deliver(&self, messenger: &SharedMessenger, on_change: &impl Fn()) {
        let batch = with(messenger, |m| -> Result<Vec<_>> {
            m.queued(BATCH)?
                .into_iter()
                .map(|q| {
                    Ok((
                        q.seq,
                        m.transport_key_of(&q.outgoing.account_id, q.outgoing.device_id)?,
                        q.outgoing,
                    ))
                })
                .collect()
        });
        let Some(Ok(batch)) = batch else { return };
        let mut progressed = false;
        for (seq, key, outgoing) in batch {
            let Some(peer) = key.and_then(|k| peer_id_of(&k).ok()) else {
                continue;
            };
            match self.handle.send(peer, outgoing.envelope.to_bytes()).await {
                Ok(answer) => {
                    if answer == Delivery::Refused {
                        tracing::warn!(%peer, "an envelope was refused; dropping it");
                    }
                    if let Some(Err(e)) = with(messenger, |m| m.dequeue(seq)) {
                        tracing::error!(%e, "could not dequeue a delivered envelope");
                    }
                    progressed = true;
                }
                Err(e) => {
                    tracing::debug!(%peer, %e, "not delivered yet");
                    with(messenger, |m| m.defer(seq));
                }
            }
        }
        if progressed {
            on_change();
        }
    }
}

/// Runs `work` on the messenger if it is open. The lock is never held across an await.
fn with<T>(messenger: &SharedMessenger, work: impl FnOnce(&mut Messenger) -> T) -> Option<T> {
    let mut slot = messenger.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    slot.as_mut().map(work)
}
