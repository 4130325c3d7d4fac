//! The group side of the profile database: each MLS group this device is in (its
//! name and admins, openmls's state as entries written as they change, and the
//! values to put back to return to the epoch before the last commit), group messages
//! waiting for the commit they follow, this device's group identity, and the key
//! packages of others' devices.

use cairn_crypto::StateChange;
use cairn_proto::{AccountId, DeviceId};
use rusqlite::{params, OptionalExtension, Row};

use crate::Result;

/// A group as this device keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// The group id (also its conversation id).
    pub group_id: String,
    /// Its name.
    pub name: String,
    /// Account ids of its admins.
    pub admins: Vec<AccountId>,
    /// The current epoch.
    pub epoch: u64,
    /// SHA-256 of the last commit applied; while set, the state from before it can
    /// be restored ([`ProfileDb::undo_group_commit`]).
    pub last_commit: Option<Vec<u8>>,
    /// What this device's own last commit did, to do again if another commit wins.
    pub redo: Option<Vec<u8>>,
    /// False once this device left or was removed.
    pub active: bool,
    /// When this device created or joined it, Unix milliseconds.
    pub created_at: i64,
}

/// A group message that arrived before the commit it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingGroupMessage {
    /// Its place, to drop it once processed.
    pub seq: i64,
    /// The account that sent it (from the 1:1 session that carried it).
    pub sender: AccountId,
    /// The MLS message.
    pub message: Vec<u8>,
}

const GROUP_COLUMNS: &str = "group_id, name, admins, epoch, last_commit, redo, active, created_at";

fn group_from_row(row: &Row<'_>) -> rusqlite::Result<GroupRecord> {
    let admins: String = row.get(2)?;
    Ok(GroupRecord {
        group_id: row.get(0)?,
        name: row.get(1)?,
        admins: admins
            .split_whitespace()
            .map(AccountId::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e)))?,
        epoch: row.get::<_, i64>(3)? as u64,
        last_commit: row.get(4)?,
        redo: row.get(5)?,
        active: row.get(6)?,
        created_at: row.get(7)?,
    })
}

tables! {
    /// The group tables (`groups`, `group_state`, `group_undo`, `group_pending`, `group_parts`,
    /// `group_device`, `key_packages`).
    Groups
}

