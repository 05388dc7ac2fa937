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
import com.mailsync.api.profileUsePop3
import com.mailsync.api.userMailbox
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.assertThrows
import kotlinx.coroutines.runBlocking
import java.io.BufferedInputStream
import java.io.ByteArrayOutputStream
import java.io.InputStream
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.Paths
import java.security.KeyStore
import java.security.cert.CertificateFactory
import java.util.Base64
import java.util.concurrent.TimeUnit
import javax.net.ssl.SSLContext
import javax.net.ssl.SSLSocket
import javax.net.ssl.TrustManagerFactory

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

    /**
     * Delivers [count] messages ("[prefix] i/[count]") over LMTP into
     * [email]'s INBOX (tests/stack/bin/deliver; [extra]: `--in-reply-to`,
     * `--references`, `--from`, …); their Message-IDs, without brackets.
     */
    fun deliver(email: String, count: Int, prefix: String, vararg extra: String): List<String> =
        helper("deliver", email, "--count", count.toString(), "--subject-prefix", prefix, *extra)
            .lines().map { it.trim().removePrefix("<").removeSuffix(">") }.filter { it.isNotEmpty() }

    /**
     * The bytes the IMAP server holds for these UIDs of [email]'s INBOX
     * (TLS trusting the stack's CA, XOAUTH2 with [token], read-only).
     */
    fun imapRaw(email: String, token: String, uids: Collection<UInt>): Map<UInt, ByteArray> {
        val sasl = Base64.getEncoder().encodeToString("user=$email\u0001auth=Bearer $token\u0001\u0001".toByteArray())
        return imap({ command -> command("AUTHENTICATE XOAUTH2", sasl) }) { command ->
            command("EXAMINE INBOX", null)
            uids.associateWith { uid -> command("UID FETCH $uid (BODY.PEEK[])", null).single() }
        }
    }

    /**
     * The bytes of the message with this Message-ID in [email]'s INBOX, read
     * over IMAP (TLS trusting the stack's CA, LOGIN with the account's
     * password, read-only); waits (bounded) for Postfix to deliver it. Fails
     * if it is there more than once.
     */
    fun imapFind(email: String, messageId: String, seconds: Long = 30): ByteArray {
        val password = json.getAsJsonArray("accounts").map { it.asJsonObject }
            .single { it.get("email").asString == email }.get("password").asString
        return imap({ command -> command("LOGIN \"$email\" \"$password\"", null) }) { command ->
            val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds)
            while (true) {
                command("EXAMINE INBOX", null)
                command("UID SEARCH HEADER Message-ID \"$messageId\"", null)
                val uids = lastUntagged.removePrefix("* SEARCH").trim().split(' ').filter { it.isNotEmpty() }
                if (uids.isNotEmpty()) {
                    assertEquals(1, uids.size, "<$messageId> received once")
                    return@imap command("UID FETCH ${uids[0]} (BODY.PEEK[])", null).single()
                }
                check(System.nanoTime() < deadline) { "<$messageId> did not arrive in $email's INBOX" }
                Thread.sleep(200)
            }
            @Suppress("UNREACHABLE_CODE")
            error("unreachable")
        }
    }

    /** The last untagged line of the last [imap] command (e.g. `* SEARCH 3`). */
    private var lastUntagged = ""

    /** An IMAP session: [login], then [block] with the session's command function. */
    private fun <T> imap(
        login: ((String, String?) -> List<ByteArray>) -> Unit,
        block: ((String, String?) -> List<ByteArray>) -> T,
    ): T {
        val ca = CertificateFactory.getInstance("X.509").generateCertificate(caPem.byteInputStream())
        val trust = KeyStore.getInstance(KeyStore.getDefaultType()).apply { load(null, null); setCertificateEntry("stack", ca) }
        val tls = SSLContext.getInstance("TLS").apply {
            init(null, TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm()).apply { init(trust) }.trustManagers, null)
        }
        (tls.socketFactory.createSocket("127.0.0.1", port("imap", "tls_port")) as SSLSocket).use { socket ->
            socket.soTimeout = 30_000
            val input = BufferedInputStream(socket.inputStream)
            val output = socket.outputStream
            var tag = 0
            /** Sends a command; the literals of its untagged answers (fails unless it ends OK). */
            fun command(text: String, continuation: String? = null): List<ByteArray> {
                val t = "a${++tag}"
                output.write("$t $text\r\n".toByteArray()); output.flush()
                val literals = ArrayList<ByteArray>()
                while (true) {
                    val line = imapLine(input)
                    when {
                        line.startsWith("+") && continuation != null -> { output.write("$continuation\r\n".toByteArray()); output.flush() }
                        line.startsWith("$t ") -> { assertTrue(line.startsWith("$t OK"), "IMAP $text: $line"); return literals }
                        line.startsWith("* ") && !line.endsWith("}") -> lastUntagged = line
                        else -> Regex("\\{(\\d+)}$").find(line)?.let { m ->
                            val n = m.groupValues[1].toInt()
                            literals.add(input.readNBytes(n).also { assertEquals(n, it.size, "IMAP literal cut short") })
                        }
                    }
                }
            }
            assertTrue(imapLine(input).startsWith("* OK"), "IMAP greeting")
            login(::command)
            val result = block(::command)
            command("LOGOUT")
            return result
        }
    }

    /** One response line (without CRLF), as Latin-1. */
    private fun imapLine(input: InputStream): String {
        val line = ByteArrayOutputStream()
        while (true) {
            val b = input.read()
            check(b >= 0) { "the IMAP server closed the connection" }
            if (b == '\n'.code) break
            line.write(b)
        }
        return line.toString(Charsets.ISO_8859_1).trimEnd('\r')
    }
}

