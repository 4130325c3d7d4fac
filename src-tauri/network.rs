//! Starts the courier (this device's network node and delivery loop) once the profile
//! is open, and forwards what it reports to the UI as typed events.
//!
//! Settings come from the environment for now: `CAIRN_LISTEN` (comma-separated
//! multiaddrs; default all interfaces, QUIC and TCP), `CAIRN_BOOTSTRAP` (multiaddrs to
//! dial) and `CAIRN_MDNS=0` (no LAN discovery); the peer cache's quota and the STUN/TURN
//! servers come from the profile's settings. On exit the app hands what its cache holds
//! to other holders.

use std::sync::atomic::Ordering;
use std::time::Duration;

use cairn_core::{Courier, IceServer, NodeConfig};
use tauri::{AppHandle, Manager};

use crate::AppState;

/// The node's settings from the environment.
pub fn config_from_env() -> NodeConfig {
    let addresses = |name: &str| -> Option<Vec<cairn_core::Multiaddr>> {
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
    // Where WebRTC gathers host candidates; tests on one machine use loopback.
    if let Ok(udp) = std::env::var("CAIRN_WEBRTC_UDP") {
        config.direct.udp_addrs = udp.split(',').map(|a| a.trim().to_owned()).collect();
    }
    config.request_timeout = Duration::from_secs(10);
    config
}

/// Starts the courier once the profile has an account (no-op otherwise, or if running).
pub fn ensure_started(app: &AppHandle) {
    let state = app.state::<AppState>();
    let ready = state
        .messenger
        .lock()
        .expect("messenger lock")
        .as_ref()
        .is_some_and(|m| m.has_account());
    if !ready || state.network_starting.swap(true, Ordering::SeqCst) {
        return;
    }
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        let state = app.state::<AppState>();
        let forwarder = app.clone();
        let mut config = config_from_env();
        let (ice_servers, cache_limits) = {
            let slot = state.messenger.lock().expect("messenger lock");
            let m = slot.as_ref();
            (
                m.and_then(|m| m.ice_servers().ok()).unwrap_or_default(),
                m.and_then(|m| m.cache_limits().ok()),
            )
        };
        // Every app is a peer cache for others within the quota set in its settings.
        config.cache.store = cache_limits
            .filter(|limits| limits.total > 0)
            .map(|limits| (state.profile.cache_path(), limits));
        config.direct.ice_servers = ice_servers
            .into_iter()
            .map(|url| IceServer {
                urls: vec![url],
                ..IceServer::default()
            })
            .collect();
        match Courier::start(state.messenger.clone(), config, move |event| {
            crate::events::forward(&forwarder, event)
        }) {
            Ok(courier) => {
                let _ = state.network.set(courier);
            }
            Err(e) => {
                tracing::error!(%e, "the network node did not start; messages wait in the outbox");
                // Let a later call try again.
                state.network_starting.store(false, Ordering::SeqCst);
            }
        }
    });
}

/// How long a closing app may spend handing what its cache holds to other holders.
const HAND_OVER_FOR: Duration = Duration::from_secs(5);

/// Before the app exits: hands what its peer cache holds to the other holders (so k
/// copies stay available while it is away), and closes its direct sessions.
pub fn hand_over_before_exit(app: &AppHandle) {
    let Some(courier) = app.state::<AppState>().network.get().cloned() else {
        return;
    };
    tauri::async_runtime::block_on(async move {
        match tokio::time::timeout(HAND_OVER_FOR, courier.node().hand_over()).await {
            Ok(Ok(handed)) => tracing::info!(handed, "cache handed over before exit"),
            Ok(Err(e)) => tracing::warn!(%e, "cache hand-over failed"),
            Err(_) => tracing::warn!("cache hand-over did not finish in time"),
        }
        courier.node().close_direct_sessions().await;
    });
}
