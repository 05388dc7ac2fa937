package com.mailsync

import com.google.gson.JsonObject
import com.google.gson.JsonParser
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.Paths
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.TimeUnit

/**
 * OAuth lifecycle, host event callbacks and Test & Enable against the real
 * local stack (tests/stack: oidc-provider, Dovecot, Postfix). test.sh runs
 * `tests/stack/up` first and passes `mailsync.stack.json` / `mailsync.stack.bin`.
 * Every test opens its own temporary SQLite store.
 */
class StackTest {
    /** The host callback: collects events (called on a library thread). */
    class Recorder : MailboxEventListener {
        val events = CopyOnWriteArrayList<MailboxEvent>()
        override fun onEvent(event: MailboxEvent) {
            events.add(event)
        }
        fun kinds(): List<MailboxEventKind> = events.map { it.kind }
    }

    /** A host callback that always throws. */
    class Thrower : MailboxEventListener {
        val calls = CopyOnWriteArrayList<MailboxEventKind>()
        override fun onEvent(event: MailboxEvent) {
            calls.add(event.kind)
            throw IllegalStateException("host listener bug")
        }
    }

    companion object {
        private val stackJson: Path = Paths.get(System.getProperty("mailsync.stack.json")
            ?: error("system property mailsync.stack.json is not set (run bindings-uniffi/test.sh)"))
        private val bin: Path = Paths.get(System.getProperty("mailsync.stack.bin")
            ?: error("system property mailsync.stack.bin is not set (run bindings-uniffi/test.sh)"))
        val stack: JsonObject by lazy { JsonParser.parseString(Files.readString(stackJson)).asJsonObject }
        val oauth: JsonObject get() = stack.getAsJsonObject("oauth")
        val issuer: String get() = oauth.get("issuer").asString
        val caPem: String by lazy { Files.readString(Paths.get(stack.get("ca_cert").asString)) }
        const val ENV = "http://localhost:8765"

        fun port(service: String, key: String): Int = stack.getAsJsonObject(service).get(key).asInt

        fun password(email: String): String =
            stack.getAsJsonArray("accounts").map { it.asJsonObject }
                .first { it.get("email").asString == email }.get("password").asString

        /** Runs a stack helper script; returns its stdout (trimmed), fails on a non-zero exit. */
        fun helper(vararg args: String): String {
            val process = ProcessBuilder(listOf(bin.resolve(args[0]).toString()) + args.drop(1))
                .redirectError(ProcessBuilder.Redirect.INHERIT)
                .start()
            val out = process.inputStream.bufferedReader().readText()
            assertTrue(process.waitFor(60, TimeUnit.SECONDS), "${args[0]} timed out")
            assertEquals(0, process.exitValue(), "${args[0]} failed: $out")
            return out.trim()
        }

        /** Walks the provider's login + consent pages; returns the redirect URL. */
        fun consent(url: String, email: String, deny: Boolean = false): String {
            val args = mutableListOf("consent", url, "--email", email, "--password", password(email))
            if (deny) args.add("--deny")
            return helper(*args.toTypedArray())
        }
    }

    private fun settings(listener: MailboxEventListener? = null): Settings =
        Settings().withGoogleIssuerOverride(issuer).withExtraRootCertsPem(listOf(caPem)).withEventListener(listener)

    private suspend fun open(dir: Path, listener: MailboxEventListener? = null): MailSync =
        MailSync.openSqliteWith(dir.resolve("mailsync.db").toString(), settings(listener))

    private fun app(): OAuthApp =
        OAuthApp.google(oauth.get("client_id").asString, oauth.get("client_secret").asString).forEnvironment(ENV)

    /** IMAP (TLS) + SMTP (STARTTLS) on the stack. */
    private suspend fun imapProfile(sync: MailSync): ServerProfile = sync.createProfile(
        ServerProfile.gmail("Stack IMAP", app())
            .withIncoming(Endpoint("127.0.0.1", port("imap", "tls_port"), Security.TLS))
            .withOutgoing(Endpoint("127.0.0.1", port("smtp", "starttls_port"), Security.START_TLS)),
    )

    /** POP3 (TLS) + SMTP (implicit TLS) on the stack. */
    private suspend fun pop3Profile(sync: MailSync): ServerProfile = sync.createProfile(
        ServerProfile.gmail("Stack POP3", app()).usePop3().useSmtpTls465()
            .withIncoming(Endpoint("127.0.0.1", port("pop3", "tls_port"), Security.TLS))
            .withOutgoing(Endpoint("127.0.0.1", port("smtp", "tls_port"), Security.TLS)),
    )

    private suspend fun mailbox(sync: MailSync, profile: ServerProfile, email: String): Mailbox =
        sync.createMailbox(MailboxSpec.user(email).onProfile(profile.id()))

