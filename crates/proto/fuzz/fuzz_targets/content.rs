//! The padded plaintext a Signal session carries.
#![no_main]
use cairn_proto::Content;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(content) = Content::from_padded_bytes(data) {
        assert_eq!(Content::from_padded_bytes(&content.to_padded_bytes()).as_ref(), Ok(&content));
    }
});
