//! Python bindings for mailsync: the native module `mailsync._native`,
//! re-exported by the `mailsync` package (see python/mailsync/).
//!
//! This crate only converts types, maps errors (errors.rs, the one place)
//! and owns the tokio runtime (runtime.rs). One module per core area:
//! app.rs, profile.rs, mailbox.rs, settings.rs, events.rs, oauth.rs,
//! check.rs, sync.rs. Adding a core capability means
//! one wrapper module, its registration below, and its lines in the stub.

use pyo3::prelude::*;

mod app;
mod check;
mod convert;
mod errors;
mod events;
mod mailbox;
mod oauth;
mod profile;
mod runtime;
mod settings;
mod sync;

/// mailsync's native extension. Import `mailsync` instead.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    m.add_function(wrap_pyfunction!(errors::error_codes, m)?)?;
    m.add_function(wrap_pyfunction!(errors::error_class, m)?)?;
    m.add_function(wrap_pyfunction!(errors::_error_for_code, m)?)?;
    m.add_function(wrap_pyfunction!(errors::_panic_for_test, m)?)?;
    m.add_class::<app::OAuthApp>()?;
    m.add_class::<app::ConsentScreen>()?;
    m.add_class::<app::Warning>()?;
    m.add_class::<profile::Endpoint>()?;
    m.add_class::<profile::IncomingEndpoint>()?;
    m.add_class::<profile::Authentication>()?;
    m.add_class::<profile::ProcessingOptions>()?;
    m.add_class::<profile::LastTestResult>()?;
    m.add_class::<profile::ServerProfile>()?;
    m.add_class::<mailbox::Owner>()?;
    m.add_class::<mailbox::MailboxCredentials>()?;
    m.add_class::<mailbox::TestStatus>()?;
    m.add_class::<mailbox::ConnectionState>()?;
    m.add_class::<mailbox::Alert>()?;
    m.add_class::<mailbox::Mailbox>()?;
    m.add_class::<mailbox::MailboxSpec>()?;
    m.add_class::<settings::RetryPolicy>()?;
    m.add_class::<settings::Settings>()?;
    m.add_class::<events::MailboxEvent>()?;
    m.add_class::<oauth::ConsentRequest>()?;
    m.add_class::<oauth::AccessToken>()?;
    m.add_class::<oauth::TokenInfo>()?;
    m.add_class::<check::TestOptions>()?;
    m.add_class::<check::StepResult>()?;
    m.add_class::<check::Diagnosis>()?;
    m.add_class::<check::DirectionReport>()?;
    m.add_class::<check::TestReport>()?;
    m.add_class::<sync::SealKey>()?;
    m.add_class::<sync::MailSync>()?;
    m.add(
        "BlockingMailSync",
        m.py().get_type::<sync::BlockingMailSync>(),
    )?;
    Ok(())
}
