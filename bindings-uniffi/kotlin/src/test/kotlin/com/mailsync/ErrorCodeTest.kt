package com.mailsync

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

/** Error-code parity: the codes are core's, and each has its own exception class. */
class ErrorCodeTest {
    private fun className(code: String) =
        code.split('_').joinToString("") { it.replaceFirstChar(Char::uppercaseChar) }
            .replace(Regex("Error$"), "Exception")

    @Test
    fun everyCoreCodeHasItsOwnExceptionClass() {
        val codes = errorCodes()
        // Spot-check against the documented codes (docs/errors.md), in core's order.
        assertEquals("validation", codes.first())
        assertEquals("internal", codes.last())
        for (known in listOf("capacity_exceeded", "not_found", "already_exists", "profile_in_use", "not_a_test_user",
                "seal_key_mismatch", "store", "store_unavailable", "token_revoked", "network", "tls", "timeout")) {
            assertTrue(known in codes, known)
        }
        assertEquals(codes.size, codes.toSet().size, "codes are unique")

        val seen = mutableSetOf<Class<*>>()
        for (code in codes) {
            val e = assertThrows<MailsyncException> { raiseErrorForCode(code) }
            assertEquals(code, e.code)
            assertEquals(className(code), e.javaClass.simpleName, "exception class for $code")
            assertTrue(e.nextAction.isNotBlank())
            assertTrue(e.detail.isNotBlank())
            assertTrue(e.message!!.contains("code=$code"))
            assertTrue(seen.add(e.javaClass), "one class per code")
        }

        // Bijection: the sealed hierarchy has exactly one subclass per core code.
        val subclasses = MailsyncException::class.java.declaredClasses
            .filter { MailsyncException::class.java.isAssignableFrom(it) }.toSet()
        assertEquals(subclasses, seen)
    }

    @Test
    fun transientAndNextActionComeFromCore() {
        val network = assertThrows<MailsyncException.Network> { raiseErrorForCode("network") }
        assertTrue(network.transient)
        assertEquals("Check the host, port and network path; it will be retried.", network.nextAction)
        val revoked = assertThrows<MailsyncException.TokenRevoked> { raiseErrorForCode("token_revoked") }
        assertFalse(revoked.transient)
        val unknown = assertThrows<MailsyncException.Validation> { raiseErrorForCode("no_such_code") }
        assertEquals("code", unknown.field)
    }
}
