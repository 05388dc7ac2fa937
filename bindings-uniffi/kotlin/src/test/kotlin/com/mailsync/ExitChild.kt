package com.mailsync

import com.mailsync.api.EventListener
import com.mailsync.api.MailSync
import com.mailsync.api.StoreLocation
import com.mailsync.api.defaultOptions
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.GlobalScope
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import java.util.concurrent.CountDownLatch
import kotlin.system.exitProcess

/**
 * The child JVM of [ExitTest]: uses mailsync, then ends while the library's
 * runtime threads may still be finishing work. `args`: mode, database path.
 */
@OptIn(kotlinx.coroutines.DelicateCoroutinesApi::class)
fun main(args: Array<String>) {
    val (mode, db) = args
    val listener = object : EventListener {
        override fun onEvent(event: MailboxEvent) = throw IllegalStateException("listener saw ${event.kind}")
    }
    val sync = runBlocking { MailSync.open(StoreLocation.Sqlite(db, null), defaultOptions()) }
    val directory = sync.directory()
    val subscription = runBlocking {
        directory.listProfiles()
        sync.subscribe(null, listener)
    }

    /** Coroutines on daemon threads (Dispatchers.IO) that keep calling in. */
    fun callsInFlight() {
        val firstDone = CountDownLatch(4)
        repeat(4) {
            GlobalScope.launch(Dispatchers.IO) {
                while (true) {
                    directory.listProfiles()
                    directory.defaultProfile()
                    sync.subscribe(null, listener).cancel()
                    firstDone.countDown()
                }
            }
        }
        firstDone.await()
    }

    when (mode) {
        // A few calls, cancel, closeStore(), free the objects, return from main.
        "clean" -> runBlocking {
            directory.defaultProfile()
            directory.listMailboxes(null)
            subscription.cancel()
            sync.closeStore()
            subscription.close()
            directory.close()
            sync.close()
        }
        // System.exit() while calls are in flight.
        "exitInFlight" -> {
            callsInFlight()
            exitProcess(0)
        }
        // main returns (the JVM shuts down) while daemon threads are in calls.
        "returnInFlight" -> callsInFlight()
        else -> error("unknown mode $mode")
    }
}
