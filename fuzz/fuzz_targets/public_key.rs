#![no_main]
//! Any bytes as a public key file: the validator never panics, and what it accepts is one
//! ed25519 key whose line parses back to the same key.

use builderd::keys::{key_line, parse_public};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("/fuzz/id_ed25519.pub");
    if let Ok(key) = parse_public(path, data) {
        let line = key_line(&key);
        assert!(line.starts_with("ssh-ed25519 "));
        let again = parse_public(path, line.as_bytes()).expect("its own line parses");
        assert_eq!(again.key_data(), key.key_data());
    }
});
