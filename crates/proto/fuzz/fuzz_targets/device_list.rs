//! Device lists, as carried inside signed lists.
#![no_main]
use cairn_proto::DeviceList;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = DeviceList::from_bytes(data) {
        assert_eq!(DeviceList::from_bytes(&list.to_bytes()).as_ref(), Ok(&list));
    }
});
