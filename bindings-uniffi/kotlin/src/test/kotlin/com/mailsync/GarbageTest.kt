package com.mailsync

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path
import java.util.UUID

/** Garbage in: a typed exception with a code comes out, and the JVM survives. */
class GarbageTest {
    private val secret = "garbage-secret-value"
    private fun app() = OAuthApp.google("id.apps.googleusercontent.com", secret).forEnvironment("https://crm.example.com")

    private inline fun <reified T : MailsyncException> fails(code: String, field: String? = null, noinline block: suspend () -> Unit): T {
        val e = assertThrows<T> { runBlocking { block() } }
        assertEquals(code, e.code, e.toString())
        if (field != null) assertEquals(field, e.field, e.toString())
        assertTrue(!e.toString().contains(secret))
        return e
    }

    @Test
    fun garbageBecomesTypedErrors(@TempDir dir: Path) = runBlocking {
        MailSync.inMemory().use { sync ->
            // Empty strings.
            fails<MailsyncException.Validation>("validation", "client_id") {
                sync.createProfile(ServerProfile.gmail("x", OAuthApp.google("", secret).forEnvironment("https://crm.example.com")))
            }
            fails<MailsyncException.Validation>("validation", "client_secret") {
                sync.createProfile(ServerProfile.gmail("x", OAuthApp.google("id", "").forEnvironment("https://crm.example.com")))
            }
            fails<MailsyncException.Validation>("validation", "environment_url") { OAuthApp.google("id", secret).forEnvironment("") }
            fails<MailsyncException.Validation>("validation", "environment_url") { OAuthApp.google("id", secret).forEnvironment("not a url \u0000") }
            fails<MailsyncException.Validation>("validation", "redirect_uris") {
                sync.createProfile(ServerProfile.gmail("no redirect", OAuthApp.google("id", secret)))
            }
            fails<MailsyncException.Validation>("validation", "name") { sync.createProfile(ServerProfile.gmail("", app())) }
            fails<MailsyncException.Validation>("validation", "name") { sync.createProfile(ServerProfile.gmail("n".repeat(100_000), app())) }
            fails<MailsyncException.Validation>("validation", "email") { sync.createMailbox(MailboxSpec.user("")) }

            // Absurd ports.
            fails<MailsyncException.Validation>("validation", "outgoing.port") {
                sync.createProfile(ServerProfile.gmail("p0", app()).withOutgoing(Endpoint("smtp.example.com", 0, Security.TLS)))
            }
            fails<MailsyncException.Validation>("validation", "incoming.port") {
                ServerProfile.gmail("p", app()).withIncoming(Endpoint("imap.example.com", 70000, Security.TLS))
            }
            fails<MailsyncException.Validation>("validation", "outgoing.port") {
                ServerProfile.gmail("p", app()).withOutgoing(Endpoint("smtp.example.com", -1, Security.TLS))
            }
            fails<MailsyncException.Validation>("validation", "incoming.port") {
                ServerProfile.generic(
                    "g",
                    IncomingEndpoint(IncomingProtocol.POP3, "pop.example.com", Int.MIN_VALUE, Security.TLS),
                    Endpoint("smtp.example.com", 465, Security.TLS),
                    Authentication.credentialsPerMailbox(),
                )
            }
            fails<MailsyncException.Validation>("validation", "outgoing.security") {
                sync.createProfile(ServerProfile.gmail("plain", app()).withOutgoing(Endpoint("smtp.example.com", 25, Security.PLAINTEXT)))
            }
            fails<MailsyncException.Validation>("validation", "processing.connection_timeout_secs") {
                ServerProfile.gmail("t", app()).withProcessing(ServerProfile.gmail("t", app()).processing().copy(connectionTimeoutSecs = -5))
            }
            fails<MailsyncException.Validation>("validation", "mailbox_capacity") {
                ServerProfile.gmail("c", app()).withMailboxCapacity(-1)
            }
            fails<MailsyncException.Validation>("validation", "mailbox_capacity") {
                sync.createProfile(ServerProfile.gmail("c", app()).withMailboxCapacity(101))
            }

            // Ids that do not exist, and ids that are not ids.
            fails<MailsyncException.NotFound>("not_found") { sync.getProfile(UUID.randomUUID().toString()) }
            fails<MailsyncException.NotFound>("not_found") { sync.findProfile("no such profile") }
            fails<MailsyncException.NotFound>("not_found") { sync.setDefaultProfile(UUID.randomUUID().toString()) }
            fails<MailsyncException.NotFound>("not_found") { sync.getMailbox(UUID.randomUUID().toString()) }
            fails<MailsyncException.NotFound>("not_found") { sync.findMailbox("nobody@example.com") }
            fails<MailsyncException.Validation>("validation", "id") { sync.getProfile("") }
            fails<MailsyncException.Validation>("validation", "id") { sync.getProfile("'; DROP TABLE profiles; --") }
            fails<MailsyncException.Validation>("validation", "id") { sync.deleteMailbox("\u0000\uFFFF") }
            fails<MailsyncException.Validation>("validation", "id") { sync.listMailboxes("not-an-id") }
            fails<MailsyncException.Validation>("validation", "id") { MailboxSpec.user("a@example.com").onProfile("nope") }
            fails<MailsyncException.NotFound>("not_found") {
                sync.createMailbox(MailboxSpec.user("a@example.com").onProfile(UUID.randomUUID().toString()))
            }

            // Malformed emails.
            for (email in listOf("no-at-sign", "@example.com", "a@", "a@b", "a b@example.com", "a@@example.com", "a\u0000@example.com", "x".repeat(300) + "@example.com")) {
                fails<MailsyncException.Validation>("validation", "email") { sync.createMailbox(MailboxSpec.user(email)) }
            }

            // Bad keys and unopenable paths.
            fails<MailsyncException.Validation>("validation", "seal_key") { SealKey.fromBytes(ByteArray(3)) }
            fails<MailsyncException.Validation>("validation", "seal_key") { SealKey.fromBytes(ByteArray(0)) }
            val e = assertThrows<MailsyncException> {
                runBlocking { MailSync.openSqlite(dir.resolve("no/such/dir/x.db").toString()) }
            }
            assertTrue(e is MailsyncException.Store || e is MailsyncException.StoreUnavailable, e.toString())

            // The process survived all of that: the library still works.
            val profile = sync.createProfile(ServerProfile.gmail("after garbage", app()).defaultForNewMailboxes())
            assertEquals(profile.id(), sync.createMailbox(MailboxSpec.user("ok@example.com")).profileId())
            assertEquals(errorCodes().size, errorCodes().toSet().size)
        }
    }
}
