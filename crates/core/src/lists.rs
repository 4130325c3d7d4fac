//! Device lists: this account's (adopting a newer one, noting the devices it drops)
//! and the contacts' as stored, with the devices each names and the key that signed
//! it. A stored list's signature is checked once per distinct list, not per envelope.

use cairn_crypto::{verify_device_list, IdentityKey};
use cairn_proto::{decode_versioned, encode_versioned, AccountId, DeviceEntry, DeviceId, DeviceList, SignedDeviceList};

use crate::messenger::{Messenger, MAX_STORED_RECORD};
use crate::{CoreError, Result};

/// Signed device lists whose signature was checked, by their encoding: a list read
/// from the store is checked once per run, not once per envelope (it was checked when
/// it arrived; the key is the list itself, so nothing can go stale).
#[derive(Default)]
pub(crate) struct VerifiedLists(std::cell::RefCell<std::collections::HashMap<Vec<u8>, (DeviceList, IdentityKey)>>);

/// Most lists kept checked (far more than contacts × versions in use).
const MAX_VERIFIED_LISTS: usize = 4096;

impl Messenger {
    /// This account's signed device list.
    pub(crate) fn own_device_list(&self) -> Result<SignedDeviceList> {
        let bytes = self.db().own().device_list()?.ok_or(CoreError::NoAccount)?;
        Ok(decode_versioned(&bytes, MAX_STORED_RECORD)?)
    }

    /// This account's device list, as stored (and checked).
    pub(crate) fn own_list(&self) -> Result<DeviceList> {
        let bytes = self.db().own().device_list()?.ok_or(CoreError::NoAccount)?;
        Ok(self.stored_list(&bytes)?.0)
    }

    /// A signed device list as the store keeps it (encoded), decoded and checked, and
    /// the key that signed it; checked once per distinct list.
    pub(crate) fn stored_list(&self, encoded: &[u8]) -> Result<(DeviceList, IdentityKey)> {
        if let Some(verified) = self.verified_lists().0.borrow().get(encoded) {
            return Ok(verified.clone());
        }
        let signed: SignedDeviceList = decode_versioned(encoded, MAX_STORED_RECORD)?;
        let verified = verify_device_list(&signed)?;
        let mut lists = self.verified_lists().0.borrow_mut();
        if lists.len() >= MAX_VERIFIED_LISTS {
            lists.clear();
        }
        lists.insert(encoded.to_vec(), verified.clone());
        Ok(verified)
    }

    /// Adopts a signed list for this account if it is ours and newer.
    pub(crate) fn adopt_own_device_list(&self, signed: &SignedDeviceList) -> Result<DeviceList> {
        let (list, identity) = verify_device_list(signed)?;
        let account = self.account()?;
        if identity != *account.identity().public_key() || list.account_id != account.id() {
            return Err(CoreError::NotOurAccount);
        }
        let mut previous = None;
        if let Ok(current) = self.own_device_list() {
            if current == *signed {
                return Ok(list);
            }
            let (current, _) = verify_device_list(&current)?;
            // Two different lists at one version (two links granted at once) must not
            // replace each other silently.
            if list.version <= current.version {
                return Err(CoreError::DeviceListRollback {
                    have: current.version,
                    got: list.version,
                });
            }
            previous = Some(current);
        }
        self.db()
            .own()
            .save_device_list(&encode_versioned(signed), list.version)?;
        self.note_device_list(account.id(), previous.as_ref(), &list)?;
        Ok(list)
    }

    /// Takes note of `account_id`'s newest device `list`: the sessions, bundles and
    /// key packages of devices it does not name are forgotten, and the devices that
    /// the `previous` list named and this one drops are marked retired (their group
    /// leaves are to go; see `remove_unlisted_leaves`) and lose what was queued for
    /// them. A device the list names is not retired.
    pub(crate) fn note_device_list(
        &self,
        account_id: &AccountId,
        previous: Option<&DeviceList>,
        list: &DeviceList,
    ) -> Result<()> {
        let listed: Vec<DeviceId> = list.devices.iter().map(|d| d.device_id).collect();
        let forgotten = self.db().contacts().forget_unlisted_devices(account_id, &listed)?;
        if forgotten > 0 {
            tracing::info!(%account_id, forgotten, "forgot what was kept for removed devices");
        }
        let dropped: Vec<DeviceId> = previous
            .map(|p| {
                p.devices
                    .iter()
                    .map(|d| d.device_id)
                    .filter(|id| !listed.contains(id))
                    .collect()
            })
            .unwrap_or_default();
        self.db().contacts().retire_devices(account_id, &dropped)?;
        self.db().outbox().drop_queued_for(account_id, &dropped)?;
        self.db().contacts().unretire_devices(account_id, &listed)?;
        Ok(())
    }

    /// The devices of `account_id` (a contact, or this account's other devices) with
    /// the identity key their envelopes are sealed to.
    pub(crate) fn devices_of(&self, account_id: &AccountId) -> Result<(IdentityKey, Vec<DeviceEntry>)> {
        let account = self.account()?;
        if account_id == account.id() {
            let list = self.own_list()?;
            let others = list
                .devices
                .into_iter()
                .filter(|d| d.device_id != account.device().device_id())
                .collect();
            return Ok((*account.identity().public_key(), others));
        }
        let contact = self
            .db()
            .contacts()
            .get(account_id)?
            .ok_or_else(|| CoreError::UnknownContact(account_id.into()))?;
        let (list, identity) = self.stored_list(&contact.device_list)?;
        // A list signed by a key other than the pinned one (left from before an
        // accepted identity change) names no device we may seal to.
        let pinned = self
            .db()
            .contacts()
            .pinned_identity(account_id)?
            .map(|p| p.identity_key);
        if pinned.as_deref() != Some(&identity.serialize()[..]) {
            return Ok((identity, Vec::new()));
        }
        Ok((identity, list.devices))
    }
}
