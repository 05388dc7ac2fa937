package com.mailsync

import com.mailsync.api.EventListener
import com.mailsync.api.MailSync
import com.mailsync.api.SealKey
import com.mailsync.api.StoreLocation
import com.mailsync.api.appForEnvironment
import com.mailsync.api.defaultOptions
import com.mailsync.api.errorCodes
import com.mailsync.api.forwardMailbox
import com.mailsync.api.genericProfile
import com.mailsync.api.gmailProfile
import com.mailsync.api.googleApp
import com.mailsync.api.validateOptions
import com.mailsync.api.validateProfile
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path
import java.time.Instant
import java.util.UUID

/**
 * Garbage in: a typed [MailsyncException] with a code comes out — never a
 * panic across the FFI (which UniFFI would report as its own untyped
 * `InternalException`), never a crash — and the library keeps working.
 */
class GarbageTest {
    private inline fun <reified T : MailsyncException> rejects(code: String, field: String? = null, noinline block: suspend () -> Unit): T {
        val e = try {
            fails<T>(block)
        } catch (missing: AssertionError) {
            throw AssertionError("expected $code on field $field: ${missing.message}", missing)
        }
        assertEquals(code, e.code, e.toString())
        if (field != null) assertEquals(field, e.field, e.toString())
        assertFalse(e.toString().contains(SECRET))
        assertFalse(e.detail.contains(SECRET))
        return e
    }

    private fun withIncomingPort(profile: ServerProfile, port: Int) =
        profile.apply { incoming = IncomingEndpoint(IncomingProtocol.IMAP, Endpoint("imap.example.com", port.toUShort(), Security.TLS)) }

    @Test
    fun garbageValuesBecomeValidationErrors(): Unit = runBlocking {
        memory().use { sync ->
            val d = sync.directory()
            // Empty and malformed OAuth values.
            rejects<MailsyncException.Validation>("validation", "client_id") { validateProfile(gmailProfile("x", app(clientId = ""))) }
            rejects<MailsyncException.Validation>("validation", "environment_url") { appForEnvironment(googleApp(CLIENT_ID, SECRET), "", null) }
            rejects<MailsyncException.Validation>("validation", "environment_url") { appForEnvironment(googleApp(CLIENT_ID, SECRET), "not a url \u0000", null) }
            rejects<MailsyncException.Validation>("validation", "redirect_path") { appForEnvironment(googleApp(CLIENT_ID, SECRET), ENV, "no-slash") }
            rejects<MailsyncException.Validation>("validation", "redirect_uris") { d.createProfile(gmailProfile("no redirect", googleApp(CLIENT_ID, SECRET))) }
            // A masked secret (as read from the library) is not a secret to create with.
            rejects<MailsyncException.Validation>("validation", "client_secret") {
                d.createProfile(gmail("masked").apply { authentication = Authentication.GmailOAuth(app().apply { clientSecret = SecretValue("********") }) })
            }

            // Names, ports, hosts, security, capacity, timeouts.
            rejects<MailsyncException.Validation>("validation", "name") { d.createProfile(gmail("")) }
            rejects<MailsyncException.Validation>("validation", "name") { d.createProfile(gmail("n".repeat(100_000))) }
            rejects<MailsyncException.Validation>("validation", "incoming.port") { d.createProfile(withIncomingPort(gmail("p0"), 0)) }
            // 70000 does not fit an unsigned 16-bit port: it wraps to 4464, which is a port.
            assertEquals(4464, withIncomingPort(gmail("wrap"), 70000).incoming.endpoint.port.toInt())
            rejects<MailsyncException.Validation>("validation", "outgoing.host") {
                d.createProfile(gmail("no host").apply { outgoing = Endpoint("", 587u, Security.START_TLS) })
            }
            rejects<MailsyncException.Validation>("validation", "incoming.security") {
                d.createProfile(gmail("plain").apply { incoming = IncomingEndpoint(IncomingProtocol.IMAP, Endpoint("imap.gmail.com", 143u, Security.PLAINTEXT)) })
            }
            rejects<MailsyncException.Validation>("validation", "mailbox_capacity") { d.createProfile(gmail("big").apply { mailboxCapacity = 101u }) }
            rejects<MailsyncException.Validation>("validation", "mailbox_capacity") { d.createProfile(gmail("max").apply { mailboxCapacity = UInt.MAX_VALUE }) }
            rejects<MailsyncException.Validation>("validation", "processing.connection_timeout_secs") {
                d.createProfile(gmail("timeout").apply { processing = processing.copy(connectionTimeoutSecs = 0u) })
            }
            rejects<MailsyncException.Validation>("validation", "incoming.port") {
                validateProfile(genericProfile("g", IncomingEndpoint(IncomingProtocol.POP3, Endpoint("pop.example.com", 0u, Security.TLS)),
                    Endpoint("smtp.example.com", 465u, Security.TLS), Authentication.CredentialsPerMailbox))
            }

            // Malformed emails and mailbox rules.
            d.createProfile(gmail("Good", default = true))
            for (email in listOf("", "no-at-sign", "@example.com", "a@", "a b@example.com", "a\u0000@example.com", "x".repeat(300) + "@example.com")) {
                rejects<MailsyncException.Validation>("validation", "email") { d.createMailbox(user(email)) }
            }
            rejects<MailsyncException.Validation>("validation", "outgoing_delivery") {
                d.createMailbox(user("f@example.com").apply { incomingDelivery = IncomingDelivery.FORWARD_MAILBOX })
            }
            rejects<MailsyncException.Validation>("validation", "delete_after_processing") {
                d.createMailbox(user("d@example.com").apply { deleteAfterProcessing = true })
            }

            // Instants the core cannot represent (beyond year 9999, before year -9999).
            for (at in listOf(Instant.MAX, Instant.MIN)) {
                rejects<MailsyncException.Validation>("validation") {
                    d.createMailbox(forwardMailbox("far-${at.epochSecond}@example.com").apply { processEmailReceivedAfter = at })
                }
            }

            // Bad options.
            rejects<MailsyncException.Validation>("validation", "google_issuer_override") { validateOptions(defaultOptions().apply { googleIssuerOverride = "not a url" }) }
            rejects<MailsyncException.Validation>("validation", "refresh_retry.attempts") {
                validateOptions(defaultOptions().apply { refreshRetry = refreshRetry.copy(attempts = 0u) })
            }
            rejects<MailsyncException.Validation>("validation", "consent_ttl_secs") { validateOptions(defaultOptions().apply { consentTtlSecs = UInt.MAX_VALUE }) }

            // Bad keys.
            rejects<MailsyncException.Validation>("validation", "seal_key") { SealKey.fromBytes(ByteArray(3)) }
            rejects<MailsyncException.Validation>("validation", "seal_key") { SealKey.fromBytes(ByteArray(0)) }
            rejects<MailsyncException.Validation>("validation", "seal_key") { SealKey.fromBytes(ByteArray(33)) }

            // The library still works after all that.
            assertEquals(listOf("Good"), d.listProfiles().map { it.name })
            assertEquals(d.findProfile("good").id, d.createMailbox(user("ok@example.com")).profileId)
            assertTrue(errorCodes().isNotEmpty())
        }
    }

