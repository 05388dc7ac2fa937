package com.mailsync

import com.mailsync.api.EventListener
import com.mailsync.api.Subscription
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Timeout
import java.util.Collections
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit

/** Subscriptions and the host's [EventListener], without the stack. */
class EventsTest {
    @Test
    fun aSubscriptionStartsWithASnapshotPerMailbox(): Unit = runBlocking {
        memory().use { sync ->
            val d = sync.directory()
            d.createProfile(gmail("P", default = true))
            val boxes = listOf(d.createMailbox(user("a@example.com")), d.createMailbox(user("b@example.com")))
            val all = Recorder(skipSnapshots = false)
            val one = Recorder(skipSnapshots = false)
            sync.subscribe(null, all).use {
                sync.subscribe(boxes[1].id, one).use {
                    val got = all.awaitUntil("two snapshots") { it.size >= 2 }
                    assertEquals(boxes.map { it.id }.toSet(), got.map { it.mailboxId }.toSet())
                    assertTrue(got.all { it.kind == MailboxEventKind.SNAPSHOT && it.code == null && it.direction == null })
                    assertEquals(boxes.map { d.state(it.id) }.toSet(), got.map { it.state }.toSet())
                    val mine = one.awaitUntil("one snapshot") { it.isNotEmpty() }.single()
                    assertEquals(boxes[1].id to "b@example.com", mine.mailboxId to mine.email)
                }
            }
            assertEquals("not_found", fails<MailsyncException.NotFound> { sync.subscribe("no-such-mailbox", Recorder()) }.code)
        }
    }

    /**
     * A listener that calls back into the library for the mailbox of its
     * event — and waits for the answer, as blocking host code does — must
     * not deadlock: more such listeners at once than the library has
     * runtime worker threads, each call bounded by the latch's deadline.
     */
    @Test
    @Timeout(value = 120, unit = TimeUnit.SECONDS, threadMode = Timeout.ThreadMode.SEPARATE_THREAD) // a deadlock fails, not hangs
    fun listenersCallingBackIntoTheLibraryForTheSameMailboxComplete(): Unit = runBlocking {
        memory().use { sync ->
            val d = sync.directory()
            d.createProfile(gmail("P", default = true))
            val boxes = (0 until 3).map { d.createMailbox(user("box$it@example.com")) }
            val listeners = 2 * Runtime.getRuntime().availableProcessors() + 2
            val answered = CountDownLatch(listeners * boxes.size)
            val answers = Collections.synchronizedList(ArrayList<MailboxStatus>())
            val failures = Collections.synchronizedList(ArrayList<Throwable>())
            val subscriptions = ArrayList<Subscription>()
            try {
                repeat(listeners) {
                    subscriptions += sync.subscribe(null, object : EventListener {
                        override fun onEvent(event: MailboxEvent) {
                            try {
                                runBlocking {
                                    answers += d.status(event.mailboxId)
                                    assertEquals(null, sync.connections().grantInfo(event.mailboxId))
                                    assertEquals(event.state, d.state(event.mailboxId))
                                }
                            } catch (e: Throwable) {
                                failures += e
                            } finally {
                                answered.countDown()
                            }
                        }
                    })
                }
                assertTrue(answered.await(60, TimeUnit.SECONDS),
                    "deadlock: ${answered.count} of ${listeners * boxes.size} listener calls did not return")
            } finally {
                subscriptions.forEach { it.close() }
            }
            assertEquals(emptyList<Throwable>(), failures.toList())
            assertEquals(boxes.map { it.id }.toSet(), answers.map { it.mailbox.id }.toSet())
            // The library still answers on the caller's side.
            assertEquals(GrantStatus.NotConnected, d.state(boxes[0].id).grant)
        }
    }
}
