//! What one message costs: encrypt on one side, decrypt on the other, three ways.
//!
//! - `signal_library_alone`: libsignal's `message_encrypt`/`message_decrypt` over its
//!   own in-memory store — the floor.
//! - `seal_and_unseal_alone`: just the sealed-sender layer.
//! - `cairn_crypto_in_memory`: Cairn's crypto layer over its in-memory store: Signal
//!   encrypt, seal to the recipient identity, unseal, Signal decrypt, content decode.
//! - `cairn_messenger_sqlcipher`: the whole `Messenger` path on real SQLCipher
//!   profiles, as the courier drives it: `send_text` (store, queue), `due_envelopes`
//!   (encrypt, seal, envelope), `receive` (unseal, decrypt, de-duplicate, store, and
//!   queue a delivery receipt back) and `handed` (the envelope moves to the sent log).
//!
//! Run: `cargo bench -p cairn-core --bench messages`. Results: docs/benchmarks.md.

use std::time::SystemTime;

use cairn_core::{Handed, KeyVault, Messenger, Unlock};
use cairn_crypto::{
    bundle_of, decrypt, encrypt, generate_kyber_prekey, generate_signed_prekey, seal, start_session, to_signal_bundle,
    unseal, AccountId, AccountIdentity, DeviceKeys, MemorySignalStore,
};
use cairn_proto::{Content, DeviceId, SealedInner, TextMessage};
use cairn_store::ProfileDir;
use criterion::{criterion_group, criterion_main, Criterion};
use futures::executor::block_on;
use libsignal_protocol::{
    message_decrypt, message_encrypt, process_prekey_bundle, DeviceId as SignalDeviceId, GenericSignedPreKey,
    InMemSignalProtocolStore, KyberPreKeyRecord, KyberPreKeyStore, ProtocolAddress, SignedPreKeyRecord,
    SignedPreKeyStore,
};

fn plaintext() -> Vec<u8> {
    Content::Text(TextMessage {
        id: [7; 16],
        sent_at: 1,
        body: "hello world".into(),
        sync_peer: None,
    })
    .to_padded_bytes()
}

fn signal_library_alone(c: &mut Criterion) {
    let mut rng = rand::rng();
    let (alice_identity, bob_identity) = (AccountIdentity::generate(), AccountIdentity::generate());
    let mut alice = InMemSignalProtocolStore::new(*alice_identity.key_pair(), 1).unwrap();
    let mut bob = InMemSignalProtocolStore::new(*bob_identity.key_pair(), 2).unwrap();
    let bob_device = DeviceKeys::generate(DeviceId::FIRST).unwrap();
    let (signed, kyber) = (
        generate_signed_prekey(&bob_identity, 1, std::time::SystemTime::now()).unwrap(),
        generate_kyber_prekey(&bob_identity, 1).unwrap(),
    );
    block_on(bob.save_signed_pre_key(1.into(), &SignedPreKeyRecord::deserialize(&signed).unwrap())).unwrap();
    block_on(bob.save_kyber_pre_key(1.into(), &KyberPreKeyRecord::deserialize(&kyber).unwrap())).unwrap();
    let bundle = to_signal_bundle(
        bob_identity.public_key(),
        &bundle_of(&bob_device, &signed, &kyber).unwrap(),
    )
    .unwrap();
    let device = SignalDeviceId::new(1).unwrap();
    let (alice_address, bob_address) = (
        ProtocolAddress::new("alice".into(), device),
        ProtocolAddress::new("bob".into(), device),
    );
    block_on(process_prekey_bundle(
        &bob_address,
        &mut alice.session_store,
        &mut alice.identity_store,
        &bundle,
        SystemTime::now(),
        &mut rng,
    ))
    .unwrap();
    let plaintext = plaintext();
    let mut one_message = |alice: &mut InMemSignalProtocolStore, bob: &mut InMemSignalProtocolStore| {
        let ciphertext = block_on(message_encrypt(
            &plaintext,
            &bob_address,
            &mut alice.session_store,
            &mut alice.identity_store,
            SystemTime::now(),
            &mut rng,
        ))
        .unwrap();
        let decrypted = block_on(message_decrypt(
            &ciphertext,
            &alice_address,
            &mut bob.session_store,
            &mut bob.identity_store,
            &mut bob.pre_key_store,
            &bob.signed_pre_key_store,
            &mut bob.kyber_pre_key_store,
            &mut rand::rng(),
        ))
        .unwrap();
        assert_eq!(decrypted.len(), plaintext.len());
    };
    one_message(&mut alice, &mut bob); // the session-starting message
    c.bench_function("one_message/signal_library_alone", |b| {
        b.iter(|| one_message(&mut alice, &mut bob))
    });
}

