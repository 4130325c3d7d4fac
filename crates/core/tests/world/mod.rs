//! Devices on one machine, each with a real SQLCipher profile, and an in-process
//! "network": a list of envelopes in flight that tests deliver, reorder, delay or
//! tamper with. Shared by the 1:1 and the group stories.

#![allow(dead_code)]

use std::sync::Arc;

use cairn_core::{CoreError, Event, KeyVault, Messenger, Outgoing, Unlock};
use cairn_store::ProfileDir;
use tempfile::TempDir;

/// One device: its profile directory and open messenger.
pub struct Device {
    pub name: &'static str,
    pub dir: TempDir,
    pub messenger: Messenger,
}

/// The devices and the envelopes in flight between them.
pub struct World {
    pub vault: KeyVault,
    pub devices: Vec<Device>,
    pub in_flight: Vec<Outgoing>,
}

impl World {
    pub fn new() -> Self {
        let store: Arc<keyring_core::CredentialStore> = keyring_core::mock::Store::new().unwrap();
        Self {
            vault: KeyVault::with_store(store),
            devices: Vec::new(),
            in_flight: Vec::new(),
        }
    }

    pub fn new_profile(&mut self, name: &'static str) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let messenger = Messenger::create_profile(&ProfileDir::new(dir.path()), Unlock::Keyring(&self.vault)).unwrap();
        self.devices.push(Device { name, dir, messenger });
        self.devices.len() - 1
    }

    /// A new account on a new device.
    pub fn account(&mut self, name: &'static str, display: &str) -> usize {
        let i = self.new_profile(name);
        self.devices[i].messenger.create_account(display).unwrap();
        i
    }

    /// A second device linked to the account of `existing`.
    pub fn link(&mut self, existing: usize, name: &'static str) -> usize {
        let grant = self.devices[existing].messenger.grant_link().unwrap();
        let new = self.new_profile(name);
        let card = self.devices[new].messenger.join_account(grant).unwrap();
        let out = self.devices[existing].messenger.complete_link(card).unwrap();
        self.send(out);
        self.deliver_all();
        new
    }

    pub fn m(&mut self, device: usize) -> &mut Messenger {
        &mut self.devices[device].messenger
    }

    pub fn send(&mut self, out: Vec<Outgoing>) {
        self.in_flight.extend(out);
    }

    pub fn device_for(&self, out: &Outgoing) -> usize {
        self.devices
            .iter()
            .position(|d| d.messenger.mailbox().ok() == Some(out.envelope.mailbox))
            .expect("an envelope for a device of this world")
    }

    /// Delivers one envelope; its replies go in flight.
    pub fn deliver(&mut self, out: Outgoing) -> Result<Vec<Event>, CoreError> {
        let to = self.device_for(&out);
        let received = self.devices[to].messenger.receive(&out.envelope.to_bytes())?;
        self.in_flight.extend(received.replies);
        Ok(received.events)
    }

    /// Delivers until nothing is in flight.
    pub fn deliver_all(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while !self.in_flight.is_empty() {
            let batch = std::mem::take(&mut self.in_flight);
            for out in batch {
                events.extend(self.deliver(out).unwrap());
            }
        }
        events
    }

    pub fn account_id(&self, device: usize) -> String {
        self.devices[device].messenger.account_info().unwrap().account_id
    }

    pub fn texts(&self, device: usize, peer: &str) -> Vec<String> {
        self.devices[device]
            .messenger
            .conversation(peer, 100)
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect()
    }

    /// Closes every store and opens it again from disk.
    pub fn reopen_all(&mut self) {
        let devices = std::mem::take(&mut self.devices);
        for Device { name, dir, messenger } in devices {
            // Closed first: the profile lock allows one opener at a time.
            drop(messenger);
            let messenger =
                Messenger::open_profile(&ProfileDir::new(dir.path()), Unlock::Keyring(&self.vault)).unwrap();
            self.devices.push(Device { name, dir, messenger });
        }
    }
}
