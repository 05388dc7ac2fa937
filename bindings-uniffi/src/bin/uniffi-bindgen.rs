//! `uniffi-bindgen`, pinned to the same uniffi version as the library.
//!
//! `cargo run -p mailsync-uniffi --bin uniffi-bindgen -- generate --library
//! target/debug/libmailsync_uniffi.so --language kotlin --out-dir DIR`

fn main() {
    uniffi::uniffi_bindgen_main()
}
