//! 1:1 Signal sessions (PQXDH start, Double Ratchet with SPQR after), one per device
//! pair, run by Signal's own protocol code over Cairn's storage.
//!
//! Storage is behind [`SignalStore`], a small synchronous trait that deals in bytes:
//! the SQLCipher store implements it, and [`MemorySignalStore`] is a test
//! convenience. An adapter turns it into the Signal library's async store traits;
//! since nothing in it waits on IO, the library's futures are driven to completion
//! on the spot.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::SystemTime;

use async_trait::async_trait;
use cairn_proto::{AccountId, DeviceId, PrekeyBundle};
use futures::executor::block_on;
use libsignal_protocol::{
    CiphertextMessage, DeviceId as SignalDeviceId, Direction, GenericSignedPreKey, IdentityChange, IdentityKey,
    IdentityKeyPair, IdentityKeyStore, KyberPreKeyId, KyberPreKeyRecord, KyberPreKeyStore, PreKeyId, PreKeyRecord,
    PreKeySignalMessage, PreKeyStore, ProtocolAddress, PublicKey, SessionRecord, SessionStore, SignalMessage,
    SignalProtocolError, SignedPreKeyId, SignedPreKeyRecord, SignedPreKeyStore,
};

use crate::{prekeys::to_signal_bundle, CryptoError};

/// A storage failure, as the store reports it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreFailure(pub String);

/// Result of a [`SignalStore`] call.
pub type StoreResult<T> = Result<T, StoreFailure>;

/// What the Signal sessions need stored. Records are opaque bytes to the store.
pub trait SignalStore {
    /// This account's id.
    fn account_id(&self) -> StoreResult<AccountId>;
    /// This account's identity key pair.
    fn identity_key_pair(&self) -> StoreResult<IdentityKeyPair>;
    /// This device's registration id.
    fn registration_id(&self) -> StoreResult<u32>;
    /// The identity key pinned for another account, if any.
    fn peer_identity(&self, account_id: &AccountId) -> StoreResult<Option<Vec<u8>>>;
    /// Pins an identity key for an account seen for the first time.
    fn save_peer_identity(&self, account_id: &AccountId, identity_key: &[u8]) -> StoreResult<()>;
    /// The session record with a device, if any.
    fn session(&self, account_id: &AccountId, device_id: DeviceId) -> StoreResult<Option<Vec<u8>>>;
    /// Stores the session record with a device.
    fn save_session(&self, account_id: &AccountId, device_id: DeviceId, record: &[u8]) -> StoreResult<()>;
    /// A signed prekey record of this device.
    fn signed_prekey(&self, id: u32) -> StoreResult<Option<Vec<u8>>>;
    /// A Kyber prekey record of this device.
    fn kyber_prekey(&self, id: u32) -> StoreResult<Option<Vec<u8>>>;
    /// Records a use of a Kyber last-resort prekey; `false` if this exact use
    /// (same prekeys, same sender base key) was seen before, i.e. a replay.
    fn record_kyber_prekey_use(&self, kyber_id: u32, signed_id: u32, base_key: &[u8]) -> StoreResult<bool>;
}

/// Where a Signal message goes or comes from: an account and one of its devices.
fn address(account_id: &AccountId, device_id: DeviceId) -> Result<ProtocolAddress, CryptoError> {
    let device = SignalDeviceId::new(device_id.get()).map_err(|_| CryptoError::InvalidDeviceId(device_id.get()))?;
    Ok(ProtocolAddress::new(account_id.to_string(), device))
}

/// The account and device an address the Signal library hands back names (always
/// one this crate made with [`address`]).
fn parts_of(address: &ProtocolAddress) -> Result<(AccountId, DeviceId), SignalProtocolError> {
    let bad = |what: &str| SignalProtocolError::InvalidArgument(format!("{what} in a session address"));
    let account = AccountId::parse(address.name()).map_err(|_| bad("not an account id"))?;
    let device = DeviceId::new(address.device_id().into()).map_err(|_| bad("not a device id"))?;
    Ok((account, device))
}

