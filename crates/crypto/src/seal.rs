//! Sealing an envelope body to the recipient, so no one else learns the sender.
//!
//! As in Signal's sealed sender (v1), the body is encrypted to the recipient
//! account's identity key with a one-time ephemeral key: X25519 agreement, HKDF-SHA256
//! to an AES-256-GCM key, both public keys bound as associated data. The Signal
//! session inside authenticates the sender; the seal hides who it is.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use cairn_proto::{SealedBody, SealedInner};
use hkdf::Hkdf;
use libsignal_protocol::{IdentityKey, KeyPair, PublicKey};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{AccountIdentity, CryptoError};

const INFO: &[u8] = b"cairn/seal/v1";

fn cipher(shared: &[u8], ephemeral: &[u8], recipient: &[u8]) -> Aes256Gcm {
    let salt = [ephemeral, recipient].concat();
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(&salt), shared)
        .expand(INFO, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Aes256Gcm::new_from_slice(key.as_ref()).expect("32-byte key")
}

/// Seals `inner` to the account whose identity key is `recipient`.
pub fn seal(recipient: &IdentityKey, inner: &SealedInner) -> Result<SealedBody, CryptoError> {
    let ephemeral = KeyPair::generate(&mut rand::rng());
    let shared = Zeroizing::new(
        ephemeral
            .private_key
            .calculate_agreement(recipient.public_key())
            .map_err(|e| CryptoError::InvalidKey {
                what: "recipient identity",
                reason: e.to_string(),
            })?,
    );
    let ephemeral_key = ephemeral.public_key.serialize().into_vec();
    let recipient_bytes = recipient.serialize();
    let aad = [&ephemeral_key[..], &recipient_bytes[..]].concat();
    // The key is used once (fresh ephemeral key), so a fixed nonce is safe.
    let ciphertext = cipher(&shared, &ephemeral_key, &recipient_bytes)
        .encrypt(
            Nonce::from_slice(&[0u8; 12]),
            Payload {
                msg: &inner.to_bytes(),
                aad: &aad,
            },
        )
        .map_err(|_| CryptoError::SealBroken)?;
    Ok(SealedBody {
        ephemeral_key,
        ciphertext,
    })
}

/// Opens a body sealed to `identity`. Any tampering gives [`CryptoError::SealBroken`].
pub fn unseal(identity: &AccountIdentity, body: &SealedBody) -> Result<SealedInner, CryptoError> {
    let ephemeral = PublicKey::deserialize(&body.ephemeral_key).map_err(|_| CryptoError::SealBroken)?;
    let shared = Zeroizing::new(
        identity
            .key_pair()
            .private_key()
            .calculate_agreement(&ephemeral)
            .map_err(|_| CryptoError::SealBroken)?,
    );
    let recipient_bytes = identity.public_key().serialize();
    let aad = [&body.ephemeral_key[..], &recipient_bytes[..]].concat();
    let plaintext = cipher(&shared, &body.ephemeral_key, &recipient_bytes)
        .decrypt(
            Nonce::from_slice(&[0u8; 12]),
            Payload {
                msg: &body.ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| CryptoError::SealBroken)?;
    Ok(SealedInner::from_bytes(&plaintext)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner() -> SealedInner {
        SealedInner {
            sender_account: crate::new_account_id(),
            sender_identity: AccountIdentity::generate().public_key().serialize().into_vec(),
            sender_device: cairn_proto::DeviceId::new(2).unwrap(),
            prekey: true,
            message: b"signal ciphertext".to_vec(),
        }
    }

    #[test]
    fn only_the_recipient_opens_a_sealed_body() {
        let bob = AccountIdentity::generate();
        let eve = AccountIdentity::generate();
        let body = seal(bob.public_key(), &inner()).unwrap();
        assert_eq!(unseal(&bob, &body).unwrap().message, b"signal ciphertext");
        assert!(matches!(unseal(&eve, &body), Err(CryptoError::SealBroken)));
    }

    #[test]
    fn any_flipped_bit_breaks_the_seal() {
        let bob = AccountIdentity::generate();
        let body = seal(bob.public_key(), &inner()).unwrap();
        for i in 0..body.ciphertext.len() {
            let mut tampered = body.clone();
            tampered.ciphertext[i] ^= 0x01;
            assert!(matches!(unseal(&bob, &tampered), Err(CryptoError::SealBroken)));
        }
        let mut tampered = body.clone();
        tampered.ephemeral_key[5] ^= 0x01;
        assert!(unseal(&bob, &tampered).is_err());
    }
}
