//! Device-link offers as pasted or scanned: decode (bytes and link text), and if that
//! succeeds, the link form must decode to the same offer. Also the link protocol's
//! requests and answers and the pages of history it carries.
#![no_main]
use cairn_proto::{HistoryPage, LinkOffer, LinkRequest, LinkResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(offer) = LinkOffer::from_bytes(data) {
        assert_eq!(LinkOffer::from_link(&offer.to_link()).expect("link form decodes"), offer);
    }
    let _ = LinkRequest::from_bytes(data);
    let _ = LinkResponse::from_bytes(data);
    if let Ok(page) = HistoryPage::from_bytes(data) {
        assert_eq!(HistoryPage::from_bytes(&page.to_bytes()).expect("re-encoded page decodes"), page);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = LinkOffer::from_link(text);
    }
});
