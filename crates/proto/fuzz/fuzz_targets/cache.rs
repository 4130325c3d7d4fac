//! Peer cache requests and answers as they arrive from other peers: decode, and if that
//! succeeds, re-encoding must decode to the same value.
#![no_main]
use cairn_proto::{CacheRequest, CacheResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = CacheRequest::from_bytes(data) {
        assert_eq!(CacheRequest::from_bytes(&request.to_bytes()).expect("re-encoded request decodes"), request);
    }
    if let Ok(response) = CacheResponse::from_bytes(data) {
        assert_eq!(CacheResponse::from_bytes(&response.to_bytes()).expect("re-encoded response decodes"), response);
    }
});
