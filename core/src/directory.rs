//! [`Directory`]: server profiles and mailboxes, with the rules that tie
//! them together — at most one default profile, new mailboxes land on the
//! default profile, a Gmail OAuth profile holds at most 100 mailboxes
//! (optional spill-over to a sibling profile with the same OAuth client),
//! External + Testing apps accept only their test users, a profile in use
//! cannot be deleted, and Gmail OAuth profiles name only Google's mail hosts.
//!
//! Updates are optimistic: a profile or mailbox carries the `version` it was
//! read at, and an update based on a stale version fails with `conflict`
//! instead of overwriting someone else's change.

use crate::MailSync;
use crate::error::{Error, ErrorCode, Result};
use crate::lifecycle::MailboxState;
use crate::model::{
    Alert, Authentication, Mailbox, MailboxId, MailboxSpec, ProfileId, Secret, ServerProfile,
    profile_name_key, validate,
};
use crate::store;

/// Two profiles share an OAuth client when kind, issuer and client id match.
pub(crate) fn same_oauth_client(a: &Authentication, b: &Authentication) -> bool {
    match (a, b) {
        (Authentication::GmailOAuth { app: x }, Authentication::GmailOAuth { app: y }) => {
            x.client_id == y.client_id
        }
        (
            Authentication::OAuthProvider {
                issuer: i, app: x, ..
            },
            Authentication::OAuthProvider {
                issuer: j, app: y, ..
            },
        ) => i.trim_end_matches('/') == j.trim_end_matches('/') && x.client_id == y.client_id,
        _ => false,
    }
}

/// A mailbox with its runtime state and its latest alerts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
pub struct MailboxStatus {
    /// The configuration.
    pub mailbox: Mailbox,
    /// The runtime state.
    pub state: MailboxState,
    /// The latest alerts, oldest first.
    pub alerts: Vec<Alert>,
}

/// Profiles and mailboxes. See the module docs.
#[derive(Clone, Debug)]
pub struct Directory {
    pub(crate) sync: MailSync,
}

impl Directory {
    /// Validates a profile: its own rules, plus Google's mail hosts for Gmail
    /// OAuth unless the test issuer override is set.
    fn check_profile(&self, profile: &mut ServerProfile) -> Result<()> {
        profile.normalize();
        if store::profile_secret(profile).is_some_and(Secret::is_mask) {
            return Err(Error::validation(
                "client_secret",
                "is the mask shown in place of a stored secret; give the secret itself",
            ));
        }
        profile.validate()?;
        if self.sync.options().google_issuer_override.is_none() {
            profile.check_google_mail_hosts()?;
        }
        Ok(())
    }

    /// Validates and stores a new profile; returns it with its version. If
    /// it is marked default, the previous default stops being one.
    pub async fn create_profile(&self, mut profile: ServerProfile) -> Result<ServerProfile> {
        self.check_profile(&mut profile)?;
        let stored = self.sync.store().insert_profile(&profile).await?;
        tracing::info!(profile = %stored.id, name = %stored.name, "server profile created");
        Ok(stored)
    }

    /// Validates and replaces a profile read at `profile.version`
    /// (`conflict` if it changed since). Lowering the capacity below the
    /// number of mailboxes it holds is refused. A secret (client secret,
    /// password) left out, or given as [`Secret::MASK`], keeps the stored
    /// one: secrets are write-only outside Rust.
    pub async fn update_profile(&self, mut profile: ServerProfile) -> Result<ServerProfile> {
        if store::profile_secret(&profile).is_none_or(Secret::is_mask)
            && let Some(stored) = self.sync.store().get_profile(&profile.id).await?
            && let Some(secret) = store::profile_secret(&stored)
            && std::mem::discriminant(&stored.authentication)
                == std::mem::discriminant(&profile.authentication)
        {
            store::set_profile_secret(&mut profile, secret.clone());
        }
        self.check_profile(&mut profile)?;
        self.sync.store().update_profile(&profile).await
    }

    /// A profile by id; `not_found` if it does not exist.
    pub async fn get_profile(&self, id: &ProfileId) -> Result<ServerProfile> {
        self.sync
            .store()
            .get_profile(id)
            .await?
            .ok_or_else(|| Error::not_found("server profile", id))
    }

