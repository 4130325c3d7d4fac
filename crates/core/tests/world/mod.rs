//! Devices on one machine, each with a real SQLCipher profile, and an in-process
//! "network" that carries what their outboxes hand out, as the courier does: it
//! takes the due envelopes (sealed as they leave), delivers them, and tells the
//! sender what became of each. Tests can hold envelopes back, reorder, delay,
//! tamper with them, and send a device away: what is sent to it meanwhile goes to a
//! peer cache of the world's, which it fetches when it comes back. Every device reads
//! the world's clock, which tests move instead of sleeping. Shared by the 1:1 and the
//! group stories.

#![allow(dead_code)]

use cairn_core::AccountId;
use std::collections::HashSet;
use std::sync::Arc;

use cairn_core::{CoreError, Event, Handed, KeyVault, ManualClock, Messenger, OutboxId, QueuedEnvelope, Unlock};
use cairn_store::ProfileDir;
use tempfile::TempDir;

/// One device: its profile directory and open messenger.
pub struct Device {
    pub name: &'static str,
    pub dir: TempDir,
    pub messenger: Messenger,
}

/// An envelope on its way: who sent it, to which device, and the outbox row it
/// came from.
#[derive(Debug, Clone)]
pub struct Flight {
    pub from: usize,
    pub to: usize,
    pub queued: QueuedEnvelope,
}

impl Flight {
    pub fn bytes(&self) -> Vec<u8> {
        self.queued.outgoing.envelope.to_bytes()
    }
}

/// The devices and the envelopes in flight between them.
pub struct World {
    pub vault: KeyVault,
    /// The time every device reads.
    pub clock: ManualClock,
    pub devices: Vec<Device>,
    pub in_flight: Vec<Flight>,
    /// Devices that are away: what is sent to them goes to `cache`.
    pub away: HashSet<usize>,
    /// Devices nothing reaches (no cache takes their envelopes either): what is sent
    /// to them stays in the sender's outbox, backing off.
    pub unreachable: HashSet<usize>,
    /// Every envelope delivered to a device so far (from a cache too), in order.
    pub delivered: Vec<Flight>,
    /// Envelopes held for devices that were away.
    pub cache: Vec<Flight>,
    /// Outbox rows taken and not yet reported on (as a courier does not take an
    /// envelope twice while it carries it).
    pub taken: HashSet<(usize, OutboxId)>,
}

impl World {
    pub fn new() -> Self {
        let store: Arc<keyring_core::CredentialStore> = keyring_core::mock::Store::new().unwrap();
        Self {
            vault: KeyVault::with_store(store),
            clock: ManualClock::starting_now(),
            devices: Vec::new(),
            in_flight: Vec::new(),
            away: HashSet::new(),
            unreachable: HashSet::new(),
            delivered: Vec::new(),
            cache: Vec::new(),
            taken: HashSet::new(),
        }
    }

    pub fn new_profile(&mut self, name: &'static str) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let mut messenger =
            Messenger::create_profile(&ProfileDir::new(dir.path()), Unlock::Keyring(&self.vault)).unwrap();
        messenger.set_clock(self.clock.clock());
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
        self.devices[existing].messenger.complete_link(card).unwrap();
        self.deliver_all();
        new
    }

    /// A device's messenger. Every step a test takes moves the clock on a
    /// millisecond, so that what happens one after the other is dated so too.
    pub fn m(&mut self, device: usize) -> &mut Messenger {
        self.clock.advance(std::time::Duration::from_millis(1));
        &mut self.devices[device].messenger
    }

    /// The device an envelope is for.
    pub fn device_for(&self, envelope: &cairn_proto::Envelope) -> usize {
        self.devices
            .iter()
            .position(|d| d.messenger.mailbox().ok() == Some(envelope.mailbox))
            .expect("an envelope for a device of this world")
    }

    /// What `device`'s outbox hands out now (sealed as it leaves), not yet on its way:
    /// the test holds it until it delivers it.
    pub fn take(&mut self, device: usize) -> Vec<Flight> {
        let due = self.devices[device].messenger.due_envelopes(10_000).unwrap();
        let fresh: Vec<QueuedEnvelope> = due.into_iter().filter(|q| self.taken.insert((device, q.id))).collect();
        fresh
            .into_iter()
            .map(|queued| Flight {
                from: device,
                to: self.device_for(&queued.outgoing.envelope),
                queued,
            })
            .collect()
    }

