//! Group content as it comes out of an MLS application message: decode, and if that
//! succeeds, re-encoding must decode to the same value.
#![no_main]
use cairn_proto::GroupContent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(content) = GroupContent::from_bytes(data) {
        assert_eq!(GroupContent::from_bytes(&content.to_bytes()).expect("re-encoded content decodes"), content);
    }
});
