#![no_main]
//! See `mailsync::fuzzing::id_token`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailsync::fuzzing::id_token(data);
});
