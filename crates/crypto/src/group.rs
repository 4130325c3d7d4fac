//! MLS groups (RFC 9420) through `openmls`: one leaf per device, so every device of
//! every member holds the group's keys, and they change with every membership change.
//!
//! Owns: a device's group identity (an Ed25519 signature key and a basic credential
//! naming the account and device), key packages, and the group operations — create,
//! add, remove, send, receive, join from a Welcome — as calls that take bytes from the
//! wire and return bytes for it. Does not own: where the group state lives (openmls's
//! `StorageProvider`, which the store crate implements over the profile database, and
//! `openmls_memory_storage` in tests) or how messages travel.

use crate::{AccountId, DeviceId};
use std::collections::HashMap;

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_memory_storage::MemoryStorage;
use openmls_traits::storage::{StorageProvider, CURRENT_VERSION};
use zeroize::Zeroizing;

use crate::mls_crypto::GroupCrypto;
use crate::CryptoError;

/// The one ciphersuite Cairn's groups use: X25519, AES-128-GCM, SHA-256, Ed25519.
pub const GROUP_CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Largest group message accepted from the wire.
pub const MAX_GROUP_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// How many earlier epochs' application messages can still be read: a message
/// overtaken by a commit (they travel by different paths) still opens. Keeping these
/// keys a while is the price of that; they go after five commits.
pub const MAX_PAST_EPOCHS: usize = 5;

/// Largest stored group state read back (a 1000-device group is a few MiB).
pub const MAX_GROUP_STATE_BYTES: usize = 64 * 1024 * 1024;

/// openmls's provider over a storage of the caller's, with Cairn's crypto.
pub struct GroupProvider<'s, S> {
    crypto: GroupCrypto,
    storage: &'s S,
}

impl<'s, S> GroupProvider<'s, S> {
    /// A provider keeping group state in `storage`.
    pub fn new(storage: &'s S) -> Self {
        Self {
            crypto: GroupCrypto,
            storage,
        }
    }
}

impl<S: StorageProvider<CURRENT_VERSION>> openmls_traits::OpenMlsProvider for GroupProvider<'_, S> {
    type CryptoProvider = GroupCrypto;
    type RandProvider = GroupCrypto;
    type StorageProvider = S;

    fn storage(&self) -> &S {
        self.storage
    }
    fn crypto(&self) -> &GroupCrypto {
        &self.crypto
    }
    fn rand(&self) -> &GroupCrypto {
        &self.crypto
    }
}

fn group_error(what: &str, e: impl std::fmt::Display) -> CryptoError {
    CryptoError::Group(format!("{what}: {e}"))
}

/// Who a leaf is: the account and the device, as a basic credential carries them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeafName {
    /// The account id.
    pub account_id: AccountId,
    /// The device id within the account.
    pub device_id: DeviceId,
}

impl LeafName {
    fn to_identity(&self) -> Vec<u8> {
        format!("{}/{}", self.account_id, self.device_id).into_bytes()
    }

    fn from_credential(credential: &Credential) -> Option<Self> {
        let basic = BasicCredential::try_from(credential.clone()).ok()?;
        let text = std::str::from_utf8(basic.identity()).ok()?;
        let (account_id, device) = text.split_once('/')?;
        Some(Self {
            account_id: AccountId::parse(account_id).ok()?,
            device_id: DeviceId::new(device.parse().ok()?).ok()?,
        })
    }
}

/// A device's identity in groups: its signature key and the credential naming it.
pub struct GroupIdentity {
    name: LeafName,
    signer: SignatureKeyPair,
}

impl GroupIdentity {
    /// A fresh signature key for the device `name`.
    pub fn generate(name: LeafName) -> Result<Self, CryptoError> {
        let signer = SignatureKeyPair::new(GROUP_CIPHERSUITE.signature_algorithm())
            .map_err(|e| group_error("signature key", e))?;
        Ok(Self { name, signer })
    }

