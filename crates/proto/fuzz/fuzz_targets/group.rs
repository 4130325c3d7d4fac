//! Group content as it comes out of an MLS application message: decode, and if that
//! succeeds, re-encoding must decode to the same value. Also group packets and the
//! pieces large ones travel in: a piece must never put itself together into a packet
//! of pieces.
#![no_main]
use cairn_proto::{decode_versioned, GroupContent, GroupPacket};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(content) = GroupContent::from_bytes(data) {
        assert_eq!(GroupContent::from_bytes(&content.to_bytes()).expect("re-encoded content decodes"), content);
    }
    if let Ok(GroupPacket::Part(part)) = decode_versioned::<GroupPacket>(data, 256 * 1024) {
        if let Ok(packet) = GroupPacket::from_parts(std::slice::from_ref(&part)) {
            assert!(!matches!(packet, GroupPacket::Part(_)));
        }
    }
});
