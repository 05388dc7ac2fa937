//! The directory: server profiles and mailboxes, with the rules that tie
//! them together — at most one default profile, new mailboxes land on the
//! default profile, a Gmail OAuth profile holds at most 100 mailboxes
//! (optional spill-over to a sibling profile with the same OAuth client),
//! External + Testing apps accept only their test users, and a profile in
//! use cannot be deleted.

use crate::MailSync;
use crate::error::{Error, ErrorCode, Result};
use crate::model::{
    Authentication, Mailbox, MailboxId, MailboxSpec, ProfileId, ServerProfile, validate,
};

/// Two profiles share an OAuth client when kind, issuer and client id match.
fn same_oauth_client(a: &Authentication, b: &Authentication) -> bool {
    match (a, b) {
        (Authentication::GmailOAuth { app: x }, Authentication::GmailOAuth { app: y }) => {
            x.client_id == y.client_id
        }
        (
            Authentication::OAuthProvider { issuer: i, app: x },
            Authentication::OAuthProvider { issuer: j, app: y },
        ) => i == j && x.client_id == y.client_id,
        _ => false,
    }
}

impl MailSync {
    /// Validates and stores a new profile. If it is marked default, the
    /// previous default stops being one.
    pub async fn create_profile(&self, profile: ServerProfile) -> Result<ServerProfile> {
        profile.validate()?;
        self.store().insert_profile(&profile).await?;
        tracing::info!(profile = %profile.id, name = %profile.name, "server profile created");
        Ok(profile)
    }

    /// Validates and replaces a profile. Lowering the capacity below the
    /// number of mailboxes it holds is refused.
    pub async fn update_profile(&self, profile: ServerProfile) -> Result<ServerProfile> {
        profile.validate()?;
        let count = self.store().count_mailboxes(&profile.id).await?;
        if count > profile.mailbox_capacity {
            return Err(Error::validation(
                "mailbox_capacity",
                format!(
                    "the profile holds {count} mailboxes; move some before lowering the capacity"
                ),
            ));
        }
        self.store().update_profile(&profile).await?;
        Ok(profile)
    }

    /// A profile by id; `not_found` if it does not exist.
    pub async fn get_profile(&self, id: &ProfileId) -> Result<ServerProfile> {
        self.store()
            .get_profile(id)
            .await?
            .ok_or_else(|| Error::not_found("server profile", id))
    }

    /// A profile by id or by name (case-insensitive).
    pub async fn find_profile(&self, id_or_name: &str) -> Result<ServerProfile> {
        if let Ok(id) = ProfileId::parse(id_or_name)
            && let Some(profile) = self.store().get_profile(&id).await?
        {
            return Ok(profile);
        }
        self.store()
            .list_profiles()
            .await?
            .into_iter()
            .find(|p| p.name.eq_ignore_ascii_case(id_or_name.trim()))
            .ok_or_else(|| Error::not_found("server profile", id_or_name))
    }

    /// All profiles, ordered by name.
    pub async fn list_profiles(&self) -> Result<Vec<ServerProfile>> {
        self.store().list_profiles().await
    }

    /// The default profile for new mailboxes, if one is set.
    pub async fn default_profile(&self) -> Result<Option<ServerProfile>> {
        Ok(self
            .store()
            .list_profiles()
            .await?
            .into_iter()
            .find(|p| p.default_for_new_mailboxes))
    }

    /// Makes a profile the default for new mailboxes (replacing the previous one).
    pub async fn set_default_profile(&self, id: &ProfileId) -> Result<ServerProfile> {
        let mut profile = self.get_profile(id).await?;
        profile.default_for_new_mailboxes = true;
        self.store().update_profile(&profile).await?;
        Ok(profile)
    }

    /// Deletes a profile; `profile_in_use` while it has mailboxes.
    pub async fn delete_profile(&self, id: &ProfileId) -> Result<()> {
        self.store().delete_profile(id).await
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
        let mut mailbox = Mailbox::from_spec(spec, profile.as_ref().map(|p| p.id.clone()))?;
        let Some(profile) = profile else {
            self.store().insert_mailbox(&mailbox, None).await?;
            return Ok(mailbox);
        };
        if let Some(app) = profile.oauth_app() {
            app.ensure_may_connect(&email)?;
        }
        match self
            .store()
            .insert_mailbox(&mailbox, Some(profile.mailbox_capacity))
            .await
        {
            Err(e) if e.code() == ErrorCode::CapacityExceeded && allow_spill_over => {
                for sibling in self.store().list_profiles().await? {
                    if sibling.id == profile.id
                        || !same_oauth_client(&sibling.authentication, &profile.authentication)
                    {
                        continue;
                    }
                    mailbox.profile_id = Some(sibling.id.clone());
                    match self
                        .store()
                        .insert_mailbox(&mailbox, Some(sibling.mailbox_capacity))
                        .await
                    {
                        Ok(()) => {
                            tracing::info!(mailbox = %mailbox.id, profile = %sibling.id, "mailbox spilled over");
                            return Ok(mailbox);
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
            Err(e) => Err(e),
            Ok(()) => Ok(mailbox),
        }
    }

    /// A mailbox by id; `not_found` if it does not exist.
    pub async fn get_mailbox(&self, id: &MailboxId) -> Result<Mailbox> {
        self.store()
            .get_mailbox(id)
            .await?
            .ok_or_else(|| Error::not_found("mailbox", id))
    }

    /// A mailbox by id or email address.
    pub async fn find_mailbox(&self, id_or_email: &str) -> Result<Mailbox> {
        if let Ok(id) = MailboxId::parse(id_or_email)
            && let Some(mailbox) = self.store().get_mailbox(&id).await?
        {
            return Ok(mailbox);
        }
        let email = id_or_email.trim().to_ascii_lowercase();
        self.store()
            .find_mailbox_by_email(&email)
            .await?
            .ok_or_else(|| Error::not_found("mailbox", id_or_email))
    }

    /// Mailboxes, all or those of one profile, ordered by address.
    pub async fn list_mailboxes(&self, profile: Option<&ProfileId>) -> Result<Vec<Mailbox>> {
        self.store().list_mailboxes(profile).await
    }

    /// Validates and replaces a mailbox (capacity applies if its profile changed).
    pub async fn update_mailbox(&self, mailbox: Mailbox) -> Result<Mailbox> {
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
        self.store().update_mailbox(&mailbox, capacity).await?;
        Ok(mailbox)
    }

    /// Moves a mailbox to another profile (capacity checked).
    pub async fn assign_profile(
        &self,
        mailbox: &MailboxId,
        profile: &ProfileId,
    ) -> Result<Mailbox> {
        let mut record = self.get_mailbox(mailbox).await?;
        record.profile_id = Some(profile.clone());
        self.update_mailbox(record).await
    }

    /// Deletes a mailbox.
    pub async fn delete_mailbox(&self, id: &MailboxId) -> Result<()> {
        self.store().delete_mailbox(id).await
    }
}
