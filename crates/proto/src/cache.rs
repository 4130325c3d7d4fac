//! The peer cache's wire types: what a device asks a cache node (hold this envelope,
//! give me my mailbox, delete what I have), what the node answers, the signed
//! acknowledgement that lets only a mailbox's owner delete from it, and the mailbox
//! and proof-of-work derivations both sides compute.
//!
//! Signing and checking acknowledgements needs keys and lives with the network layer;
//! this module only fixes the bytes that are signed ([`Ack::signed_bytes`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{decode_versioned, encode_versioned, Envelope, ProtoError, MAX_ENVELOPE_BYTES};

/// An envelope id: SHA-256 of its encoding.
pub type EnvelopeId = [u8; 32];
/// A mailbox: where one device's envelopes are addressed and cached.
pub type Mailbox = [u8; 32];

/// Most envelope ids one acknowledgement may name.
pub const MAX_ACK_IDS: usize = 256;
/// Most bytes of envelopes one fetch answer carries (a full answer says `more`).
pub const MAX_FETCH_BYTES: usize = 1024 * 1024;
/// Most envelopes one `StoreMany` request carries.
pub const MAX_STORE_BATCH: usize = 64;
/// Largest encoded cache request accepted: a batch of stores about a megabyte big
/// (plus one envelope, since a batch is filled up to the megabyte).
pub const MAX_CACHE_REQUEST_BYTES: usize = MAX_FETCH_BYTES + MAX_ENVELOPE_BYTES + 4096;
/// Largest encoded cache response accepted: a full fetch answer plus framing.
pub const MAX_CACHE_RESPONSE_BYTES: usize = MAX_FETCH_BYTES + MAX_ENVELOPE_BYTES + 4096;

const MAILBOX_DOMAIN: &[u8] = b"cairn/mailbox/v1";
const ACK_DOMAIN: &[u8] = b"cairn/ack/v1";
const WORK_DOMAIN: &[u8] = b"cairn/pow/v1";

/// The mailbox of the device with this transport key. A hash, so the key itself is
/// not on every envelope; a cache checks an acknowledgement's or fetch's key against it.
pub fn mailbox_of(transport_key: &[u8; 32]) -> Mailbox {
    let mut hash = Sha256::new();
    hash.update(MAILBOX_DOMAIN);
    hash.update(transport_key);
    hash.finalize().into()
}

/// A request to a cache node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheRequest {
    /// Hold this encoded [`Envelope`] for its mailbox until it is acknowledged or expires.
    Store(Vec<u8>),
    /// Hold each of these (a holder handing over, a sender with many): one answer each.
    StoreMany(Vec<Vec<u8>>),
    /// Hand over what is held for the mailbox of `key`, the requester's own transport
    /// key (the node checks that the connection is that key's), oldest first, after
    /// position `after`; with `subscribe`, push new ones while the connection lasts.
    Fetch {
        /// The requester's transport public key.
        key: [u8; 32],
        /// Only envelopes held after this position (0: from the start).
        after: u64,
        /// Push envelopes that arrive later on this connection.
        subscribe: bool,
    },
    /// The mailbox owner has these envelopes: delete them (and tell the other holders).
    Ack(Ack),
    /// From a cache node to a subscriber: an envelope for its mailbox just arrived.
    Push {
        /// Its position in the node's store.
        position: u64,
        /// The encoded envelope.
        envelope: Vec<u8>,
    },
}

impl CacheRequest {
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Decodes within [`MAX_CACHE_REQUEST_BYTES`], checking the inner limits.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let request: CacheRequest = decode_versioned(bytes, MAX_CACHE_REQUEST_BYTES)?;
        match &request {
            CacheRequest::Store(envelope) | CacheRequest::Push { envelope, .. }
                if envelope.len() > MAX_ENVELOPE_BYTES =>
            {
                Err(ProtoError::TooLarge {
                    size: envelope.len(),
                    limit: MAX_ENVELOPE_BYTES,
                })
            }
            CacheRequest::StoreMany(envelopes) => {
                if envelopes.len() > MAX_STORE_BATCH {
                    return Err(ProtoError::TooLarge {
                        size: envelopes.len(),
                        limit: MAX_STORE_BATCH,
                    });
                }
                match envelopes.iter().find(|e| e.len() > MAX_ENVELOPE_BYTES) {
                    Some(too_big) => Err(ProtoError::TooLarge {
                        size: too_big.len(),
                        limit: MAX_ENVELOPE_BYTES,
                    }),
                    None => Ok(request),
                }
            }
            CacheRequest::Ack(ack) => ack.check().map(|()| request),
            _ => Ok(request),
        }
    }
}