    /// Puts what every outbox hands out now on its way.
    pub fn take_all(&mut self) {
        for device in 0..self.devices.len() {
            let taken = self.take(device);
            self.in_flight.extend(taken);
        }
    }

    /// Delivers one envelope and tells its sender what became of it. A device that
    /// is away does not get it: the world's cache holds it.
    pub fn deliver(&mut self, flight: Flight) -> Result<Vec<Event>, CoreError> {
        self.taken.remove(&(flight.from, flight.queued.id));
        if self.unreachable.contains(&flight.to) {
            self.m(flight.from).handed(&flight.queued, Handed::NotNow).unwrap();
            return Ok(Vec::new());
        }
        if self.away.contains(&flight.to) {
            self.m(flight.from).handed(&flight.queued, Handed::ToCaches(1)).unwrap();
            self.cache.push(flight);
            return Ok(Vec::new());
        }
        self.delivered.push(flight.clone());
        let received = self.m(flight.to).receive(&flight.bytes());
        // The device answers as it would over the network.
        let how = Handed::from(cairn_core::answer_for(&received));
        self.m(flight.from).handed(&flight.queued, how).unwrap();
        received.map(|r| r.events)
    }

    /// Reports on a taken envelope without delivering it, as a transport that heard
    /// `how` from the device would.
    pub fn hand(&mut self, flight: &Flight, how: Handed) -> Option<Event> {
        self.taken.remove(&(flight.from, flight.queued.id));
        self.m(flight.from).handed(&flight.queued, how).unwrap()
    }

    /// Delivers until no outbox has anything due.
    pub fn deliver_all(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            self.take_all();
            if self.in_flight.is_empty() {
                return events;
            }
            for flight in std::mem::take(&mut self.in_flight) {
                match self.deliver(flight) {
                    Ok(more) => events.extend(more),
                    // A copy of what the device has: taken all the same.
                    Err(CoreError::Duplicate) => {}
                    Err(e) => panic!("an envelope was refused: {e}"),
                }
            }
        }
    }

    /// The device goes away: what is sent to it waits in the world's cache.
    pub fn go_away(&mut self, device: usize) {
        self.away.insert(device);
    }

    /// The device is back (what waits for it in the cache stays there until it
    /// fetches it).
    pub fn come_back(&mut self, device: usize) {
        self.away.remove(&device);
    }

    /// The device fetches what the cache holds for it, in the order it was placed.
    /// Copies that do not open are taken all the same, as a device acknowledges what
    /// it fetched.
    pub fn fetch(&mut self, device: usize) -> Vec<Event> {
        let (mine, rest): (Vec<Flight>, Vec<Flight>) = std::mem::take(&mut self.cache)
            .into_iter()
            .partition(|f| f.to == device);
        self.cache = rest;
        let mut events = Vec::new();
        for flight in mine {
            self.delivered.push(flight.clone());
            match self.m(device).receive(&flight.bytes()) {
                Ok(received) => events.extend(received.events),
                Err(CoreError::Duplicate) => {}
                Err(e) => panic!("a cached envelope was refused: {e}"),
            }
        }
        events
    }

    /// The world's time, Unix seconds.
    pub fn now(&self) -> u64 {
        self.clock.clock().now()
    }

    pub fn account_id(&self, device: usize) -> AccountId {
        self.devices[device].messenger.account_info().unwrap().account_id
    }

    pub fn texts(&self, device: usize, conversation: impl AsRef<str>) -> Vec<String> {
        self.devices[device]
            .messenger
            .conversation(conversation.as_ref(), 1000)
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
            let mut messenger =
                Messenger::open_profile(&ProfileDir::new(dir.path()), Unlock::Keyring(&self.vault)).unwrap();
            messenger.set_clock(self.clock.clock());
            self.devices.push(Device { name, dir, messenger });
        }
    }
}
