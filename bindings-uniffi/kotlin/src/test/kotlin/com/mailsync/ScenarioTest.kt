package com.mailsync

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.attribute.PosixFilePermission

/** The four-language scenario (Rust, Python, Node and this JUnit suite). */
class ScenarioTest {
    private val clientId = "1234-abc.apps.googleusercontent.com"
    private val secret = "GOCSPX-super-secret-value-42"
    private val env = "https://contoso.crm.example.com"

    @Test
    fun scenario(@TempDir dir: Path) = runBlocking {
        val db = dir.resolve("mailsync.db").toString()
        var profileId = ""

        MailSync.openSqlite(db).use { sync ->
            // The key file is created next to the database, mode 0600.
            val key = dir.resolve("mailsync.db.key")
            assertTrue(Files.exists(key))
            assertEquals(
                setOf(PosixFilePermission.OWNER_READ, PosixFilePermission.OWNER_WRITE),
                Files.getPosixFilePermissions(key),
            )

            val app = OAuthApp.google(clientId, secret).forEnvironment(env)
            assertEquals("$env/_grid/cmds/dlg_gmailoauth.aspx", app.redirectUri())
            assertEquals(listOf(env), app.javascriptOrigins())
            assertTrue(app.hasClientSecret())

            val profile = sync.createProfile(ServerProfile.gmail("Gmail - sales", app).defaultForNewMailboxes())
            profileId = profile.id()
            assertEquals(ServerType.GMAIL, profile.serverType())
            assertEquals(IncomingEndpoint(IncomingProtocol.IMAP, "imap.gmail.com", 993, Security.TLS), profile.incoming())
            assertEquals(Endpoint("smtp.gmail.com", 587, Security.START_TLS), profile.outgoing())
            assertEquals("$env/_grid/cmds/dlg_gmailoauth.aspx", profile.oauthApp()!!.redirectUri())
            assertEquals(AuthenticationKind.GMAIL_O_AUTH, profile.authentication().kind())
            assertTrue(profile.isDefaultForNewMailboxes())
            assertEquals(100L, profile.mailboxCapacity())
            assertTrue(profile.hasClientSecret())

            // 100 mailboxes land on the default profile; the 101st is refused.
            for (i in 0 until 100) {
                val mailbox = sync.createMailbox(MailboxSpec.user("user%03d@example.com".format(i)))
                assertEquals(profileId, mailbox.profileId())
            }
            val full = assertThrows<MailsyncException.CapacityExceeded> {
                runBlocking { sync.createMailbox(MailboxSpec.user("user100@example.com")) }
            }
            assertEquals("capacity_exceeded", full.code)
            assertFalse(full.transient)
            assertNull(full.field)
            assertTrue(full.detail.contains("100"), full.detail)
            assertTrue(full.nextAction.isNotEmpty())
            assertEquals(100, sync.listMailboxes(profileId).size)

            // An http:// redirect URI is a validation error naming the field.
            val viaEnvironment = assertThrows<MailsyncException.Validation> {
                OAuthApp.google(clientId, secret).forEnvironment("http://contoso.crm.example.com")
            }
            assertEquals("validation", viaEnvironment.code)
            assertEquals("environment_url", viaEnvironment.field)
            val viaCreate = assertThrows<MailsyncException.Validation> {
                runBlocking {
                    sync.createProfile(
                        ServerProfile.gmail("Gmail - http", app.withRedirectUri("http://contoso.crm.example.com/cb")),
                    )
                }
            }
            assertEquals("redirect_uris[1]", viaCreate.field)
            assertFalse(viaCreate.toString().contains(secret))

            // The secret is absent from toString and JSON of the app and the profile.
            for (text in listOf(app.toString(), app.toJson(), profile.toString(), profile.toJson(),
                    profile.authentication().toString(), profile.oauthApp()!!.toString())) {
                assertFalse(text.contains(secret), text)
                assertFalse(text.contains("super-secret"), text)
            }
            assertTrue(profile.toString().contains("REDACTED"))
            assertTrue(profile.toJson().contains(clientId))
        }

        // Reopen: a new object on the same file finds everything.
        MailSync.openSqlite(db).use { again ->
            val profile = again.findProfile("gmail - SALES")
            assertEquals(profileId, profile.id())
            assertTrue(profile.isDefaultForNewMailboxes())
            assertEquals(profileId, again.defaultProfile()?.id())
            assertTrue(profile.hasClientSecret(), "the sealed client secret survives the reopen")
            assertFalse(profile.toString().contains(secret))
            assertEquals("$env/_grid/cmds/dlg_gmailoauth.aspx", profile.oauthApp()!!.redirectUri())

            val mailboxes = again.listMailboxes(null)
            assertEquals(100, mailboxes.size)
            assertEquals("user000@example.com", mailboxes.first().email())
            assertEquals("user099@example.com", mailboxes.last().email())
            val one = again.findMailbox("USER042@example.com")
            assertEquals(profileId, one.profileId())
            assertEquals(Owner.User("user042@example.com"), one.owner())
            assertEquals(ConnectionState.NotConnected, one.connection())
            assertEquals(TestStatus.NotRun, one.incomingTest())
            assertNotNull(again.getMailbox(one.id()))

            // Still full after the reopen.
            val full = assertThrows<MailsyncException.CapacityExceeded> {
                runBlocking { again.createMailbox(MailboxSpec.user("late@example.com")) }
            }
            assertEquals("capacity_exceeded", full.code)
        }
    }

