package com.mailsync

import com.google.gson.JsonObject
import com.google.gson.JsonParser
import com.mailsync.api.EventListener
import com.mailsync.api.MailSync
import com.mailsync.api.StoreLocation
import com.mailsync.api.appForEnvironment
import com.mailsync.api.appWithTestUsers
import com.mailsync.api.defaultOptions
import com.mailsync.api.gmailProfile
import com.mailsync.api.googleApp
import com.mailsync.api.userMailbox
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.assertThrows
import kotlinx.coroutines.runBlocking
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.Paths
import java.util.concurrent.TimeUnit

// Shared by the JUnit suites: a fake Google app, builders, an event recorder
// and the local test stack (tests/stack).

const val CLIENT_ID = "1234-abc.apps.googleusercontent.com"
const val SECRET = "GOCSPX-super-secret-value-42"
const val ENV = "https://contoso.crm.example.com"
const val REDIRECT = "$ENV/_grid/cmds/dlg_gmailoauth.aspx"

fun app(clientId: String = CLIENT_ID, secret: String = SECRET): OAuthApp =
    appForEnvironment(googleApp(clientId, secret), ENV, null)

fun gmail(name: String, default: Boolean = false): ServerProfile =
    gmailProfile(name, app()).apply { defaultForNewMailboxes = default }

fun user(email: String, profile: ProfileId? = null): MailboxSpec =
    userMailbox(email).apply { profileId = profile }

suspend fun memory(options: Options = defaultOptions()): MailSync = MailSync.open(StoreLocation.Memory, options)

/** Runs [block] and returns the [MailsyncException] of type [T] it throws (any other outcome fails). */
inline fun <reified T : MailsyncException> fails(noinline block: suspend () -> Unit): T =
    assertThrows<T> { runBlocking { block() } }

/**
 * An [EventListener] that records what it is given (on a library thread)
 * and lets a test wait — with a deadline, never a sleep — until what it
 * expects has arrived.
 */
class Recorder(private val skipSnapshots: Boolean = true) : EventListener {
    private val lock = Object()
    private val list = ArrayList<MailboxEvent>()

    override fun onEvent(event: MailboxEvent) {
        if (skipSnapshots && event.kind == MailboxEventKind.SNAPSHOT) return
        synchronized(lock) {
            list.add(event)
            lock.notifyAll()
        }
    }

    val events: List<MailboxEvent> get() = synchronized(lock) { list.toList() }

    /** The events whose kind is one of [kinds] (all when empty). */
    fun of(vararg kinds: MailboxEventKind): List<MailboxEvent> =
        events.filter { kinds.isEmpty() || it.kind in kinds }

    /** Waits until [done] holds for the events so far; returns them. */
    fun awaitUntil(what: String, seconds: Long = 30, done: (List<MailboxEvent>) -> Boolean): List<MailboxEvent> {
        val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds)
        synchronized(lock) {
            while (!done(list)) {
                val left = deadline - System.nanoTime()
                if (left <= 0) throw AssertionError("waited ${seconds}s for $what; got ${list.map { it.kind to it.email }}")
                TimeUnit.NANOSECONDS.timedWait(lock, left)
            }
            return list.toList()
        }
    }

    /**
     * Waits until as many events of these kinds arrived as [expected] has,
     * then asserts they are exactly [expected] ((kind, email) pairs, in order).
     */
    fun saw(vararg expected: Pair<MailboxEventKind, String>, kinds: Set<MailboxEventKind> = expected.map { it.first }.toSet()) {
        awaitUntil("${expected.toList()}") { all -> all.count { it.kind in kinds } >= expected.size }
        assertEquals(expected.toList(), of(*kinds.toTypedArray()).map { it.kind to it.email })
    }
}

/** The OAuth lifecycle events (not snapshots or direction changes). */
val LIFECYCLE = setOf(
    MailboxEventKind.CONNECTED, MailboxEventKind.CONSENT_FAILED, MailboxEventKind.REFRESHED,
    MailboxEventKind.NEEDS_RECONSENT, MailboxEventKind.DISCONNECTED,
)

/**
 * The local test stack (tests/stack: oidc-provider as a Google-like
 * provider, Dovecot, Postfix, all on 127.0.0.1). test.sh runs
 * `tests/stack/up` and passes `mailsync.stack.json` / `mailsync.stack.bin`.
 */
object Stack {
    private val stackJson: Path by lazy {
        Paths.get(System.getProperty("mailsync.stack.json")
            ?: error("system property mailsync.stack.json is not set (run bindings-uniffi/test.sh)"))
    }
    private val bin: Path by lazy {
        Paths.get(System.getProperty("mailsync.stack.bin")
            ?: error("system property mailsync.stack.bin is not set (run bindings-uniffi/test.sh)"))
    }
    val json: JsonObject by lazy { JsonParser.parseString(Files.readString(stackJson)).asJsonObject }
    val oauth: JsonObject get() = json.getAsJsonObject("oauth")
    val issuer: String get() = oauth.get("issuer").asString
    val clientId: String get() = oauth.get("client_id").asString
    val clientSecret: String get() = oauth.get("client_secret").asString
    private val caPem: String by lazy { Files.readString(Paths.get(json.get("ca_cert").asString)) }
    private val accounts: List<String> get() = json.getAsJsonArray("accounts").map { it.asJsonObject.get("email").asString }
    const val CRM = "http://localhost:8765"

    fun port(service: String, key: String): Int = json.getAsJsonObject(service).get(key).asInt

    /** Options pointing the library at the stack's provider, trusting its CA. */
    fun options(): Options = defaultOptions().apply {
        googleIssuerOverride = issuer
        extraRootCertsPem = listOf(caPem)
    }

    /** The stack's web client for the CRM at [CRM], every account a test user. */
    fun app(): OAuthApp = appWithTestUsers(appForEnvironment(googleApp(clientId, clientSecret), CRM, null), accounts)

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

    /**
     * Walks the provider's login and consent pages as [email] (no browser);
     * returns the redirect to the CRM. [extra]: `--deny`, `--uncheck-scope S`.
     */
    fun consent(url: String, email: String, vararg extra: String): String =
        helper("consent", url, "--email", email, *extra)

    /** Revokes a token at the provider: every grant of its account on the client goes. */
    fun revoke(token: String) {
        helper("revoke", "--", token)
    }
}
