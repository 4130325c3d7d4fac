//! Safety numbers: Signal's numeric fingerprint (version 2, 5200 iterations of
//! SHA-512) over two account identity keys, computed by the Signal library itself.
//! Each account's stable identifier is its account id.

use libsignal_protocol::{Fingerprint, IdentityKey, ScannableFingerprint};

use crate::{AccountId, CryptoError};

const VERSION: u32 = 2;
const ITERATIONS: u32 = 5200;

/// The safety number of a pair of accounts, the same on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    digits: String,
    scannable: Vec<u8>,
}

impl SafetyNumber {
    /// Computes the safety number between `local` and `remote` (account id, identity key).
    pub fn compute(
        local_id: &AccountId,
        local_key: &IdentityKey,
        remote_id: &AccountId,
        remote_key: &IdentityKey,
    ) -> Result<Self, CryptoError> {
        Self::of_names(local_id.as_str(), local_key, remote_id.as_str(), remote_key)
    }

    /// The same over any stable names (Signal's own test vectors use phone numbers).
    fn of_names(
        local_id: &str,
        local_key: &IdentityKey,
        remote_id: &str,
        remote_key: &IdentityKey,
    ) -> Result<Self, CryptoError> {
        let fingerprint = Fingerprint::new(
            VERSION,
            ITERATIONS,
            local_id.as_bytes(),
            local_key,
            remote_id.as_bytes(),
            remote_key,
        )
        .map_err(|e| CryptoError::Signal(e.to_string()))?;
        Ok(Self {
            digits: fingerprint
                .display_string()
                .map_err(|e| CryptoError::Signal(e.to_string()))?,
            scannable: fingerprint
                .scannable
                .serialize()
                .map_err(|e| CryptoError::Signal(e.to_string()))?,
        })
    }

    /// The 60 digits.
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// The 60 digits in 12 groups of 5, as people compare them.
    pub fn groups(&self) -> Vec<String> {
        self.digits
            .as_bytes()
            .chunks(5)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }

    /// The scannable form (what the QR code holds).
    pub fn scannable(&self) -> &[u8] {
        &self.scannable
    }

    /// Whether a scanned code, shown by the other side, matches this one.
    pub fn matches_scanned(&self, scanned: &[u8]) -> Result<bool, CryptoError> {
        let ours =
            ScannableFingerprint::deserialize(&self.scannable).map_err(|e| CryptoError::Signal(e.to_string()))?;
        ours.compare(scanned)
            .map_err(|e| CryptoError::InvalidMessage(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AccountIdentity;

    /// libsignal's own test vector (`fingerprint_test_v2`): the displayable number
    /// does not depend on the version.
    #[test]
    fn signal_test_vector() {
        let alice = IdentityKey::decode(&hex(
            "0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868",
        ))
        .unwrap();
        let bob = IdentityKey::decode(&hex(
            "05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b",
        ))
        .unwrap();
        let number = SafetyNumber::of_names("+14152222222", &alice, "+14153333333", &bob).unwrap();
        assert_eq!(
            number.digits(),
            "300354477692869396892869876765458257569162576843440918079131"
        );
        assert_eq!(
            data_encoding::HEXLOWER.encode(number.scannable()),
            "080212220a201e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df1a220a20d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d"
        );
    }

    fn hex(text: &str) -> Vec<u8> {
        data_encoding::HEXLOWER.decode(text.as_bytes()).unwrap()
    }

    #[test]
    fn both_sides_see_the_same_number_and_a_changed_key_changes_it() {
        let (alice, bob, mallory) = (
            AccountIdentity::generate(),
            AccountIdentity::generate(),
            AccountIdentity::generate(),
        );
        let (a, b) = (crate::new_account_id(), crate::new_account_id());
        let at_alice = SafetyNumber::compute(&a, alice.public_key(), &b, bob.public_key()).unwrap();
        let at_bob = SafetyNumber::compute(&b, bob.public_key(), &a, alice.public_key()).unwrap();
        assert_eq!(at_alice.digits(), at_bob.digits());
        assert_eq!(at_alice.digits().len(), 60);
        assert_eq!(at_alice.groups().len(), 12);
        assert!(at_alice.matches_scanned(at_bob.scannable()).unwrap());
        let with_mallory = SafetyNumber::compute(&a, alice.public_key(), &b, mallory.public_key()).unwrap();
        assert_ne!(with_mallory.digits(), at_alice.digits());
        assert!(!with_mallory.matches_scanned(at_bob.scannable()).unwrap_or(false));
    }
}
