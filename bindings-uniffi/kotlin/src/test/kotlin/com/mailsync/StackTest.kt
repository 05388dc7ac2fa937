package com.mailsync

import com.mailsync.api.EventListener
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Timeout
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Files
import java.nio.file.Path
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicReference

/**
 * The OAuth lifecycle, events and Test & Enable against the real local
 * stack (tests/stack: oidc-provider, Dovecot, Postfix on 127.0.0.1). Every
 * test opens its own SQLite store, with an IMAP profile (default) and a
 * POP3 profile, and records every event. The consent pages are walked by
 * tests/stack/bin/consent ([StackEnv]). The provider, like Google, revokes every grant
 * of an account on the client at once (a disconnect, a revocation, a
 * refused grant): JUnit runs these tests one at a time.
 */
class StackTest {
    private fun assertDirectionOk(report: DirectionReport?, protocol: String, server: String, vararg steps: String) {
        assertNotNull(report)
        assertTrue(report!!.success, report.summary)
        assertNull(report.diagnosis)
        assertEquals(protocol, report.protocol)
        assertEquals(server, report.server)
        val names = report.steps.map { it.step }
        assertEquals("credentials", names.first())
        for (step in steps) assertTrue(step in names, "$step missing in $names")
        assertTrue(report.steps.all { it.ok }, "${report.steps}")
    }

