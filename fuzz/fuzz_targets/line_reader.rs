#![no_main]
//! See `mailsync::fuzzing::line_reader`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailsync::fuzzing::line_reader(data);
});