fn callback(method: &'static str) -> impl Fn(StoreFailure) -> SignalProtocolError {
    move |e| SignalProtocolError::ApplicationCallbackError(method, Box::new(e))
}

/// The Signal library's store traits over a [`SignalStore`].
struct Adapter<'s> {
    store: &'s dyn SignalStore,
}

impl Adapter<'_> {
    fn own_account(&self) -> Result<AccountId, SignalProtocolError> {
        self.store.account_id().map_err(callback("account_id"))
    }

    /// The identity pinned for `address`: our own for our own devices.
    fn pinned(&self, address: &ProtocolAddress) -> Result<Option<IdentityKey>, SignalProtocolError> {
        let (account, _) = parts_of(address)?;
        if account == self.own_account()? {
            let pair = self.store.identity_key_pair().map_err(callback("identity_key_pair"))?;
            return Ok(Some(*pair.identity_key()));
        }
        match self.store.peer_identity(&account).map_err(callback("peer_identity"))? {
            Some(bytes) => Ok(Some(IdentityKey::decode(&bytes)?)),
            None => Ok(None),
        }
    }
}

#[async_trait(?Send)]
impl IdentityKeyStore for Adapter<'_> {
    async fn get_identity_key_pair(&self) -> Result<IdentityKeyPair, SignalProtocolError> {
        self.store.identity_key_pair().map_err(callback("identity_key_pair"))
    }

    async fn get_local_registration_id(&self) -> Result<u32, SignalProtocolError> {
        self.store.registration_id().map_err(callback("registration_id"))
    }

    async fn save_identity(
        &mut self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> Result<IdentityChange, SignalProtocolError> {
        match self.pinned(address)? {
            // A changed key never replaces the pinned one here: that takes the
            // person's consent, through the core's identity-change flow.
            Some(pinned) => Ok(IdentityChange::from_changed(pinned != *identity)),
            None => {
                self.store
                    .save_peer_identity(&parts_of(address)?.0, &identity.serialize())
                    .map_err(callback("save_peer_identity"))?;
                Ok(IdentityChange::NewOrUnchanged)
            }
        }
    }

    async fn is_trusted_identity(
        &self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
        _direction: Direction,
    ) -> Result<bool, SignalProtocolError> {
        // Trust on first use; after that only the pinned key.
        Ok(self.pinned(address)?.is_none_or(|pinned| pinned == *identity))
    }

    async fn get_identity(&self, address: &ProtocolAddress) -> Result<Option<IdentityKey>, SignalProtocolError> {
        self.pinned(address)
    }
}

#[async_trait(?Send)]
impl SessionStore for Adapter<'_> {
    async fn load_session(&self, address: &ProtocolAddress) -> Result<Option<SessionRecord>, SignalProtocolError> {
        let (account, device) = parts_of(address)?;
        match self.store.session(&account, device).map_err(callback("session"))? {
            Some(bytes) => Ok(Some(SessionRecord::deserialize(&bytes)?)),
            None => Ok(None),
        }
    }

    async fn store_session(
        &mut self,
        address: &ProtocolAddress,
        record: &SessionRecord,
    ) -> Result<(), SignalProtocolError> {
        let (account, device) = parts_of(address)?;
        self.store
            .save_session(&account, device, &record.serialize()?)
            .map_err(callback("save_session"))
    }
}

#[async_trait(?Send)]
impl PreKeyStore for Adapter<'_> {
    // Bundles carry no one-time prekeys (see the prekeys module), so none exist.
    async fn get_pre_key(&self, _id: PreKeyId) -> Result<PreKeyRecord, SignalProtocolError> {
        Err(SignalProtocolError::InvalidPreKeyId)
    }
    async fn save_pre_key(&mut self, _id: PreKeyId, _record: &PreKeyRecord) -> Result<(), SignalProtocolError> {
        Err(SignalProtocolError::InvalidState(
            "save_pre_key",
            "one-time prekeys are not used".into(),
        ))
    }
    async fn remove_pre_key(&mut self, _id: PreKeyId) -> Result<(), SignalProtocolError> {
        Err(SignalProtocolError::InvalidPreKeyId)
    }
}

