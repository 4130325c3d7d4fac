//! The cryptography openmls asks of its provider, for the one ciphersuite Cairn's
//! groups use (`MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`), on RustCrypto crates
//! and the `hpke` crate (RFC 9180).
//!
//! Why not `openmls_rust_crypto`: its HPKE (hpke-rs 0.7, which pins libcrux-sha3 0.0.10
//! and so hax-lib ^0.3.7) cannot be built beside libsignal's (hpke-rs 0.4, which pins
//! hax-lib =0.3.5): cargo allows one hax-lib 0.3. This provider depends on neither.
//! Everything else a group uses (SHA-384/512, other AEADs and KEMs) is refused as
//! unsupported, so a group cannot drift to a suite it does not implement.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use hkdf::{Hkdf, SimpleHkdf};
use hmac::{Hmac, Mac};
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable as _, Kem as _, OpModeR, OpModeS, Serializable as _};
use openmls::prelude::tls_codec::SecretVLBytes;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeAeadType, HpkeCiphertext, HpkeConfig,
    HpkeKdfType, HpkeKemType, HpkeKeyPair, KemOutput, SignatureScheme,
};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::group::GROUP_CIPHERSUITE;

type HpkeKdf = hpke::kdf::HkdfSha256;
type HpkeAead = hpke::aead::AesGcm128;

/// Cairn's openmls crypto and randomness (the system's random number generator).
#[derive(Debug, Default, Clone, Copy)]
pub struct GroupCrypto;

/// The random number generator failed (the system's never does: it panics instead,
/// as `rand` documents; the type is what openmls asks for).
#[derive(Debug, thiserror::Error)]
#[error("the random number generator failed")]
pub struct RandomnessError;

impl OpenMlsRand for GroupCrypto {
    type Error = RandomnessError;

    fn random_array<const N: usize>(&self) -> Result<[u8; N], Self::Error> {
        let mut out = [0u8; N];
        rand::rng().fill_bytes(&mut out);
        Ok(out)
    }

    fn random_vec(&self, len: usize) -> Result<Vec<u8>, Self::Error> {
        let mut out = vec![0u8; len];
        rand::rng().fill_bytes(&mut out);
        Ok(out)
    }
}

fn sha256_only(hash: HashType) -> Result<(), CryptoError> {
    match hash {
        HashType::Sha2_256 => Ok(()),
        _ => Err(CryptoError::UnsupportedHashAlgorithm),
    }
}

fn our_hpke(config: &HpkeConfig) -> Result<(), CryptoError> {
    match config {
        HpkeConfig(HpkeKemType::DhKem25519, HpkeKdfType::HkdfSha256, HpkeAeadType::AesGcm128) => Ok(()),
        _ => Err(CryptoError::UnsupportedCiphersuite),
    }
}

fn hpke_public(bytes: &[u8]) -> Result<<X25519HkdfSha256 as hpke::Kem>::PublicKey, CryptoError> {
    <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(bytes).map_err(|_| CryptoError::InvalidLength)
}

fn hpke_private(bytes: &[u8]) -> Result<<X25519HkdfSha256 as hpke::Kem>::PrivateKey, CryptoError> {
    <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(bytes).map_err(|_| CryptoError::InvalidLength)
}

fn hpke_encapped(bytes: &[u8]) -> Result<<X25519HkdfSha256 as hpke::Kem>::EncappedKey, CryptoError> {
    <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(bytes).map_err(|_| CryptoError::InvalidLength)
}