    /** connect → consent helper → completeConnect. */
    private suspend fun connect(sync: MailSync, mailbox: Mailbox): Mailbox {
        val request = sync.connect(mailbox.id())
        return sync.completeConnect(consent(request.url, mailbox.email()))
    }

    private fun assertDirectionOk(report: DirectionReport?, protocol: String, vararg steps: String) {
        assertNotNull(report)
        assertTrue(report!!.success, report.summary)
        assertNull(report.diagnosis)
        assertEquals(protocol, report.protocol)
        val names = report.steps.map { it.step }
        for (step in steps) assertTrue(step in names, "$step missing in $names")
        assertTrue(report.steps.all { it.ok }, "${report.steps}")
    }

    @Test
    fun imapLifecycleConnectTokenTestDisconnect(@TempDir dir: Path) = runBlocking {
        val events = Recorder()
        open(dir, events).use { sync ->
            val profile = imapProfile(sync)
            val box = mailbox(sync, profile, "alice@example.test")
            assertEquals(ConnectionState.NotConnected, box.connection())

            // 1. connect: consent URL on the stack's provider, mailbox awaiting consent.
            val request = sync.connect(box.id())
            assertTrue(request.url.startsWith("$issuer/"), request.url)
            assertTrue(request.url.contains("code_challenge_method=S256"), request.url)
            assertEquals(box.id(), request.mailboxId)
            assertTrue(sync.getMailbox(box.id()).connection() is ConnectionState.AwaitingConsent)

            val connected = sync.completeConnect(consent(request.url, "alice@example.test"))
            val state = connected.connection()
            assertTrue(state is ConnectionState.Connected, "$state")
            assertEquals("alice@example.test", (state as ConnectionState.Connected).account)
            assertEquals(state, sync.getMailbox(box.id()).connection())
            // The host callback got `connected`, with the mailbox and no secret.
            assertEquals(listOf(MailboxEventKind.CONNECTED), events.kinds())
            assertEquals(box.id(), events.events[0].mailboxId)
            assertEquals("alice@example.test", events.events[0].email)

            val info = sync.tokenInfo(box.id())!!
            assertEquals("alice@example.test", info.account)
            assertTrue(info.hasRefreshToken)
            assertTrue("https://mail.google.com/" in info.scopes, "${info.scopes}")

            // 2. access token: non-empty, hidden in toString().
            val token = sync.accessToken(box.id())
            val raw = token.expose()
            assertTrue(raw.length > 10)
            assertEquals("alice@example.test", token.account())
            assertNotNull(token.expiresAt())
            assertFalse(token.toString().contains(raw), token.toString())
            assertTrue(token.toString().contains("REDACTED"), token.toString())
            for (e in events.events) assertFalse(e.toString().contains(raw))

            // 3. Test & Enable: IMAP + SMTP succeed, steps listed, directions enabled.
            val report = sync.testAndEnable(box.id())
            assertTrue(report.isSuccess(), report.toString())
            assertEquals(TestOutcome.SUCCESS, report.outcome)
            assertNull(report.firstFailure())
            assertEquals("alice@example.test", report.email)
            assertDirectionOk(report.incoming, "IMAP", "credentials", "connect", "tls", "authenticate", "select_inbox")
            assertEquals(Direction.INCOMING, report.incoming!!.direction)
            assertEquals("127.0.0.1:${port("imap", "tls_port")}", report.incoming!!.server)
            assertDirectionOk(report.outgoing, "SMTP", "credentials", "connect", "ehlo", "authenticate")
            assertTrue(report.incomingEnabled)
            assertTrue(report.outgoingEnabled)
            val enabled = sync.getMailbox(box.id())
            assertTrue(enabled.incomingEnabled())
            assertTrue(enabled.outgoingEnabled())
            assertTrue(enabled.incomingTest() is TestStatus.Success, "${enabled.incomingTest()}")
            val json = report.toJson()
            assertTrue(json.contains("\"select_inbox\""), json)
            assertFalse(json.contains(raw))

            // 5. disconnect: NotConnected, event `disconnected`, no token any more.
            val gone = sync.disconnect(box.id())
            assertEquals(ConnectionState.NotConnected, gone.connection())
            assertEquals(MailboxEventKind.DISCONNECTED, events.kinds().last())
            assertNull(sync.tokenInfo(box.id()))
            val err = assertThrows<MailsyncException.NotConnected> { runBlocking { sync.accessToken(box.id()) } }
            assertEquals("not_connected", err.code)
            assertFalse(err.transient)
        }
    }

