package com.mailsync

import com.mailsync.api.MailSync
import com.mailsync.api.SealKey
import com.mailsync.api.StoreLocation
import com.mailsync.api.appEnsureMayConnect
import com.mailsync.api.appForEnvironment
import com.mailsync.api.appWarnings
import com.mailsync.api.appWithAudience
import com.mailsync.api.appWithTestUsers
import com.mailsync.api.defaultOptions
import com.mailsync.api.genericProfile
import com.mailsync.api.googleApp
import com.mailsync.api.profileUsePop3
import com.mailsync.api.profileUseSmtpTls465
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.attribute.PosixFilePermission

/** The four-language scenario (Rust, Python, Node and this JUnit suite), plus the directory rules and secrets. */
class ScenarioTest {
    private fun sqlite(path: Path, key: SealKey? = null) = StoreLocation.Sqlite(path.toString(), key)

    private fun ServerProfile.app(): OAuthApp = (authentication as Authentication.GmailOAuth).app

    @Test
    fun scenario(@TempDir dir: Path): Unit = runBlocking {
        val db = dir.resolve("mailsync.db")
        var profileId = ""

        MailSync.open(sqlite(db), defaultOptions()).use { sync ->
            val d = sync.directory()
            // The key file is created next to the database, mode 0600.
            val key = dir.resolve("mailsync.db.key")
            assertTrue(Files.exists(key))
            assertEquals(setOf(PosixFilePermission.OWNER_READ, PosixFilePermission.OWNER_WRITE), Files.getPosixFilePermissions(key))

            val app = app()
            assertEquals(listOf(REDIRECT), app.redirectUris)
            assertEquals(listOf(ENV), app.javascriptOrigins)
            assertTrue("example.com" in app.consentScreen.authorizedDomains, "${app.consentScreen}")

            val profile = d.createProfile(gmail("Gmail - sales", default = true))
            profileId = profile.id
            assertEquals(ServerType.GMAIL, profile.serverType)
            assertEquals(IncomingEndpoint(IncomingProtocol.IMAP, Endpoint("imap.gmail.com", 993u, Security.TLS)), profile.incoming)
            assertEquals(Endpoint("smtp.gmail.com", 587u, Security.START_TLS), profile.outgoing)
            assertEquals(listOf(REDIRECT), profile.app().redirectUris)
            assertTrue(profile.defaultForNewMailboxes)
            assertEquals(100u, profile.mailboxCapacity)
            assertTrue(profile.version > 0)
            // The client secret is kept in Rust: equal to the one given, never readable.
            assertEquals(SecretValue(SECRET), profile.app().clientSecret)
            assertFalse(profile.app().clientSecret!!.isReadable())
            assertEquals("********", profile.app().clientSecret!!.expose())

            // 100 mailboxes land on the default profile; the 101st is refused.
            for (i in 0 until 100) {
                assertEquals(profileId, d.createMailbox(user("user%03d@example.com".format(i))).profileId)
            }
            val full = fails<MailsyncException.CapacityExceeded> { d.createMailbox(user("user100@example.com")) }
            assertEquals("capacity_exceeded", full.code)
            assertFalse(full.transient)
            assertNull(full.field)
            assertTrue(full.detail.contains("100"), full.detail)
            assertTrue(full.nextAction.isNotEmpty())
            assertEquals(100, d.listMailboxes(profileId).size)
            assertEquals(100u, d.mailboxCount(profileId))

            // An http:// redirect URI is a validation error naming the field.
            val viaEnvironment = fails<MailsyncException.Validation> {
                appForEnvironment(googleApp(CLIENT_ID, SECRET), "http://contoso.crm.example.com", null)
            }
            assertEquals("environment_url", viaEnvironment.field)
            val viaCreate = fails<MailsyncException.Validation> {
                d.createProfile(gmail("Gmail - http").apply { app().redirectUris = listOf("http://contoso.crm.example.com/cb") })
            }
            assertEquals("redirect_uris[0]", viaCreate.field)
            assertFalse(viaCreate.toString().contains(SECRET))

            // The secret is absent from every rendering of the app and the profile.
            val texts = listOf(app.toString(), profile.toString(), profile.authentication.toString(), profile.app().toString(),
                app.clientSecret.toString(), viaCreate.toString(), viaCreate.detail)
            for (text in texts) {
                assertFalse(text.contains(SECRET), text)
                assertFalse(text.contains("super-secret"), text)
            }
            assertTrue(profile.toString().contains("clientSecret=********"), profile.toString())
            assertTrue(profile.toString().contains(CLIENT_ID) && profile.toString().contains("Gmail - sales"))
            sync.closeStore()
        }

        // Reopen: a new object on the same file finds everything.
        MailSync.open(sqlite(db), defaultOptions()).use { again ->
            val d = again.directory()
            val profile = d.findProfile("gmail - SALES")
            assertEquals(profileId, profile.id)
            assertTrue(profile.defaultForNewMailboxes)
            assertEquals(profileId, d.defaultProfile()?.id)
            assertEquals(SecretValue(SECRET), profile.app().clientSecret, "the sealed client secret survives the reopen")
            assertFalse(profile.toString().contains(SECRET))
            assertEquals(listOf(REDIRECT), profile.app().redirectUris)

            val mailboxes = d.listMailboxes(null)
            assertEquals((0 until 100).map { "user%03d@example.com".format(it) }, mailboxes.map { it.email })
            val one = d.findMailbox("USER042@example.com")
            assertEquals(profileId, one.profileId)
            assertEquals(Owner.User("user042@example.com"), one.owner)
            assertEquals(one, d.getMailbox(one.id))
            val state = d.state(one.id)
            assertEquals(GrantStatus.NotConnected, state.grant)
            assertNull(state.pendingConsent)
            assertEquals(DirectionState(DirectionStatus.NotTested, TestStatus.NotRun), state.incoming)
            assertEquals(DirectionState(DirectionStatus.NotTested, TestStatus.NotRun), state.outgoing)
            assertEquals(MailboxStatus(one, state, emptyList()), d.status(one.id))

            // Still full after the reopen.
            assertEquals("capacity_exceeded", fails<MailsyncException.CapacityExceeded> { d.createMailbox(user("late@example.com")) }.code)
            again.closeStore()
        }
    }