    /// Restores an identity from [`GroupIdentity::to_bytes`].
    pub fn from_bytes(name: LeafName, bytes: &[u8]) -> Result<Self, CryptoError> {
        let signer = SignatureKeyPair::tls_deserialize_exact(bytes).map_err(|e| group_error("signature key", e))?;
        Ok(Self { name, signer })
    }

    /// The signature key pair, private half included: only for the encrypted store.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        Ok(Zeroizing::new(
            self.signer
                .tls_serialize_detached()
                .map_err(|e| group_error("signature key", e))?,
        ))
    }

    /// Which device this is.
    pub fn name(&self) -> &LeafName {
        &self.name
    }

    fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(self.name.to_identity()).into(),
            signature_key: self.signer.to_public_vec().into(),
        }
    }

    /// A new key package (its private part kept in the provider's storage), encoded
    /// for others to add this device to a group with.
    pub fn key_package<S: StorageProvider<CURRENT_VERSION>>(
        &self,
        provider: &GroupProvider<'_, S>,
    ) -> Result<Vec<u8>, CryptoError> {
        // Last resort: one package stays valid for every group this device is added
        // to until it is replaced, as there is no server to hand out fresh ones.
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(Capabilities::new(
                None,
                Some(&[GROUP_CIPHERSUITE]),
                Some(&[ExtensionType::LastResort]),
                None,
                None,
            ))
            .mark_as_last_resort()
            .build(GROUP_CIPHERSUITE, provider, &self.signer, self.credential())
            .map_err(|e| group_error("key package", e))?;
        bundle
            .key_package()
            .tls_serialize_detached()
            .map_err(|e| group_error("key package encoding", e))
    }
}

/// Everything openmls keeps for one group on one device (and the key packages it
/// joined with), as entries of bytes: the store keeps them encrypted. The state knows
/// what changed since it was last saved, so a save writes only that — and the values
/// changes replaced, which let a device return to the epoch before a commit when a
/// concurrent commit wins.
#[derive(Default)]
pub struct GroupState {
    storage: MemoryStorage,
    /// The entries as last saved.
    saved: HashMap<Vec<u8>, Vec<u8>>,
}

/// One entry a save writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// The entry's key.
    pub key: Vec<u8>,
    /// Its new value; `None` when it was removed.
    pub value: Option<Vec<u8>>,
    /// Its value before; `None` when it is new.
    pub before: Option<Vec<u8>>,
}

impl GroupState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// A state from its saved entries.
    pub fn from_entries(entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Self, CryptoError> {
        let saved: HashMap<Vec<u8>, Vec<u8>> = entries.into_iter().collect();
        let storage = MemoryStorage::default();
        *storage
            .values
            .write()
            .map_err(|_| group_error("state", "poisoned lock"))? = saved.clone();
        Ok(Self { storage, saved })
    }

    /// A state from [`GroupState::to_bytes`], within [`MAX_GROUP_STATE_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let entries: Vec<(Vec<u8>, Vec<u8>)> =
            cairn_proto::decode_versioned(bytes, MAX_GROUP_STATE_BYTES).map_err(|e| group_error("state", e))?;
        Self::from_entries(entries)
    }

    /// All entries in one value, private keys included: only for the encrypted store.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let values = self
            .storage
            .values
            .read()
            .map_err(|_| group_error("state", "poisoned lock"))?;
        let mut entries: Vec<(&Vec<u8>, &Vec<u8>)> = values.iter().collect();
        // Sorted, so the same state always encodes to the same bytes.
        entries.sort_unstable();
        Ok(Zeroizing::new(cairn_proto::encode_versioned(&entries)))
    }

    /// What changed since the last call (or since the state was made), and marks it
    /// saved.
    pub fn take_changes(&mut self) -> Result<Vec<StateChange>, CryptoError> {
        let values = self
            .storage
            .values
            .read()
            .map_err(|_| group_error("state", "poisoned lock"))?;
        let mut changes = Vec::new();
        for (key, value) in values.iter() {
            let before = self.saved.get(key);
            if before != Some(value) {
                changes.push(StateChange {
                    key: key.clone(),
                    value: Some(value.clone()),
                    before: before.cloned(),
                });
            }
        }
        for (key, before) in &self.saved {
            if !values.contains_key(key) {
                changes.push(StateChange {
                    key: key.clone(),
                    value: None,
                    before: Some(before.clone()),
                });
            }
        }
        drop(values);
        for change in &changes {
            match &change.value {
                Some(value) => self.saved.insert(change.key.clone(), value.clone()),
                None => self.saved.remove(&change.key),
            };
        }
        Ok(changes)
    }

    /// Treats every entry as unsaved, so the next [`GroupState::take_changes`] writes
    /// them all (a state that starts from another's, as a join from the device's
    /// key-package state does).
    pub fn mark_unsaved(&mut self) {
        self.saved.clear();
    }

    /// The provider openmls works through, over this state.
    pub fn provider(&self) -> GroupProvider<'_, MemoryStorage> {
        GroupProvider::new(&self.storage)
    }
}

