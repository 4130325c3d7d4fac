//! Signing and checking device lists.
//!
//! A receiver accepts a list only if the account identity key named inside it signed
//! its exact bytes; refusing a version that goes backwards needs the receiver's
//! memory and is done by the caller.

use cairn_proto::{DeviceList, SignedDeviceList};
use libsignal_protocol::IdentityKey;

use crate::{AccountIdentity, CryptoError};

/// Signs `list` with the account identity key.
pub fn sign_device_list(identity: &AccountIdentity, list: &DeviceList) -> Result<SignedDeviceList, CryptoError> {
    let bytes = list.to_bytes();
    let signature = identity
        .key_pair()
        .private_key()
        .calculate_signature(&bytes, &mut rand::rng())
        .map_err(|e| CryptoError::Signal(e.to_string()))?;
    Ok(SignedDeviceList {
        list: bytes,
        signature: signature.into_vec(),
    })
}

/// Decodes a signed list and checks its signature; returns the list and the
/// identity key that signed it.
pub fn verify_device_list(signed: &SignedDeviceList) -> Result<(DeviceList, IdentityKey), CryptoError> {
    let list = DeviceList::from_bytes(&signed.list)?;
    let identity = IdentityKey::decode(&list.identity_key).map_err(|e| CryptoError::InvalidKey {
        what: "account identity",
        reason: e.to_string(),
    })?;
    if !identity.public_key().verify_signature(&signed.list, &signed.signature) {
        return Err(CryptoError::BadSignature("device list"));
    }
    Ok((list, identity))
}
