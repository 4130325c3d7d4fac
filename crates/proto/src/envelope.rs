//! What travels between devices: the [`Envelope`] (the only thing a transport or a
//! cache node sees), the sealed body inside it, and the [`Content`] a Signal session
//! carries once opened.
//!
//! Layers, outside in: `Envelope { mailbox, created, ttl, pow, body }` →
//! `body` = [`SealedBody`] (sealed to the recipient account's identity key, so the
//! sender is hidden from everyone but the recipient) → [`SealedInner`] (sender's
//! address and a Signal ciphertext) → the Signal plaintext, a padded [`Content`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{decode_versioned, encode_versioned, AccountId, ContactCard, DeviceId, ProtoError};

/// Largest encoded envelope accepted.
pub const MAX_ENVELOPE_BYTES: usize = 256 * 1024;
/// Largest Signal plaintext (padded content) accepted.
pub const MAX_CONTENT_BYTES: usize = 192 * 1024;
/// Longest message text, in bytes.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Largest SDP in a direct-session signal (an SDP with a few dozen candidates is a few KiB).
pub const MAX_SDP_BYTES: usize = 16 * 1024;
/// Most message ids one receipt may carry.
pub const MAX_RECEIPT_IDS: usize = 512;
/// Most envelopes one resend request may name.
pub const MAX_RESEND_ENVELOPES: usize = 64;
/// Largest decryption-error report about one envelope (libsignal's is under 60 bytes).
pub const MAX_DECRYPTION_ERROR_BYTES: usize = 256;
/// Default time an envelope may wait in caches: 7 days.
pub const DEFAULT_TTL_SECS: u32 = 7 * 24 * 3600;
/// Longest time an envelope may wait in caches: 30 days.
pub const MAX_TTL_SECS: u32 = 30 * 24 * 3600;
/// Signal-style padding block: plaintexts are padded to a multiple of this.
const PADDING_BLOCK: usize = 160;

/// A random 128-bit message id.
pub type MessageId = [u8; 16];

/// A sealed message on its way to one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The recipient device's mailbox (derived from its transport key).
    pub mailbox: [u8; 32],
    /// Creation time, Unix seconds.
    pub created: u64,
    /// Seconds after `created` until caches drop it.
    pub ttl: u32,
    /// Proof-of-work nonce (checked by caches).
    pub pow: u64,
    /// The sealed body: only the recipient can open it.
    pub body: Vec<u8>,
}

impl Envelope {
    /// The envelope's id: SHA-256 of its encoding with the proof-of-work nonce left
    /// out. A cache node that changes any other byte changes the id (and acks name
    /// ids); the same envelope with work redone for another holder keeps its id, so
    /// copies de-duplicate and a tombstone cannot be dodged by redoing the work.
    pub fn id(&self) -> [u8; 32] {
        let unworked = Envelope { pow: 0, ..self.clone() };
        Sha256::digest(unworked.to_bytes()).into()
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Parses the wire form, refusing more than [`MAX_ENVELOPE_BYTES`] or a TTL over
    /// [`MAX_TTL_SECS`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let envelope: Envelope = decode_versioned(bytes, MAX_ENVELOPE_BYTES)?;
        if envelope.ttl > MAX_TTL_SECS {
            return Err(ProtoError::InvalidField {
                field: "ttl",
                reason: format!("{} s is over 30 days", envelope.ttl),
            });
        }
        Ok(envelope)
    }
}

/// The body of an envelope: an ephemeral public key and an AEAD ciphertext of a
/// [`SealedInner`], keyed by ECDH with the recipient account's identity key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBody {
    /// The sender's one-time Curve25519 public key (serialised, 33 bytes).
    pub ephemeral_key: Vec<u8>,
    /// AES-256-GCM ciphertext of the encoded [`SealedInner`].
    pub ciphertext: Vec<u8>,
}

impl SealedBody {
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }
    /// Decodes within the envelope limit.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        decode_versioned(bytes, MAX_ENVELOPE_BYTES)
    }
}

/// What a sealed body hides: who sent it, and the Signal ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedInner {
    /// The sender's account id.
    pub sender_account: AccountId,
    /// The sender account's identity public key.
    pub sender_identity: Vec<u8>,
    /// The sending device's id.
    pub sender_device: DeviceId,
    /// Whether `message` is a PreKeySignalMessage (session start) or a SignalMessage.
    pub prekey: bool,
    /// The serialised Signal ciphertext message.
    pub message: Vec<u8>,
}

impl SealedInner {
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }
    /// Decodes within the envelope limit.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let inner: SealedInner = decode_versioned(bytes, MAX_ENVELOPE_BYTES)?;
        crate::device::check_identity_key(&inner.sender_identity)?;
        Ok(inner)
    }
}