#[async_trait(?Send)]
impl SignedPreKeyStore for Adapter<'_> {
    async fn get_signed_pre_key(&self, id: SignedPreKeyId) -> Result<SignedPreKeyRecord, SignalProtocolError> {
        let bytes = self
            .store
            .signed_prekey(id.into())
            .map_err(callback("signed_prekey"))?
            .ok_or(SignalProtocolError::InvalidSignedPreKeyId)?;
        SignedPreKeyRecord::deserialize(&bytes)
    }
    async fn save_signed_pre_key(
        &mut self,
        _id: SignedPreKeyId,
        _record: &SignedPreKeyRecord,
    ) -> Result<(), SignalProtocolError> {
        Err(SignalProtocolError::InvalidState(
            "save_signed_pre_key",
            "prekeys are stored by the core".into(),
        ))
    }
}

#[async_trait(?Send)]
impl KyberPreKeyStore for Adapter<'_> {
    async fn get_kyber_pre_key(&self, id: KyberPreKeyId) -> Result<KyberPreKeyRecord, SignalProtocolError> {
        let bytes = self
            .store
            .kyber_prekey(id.into())
            .map_err(callback("kyber_prekey"))?
            .ok_or(SignalProtocolError::InvalidKyberPreKeyId)?;
        KyberPreKeyRecord::deserialize(&bytes)
    }
    async fn save_kyber_pre_key(
        &mut self,
        _id: KyberPreKeyId,
        _record: &KyberPreKeyRecord,
    ) -> Result<(), SignalProtocolError> {
        Err(SignalProtocolError::InvalidState(
            "save_kyber_pre_key",
            "prekeys are stored by the core".into(),
        ))
    }
    async fn mark_kyber_pre_key_used(
        &mut self,
        kyber_id: KyberPreKeyId,
        signed_id: SignedPreKeyId,
        base_key: &PublicKey,
    ) -> Result<(), SignalProtocolError> {
        let first = self
            .store
            .record_kyber_prekey_use(kyber_id.into(), signed_id.into(), &base_key.serialize())
            .map_err(callback("record_kyber_prekey_use"))?;
        if first {
            Ok(())
        } else {
            Err(SignalProtocolError::InvalidMessage(
                libsignal_protocol::CiphertextMessageType::PreKey,
                "replayed session start (Kyber prekey reused with the same base key)",
            ))
        }
    }
}

fn signal_error(account_id: &AccountId, error: SignalProtocolError) -> CryptoError {
    match error {
        SignalProtocolError::DuplicatedMessage(..) => CryptoError::DuplicateMessage,
        SignalProtocolError::UntrustedIdentity(_) => CryptoError::UntrustedIdentity(account_id.to_string()),
        SignalProtocolError::SessionNotFound(_) | SignalProtocolError::NoSenderKeyState { .. } => {
            CryptoError::NoSession(account_id.to_string())
        }
        SignalProtocolError::InvalidMessage(_, reason) => CryptoError::InvalidMessage(reason.to_owned()),
        SignalProtocolError::InvalidProtobufEncoding
        | SignalProtocolError::CiphertextMessageTooShort(_)
        | SignalProtocolError::UnrecognizedMessageVersion(_)
        | SignalProtocolError::LegacyCiphertextVersion(_)
        | SignalProtocolError::UnrecognizedCiphertextVersion(_)
        | SignalProtocolError::BadKeyType(_)
        | SignalProtocolError::BadKeyLength(..)
        | SignalProtocolError::InvalidSignedPreKeyId
        | SignalProtocolError::InvalidKyberPreKeyId
        | SignalProtocolError::InvalidPreKeyId => CryptoError::InvalidMessage(error.to_string()),
        other => CryptoError::Signal(other.to_string()),
    }
}

