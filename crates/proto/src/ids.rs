//! The ids that name accounts and their devices. Each is checked wherever it is made
//! or decoded, so a value of these types is always well formed, and an account id
//! cannot be passed where a group id or a name is meant.
//!
//! On the wire they are what they were before they had types (a string, a byte), so
//! lists signed earlier still verify.

use std::{borrow::Borrow, fmt};

use data_encoding::BASE32_NOPAD;
use serde::{Deserialize, Serialize};

use crate::ProtoError;

/// An account id: 128 random bits as 26 characters of lowercase base32, chosen when
/// the account is created, the same on every device of the account.
///
/// It is deliberately *not* derived from the identity key. Like Signal's account
/// identifier, it stays the same while the key behind it is what contacts pin: a
/// different key presented under a known account id is exactly the identity change
/// (a reinstall, or someone in the middle) that people are warned about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(String);

impl AccountId {
    /// The id made of these random bytes.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
    }

    /// Checks the shape of an account id received from elsewhere.
    pub fn parse(text: &str) -> Result<Self, ProtoError> {
        let ok = text.len() == 26
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
        ok.then(|| Self(text.to_owned()))
            .ok_or_else(|| ProtoError::InvalidField {
                field: "account_id",
                reason: format!(
                    "{:?} is not 26 base32 characters",
                    text.chars().take(40).collect::<String>()
                ),
            })
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AccountId {
    type Error = ProtoError;

    fn try_from(text: String) -> Result<Self, ProtoError> {
        Self::parse(&text)
    }
}

impl From<AccountId> for String {
    fn from(id: AccountId) -> Self {
        id.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AccountId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for AccountId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&AccountId> for AccountId {
    fn from(id: &AccountId) -> Self {
        id.clone()
    }
}

impl PartialEq<&AccountId> for AccountId {
    fn eq(&self, other: &&AccountId) -> bool {
        self == *other
    }
}

impl PartialEq<AccountId> for &AccountId {
    fn eq(&self, other: &AccountId) -> bool {
        *self == other
    }
}

impl PartialEq<str> for AccountId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// A device's id within its account: 1 to 127, never given to a second device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct DeviceId(u8);

impl DeviceId {
    /// The device that created the account.
    pub const FIRST: DeviceId = DeviceId(1);
    /// The highest device id.
    pub const LAST: DeviceId = DeviceId(127);

    /// Checks a device id received from elsewhere.
    pub fn new(id: u8) -> Result<Self, ProtoError> {
        (1..=127)
            .contains(&id)
            .then_some(Self(id))
            .ok_or(ProtoError::InvalidField {
                field: "device_id",
                reason: format!("{id} is not within 1 to 127"),
            })
    }

    /// The id as a number.
    pub fn get(self) -> u8 {
        self.0
    }

    /// Every device id, lowest first.
    pub fn all() -> impl Iterator<Item = DeviceId> {
        (1..=127).map(DeviceId)
    }

    /// The id after this one, if there is one.
    pub fn next(self) -> Option<DeviceId> {
        (self.0 < 127).then_some(DeviceId(self.0 + 1))
    }
}

impl TryFrom<u8> for DeviceId {
    type Error = ProtoError;

    fn try_from(id: u8) -> Result<Self, ProtoError> {
        Self::new(id)
    }
}

impl From<DeviceId> for u8 {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(feature = "sql")]
mod sql {
    //! The ids as SQL values: stored as the text and number they are, checked as they
    //! are read back.

    use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

    use super::{AccountId, DeviceId};

    impl ToSql for AccountId {
        fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
            self.0.to_sql()
        }
    }

    impl FromSql for AccountId {
        fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
            AccountId::parse(value.as_str()?).map_err(|e| FromSqlError::Other(Box::new(e)))
        }
    }

    impl ToSql for DeviceId {
        fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
            Ok(ToSqlOutput::from(self.0))
        }
    }

    impl FromSql for DeviceId {
        fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
            let id = u8::try_from(value.as_i64()?).map_err(|_| FromSqlError::InvalidType)?;
            DeviceId::new(id).map_err(|e| FromSqlError::Other(Box::new(e)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_versioned, encode_versioned};

    #[test]
    fn ids_travel_as_the_string_and_byte_they_were_before_they_had_types() {
        let id = AccountId::from_random([7; 16]);
        assert_eq!(
            postcard::to_allocvec(&id).unwrap(),
            postcard::to_allocvec(id.as_str()).unwrap()
        );
        assert_eq!(
            postcard::to_allocvec(&DeviceId::new(5).unwrap()).unwrap(),
            postcard::to_allocvec(&5u8).unwrap()
        );
        let back: AccountId = decode_versioned(&encode_versioned(&id), 64).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn a_malformed_id_from_the_wire_is_refused_when_decoded() {
        for bad in ["", "UPPERCASE-ISNOT-BASE32-XYZ", "aaaaaaaaaaaaaaaaaaaaaaaaa1", "aaaa"] {
            assert!(AccountId::parse(bad).is_err(), "{bad:?}");
            assert!(decode_versioned::<AccountId>(&encode_versioned(&bad.to_owned()), 64).is_err());
        }
        for bad in [0u8, 128, 255] {
            assert!(DeviceId::new(bad).is_err());
            assert!(decode_versioned::<DeviceId>(&encode_versioned(&bad), 8).is_err());
        }
        assert_eq!(DeviceId::all().count(), 127);
        assert_eq!(DeviceId::LAST.next(), None);
    }
}
