//! Envelopes as they arrive from the network or a cache: decode, and if that
//! succeeds, the id and re-encoding must be stable.
#![no_main]
use cairn_proto::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::from_bytes(data) {
        let again = Envelope::from_bytes(&envelope.to_bytes()).expect("re-encoded envelope decodes");
        assert_eq!(again.id(), envelope.id());
    }
});