/// Starts a session with a peer device from its bundle (the PQXDH initiator side), at
/// `now`.
pub fn start_session(
    store: &dyn SignalStore,
    peer_account: &AccountId,
    peer_identity: &IdentityKey,
    bundle: &PrekeyBundle,
    now: SystemTime,
) -> Result<(), CryptoError> {
    let signal_bundle = to_signal_bundle(peer_identity, bundle)?;
    let remote = address(peer_account, bundle.device_id)?;
    let mut sessions = Adapter { store };
    let mut identities = Adapter { store };
    block_on(libsignal_protocol::process_prekey_bundle(
        &remote,
        &mut sessions,
        &mut identities,
        &signal_bundle,
        now,
        &mut rand::rng(),
    ))
    .map_err(|e| signal_error(peer_account, e))
}

/// Whether a session with the device exists (a record whose current session was
/// archived, see [`archive_session`], does not count: the next message starts anew).
pub fn has_session(store: &dyn SignalStore, account_id: &AccountId, device_id: DeviceId) -> Result<bool, CryptoError> {
    match store
        .session(account_id, device_id)
        .map_err(|e| CryptoError::Store(e.0))?
    {
        Some(bytes) => Ok(SessionRecord::deserialize(&bytes)
            .map_err(|e| signal_error(account_id, e))?
            .session_version()
            .is_ok()),
        None => Ok(false),
    }
}

/// Puts the current session with a device aside (it stays among the previous ones,
/// so what is still in flight in it opens): the next message to the device starts
/// a new session from its bundle. For a session the other side reports broken.
pub fn archive_session(
    store: &dyn SignalStore,
    account_id: &AccountId,
    device_id: DeviceId,
) -> Result<(), CryptoError> {
    let Some(bytes) = store
        .session(account_id, device_id)
        .map_err(|e| CryptoError::Store(e.0))?
    else {
        return Ok(());
    };
    let mut record = SessionRecord::deserialize(&bytes).map_err(|e| signal_error(account_id, e))?;
    record
        .archive_current_state()
        .map_err(|e| signal_error(account_id, e))?;
    let bytes = record.serialize().map_err(|e| signal_error(account_id, e))?;
    store
        .save_session(account_id, device_id, &bytes)
        .map_err(|e| CryptoError::Store(e.0))
}

/// The sending chain (the sender's ratchet public key) a ciphertext was made in.
pub fn sending_chain_of(ciphertext: &Ciphertext) -> Result<Vec<u8>, CryptoError> {
    let invalid = |e: SignalProtocolError| CryptoError::InvalidMessage(e.to_string());
    let key = if ciphertext.prekey {
        *PreKeySignalMessage::try_from(&ciphertext.bytes[..])
            .map_err(invalid)?
            .message()
            .sender_ratchet_key()
    } else {
        *SignalMessage::try_from(&ciphertext.bytes[..])
            .map_err(invalid)?
            .sender_ratchet_key()
    };
    Ok(key.serialize().into_vec())
}

/// Whether the session with a device sends in the chain `ratchet_key` now (false
/// once a reply turned the ratchet, or without a session).
pub fn sends_in_chain(
    store: &dyn SignalStore,
    account_id: &AccountId,
    device_id: DeviceId,
    ratchet_key: &[u8],
) -> Result<bool, CryptoError> {
    let Ok(key) = PublicKey::deserialize(ratchet_key) else {
        return Ok(false);
    };
    match store
        .session(account_id, device_id)
        .map_err(|e| CryptoError::Store(e.0))?
    {
        Some(bytes) => SessionRecord::deserialize(&bytes)
            .and_then(|record| record.current_ratchet_key_matches(&key))
            .map_err(|e| signal_error(account_id, e)),
        None => Ok(false),
    }
}