    @Test
    fun hostSuppliedKeyMustMatch(@TempDir dir: Path): Unit = runBlocking {
        val db = dir.resolve("keyed.db")
        val bytes = ByteArray(32) { it.toByte() }
        val key = SealKey.fromBytes(bytes)
        assertFalse(key.toString().contains("0, 1, 2"))
        MailSync.open(sqlite(db, key), defaultOptions()).use { it.directory().createProfile(gmail("keyed")) }
        assertFalse(Files.exists(dir.resolve("keyed.db.key")), "a host key writes no key file")
        MailSync.open(sqlite(db, SealKey.fromBytes(bytes)), defaultOptions()).use { sync ->
            assertEquals(SecretValue(SECRET), sync.directory().findProfile("keyed").app().clientSecret)
        }
        val keyFile = dir.resolve("host.key")
        Files.write(keyFile, bytes)
        MailSync.open(sqlite(db, SealKey.fromFile(keyFile.toString())), defaultOptions()).use { sync ->
            assertEquals("keyed", sync.directory().findProfile("keyed").name)
        }
        val wrong = fails<MailsyncException.SealKeyMismatch> {
            MailSync.open(sqlite(db, SealKey.generate()), defaultOptions()).use { it.directory().findProfile("keyed") }
        }
        assertEquals("seal_key_mismatch", wrong.code)
    }

