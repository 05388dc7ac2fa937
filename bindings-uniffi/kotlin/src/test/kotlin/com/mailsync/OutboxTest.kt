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
 * `SENDER_NOT_ALLOWED`; fixed and handed to `resend`, it goes out with the
 * Message-ID it was given. `Engine.withOwner` names the leases (read from
 * the SQLite file while the engine holds one); `seedOutgoing()` makes an
 * outbox-only mailbox due. Senders: sync19, sync13 (resend), sync10
 * (withOwner), sync08 (seedOutgoing); recipient: sync17.
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

    /**
     * (kind, owner) of the leases held on a mailbox, read from the SQLite
     * file as an operator would (`mailsync workers` lists the same rows);
     * with python3's sqlite3 (the JVM has no SQLite driver here; the stack
     * runs on python3 anyway).
     */
    private fun leases(db: Path, mailbox: MailboxId): List<Pair<String, String>> {
        val script = listOf(
            "import sqlite3, sys",
            "db = sqlite3.connect(f\"file:{sys.argv[1]}?mode=ro\", uri=True)",
            "rows = db.execute(\"SELECT kind, owner FROM leases WHERE mailbox_id = ? ORDER BY kind\", (sys.argv[2],))",
            "print(\"\\n\".join(f\"{k} {o}\" for k, o in rows))",
        ).joinToString("\n")
        val process = ProcessBuilder("python3", "-c", script, db.toString(), mailbox)
            .redirectError(ProcessBuilder.Redirect.INHERIT)
            .start()
        val out = process.inputStream.bufferedReader().readText()
        assertTrue(process.waitFor(30, TimeUnit.SECONDS), "python3 timed out")
        assertEquals(0, process.exitValue(), out)
        return out.lines().filter { it.isNotBlank() }.map { it.substringBefore(' ') to it.substringAfter(' ') }
    }

    @Test
    fun `resend sends a failed message again with the Message-ID it was given`(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val from = "sync13@example.test"
            val mailbox = env.enabledFromNow(from)
            val tag = "kt-resend-${UUID.randomUUID().toString().take(12)}"
            val forged = composed("crm-r", recipient, "$tag resent", "Sent on the second try.\n", MailAddress("CEO", "ceo@example.test"))
            val fixed = composed("crm-r", recipient, "$tag resent", "Sent on the second try.\n")
            val outbox = HostOutbox(forged)
            Engine.withOutbox(env.sync, NoSink, outbox, defaultEngineOptions()).use { engine ->
                val first = engine.runOnce(mailbox.id)
                assertEquals(0u to 1u, first.sent to first.sendFailed)
                val failed = outbox.reports.last()
                assertEquals(ErrorCode.SENDER_NOT_ALLOWED, (failed.outcome as SendOutcome.Failed).code)
                val messageId = failed.messageId
                assertTrue(messageId.isNotEmpty() && !messageId.contains('<'), messageId)

                // Fixed by the host but not handed to resend: reported failed again, never sent by itself.
                outbox.queue.add(fixed)
                val still = engine.runOnce(mailbox.id)
                assertEquals(0u, still.sent)
                val again = outbox.reports.last()
                assertEquals("crm-r" to messageId, again.id to again.messageId)
                assertTrue(again.outcome is SendOutcome.Failed, "$again")

                // resend: back to pending; the next cycle sends it with its Message-ID.
                outbox.queue.add(fixed)
                engine.resend(mailbox.id, "crm-r")
                val report = engine.runOnce(mailbox.id)
                assertEquals(Triple(1u, 0u, null), Triple(report.sent, report.sendFailed, report.outgoingErrorCode))
                val sent = outbox.reports.last()
                assertEquals("crm-r" to messageId, sent.id to sent.messageId)
                assertTrue(sent.outcome is SendOutcome.Sent, "$sent")
                assertTrue(outbox.queue.isEmpty())
                val raw = String(Stack.imapFind(recipient, messageId), Charsets.UTF_8)
                val headers = raw.substringBefore("\r\n\r\n").lines().map { it.trimEnd('\r') }
                assertTrue("Subject: $tag resent" in headers, raw)
                assertTrue(headers.any { it.startsWith("From: ") && from in it }, raw)

                // A sent message is never sent again; an unknown id is not found.
                val e = fails<MailsyncException.Validation> { engine.resend(mailbox.id, "crm-r") }
                assertEquals("validation" to "id", e.code to e.field)
                fails<MailsyncException.NotFound> { engine.resend(mailbox.id, "crm-none") }
            }
        }
    }

    @Test
    fun `withOwner names the leases and takes an optional outbox`(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val db = dir.resolve("mailsync.db")
            val mailbox = env.enabledFromNow("sync10@example.test")
            val owner = "crm-worker-7"
            val seen = ArrayList<List<Pair<String, String>>>()
            val inner = HostOutbox()
            // Reads the leases while the engine holds the mailbox's send lease.
            val watching = object : Outbox by inner {
                override fun pending(mailbox: MailboxId, limit: UInt): List<OutgoingMessage> {
                    synchronized(seen) { seen.add(leases(db, mailbox)) }
                    return inner.pending(mailbox, limit)
                }
            }
            val options = defaultEngineOptions()
            Engine.withOwner(env.sync, NoSink, options, owner, watching).use { engine ->
                assertEquals(owner, engine.owner())
                assertEquals(options, engine.options())
                val report = engine.runOnce(mailbox.id)
                assertTrue(report.isSuccessLike(), "$report")
                assertEquals(listOf(mailbox.id to options.sendsPerCycle), inner.asked) // the outbox is used
                val held = synchronized(seen) { seen.single() }
                assertTrue("send" to owner in held, "$held")
                assertEquals(setOf(owner), held.map { it.second }.toSet())
                eventually("the leases to be given back", 10) { leases(db, mailbox.id).isEmpty() }
            }

            // Without an outbox (left out): no outgoing cycle.
            Engine.withOwner(env.sync, NoSink, options, "crm-worker-8").use { bare ->
                assertEquals("crm-worker-8", bare.owner())
                val report = bare.runOnce(mailbox.id)
                assertNull(report.errorCode, report.errorMessage)
                assertEquals(0u, report.sent)
                assertEquals(1, inner.asked.size)
            }

            // The others are named by the engine; an empty name is refused.
            Engine(env.sync, NoSink, options).use { assertTrue(it.owner().startsWith("engine-"), it.owner()) }
            val e = fails<MailsyncException.Validation> { Engine.withOwner(env.sync, NoSink, options, "  ", watching).close() }
            assertEquals("owner", e.field)
        }
    }

    @Test
    fun `seedOutgoing makes an outbox-only mailbox due`(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val mailbox = env.enabled("sync08@example.test") { incomingDelivery = IncomingDelivery.NONE }
            val tag = "kt-seed-${UUID.randomUUID().toString().take(12)}"
            val outbox = HostOutbox(composed("crm-s", recipient, "$tag seeded", "Sent by a scheduled cycle.\n"))
            val options = defaultEngineOptions()
            Engine.withOutbox(env.sync, NoSink, outbox, options).use { engine ->
                suspend fun row() = engine.status().single { it.mailboxId == mailbox.id }

                // Enabled, but with no incoming cycle nothing ever scheduled its outgoing mail.
                val before = row()
                assertTrue(before.outgoing is DirectionStatus.Enabled, "${before.outgoing}")
                assertEquals(listOf(null, null, null), listOf(before.outbox, before.nextSendDue, before.nextDue))

                // An engine without an outbox seeds nothing.
                Engine(env.sync, NoSink, options).use { it.seedOutgoing() }
                assertNull(row().nextSendDue)

                engine.seedOutgoing()
                val seeded = row()
                assertEquals(mailbox.id, seeded.outbox?.mailboxId)
                assertTrue(seeded.nextSendDue != null && !seeded.nextSendDue!!.isAfter(Instant.now()), "${seeded.nextSendDue}")
                assertTrue(outbox.asked.isEmpty()) // scheduled, not sent

                // Due: the next scheduled run sends its mail.
                val reports = engine.runDue().filter { it.mailboxId == mailbox.id }
                assertEquals(listOf(1u to null), reports.map { it.sent to it.outgoingErrorCode }, "$reports")
                assertTrue(outbox.reports.last().outcome is SendOutcome.Sent)
                assertTrue(row().nextSendDue!!.isAfter(Instant.now()))
            }
        }
    }
}
