#![no_main]
//! See `mailsync::fuzzing::sasl_challenge`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailsync::fuzzing::sasl_challenge(data);
});