/// Signal's decryption-error message for a ciphertext from device `sender_device`
/// that did not open (it names the sending chain the message was in), as bytes to
/// send back to its sender; `sent_at` is the envelope's time, Unix milliseconds.
pub fn decryption_error(
    ciphertext: &Ciphertext,
    sent_at: u64,
    sender_device: DeviceId,
) -> Result<Vec<u8>, CryptoError> {
    let kind = if ciphertext.prekey {
        libsignal_protocol::CiphertextMessageType::PreKey
    } else {
        libsignal_protocol::CiphertextMessageType::Whisper
    };
    let message = libsignal_protocol::DecryptionErrorMessage::for_original(
        &ciphertext.bytes,
        kind,
        libsignal_protocol::Timestamp::from_epoch_millis(sent_at),
        sender_device.get().into(),
    )
    .map_err(|e| CryptoError::InvalidMessage(e.to_string()))?;
    Ok(message.serialized().to_vec())
}

/// Reads a decryption-error message a device sent back: whether the message it
/// could not open was in the chain the session with it sends in now. If so the
/// session itself is broken on the other side (not merely a chain gone stale), and
/// a new one is needed.
pub fn reports_current_chain(
    store: &dyn SignalStore,
    account_id: &AccountId,
    device_id: DeviceId,
    error: &[u8],
) -> Result<bool, CryptoError> {
    let message = libsignal_protocol::DecryptionErrorMessage::try_from(error)
        .map_err(|e| CryptoError::InvalidMessage(e.to_string()))?;
    match message.ratchet_key() {
        Some(key) => sends_in_chain(store, account_id, device_id, &key.serialize()),
        None => Ok(false),
    }
}

/// A Signal ciphertext and whether it starts a session (PreKeySignalMessage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ciphertext {
    /// True for a PreKeySignalMessage.
    pub prekey: bool,
    /// The serialised message.
    pub bytes: Vec<u8>,
}

/// The identity key a session-starting message (PreKeySignalMessage) was made with.
pub fn prekey_message_identity(bytes: &[u8]) -> Result<IdentityKey, CryptoError> {
    let message = PreKeySignalMessage::try_from(bytes).map_err(|e| CryptoError::InvalidMessage(e.to_string()))?;
    Ok(*message.identity_key())
}

/// Encrypts `plaintext` for one peer device over the existing session, at `now` (a
/// session whose start was never answered goes stale after 30 days).
pub fn encrypt(
    store: &dyn SignalStore,
    account_id: &AccountId,
    device_id: DeviceId,
    plaintext: &[u8],
    now: SystemTime,
) -> Result<Ciphertext, CryptoError> {
    let remote = address(account_id, device_id)?;
    let mut sessions = Adapter { store };
    let mut identities = Adapter { store };
    let message = block_on(libsignal_protocol::message_encrypt(
        plaintext,
        &remote,
        &mut sessions,
        &mut identities,
        now,
        &mut rand::rng(),
    ))
    .map_err(|e| signal_error(account_id, e))?;
    let prekey = matches!(message, CiphertextMessage::PreKeySignalMessage(_));
    Ok(Ciphertext {
        prekey,
        bytes: message.serialize().to_vec(),
    })
}

/// Decrypts a message from a peer device; a new session is created for a
/// PreKeySignalMessage.
pub fn decrypt(
    store: &dyn SignalStore,
    account_id: &AccountId,
    device_id: DeviceId,
    ciphertext: &Ciphertext,
) -> Result<Vec<u8>, CryptoError> {
    let remote = address(account_id, device_id)?;
    let message = if ciphertext.prekey {
        CiphertextMessage::PreKeySignalMessage(
            PreKeySignalMessage::try_from(&ciphertext.bytes[..]).map_err(|e| signal_error(account_id, e))?,
        )
    } else {
        CiphertextMessage::SignalMessage(
            SignalMessage::try_from(&ciphertext.bytes[..]).map_err(|e| signal_error(account_id, e))?,
        )
    };
    let (mut a, mut b, mut c, d, mut e) = (
        Adapter { store },
        Adapter { store },
        Adapter { store },
        Adapter { store },
        Adapter { store },
    );
    block_on(libsignal_protocol::message_decrypt(
        &message,
        &remote,
        &mut a,
        &mut b,
        &mut c,
        &d,
        &mut e,
        &mut rand::rng(),
    ))
    .map_err(|err| signal_error(account_id, err))
}

