//! The public futures are `Send`: hosts (and the bindings) run them on
//! multi-threaded runtimes. A compile-time check; it fails to build, not to
//! run, when a future stops being `Send`.

use std::sync::Arc;

use mailsync::model::MailboxId;
use mailsync::sync::{DeliveryOutcome, IncomingMessage, MessageSink};
use mailsync::{Engine, EngineOptions, MailSync, Options, StoreConfig};

fn assert_send<T: Send>(_: &T) {}

struct Nothing;

#[async_trait::async_trait]
impl MessageSink for Nothing {
    async fn deliver(&self, m: Vec<IncomingMessage>) -> mailsync::Result<Vec<DeliveryOutcome>> {
        Ok(vec![DeliveryOutcome::Skip; m.len()])
    }
}

#[tokio::test]
async fn public_futures_are_send() {
    let open = MailSync::open(StoreConfig::sqlite("/nonexistent/x.db"), Options::default());
    assert_send(&open);
    let sync = MailSync::open(StoreConfig::memory(), Options::default())
        .await
        .unwrap();
    let id = MailboxId::new();
    assert_send(&sync.connections().access_token(&id));
    assert_send(&sync.checks().test_and_enable(&id, &Default::default()));
    let engine = Engine::new(sync.clone(), Arc::new(Nothing), EngineOptions::default()).unwrap();
    assert_send(&engine.run_once(&id));
    assert_send(&engine.run_due());
    assert_send(&engine.status());
}
