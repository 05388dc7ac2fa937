//! The consent URL: RFC 6749 §4.1.1 authorization request with PKCE S256
//! (RFC 7636 §4.2) and Google's web-server-flow parameters.

use url::Url;

use super::Context;
use crate::MailSync;
use crate::error::Result;
use crate::lifecycle::LifecycleEvent;
use crate::model::{MailboxId, Secret, Timestamp};
use crate::store::{GrantChange, PendingAuthorization, PendingChange};

/// A consent request for the mailbox owner's browser.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(
        module = "mailsync",
        get_all,
        set_all,
        eq,
        from_py_object,
        new = "from_fields"
    )
)]
pub struct ConsentRequest {
    /// The authorization URL to open (it carries the `state`; treat it as a
    /// one-time link, not a secret).
    pub url: String,
    /// The mailbox it is for.
    pub mailbox_id: MailboxId,
    /// After this instant the callback is refused (`state_invalid`).
    pub expires_at: Timestamp,
}

/// The scopes requested: the mail scopes, `openid email` to learn the
/// account and, in the generic dialect, `offline_access` for a refresh token.
pub(crate) fn requested_scopes(provider: &super::Provider) -> Vec<String> {
    let mut scopes = provider.mail_scopes.clone();
    for extra in ["openid", "email"] {
        if !scopes.iter().any(|s| s == extra) {
            scopes.push(extra.to_owned());
        }
    }
    if provider.dialect == super::Dialect::Generic
        && provider.offers_offline_access
        && !scopes
            .iter()
            .any(|s| s == super::provider::OFFLINE_ACCESS_SCOPE)
    {
        scopes.push(super::provider::OFFLINE_ACCESS_SCOPE.to_owned());
    }
    scopes
}

/// Builds the authorization URL. Returns the URL, the state and the verifier.
pub(crate) fn build_consent_url(ctx: &Context) -> (Url, Secret, Secret) {
    let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
    let mut request = ctx
        .client
        .authorize_url(oauth2::CsrfToken::new_random)
        .add_scopes(
            requested_scopes(&ctx.provider)
                .into_iter()
                .map(oauth2::Scope::new),
        )
        .set_pkce_challenge(challenge)
        // The consent screen every time, so a refresh token is issued on
        // every consent (Google documents it; OIDC requires it with
        // offline_access).
        .add_extra_param("prompt", "consent");
    if ctx.provider.dialect == super::Dialect::Google {
        // Google's web server flow: a refresh token, incremental grants.
        request = request
            .add_extra_param("access_type", "offline")
            .add_extra_param("include_granted_scopes", "true");
    }
    request = request.add_extra_param("login_hint", ctx.mailbox.email.clone());
    let (url, state) = request.url();
    // Move the oauth2 secrets into ours at once.
    let state = Secret::new(state.into_secret());
    let verifier = Secret::new(verifier.into_secret());
    (url, state, verifier)
}

