//! MLS groups on Cairn's own openmls provider, one leaf per device: five people (Bob
//! with two devices) chat; a removed member reads nothing sent after the removal;
//! every device's state reloads from its storage. (The messenger carries these bytes
//! over the network; here they are handed over directly.)

use cairn_crypto::{AccountId, CryptoError, DeviceId, Group, GroupEvent, GroupIdentity, GroupProvider, LeafName};
use openmls_memory_storage::MemoryStorage;

/// One device: its identity in groups and its own storage.
struct Device {
    identity: GroupIdentity,
    storage: MemoryStorage,
    group: Option<Group>,
}

/// An account id named after a person ("alice" → "aliceaaaa…", 26 characters).
fn account(name: &str) -> AccountId {
    AccountId::parse(&format!("{name:a<26}")).unwrap()
}

impl Device {
    fn new(name: &str, device_id: u8) -> Self {
        let name = LeafName {
            account_id: account(name),
            device_id: DeviceId::new(device_id).unwrap(),
        };
        Self {
            identity: GroupIdentity::generate(name).unwrap(),
            storage: MemoryStorage::default(),
            group: None,
        }
    }

    fn provider(&self) -> GroupProvider<'_, MemoryStorage> {
        GroupProvider::new(&self.storage)
    }

    fn key_package(&self) -> Vec<u8> {
        self.identity.key_package(&self.provider()).unwrap()
    }

    fn send(&mut self, text: &str) -> Vec<u8> {
        let provider = GroupProvider::new(&self.storage);
        self.group
            .as_mut()
            .unwrap()
            .send(&provider, &self.identity, text.as_bytes())
            .unwrap()
    }

    fn receive(&mut self, bytes: &[u8]) -> Result<GroupEvent, CryptoError> {
        let provider = GroupProvider::new(&self.storage);
        self.group.as_mut().unwrap().receive(&provider, bytes)
    }

    fn epoch(&self) -> u64 {
        self.group.as_ref().unwrap().epoch()
    }
}

fn text_from(event: GroupEvent) -> (String, String) {
    match event {
        GroupEvent::Message { from, plaintext } => (
            format!("{}/{}", from.account_id, from.device_id),
            String::from_utf8(plaintext).unwrap(),
        ),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[test]
fn five_people_one_with_two_devices_chat_and_a_removed_member_reads_nothing_after() {
    let mut alice = Device::new("alice", 1);
    let mut others: Vec<Device> = vec![
        Device::new("bob", 1),
        Device::new("bob", 2),
        Device::new("carol", 1),
        Device::new("dave", 1),
        Device::new("erin", 1),
    ];
    let provider = GroupProvider::new(&alice.storage);
    let mut group = Group::create(&provider, &alice.identity, b"family").unwrap();
    let packages: Vec<Vec<u8>> = others.iter().map(Device::key_package).collect();
    let (_commit, welcome) = group.add(&provider, &alice.identity, &packages).unwrap();
    assert_eq!(group.members().len(), 6, "one leaf per device");
    alice.group = Some(group);
    for device in &mut others {
        let joined = Group::join(&device.provider(), &welcome).unwrap();
        assert_eq!(joined.epoch(), 1);
        assert_eq!(joined.id(), b"family");
        device.group = Some(joined);
    }

    // Alice writes; every device of every member reads it.
    let hello = alice.send("hello, everyone");
    for device in &mut others {
        assert_eq!(
            text_from(device.receive(&hello).unwrap()),
            (format!("{}/1", account("alice")), "hello, everyone".into())
        );
    }
    // Bob answers from his second device.
    let answer = others[1].send("hi from my laptop");
    assert_eq!(
        text_from(alice.receive(&answer).unwrap()),
        (format!("{}/2", account("bob")), "hi from my laptop".into())
    );

    // Alice removes Dave.
    let provider = GroupProvider::new(&alice.storage);
    let dave = LeafName {
        account_id: account("dave"),
        device_id: DeviceId::FIRST,
    };
    let removal = alice
        .group
        .as_mut()
        .unwrap()
        .remove(&provider, &alice.identity, std::slice::from_ref(&dave))
        .unwrap();
    for device in &mut others {
        let removed = device.identity.name() == &dave;
        match device.receive(&removal).unwrap() {
            GroupEvent::Committed {
                epoch, removed_self, ..
            } => {
                assert_eq!(removed_self, removed);
                if !removed {
                    assert_eq!(epoch, 2);
                }
            }
            other => panic!("expected a commit, got {other:?}"),
        }
    }
    assert!(!alice.group.as_ref().unwrap().members().contains(&dave));
    let secret = alice.send("dave must not read this");
    for device in &mut others {
        let outcome = device.receive(&secret);
        if device.identity.name() == &dave {
            assert!(matches!(outcome, Err(CryptoError::Group(_))), "{outcome:?}");
        } else {
            assert_eq!(text_from(outcome.unwrap()).1, "dave must not read this");
        }
    }

    // Every device's group reloads from its storage and goes on.
    for device in std::iter::once(&mut alice).chain(others.iter_mut()) {
        if device.identity.name() == &dave {
            continue;
        }
        let epoch = device.epoch();
        let provider = GroupProvider::new(&device.storage);
        let reloaded = Group::load(&provider, b"family").unwrap().unwrap();
        assert_eq!(reloaded.epoch(), epoch);
        device.group = Some(reloaded);
    }
    let later = others[2].send("still here");
    assert_eq!(text_from(alice.receive(&later).unwrap()).1, "still here");
}

#[test]
fn garbage_and_oversized_group_messages_are_typed_errors() {
    let alice = Device::new("alice", 1);
    let provider = alice.provider();
    let mut group = Group::create(&provider, &alice.identity, b"g").unwrap();
    for bytes in [
        vec![],
        vec![0xff; 64],
        vec![0; cairn_crypto::MAX_GROUP_MESSAGE_BYTES + 1],
    ] {
        assert!(matches!(group.receive(&provider, &bytes), Err(CryptoError::Group(_))));
        assert!(matches!(Group::join(&provider, &bytes), Err(CryptoError::Group(_))));
    }
    assert_eq!(group.epoch(), 0, "nothing changed");
}

#[test]
fn a_key_package_names_its_device() {
    let device = Device::new("abcdefghijklmnopqrstuvwxyz", 3);
    let package = device.key_package();
    assert_eq!(
        cairn_crypto::key_package_device(&package).unwrap(),
        LeafName {
            account_id: account("abcdefghijklmnopqrstuvwxyz"),
            device_id: DeviceId::new(3).unwrap()
        }
    );
    assert!(cairn_crypto::key_package_device(&package[1..]).is_err());
}
