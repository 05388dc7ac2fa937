#![no_main]
//! See `mailsync::fuzzing::sealed_envelope`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailsync::fuzzing::sealed_envelope(data);
});
