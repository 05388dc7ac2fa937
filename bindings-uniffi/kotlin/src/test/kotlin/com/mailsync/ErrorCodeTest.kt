package com.mailsync

import com.mailsync.api.defaultOptions
import com.mailsync.api.errorCodes
import com.mailsync.api.errorIsTransient
import com.mailsync.api.errorNextAction
import com.mailsync.api.raiseError
import com.mailsync.api.validateOptions
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

/** Error-code parity: the codes are core's, with core's strings, and each has its own exception class. */
class ErrorCodeTest {
    /** Some documented codes (docs/errors.md), in core's order. */
    private val documented = listOf(
        "validation", "capacity_exceeded", "not_found", "already_exists", "not_a_test_user", "seal_key_mismatch",
        "consent_denied", "state_invalid", "account_mismatch", "scope_not_granted", "token_revoked", "not_connected",
        "provider_error", "protocol_disabled", "network", "protocol_error", "grant_mismatch", "host_not_allowed",
        "conflict", "internal",
    )

    /** UniFFI's class name for a code (it renames a trailing "Error" to "Exception"). */
    private fun className(code: String) =
        code.split('_').joinToString("") { it.replaceFirstChar(Char::uppercaseChar) }
            .replace(Regex("Error$"), "Exception")

    @Test
    fun everyCoreCodeExistsInKotlinWithCoresString() {
        // errorCodes() is core's ErrorCode::ALL; the Kotlin enum has exactly those, in that order.
        val codes = errorCodes()
        assertEquals(ErrorCode.entries.toList(), codes)
        assertEquals(documented, codes.map { it.code }.filter { it in documented })
        assertEquals("validation", codes.first().code)
        assertEquals("internal", codes.last().code)
        assertEquals(codes.size, codes.toSet().size, "codes are unique")

        val seen = mutableSetOf<Class<*>>()
        for (code in codes) {
            // The exception a real failure with this code raises: its code is core's as_str().
            val e = assertThrows<MailsyncException> { raiseError(code, "something about ${code.code}", null) }
            assertEquals(code.code, e.code, "core's string for $code")
            assertEquals(code, e.errorCode)
            assertEquals(className(code.code), e.javaClass.simpleName, "exception class for ${code.code}")
            assertEquals("something about ${code.code}", e.detail)
            assertNull(e.field)
            assertEquals(errorNextAction(code), e.nextAction)
            assertTrue(e.nextAction.isNotBlank())
            assertEquals(errorIsTransient(code), e.transient)
            assertTrue(e.message!!.contains("code=${code.code}"), e.message)
            assertTrue(seen.add(e.javaClass), "one class per code")
        }

        // Bijection: the sealed hierarchy has exactly one subclass per core code.
        val subclasses = MailsyncException::class.java.declaredClasses
            .filter { MailsyncException::class.java.isAssignableFrom(it) }.toSet()
        assertEquals(subclasses, seen)
    }

    @Test
    fun theErrorCarriesCodeMessageAndField() {
        val e = fails<MailsyncException.Validation> { raiseError(ErrorCode.VALIDATION, "must be between 1 and 65535", "incoming.port") }
        assertEquals(MailsyncErrorInfo("validation", "must be between 1 and 65535", "incoming.port", false, e.nextAction), e.info)
        assertEquals("incoming.port", e.field)

        // A real validation failure names its field too.
        val bad = defaultOptions().apply { httpTimeoutSecs = 0u }
        val real = fails<MailsyncException.Validation> { validateOptions(bad) }
        assertEquals("validation", real.code)
        assertEquals("http_timeout_secs", real.field)
        assertTrue(real.detail.contains("http_timeout_secs"), real.detail)
    }

    @Test
    fun transientAndNextActionComeFromCore() {
        val network = fails<MailsyncException.Network> { raiseError(ErrorCode.NETWORK, "down", null) }
        assertTrue(network.transient)
        assertEquals(errorNextAction(ErrorCode.NETWORK), network.nextAction)
        assertTrue(network.nextAction.startsWith("Check the host, port and network path"), network.nextAction)
        val revoked = fails<MailsyncException.TokenRevoked> { raiseError(ErrorCode.TOKEN_REVOKED, "gone", null) }
        assertFalse(revoked.transient)
        assertEquals(
            setOf("store_unavailable", "provider_unavailable", "network", "timeout", "server_unavailable", "send_deferred", "conflict",
                "sink_failed"),
            errorCodes().filter { errorIsTransient(it) }.map { it.code }.toSet(),
        )
    }
}