    @Test
    fun pop3AndSmtpTlsTestAndEnable(@TempDir dir: Path) = runBlocking {
        open(dir).use { sync ->
            val profile = pop3Profile(sync)
            assertEquals(IncomingProtocol.POP3, profile.incoming().protocol)
            val box = connect(sync, mailbox(sync, profile, "bob@example.test"))
            assertTrue(box.connection() is ConnectionState.Connected)

            val report = sync.testAndEnableWith(box.id(), TestOptions())
            assertTrue(report.isSuccess(), report.toString())
            assertDirectionOk(report.incoming, "POP3", "credentials", "connect", "tls", "authenticate", "stat")
            assertDirectionOk(report.outgoing, "SMTP", "credentials", "connect", "tls", "authenticate")
            assertTrue(report.incomingEnabled && report.outgoingEnabled)

            // The same through testAllMailboxes of the profile.
            val all = sync.testAllMailboxes(profile.id(), TestOptions(sendTestMessage = false))
            assertEquals(listOf("bob@example.test"), all.map { it.email })
            assertTrue(all.single().isSuccess())
        }
    }

    @Test
    fun consentDeniedRaisesConsentDenied(@TempDir dir: Path) = runBlocking {
        val events = Recorder()
        open(dir, events).use { sync ->
            val box = mailbox(sync, imapProfile(sync), "alice@example.test")
            val request = sync.connect(box.id())
            val redirect = consent(request.url, "alice@example.test", deny = true)
            assertTrue(redirect.contains("error=access_denied"), redirect)
            val err = assertThrows<MailsyncException.ConsentDenied> { runBlocking { sync.completeConnect(redirect) } }
            assertEquals("consent_denied", err.code)
            assertTrue(err.nextAction.isNotEmpty())
            assertFalse(sync.getMailbox(box.id()).connection() is ConnectionState.Connected)
            assertFalse(MailboxEventKind.CONNECTED in events.kinds())
        }
    }

    @Test
    fun tamperedStateRaisesStateInvalid(@TempDir dir: Path) = runBlocking {
        open(dir).use { sync ->
            val box = mailbox(sync, imapProfile(sync), "alice@example.test")
            val redirect = consent(sync.connect(box.id()).url, "alice@example.test")
            val tampered = Regex("([?&]state=)([^&]+)").replace(redirect) { m -> m.groupValues[1] + "x" + m.groupValues[2] }
            assertFalse(tampered == redirect)
            val err = assertThrows<MailsyncException.StateInvalid> { runBlocking { sync.completeConnect(tampered) } }
            assertEquals("state_invalid", err.code)
            assertNull(sync.tokenInfo(box.id()))
            // The untampered redirect still completes (the state was not consumed by the forgery).
            val ok = sync.completeConnect(redirect)
            assertTrue(ok.connection() is ConnectionState.Connected)
        }
    }

    @Test
    fun imapDisabledAccountIsDiagnosedProtocolDisabled(@TempDir dir: Path) = runBlocking {
        open(dir).use { sync ->
            val box = connect(sync, mailbox(sync, imapProfile(sync), "dave@example.test"))
            val report = sync.testAndEnable(box.id())
            assertFalse(report.isSuccess())
            assertEquals(TestOutcome.FAILURE, report.outcome)
            val diagnosis = report.incoming!!.diagnosis!!
            assertEquals("protocol_disabled", diagnosis.code)
            assertEquals("authenticate", diagnosis.step)
            assertFalse(diagnosis.transient)
            assertTrue(diagnosis.nextAction.isNotEmpty())
            assertEquals(diagnosis, report.firstFailure())
            assertFalse(report.incoming!!.success)
            assertEquals("authenticate", report.incoming!!.steps.last().step)
            assertFalse(report.incoming!!.steps.last().ok)
            assertFalse(report.incomingEnabled)
            assertFalse(sync.getMailbox(box.id()).incomingEnabled())
            // SMTP is allowed for dave.
            assertTrue(report.outgoing!!.success, report.outgoing!!.summary)
        }
    }

    @Test
    fun revokedGrantThenDisconnectIsNotConnected(@TempDir dir: Path) = runBlocking {
        val events = Recorder()
        open(dir, events).use { sync ->
            val box = connect(sync, mailbox(sync, imapProfile(sync), "carol@example.test"))
            val token = sync.accessToken(box.id()).expose()
            helper("revoke", "--", token) // the provider revokes the whole grant
            // disconnect still succeeds (the provider already considers the token invalid)
            val gone = sync.disconnect(box.id())
            assertEquals(ConnectionState.NotConnected, gone.connection())
            assertEquals(listOf(MailboxEventKind.CONNECTED, MailboxEventKind.DISCONNECTED), events.kinds())
            val err = assertThrows<MailsyncException.NotConnected> { runBlocking { sync.accessToken(box.id()) } }
            assertEquals("not_connected", err.code)
        }
    }

