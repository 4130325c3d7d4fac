//! Where other devices said they can be reached, remembered between runs so a
//! restarted node can dial its contacts' devices before any discovery.

use rusqlite::params;

use crate::Result;

tables! {
    /// The `peer_addresses` table.
    PeerAddresses
}

impl PeerAddresses<'_> {
    /// Remembers where a device (by transport key) said it can be reached.
    pub fn save(&self, transport_key: &[u8], address: &str, now: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO peer_addresses (transport_key, address, learned_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (transport_key, address) DO UPDATE SET learned_at = excluded.learned_at",
            params![transport_key, address, now],
        )?;
        Ok(())
    }

    /// Every remembered (transport key, address), newest first.
    pub fn all(&self) -> Result<Vec<(Vec<u8>, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT transport_key, address FROM peer_addresses ORDER BY learned_at DESC")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
