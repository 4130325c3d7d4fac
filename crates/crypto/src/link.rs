//! The device-link handshake: Noise `NNpsk0` keyed by the offer's one-time secret, so
//! only a device that read the offer (from the screen) can complete it; then a
//! channel that carries what the existing device hands over. Both screens show a
//! short code from the handshake hash: a device that got the secret some other way
//! (a photo of the screen) shows a different code, or none.
//!
//! Sans-IO: calls take the bytes from the wire and return the bytes for it.

use snow::{Builder, HandshakeState, TransportState};

use crate::CryptoError;

/// The Noise protocol the link handshake runs.
pub const LINK_NOISE_PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";
/// Largest plaintext one channel frame carries (Noise's 65,535-byte message less the tag).
pub const MAX_LINK_FRAME: usize = 65_535 - 16;

fn link_error(what: &str, e: impl std::fmt::Display) -> CryptoError {
    CryptoError::Link(format!("{what}: {e}"))
}

fn builder<'a>() -> Result<Builder<'a>, CryptoError> {
    Ok(Builder::new(
        LINK_NOISE_PATTERN.parse().map_err(|e| link_error("pattern", e))?,
    ))
}

/// The new device's side, between its first message and the answer.
pub struct LinkInitiator {
    handshake: HandshakeState,
}

impl LinkInitiator {
    /// Starts a handshake with the offer's secret: returns the state and the first
    /// message for the existing device.
    pub fn start(secret: &[u8; 32]) -> Result<(Self, Vec<u8>), CryptoError> {
        let mut handshake = builder()?
            .psk(0, secret)
            .map_err(|e| link_error("psk", e))?
            .build_initiator()
            .map_err(|e| link_error("initiator", e))?;
        let mut first = vec![0; 256];
        let len = handshake
            .write_message(&[], &mut first)
            .map_err(|e| link_error("first message", e))?;
        first.truncate(len);
        Ok((Self { handshake }, first))
    }

    /// Reads the existing device's answer: the channel is up.
    pub fn finish(mut self, answer: &[u8]) -> Result<LinkChannel, CryptoError> {
        let mut payload = vec![0; answer.len()];
        self.handshake
            .read_message(answer, &mut payload)
            .map_err(|_| CryptoError::Link("the answer does not come from the offering device".into()))?;
        LinkChannel::from(self.handshake)
    }
}

/// The existing device's side: reads the new device's first message with the
/// secret of its offer, and returns the channel and the answer to send.
pub fn answer_link(secret: &[u8; 32], first: &[u8]) -> Result<(LinkChannel, Vec<u8>), CryptoError> {
    let mut handshake = builder()?
        .psk(0, secret)
        .map_err(|e| link_error("psk", e))?
        .build_responder()
        .map_err(|e| link_error("responder", e))?;
    let mut payload = vec![0; first.len()];
    handshake
        .read_message(first, &mut payload)
        .map_err(|_| CryptoError::Link("the handshake was not made with this offer's secret".into()))?;
    let mut answer = vec![0; 256];
    let len = handshake
        .write_message(&[], &mut answer)
        .map_err(|e| link_error("answer", e))?;
    answer.truncate(len);
    Ok((LinkChannel::from(handshake)?, answer))
}

/// The encrypted channel between the two devices after the handshake.
pub struct LinkChannel {
    transport: TransportState,
    code: String,
}

impl LinkChannel {
    fn from(handshake: HandshakeState) -> Result<Self, CryptoError> {
        let hash = handshake.get_handshake_hash();
        let number = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]) % 1_000_000;
        let code = format!("{:03} {:03}", number / 1000, number % 1000);
        let transport = handshake
            .into_transport_mode()
            .map_err(|e| link_error("transport", e))?;
        Ok(Self { transport, code })
    }

    /// The six-digit code both screens show ("123 456").
    pub fn confirmation_code(&self) -> &str {
        &self.code
    }

    /// Encrypts one frame (at most [`MAX_LINK_FRAME`] bytes).
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if plaintext.len() > MAX_LINK_FRAME {
            return Err(CryptoError::Link(format!(
                "a frame of {} bytes is over {MAX_LINK_FRAME}",
                plaintext.len()
            )));
        }
        let mut frame = vec![0; plaintext.len() + 16];
        let len = self
            .transport
            .write_message(plaintext, &mut frame)
            .map_err(|e| link_error("seal", e))?;
        frame.truncate(len);
        Ok(frame)
    }

    /// Decrypts one frame; a frame altered, replayed or out of order is refused.
    pub fn open(&mut self, frame: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if frame.len() > MAX_LINK_FRAME + 16 {
            return Err(CryptoError::Link("a frame over the size limit".into()));
        }
        let mut plaintext = vec![0; frame.len()];
        let len = self
            .transport
            .read_message(frame, &mut plaintext)
            .map_err(|_| CryptoError::Link("a frame that does not open".into()))?;
        plaintext.truncate(len);
        Ok(plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_devices_with_the_secret_get_a_channel_and_the_same_code() {
        let secret = [42; 32];
        let (new_device, first) = LinkInitiator::start(&secret).unwrap();
        let (mut existing, answer) = answer_link(&secret, &first).unwrap();
        let mut new_device = new_device.finish(&answer).unwrap();
        assert_eq!(new_device.confirmation_code(), existing.confirmation_code());
        assert_eq!(new_device.confirmation_code().len(), 7);
        let frame = existing.seal(b"the account identity").unwrap();
        assert_eq!(new_device.open(&frame).unwrap(), b"the account identity");
        let back = new_device.seal(b"my card").unwrap();
        assert_eq!(existing.open(&back).unwrap(), b"my card");
    }

    #[test]
    fn a_wrong_secret_a_tampered_message_or_a_replayed_frame_is_refused() {
        let (_, first) = LinkInitiator::start(&[1; 32]).unwrap();
        assert!(matches!(answer_link(&[2; 32], &first), Err(CryptoError::Link(_))));
        let mut tampered = first.clone();
        tampered[40] ^= 1;
        assert!(answer_link(&[1; 32], &tampered).is_err());
        assert!(answer_link(&[1; 32], &[]).is_err());

        let (new_device, first) = LinkInitiator::start(&[1; 32]).unwrap();
        let (mut existing, answer) = answer_link(&[1; 32], &first).unwrap();
        let mut new_device = new_device.finish(&answer).unwrap();
        let frame = existing.seal(b"once").unwrap();
        assert!(new_device.open(&frame).is_ok());
        assert!(new_device.open(&frame).is_err(), "a replay does not open");
        assert!(existing.seal(&vec![0; MAX_LINK_FRAME + 1]).is_err());
    }
}