impl MailSync {
    /// See [`crate::Connections::connect`].
    pub(crate) async fn connect(&self, mailbox: &MailboxId) -> Result<ConsentRequest> {
        let ctx = self.oauth_context(mailbox).await?;
        ctx.app().ensure_may_connect(&ctx.mailbox.email)?;
        let (url, state, verifier) = build_consent_url(&ctx);
        let now = self.now();
        let expires_at = now.plus(self.options().consent_ttl());
        let pending = PendingAuthorization {
            state,
            mailbox_id: ctx.mailbox.id.clone(),
            pkce_verifier: verifier,
            redirect_uri: ctx.redirect_uri.clone(),
            issuer: ctx.binding.issuer.clone(),
            client_id: ctx.binding.client_id.clone(),
            created_at: now,
            expires_at,
        };
        self.transition(
            &ctx.mailbox.id,
            &[LifecycleEvent::ConsentStarted { expires_at }],
            GrantChange::Keep,
            PendingChange::Put(&pending),
        )
        .await?;
        tracing::info!(mailbox = %ctx.mailbox.id, profile = %ctx.profile.id, "consent URL issued");
        Ok(ConsentRequest {
            url: url.to_string(),
            mailbox_id: ctx.mailbox.id.clone(),
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MailboxSpec, OAuthApp, ServerProfile};
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// The Google preset's consent URL carries exactly Google's documented
    /// parameters plus PKCE; no network is used.
    #[tokio::test]
    async fn google_consent_url_has_exactly_the_documented_parameters() {
        let sync = MailSync::for_tests();
        let app = OAuthApp::google("1234-abc.apps.googleusercontent.com", "client-secret-xyz")
            .for_environment("https://contoso.crm.example.com")
            .unwrap()
            .with_test_users(["alice@gmail.com"]);
        sync.directory()
            .create_profile(ServerProfile::gmail("Gmail", app).default_for_new_mailboxes())
            .await
            .unwrap();
        let mailbox = sync
            .directory()
            .create_mailbox(MailboxSpec::user("Alice@Gmail.com"))
            .await
            .unwrap();
        let consent = sync.connections().connect(&mailbox.id).await.unwrap();

        let url = &Url::parse(&consent.url).unwrap();
        assert_eq!(
            format!(
                "{}://{}{}",
                url.scheme(),
                url.host_str().unwrap(),
                url.path()
            ),
            "https://accounts.google.com/o/oauth2/v2/auth"
        );
        let mut params = BTreeMap::new();
        for (k, v) in url.query_pairs() {
            assert!(
                params.insert(k.to_string(), v.to_string()).is_none(),
                "duplicate {k}"
            );
        }
        let keys: Vec<&str> = params.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "access_type",
                "client_id",
                "code_challenge",
                "code_challenge_method",
                "include_granted_scopes",
                "login_hint",
                "prompt",
                "redirect_uri",
                "response_type",
                "scope",
                "state",
            ]
        );
        assert_eq!(params["response_type"], "code");
        assert_eq!(params["client_id"], "1234-abc.apps.googleusercontent.com");
        assert_eq!(
            params["redirect_uri"],
            "https://contoso.crm.example.com/_grid/cmds/dlg_gmailoauth.aspx"
        );
        assert_eq!(params["scope"], "https://mail.google.com/ openid email");
        assert_eq!(params["access_type"], "offline");
        assert_eq!(params["prompt"], "consent");
        assert_eq!(params["include_granted_scopes"], "true");
        assert_eq!(params["login_hint"], "alice@gmail.com");
        assert_eq!(params["code_challenge_method"], "S256");
        assert_eq!(params["code_challenge"].len(), 43, "base64url SHA-256");
        assert!(params["state"].len() >= 16);
        assert!(!url.as_str().contains("client-secret-xyz"));

        // Pending authorization stored; mailbox awaits consent; expiry ~10 min.
        let left = consent.expires_at.since(Timestamp::now_utc());
        assert!(left > Duration::from_secs(540) && left <= Duration::from_secs(600));
        let state = sync.directory().state(&mailbox.id).await.unwrap();
        assert_eq!(
            state.pending_consent.map(|p| p.expires_at),
            Some(consent.expires_at)
        );

        // A second connect replaces the first state.
        let second = sync.connections().connect(&mailbox.id).await.unwrap();
        let state_of = |u: &str| {
            Url::parse(u)
                .unwrap()
                .query_pairs()
                .find(|(k, _)| k == "state")
                .unwrap()
                .1
                .to_string()
        };
        assert_ne!(state_of(&second.url), state_of(&consent.url));
        let old = sync
            .store()
            .take_pending(&Secret::new(state_of(&consent.url)))
            .await
            .unwrap();
        assert!(old.is_none(), "the first state must be gone");
        let new = sync
            .store()
            .take_pending(&Secret::new(state_of(&second.url)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(new.mailbox_id, mailbox.id);
        assert_eq!(
            new.redirect_uri,
            "https://contoso.crm.example.com/_grid/cmds/dlg_gmailoauth.aspx"
        );
    }

    #[tokio::test]
    async fn refusals_before_redirect() {
        use crate::ErrorCode;
        use crate::model::{PublishingStatus, UserType};
        let sync = MailSync::for_tests();
        // No profile.
        let lone = sync
            .directory()
            .create_mailbox(MailboxSpec::user("lone@example.com"))
            .await
            .unwrap();
        let e = sync.connections().connect(&lone.id).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Validation);
        assert_eq!(e.field(), Some("profile_id"));
        // Not an OAuth profile.
        let password = ServerProfile::generic(
            "Password IMAP",
            crate::model::IncomingEndpoint {
                protocol: crate::model::IncomingProtocol::Imap,
                endpoint: crate::model::Endpoint::new(
                    "imap.example.com",
                    993,
                    crate::model::Security::Tls,
                ),
            },
            crate::model::Endpoint::new("smtp.example.com", 587, crate::model::Security::StartTls),
            crate::model::Authentication::CredentialsPerMailbox {},
        );
        let password = sync.directory().create_profile(password).await.unwrap();
        let pw = sync
            .directory()
            .create_mailbox(MailboxSpec::user("pw@example.com").on_profile(password.id.clone()))
            .await
            .unwrap();
        let e = sync.connections().connect(&pw.id).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Validation);
        assert_eq!(e.field(), Some("authentication"));
        // External + Testing, not a test user (added before the app was restricted).
        let app = OAuthApp::google("id.apps.googleusercontent.com", "s")
            .for_environment("https://contoso.crm.example.com")
            .unwrap()
            .with_audience(UserType::External, PublishingStatus::Production);
        let profile = sync
            .directory()
            .create_profile(ServerProfile::gmail("G", app.clone()))
            .await
            .unwrap();
        let mb = sync
            .directory()
            .create_mailbox(MailboxSpec::user("bob@gmail.com").on_profile(profile.id.clone()))
            .await
            .unwrap();
        let mut restricted = profile.clone();
        restricted.authentication = crate::model::Authentication::GmailOAuth {
            app: app
                .with_audience(UserType::External, PublishingStatus::Testing)
                .with_test_users(["x@gmail.com"]),
        };
        let restricted = sync.store().update_profile(&restricted).await.unwrap();
        let e = sync.connections().connect(&mb.id).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotATestUser);
        // No client secret.
        let mut no_secret = restricted.clone();
        if let crate::model::Authentication::GmailOAuth { app } = &mut no_secret.authentication {
            app.client_secret = None;
            app.consent_screen.publishing_status = PublishingStatus::Production;
        }
        sync.store().update_profile(&no_secret).await.unwrap();
        let e = sync.connections().connect(&mb.id).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Validation);
        assert_eq!(e.field(), Some("client_secret"));
    }
}
