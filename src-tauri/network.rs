//! The app's network loop: once the profile is open it starts this device's libp2p
//! node, delivers what waits in the outbox, hands arriving envelopes to the
//! messenger, and tells the UI that something changed.
//!
//! Settings come from the environment for now: `CAIRN_LISTEN` (comma-separated
//! multiaddrs; default all interfaces, QUIC and TCP), `CAIRN_BOOTSTRAP` (multiaddrs to
//! dial) and `CAIRN_MDNS=0` (no LAN discovery).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{CoreError, Messenger};
use cairn_net::{peer_id_of, Delivery, NetEvent, NodeConfig, NodeHandle};
use tauri::{AppHandle, Emitter, Manager};
use tokio::sync::{mpsc, Notify};

use crate::AppState;

/// The event the UI listens for to reload what it shows.
pub const CHANGED_EVENT: &str = "cairn-changed";
/// How often the outbox is retried when nothing else wakes the loop.
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// Envelopes sent per pass over the outbox.
const BATCH: usize = 64;

/// A running node and the way to wake its delivery loop.
pub struct Network {
    handle: NodeHandle,
    wake: Arc<Notify>,
}

impl Network {
    /// Tells the node where the device that made an invite listens, and retries the
    /// outbox (the introduction is waiting there).
    pub async fn reach_inviter(&self, transport_key: [u8; 32], addresses: Vec<String>) {
        if let Ok(peer) = peer_id_of(&transport_key) {
            for address in addresses.iter().filter_map(|a| a.parse().ok()) {
                let _ = self.handle.add_address(peer, address).await;
            }
        }
        self.wake.notify_one();
    }

    /// Retries the outbox now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

fn config_from_env() -> NodeConfig {
    let addresses = |name: &str| -> Option<Vec<cairn_net::Multiaddr>> {
        std::env::var(name)
            .ok()
            .map(|v| v.split(',').filter_map(|a| a.trim().parse().ok()).collect())
    };
    let mut config = NodeConfig::default();
    if let Some(listen) = addresses("CAIRN_LISTEN") {
        config.listen = listen;
    }
    config.bootstrap = addresses("CAIRN_BOOTSTRAP").unwrap_or_default();
    config.mdns = std::env::var("CAIRN_MDNS").map_or(true, |v| v != "0");
    config.request_timeout = Duration::from_secs(10);
    config
}

/// Starts the node once the profile has an account (no-op otherwise, or if running).
pub fn ensure_started(app: &AppHandle) {
    let state = app.state::<AppState>();
    let seed = {
        let slot = state.messenger.lock().expect("messenger lock");
        match slot.as_ref().map(Messenger::transport_seed) {
            Some(Ok(seed)) => seed,
            _ => return,
        }
    };
    if state.network_starting.swap(true, Ordering::SeqCst) {
        return;
    }
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        let (handle, events) = match cairn_net::start(seed, config_from_env()) {
            Ok(started) => started,
            Err(e) => {
                tracing::error!(%e, "the network node did not start; messages wait in the outbox");
                return;
            }
        };
        tracing::info!(peer = %handle.peer_id(), "network node started");
        let wake = Arc::new(Notify::new());
        let state = app.state::<AppState>();
        let _ = state.network.set(Network {
            handle: handle.clone(),
            wake: wake.clone(),
        });
        run(app.clone(), handle, events, wake).await;
    });
}

async fn run(app: AppHandle, handle: NodeHandle, mut events: mpsc::Receiver<NetEvent>, wake: Arc<Notify>) {
    let mut retry = tokio::time::interval(RETRY_EVERY);
    let mut addresses = Vec::new();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                None => break,
                Some(NetEvent::Listening(address)) => {
                    addresses.push(format!("{address}/p2p/{}", handle.peer_id()));
                    with_messenger(&app, |m| {
                        m.set_addresses(addresses.clone());
                        Ok(())
                    });
                    changed(&app);
                }
                Some(NetEvent::Envelope { bytes, inbound, from }) => {
                    let outcome = with_messenger(&app, |m| m.receive(&bytes));
                    let delivery = match outcome {
                        Some(Ok(_)) | Some(Err(CoreError::Duplicate)) => Delivery::Accepted,
                        Some(Err(e)) => {
                            tracing::debug!(%from, %e, "refused an envelope");
                            Delivery::Refused
                        }
                        None => Delivery::Refused,
                    };
                    let _ = handle.answer(inbound, delivery).await;
                    changed(&app);
                    deliver(&app, &handle).await;
                }
                Some(NetEvent::Connected(_)) => deliver(&app, &handle).await,
                Some(_) => {}
            },
            _ = retry.tick() => deliver(&app, &handle).await,
            _ = wake.notified() => deliver(&app, &handle).await,
        }
    }
}

/// One pass over the outbox: each envelope goes to its device's peer; answered ones
/// (taken or refused) leave the queue, unreachable ones stay for the next pass.
async fn deliver(app: &AppHandle, handle: &NodeHandle) {
    let batch = with_messenger(app, |m| {
        m.queued(BATCH)?
            .into_iter()
            .map(|q| {
                Ok((
                    q.seq,
                    m.transport_key_of(&q.outgoing.account_id, q.outgoing.device_id)?,
                    q.outgoing,
                ))
            })
            .collect::<Result<Vec<_>, CoreError>>()
    });
    let Some(Ok(batch)) = batch else { return };
    let mut progressed = false;
    for (seq, key, outgoing) in batch {
        let Some(peer) = key.and_then(|k| peer_id_of(&k).ok()) else {
            continue;
        };
        match handle.send(peer, outgoing.envelope.to_bytes()).await {
            Ok(answer) => {
                if answer == Delivery::Refused {
                    tracing::warn!(%peer, "an envelope was refused; dropping it");
                }
                with_messenger(app, |m| m.dequeue(seq));
                progressed = true;
            }
            Err(e) => tracing::debug!(%peer, %e, "not delivered yet"),
        }
    }
    if progressed {
        changed(app);
    }
}

fn with_messenger<T>(
    app: &AppHandle,
    work: impl FnOnce(&mut Messenger) -> Result<T, CoreError>,
) -> Option<Result<T, CoreError>> {
    let state = app.state::<AppState>();
    let mut slot = state.messenger.lock().expect("messenger lock");
    slot.as_mut().map(work)
}

fn changed(app: &AppHandle) {
    let _ = app.emit(CHANGED_EVENT, ());
}
