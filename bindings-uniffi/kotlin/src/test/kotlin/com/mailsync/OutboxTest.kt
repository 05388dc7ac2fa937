package com.mailsync

import com.mailsync.api.Engine
import com.mailsync.api.MessageSink
import com.mailsync.api.Outbox
import com.mailsync.api.defaultEngineOptions
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Timeout
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path
import java.time.Instant
import java.util.UUID
import java.util.concurrent.TimeUnit

/**
 * Outgoing sync from Kotlin ("every binding" acceptance; the Python and
 * Node suites have the same cases): a Kotlin [Outbox] given to
 * `Engine.withOutbox`. One engine run sends the host's message through
 * Postfix; the host sees `Sent` with the Message-ID, and the message is read
 * back from the recipient's INBOX over IMAP. A sender other than the
 * mailbox's address never leaves: the host sees `Failed` with
 * `SENDER_NOT_ALLOWED`. Sender: sync19; recipient: sync17.
 */
@Timeout(value = 180, unit = TimeUnit.SECONDS, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class OutboxTest {
    private val sender = "sync19@example.test"
    private val recipient = "sync17@example.test"

    /** Incoming mail is not what these tests are about. */
    private object NoSink : MessageSink {
        override fun deliver(messages: List<IncomingMessage>): List<DeliveryOutcome> = messages.map { DeliveryOutcome.STORED }
        override fun tracked(mailbox: MailboxId, messageIds: List<String>): List<Boolean> = messageIds.map { false }
        override fun knownSenders(mailbox: MailboxId, addresses: List<String>): List<Boolean> = addresses.map { false }
    }

    /** A host outbox in memory: a message stays pending until reported sent or failed. */
    private class HostOutbox(vararg messages: OutgoingMessage) : Outbox {
        private val lock = Object()
        val queue = ArrayList(messages.toList())
        val asked = ArrayList<Pair<MailboxId, UInt>>()
        val reports = ArrayList<SendReport>()

        override fun pending(mailbox: MailboxId, limit: UInt): List<OutgoingMessage> = synchronized(lock) {
            asked.add(mailbox to limit)
            queue.take(limit.toInt())
        }

        override fun report(report: SendReport) = synchronized(lock) {
            if (report.outcome is SendOutcome.Sent || report.outcome is SendOutcome.Failed) queue.removeAll { it.id == report.id }
            reports.add(report)
            Unit
        }
    }

    private fun composed(id: String, to: String, subject: String, text: String, from: MailAddress? = null) =
        OutgoingMessage(
            id,
            OutgoingContent.Composed(
                ComposedMessage(
                    from = from, to = listOf(MailAddress(null, to)), cc = emptyList(), bcc = emptyList(),
                    subject = subject, text = text, html = null, attachments = emptyList(),
                    inReplyTo = null, references = emptyList(),
                ),
            ),
        )

    private suspend fun StackEnv.enabledFromNow(email: String): Mailbox =
        enabled(email) {
            incomingFilter = IncomingFilter.ALL
            processEmailReceivedAfter = Instant.now().minusSeconds(2)
        }

    @Test
    fun `a host outbox is sent through Postfix, read back over IMAP, and refused for a foreign sender`(@TempDir dir: Path) = runBlocking {
        StackEnv(dir).use { env ->
            val mailbox = env.enabledFromNow(sender)
            val tag = "kt-outbox-${UUID.randomUUID().toString().take(12)}"
            val outbox = HostOutbox(composed("crm-1", recipient, "$tag hello", "Hello from the CRM.\n"))
            Engine.withOutbox(env.sync, NoSink, outbox, defaultEngineOptions()).use { engine ->
                val report = engine.runOnce(mailbox.id)
                assertNull(report.outgoingErrorCode, report.outgoingErrorMessage)
                assertEquals(Triple(1u, 0u, 0u), Triple(report.sent, report.sendFailed, report.sendDeferred))
                assertEquals(mailbox.id to defaultEngineOptions().sendsPerCycle, outbox.asked.first())

                assertEquals(1, outbox.reports.size)
                val sent = outbox.reports.single()
                assertEquals(Triple(mailbox.id, "crm-1", 1u), Triple(sent.mailboxId, sent.id, sent.attempts))
                val outcome = sent.outcome
                assertTrue(outcome is SendOutcome.Sent, "$sent")
                outcome as SendOutcome.Sent
                assertTrue(outcome.reply.startsWith("250"), outcome.reply)
                assertEquals(emptyList<RecipientRefusal>(), outcome.refused)
                assertTrue(sent.messageId.isNotEmpty() && !sent.messageId.contains('<'), sent.messageId)
                assertTrue(outbox.queue.isEmpty())

                val raw = String(Stack.imapFind(recipient, sent.messageId), Charsets.UTF_8)
                val headers = raw.substringBefore("\r\n\r\n").lines().map { it.trimEnd('\r') }
                assertTrue("Message-ID: <${sent.messageId}>" in headers, raw)
                assertTrue("Subject: $tag hello" in headers, raw)
                assertTrue(headers.any { it.startsWith("From: ") && sender in it }, raw)
                assertTrue("Hello from the CRM." in raw, raw)

                // Sent once: a second run sends nothing again.
                val again = engine.runOnce(mailbox.id)
                assertEquals(Triple(0u, 0u, null), Triple(again.sent, again.sendFailed, again.outgoingErrorCode))
                assertEquals(1, outbox.reports.size)

                // A sender other than the mailbox's address never leaves: failed, with its code.
                outbox.queue.add(composed("crm-2", recipient, "$tag forged", "no", MailAddress("CEO", "ceo@example.test")))
                val refused = engine.runOnce(mailbox.id)
                assertEquals(0u to 1u, refused.sent to refused.sendFailed)
                val failed = outbox.reports.last()
                assertEquals("crm-2" to 0u, failed.id to failed.attempts)
                val failure = failed.outcome
                assertTrue(failure is SendOutcome.Failed, "$failed")
                failure as SendOutcome.Failed
                assertEquals(ErrorCode.SENDER_NOT_ALLOWED, failure.code)
                assertNull(failure.smtpCode)
                assertTrue("ceo@example.test" in failure.reply, failure.reply)
                assertTrue(outbox.queue.isEmpty())
            }
        }
    }

    @Test
    fun `an outbox that throws fails the outgoing cycle with sink_failed`(@TempDir dir: Path) = runBlocking {
        StackEnv(dir).use { env ->
            val mailbox = env.enabledFromNow(sender)
            val broken = object : Outbox {
                override fun pending(mailbox: MailboxId, limit: UInt): List<OutgoingMessage> =
                    throw IllegalStateException("the CRM is down")

                override fun report(report: SendReport) = throw AssertionError("nothing to report")
            }
            Engine.withOutbox(env.sync, NoSink, broken, defaultEngineOptions()).use { engine ->
                val report = engine.runOnce(mailbox.id)
                assertEquals(ErrorCode.SINK_FAILED, report.outgoingErrorCode)
                assertTrue("the CRM is down" in report.outgoingErrorMessage!!, report.outgoingErrorMessage)
                assertFalse(report.isSuccessLike())
            }
        }
    }

    private fun CycleReport.isSuccessLike() = errorCode == null && outgoingErrorCode == null
}