/// A text message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextMessage {
    /// Random 128-bit id; receivers de-duplicate by it.
    pub id: MessageId,
    /// Send time, Unix milliseconds.
    pub sent_at: u64,
    /// The text.
    pub body: String,
    /// On copies to the sender's own other devices: the account id of the contact
    /// the message went to. `None` on the copy for the contact.
    pub sync_peer: Option<AccountId>,
}

/// Which receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptKind {
    /// A device of the recipient has the message.
    Delivered,
    /// The recipient has seen it (sent only if they allow read receipts).
    Read,
}

/// A delivery or read receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// The messages it is for.
    pub message_ids: Vec<MessageId>,
}

/// The plaintext a Signal session carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// A text message.
    Text(TextMessage),
    /// A receipt for earlier messages.
    Receipt(Receipt),
    /// "This is me": sent to a contact's devices when a contact is made or the
    /// sender's devices change.
    Hello {
        /// The sender's card.
        card: ContactCard,
        /// Set when the sender accepted the receiver's invite: that invite's secret,
        /// which lets a stranger become a contact (and asks for a card in return).
        invite_secret: Option<[u8; 16]>,
    },
    /// To the sender's own other devices: "I added this contact".
    ContactSync(ContactCard),
    /// Signaling for a direct (WebRTC) session, to one device only.
    Direct(DirectSignal),
    /// A group's Welcome or MLS message for this device.
    Group(crate::GroupPacket),
    /// "I could not open these envelopes from you": the sender seals what they
    /// carried again, in the session as it is now, and sends it once more.
    Resend(ResendRequest),
}

/// Envelopes a device could not decrypt (their chain of the sender's session was
/// gone by the time they arrived), for their sender to send again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResendRequest {
    /// The envelopes that did not open.
    pub failed: Vec<FailedEnvelope>,
}

/// One envelope that did not open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedEnvelope {
    /// Its id ([`Envelope::id`]), by which the sender finds what it carried.
    pub envelope_id: [u8; 32],
    /// Signal's decryption-error message for it: which sending chain (ratchet key) the
    /// message was in, so the sender can tell a stale chain from a broken session.
    pub error: Vec<u8>,
}

/// Signaling for a direct session between two devices. The SDP carries the ICE
/// candidates and the DTLS fingerprint, so sealing it in the Signal session binds the
/// session to the device that sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectSignal {
    /// "Connect to me": an SDP offer.
    Offer(String),
    /// "Here is how": the SDP answer to an offer.
    Answer(String),
}

impl Content {
    /// Encodes and pads to a multiple of 160 bytes (`0x80` then zeros), so message
    /// lengths leak only coarsely.
    pub fn to_padded_bytes(&self) -> Vec<u8> {
        let mut bytes = encode_versioned(self);
        bytes.push(0x80);
        let padded_len = bytes.len().div_ceil(PADDING_BLOCK) * PADDING_BLOCK;
        bytes.resize(padded_len, 0);
        bytes
    }

    /// Strips the padding and decodes, within [`MAX_CONTENT_BYTES`].
    pub fn from_padded_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        if bytes.len() > MAX_CONTENT_BYTES {
            return Err(ProtoError::TooLarge {
                size: bytes.len(),
                limit: MAX_CONTENT_BYTES,
            });
        }
        let end = bytes
            .iter()
            .rposition(|&b| b != 0)
            .filter(|&i| bytes[i] == 0x80)
            .ok_or_else(|| ProtoError::Malformed("missing padding marker".into()))?;
        let content: Content = decode_versioned(&bytes[..end], MAX_CONTENT_BYTES)?;
        match &content {
            Content::Text(text) if text.body.len() > MAX_TEXT_BYTES => {
                return Err(ProtoError::TooLarge {
                    size: text.body.len(),
                    limit: MAX_TEXT_BYTES,
                })
            }
            Content::Receipt(receipt) if receipt.message_ids.len() > MAX_RECEIPT_IDS => {
                return Err(ProtoError::TooLarge {
                    size: receipt.message_ids.len(),
                    limit: MAX_RECEIPT_IDS,
                })
            }
            Content::Hello { card, .. } | Content::ContactSync(card) => {
                card.check()?;
            }
            Content::Direct(DirectSignal::Offer(sdp) | DirectSignal::Answer(sdp)) if sdp.len() > MAX_SDP_BYTES => {
                return Err(ProtoError::TooLarge {
                    size: sdp.len(),
                    limit: MAX_SDP_BYTES,
                })
            }
            Content::Resend(request) => request.check()?,
            _ => {}
        }
        Ok(content)
    }

    /// A short name for what this content is (for logs and the outbox listing).
    pub fn kind(&self) -> &'static str {
        match self {
            Content::Text(_) => "text",
            Content::Receipt(_) => "receipt",
            Content::Hello { .. } => "card",
            Content::ContactSync(_) => "contact",
            Content::Direct(_) => "signal",
            Content::Group(_) => "group",
            Content::Resend(_) => "resend",
        }
    }
}