    /** SealKey.loadOrCreate: a 0600 key file made once (no temporary left), then read, as fromFile reads it. */
    @Test
    fun sealKeyLoadOrCreateMakesTheKeyFileOnceThenReadsIt(@TempDir dir: Path): Unit = runBlocking {
        val keyFile = dir.resolve("made.key")
        val created = SealKey.loadOrCreate(keyFile.toString())
        val bytes = Files.readAllBytes(keyFile)
        assertEquals(32, bytes.size)
        assertEquals(setOf(PosixFilePermission.OWNER_READ, PosixFilePermission.OWNER_WRITE), Files.getPosixFilePermissions(keyFile))
        assertFalse(created.toString().contains(bytes.joinToString(", ")))
        val db = dir.resolve("keyed.db")
        MailSync.open(sqlite(db, created), defaultOptions()).use { it.directory().createProfile(gmail("From key file")) }
        for (key in listOf(SealKey.loadOrCreate(keyFile.toString()), SealKey.fromFile(keyFile.toString()))) {
            MailSync.open(sqlite(db, key), defaultOptions()).use { sync ->
                assertEquals(SecretValue(SECRET), sync.directory().findProfile("From key file").app().clientSecret)
            }
        }
        assertTrue(bytes.contentEquals(Files.readAllBytes(keyFile)), "loadOrCreate rewrote an existing key file")
        assertFalse(Files.exists(dir.resolve("keyed.db.key")), "a host key writes no key file")
        Files.list(dir).use { files -> assertEquals(setOf("made.key", "made.key.lock"), files.toList().map { it.fileName.toString() }.filter { it.startsWith("made") }.toSet()) }
        // Not a key: refused, and left alone.
        val bad = dir.resolve("bad.key")
        Files.write(bad, ByteArray(5))
        fails<MailsyncException> { SealKey.loadOrCreate(bad.toString()) }
        assertEquals(5, Files.size(bad))
        fails<MailsyncException.Store> { SealKey.fromFile(dir.resolve("missing.key").toString()) }
    }

    @Test
    fun updatesAndDirectoryRules(): Unit = runBlocking {
        memory().use { sync ->
            val d = sync.directory()
            val testing = appWithTestUsers(appWithAudience(app(), UserType.EXTERNAL, PublishingStatus.TESTING), listOf("Alice@Example.com"))
            assertEquals(listOf("testing_refresh_token_expiry"), appWarnings(testing).map { it.code })
            assertEquals(listOf("alice@example.com"), testing.consentScreen.testUsers)
            appEnsureMayConnect(testing, "alice@example.com")
            fails<MailsyncException.NotATestUser> { appEnsureMayConnect(testing, "bob@example.com") }
            val a = d.createProfile(com.mailsync.api.gmailProfile("A", testing).apply { defaultForNewMailboxes = true })
            val b = d.createProfile(profileUseSmtpTls465(profileUsePop3(gmail("B"))).apply { mailboxCapacity = 1u })
            assertEquals(IncomingEndpoint(IncomingProtocol.POP3, Endpoint("pop.gmail.com", 995u, Security.TLS)), b.incoming)
            assertEquals(Endpoint("smtp.gmail.com", 465u, Security.TLS), b.outgoing)
            assertEquals("already_exists", fails<MailsyncException.AlreadyExists> { d.createProfile(gmail("a")) }.code)

            assertEquals("not_a_test_user", fails<MailsyncException.NotATestUser> { d.createMailbox(user("bob@example.com")) }.code)
            val alice = d.createMailbox(user("alice@example.com").apply { name = "Alice" })
            assertEquals(a.id, alice.profileId)
            assertEquals("Alice", alice.name)
            assertEquals("already_exists", fails<MailsyncException.AlreadyExists> { d.createMailbox(user("ALICE@example.com")) }.code)

            val moved = d.moveMailbox(alice.id, b.id)
            assertEquals(b.id, moved.profileId)
            val renamed = d.updateMailbox(moved.copy(name = "Alice A.", incomingDelivery = IncomingDelivery.NONE))
            assertEquals("Alice A.", d.getMailbox(alice.id).name)
            assertEquals(IncomingDelivery.NONE, renamed.incomingDelivery)
            assertTrue(renamed.version > moved.version)
            // Updates compare versions: a stale copy is a conflict, nothing is written.
            assertEquals("conflict", fails<MailsyncException.Conflict> { d.updateMailbox(moved.copy(name = "stale")) }.code)
            assertEquals("Alice A.", d.getMailbox(alice.id).name)

            assertEquals("profile_in_use", fails<MailsyncException.ProfileInUse> { d.deleteProfile(b.id) }.code)
            d.deleteMailbox(alice.id)
            d.deleteProfile(b.id)
            assertEquals(listOf("A"), d.listProfiles().map { it.name })

            // Nested records are copies: change one, assign it back.
            val current = d.getProfile(a.id)
            val updated = d.updateProfile(current.copy(name = "A2", processing = current.processing.copy(connectionTimeoutSecs = 30u)))
            assertEquals(30.toUShort(), d.getProfile(a.id).processing.connectionTimeoutSecs)
            assertEquals("A2", d.findProfile(a.id).name)
            assertEquals(SecretValue(SECRET), updated.app().clientSecret, "the secret read back and written back is kept")
            assertEquals("conflict", fails<MailsyncException.Conflict> { d.updateProfile(current.copy(name = "stale")) }.code)

            val c = d.createProfile(gmail("C"))
            assertEquals(c.id, d.setDefaultProfile(c.id).id)
            assertFalse(d.getProfile(a.id).defaultForNewMailboxes)
        }
    }

