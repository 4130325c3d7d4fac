//! `cairnd`'s network settings: flags and environment variables (through clap) over a
//! TOML file over defaults.

use std::path::Path;

use anyhow::{bail, Context, Result};
use cairn_core::{CacheLimits, DirectConfig, IceServer, Multiaddr, NodeConfig};
use cairn_store::ProfileDir;
use serde::Deserialize;

use crate::{Command, Options};

/// Larger than any sensible settings file; a bigger one is a mistake, not settings.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// The settings file. Every key is optional; unknown keys are an error, so a typo
/// does not pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Vec<Multiaddr>>,
    bootstrap: Option<Vec<Multiaddr>>,
    mdns: Option<bool>,
    relay: Option<bool>,
    webrtc: Option<bool>,
    stun: Option<Vec<String>>,
    webrtc_udp: Option<Vec<String>>,
    cache_quota_mib: Option<u64>,
}

/// The peer cache's quota of an always-on node unless set: 2 GiB.
const NODE_CACHE_QUOTA_MIB: u64 = 2048;
/// The peer cache's quota when running as a client (`listen`): 64 MiB, as the app.
const CLIENT_CACHE_QUOTA_MIB: u64 = 64;

fn read(path: &Path, required: bool) -> Result<FileConfig> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(FileConfig::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_CONFIG_BYTES + 1), &mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        bail!("{} is over {MAX_CONFIG_BYTES} bytes", path.display());
    }
    toml::from_str(&text).with_context(|| format!("{} is not a valid cairnd settings file", path.display()))
}

/// The node configuration in effect for these options.
pub fn node_config(options: &Options) -> Result<NodeConfig> {
    let file = match &options.config {
        Some(path) => read(path, true)?,
        None => read(&options.profile_dir.join("cairnd.toml"), false)?,
    };
    let defaults = NodeConfig::default();
    let relay = if options.relay {
        true
    } else if options.no_relay {
        false
    } else {
        file.relay.unwrap_or(matches!(options.command, Command::Node { .. }))
    };
    let stun = first(&options.stun, file.stun, Vec::new());
    let default_quota = match options.command {
        Command::Node { .. } => NODE_CACHE_QUOTA_MIB,
        _ => CLIENT_CACHE_QUOTA_MIB,
    };
    let quota = options.cache_quota.or(file.cache_quota_mib).unwrap_or(default_quota);
    let mut cache = defaults.cache.clone();
    // People name an always-on node in their device lists: it keeps what it holds
    // even when other peers are closer to the mailbox.
    cache.keep_all = matches!(options.command, Command::Node { .. });
    cache.store = (quota > 0).then(|| {
        let path = ProfileDir::new(&options.profile_dir).cache_path();
        (path, CacheLimits::with_total(quota << 20))
    });
    Ok(NodeConfig {
        listen: first(&options.listen, file.listen, defaults.listen),
        bootstrap: first(&options.bootstrap, file.bootstrap, defaults.bootstrap),
        mdns: !options.no_mdns && file.mdns.unwrap_or(defaults.mdns),
        relay_server: relay,
        direct: DirectConfig {
            enabled: !options.no_webrtc && file.webrtc.unwrap_or(true),
            udp_addrs: file.webrtc_udp.unwrap_or(defaults.direct.udp_addrs),
            ice_servers: stun
                .into_iter()
                .map(|url| IceServer {
                    urls: vec![url],
                    ..IceServer::default()
                })
                .collect(),
            ..defaults.direct
        },
        cache,
        ..defaults
    })
}

/// A list from the flags if any were given, else from the file, else the default.
fn first<T: Clone>(flag: &[T], file: Option<Vec<T>>, default: Vec<T>) -> Vec<T> {
    if flag.is_empty() {
        file.unwrap_or(default)
    } else {
        flag.to_vec()
    }
}

/// The configuration as `key value…` lines.
pub fn describe(config: &NodeConfig) -> String {
    let join = |items: Vec<String>| items.join(" ");
    format!(
        "listen {}\nbootstrap {}\nmdns {}\nrelay {}\nwebrtc {}\nwebrtc-udp {}\nstun {}\ncache-quota-mib {}\n",
        join(config.listen.iter().map(ToString::to_string).collect()),
        join(config.bootstrap.iter().map(ToString::to_string).collect()),
        config.mdns,
        config.relay_server,
        config.direct.enabled,
        join(config.direct.udp_addrs.clone()),
        join(config.direct.ice_servers.iter().flat_map(|s| s.urls.clone()).collect()),
        config.cache.store.as_ref().map_or(0, |(_, limits)| limits.total >> 20),
    )
}