/// A cache node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheResponse {
    /// The envelope is held (`new`: it was not before).
    Stored {
        /// Whether it was new to this node.
        new: bool,
    },
    /// For each envelope of a `StoreMany`, in order: `None` when it is held, or why not.
    StoredMany(Vec<Option<CacheRefusal>>),
    /// Envelopes held for the mailbox, oldest first, with their positions.
    Envelopes {
        /// `(position, encoded envelope)`.
        items: Vec<(u64, Vec<u8>)>,
        /// More are held after the last position given.
        more: bool,
    },
    /// The acknowledgement was valid: this many held envelopes were deleted.
    Acked {
        /// How many envelopes this node deleted.
        deleted: u32,
    },
    /// A pushed envelope was taken.
    Taken,
    /// The request was not carried out; nothing held was changed.
    Refused(CacheRefusal),
}

impl CacheResponse {
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Decodes within [`MAX_CACHE_RESPONSE_BYTES`], checking the inner limits.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let response: CacheResponse = decode_versioned(bytes, MAX_CACHE_RESPONSE_BYTES)?;
        if let CacheResponse::Envelopes { items, .. } = &response {
            if let Some((_, too_big)) = items.iter().find(|(_, e)| e.len() > MAX_ENVELOPE_BYTES) {
                return Err(ProtoError::TooLarge {
                    size: too_big.len(),
                    limit: MAX_ENVELOPE_BYTES,
                });
            }
        }
        Ok(response)
    }
}

/// Why a cache node did not carry out a request. Nothing it held was dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CacheRefusal {
    /// The envelope is over the node's size limit.
    #[error("an envelope of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Its mailbox already holds as much as one mailbox may here.
    #[error("this mailbox is full")]
    MailboxFull,
    /// The node holds as much as it may.
    #[error("this cache is full")]
    CacheFull,
    /// The envelope has expired (or claims to be made in the future).
    #[error("the envelope has expired or is dated in the future")]
    Expired,
    /// Its recipient already acknowledged it.
    #[error("the envelope was already acknowledged")]
    Acknowledged,
    /// The envelope's proof of work is below what this node asks.
    #[error("the proof of work is below the {required} bits this node asks")]
    InsufficientWork {
        /// Leading zero bits asked for.
        required: u8,
    },
    /// The request did not decode or is not valid.
    #[error("malformed request")]
    Malformed,
    /// A fetch for a mailbox that is not the requester's.
    #[error("that mailbox is not yours")]
    NotYourMailbox,
    /// An acknowledgement whose signature does not verify.
    #[error("the acknowledgement's signature does not verify")]
    BadAck,
    /// This node does not cache for others.
    #[error("this node does not cache envelopes")]
    NotACache,
    /// The node cannot answer now (its store failed); try later.
    #[error("the cache cannot answer now")]
    Unavailable,
}

/// A mailbox owner's signed statement that it has the named envelopes: holders
/// delete them on it. Only the holder of the transport key whose mailbox the
/// envelopes are addressed to can make one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The mailbox owner's transport public key (ed25519); its [`mailbox_of`] must be
    /// the acknowledged envelopes' mailbox.
    pub key: [u8; 32],
    /// The envelopes it has.
    pub ids: Vec<EnvelopeId>,
    /// Ed25519 signature by `key` over [`Ack::signed_bytes`].
    pub signature: Vec<u8>,
}

impl Ack {
    /// The bytes the signature covers: a domain tag, the key and the ids.
    pub fn signed_bytes(key: &[u8; 32], ids: &[EnvelopeId]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(ACK_DOMAIN.len() + 32 + 32 * ids.len());
        bytes.extend_from_slice(ACK_DOMAIN);
        bytes.extend_from_slice(key);
        for id in ids {
            bytes.extend_from_slice(id);
        }
        bytes
    }

    /// The mailbox this acknowledgement speaks for.
    pub fn mailbox(&self) -> Mailbox {
        mailbox_of(&self.key)
    }

    fn check(&self) -> Result<(), ProtoError> {
        if self.ids.is_empty() || self.ids.len() > MAX_ACK_IDS {
            return Err(ProtoError::InvalidField {
                field: "ids",
                reason: format!("{} ids, expected 1..={MAX_ACK_IDS}", self.ids.len()),
            });
        }
        if self.signature.len() != 64 {
            return Err(ProtoError::InvalidField {
                field: "signature",
                reason: format!("{} bytes, expected 64", self.signature.len()),
            });
        }
        Ok(())
    }
}

/// Body bytes one bit of proof of work above the base covers: work doubles with every
/// doubling of the body past this, so a large envelope costs its sender more.
const WORK_PER_BODY: usize = 4096;

impl Envelope {
    /// Leading zero bits of this envelope's proof of work: SHA-256 over a domain tag,
    /// the envelope's id (which leaves the nonce out) and `pow`.
    pub fn work(&self) -> u32 {
        work_of(&self.id(), self.pow)
    }