    @Test
    fun refreshAccessTokenReplacesTheRejectedTokenOnce(@TempDir dir: Path) = runBlocking {
        val events = Recorder()
        open(dir, events).use { sync ->
            val profile = imapProfile(sync)
            val box = connect(sync, mailbox(sync, profile, "alice@example.test"))
            val t1 = sync.accessToken(box.id())
            val version = sync.tokenInfo(box.id())!!.version

            // The server rejected t1: a new token, a `refreshed` event, a new store version.
            val t2 = sync.refreshAccessToken(box.id(), t1)
            assertNotEquals(t1.expose(), t2.expose())
            assertEquals("alice@example.test", t2.account())
            assertTrue(t2.toString().contains("REDACTED") && !t2.toString().contains(t2.expose()), t2.toString())
            assertEquals(listOf(MailboxEventKind.CONNECTED, MailboxEventKind.REFRESHED), events.kinds())
            assertEquals(box.id(), events.events.last().mailboxId)
            assertEquals(version + 1, sync.tokenInfo(box.id())!!.version)

            // Another caller reporting the same t1: the stored t2, no second refresh.
            val again = sync.refreshAccessToken(box.id(), t1)
            assertEquals(t2.expose(), again.expose())
            assertEquals(listOf(MailboxEventKind.CONNECTED, MailboxEventKind.REFRESHED), events.kinds())
            assertEquals(version + 1, sync.tokenInfo(box.id())!!.version)
            // accessToken now hands out t2 as well.
            assertEquals(t2.expose(), sync.accessToken(box.id()).expose())

            // Garbage ids: validation on `id`; unknown: not_found; not connected: not_connected.
            for (id in listOf("", "not-an-id", "user@example.test")) {
                val e = assertThrows<MailsyncException.Validation> { runBlocking { sync.refreshAccessToken(id, t2) } }
                assertEquals("validation", e.code)
                assertEquals("id", e.field, "'$id'")
            }
            val unknown = assertThrows<MailsyncException.NotFound> {
                runBlocking { sync.refreshAccessToken("00000000-0000-0000-0000-000000000000", t2) }
            }
            assertEquals("not_found", unknown.code)
            val other = mailbox(sync, profile, "bob@example.test")
            assertThrows<MailsyncException.NotConnected> { runBlocking { sync.refreshAccessToken(other.id(), t2) } }

            // A revoked grant surfaces as token_revoked.
            helper("revoke", "--", t2.expose())
            val revoked = assertThrows<MailsyncException.TokenRevoked> { runBlocking { sync.refreshAccessToken(box.id(), t2) } }
            assertEquals("token_revoked", revoked.code)
            assertFalse(revoked.transient)
            assertFalse(revoked.toString().contains(t2.expose()))
        }
    }

    @Test
    fun neverConnectedMailbox(@TempDir dir: Path) = runBlocking {
        open(dir).use { sync ->
            val box = mailbox(sync, imapProfile(sync), "alice@example.test")
            assertNull(sync.tokenInfo(box.id()))
            assertThrows<MailsyncException.NotConnected> { runBlocking { sync.accessToken(box.id()) } }
            val report = sync.testAndEnable(box.id())
            assertFalse(report.isSuccess())
            val diagnosis = report.incoming!!.diagnosis!!
            assertEquals("not_connected", diagnosis.code)
            assertEquals("credentials", diagnosis.step)
            assertEquals("not_connected", report.outgoing!!.diagnosis!!.code)
            assertFalse(report.incomingEnabled)
            assertFalse(report.outgoingEnabled)
        }
    }

    @Test
    fun throwingHostListenerDoesNotBreakTheLibrary(@TempDir dir: Path) = runBlocking {
        val thrower = Thrower()
        open(dir, thrower).use { sync ->
            val box = mailbox(sync, imapProfile(sync), "alice@example.test")
            // completeConnect succeeds although the callback throws.
            val connected = connect(sync, box)
            assertTrue(connected.connection() is ConnectionState.Connected)
            assertEquals(listOf(MailboxEventKind.CONNECTED), thrower.calls.toList())
            assertTrue(sync.accessToken(box.id()).expose().isNotEmpty())

            // Swap in a well-behaved listener: later events arrive normally.
            assertTrue(sync.settings().eventListener() === thrower)
            val recorder = Recorder()
            sync.setEventListener(recorder)
            assertTrue(sync.settings().eventListener() === recorder)
            sync.disconnect(box.id())
            assertEquals(listOf(MailboxEventKind.DISCONNECTED), recorder.kinds())
            assertEquals(listOf(MailboxEventKind.CONNECTED), thrower.calls.toList())

            // Removing the listener: no more calls.
            sync.setEventListener(null)
            assertNull(sync.settings().eventListener())
            connect(sync, box)
            assertEquals(1, recorder.events.size)
        }
    }
}
