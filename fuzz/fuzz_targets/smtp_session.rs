#![no_main]
//! See `mailsync::fuzzing::smtp_session`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailsync::fuzzing::smtp_session(data);
});