    @Test
    fun recordsHoldingSecretsNeverShowThem(): Unit = runBlocking {
        val password = "pw-hunter2-do-not-print"
        memory().use { sync ->
            val d = sync.directory()
            val auth = Authentication.CredentialsInProfile("mailer", SecretValue(password))
            val profile = d.createProfile(
                genericProfile(
                    "Local",
                    IncomingEndpoint(IncomingProtocol.IMAP, Endpoint("127.0.0.1", 1143u, Security.PLAINTEXT)),
                    Endpoint("127.0.0.1", 1587u, Security.PLAINTEXT),
                    auth,
                ).apply { allowPlaintextOnLoopback = true },
            )
            assertEquals(ServerType.IMAP_SMTP, profile.serverType)
            val stored = profile.authentication as Authentication.CredentialsInProfile
            assertEquals("mailer", stored.username)
            assertEquals(SecretValue(password), stored.password)
            val spec = user("carol@example.com", profile.id).apply { credentials = MailboxCredentials("carol", SecretValue(password)) }
            val mailbox = d.createMailbox(spec)
            assertEquals("carol", mailbox.credentials!!.username)
            assertEquals(SecretValue(password), mailbox.credentials!!.password)
            assertNotEquals(SecretValue("other"), mailbox.credentials!!.password)
            val texts = listOf(auth, stored, profile, spec, mailbox, mailbox.credentials, d.status(mailbox.id), app(), SecretValue(password))
                .map { it.toString() }
            for (text in texts) assertFalse(text.contains(password), text)
            assertTrue(texts.all { it.contains("********") }, "$texts")
            // A secret the host made reads back to the host; equal secrets are equal records.
            assertEquals(password, SecretValue(password).expose())
            assertEquals(spec.copy(), spec)
            assertEquals(mailbox, d.getMailbox(mailbox.id))
        }
    }

    @Test
    fun optionsAreTheCoreDefaultsAndRoundTrip(): Unit = runBlocking {
        val o = defaultOptions()
        assertEquals(emptyList<String>(), o.extraRootCertsPem)
        assertNull(o.googleIssuerOverride)
        assertEquals(listOf(300u, 30u, 60u, 600u), listOf(o.tokenRefreshSkewSecs, o.httpTimeoutSecs, o.refreshLeaseSecs, o.consentTtlSecs))
        assertEquals(RetryPolicy(4u, 250u, 4000u), o.refreshRetry)
        assertEquals(FailurePolicy(10u, 300u), o.failurePolicy)
        val changed = o.copy(googleIssuerOverride = "http://127.0.0.1:9/", httpTimeoutSecs = 2u, consentTtlSecs = 7u)
        memory(changed).use { sync -> assertEquals(changed, sync.options()) }
        val bad = fails<MailsyncException.Validation> { MailSync.open(StoreLocation.Memory, o.copy(googleIssuerOverride = "http://accounts.example.com")) }
        assertEquals("google_issuer_override", bad.field)
        val pem = o.copy(extraRootCertsPem = listOf("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"))
        assertEquals("validation", fails<MailsyncException> { MailSync.open(StoreLocation.Memory, pem) }.code)
    }
}
