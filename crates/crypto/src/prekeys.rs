//! A device's prekeys: the signed EC prekey and the signed Kyber last-resort prekey
//! that make up its PQXDH bundle, and the conversion of a received bundle into the
//! Signal library's form.
//!
//! There is no server to hand out one-time prekeys, so bundles carry none: an invite
//! link may be used by several people, and a one-time key used twice would fail the
//! second session. Security rests on the signed prekey (rotated on a schedule) and
//! the Kyber last-resort key, whose every use is recorded so a replayed session
//! start is refused.

use std::time::{SystemTime, UNIX_EPOCH};

use cairn_proto::PrekeyBundle;
use libsignal_protocol::{
    kem, DeviceId, GenericSignedPreKey, IdentityKey, KeyPair, KyberPreKeyRecord, PreKeyBundle, PublicKey,
    SignedPreKeyRecord, Timestamp,
};

use crate::{AccountIdentity, CryptoError, DeviceKeys};

/// How long a signed prekey is used before a new one replaces it.
pub const SIGNED_PREKEY_ROTATION_MILLIS: u64 = 7 * 24 * 3600 * 1000;

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn signal(e: libsignal_protocol::SignalProtocolError) -> CryptoError {
    CryptoError::Signal(e.to_string())
}

/// A fresh signed EC prekey with the given id, made at `now` and signed by the account
/// identity key, as a serialised record (what the store keeps).
pub fn generate_signed_prekey(identity: &AccountIdentity, id: u32, now: SystemTime) -> Result<Vec<u8>, CryptoError> {
    let mut rng = rand::rng();
    let pair = KeyPair::generate(&mut rng);
    let signature = identity
        .key_pair()
        .private_key()
        .calculate_signature(&pair.public_key.serialize(), &mut rng)
        .map_err(|e| CryptoError::Signal(e.to_string()))?;
    SignedPreKeyRecord::new(id.into(), Timestamp::from_epoch_millis(millis(now)), &pair, &signature)
        .serialize()
        .map_err(signal)
}

/// A fresh Kyber-1024 last-resort prekey with the given id, signed by the identity
/// key, as a serialised record.
pub fn generate_kyber_prekey(identity: &AccountIdentity, id: u32) -> Result<Vec<u8>, CryptoError> {
    KyberPreKeyRecord::generate(kem::KeyType::Kyber1024, id.into(), identity.key_pair().private_key())
        .and_then(|record| record.serialize())
        .map_err(signal)
}

/// Whether a serialised signed prekey is old enough at `now` to be replaced.
pub fn signed_prekey_due(record: &[u8], now: SystemTime) -> Result<bool, CryptoError> {
    let record = SignedPreKeyRecord::deserialize(record).map_err(signal)?;
    let created = record.timestamp().map_or(0, |t| t.epoch_millis());
    Ok(millis(now).saturating_sub(created) >= SIGNED_PREKEY_ROTATION_MILLIS)
}

/// The public bundle other devices start sessions from, made from this device's
/// serialised prekey records.
pub fn bundle_of(device: &DeviceKeys, signed: &[u8], kyber: &[u8]) -> Result<PrekeyBundle, CryptoError> {
    let signed = SignedPreKeyRecord::deserialize(signed).map_err(signal)?;
    let kyber = KyberPreKeyRecord::deserialize(kyber).map_err(signal)?;
    Ok(PrekeyBundle {
        device_id: device.device_id(),
        registration_id: device.registration_id(),
        signed_prekey_id: signed.id().map_err(signal)?.into(),
        signed_prekey: signed.public_key().map_err(signal)?.serialize().into_vec(),
        signed_prekey_signature: signed.signature().map_err(signal)?,
        kyber_prekey_id: kyber.id().map_err(signal)?.into(),
        kyber_prekey: kyber.public_key().map_err(signal)?.serialize().into_vec(),
        kyber_prekey_signature: kyber.signature().map_err(signal)?,
    })
}

/// Turns a received bundle into the Signal library's form. Signatures are checked
/// here, against the identity key the bundle claims to belong to.
pub fn to_signal_bundle(identity_key: &IdentityKey, bundle: &PrekeyBundle) -> Result<PreKeyBundle, CryptoError> {
    let invalid = |what: &'static str| move |e: String| CryptoError::InvalidKey { what, reason: e };
    let signed = PublicKey::deserialize(&bundle.signed_prekey).map_err(|e| invalid("signed prekey")(e.to_string()))?;
    let kyber =
        kem::PublicKey::deserialize(&bundle.kyber_prekey).map_err(|e| invalid("kyber prekey")(e.to_string()))?;
    let key = identity_key.public_key();
    if !key.verify_signature(&bundle.signed_prekey, &bundle.signed_prekey_signature)
        || !key.verify_signature(&bundle.kyber_prekey, &bundle.kyber_prekey_signature)
    {
        return Err(CryptoError::BadSignature("prekey bundle"));
    }
    let device_id =
        DeviceId::new(bundle.device_id.get()).map_err(|_| CryptoError::InvalidDeviceId(bundle.device_id.get()))?;
    PreKeyBundle::new(
        bundle.registration_id,
        device_id,
        None,
        bundle.signed_prekey_id.into(),
        signed,
        bundle.signed_prekey_signature.clone(),
        bundle.kyber_prekey_id.into(),
        kyber,
        bundle.kyber_prekey_signature.clone(),
        *identity_key,
    )
    .map_err(|e| CryptoError::Signal(e.to_string()))
}