/// Where a group message belongs, read without decrypting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageHeader {
    /// The group's id.
    pub group_id: Vec<u8>,
    /// The epoch it was sent in.
    pub epoch: u64,
    /// Whether it is a commit (which moves the group to the next epoch).
    pub commit: bool,
}

impl MessageHeader {
    /// Reads the header of a group message (not a Welcome).
    pub fn of(bytes: &[u8]) -> Result<Self, CryptoError> {
        let message = decode_message(bytes)?
            .try_into_protocol_message()
            .map_err(|e| group_error("not a group message", e))?;
        Ok(Self {
            group_id: message.group_id().as_slice().to_vec(),
            epoch: message.epoch().as_u64(),
            commit: message.content_type() == ContentType::Commit,
        })
    }
}

/// Checks a key package (its signature, lifetime and ciphersuite) and returns the
/// device its credential names.
pub fn key_package_device(bytes: &[u8]) -> Result<LeafName, CryptoError> {
    let package = validate_key_package(bytes)?;
    LeafName::from_credential(package.leaf_node().credential())
        .ok_or_else(|| CryptoError::Group("a key package without a Cairn credential".into()))
}

fn validate_key_package(bytes: &[u8]) -> Result<KeyPackage, CryptoError> {
    if bytes.len() > cairn_proto::MAX_KEY_PACKAGE_BYTES {
        return Err(CryptoError::Group("a key package over the size limit".into()));
    }
    let package = KeyPackageIn::tls_deserialize_exact(bytes).map_err(|e| group_error("key package", e))?;
    let package = package
        .validate(&GroupCrypto, ProtocolVersion::Mls10)
        .map_err(|e| group_error("key package", e))?;
    if package.ciphersuite() != GROUP_CIPHERSUITE {
        return Err(CryptoError::Group("a key package for another ciphersuite".into()));
    }
    Ok(package)
}

/// What a received group message was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// An application message from a member device.
    Message {
        /// Who sent it.
        from: LeafName,
        /// The plaintext.
        plaintext: Vec<u8>,
    },
    /// A commit was applied: the group is at a new epoch.
    Committed {
        /// Who committed.
        from: Option<LeafName>,
        /// The new epoch.
        epoch: u64,
        /// Whether this device was removed by it.
        removed_self: bool,
    },
    /// A proposal was stored, for an admin's next commit.
    Proposed {
        /// Who proposed it.
        from: LeafName,
    },
}

/// One group as one device holds it.
pub struct Group {
    inner: MlsGroup,
}

impl Group {
    /// Creates a group with this device as its only member.
    pub fn create<S: StorageProvider<CURRENT_VERSION>>(
        provider: &GroupProvider<'_, S>,
        identity: &GroupIdentity,
        group_id: &[u8],
    ) -> Result<Self, CryptoError> {
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(GROUP_CIPHERSUITE)
            // A Welcome then carries the whole tree: no directory to fetch it from.
            .use_ratchet_tree_extension(true)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .build();
        let inner = MlsGroup::new_with_group_id(
            provider,
            &identity.signer,
            &config,
            GroupId::from_slice(group_id),
            identity.credential(),
        )
        .map_err(|e| group_error("create", e))?;
        Ok(Self { inner })
    }

