//! The sealed body of an envelope and the inner part it hides.
#![no_main]
use cairn_proto::{SealedBody, SealedInner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = SealedBody::from_bytes(data) {
        assert_eq!(SealedBody::from_bytes(&body.to_bytes()).as_ref(), Ok(&body));
    }
    if let Ok(inner) = SealedInner::from_bytes(data) {
        assert_eq!(SealedInner::from_bytes(&inner.to_bytes()).as_ref(), Ok(&inner));
    }
});
