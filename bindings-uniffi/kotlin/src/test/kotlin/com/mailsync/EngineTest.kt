package com.mailsync

import com.mailsync.api.Engine
import com.mailsync.api.EngineHandle
import com.mailsync.api.MessageSink
import com.mailsync.api.ProgressListener
import com.mailsync.api.ReportListener
import com.mailsync.api.SinkException
import com.mailsync.api.Subscription
import com.mailsync.api.defaultEngineOptions
import com.mailsync.api.userMailbox
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Timeout
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path
import java.security.MessageDigest
import java.time.Instant
import java.util.UUID
import java.util.concurrent.TimeUnit

/**
 * The sync engine from Kotlin ("every binding" acceptance; the Python and
 * Node suites have the same cases): a Kotlin [MessageSink] fed by a real
 * sync, sink failures, the incoming filters' questions, EngineOptions
 * validation, a started engine's progress and stop(), each cycle's report.
 *
 * Each stack test connects its own account and delivers its own mail
 * (tests/stack/bin/deliver) with a unique subject prefix: INBOXes keep mail
 * across runs (and may get mail from other suites), so mailboxes take in
 * mail received from 2 s before they were created, and the assertions look
 * at this test's messages only. No test revokes a grant of these accounts.
 */
@Timeout(value = 180, unit = TimeUnit.SECONDS, threadMode = Timeout.ThreadMode.SEPARATE_THREAD) // a deadlock fails, not hangs
class EngineTest {
    private fun unique(prefix: String) = "$prefix-${UUID.randomUUID().toString().take(12)}"

    /** This test's messages: subjects "<prefix> i/n". */
    private fun mine(messages: Collection<IncomingMessage>, prefix: String) =
        messages.filter { (it.subject ?: "").startsWith("$prefix ") }

    /** i of a subject "<prefix> i/n". */
    private fun index(m: IncomingMessage) = m.subject!!.substringAfterLast(' ').substringBefore('/').toInt()

    private fun indexes(messages: Collection<IncomingMessage>, prefix: String) = mine(messages, prefix).map(::index).sorted()

    /** The core's key: `mid:<Message-ID>#<SHA-256 of the header section, first 16 bytes, hex>`. */
    private fun expectedKey(raw: ByteArray, messageId: String): String {
        val text = String(raw, Charsets.ISO_8859_1)
        val end = text.indexOf("\r\n\r\n")
        val header = if (end >= 0) raw.copyOfRange(0, end + 2) else raw
        val hash = MessageDigest.getInstance("SHA-256").digest(header).copyOf(16)
        return "mid:$messageId#" + hash.joinToString("") { "%02x".format(it) }
    }

    /** A connected, tested and enabled mailbox taking in all mail received from 2 s ago. */
    private suspend fun StackEnv.enabledFromNow(email: String, filter: IncomingFilter = IncomingFilter.ALL): Mailbox =
        enabled(email) {
            incomingFilter = filter
            processEmailReceivedAfter = Instant.now().minusSeconds(2)
        }

    /**
     * A host store keyed by message key. `handed`: every message the engine
     * handed over (also in batches that failed); `stored`: how many it
     * answered for; `threads`: the thread of each call.
     */
    private open class Store : MessageSink {
        private val lock = Object()
        val handed = ArrayList<IncomingMessage>()
        val byKey = LinkedHashMap<String, IncomingMessage>()
        var stored = 0
        val threads = ArrayList<Thread>()

        fun <T> locked(block: () -> T): T = synchronized(lock, block)

        protected fun record(messages: List<IncomingMessage>) = locked {
            threads.add(Thread.currentThread())
            handed.addAll(messages)
            lock.notifyAll()
        }

        protected fun store(messages: List<IncomingMessage>): List<DeliveryOutcome> = locked {
            for (m in messages) byKey[m.key] = m
            stored += messages.size
            messages.map { DeliveryOutcome.STORED }
        }

        override fun deliver(messages: List<IncomingMessage>): List<DeliveryOutcome> {
            record(messages)
            return store(messages)
        }

        override fun tracked(mailbox: MailboxId, messageIds: List<String>): List<Boolean> = messageIds.map { false }

        override fun knownSenders(mailbox: MailboxId, addresses: List<String>): List<Boolean> = addresses.map { false }

