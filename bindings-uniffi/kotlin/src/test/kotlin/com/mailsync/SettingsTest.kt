package com.mailsync

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Files
import java.nio.file.Path
import java.time.Duration

/** Settings, OAuth entry points and report helpers without the stack. */
class SettingsTest {
    @Test
    fun defaultsAreTheCoreDefaults() {
        val s = Settings()
        assertEquals(Duration.ofMinutes(5), s.tokenRefreshSkew())
        assertEquals(Duration.ofSeconds(30), s.httpTimeout())
        assertEquals(RetryPolicy(4, Duration.ofMillis(250), Duration.ofSeconds(4)), s.refreshRetry())
        assertEquals(Duration.ofSeconds(60), s.refreshLease())
        assertEquals(Duration.ofMinutes(10), s.consentTtl())
        assertEquals(emptyList<String>(), s.extraRootCertsPem())
        assertNull(s.googleIssuerOverride())
        assertNull(s.eventListener())
    }

    @Test
    fun buildersReturnNewValues() {
        val base = Settings()
        val changed = base.withHttpTimeout(Duration.ofSeconds(5)).withConsentTtl(Duration.ofMinutes(2))
            .withTokenRefreshSkew(Duration.ofSeconds(10)).withRefreshLease(Duration.ofSeconds(3))
            .withRefreshRetry(RetryPolicy(2, Duration.ofMillis(10), Duration.ofMillis(20)))
            .withGoogleIssuerOverride("http://127.0.0.1:9/")
        assertEquals(Duration.ofSeconds(5), changed.httpTimeout())
        assertEquals(Duration.ofMinutes(2), changed.consentTtl())
        assertEquals(Duration.ofSeconds(10), changed.tokenRefreshSkew())
        assertEquals(Duration.ofSeconds(3), changed.refreshLease())
        assertEquals(2L, changed.refreshRetry().attempts)
        assertEquals("http://127.0.0.1:9/", changed.googleIssuerOverride())
        assertEquals(Duration.ofSeconds(30), base.httpTimeout())
        assertNull(changed.withGoogleIssuerOverride(null).googleIssuerOverride())
    }

    @Test
    fun badSettingsAreValidationErrors() {
        val http = assertThrows<MailsyncException.Validation> {
            Settings().withGoogleIssuerOverride("http://accounts.example.com")
        }
        assertEquals("google_issuer_override", http.field)
        val notUrl = assertThrows<MailsyncException.Validation> { Settings().withGoogleIssuerOverride("") }
        assertEquals("google_issuer_override", notUrl.field)
        val attempts = assertThrows<MailsyncException.Validation> {
            Settings().withRefreshRetry(RetryPolicy(0, Duration.ZERO, Duration.ZERO))
        }
        assertEquals("refresh_retry.attempts", attempts.field)
        // A PEM without a certificate is refused when the store is opened.
        val pem = Settings().withExtraRootCertsPem(listOf("-----BEGIN NOTHING-----\ngarbage\n"))
        val err = assertThrows<MailsyncException> { MailSync.inMemoryWith(pem) }
        assertEquals("validation", err.code)
        assertFalse(pem.toString().contains("garbage"), pem.toString())
    }

    @Test
    fun openSqliteWithKeyAndSettings(@TempDir dir: Path) = runBlocking {
        val db = dir.resolve("keyed.db")
        val bytes = ByteArray(32) { (it * 7).toByte() }
        // Invalid settings values are refused before the store file is created.
        val zero = Settings().withHttpTimeout(Duration.ZERO)
        val bad = assertThrows<MailsyncException.Validation> {
            runBlocking { MailSync.openSqliteWithKeyAndSettings(db.toString(), SealKey.fromBytes(bytes), zero) }
        }
        assertEquals("http_timeout", bad.field)
        assertFalse(Files.exists(db), "store created despite refused settings")
        // A PEM without a certificate: validation as well.
        val pem = Settings().withExtraRootCertsPem(listOf("-----BEGIN NOTHING-----\ngarbage\n"))
        val badPem = assertThrows<MailsyncException.Validation> {
            runBlocking { MailSync.openSqliteWithKeyAndSettings(dir.resolve("pem.db").toString(), SealKey.fromBytes(bytes), pem) }
        }
        assertEquals("validation", badPem.code)

        val settings = Settings().withTokenRefreshSkew(Duration.ofSeconds(42))
        MailSync.openSqliteWithKeyAndSettings(db.toString(), SealKey.fromBytes(bytes), settings).use { sync ->
            assertEquals(Duration.ofSeconds(42), sync.settings().tokenRefreshSkew())
            sync.createProfile(ServerProfile.gmail("keyed", OAuthApp.google("id.apps.googleusercontent.com", "s3cr3t-value").forEnvironment("https://crm.example.com")))
            sync.closeStore()
        }
        // The host key sealed the secret: the same key reads it, another is refused.
        MailSync.openSqliteWithKeyAndSettings(db.toString(), SealKey.fromBytes(bytes), Settings()).use { sync ->
            assertTrue(sync.findProfile("keyed").hasClientSecret())
        }
        val wrong = assertThrows<MailsyncException.SealKeyMismatch> {
            runBlocking {
                MailSync.openSqliteWithKeyAndSettings(db.toString(), SealKey.generate(), Settings()).use { it.findProfile("keyed") }
            }
        }
        assertEquals("seal_key_mismatch", wrong.code)
    }

    @Test
    fun oauthEntryPointsRejectGarbageWithCodes(@TempDir dir: Path) = runBlocking {
        MailSync.openSqliteWith(dir.resolve("m.db").toString(), Settings()).use { sync ->
            for (id in listOf("", "not-an-id", "00000000-0000-0000-0000-000000000000")) {
                for (call in listOf<suspend () -> Unit>(
                    { sync.connect(id) }, { sync.accessToken(id) }, { sync.tokenInfo(id) },
                    { sync.disconnect(id) }, { sync.testAndEnable(id) },
                )) {
                    val e = assertThrows<MailsyncException> { runBlocking { call() } }
                    // a malformed id is `validation`, a well-formed unknown one `not_found`
                    val expected = if (id.startsWith("0000")) "not_found" else "validation"
                    assertEquals(expected, e.code, "'$id'")
                }
            }
            assertThrows<MailsyncException.StateInvalid> { runBlocking { sync.completeConnect("https://x.example/cb?code=a&state=b") } }
            val empty = assertThrows<MailsyncException> { runBlocking { sync.completeConnect("") } }
            assertTrue(empty.code in errorCodes())
            // A mailbox without an OAuth profile cannot connect.
            val profile = sync.createProfile(
                ServerProfile.generic(
                    "Password", IncomingEndpoint(IncomingProtocol.IMAP, "imap.example.com", 993, Security.TLS),
                    Endpoint("smtp.example.com", 587, Security.START_TLS), Authentication.credentialsPerMailbox(),
                ),
            )
            val box = sync.createMailbox(MailboxSpec.user("x@example.com").onProfile(profile.id()))
            val notOauth = assertThrows<MailsyncException.Validation> { runBlocking { sync.connect(box.id()) } }
            assertEquals("authentication", notOauth.field)
        }
    }
}
