//! Envelopes held back on receipt (their sender is not a contact yet, or its key
//! changed and the person has not decided): kept in the profile until they can be
//! read, or until they are too old to wait for.

use cairn_proto::AccountId;
use rusqlite::params;

use crate::Result;

tables! {
    /// The `held_envelopes` table.
    HeldEnvelopes
}

impl HeldEnvelopes<'_> {
    /// Holds an envelope from `sender` until their changed key is accepted.
    pub fn hold(&self, envelope_id: &[u8], sender: &AccountId, envelope: &[u8], now: i64) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO held_envelopes (envelope_id, sender, envelope, received_at) VALUES (?1, ?2, ?3, ?4)",
            params![envelope_id, sender, envelope, now],
        )?;
        Ok(())
    }

    /// The envelopes held for `sender`, oldest first, as (envelope id, bytes).
    pub fn from_sender(&self, sender: &AccountId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT envelope_id, envelope FROM held_envelopes WHERE sender = ?1 ORDER BY received_at, envelope_id",
        )?;
        let rows = stmt.query_map([sender], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many envelopes are held in all.
    pub fn count(&self) -> Result<usize> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM held_envelopes", [], |r| r.get::<_, i64>(0))? as usize)
    }

    /// Drops held envelopes that arrived before `cutoff` (Unix milliseconds): what
    /// they waited for (a contact, a device list, a decision) did not come in time.
    pub fn forget_before(&self, cutoff: i64) -> Result<usize> {
        Ok(self
            .conn
            .execute("DELETE FROM held_envelopes WHERE received_at < ?1", [cutoff])?)
    }

    /// Forgets a held envelope once it has been processed.
    pub fn release(&self, envelope_id: &[u8]) -> Result<()> {
        self.conn
            .execute("DELETE FROM held_envelopes WHERE envelope_id = ?1", [envelope_id])?;
        Ok(())
    }

    /// Drops everything held from `sender` (the person refused their changed key).
    pub fn forget_sender(&self, sender: &AccountId) -> Result<usize> {
        Ok(self
            .conn
            .execute("DELETE FROM held_envelopes WHERE sender = ?1", [sender])?)
    }
}
