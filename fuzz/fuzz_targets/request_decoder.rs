#![no_main]
//! Any bytes on the socket: decoding never panics, and what decodes encodes back to itself.

use builderd::protocol::{decode_request, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = decode_request(data) {
        let bytes = encode(&env);
        let again = decode_request(&bytes[..bytes.len() - 1]).expect("what encodes decodes");
        assert_eq!(again, env);
    }
});
