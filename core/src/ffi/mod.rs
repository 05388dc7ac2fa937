//! What every language binding shares, in one place (features `uniffi`,
//! `napi`, `python`): the mapping of the library's own value types (ids,
//! [`Timestamp`], secrets) into each host language, done once per
//! language rather than once per field, and the panic guard that keeps a
//! Rust panic from ever crossing into a host, and the stream that carries
//! a broadcast (engine progress and reports) to a host callback.
//!
//! The records and enums of the public API carry their binding derives
//! where they are defined; a binding crate adds only its runtime, its
//! façade objects and the adaptation of host callbacks.
//!
//! [`Timestamp`]: crate::model::Timestamp

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use crate::error::{Error, ErrorCode, Result};

pub mod api;
#[cfg(feature = "napi")]
pub mod napi;
#[cfg(feature = "python")]
pub mod python;
#[cfg(feature = "uniffi")]
pub mod uniffi;

/// The values of a broadcast receiver (the engine's `progress()` and
/// `reports()`) as a stream, for a binding to hand to a host callback one
/// at a time: a callback that falls behind skips the values it missed
/// (rather than failing), and the stream ends when the sender is gone.
pub fn broadcast_stream<T: Clone + Send + 'static>(
    rx: tokio::sync::broadcast::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(value) => return Some((value, rx)),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

/// Turns a panic payload into an `internal` error naming what panicked.
pub fn panic_error(payload: Box<dyn std::any::Any + Send>) -> Error {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    Error::new(ErrorCode::Internal, format!("mailsync panicked: {detail}"))
}

/// Runs `f`, turning a panic into an `internal` error.
pub fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(panic_error(p)))
}

/// Awaits `fut`, turning a panic into an `internal` error.
pub async fn guard_async<T>(fut: impl Future<Output = Result<T>>) -> Result<T> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .unwrap_or_else(|p| Err(panic_error(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_become_internal_errors() {
        let e = guard::<()>(|| panic!("boom")).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Internal);
        assert!(e.message().contains("boom"));
        let e = guard_async::<()>(async { panic!("{}", "async boom".to_owned()) })
            .await
            .unwrap_err();
        assert!(e.message().contains("async boom"));
    }
}
