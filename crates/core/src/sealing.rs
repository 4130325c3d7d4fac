//! Sealing: turning padded content into an envelope for one device — a Signal
//! session with it (started from its stored bundle when there is none, or anew when
//! the one there went stale), then the sealed-sender layer to its account's identity
//! key, addressed to its mailbox.

use cairn_crypto::{mailbox_of, seal, Ciphertext, CryptoError, IdentityKey};
use cairn_proto::{decode_versioned, AccountId, Content, DeviceEntry, DeviceId, Envelope, PrekeyBundle, SealedInner};

use crate::messenger::{Messenger, MAX_STORED_RECORD};
use crate::{CoreError, Outgoing, Result};

impl Messenger {
    /// Seals `content` for one device of `account_id` now, outside the outbox: for
    /// what is only worth sending at once (direct-session signaling) or must be sealed
    /// before the state it is made in changes.
    pub(crate) fn seal_now(&self, account_id: &AccountId, device_id: DeviceId, content: &Content) -> Result<Outgoing> {
        let (identity, devices) = self.devices_of(account_id)?;
        let device = devices
            .iter()
            .find(|d| d.device_id == device_id)
            .ok_or_else(|| CoreError::NoReachableDevice(account_id.to_owned()))?;
        self.envelope_to_entry(account_id, &identity, device, &content.to_padded_bytes())?
            .map(|(outgoing, _)| outgoing)
            .ok_or_else(|| CoreError::NoReachableDevice(account_id.to_owned()))
    }

    /// Seals padded `plaintext` for one device of `account_id`, starting a session
    /// from its stored bundle if there is none yet (or if the one there went stale: its
    /// start was never answered in 30 days); `None` if it has neither. With the
    /// envelope comes the sending chain it was sealed in.
    pub(crate) fn envelope_to_entry(
        &self,
        account_id: &AccountId,
        identity: &IdentityKey,
        device: &DeviceEntry,
        plaintext: &[u8],
    ) -> Result<Option<(Outgoing, Option<Vec<u8>>)>> {
        let mut fresh = false;
        let ciphertext = loop {
            if !cairn_crypto::has_session(self.db(), account_id, device.device_id)? {
                if !self.start_session_from_bundle(account_id, identity, device.device_id)? {
                    return Ok(None);
                }
                fresh = true;
            }
            match cairn_crypto::encrypt(self.db(), account_id, device.device_id, plaintext, self.now()) {
                Ok(ciphertext) => break ciphertext,
                Err(CryptoError::NoSession(_)) if !fresh => {
                    tracing::info!(
                        %account_id,
                        device = %device.device_id,
                        "a stale session; starting a new one"
                    );
                    cairn_crypto::archive_session(self.db(), account_id, device.device_id)?;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let chain = cairn_crypto::sending_chain_of(&ciphertext).ok();
        Ok(Some((self.seal_for(account_id, identity, device, ciphertext)?, chain)))
    }

    /// Starts a session with a device from its stored bundle; false if there is none
    /// or it does not work (one bad bundle must not cut the account's other devices
    /// off).
    fn start_session_from_bundle(
        &self,
        account_id: &AccountId,
        identity: &IdentityKey,
        device_id: DeviceId,
    ) -> Result<bool> {
        let bundles = self.db().contacts().bundles(account_id)?;
        let Some((_, bytes)) = bundles.iter().find(|(id, _)| *id == device_id) else {
            tracing::debug!(%account_id, device = %device_id, "no session or bundle yet");
            return Ok(false);
        };
        let started = decode_versioned::<PrekeyBundle>(bytes, MAX_STORED_RECORD)
            .map_err(CoreError::from)
            .and_then(|bundle| {
                Ok(cairn_crypto::start_session(
                    self.db(),
                    account_id,
                    identity,
                    &bundle,
                    self.now(),
                )?)
            });
        if let Err(e) = &started {
            tracing::warn!(%account_id, device = %device_id, %e, "skipping a device whose bundle fails");
        }
        Ok(started.is_ok())
    }

    /// Wraps a Signal ciphertext in the sealed-sender layer to `identity` (the
    /// recipient account's key) and addresses it to `device`'s mailbox.
    fn seal_for(
        &self,
        account_id: &AccountId,
        identity: &IdentityKey,
        device: &DeviceEntry,
        ciphertext: Ciphertext,
    ) -> Result<Outgoing> {
        let account = self.account()?;
        let inner = SealedInner {
            sender_account: account.id().to_owned(),
            sender_identity: account.identity().public_key().serialize().into_vec(),
            sender_device: account.device().device_id(),
            prekey: ciphertext.prekey,
            message: ciphertext.bytes,
        };
        let envelope = Envelope {
            mailbox: mailbox_of(&device.transport_key),
            created: self.now_secs(),
            ttl: self.message_ttl_days()? * 86_400,
            pow: 0,
            body: seal(identity, &inner)?.to_bytes(),
        };
        Ok(Outgoing {
            account_id: account_id.to_owned(),
            device_id: device.device_id,
            envelope,
            message: None,
        })
    }
}
