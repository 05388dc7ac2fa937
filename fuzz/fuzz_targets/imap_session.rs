#![no_main]
//! See `mailsync::fuzzing::imap_session`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailsync::fuzzing::imap_session(data);
});