fn memory_device() -> (AccountId, AccountIdentity, MemorySignalStore, cairn_proto::PrekeyBundle) {
    let identity = AccountIdentity::generate();
    let keys = DeviceKeys::generate(DeviceId::FIRST).unwrap();
    let (signed, kyber) = (
        generate_signed_prekey(&identity, 1, std::time::SystemTime::now()).unwrap(),
        generate_kyber_prekey(&identity, 1).unwrap(),
    );
    let bundle = bundle_of(&keys, &signed, &kyber).unwrap();
    let account = cairn_crypto::new_account_id();
    let store =
        MemorySignalStore::new(&account, *identity.key_pair(), keys.registration_id(), &signed, &kyber).unwrap();
    (account, identity, store, bundle)
}

fn cairn_crypto_in_memory(c: &mut Criterion) {
    let (alice, alice_identity, alice_store, _) = memory_device();
    let (bob, bob_identity, bob_store, bob_bundle) = memory_device();
    start_session(
        &alice_store,
        &bob,
        bob_identity.public_key(),
        &bob_bundle,
        std::time::SystemTime::now(),
    )
    .unwrap();
    let plaintext = plaintext();
    let one_message = || {
        let ciphertext = encrypt(
            &alice_store,
            &bob,
            DeviceId::FIRST,
            &plaintext,
            std::time::SystemTime::now(),
        )
        .unwrap();
        let inner = SealedInner {
            sender_account: alice.clone(),
            sender_identity: alice_identity.public_key().serialize().into_vec(),
            sender_device: DeviceId::FIRST,
            prekey: ciphertext.prekey,
            message: ciphertext.bytes,
        };
        let body = seal(bob_identity.public_key(), &inner).unwrap().to_bytes();
        let opened = unseal(&bob_identity, &cairn_proto::SealedBody::from_bytes(&body).unwrap()).unwrap();
        let ciphertext = cairn_crypto::Ciphertext {
            prekey: opened.prekey,
            bytes: opened.message,
        };
        let decrypted = decrypt(&bob_store, &opened.sender_account, opened.sender_device, &ciphertext).unwrap();
        Content::from_padded_bytes(&decrypted).unwrap();
    };
    one_message();
    c.bench_function("one_message/cairn_crypto_in_memory", |b| b.iter(one_message));
}

/// The sealed-sender layer alone (one ephemeral key, two X25519 agreements, HKDF,
/// AES-GCM), to show how much of the crypto layer's cost it is.
fn seal_and_unseal_alone(c: &mut Criterion) {
    let (alice, alice_identity, _, _) = memory_device();
    let bob_identity = AccountIdentity::generate();
    let inner = SealedInner {
        sender_account: alice,
        sender_identity: alice_identity.public_key().serialize().into_vec(),
        sender_device: DeviceId::FIRST,
        prekey: false,
        message: vec![0; 300],
    };
    c.bench_function("one_message/seal_and_unseal_alone", |b| {
        b.iter(|| unseal(&bob_identity, &seal(bob_identity.public_key(), &inner).unwrap()).unwrap())
    });
}

fn cairn_messenger_sqlcipher(c: &mut Criterion) {
    let vault = KeyVault::with_store(keyring_core::mock::Store::new().unwrap());
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut alice = Messenger::create_profile(&ProfileDir::new(alice_dir.path()), Unlock::Keyring(&vault)).unwrap();
    let mut bob = Messenger::create_profile(&ProfileDir::new(bob_dir.path()), Unlock::Keyring(&vault)).unwrap();
    alice.create_account("Alice").unwrap();
    let bob_id = bob.create_account("Bob").unwrap().account_id;
    // Bob accepts Alice's invite; Alice gets his card and answers; both are contacts.
    bob.accept_invite(&alice.account_info().unwrap().invite_link).unwrap();
    carry(&mut bob, &mut alice);
    carry(&mut alice, &mut bob);
    let mut one_message = || {
        alice.send_text(&bob_id, "hello world").unwrap();
        assert_eq!(carry(&mut alice, &mut bob), 1);
    };
    one_message();
    c.bench_function("one_message/cairn_messenger_sqlcipher", |b| b.iter(&mut one_message));
}

/// Hands what `from`'s outbox holds to `to`, as the courier does; returns how many
/// events that made on `to`.
fn carry(from: &mut Messenger, to: &mut Messenger) -> usize {
    let mut events = 0;
    for queued in from.due_envelopes(100).unwrap() {
        events += to.receive(&queued.outgoing.envelope.to_bytes()).unwrap().events.len();
        from.handed(&queued, Handed::ToDevice).unwrap();
    }
    events
}

criterion_group!(
    benches,
    signal_library_alone,
    seal_and_unseal_alone,
    cairn_crypto_in_memory,
    cairn_messenger_sqlcipher
);
criterion_main!(benches);