    /// A profile by id or by name (surrounding spaces and case ignored).
    pub async fn find_profile(&self, id_or_name: &str) -> Result<ServerProfile> {
        if let Ok(id) = ProfileId::parse(id_or_name)
            && let Some(profile) = self.sync.store().get_profile(&id).await?
        {
            return Ok(profile);
        }
        let key = profile_name_key(id_or_name);
        self.sync
            .store()
            .list_profiles()
            .await?
            .into_iter()
            .find(|p| profile_name_key(&p.name) == key)
            .ok_or_else(|| Error::not_found("server profile", id_or_name))
    }

    /// All profiles, ordered by name.
    pub async fn list_profiles(&self) -> Result<Vec<ServerProfile>> {
        self.sync.store().list_profiles().await
    }

    /// The default profile for new mailboxes, if one is set.
    pub async fn default_profile(&self) -> Result<Option<ServerProfile>> {
        Ok(self
            .sync
            .store()
            .list_profiles()
            .await?
            .into_iter()
            .find(|p| p.default_for_new_mailboxes))
    }

    /// Makes a profile the default for new mailboxes (replacing the previous one).
    pub async fn set_default_profile(&self, id: &ProfileId) -> Result<ServerProfile> {
        for _ in 0..5 {
            let mut profile = self.get_profile(id).await?;
            if profile.default_for_new_mailboxes {
                return Ok(profile);
            }
            profile.default_for_new_mailboxes = true;
            match self.sync.store().update_profile(&profile).await {
                Err(e) if e.code() == ErrorCode::Conflict => continue,
                other => return other,
            }
        }
        Err(Error::new(
            ErrorCode::Conflict,
            "the profile kept changing; try again",
        ))
    }

    /// How many mailboxes a profile holds.
    pub async fn mailbox_count(&self, profile: &ProfileId) -> Result<u32> {
        self.get_profile(profile).await?;
        self.sync.store().count_mailboxes(profile).await
    }

    /// Deletes a profile; `profile_in_use` while it has mailboxes.
    pub async fn delete_profile(&self, id: &ProfileId) -> Result<()> {
        self.sync.store().delete_profile(id).await
    }

