//! Signal sessions between two devices over the in-memory store: the library's
//! PQXDH start and Double Ratchet, as Cairn drives them.

use cairn_crypto::{
    bundle_of, decrypt, encrypt, generate_kyber_prekey, generate_signed_prekey, new_account_id, start_session,
    AccountIdentity, CryptoError, DeviceKeys, MemorySignalStore,
};
use cairn_proto::{AccountId, DeviceId, PrekeyBundle};

struct Device {
    identity: AccountIdentity,
    account: AccountId,
    store: MemorySignalStore,
    bundle: PrekeyBundle,
}

fn device() -> Device {
    let identity = AccountIdentity::generate();
    let keys = DeviceKeys::generate(DeviceId::FIRST).unwrap();
    let signed = generate_signed_prekey(&identity, 1, std::time::SystemTime::now()).unwrap();
    let kyber = generate_kyber_prekey(&identity, 1).unwrap();
    let bundle = bundle_of(&keys, &signed, &kyber).unwrap();
    let account = new_account_id();
    let store =
        MemorySignalStore::new(&account, *identity.key_pair(), keys.registration_id(), &signed, &kyber).unwrap();
    Device {
        account,
        identity,
        store,
        bundle,
    }
}

#[test]
fn alice_starts_a_session_from_bobs_bundle_and_they_talk_both_ways() {
    let (alice, bob) = (device(), device());
    start_session(
        &alice.store,
        &bob.account,
        bob.identity.public_key(),
        &bob.bundle,
        std::time::SystemTime::now(),
    )
    .unwrap();
    let first = encrypt(
        &alice.store,
        &bob.account,
        DeviceId::FIRST,
        b"hello bob",
        std::time::SystemTime::now(),
    )
    .unwrap();
    assert!(first.prekey, "the first message starts the session");
    assert_eq!(
        decrypt(&bob.store, &alice.account, DeviceId::FIRST, &first).unwrap(),
        b"hello bob"
    );
    let reply = encrypt(
        &bob.store,
        &alice.account,
        DeviceId::FIRST,
        b"hi alice",
        std::time::SystemTime::now(),
    )
    .unwrap();
    assert!(!reply.prekey);
    assert_eq!(
        decrypt(&alice.store, &bob.account, DeviceId::FIRST, &reply).unwrap(),
        b"hi alice"
    );
}

#[test]
fn out_of_order_messages_decrypt_and_a_replay_is_refused() {
    let (alice, bob) = (device(), device());
    start_session(
        &alice.store,
        &bob.account,
        bob.identity.public_key(),
        &bob.bundle,
        std::time::SystemTime::now(),
    )
    .unwrap();
    let messages: Vec<_> = (0..5)
        .map(|i| {
            encrypt(
                &alice.store,
                &bob.account,
                DeviceId::FIRST,
                format!("m{i}").as_bytes(),
                std::time::SystemTime::now(),
            )
            .unwrap()
        })
        .collect();
    for i in [4, 0, 2, 1, 3] {
        assert_eq!(
            decrypt(&bob.store, &alice.account, DeviceId::FIRST, &messages[i]).unwrap(),
            format!("m{i}").as_bytes()
        );
    }
    assert!(matches!(
        decrypt(&bob.store, &alice.account, DeviceId::FIRST, &messages[2]),
        Err(CryptoError::DuplicateMessage)
    ));
}

#[test]
fn a_tampered_ciphertext_is_refused() {
    let (alice, bob) = (device(), device());
    start_session(
        &alice.store,
        &bob.account,
        bob.identity.public_key(),
        &bob.bundle,
        std::time::SystemTime::now(),
    )
    .unwrap();
    let mut message = encrypt(
        &alice.store,
        &bob.account,
        DeviceId::FIRST,
        b"hello",
        std::time::SystemTime::now(),
    )
    .unwrap();
    let last = message.bytes.len() - 1;
    message.bytes[last] ^= 1;
    assert!(decrypt(&bob.store, &alice.account, DeviceId::FIRST, &message).is_err());
}

#[test]
fn a_bundle_signed_by_someone_else_is_refused() {
    let (alice, bob, mallory) = (device(), device(), device());
    let result = start_session(
        &alice.store,
        &bob.account,
        bob.identity.public_key(),
        &mallory.bundle,
        std::time::SystemTime::now(),
    );
    assert!(matches!(result, Err(CryptoError::BadSignature("prekey bundle"))));
}