/**
 * Waits — with a deadline, never a fixed sleep — until [done] holds,
 * re-checking it every few milliseconds; for conditions nothing signals
 * (a row in the store). Fails with [what] when the deadline passes.
 */
suspend fun eventually(what: String, seconds: Long = 30, done: suspend () -> Boolean) {
    val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds)
    while (!done()) {
        if (System.nanoTime() > deadline) throw AssertionError("waited ${seconds}s for $what")
        kotlinx.coroutines.delay(20)
    }
}

/**
 * A SQLite store in [dir] against the local stack, with an IMAP profile
 * (default) and a POP3 profile on the stack's servers, recording every
 * event. Mailboxes are connected by walking the consent pages
 * (tests/stack/bin/consent) and enabled by Test & Enable.
 */
class StackEnv(dir: Path) : AutoCloseable {
    val events = Recorder()
    val sync: MailSync = runBlocking { MailSync.open(StoreLocation.Sqlite(dir.resolve("mailsync.db").toString(), null), Stack.options()) }
    val d = sync.directory()
    val c = sync.connections()
    val checks = sync.checks()
    private val subscription = runBlocking { sync.subscribe(null, events) }
    val imap: ServerProfile = runBlocking {
        d.createProfile(gmailProfile("Stack IMAP", Stack.app()).apply {
            defaultForNewMailboxes = true
            incoming = IncomingEndpoint(IncomingProtocol.IMAP, Endpoint("127.0.0.1", Stack.port("imap", "tls_port").toUShort(), Security.TLS))
            outgoing = Endpoint("127.0.0.1", Stack.port("smtp", "starttls_port").toUShort(), Security.START_TLS)
        })
    }
    val pop3: ServerProfile = runBlocking {
        d.createProfile(profileUsePop3(gmailProfile("Stack POP3", Stack.app())).apply {
            incoming = IncomingEndpoint(IncomingProtocol.POP3, Endpoint("127.0.0.1", Stack.port("pop3", "tls_port").toUShort(), Security.TLS))
            outgoing = Endpoint("127.0.0.1", Stack.port("smtp", "tls_port").toUShort(), Security.TLS)
        })
    }

    suspend fun mailbox(email: String, profile: ServerProfile = imap, configure: MailboxSpec.() -> Unit = {}): Mailbox =
        d.createMailbox(userMailbox(email).apply { profileId = profile.id }.apply(configure))

    /** connect → consent pages → complete. */
    suspend fun connected(email: String, profile: ServerProfile = imap, configure: MailboxSpec.() -> Unit = {}): Mailbox {
        val request = c.connect(mailbox(email, profile, configure).id)
        return c.complete(Stack.consent(request.url, email)).mailbox
    }

    /** Connected, then Test & Enable (which must succeed). */
    suspend fun enabled(email: String, profile: ServerProfile = imap, configure: MailboxSpec.() -> Unit = {}): Mailbox {
        val box = connected(email, profile, configure)
        val report = check(box.id)
        assertEquals(TestOutcome.SUCCESS, report.outcome, "$report")
        return box
    }

    suspend fun grant(id: MailboxId): GrantStatus = d.state(id).grant

    suspend fun check(id: MailboxId): TestReport = checks.testAndEnable(id, TestOptions(false))

    override fun close() {
        subscription.close()
        runBlocking { sync.closeStore() }
        sync.close()
    }
}