    /// Creates a mailbox on the named profile or, if none is named, on the
    /// default profile (or on none when there is no default).
    ///
    /// Fails with `capacity_exceeded` when the profile is full, unless the
    /// spec allows spill-over: then the mailbox goes to another profile with
    /// the same OAuth client that has room. Fails with `not_a_test_user` when
    /// the profile's app is External + Testing and the address is not a test user.
    pub async fn create_mailbox(&self, spec: MailboxSpec) -> Result<Mailbox> {
        let email = validate::email("email", &spec.email)?;
        let profile = match &spec.profile_id {
            Some(id) => Some(self.get_profile(id).await?),
            None => self.default_profile().await?,
        };
        let allow_spill_over = spec.allow_spill_over;
        let mut mailbox = Mailbox::from_spec(
            spec,
            profile.as_ref().map(|p| p.id.clone()),
            self.sync.now(),
        )?;
        let store = self.sync.store();
        let Some(profile) = profile else {
            return store.insert_mailbox(&mailbox, None).await;
        };
        if let Some(app) = profile.oauth_app() {
            app.ensure_may_connect(&email)?;
        }
        match store
            .insert_mailbox(&mailbox, Some(profile.mailbox_capacity))
            .await
        {
            Err(e) if e.code() == ErrorCode::CapacityExceeded && allow_spill_over => {
                for sibling in store.list_profiles().await? {
                    if sibling.id == profile.id
                        || !same_oauth_client(&sibling.authentication, &profile.authentication)
                    {
                        continue;
                    }
                    mailbox.profile_id = Some(sibling.id.clone());
                    match store
                        .insert_mailbox(&mailbox, Some(sibling.mailbox_capacity))
                        .await
                    {
                        Ok(stored) => {
                            tracing::info!(mailbox = %stored.id, profile = %sibling.id, "mailbox spilled over");
                            return Ok(stored);
                        }
                        Err(e) if e.code() == ErrorCode::CapacityExceeded => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(Error::new(
                    ErrorCode::CapacityExceeded,
                    format!(
                        "{}; no other profile with the same OAuth client has room — create one",
                        e.message()
                    ),
                ))
            }
            other => other,
        }
    }

    /// A mailbox by id; `not_found` if it does not exist.
    pub async fn get_mailbox(&self, id: &MailboxId) -> Result<Mailbox> {
        self.sync
            .store()
            .get_mailbox(id)
            .await?
            .ok_or_else(|| Error::not_found("mailbox", id))
    }

    /// A mailbox by id or email address.
    pub async fn find_mailbox(&self, id_or_email: &str) -> Result<Mailbox> {
        if let Ok(id) = MailboxId::parse(id_or_email)
            && let Some(mailbox) = self.sync.store().get_mailbox(&id).await?
        {
            return Ok(mailbox);
        }
        let email = id_or_email.trim().to_ascii_lowercase();
        self.sync
            .store()
            .find_mailbox_by_email(&email)
            .await?
            .ok_or_else(|| Error::not_found("mailbox", id_or_email))
    }

    /// Mailboxes, all or those of one profile, ordered by address.
    pub async fn list_mailboxes(&self, profile: Option<&ProfileId>) -> Result<Vec<Mailbox>> {
        self.sync.store().list_mailboxes(profile).await
    }

    /// Validates and replaces a mailbox read at `mailbox.version`
    /// (`conflict` if it changed since); the capacity rule applies if its
    /// profile changed.
    pub async fn update_mailbox(&self, mut mailbox: Mailbox) -> Result<Mailbox> {
        if let Some(creds) = mailbox.credentials.as_mut()
            && creds.password.as_ref().is_none_or(Secret::is_mask)
            && let Some(stored) = self.sync.store().get_mailbox(&mailbox.id).await?
        {
            creds.password = stored.credentials.and_then(|c| c.password);
        }
        mailbox.validate()?;
        let capacity = match &mailbox.profile_id {
            Some(id) => {
                let profile = self.get_profile(id).await?;
                if let Some(app) = profile.oauth_app() {
                    app.ensure_may_connect(&mailbox.email)?;
                }
                Some(profile.mailbox_capacity)
            }
            None => None,
        };
        self.sync.store().update_mailbox(&mailbox, capacity).await
    }

    /// Moves a mailbox to another profile (capacity checked). Its grant
    /// stays bound to the OAuth client that issued it: if the new profile
    /// uses another client or issuer, the mailbox needs consent again
    /// before it is used (`grant_mismatch`).
    pub async fn move_mailbox(&self, mailbox: &MailboxId, profile: &ProfileId) -> Result<Mailbox> {
        for _ in 0..5 {
            let mut record = self.get_mailbox(mailbox).await?;
            record.profile_id = Some(profile.clone());
            match self.update_mailbox(record).await {
                Err(e) if e.code() == ErrorCode::Conflict => continue,
                other => return other,
            }
        }
        Err(Error::new(
            ErrorCode::Conflict,
            "the mailbox kept changing; try again",
        ))
    }

    /// Deletes a mailbox with its state, alerts, grant and pending consent.
    ///
    /// Its grant is revoked at the provider first (RFC 7009). When the
    /// provider cannot be reached or answers 429, 5xx or something that is
    /// not JSON, the revocation is queued in the store and the mailbox is
    /// deleted anyway; [`crate::Connections::retry_revocations`] sends it
    /// again. Fails (deleting nothing) only when the provider's
    /// configuration cannot be loaded for now or the store fails.
    pub async fn delete_mailbox(&self, id: &MailboxId) -> Result<()> {
        self.sync.revoke_before_delete(id).await?;
        self.sync.store().delete_mailbox(id).await
    }

    /// Re-seals every secret of the store with a new seal key, given as the
    /// base64 (standard alphabet) or hex text of its 32 bytes; see
    /// [`crate::MailSync::rotate_key`], which Rust hosts call with a
    /// [`crate::SealKey`]. The language bindings reach rotation through this.
    pub async fn rotate_key(&self, new_key: &Secret) -> Result<crate::store::KeyRotation> {
        let key = crate::store::SealKey::from_text(new_key.expose())?;
        self.sync.rotate_key(key).await
    }

    /// A mailbox's runtime state.
    pub async fn state(&self, id: &MailboxId) -> Result<MailboxState> {
        self.sync
            .store()
            .get_state(id)
            .await?
            .ok_or_else(|| Error::not_found("mailbox", id))
    }

    /// A mailbox's latest alerts (at most 50), oldest first.
    pub async fn alerts(&self, id: &MailboxId) -> Result<Vec<Alert>> {
        self.get_mailbox(id).await?;
        self.sync
            .store()
            .alerts(id, crate::model::mailbox::MAX_ALERTS)
            .await
    }

    /// A mailbox with its state and alerts.
    pub async fn status(&self, id: &MailboxId) -> Result<MailboxStatus> {
        let mailbox = self.get_mailbox(id).await?;
        let state = self.state(id).await?;
        let alerts = self.alerts(id).await?;
        Ok(MailboxStatus {
            mailbox,
            state,
            alerts,
        })
    }
}
