//! A message's delivery state: one enum from the `messages.state` column to the UI
//! (the desktop app sends it as is, and its TypeScript type is generated from it).

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// Where a message stands. Outgoing: `Sending` → `Sent` → `Delivered` → `Read`, or
/// `Failed` when nothing will deliver it; incoming: `Received` → `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[cfg_attr(feature = "specta", derive(specta::Type))]
pub enum DeliveryState {
    /// Queued, not yet handed to a device or a cache.
    Sending,
    /// Handed to a device or a cache.
    Sent,
    /// A device of the recipient has it.
    Delivered,
    /// The recipient has seen it (or, incoming, this account has).
    Read,
    /// Received from someone else, not read yet.
    Received,
    /// Nothing will deliver it any more (the person may retry).
    Failed,
}

impl DeliveryState {
    /// Every state, in the order an outgoing message moves through them.
    pub const ALL: [Self; 6] = [
        Self::Sending,
        Self::Failed,
        Self::Sent,
        Self::Delivered,
        Self::Read,
        Self::Received,
    ];

    /// The state's name as stored and printed (`sending`, `sent`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Received => "received",
            Self::Failed => "failed",
        }
    }

    /// The state named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.name() == name)
    }

    /// How far an outgoing message has come (a receipt only ever moves it forward);
    /// `None` for a state no outgoing message is in.
    pub fn progress(self) -> Option<u8> {
        match self {
            Self::Sending | Self::Failed => Some(0),
            Self::Sent => Some(1),
            Self::Delivered => Some(2),
            Self::Read => Some(3),
            Self::Received => None,
        }
    }
}

impl ToSql for DeliveryState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.name()))
    }
}

impl FromSql for DeliveryState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let name = value.as_str()?;
        Self::from_name(name).ok_or_else(|| FromSqlError::Other(format!("unknown message state {name:?}").into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_from_its_name() {
        for state in DeliveryState::ALL {
            assert_eq!(DeliveryState::from_name(state.name()), Some(state));
        }
        assert_eq!(DeliveryState::from_name("lost"), None);
    }

    #[test]
    fn a_state_the_database_should_not_hold_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let db = crate::ProfileDb::create_unencrypted(&path).unwrap();
        db.messages().ensure_conversation(b"c", "Carol", 0).unwrap();
        let message = crate::NewMessage {
            id: [1; 16],
            conversation_id: b"c",
            sender: &cairn_proto::AccountId::parse("carolaaaaaaaaaaaaaaaaaaaaa").unwrap(),
            sent_at: 0,
            body: "hi",
            state: DeliveryState::Received,
            outgoing: false,
        };
        db.messages().insert(&message).unwrap();
        // Another writer (a bug, a damaged file) leaves a state no version wrote.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute("UPDATE messages SET state = 'lost'", [])
            .unwrap();
        assert!(db.messages().get(&[1; 16]).is_err());
    }
}
