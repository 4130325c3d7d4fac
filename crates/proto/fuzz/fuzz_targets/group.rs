//! Group content as it comes out of an MLS application message: decode, and if that
//! succeeds, re-encoding must decode to the same value. Also group packets and the
//! pieces large ones travel in: a piece must never put itself together into a packet
//! of pieces.
#![no_main]
use cairn_proto::{decode_versioned, GroupContent, GroupPacket, GroupPart};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(content) = GroupContent::from_bytes(data) {
        assert_eq!(GroupContent::from_bytes(&content.to_bytes()).expect("re-encoded content decodes"), content);
    }
    let _ = decode_versioned::<GroupPacket>(data, 256 * 1024);
    // The input cut into two pieces: what they put together, if anything, is no piece.
    if data.len() >= 2 {
        let half = data.len() / 2;
        let pieces: Vec<GroupPart> = [&data[..half], &data[half..]]
            .iter()
            .enumerate()
            .map(|(index, piece)| GroupPart { id: [1; 16], index: index as u16, count: 2, bytes: piece.to_vec() })
            .collect();
        if let Ok(packet) = GroupPacket::from_parts(&pieces) {
            assert!(!matches!(packet, GroupPacket::Part(_)));
        }
    }
});