impl ResendRequest {
    /// Checks the limits: at least one and at most [`MAX_RESEND_ENVELOPES`] envelopes,
    /// each report at most [`MAX_DECRYPTION_ERROR_BYTES`].
    pub fn check(&self) -> Result<(), ProtoError> {
        if self.failed.is_empty() || self.failed.len() > MAX_RESEND_ENVELOPES {
            return Err(ProtoError::InvalidField {
                field: "failed",
                reason: format!("{} envelopes (1 to {MAX_RESEND_ENVELOPES})", self.failed.len()),
            });
        }
        match self.failed.iter().find(|f| f.error.len() > MAX_DECRYPTION_ERROR_BYTES) {
            Some(f) => Err(ProtoError::TooLarge {
                size: f.error.len(),
                limit: MAX_DECRYPTION_ERROR_BYTES,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(body: &str) -> Content {
        Content::Text(TextMessage {
            id: [3; 16],
            sent_at: 1,
            body: body.into(),
            sync_peer: None,
        })
    }

    #[test]
    fn content_is_padded_to_blocks_and_round_trips() {
        for body in ["", "hi", &"x".repeat(500)] {
            let bytes = text(body).to_padded_bytes();
            assert_eq!(bytes.len() % 160, 0);
            assert_eq!(Content::from_padded_bytes(&bytes).unwrap(), text(body));
        }
        assert_eq!(text("a").to_padded_bytes().len(), text("abc").to_padded_bytes().len());
    }

    #[test]
    fn a_direct_signal_round_trips_and_an_oversized_sdp_is_refused() {
        let offer = Content::Direct(DirectSignal::Offer("v=0\r\n".repeat(100)));
        assert_eq!(Content::from_padded_bytes(&offer.to_padded_bytes()).unwrap(), offer);
        let huge = Content::Direct(DirectSignal::Answer("a".repeat(MAX_SDP_BYTES + 1)));
        assert!(matches!(
            Content::from_padded_bytes(&huge.to_padded_bytes()),
            Err(ProtoError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_resend_request_round_trips_within_its_limits() {
        let failed = |n: usize, error: usize| {
            Content::Resend(ResendRequest {
                failed: (0..n)
                    .map(|i| FailedEnvelope {
                        envelope_id: [i as u8; 32],
                        error: vec![7; error],
                    })
                    .collect(),
            })
        };
        let request = failed(3, 40);
        assert_eq!(Content::from_padded_bytes(&request.to_padded_bytes()).unwrap(), request);
        assert_eq!(request.kind(), "resend");
        for bad in [
            failed(0, 40),
            failed(MAX_RESEND_ENVELOPES + 1, 40),
            failed(1, MAX_DECRYPTION_ERROR_BYTES + 1),
        ] {
            assert!(Content::from_padded_bytes(&bad.to_padded_bytes()).is_err());
        }
    }

    #[test]
    fn missing_padding_is_a_typed_error() {
        assert!(matches!(Content::from_padded_bytes(&[]), Err(ProtoError::Malformed(_))));
        assert!(matches!(
            Content::from_padded_bytes(&[0; 160]),
            Err(ProtoError::Malformed(_))
        ));
    }

    #[test]
    fn envelope_ids_change_with_any_byte() {
        let envelope = Envelope {
            mailbox: [1; 32],
            created: 5,
            ttl: DEFAULT_TTL_SECS,
            pow: 0,
            body: vec![9; 40],
        };
        let decoded = Envelope::from_bytes(&envelope.to_bytes()).unwrap();
        assert_eq!(decoded.id(), envelope.id());
        let mut altered = envelope.clone();
        altered.body[0] ^= 1;
        assert_ne!(altered.id(), envelope.id());
    }

    #[test]
    fn an_envelope_over_the_ttl_limit_is_refused() {
        let envelope = Envelope {
            mailbox: [1; 32],
            created: 5,
            ttl: MAX_TTL_SECS + 1,
            pow: 0,
            body: vec![],
        };
        assert!(matches!(
            Envelope::from_bytes(&envelope.to_bytes()),
            Err(ProtoError::InvalidField { field: "ttl", .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Envelope::from_bytes(&bytes);
            let _ = SealedBody::from_bytes(&bytes);
            let _ = SealedInner::from_bytes(&bytes);
            let _ = Content::from_padded_bytes(&bytes);
        }
    }
}