        /** Waits until [done] holds for what was handed so far. */
        fun awaitHanded(what: String, seconds: Long = 60, done: (List<IncomingMessage>) -> Boolean) {
            val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds)
            synchronized(lock) {
                while (!done(handed)) {
                    val left = deadline - System.nanoTime()
                    if (left <= 0) throw AssertionError("waited ${seconds}s for $what; handed ${handed.map { it.subject }}")
                    TimeUnit.NANOSECONDS.timedWait(lock, left)
                }
            }
        }

        fun snapshot(): List<IncomingMessage> = locked { handed.toList() }
    }

    /** Records [SyncProgress] values (on a library thread) and lets a test wait for one. */
    private class Progress : ProgressListener {
        private val lock = Object()
        private val list = ArrayList<SyncProgress>()

        override fun onProgress(progress: SyncProgress) = synchronized(lock) {
            list.add(progress)
            lock.notifyAll()
        }

        val values: List<SyncProgress> get() = synchronized(lock) { list.toList() }

        fun awaitUntil(what: String, seconds: Long = 60, done: (List<SyncProgress>) -> Boolean): List<SyncProgress> {
            val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds)
            synchronized(lock) {
                while (!done(list)) {
                    val left = deadline - System.nanoTime()
                    if (left <= 0) throw AssertionError("waited ${seconds}s for $what; got $list")
                    TimeUnit.NANOSECONDS.timedWait(lock, left)
                }
                return list.toList()
            }
        }
    }

    /** Records [CycleReport]s (on a library thread) and lets a test wait for them. */
    private class Reports : ReportListener {
        private val lock = Object()
        private val list = ArrayList<CycleReport>()

        override fun onReport(report: CycleReport) = synchronized(lock) {
            list.add(report)
            lock.notifyAll()
        }

        val values: List<CycleReport> get() = synchronized(lock) { list.toList() }

        fun await(n: Int, seconds: Long = 30): List<CycleReport> {
            val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds)
            synchronized(lock) {
                while (list.size < n) {
                    val left = deadline - System.nanoTime()
                    if (left <= 0) throw AssertionError("waited ${seconds}s for $n reports; got $list")
                    TimeUnit.NANOSECONDS.timedWait(lock, left)
                }
                return list.toList()
            }
        }
    }

    /**
     * `reports(listener)`: the listener gets each cycle's [CycleReport], the
     * very report `runOnce` returns (mailbox, counts), one per cycle, in
     * order, until the subscription is cancelled.
     */
    @Test
    fun reportsHandEachCycleReportToTheListener(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val email = "sync14@example.test"
            val box = env.enabledFromNow(email)
            val prefix = unique("kotlin-engine-reports")
            Stack.deliver(email, 3, prefix)
            val sink = Store()
            val reports = Reports()
            Engine(env.sync, sink, defaultEngineOptions()).use { engine ->
                val subscription: Subscription = engine.reports(reports)
                val report = engine.runOnce(box.id)
                assertNull(report.errorCode, report.errorMessage)
                val got = reports.await(1).single()
                assertEquals(report, got) // every field: counts, bytes, duration, errors
                assertEquals(box.id to email, got.mailboxId to got.email)
                assertEquals(3, mine(sink.snapshot(), prefix).size)
                assertTrue(got.delivered >= 3u && got.delivered.toInt() == sink.stored, "$got")
                assertEquals(sink.snapshot().sumOf { it.raw.size.toLong() }, got.bytes)

                // One report per cycle, in order.
                val again = engine.runOnce(box.id)
                assertEquals(again, reports.await(2)[1])

                // Cancelled: the next cycle is not reported.
                subscription.cancel()
                engine.runOnce(box.id)
                kotlinx.coroutines.delay(500)
                assertEquals(2, reports.values.size)
                subscription.close()
            }
        }
    }

    /** (a) Every message once, with its fields, into a Kotlin sink; nothing again on the next run. */
    @Test
    fun aRealSyncDeliversEveryMessageOnceWithItsFields(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val email = "sync15@example.test"
            val box = env.enabledFromNow(email)
            val prefix = unique("kotlin-engine-a")
            val ids = Stack.deliver(email, 20, prefix)
            assertEquals(20, ids.size)
            val sink = Store()
            Engine(env.sync, sink, defaultEngineOptions()).use { engine ->
                assertEquals(defaultEngineOptions(), engine.options())

                val report = engine.runOnce(box.id)
                assertNull(report.errorCode, report.errorMessage)
                assertNull(report.errorMessage)
                assertEquals(box.id to email, report.mailboxId to report.email)
                val handed = sink.snapshot()
                val got = mine(handed, prefix)
                assertEquals(ids.sorted(), got.map { it.messageId!! }.sorted()) // every message, once
                assertEquals((1..20).toList(), got.map(::index).sorted())
                assertTrue(report.delivered >= 20u, "$report")
                assertEquals(report.delivered.toInt(), sink.stored)
                assertEquals(handed.size, sink.stored)
                assertEquals(handed.sumOf { it.raw.size.toLong() }, report.bytes)
                // On a library thread, never the caller's.
                assertTrue(sink.threads.none { it == Thread.currentThread() }, "${sink.threads}")

                for (m in got) {
                    assertEquals(box.id, m.mailboxId)
                    assertEquals(m.size.toInt(), m.raw.size)
                    assertFalse(m.unparsed)
                    assertEquals(expectedKey(m.raw, m.messageId!!), m.key)
                    assertEquals(listOf(MailAddress("Test Sender", "sender@outside.example")), m.from)
                    assertEquals(listOf(email), m.to.map { it.address })
                    assertEquals(listOf<Any>(emptyList<MailAddress>(), emptyList<String>(), emptyList<String>()), listOf(m.cc, m.inReplyTo, m.references))
                    val text = String(m.raw, Charsets.ISO_8859_1)
                    assertTrue(text.contains("\r\nMessage-ID: <${m.messageId}>\r\n"), text.take(400))
                    assertTrue(text.contains("\r\nSubject: ${m.subject}\r\n"), text.take(400))
                    assertTrue(m.uid!! > 0u && m.uidValidity!! > 0u, "$m")
                    assertNull(m.uidl)
                    assertNull(m.providerId)
                    assertNotNull(m.date)
                    assertNotNull(m.receivedAt)
                }
                // The server's bytes, unchanged.
                val token = env.c.accessToken(box.id).token.expose()
                val server = Stack.imapRaw(email, token, got.map { it.uid!! })
                for (m in got) assertArrayEquals(server.getValue(m.uid!!), m.raw, "UID ${m.uid}")

                // Nothing new: nothing handed again.
                val again = engine.runOnce(box.id)
                assertNull(again.errorCode, again.errorMessage)
                assertEquals(20, mine(sink.snapshot(), prefix).size)

                val row = engine.status().single { it.mailboxId == box.id }
                assertTrue(row.incoming is DirectionStatus.Enabled, "${row.incoming}")
                val cursor = row.cursor!!
                assertEquals((report.delivered + again.delivered).toLong(), cursor.delivered)
                assertTrue(cursor.imap!!.lastUid >= got.maxOf { it.uid!! }, "$cursor")
            }
        }
    }

    /**
     * (b) A sink that fails at the 7th message (one message per batch) fails
     * the cycle with `sink_failed`; the cursor stays after the 6th, so every
     * next run hands the 7th again, until one stores it and the rest.
     */
    @Test
    fun aSinkFailingAtTheSeventhMessageFailsTheCycleAndTheNextRunHandsItAgain(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val email = "sync16@example.test"
            val box = env.enabledFromNow(email)
            val prefix = unique("kotlin-engine-b")
            Stack.deliver(email, 10, prefix)

            val runs = ArrayList<MutableList<IncomingMessage>>()
            var atSeventh: ((List<IncomingMessage>) -> List<DeliveryOutcome>)? = null
            val sink = object : Store() {
                override fun deliver(messages: List<IncomingMessage>): List<DeliveryOutcome> {
                    record(messages)
                    locked { runs.last().addAll(messages) }
                    val behaviour = atSeventh
                    if (behaviour != null && mine(messages, prefix).any { index(it) == 7 }) return behaviour(messages)
                    return store(messages)
                }
            }
            val options = defaultEngineOptions().apply { batchMessages = 1u }
            Engine(env.sync, sink, options).use { engine ->
                suspend fun cycle(behaviour: ((List<IncomingMessage>) -> List<DeliveryOutcome>)?): Pair<CycleReport, List<Int>> {
                    atSeventh = behaviour
                    sink.locked { runs.add(ArrayList()) }
                    val before = sink.stored
                    val report = engine.runOnce(box.id)
                    assertEquals(sink.stored - before, report.delivered.toInt(), "$report")
                    return report to sink.locked { mine(runs.last(), prefix).map(::index) }
                }

                var (report, handed) = cycle { throw IllegalStateException("boom at 7") }
                assertEquals(ErrorCode.SINK_FAILED, report.errorCode, "$report")
                assertEquals("the sink failed: java.lang.IllegalStateException: boom at 7 [sink_failed]", report.errorMessage)
                assertEquals((1..7).toList(), handed) // 1-6 stored, the 7th threw

                // The cursor stayed before the 7th: every failure hands it (alone) again.
                fun failure(message: String, behaviour: (List<IncomingMessage>) -> List<DeliveryOutcome>) = behaviour to message
                val failures = listOf(
                    failure("the sink failed: disk full [sink_failed]") { throw SinkException.Failed("disk full") },
                    // An Error (not an Exception) escapes UniFFI's callback code: JNA hands it to its
                    // uncaught-exception handler (stderr) and Rust gets no answer, which fails the cycle too.
                    failure("the sink failed: ") { throw NotImplementedError("an Error, not an Exception") },
                    failure("the sink returned 0 outcomes for 1 messages") { emptyList() },
                    failure("the sink returned 2 outcomes for 1 messages") { m -> m.map { DeliveryOutcome.STORED } + DeliveryOutcome.STORED },
                )
                for ((behaviour, message) in failures) {
                    val (r, h) = cycle(behaviour)
                    assertEquals(ErrorCode.SINK_FAILED, r.errorCode, "$r")
                    assertTrue(r.errorMessage!!.contains(message), r.errorMessage)
                    assertFalse(r.errorMessage!!.contains("\tat "), "a stack trace in ${r.errorMessage}")
                    assertEquals(listOf(7), h)
                    assertEquals(0u, r.delivered)
                }
                // Not now (no failure): the cursor stops before the 7th.
                cycle { m -> m.map { DeliveryOutcome.RETRY_LATER } }.let { (r, h) ->
                    assertNull(r.errorCode, r.errorMessage)
                    assertEquals(1u, r.retryLater)
                    assertEquals(listOf(7), h)
                }

                // A mailbox is not blamed for its host's sink.
                assertTrue(env.d.state(box.id).incoming.status is DirectionStatus.Enabled)

                cycle(null).let { (r, h) -> report = r; handed = h }
                assertNull(report.errorCode, report.errorMessage)
                assertEquals((7..10).toList(), handed)
                // Stored by key, the host has each message once.
                assertEquals((1..10).toList(), indexes(sink.locked { sink.byKey.values.toList() }, prefix))
                assertEquals((1..10).toList(), sink.locked { runs.flatten() }.let { all -> mine(all, prefix).map(::index).toSortedSet().toList() })
            }
        }
    }

    /** (c) EngineOptions: the core's defaults; a value the rules refuse is `validation` naming the field. */
    @Test
    fun engineOptionsAreValidatedNamingTheField(): Unit = runBlocking {
        val defaults = defaultEngineOptions()
        assertEquals(listOf(300u, 8u, 200u, 300u), listOf(defaults.postponeSecs, defaults.workers, defaults.batchMessages, defaults.sinkTimeoutSecs))
        memory().use { sync ->
            val sink = Store()
            fun case(field: String, change: EngineOptions.() -> Unit) = change to field
            for ((change, field) in listOf(
                case("workers") { workers = 0u },
                case("connections_per_account") { connectionsPerAccount = 0u },
                case("batch_messages") { batchMessages = 0u },
                case("batch_bytes") { batchBytes = 1023u },
                case("max_message_bytes") { maxMessageBytes = 1000u },
                case("messages_per_cycle") { messagesPerCycle = 0u },
                case("min_throughput_bytes_per_sec") { minThroughputBytesPerSec = 0u },
                case("sink_timeout_secs") { sinkTimeoutSecs = 0u },
                case("sink_timeout_secs") { sinkTimeoutSecs = 86_401u },
                case("lease_secs") { leaseSecs = 4u },
                case("postpone_secs") { postponeSecs = 86_401u },
                case("postpone_secs") { postponeSecs = UInt.MAX_VALUE },
            )) {
                val e = fails<MailsyncException.Validation> { Engine(sync, sink, defaultEngineOptions().apply(change)).close() }
                assertEquals("validation" to field, e.code to e.field, e.detail)
                assertEquals(ErrorCode.VALIDATION, e.errorCode)
                assertTrue(e.detail.contains(field), e.detail)
            }
            // The limits themselves are fine.
            val edge = defaultEngineOptions().apply { postponeSecs = 0u; workers = UInt.MAX_VALUE; batchBytes = 1024u; leaseSecs = 5u; sinkTimeoutSecs = 86_400u }
            Engine(sync, sink, edge).use { engine ->
                assertEquals(edge, engine.options())
                val box = sync.directory().createMailbox(userMailbox("nobody@example.test"))
                fails<MailsyncException.NotEnabled> { engine.runOnce(box.id) } // never tested: the cycle cannot start
                for (id in listOf("no-such-mailbox", "", "00000000-0000-4000-8000-000000000000")) {
                    assertEquals("not_found", fails<MailsyncException.NotFound> { engine.runOnce(id) }.code)
                }
                assertEquals(emptyList<CycleReport>(), engine.runDue())
                assertEquals(listOf(box.id), engine.status().map { it.mailboxId })
                assertNull(engine.status().single().cursor)
            }
            assertTrue(sink.snapshot().isEmpty())
            sync.closeStore()
        }
    }

    /** The incoming filters ask the Kotlin sink: `tracked` for replies, `knownSenders` for senders. */
    @Test
    fun theIncomingFiltersAskTheSinksTrackedAndKnownSenders(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            val email = "sync17@example.test"
            val box = env.enabledFromNow(email, IncomingFilter.REPLIES_TO_TRACKED_EMAIL)
            val prefix = unique("kotlin-engine-c")
            val ours = "tracked.${UUID.randomUUID()}@crm.example.com"
            val theirs = "other.${UUID.randomUUID()}@elsewhere.example"
            Stack.deliver(email, 3, "$prefix-tracked", "--in-reply-to", ours)
            Stack.deliver(email, 2, "$prefix-references", "--references", "$theirs $ours")
            Stack.deliver(email, 2, "$prefix-untracked", "--in-reply-to", theirs)
            Stack.deliver(email, 2, "$prefix-new")

            val questions = ArrayList<Pair<MailboxId, List<String>>>()
            val crm = object : Store() {
                override fun tracked(mailbox: MailboxId, messageIds: List<String>): List<Boolean> {
                    locked { questions.add(mailbox to messageIds) }
                    return messageIds.map { it == ours }
                }
            }
            Engine(env.sync, crm, defaultEngineOptions()).use { engine ->
                val report = engine.runOnce(box.id)
                assertNull(report.errorCode, report.errorMessage)
                val handed = crm.snapshot()
                assertEquals((1..3).map { "$prefix-tracked $it/3" }, mine(handed, "$prefix-tracked").map { it.subject!! }.sorted())
                assertEquals(2, mine(handed, "$prefix-references").size)
                assertEquals(emptyList<IncomingMessage>(), mine(handed, "$prefix-untracked") + mine(handed, "$prefix-new"))
                assertTrue(report.filtered >= 4u, "$report")
                val asked = crm.locked { questions.toList() }
                assertTrue(asked.isNotEmpty() && asked.all { it.first == box.id }, "$asked")
                val ids = asked.flatMap { it.second }
                assertTrue(ours in ids && theirs in ids, "$ids") // without angle brackets
            }

            // A tracked() that throws fails the cycle; nothing of its batch is delivered.
            Stack.deliver(email, 1, "$prefix-late", "--in-reply-to", ours)
            val failing = object : Store() {
                override fun tracked(mailbox: MailboxId, messageIds: List<String>): List<Boolean> = throw IllegalArgumentException("crm down")
            }
            Engine(env.sync, failing, defaultEngineOptions()).use { engine ->
                val failed = engine.runOnce(box.id)
                assertEquals(ErrorCode.SINK_FAILED, failed.errorCode, "$failed")
                assertTrue(failed.errorMessage!!.contains("incoming filter failed: java.lang.IllegalArgumentException: crm down"), failed.errorMessage)
                assertEquals(emptyList<IncomingMessage>(), mine(failing.snapshot(), "$prefix-late"))
            }

            // FROM_KNOWN_RECORDS asks knownSenders() (addresses lower-cased).
            val known = env.enabledFromNow("sync19@example.test", IncomingFilter.FROM_KNOWN_RECORDS)
            val kprefix = unique("kotlin-engine-known")
            Stack.deliver("sync19@example.test", 2, "$kprefix-known", "--from", "Known Contact <Known.Contact@CRM.example.test>")
            Stack.deliver("sync19@example.test", 2, "$kprefix-stranger", "--from", "stranger@outside.example")
            val senders = ArrayList<String>()
            val contacts = object : Store() {
                override fun knownSenders(mailbox: MailboxId, addresses: List<String>): List<Boolean> {
                    assertEquals(known.id, mailbox)
                    locked { senders.addAll(addresses) }
                    return addresses.map { it == "known.contact@crm.example.test" }
                }
            }
            Engine(env.sync, contacts, defaultEngineOptions()).use { engine ->
                val report = engine.runOnce(known.id)
                assertNull(report.errorCode, report.errorMessage)
                assertEquals(2, mine(contacts.snapshot(), "$kprefix-known").size)
                assertEquals(emptyList<IncomingMessage>(), mine(contacts.snapshot(), "$kprefix-stranger"))
                val asked = contacts.locked { senders.toSet() }
                assertTrue(asked.containsAll(setOf("known.contact@crm.example.test", "stranger@outside.example")), "$asked")
            }
        }
    }

    /**
     * (d) A started engine syncs on its own and reports progress; stop()
     * ends it. The profile polls without pause and the engine postpones
     * nothing, so a running engine cycles continuously, each cycle writing
     * the cursor. stop() returns once the engine stopped: from then on only
     * our own runOnce moves the cursor's version, and new mail waits for it.
     */
    @Test
    fun aStartedEngineReportsProgressAndStopEndsIt(@TempDir dir: Path): Unit = runBlocking {
        StackEnv(dir).use { env ->
            env.d.updateProfile(env.imap.copy(processing = env.imap.processing.copy(minPollingIntervalMinutes = 0u)))
            val email = "sync18@example.test"
            val box = env.enabledFromNow(email)
            val prefix = unique("kotlin-engine-d")
            Stack.deliver(email, 12, prefix)
            val sink = Store()
            val options = defaultEngineOptions().apply { batchMessages = 5u; postponeSecs = 0u; leaseSecs = 5u }
            Engine(env.sync, sink, options).use { engine ->
                val progress = Progress()
                val subscription: Subscription = engine.progress(progress)
                suspend fun cursor(): SyncCursor? = engine.status().single { it.mailboxId == box.id }.cursor

                /**
                 * The started engine stopped: no cycle writes the cursor while new mail
                 * arrives (a running engine cycles several times meanwhile), and the
                 * new mail waits for our own runOnce.
                 */
                suspend fun stopped(what: String) {
                    val before = cursor()
                    val next = unique("$prefix-after")
                    Stack.deliver(email, 2, next)
                    assertEquals(before, cursor(), "$what: a cycle ran")
                    // stop() releases the engine's sync leases, but a claim it cut short can still
                    // commit one just after (seen now and then under load): such a lease is only
                    // free once it expires (leaseSecs = 5), so a Conflict is retried until then.
                    val t0 = System.nanoTime()
                    var report: CycleReport? = null
                    var conflicts = 0
                    eventually("$what: the mailbox's sync lease to be free", 20) {
                        try {
                            report = engine.runOnce(box.id)
                            true
                        } catch (e: MailsyncException.Conflict) {
                            conflicts++
                            false
                        }
                    }
                    if (conflicts > 0) {
                        System.err.println("EngineTest: $what, a sync lease was left behind ($conflicts conflicts, free after ${(System.nanoTime() - t0) / 1_000_000} ms)")
                    }
                    assertNull(report!!.errorCode, report!!.errorMessage)
                    assertTrue(report!!.delivered >= 2u, "$what: $report")
                    assertEquals(listOf(1, 2), indexes(sink.snapshot(), next), "$what: runOnce got the new mail, once")
                    assertNotEquals(before, cursor())
                }

                val handle: EngineHandle = engine.start(1u)
                val values = progress.awaitUntil("a finished progress value for $email") { all -> all.any { it.mailboxId == box.id && it.finished } }
                    .filter { it.mailboxId == box.id }
                val first = values.take(values.indexOfFirst { it.finished } + 1)
                sink.awaitHanded("the 12 messages") { mine(it, prefix).size >= 12 }
                // It keeps cycling on its own, each cycle writing the cursor.
                val cycling = cursor()
                eventually("the started engine to cycle again") { cursor() != cycling }
                handle.stop()
                handle.stop() // idempotent
                stopped("after stop()")
                subscription.cancel()

                assertEquals((1..12).toList(), indexes(sink.snapshot(), prefix))
                assertTrue(first.size >= 2, "$first")
                assertFalse(first.first().finished)
                assertEquals(email, first.first().email)
                val running = first.dropLast(1)
                val done = running.map { it.messagesDone }
                assertEquals(done.sorted(), done)
                assertTrue(running.all { it.messagesDone <= it.messagesTotal && it.bytesDone <= it.bytesTotal }, "$running")
                val last = first.last()
                assertTrue(last.messagesDone >= 12u && last.messagesDone == last.messagesTotal, "$last")
                assertNotNull(cursor()!!.lastCycleAt)
                handle.close()
            }
        }
    }
}