impl OpenMlsCrypto for GroupCrypto {
    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        if ciphersuite == GROUP_CIPHERSUITE {
            Ok(())
        } else {
            Err(CryptoError::UnsupportedCiphersuite)
        }
    }

    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        vec![GROUP_CIPHERSUITE]
    }

    fn hkdf_extract(&self, hash: HashType, salt: &[u8], ikm: &[u8]) -> Result<SecretVLBytes, CryptoError> {
        sha256_only(hash)?;
        let (prk, _) = Hkdf::<Sha256>::extract(Some(salt), ikm);
        Ok(prk.as_slice().into())
    }

    fn hmac(&self, hash: HashType, key: &[u8], message: &[u8]) -> Result<SecretVLBytes, CryptoError> {
        sha256_only(hash)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| CryptoError::InvalidLength)?;
        mac.update(message);
        Ok(mac.finalize().into_bytes().as_slice().into())
    }

    fn hkdf_expand(
        &self,
        hash: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        sha256_only(hash)?;
        let hkdf = SimpleHkdf::<Sha256>::from_prk(prk).map_err(|_| CryptoError::HkdfOutputLengthInvalid)?;
        let mut okm = vec![0u8; okm_len];
        hkdf.expand(info, &mut okm)
            .map_err(|_| CryptoError::HkdfOutputLengthInvalid)?;
        Ok(okm.into())
    }

    fn hash(&self, hash: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        sha256_only(hash)?;
        Ok(Sha256::digest(data).to_vec())
    }

    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if nonce.len() != 12 {
            return Err(CryptoError::InvalidLength);
        }
        let payload = Payload { msg: data, aad };
        let nonce = Nonce::from_slice(nonce);
        match alg {
            AeadType::Aes128Gcm => Aes128Gcm::new_from_slice(key)
                .map_err(|_| CryptoError::InvalidLength)?
                .encrypt(nonce, payload),
            AeadType::Aes256Gcm => Aes256Gcm::new_from_slice(key)
                .map_err(|_| CryptoError::InvalidLength)?
                .encrypt(nonce, payload),
            AeadType::ChaCha20Poly1305 => return Err(CryptoError::UnsupportedAeadAlgorithm),
        }
        .map_err(|_| CryptoError::CryptoLibraryError)
    }

    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if nonce.len() != 12 {
            return Err(CryptoError::InvalidLength);
        }
        let payload = Payload { msg: ct_tag, aad };
        let nonce = Nonce::from_slice(nonce);
        match alg {
            AeadType::Aes128Gcm => Aes128Gcm::new_from_slice(key)
                .map_err(|_| CryptoError::InvalidLength)?
                .decrypt(nonce, payload),
            AeadType::Aes256Gcm => Aes256Gcm::new_from_slice(key)
                .map_err(|_| CryptoError::InvalidLength)?
                .decrypt(nonce, payload),
            AeadType::ChaCha20Poly1305 => return Err(CryptoError::UnsupportedAeadAlgorithm),
        }
        .map_err(|_| CryptoError::AeadDecryptionError)
    }

    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        if alg != SignatureScheme::ED25519 {
            return Err(CryptoError::UnsupportedSignatureScheme);
        }
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(seed.as_mut());
        let key = SigningKey::from_bytes(&seed);
        Ok((key.to_bytes().to_vec(), key.verifying_key().to_bytes().to_vec()))
    }

    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        if alg != SignatureScheme::ED25519 {
            return Err(CryptoError::UnsupportedSignatureScheme);
        }
        let key = VerifyingKey::try_from(pk).map_err(|_| CryptoError::CryptoLibraryError)?;
        let signature = ed25519_dalek::Signature::from_slice(signature).map_err(|_| CryptoError::InvalidSignature)?;
        key.verify_strict(data, &signature)
            .map_err(|_| CryptoError::InvalidSignature)
    }

    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if alg != SignatureScheme::ED25519 {
            return Err(CryptoError::UnsupportedSignatureScheme);
        }
        let key = SigningKey::try_from(key).map_err(|_| CryptoError::CryptoLibraryError)?;
        Ok(key.sign(data).to_bytes().to_vec())
    }

    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        our_hpke(&config)?;
        let (encapped, ciphertext) = hpke::single_shot_seal::<HpkeAead, HpkeKdf, X25519HkdfSha256, _>(
            &OpModeS::Base,
            &hpke_public(pk_r)?,
            info,
            ptxt,
            aad,
            &mut rand::rng(),
        )
        .map_err(|_| CryptoError::HpkeEncryptionError)?;
        Ok(HpkeCiphertext {
            kem_output: encapped.to_bytes().to_vec().into(),
            ciphertext: ciphertext.into(),
        })
    }

    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        our_hpke(&config)?;
        hpke::single_shot_open::<HpkeAead, HpkeKdf, X25519HkdfSha256>(
            &OpModeR::Base,
            &hpke_private(sk_r)?,
            &hpke_encapped(input.kem_output.as_slice())?,
            info,
            input.ciphertext.as_slice(),
            aad,
        )
        .map_err(|_| CryptoError::HpkeDecryptionError)
    }

    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        our_hpke(&config)?;
        let (encapped, context) = hpke::setup_sender::<HpkeAead, HpkeKdf, X25519HkdfSha256, _>(
            &OpModeS::Base,
            &hpke_public(pk_r)?,
            info,
            &mut rand::rng(),
        )
        .map_err(|_| CryptoError::HpkeEncryptionError)?;
        let mut secret = vec![0u8; exporter_length];
        context
            .export(exporter_context, &mut secret)
            .map_err(|_| CryptoError::InvalidLength)?;
        Ok((encapped.to_bytes().to_vec(), secret.into()))
    }

    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        our_hpke(&config)?;
        let context = hpke::setup_receiver::<HpkeAead, HpkeKdf, X25519HkdfSha256>(
            &OpModeR::Base,
            &hpke_private(sk_r)?,
            &hpke_encapped(enc)?,
            info,
        )
        .map_err(|_| CryptoError::HpkeDecryptionError)?;
        let mut secret = vec![0u8; exporter_length];
        context
            .export(exporter_context, &mut secret)
            .map_err(|_| CryptoError::InvalidLength)?;
        Ok(secret.into())
    }

    fn derive_hpke_keypair(&self, config: HpkeConfig, ikm: &[u8]) -> Result<HpkeKeyPair, CryptoError> {
        our_hpke(&config)?;
        let (private, public) = X25519HkdfSha256::derive_keypair(ikm);
        Ok(HpkeKeyPair {
            private: private.to_bytes().to_vec().into(),
            public: public.to_bytes().to_vec(),
        })
    }
}