    /// The work a holder asking `base_bits` wants of this envelope: one more bit for
    /// every doubling of the body past 4 KiB (a 256 KiB envelope: six more).
    pub fn required_work(&self, base_bits: u8) -> u8 {
        let blocks = self.body.len().div_ceil(WORK_PER_BODY).max(1);
        base_bits.saturating_add(blocks.next_power_of_two().trailing_zeros() as u8)
    }

    /// Finds a `pow` with at least `bits` leading zero bits (about 2^bits hashes).
    pub fn solve_work(&mut self, bits: u8) {
        let base = self.id();
        let mut nonce = 0u64;
        while work_of(&base, nonce) < u32::from(bits) {
            nonce += 1;
        }
        self.pow = nonce;
    }

    /// When caches drop it: `created + ttl`, Unix seconds.
    pub fn expires(&self) -> u64 {
        self.created.saturating_add(u64::from(self.ttl))
    }
}

fn work_of(base: &[u8; 32], nonce: u64) -> u32 {
    let hash = Sha256::new()
        .chain_update(WORK_DOMAIN)
        .chain_update(base)
        .chain_update(nonce.to_le_bytes())
        .finalize();
    let mut bits = 0;
    for byte in hash {
        bits += byte.leading_zeros();
        if byte != 0 {
            break;
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn envelope() -> Envelope {
        Envelope {
            mailbox: mailbox_of(&[5; 32]),
            created: 1_000,
            ttl: 60,
            pow: 0,
            body: vec![7; 100],
        }
    }

    #[test]
    fn solved_work_has_the_bits_asked_and_breaks_when_the_envelope_changes() {
        let mut e = envelope();
        let id = e.id();
        e.solve_work(12);
        assert!(e.work() >= 12);
        assert_eq!(e.id(), id, "the nonce is not part of the id");
        let mut altered = e.clone();
        altered.body[0] ^= 1;
        // Changing the envelope keeps the nonce but not (almost surely) the work.
        assert!(altered.work() < 12 || altered.work() != e.work());
        assert_eq!(e.expires(), 1_060);
    }

    #[test]
    fn bigger_envelopes_need_more_work() {
        let mut e = envelope();
        assert_eq!(e.required_work(12), 12);
        e.body = vec![0; 8 * 1024];
        assert_eq!(e.required_work(12), 13);
        e.body = vec![0; 256 * 1024];
        assert_eq!(e.required_work(12), 18);
        assert_eq!(e.required_work(u8::MAX), u8::MAX);
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let requests = [
            CacheRequest::Store(envelope().to_bytes()),
            CacheRequest::Fetch {
                key: [1; 32],
                after: 9,
                subscribe: true,
            },
            CacheRequest::Ack(Ack {
                key: [1; 32],
                ids: vec![[2; 32]],
                signature: vec![3; 64],
            }),
            CacheRequest::Push {
                position: 4,
                envelope: vec![1, 2],
            },
            CacheRequest::StoreMany(vec![vec![1], vec![2, 3]]),
        ];
        for request in requests {
            assert_eq!(CacheRequest::from_bytes(&request.to_bytes()).unwrap(), request);
        }
        let responses = [
            CacheResponse::Stored { new: true },
            CacheResponse::Envelopes {
                items: vec![(1, vec![1])],
                more: false,
            },
            CacheResponse::Acked { deleted: 2 },
            CacheResponse::Taken,
            CacheResponse::StoredMany(vec![None, Some(CacheRefusal::MailboxFull)]),
            CacheResponse::Refused(CacheRefusal::InsufficientWork { required: 8 }),
        ];
        for response in responses {
            assert_eq!(CacheResponse::from_bytes(&response.to_bytes()).unwrap(), response);
        }
    }

    #[test]
    fn an_ack_without_ids_or_with_a_short_signature_is_malformed() {
        let empty = CacheRequest::Ack(Ack {
            key: [1; 32],
            ids: vec![],
            signature: vec![0; 64],
        });
        assert!(matches!(
            CacheRequest::from_bytes(&empty.to_bytes()),
            Err(ProtoError::InvalidField { field: "ids", .. })
        ));
        let short = CacheRequest::Ack(Ack {
            key: [1; 32],
            ids: vec![[0; 32]],
            signature: vec![0; 10],
        });
        assert!(matches!(
            CacheRequest::from_bytes(&short.to_bytes()),
            Err(ProtoError::InvalidField { field: "signature", .. })
        ));
        assert!(matches!(
            CacheRequest::from_bytes(&vec![1; MAX_CACHE_REQUEST_BYTES + 1]),
            Err(ProtoError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_cache_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = CacheRequest::from_bytes(&bytes);
            let _ = CacheResponse::from_bytes(&bytes);
        }
    }
}