/// An in-memory [`SignalStore`] for unit tests; the app uses the SQLCipher one.
pub struct MemorySignalStore {
    account_id: AccountId,
    identity: IdentityKeyPair,
    registration_id: u32,
    peers: RefCell<HashMap<AccountId, Vec<u8>>>,
    sessions: RefCell<HashMap<(AccountId, DeviceId), Vec<u8>>>,
    signed_prekeys: HashMap<u32, Vec<u8>>,
    kyber_prekeys: HashMap<u32, Vec<u8>>,
    kyber_uses: RefCell<std::collections::HashSet<(u32, u32, Vec<u8>)>>,
}

impl MemorySignalStore {
    /// A store for a device of `identity` holding the given serialised prekeys.
    pub fn new(
        account_id: &AccountId,
        identity: IdentityKeyPair,
        registration_id: u32,
        signed: &[u8],
        kyber: &[u8],
    ) -> Result<Self, CryptoError> {
        let signal = |e: SignalProtocolError| CryptoError::Signal(e.to_string());
        let (signed_id, kyber_id) = (
            SignedPreKeyRecord::deserialize(signed)
                .and_then(|r| r.id())
                .map_err(signal)?,
            KyberPreKeyRecord::deserialize(kyber)
                .and_then(|r| r.id())
                .map_err(signal)?,
        );
        Ok(Self {
            account_id: account_id.clone(),
            identity,
            registration_id,
            peers: RefCell::default(),
            sessions: RefCell::default(),
            signed_prekeys: HashMap::from([(signed_id.into(), signed.to_vec())]),
            kyber_prekeys: HashMap::from([(kyber_id.into(), kyber.to_vec())]),
            kyber_uses: RefCell::default(),
        })
    }
}

impl SignalStore for MemorySignalStore {
    fn account_id(&self) -> StoreResult<AccountId> {
        Ok(self.account_id.clone())
    }
    fn identity_key_pair(&self) -> StoreResult<IdentityKeyPair> {
        Ok(self.identity)
    }
    fn registration_id(&self) -> StoreResult<u32> {
        Ok(self.registration_id)
    }
    fn peer_identity(&self, account_id: &AccountId) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.peers.borrow().get(account_id).cloned())
    }
    fn save_peer_identity(&self, account_id: &AccountId, identity_key: &[u8]) -> StoreResult<()> {
        self.peers
            .borrow_mut()
            .insert(account_id.clone(), identity_key.to_vec());
        Ok(())
    }
    fn session(&self, account_id: &AccountId, device_id: DeviceId) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.sessions.borrow().get(&(account_id.clone(), device_id)).cloned())
    }
    fn save_session(&self, account_id: &AccountId, device_id: DeviceId, record: &[u8]) -> StoreResult<()> {
        self.sessions
            .borrow_mut()
            .insert((account_id.clone(), device_id), record.to_vec());
        Ok(())
    }
    fn signed_prekey(&self, id: u32) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.signed_prekeys.get(&id).cloned())
    }
    fn kyber_prekey(&self, id: u32) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.kyber_prekeys.get(&id).cloned())
    }
    fn record_kyber_prekey_use(&self, kyber_id: u32, signed_id: u32, base_key: &[u8]) -> StoreResult<bool> {
        Ok(self
            .kyber_uses
            .borrow_mut()
            .insert((kyber_id, signed_id, base_key.to_vec())))
    }
}
