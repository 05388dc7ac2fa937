#![no_main]
//! See `mailsync::fuzzing::pop3_session`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailsync::fuzzing::pop3_session(data);
});