    /// The group `group_id` as stored, if this device is in it.
    pub fn load<S: StorageProvider<CURRENT_VERSION>>(
        provider: &GroupProvider<'_, S>,
        group_id: &[u8],
    ) -> Result<Option<Self>, CryptoError> {
        Ok(MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .map_err(|e| group_error("load", e))?
            .map(|inner| Self { inner }))
    }

    /// Joins the group a Welcome invites this device to (the key package it names
    /// must be in this device's storage).
    pub fn join<S: StorageProvider<CURRENT_VERSION>>(
        provider: &GroupProvider<'_, S>,
        welcome: &[u8],
    ) -> Result<Self, CryptoError> {
        let message = decode_message(welcome)?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err(CryptoError::Group("not a Welcome".into()));
        };
        let config = MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(true)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .build();
        let staged =
            StagedWelcome::new_from_welcome(provider, &config, welcome, None).map_err(|e| group_error("welcome", e))?;
        let inner = staged.into_group(provider).map_err(|e| group_error("join", e))?;
        Ok(Self { inner })
    }

    /// The group's id.
    pub fn id(&self) -> Vec<u8> {
        self.inner.group_id().as_slice().to_vec()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch().as_u64()
    }

    /// The member devices, in leaf order.
    pub fn members(&self) -> Vec<LeafName> {
        self.inner
            .members()
            .filter_map(|m| LeafName::from_credential(&m.credential))
            .collect()
    }

    /// Adds devices by their key packages and moves to the next epoch: returns the
    /// commit for the current members and the Welcome for the new ones.
    pub fn add<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &GroupProvider<'_, S>,
        identity: &GroupIdentity,
        key_packages: &[Vec<u8>],
    ) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        let packages = key_packages
            .iter()
            .map(|bytes| validate_key_package(bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let (commit, welcome, _) = self
            .inner
            .add_members(provider, &identity.signer, &packages)
            .map_err(|e| group_error("add", e))?;
        self.inner
            .merge_pending_commit(provider)
            .map_err(|e| group_error("merge", e))?;
        Ok((encode(&commit)?, encode(&welcome)?))
    }

    /// Removes every leaf of the given devices and moves to the next epoch: returns
    /// the commit.
    pub fn remove<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &GroupProvider<'_, S>,
        identity: &GroupIdentity,
        devices: &[LeafName],
    ) -> Result<Vec<u8>, CryptoError> {
        let leaves: Vec<LeafNodeIndex> = self
            .inner
            .members()
            .filter(|m| LeafName::from_credential(&m.credential).is_some_and(|name| devices.contains(&name)))
            .map(|m| m.index)
            .collect();
        let (commit, _, _) = self
            .inner
            .remove_members(provider, &identity.signer, &leaves)
            .map_err(|e| group_error("remove", e))?;
        self.inner
            .merge_pending_commit(provider)
            .map_err(|e| group_error("merge", e))?;
        encode(&commit)
    }

    /// Proposes removing the leaves of this device's own account (to leave the
    /// group): an admin's next commit carries it out. Returns one proposal per leaf.
    pub fn propose_leaving<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &GroupProvider<'_, S>,
        identity: &GroupIdentity,
    ) -> Result<Vec<Vec<u8>>, CryptoError> {
        let own: Vec<LeafNodeIndex> = self
            .inner
            .members()
            .filter(|m| {
                LeafName::from_credential(&m.credential).is_some_and(|n| n.account_id == identity.name.account_id)
            })
            .map(|m| m.index)
            .collect();
        let mut proposals = Vec::with_capacity(own.len());
        for leaf in own {
            let (proposal, _) = self
                .inner
                .propose_remove_member(provider, &identity.signer, leaf)
                .map_err(|e| group_error("leave", e))?;
            proposals.push(encode(&proposal)?);
        }
        Ok(proposals)
    }

    /// Whether proposals wait for a commit.
    pub fn has_pending_proposals(&self) -> bool {
        self.inner.pending_proposals().next().is_some()
    }

    /// Commits the proposals received since the last commit and moves to the next
    /// epoch: returns the commit, and a Welcome if they added devices.
    pub fn commit_proposals<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &GroupProvider<'_, S>,
        identity: &GroupIdentity,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), CryptoError> {
        let (commit, welcome, _) = self
            .inner
            .commit_to_pending_proposals(provider, &identity.signer)
            .map_err(|e| group_error("commit", e))?;
        self.inner
            .merge_pending_commit(provider)
            .map_err(|e| group_error("merge", e))?;
        Ok((encode(&commit)?, welcome.as_ref().map(encode).transpose()?))
    }

    /// Whether this device is still a member (not removed by a commit it applied).
    pub fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    /// Encrypts an application message for the group.
    pub fn send<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &GroupProvider<'_, S>,
        identity: &GroupIdentity,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let message = self
            .inner
            .create_message(provider, &identity.signer, plaintext)
            .map_err(|e| group_error("encrypt", e))?;
        encode(&message)
    }

    /// Processes a message from the wire: decrypts an application message, applies a
    /// commit, or stores a proposal.
    pub fn receive<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &GroupProvider<'_, S>,
        bytes: &[u8],
    ) -> Result<GroupEvent, CryptoError> {
        let message = decode_message(bytes)?;
        let protocol = message
            .try_into_protocol_message()
            .map_err(|e| group_error("not a group message", e))?;
        let processed = self
            .inner
            .process_message(provider, protocol)
            .map_err(|e| group_error("process", e))?;
        let from = LeafName::from_credential(processed.credential());
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(message) => Ok(GroupEvent::Message {
                from: from.ok_or_else(|| CryptoError::Group("a sender without a Cairn credential".into()))?,
                plaintext: message.into_bytes(),
            }),
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let removed_self = staged.self_removed();
                self.inner
                    .merge_staged_commit(provider, *staged)
                    .map_err(|e| group_error("merge", e))?;
                Ok(GroupEvent::Committed {
                    from,
                    epoch: self.epoch(),
                    removed_self,
                })
            }
            ProcessedMessageContent::ProposalMessage(proposal) => {
                // A member may only propose that its own account leave; anything else
                // is an admin's to commit.
                let removes_own_account = match (proposal.proposal(), &from) {
                    (Proposal::Remove(remove), Some(from)) => self
                        .inner
                        .member(remove.removed())
                        .and_then(LeafName::from_credential)
                        .is_some_and(|removed| removed.account_id == from.account_id),
                    _ => false,
                };
                if !removes_own_account {
                    return Err(CryptoError::Group(
                        "a proposal other than a member's own leaving".into(),
                    ));
                }
                self.inner
                    .store_pending_proposal(provider.storage(), *proposal)
                    .map_err(|e| group_error("proposal", e))?;
                Ok(GroupEvent::Proposed {
                    from: from.ok_or_else(|| CryptoError::Group("a proposer without a Cairn credential".into()))?,
                })
            }
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                Err(CryptoError::Group("external joins are not accepted".into()))
            }
            // This device's own messages coming back (several own devices share a
            // mailbox path): nothing to do.
            ProcessedMessageContent::OwnPendingCommit | ProcessedMessageContent::OwnPrivateMessage => {
                Err(CryptoError::Group("this device's own message".into()))
            }
        }
    }
}

fn encode(message: &MlsMessageOut) -> Result<Vec<u8>, CryptoError> {
    message.tls_serialize_detached().map_err(|e| group_error("encoding", e))
}

fn decode_message(bytes: &[u8]) -> Result<MlsMessageIn, CryptoError> {
    if bytes.len() > MAX_GROUP_MESSAGE_BYTES {
        return Err(CryptoError::Group(format!(
            "a group message of {} bytes is over the limit",
            bytes.len()
        )));
    }
    MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| group_error("decoding", e))
}