    @Test
    fun happyPathConnectCompleteTestAndEnableDisconnect(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val email = "alice@example.test"
            val box = env.mailbox(email)
            assertEquals(GrantStatus.NotConnected, env.grant(box.id))
            // A subscription cancelled now sees only its snapshot, whatever happens next.
            val cancelled = Recorder(skipSnapshots = false)
            env.sync.subscribe(box.id, cancelled).use { sub ->
                cancelled.awaitUntil("the snapshot") { it.size == 1 }
                sub.cancel()
            }

            // 1. connect: a consent URL on the stack's provider; the mailbox awaits consent.
            val request = env.c.connect(box.id)
            assertTrue(request.url.startsWith(Stack.oauth.get("authorization_endpoint").asString), request.url)
            assertTrue(request.url.contains("code_challenge_method=S256"), request.url)
            assertEquals(box.id, request.mailboxId)
            assertEquals(request.expiresAt, env.d.state(box.id).pendingConsent?.expiresAt)

            // 2. complete: the owner consented; the CRM hands over the redirect.
            val redirect = Stack.consent(request.url, email)
            assertTrue(redirect.startsWith("${Stack.CRM}/_grid/cmds/dlg_gmailoauth.aspx?"), redirect)
            val status = env.c.complete(redirect)
            assertEquals(box.id, status.mailbox.id)
            val grant = status.state.grant
            assertTrue(grant is GrantStatus.Connected && grant.account == email, "$grant")
            assertNull(status.state.pendingConsent)
            assertEquals(grant, env.grant(box.id))
            env.events.saw(MailboxEventKind.CONNECTED to email)
            val connected = env.events.of(MailboxEventKind.CONNECTED).single()
            assertEquals(box.id, connected.mailboxId)
            assertNull(connected.code)
            assertEquals(grant, connected.state.grant)

            val info = env.c.grantInfo(box.id)!!
            assertEquals(email, info.account)
            assertTrue(info.hasRefreshToken)
            assertTrue("https://mail.google.com/" in info.scopes, "${info.scopes}")
            assertEquals(Stack.issuer.trimEnd('/') to Stack.clientId, info.issuer.trimEnd('/') to info.clientId)

            // 3. An access token: readable by the host, never shown.
            val token = env.c.accessToken(box.id)
            val raw = token.token.expose()
            assertTrue(raw.length > 10 && raw != "********")
            assertEquals(email, token.account)
            assertNotNull(token.expiresAt)
            for (text in listOf(token.toString(), token.token.toString(), info.toString(), status.toString())) {
                assertFalse(text.contains(raw), text)
            }
            assertTrue(token.toString().contains("token=********"), token.toString())

            // 4. Test & Enable: IMAP + SMTP succeed, steps listed, both directions enabled.
            val report = env.check(box.id)
            assertEquals(TestOutcome.SUCCESS, report.outcome, "$report")
            assertEquals(email, report.email)
            assertDirectionOk(report.incoming, "IMAP", "127.0.0.1:${Stack.port("imap", "tls_port")}", "connect", "tls", "authenticate", "select_inbox")
            assertEquals(Direction.INCOMING, report.incoming!!.direction)
            assertDirectionOk(report.outgoing, "SMTP", "127.0.0.1:${Stack.port("smtp", "starttls_port")}", "connect", "ehlo", "authenticate")
            assertTrue(report.incomingEnabled && report.outgoingEnabled)
            assertFalse(report.toString().contains(raw))
            val state = env.d.state(box.id)
            for (direction in listOf(state.incoming, state.outgoing)) {
                assertTrue(direction.status is DirectionStatus.Enabled, "$direction")
                assertTrue(direction.lastTest is TestStatus.Success, "$direction")
            }
            assertEquals(TestOutcome.SUCCESS, env.checks.lastProfileTest(env.imap.id)?.outcome)
            // One event (both directions changed alike: merged, no direction named).
            val enabled = env.events.awaitUntil("direction_enabled") { all -> all.any { it.kind == MailboxEventKind.DIRECTION_ENABLED } }
                .single { it.kind == MailboxEventKind.DIRECTION_ENABLED }
            assertNull(enabled.direction)
            assertEquals(state.incoming.status, enabled.state.incoming.status)
            assertEquals(state.outgoing.status, enabled.state.outgoing.status)

            // 5. disconnect: not connected, an event, no token any more; idempotent.
            val gone = env.c.disconnect(box.id)
            assertEquals(GrantStatus.NotConnected, gone.state.grant)
            env.events.saw(MailboxEventKind.CONNECTED to email, MailboxEventKind.DISCONNECTED to email, kinds = LIFECYCLE)
            assertNull(env.c.grantInfo(box.id))
            val err = fails<MailsyncException.NotConnected> { env.c.accessToken(box.id) }
            assertEquals("not_connected", err.code)
            assertFalse(err.transient)
            assertEquals(GrantStatus.NotConnected, env.c.disconnect(box.id).state.grant)
            assertEquals(1, cancelled.events.size, "the cancelled subscription got ${cancelled.events.map { it.kind }}")
        }
    }

    @Test
    @Timeout(value = 120, unit = TimeUnit.SECONDS, threadMode = Timeout.ThreadMode.SEPARATE_THREAD) // a deadlock fails, not hangs
    fun aListenerCallingBackForTheSameMailboxDuringCompleteFinishes(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val email = "alice@example.test"
            val box = env.mailbox(email)
            val done = CountDownLatch(1)
            val seen = AtomicReference<Any>()
            // Blocking host code in the listener, calling into the library for the mailbox of the event.
            val reentrant = object : EventListener {
                override fun onEvent(event: MailboxEvent) {
                    if (event.kind != MailboxEventKind.CONNECTED) return
                    try {
                        seen.set(runBlocking {
                            val token = env.c.accessToken(event.mailboxId)
                            Triple(env.d.state(event.mailboxId).grant, token.account, env.c.grantInfo(event.mailboxId)?.account)
                        })
                    } catch (e: Throwable) {
                        seen.set(e)
                    } finally {
                        done.countDown()
                    }
                }
            }
            env.sync.subscribe(box.id, reentrant).use {
                val request = env.c.connect(box.id)
                env.c.complete(Stack.consent(request.url, email))
                assertTrue(done.await(60, TimeUnit.SECONDS), "deadlock: the listener's calls did not return")
            }
            val (grant, tokenAccount, infoAccount) = seen.get() as? Triple<*, *, *> ?: throw AssertionError("listener failed: ${seen.get()}")
            assertTrue(grant is GrantStatus.Connected, "$grant")
            assertEquals(email to email, tokenAccount to infoAccount)
            env.c.disconnect(box.id)
        }
    }

    @Test
    fun pop3AndSmtpTlsTestAndEnableAndTestAll(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val bob = env.connected("bob@example.test", env.pop3)
            assertEquals(env.pop3.id, bob.profileId)
            val report = env.check(bob.id)
            assertEquals(TestOutcome.SUCCESS, report.outcome, "$report")
            assertDirectionOk(report.incoming, "POP3", "127.0.0.1:${Stack.port("pop3", "tls_port")}", "connect", "tls", "authenticate", "stat")
            assertDirectionOk(report.outgoing, "SMTP", "127.0.0.1:${Stack.port("smtp", "tls_port")}", "connect", "tls", "authenticate")
            assertTrue(report.incomingEnabled && report.outgoingEnabled)

            val all = env.checks.testAll(env.pop3.id, TestOptions(false))
            assertEquals(listOf("bob@example.test"), all.map { it.email })
            assertEquals(TestOutcome.SUCCESS, all.single().outcome)
        }
    }

    @Test
    fun uncheckedMailScopeIsScopeNotGranted(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val email = "alice@example.test"
            val box = env.mailbox(email)
            val request = env.c.connect(box.id)
            val redirect = Stack.consent(request.url, email, "--uncheck-scope", "https://mail.google.com/")
            val e = fails<MailsyncException.ScopeNotGranted> { env.c.complete(redirect) }
            assertEquals("scope_not_granted", e.code)
            assertEquals(ErrorCode.SCOPE_NOT_GRANTED, e.errorCode)
            assertTrue(e.nextAction.isNotEmpty())
            assertFalse(e.transient)
            // Nothing stored; the failure is visible on the mailbox and as an event.
            assertNull(env.c.grantInfo(box.id))
            assertEquals(GrantStatus.NotConnected, env.grant(box.id))
            assertTrue(env.d.alerts(box.id).any { it.code == "scope_not_granted" }, "${env.d.alerts(box.id)}")
            env.events.saw(MailboxEventKind.CONSENT_FAILED to email, kinds = LIFECYCLE)
            assertEquals(ErrorCode.SCOPE_NOT_GRANTED, env.events.of(MailboxEventKind.CONSENT_FAILED).single().code)
            fails<MailsyncException.NotConnected> { env.c.accessToken(box.id) }
        }
    }

    @Test
    fun anotherAccountConsentingIsAccountMismatch(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val email = "carol@example.test"
            val box = env.mailbox(email)
            val request = env.c.connect(box.id)
            val redirect = Stack.consent(request.url, "bob@example.test") // bob signs in on carol's link
            val e = fails<MailsyncException.AccountMismatch> { env.c.complete(redirect) }
            assertEquals("account_mismatch", e.code)
            assertEquals(ErrorCode.ACCOUNT_MISMATCH, e.errorCode)
            assertTrue(e.detail.contains("bob@example.test") && e.detail.contains(email), e.detail)
            assertNull(env.c.grantInfo(box.id))
            assertEquals(GrantStatus.NotConnected, env.grant(box.id))
            env.events.saw(MailboxEventKind.CONSENT_FAILED to email, kinds = LIFECYCLE)
            assertEquals(ErrorCode.ACCOUNT_MISMATCH, env.events.of(MailboxEventKind.CONSENT_FAILED).single().code)

            // The right account connects afterwards.
            val again = env.c.connect(box.id)
            val status = env.c.complete(Stack.consent(again.url, email))
            assertEquals(GrantStatus.Connected::class, status.state.grant::class)
            assertEquals(email, (status.state.grant as GrantStatus.Connected).account)
            env.c.disconnect(box.id)
        }
    }

    @Test
    fun consentDeniedIsConsentDenied(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val email = "carol@example.test"
            val box = env.mailbox(email)
            val redirect = Stack.consent(env.c.connect(box.id).url, email, "--deny")
            assertTrue(redirect.contains("error=access_denied"), redirect)
            val e = fails<MailsyncException.ConsentDenied> { env.c.complete(redirect) }
            assertEquals("consent_denied", e.code)
            assertFalse(e.transient)
            assertEquals(GrantStatus.NotConnected, env.grant(box.id))
            env.events.saw(MailboxEventKind.CONSENT_FAILED to email, kinds = LIFECYCLE)
            assertEquals(ErrorCode.CONSENT_DENIED, env.events.of(MailboxEventKind.CONSENT_FAILED).single().code)
            fails<MailsyncException.NotConnected> { env.c.accessToken(box.id) }
        }
    }

    @Test
    fun tamperedOrReplayedStateIsStateInvalid(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val email = "alice@example.test"
            val box = env.mailbox(email)
            val redirect = Stack.consent(env.c.connect(box.id).url, email)
            val tampered = Regex("([?&]state=)([^&]+)").replace(redirect) { m -> m.groupValues[1] + "x" + m.groupValues[2] }
            assertNotEquals(redirect, tampered)
            for (bad in listOf(tampered, Regex("([?&]state=)[^&]*").replace(redirect, "$1"))) {
                assertEquals("state_invalid", fails<MailsyncException.StateInvalid> { env.c.complete(bad) }.code)
            }
            assertNull(env.c.grantInfo(box.id))
            // The genuine redirect still completes once (the forgeries consumed nothing)...
            assertTrue(env.c.complete(redirect).state.grant is GrantStatus.Connected)
            // ...and never twice.
            fails<MailsyncException.StateInvalid> { env.c.complete(redirect) }
            env.c.disconnect(box.id)
        }
    }

    @Test
    fun imapDisabledAccountIsDiagnosedProtocolDisabled(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val dave = env.connected("dave@example.test")
            val report = env.check(dave.id)
            assertEquals(TestOutcome.FAILURE, report.outcome)
            val diagnosis = report.incoming!!.diagnosis!!
            assertEquals(ErrorCode.PROTOCOL_DISABLED, diagnosis.code)
            assertEquals("authenticate", diagnosis.step)
            assertFalse(diagnosis.transient)
            assertTrue(diagnosis.nextAction.isNotEmpty())
            assertEquals("authenticate", report.incoming!!.steps.last().step)
            assertFalse(report.incoming!!.steps.last().ok)
            assertFalse(report.incomingEnabled)
            // SMTP is allowed for dave.
            assertTrue(report.outgoing!!.success, report.outgoing!!.summary)
            val state = env.d.state(dave.id)
            assertEquals(ErrorCode.PROTOCOL_DISABLED, (state.incoming.lastTest as TestStatus.Failure).code)
            assertTrue(state.incoming.status is DirectionStatus.Disabled, "${state.incoming}")
            assertTrue(env.d.alerts(dave.id).any { it.code == "protocol_disabled" })
        }
    }

    @Test
    fun refreshAccessTokenReplacesTheRejectedTokenOnceThenTokenRevoked(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val email = "alice@example.test"
            val box = env.connected(email)
            val t1 = env.c.accessToken(box.id)
            val before = env.c.grantInfo(box.id)!!.version

            // The server rejected t1: a new token, a `refreshed` event, a new grant version.
            val t2 = env.c.refreshAccessToken(box.id, t1.token)
            assertNotEquals(t1.token.expose(), t2.token.expose())
            assertEquals(email, t2.account)
            env.events.saw(MailboxEventKind.CONNECTED to email, MailboxEventKind.REFRESHED to email, kinds = LIFECYCLE)
            val after = env.c.grantInfo(box.id)!!.version
            assertTrue(after > before)

            // Another caller reporting the same t1: the stored t2, no second refresh.
            assertEquals(t2.token.expose(), env.c.refreshAccessToken(box.id, t1.token).token.expose())
            assertEquals(t2.token.expose(), env.c.refreshAccessToken(box.id, SecretValue(t1.token.expose())).token.expose())
            assertEquals(after, env.c.grantInfo(box.id)!!.version)
            assertEquals(t2.token.expose(), env.c.accessToken(box.id).token.expose())

            // Unknown ids: not_found; a mailbox without a grant: not_connected.
            for (id in listOf("", "not-an-id", "00000000-0000-4000-8000-000000000000")) {
                assertEquals("not_found", fails<MailsyncException.NotFound> { env.c.refreshAccessToken(id, t2.token) }.code)
            }
            val carol = env.mailbox("carol@example.test")
            fails<MailsyncException.NotConnected> { env.c.refreshAccessToken(carol.id, t2.token) }

            // A revoked grant is token_revoked: the mailbox needs re-consent.
            Stack.revoke(t2.token.expose())
            val revoked = fails<MailsyncException.TokenRevoked> { env.c.refreshAccessToken(box.id, t2.token) }
            assertEquals("token_revoked", revoked.code)
            assertFalse(revoked.transient)
            assertFalse(revoked.toString().contains(t2.token.expose()))
            env.events.saw(MailboxEventKind.CONNECTED to email, MailboxEventKind.REFRESHED to email, MailboxEventKind.NEEDS_RECONSENT to email, kinds = LIFECYCLE)
            assertEquals(ErrorCode.TOKEN_REVOKED, env.events.of(MailboxEventKind.NEEDS_RECONSENT).single().code)
            val grant = env.grant(box.id)
            assertTrue(grant is GrantStatus.NeedsReconsent && grant.code == ErrorCode.TOKEN_REVOKED, "$grant")
        }
    }

    @Test
    fun revokedGrantThenDisconnectIsNotConnected(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val email = "carol@example.test"
            val box = env.connected(email)
            Stack.revoke(env.c.accessToken(box.id).token.expose()) // the provider revokes the whole grant
            // disconnect still succeeds (the provider already considers the grant invalid)
            assertEquals(GrantStatus.NotConnected, env.c.disconnect(box.id).state.grant)
            env.events.saw(MailboxEventKind.CONNECTED to email, MailboxEventKind.DISCONNECTED to email, kinds = LIFECYCLE)
            assertEquals("not_connected", fails<MailsyncException.NotConnected> { env.c.accessToken(box.id) }.code)
        }
    }

    @Test
    fun neverConnectedMailboxIsDiagnosedAtCredentials(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val carol = env.mailbox("carol@example.test")
            assertNull(env.c.grantInfo(carol.id))
            val report = env.check(carol.id)
            for (direction in listOf(report.incoming!!, report.outgoing!!)) {
                assertEquals(ErrorCode.NOT_CONNECTED, direction.diagnosis!!.code)
                assertEquals("credentials", direction.diagnosis!!.step)
                assertEquals(listOf("credentials"), direction.steps.map { it.step })
            }
            assertFalse(report.incomingEnabled || report.outgoingEnabled)
        }
    }

    @Test
    fun noSecretInRenderingsErrorsOrTheDatabase(@TempDir dir: Path): Unit = runBlocking {
        val secret = Stack.clientSecret
        val (raw, texts) = StackEnv(dir).use { env ->
            val alice = env.connected("alice@example.test")
            val token = env.c.accessToken(alice.id)
            val objects = listOf(token, env.c.grantInfo(alice.id), env.check(alice.id), env.d.getMailbox(alice.id),
                env.d.getProfile(env.imap.id), env.d.status(alice.id), env.sync.options(), env.imap) + env.events.events
            val e = fails<MailsyncException> { env.c.refreshAccessToken("no-such-mailbox", token.token) }
            token.token.expose() to (objects.map { it.toString() } + listOf(e.toString(), e.detail))
        }
        for (text in texts) {
            assertFalse(text.contains(raw), text)
            assertFalse(text.contains(secret), text)
        }
        Files.list(dir).use { files ->
            for (f in files.toList()) {
                val data = String(Files.readAllBytes(f), Charsets.ISO_8859_1)
                assertFalse(data.contains(raw) || data.contains(secret), "${f.fileName} holds a secret in clear")
            }
        }
    }
}