impl Groups<'_> {
    /// Inserts or replaces a group.
    pub fn save(&self, group: &GroupRecord) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT INTO groups ({GROUP_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (group_id) DO UPDATE SET name = excluded.name, admins = excluded.admins,
                     epoch = excluded.epoch, last_commit = excluded.last_commit, redo = excluded.redo,
                     active = excluded.active"
            ),
            params![
                group.group_id,
                group.name,
                group.admins.iter().map(AccountId::as_str).collect::<Vec<_>>().join(" "),
                group.epoch as i64,
                group.last_commit,
                group.redo,
                group.active,
                group.created_at
            ],
        )?;
        Ok(())
    }

    /// One group.
    pub fn get(&self, group_id: &str) -> Result<Option<GroupRecord>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {GROUP_COLUMNS} FROM groups WHERE group_id = ?1"),
                [group_id],
                group_from_row,
            )
            .optional()?)
    }

    /// Every group, newest first.
    pub fn all(&self) -> Result<Vec<GroupRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {GROUP_COLUMNS} FROM groups ORDER BY created_at DESC"))?;
        let rows = stmt.query_map([], group_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// openmls's state entries for a group.
    pub fn state(&self, group_id: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, value FROM group_state WHERE group_id = ?1")?;
        let rows = stmt.query_map([group_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Writes what changed in a group's state.
    pub fn write_state(&self, group_id: &str, changes: &[StateChange]) -> Result<()> {
        let mut upsert = self.conn.prepare_cached(
            "INSERT INTO group_state (group_id, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (group_id, key) DO UPDATE SET value = excluded.value",
        )?;
        let mut delete = self
            .conn
            .prepare_cached("DELETE FROM group_state WHERE group_id = ?1 AND key = ?2")?;
        for change in changes {
            match &change.value {
                Some(value) => upsert.execute(params![group_id, change.key, value])?,
                None => delete.execute(params![group_id, change.key])?,
            };
        }
        Ok(())
    }

    /// Forgets a group's state and undo entirely (before a fresh join replaces it).
    pub fn clear_state(&self, group_id: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM group_state WHERE group_id = ?1", [group_id])?;
        self.conn
            .execute("DELETE FROM group_undo WHERE group_id = ?1", [group_id])?;
        Ok(())
    }

    /// Remembers, for the entries `changes` touch, the value to put back to return
    /// to the state before them. `from_commit` starts over (a commit opens a new
    /// epoch); otherwise the earliest remembered value of an entry stays.
    pub fn remember_undo(&self, group_id: &str, changes: &[StateChange], from_commit: bool) -> Result<()> {
        if from_commit {
            self.conn
                .execute("DELETE FROM group_undo WHERE group_id = ?1", [group_id])?;
        }
        let mut insert = self.conn.prepare_cached(
            "INSERT INTO group_undo (group_id, key, value) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        )?;
        for change in changes {
            insert.execute(params![group_id, change.key, change.before])?;
        }
        Ok(())
    }

    /// Puts back the state from before the last commit (see
    /// [`ProfileDb::remember_group_undo`]) and forgets the undo.
    pub fn undo_commit(&self, group_id: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM group_state WHERE group_id = ?1
               AND key IN (SELECT key FROM group_undo WHERE group_id = ?1 AND value IS NULL)",
            [group_id],
        )?;
        self.conn.execute(
            "INSERT INTO group_state (group_id, key, value)
               SELECT group_id, key, value FROM group_undo WHERE group_id = ?1 AND value IS NOT NULL
             ON CONFLICT (group_id, key) DO UPDATE SET value = excluded.value",
            [group_id],
        )?;
        self.conn
            .execute("DELETE FROM group_undo WHERE group_id = ?1", [group_id])?;
        Ok(())
    }

    /// Keeps a group message for when the group reaches `epoch`.
    pub fn hold_message(&self, group_id: &str, epoch: u64, sender: &AccountId, message: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT INTO group_pending (group_id, epoch, sender, message) VALUES (?1, ?2, ?3, ?4)",
            params![group_id, epoch as i64, sender, message],
        )?;
        Ok(())
    }

    /// How many messages wait for a group.
    pub fn held_message_count(&self, group_id: &str) -> Result<usize> {
        let count: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM group_pending WHERE group_id = ?1",
            [group_id],
            |r| r.get(0),
        )?;
        Ok(count as usize)
    }

    /// How many group messages wait, for all groups.
    pub fn held_message_total(&self) -> Result<usize> {
        let count: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM group_pending", [], |r| r.get(0))?;
        Ok(count as usize)
    }

    /// The messages waiting for a group at epochs up to `epoch`, oldest epoch first.
    pub fn held_messages(&self, group_id: &str, epoch: u64) -> Result<Vec<PendingGroupMessage>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, sender, message FROM group_pending
             WHERE group_id = ?1 AND epoch <= ?2 ORDER BY epoch, seq",
        )?;
        let rows = stmt.query_map(params![group_id, epoch as i64], |r| {
            Ok(PendingGroupMessage {
                seq: r.get(0)?,
                sender: r.get(1)?,
                message: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Drops a waiting group message.
    pub fn release_message(&self, seq: i64) -> Result<()> {
        self.conn.execute("DELETE FROM group_pending WHERE seq = ?1", [seq])?;
        Ok(())
    }

    /// Keeps one part of a group packet from `sender` (a part already kept stays).
    pub fn hold_part(
        &self,
        sender: &AccountId,
        packet_id: &[u8],
        index: u16,
        count: u16,
        bytes: &[u8],
        now: i64,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO group_parts (sender, packet_id, idx, count, bytes, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![sender, packet_id, index, count, bytes, now],
        )?;
        Ok(())
    }

    /// The parts of one packet kept so far, by index: `(index, count, bytes)`.
    pub fn parts(&self, sender: &AccountId, packet_id: &[u8]) -> Result<Vec<(u16, u16, Vec<u8>)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT idx, count, bytes FROM group_parts WHERE sender = ?1 AND packet_id = ?2 ORDER BY idx",
        )?;
        let rows = stmt.query_map(params![sender, packet_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Bytes of parts kept from `sender` (or from everyone, with `None`).
    pub fn part_bytes(&self, sender: Option<&AccountId>) -> Result<u64> {
        let total: i64 = self.conn.query_row(
            "SELECT coalesce(sum(length(bytes)), 0) FROM group_parts WHERE ?1 IS NULL OR sender = ?1",
            [sender],
            |r| r.get(0),
        )?;
        Ok(total as u64)
    }

    /// Drops the parts of one packet (it was put together, or refused).
    pub fn release_parts(&self, sender: &AccountId, packet_id: &[u8]) -> Result<()> {
        self.conn.execute(
            "DELETE FROM group_parts WHERE sender = ?1 AND packet_id = ?2",
            params![sender, packet_id],
        )?;
        Ok(())
    }

    /// Drops parts that arrived before `cutoff` (Unix milliseconds): the rest of
    /// their packet is not coming.
    pub fn forget_parts_before(&self, cutoff: i64) -> Result<usize> {
        Ok(self
            .conn
            .execute("DELETE FROM group_parts WHERE received_at < ?1", [cutoff])?)
    }

    /// This device's group signature key and its key-package state.
    pub fn device(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .conn
            .query_row("SELECT signer, state FROM group_device WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    /// Stores this device's group signature key and key-package state.
    pub fn save_device(&self, signer: &[u8], state: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT INTO group_device (id, signer, state) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET signer = excluded.signer, state = excluded.state",
            params![signer, state],
        )?;
        Ok(())
    }

    /// Stores the key package a device of an account (a contact's, or our own other)
    /// handed out.
    pub fn save_key_package(&self, account_id: &AccountId, device_id: DeviceId, key_package: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT INTO key_packages (account_id, device_id, key_package) VALUES (?1, ?2, ?3)
             ON CONFLICT (account_id, device_id) DO UPDATE SET key_package = excluded.key_package",
            params![account_id, device_id, key_package],
        )?;
        Ok(())
    }

    /// The key packages known for an account's devices.
    pub fn key_packages(&self, account_id: &AccountId) -> Result<Vec<(DeviceId, Vec<u8>)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT device_id, key_package FROM key_packages WHERE account_id = ?1 ORDER BY device_id",
        )?;
        let rows = stmt.query_map([account_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