    @Test
    fun hostSuppliedKeyMustMatch(@TempDir dir: Path) = runBlocking {
        val db = dir.resolve("keyed.db").toString()
        val key = SealKey.fromBytes(ByteArray(32) { it.toByte() })
        assertFalse(key.toString().contains("0, 1, 2"))
        MailSync.openSqliteWithKey(db, key).use { sync ->
            sync.createProfile(ServerProfile.gmail("keyed", OAuthApp.google(clientId, secret).forEnvironment(env)))
        }
        MailSync.openSqliteWithKey(db, SealKey.fromBytes(ByteArray(32) { it.toByte() })).use { sync ->
            assertTrue(sync.findProfile("keyed").hasClientSecret())
        }
        val wrong = assertThrows<MailsyncException> {
            runBlocking {
                MailSync.openSqliteWithKey(db, SealKey.generate()).use { it.findProfile("keyed") }
            }
        }
        assertEquals("seal_key_mismatch", (wrong as MailsyncException.SealKeyMismatch).code)
    }

    @Test
    fun updatesAndDirectoryRules() = runBlocking {
        MailSync.inMemory().use { sync ->
            val app = OAuthApp.google(clientId, secret).forEnvironment(env)
                .withAudience(UserType.EXTERNAL, PublishingStatus.TESTING)
                .withTestUsers(listOf("Alice@Example.com"))
            assertEquals(listOf("testing_refresh_token_expiry"), app.warnings().map { it.code })
            assertEquals(listOf("alice@example.com"), app.consentScreen().testUsers)
            val a = sync.createProfile(ServerProfile.gmail("A", app).defaultForNewMailboxes())
            val b = sync.createProfile(ServerProfile.gmail("B", app).withMailboxCapacity(1))

            val notTester = assertThrows<MailsyncException.NotATestUser> {
                runBlocking { sync.createMailbox(MailboxSpec.user("bob@example.com")) }
            }
            assertEquals("not_a_test_user", notTester.code)

            val alice = sync.createMailbox(MailboxSpec.user("alice@example.com").withName("Alice"))
            assertEquals(a.id(), alice.profileId())
            assertEquals("Alice", alice.name())
            val dup = assertThrows<MailsyncException.AlreadyExists> {
                runBlocking { sync.createMailbox(MailboxSpec.user("ALICE@example.com")) }
            }
            assertEquals("already_exists", dup.code)

            val moved = sync.assignProfile(alice.id(), b.id())
            assertEquals(b.id(), moved.profileId())
            val renamed = sync.updateMailbox(moved.withName("Alice A.").withIncomingEnabled(false))
            assertEquals("Alice A.", sync.getMailbox(alice.id()).name())
            assertFalse(renamed.incomingEnabled())

            val inUse = assertThrows<MailsyncException.ProfileInUse> {
                runBlocking { sync.deleteProfile(b.id()) }
            }
            assertEquals("profile_in_use", inUse.code)
            sync.deleteMailbox(alice.id())
            sync.deleteProfile(b.id())
            assertEquals(listOf("A"), sync.listProfiles().map { it.name() })

            val processing = a.processing().copy(connectionTimeoutSecs = 30)
            val updated = sync.updateProfile(a.withProcessing(processing).withName("A2").useSmtpTls465())
            assertEquals(30, sync.getProfile(a.id()).processing().connectionTimeoutSecs)
            assertEquals(Endpoint("smtp.gmail.com", 465, Security.TLS), updated.outgoing())
            assertEquals("A2", sync.findProfile(a.id()).name())

            val c = sync.createProfile(ServerProfile.gmail("C", app))
            assertEquals(c.id(), sync.setDefaultProfile(c.id()).id())
            assertFalse(sync.getProfile(a.id()).isDefaultForNewMailboxes())
        }
    }

    @Test
    fun genericProfileWithPasswordsNeverShowsThem() = runBlocking {
        val password = "pw-hunter2-do-not-print"
        MailSync.inMemory().use { sync ->
            val auth = Authentication.credentialsInProfile("mailer", password)
            assertTrue(auth.hasPassword())
            assertEquals("mailer", auth.username())
            val profile = sync.createProfile(
                ServerProfile.generic(
                    "Local",
                    IncomingEndpoint(IncomingProtocol.IMAP, "127.0.0.1", 1143, Security.PLAINTEXT),
                    Endpoint("127.0.0.1", 1587, Security.PLAINTEXT),
                    auth,
                ).withAllowPlaintextOnLoopback(true),
            )
            assertEquals(ServerType.IMAP_SMTP, profile.serverType())
            assertFalse(profile.hasClientSecret())
            val spec = MailboxSpec.user("carol@example.com").onProfile(profile.id()).withCredentials("carol", password)
            val mailbox = sync.createMailbox(spec)
            assertEquals(MailboxCredentials("carol", true), mailbox.credentials())
            for (text in listOf(auth.toString(), profile.toString(), profile.toJson(), spec.toString(),
                    mailbox.toString(), mailbox.toJson(), mailbox.credentials().toString())) {
                assertFalse(text.contains(password), text)
            }
        }
    }
}
