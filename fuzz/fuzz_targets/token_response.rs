#![no_main]
//! See `mailsync::fuzzing::token_response`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailsync::fuzzing::token_response(data);
});
