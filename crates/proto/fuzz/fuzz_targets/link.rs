//! Device-link offers as pasted or scanned: decode (bytes and link text), and if that
//! succeeds, the link form must decode to the same offer.
#![no_main]
use cairn_proto::LinkOffer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(offer) = LinkOffer::from_bytes(data) {
        assert_eq!(LinkOffer::from_link(&offer.to_link()).expect("link form decodes"), offer);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = LinkOffer::from_link(text);
    }
});