    @Test
    fun garbageIdsAndUrlsAreNotFoundOrStateInvalid(): Unit = runBlocking {
        memory().use { sync ->
            val d = sync.directory()
            val c = sync.connections()
            val checks = sync.checks()
            // Ids are opaque text: anything that is not an existing id is not_found.
            for (id in listOf(UUID.randomUUID().toString(), "not-a-uuid", "", "'; DROP TABLE profiles; --", "\u0000\uFFFF", "💥")) {
                for (call in listOf<suspend () -> Unit>(
                    { d.getProfile(id) }, { d.setDefaultProfile(id) }, { d.deleteProfile(id) }, { d.mailboxCount(id) },
                    { d.getMailbox(id) }, { d.deleteMailbox(id) }, { d.state(id) }, { d.status(id) }, { d.alerts(id) },
                    { d.moveMailbox(id, id) }, { c.connect(id) }, { c.accessToken(id) }, { c.disconnect(id) },
                    { c.refreshAccessToken(id, SecretValue("token")) }, { checks.testAndEnable(id, TestOptions(false)) },
                    { checks.testAll(id, TestOptions(false)) },
                )) {
                    rejects<MailsyncException.NotFound>("not_found", block = call)
                }
            }
            rejects<MailsyncException.NotFound>("not_found") { d.findProfile("no such profile") }
            rejects<MailsyncException.NotFound>("not_found") { d.findMailbox("nobody@example.com") }
            rejects<MailsyncException.NotFound>("not_found") { d.createMailbox(user("a@example.com", UUID.randomUUID().toString())) }

            // Callback URLs that are not one of ours.
            for (url in listOf("", "garbage", "https://x.example/cb?code=a&state=b", "state=", "\u0000", "%%%")) {
                rejects<MailsyncException.StateInvalid>("state_invalid") { c.complete(url) }
            }
            rejects<MailsyncException.Validation>("validation", "callback_url") { c.complete("state=" + "x".repeat(10_000)) }
            d.createProfile(gmail("Good", default = true))
            assertEquals(1u, d.mailboxCount(d.createMailbox(user("ok@example.com")).profileId!!))
        }
    }

    @Test
    fun unopenableStoresAreStoreErrors(@TempDir dir: Path) {
        val e = assertThrows<MailsyncException> {
            runBlocking { MailSync.open(StoreLocation.Sqlite(dir.resolve("no/such/dir/x.db").toString(), null), defaultOptions()) }
        }
        assertTrue(e is MailsyncException.Store || e is MailsyncException.StoreUnavailable, e.toString())
        // Invalid options are refused before the database file is created.
        val db = dir.resolve("refused.db")
        rejects<MailsyncException.Validation>("validation", "http_timeout_secs") {
            MailSync.open(StoreLocation.Sqlite(db.toString(), SealKey.generate()), defaultOptions().apply { httpTimeoutSecs = 0u })
        }
        assertFalse(java.nio.file.Files.exists(db), "store created despite refused options")
    }

    @Test
    fun aThrowingListenerLosesItsEventNotTheSubscription(): Unit = runBlocking {
        memory().use { sync ->
            val d = sync.directory()
            d.createProfile(gmail("Good", default = true))
            val boxes = listOf(d.createMailbox(user("one@example.com")), d.createMailbox(user("two@example.com")))
            // UniFFI turns the exception into a panic in Rust; the binding contains it.
            val calls = java.util.concurrent.CountDownLatch(2)
            val thrower = object : EventListener {
                override fun onEvent(event: MailboxEvent) {
                    calls.countDown()
                    throw IllegalStateException("host listener bug")
                }
            }
            sync.subscribe(null, thrower).use {
                // One snapshot per mailbox: the second arrives after the first threw.
                assertTrue(calls.await(30, java.util.concurrent.TimeUnit.SECONDS), "the listener got ${2 - calls.count} of 2 events")
            }
            assertEquals(boxes.map { it.id }, d.listMailboxes(null).map { it.id })
        }
    }
}
