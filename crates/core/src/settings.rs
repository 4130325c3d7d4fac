//! This account's settings on this device: read receipts, how much the peer cache
//! holds for others, how long messages wait in caches, and the STUN/TURN servers for
//! direct sessions; each checked when set and kept in the profile.

use cairn_net::CacheLimits;
use cairn_proto::{DEFAULT_TTL_SECS, MAX_TTL_SECS};

use crate::messenger::Messenger;
use crate::{CoreError, Result};

/// Setting key: whether this account sends read receipts.
const READ_RECEIPTS: &str = "read_receipts";
/// Setting key: STUN/TURN server URLs for direct sessions, one per line.
const ICE_SERVERS: &str = "ice_servers";
/// Setting key: the peer cache's quota on this device, in MiB.
const CACHE_QUOTA_MIB: &str = "cache_quota_mib";
/// Setting key: how long messages wait in peer caches, in days.
const MESSAGE_TTL_DAYS: &str = "message_ttl_days";
/// The peer cache's quota unless set: 64 MiB.
pub const DEFAULT_CACHE_QUOTA_MIB: u32 = 64;
/// Largest peer cache quota that can be set: 10 GiB.
pub const MAX_CACHE_QUOTA_MIB: u32 = 10 * 1024;
/// How long messages wait in caches unless set: 7 days.
pub const DEFAULT_MESSAGE_TTL_DAYS: u32 = DEFAULT_TTL_SECS / 86_400;
/// Longest a message may wait in caches: 30 days.
pub const MAX_MESSAGE_TTL_DAYS: u32 = MAX_TTL_SECS / 86_400;
/// Most ICE servers kept.
const MAX_ICE_SERVERS: usize = 8;
/// Longest ICE server URL kept.
const MAX_ICE_SERVER_LEN: usize = 256;

impl Messenger {
    /// Whether read receipts are sent (on unless switched off).
    pub fn read_receipts(&self) -> Result<bool> {
        self.flag(READ_RECEIPTS, true)
    }

    /// Switches read receipts on or off.
    pub fn set_read_receipts(&self, on: bool) -> Result<()> {
        self.set_flag(READ_RECEIPTS, on)
    }

    /// How much this device holds for others in its peer cache, in MiB (0: nothing).
    pub fn cache_quota_mib(&self) -> Result<u32> {
        self.number(CACHE_QUOTA_MIB, DEFAULT_CACHE_QUOTA_MIB)
    }

    /// Sets the peer cache's quota (MiB, at most 10 GiB); used when the network starts.
    pub fn set_cache_quota_mib(&self, mib: u32) -> Result<()> {
        if mib > MAX_CACHE_QUOTA_MIB {
            return Err(CoreError::InvalidSetting(format!(
                "a cache quota of at most {MAX_CACHE_QUOTA_MIB} MiB"
            )));
        }
        Ok(self.db().settings().set(CACHE_QUOTA_MIB, &mib.to_string())?)
    }

    /// The limits of this device's peer cache, from its quota.
    pub fn cache_limits(&self) -> Result<CacheLimits> {
        Ok(CacheLimits::with_total(u64::from(self.cache_quota_mib()?) << 20))
    }

    /// How long this device's messages may wait in peer caches, in days.
    pub fn message_ttl_days(&self) -> Result<u32> {
        self.number(MESSAGE_TTL_DAYS, DEFAULT_MESSAGE_TTL_DAYS)
    }

    /// Sets how long messages may wait in peer caches (1 to 30 days), from the next
    /// message on.
    pub fn set_message_ttl_days(&self, days: u32) -> Result<()> {
        if !(1..=MAX_MESSAGE_TTL_DAYS).contains(&days) {
            return Err(CoreError::InvalidSetting(format!(
                "messages wait in caches 1 to {MAX_MESSAGE_TTL_DAYS} days"
            )));
        }
        Ok(self.db().settings().set(MESSAGE_TTL_DAYS, &days.to_string())?)
    }

    /// A numeric setting (default when unset or unreadable).
    fn number(&self, key: &str, default: u32) -> Result<u32> {
        Ok(self
            .db()
            .settings()
            .get(key)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(default))
    }

    /// STUN/TURN server URLs for direct sessions (none by default: devices that can
    /// reach each other need none). Used when the network starts.
    pub fn ice_servers(&self) -> Result<Vec<String>> {
        Ok(self
            .db()
            .settings()
            .get(ICE_SERVERS)?
            .map(|v| v.lines().map(str::to_owned).collect())
            .unwrap_or_default())
    }

    /// Sets the STUN/TURN server URLs (`stun:host:port`, `turn:host:port`, `turns:…`);
    /// blank entries are dropped, anything else malformed is refused.
    pub fn set_ice_servers(&self, urls: &[String]) -> Result<Vec<String>> {
        let urls: Vec<String> = urls
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.len() > MAX_ICE_SERVERS {
            return Err(CoreError::InvalidSetting(format!(
                "at most {MAX_ICE_SERVERS} STUN/TURN servers"
            )));
        }
        for url in &urls {
            let scheme_ok = ["stun:", "stuns:", "turn:", "turns:"]
                .iter()
                .any(|s| url.starts_with(s));
            if !scheme_ok || url.len() > MAX_ICE_SERVER_LEN || url.chars().any(char::is_whitespace) {
                return Err(CoreError::InvalidSetting(format!(
                    "{url:?} is not a stun:, stuns:, turn: or turns: URL"
                )));
            }
        }
        self.db().settings().set(ICE_SERVERS, &urls.join("\n"))?;
        Ok(urls)
    }

    /// Reads a boolean setting (default when unset).
    pub(crate) fn flag(&self, key: &str, default: bool) -> Result<bool> {
        Ok(self.db().settings().get(key)?.map_or(default, |v| v == "on"))
    }

    /// Writes a boolean setting.
    pub(crate) fn set_flag(&self, key: &str, on: bool) -> Result<()> {
        Ok(self.db().settings().set(key, if on { "on" } else { "off" })?)
    }
}
