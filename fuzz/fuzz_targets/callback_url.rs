#![no_main]
//! See `mailsync::fuzzing::callback_url`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailsync::fuzzing::callback_url(data);
});
