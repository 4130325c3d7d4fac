//! Invites, as bytes (from a QR code) and as pasted text.
#![no_main]
use cairn_proto::Invite;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(invite) = Invite::from_bytes(data) {
        assert_eq!(Invite::from_link(&invite.to_link()).as_ref(), Ok(&invite));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Invite::from_link(text);
    }
});
