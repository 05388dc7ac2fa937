// Connect one Gmail mailbox and run Test & Enable, from a JVM program (Kotlin).
//
//   ConnectGmail EMAIL [--client-id ID] [--client-secret SECRET] [--db mailsync.db]
//                [--port 8765] [--consent-timeout 300] [--stack stack.json]
//
// What it does, each step one mailsync call (the Kotlin binding, com.mailsync:mailsync-kotlin,
// whose jar carries libmailsync_uniffi.so: no -Djna.library.path):
//
// 1. opens (or creates) the embedded SQLite store `--db` (its seal key lands next to it,
//    `<db>.key`);
// 2. makes sure a Gmail server profile exists for the Web OAuth client, with the redirect URI
//    http://127.0.0.1:PORT/_grid/cmds/dlg_gmailoauth.aspx (register exactly this URI on the client
//    in the Google Cloud console) and EMAIL as a test user;
// 3. makes sure the mailbox exists;
// 4. if it is not connected: listens on 127.0.0.1:PORT, prints the consent page's URL and opens
//    it in a browser (the BROWSER environment variable names the command, `%s` standing for the
//    URL; else the desktop's browser when there is one), waits for Google's redirect to the
//    listener and completes the connection;
// 5. runs Test & Enable (IMAP and SMTP) and prints the report, step by step.
//
// Exit status 0 when Test & Enable passed; on a failure it prints `error: <code>: <message>` and
// `next: <next action>` on stderr and exits 1 (2 for bad arguments). The code is mailsync's
// stable error code (docs/errors.md), e.g. `consent_denied`, `protocol_disabled`.
//
// `--stack tests/stack/run/stack.json` points everything at the local test stack instead of
// Google (its OAuth server, CA, Dovecot and Postfix; its web client when --client-id is left
// out).
package com.mailsync.examples

import com.google.gson.JsonObject
import com.google.gson.JsonParser
import com.mailsync.Authentication
import com.mailsync.DirectionReport
import com.mailsync.Endpoint
import com.mailsync.GrantStatus
import com.mailsync.IncomingEndpoint
import com.mailsync.IncomingProtocol
import com.mailsync.Mailbox
import com.mailsync.MailsyncException
import com.mailsync.PublishingStatus
import com.mailsync.Security
import com.mailsync.ServerProfile
import com.mailsync.TestOptions
import com.mailsync.TestOutcome
import com.mailsync.UserType
import com.mailsync.api.MailSync
import com.mailsync.api.StoreLocation
import com.mailsync.api.appForEnvironment
import com.mailsync.api.appWithAudience
import com.mailsync.api.appWithTestUsers
import com.mailsync.api.defaultOptions
import com.mailsync.api.gmailProfile
import com.mailsync.api.googleApp
import com.mailsync.api.userMailbox
import com.mailsync.code
import com.mailsync.detail
import com.mailsync.nextAction
import com.sun.net.httpserver.HttpServer
import kotlinx.coroutines.runBlocking
import java.awt.Desktop
import java.net.InetSocketAddress
import java.net.URI
import java.nio.file.Files
import java.nio.file.Paths
import java.util.concurrent.CompletableFuture
import java.util.concurrent.TimeUnit
import java.util.concurrent.TimeoutException
import kotlin.system.exitProcess

const val CALLBACK_PATH = "/_grid/cmds/dlg_gmailoauth.aspx"
const val PROFILE_NAME = "Gmail (kotlin example)"

/** A failure with a mailsync error code, for the exit path. */
class Failed(val code: String, message: String, val nextAction: String) : Exception(message)

class Args(
    val email: String,
    val clientId: String,
    val clientSecret: String,
    val db: String,
    val port: Int,
    val consentTimeoutSecs: Long,
    /** The local test stack's stack.json, parsed; null: Google. */
    val stack: JsonObject?,
)

fun usage(problem: String? = null): Nothing {
    if (problem != null) System.err.println("ConnectGmail: $problem")
    System.err.println(
        "usage: ConnectGmail EMAIL [--client-id ID] [--client-secret SECRET (default \$GOOGLE_CLIENT_SECRET)]\n" +
            "                    [--db mailsync.db] [--port 8765] [--consent-timeout 300] [--stack stack.json]",
    )
    exitProcess(2)
}

fun parseArgs(argv: Array<String>): Args {
    var email: String? = null
    var clientId: String? = null
    var clientSecret: String? = System.getenv("GOOGLE_CLIENT_SECRET")
    var db = "mailsync.db"
    var port = 8765
    var timeout = 300L
    var stack: JsonObject? = null
    val it = argv.iterator()
    while (it.hasNext()) {
        val arg = it.next()
        fun value(): String = if (it.hasNext()) it.next() else usage("$arg needs a value")
        when (arg) {
            "--client-id" -> clientId = value()
            "--client-secret" -> clientSecret = value()
            "--db" -> db = value()
            "--port" -> port = value().toIntOrNull() ?: usage("--port must be a number")
            "--consent-timeout" -> timeout = value().toLongOrNull() ?: usage("--consent-timeout must be a number")
            "--stack" -> stack = value().let { path ->
                try {
                    JsonParser.parseString(Files.readString(Paths.get(path))).asJsonObject
                } catch (e: Exception) {
                    usage("cannot read the stack description $path: ${e.message}")
                }
            }
            "-h", "--help" -> usage()
            else -> if (arg.startsWith("-") || email != null) usage("unexpected argument $arg") else email = arg
        }
    }
    if (stack != null) {
        val oauth = stack.getAsJsonObject("oauth")
        clientId = clientId ?: oauth.get("client_id").asString
        clientSecret = clientSecret ?: oauth.get("client_secret").asString
    }
    if (email == null) usage("EMAIL is required")
    if (clientId == null || clientSecret == null) usage("--client-id and --client-secret (or \$GOOGLE_CLIENT_SECRET) are required")
    return Args(email, clientId, clientSecret, db, port, timeout, stack)
}

suspend fun openStore(a: Args): MailSync {
    val options = defaultOptions()
    if (a.stack != null) { // the stack's OAuth server plays Google, its CA signs its mail servers
        options.googleIssuerOverride = a.stack.getAsJsonObject("oauth").get("issuer").asString
        options.extraRootCertsPem = listOf(Files.readString(Paths.get(a.stack.get("ca_cert").asString)))
    }
    return MailSync.open(StoreLocation.Sqlite(a.db, null), options)
}

/** The Gmail profile for this client and redirect URI (created, or updated when they changed). */
suspend fun ensureProfile(sync: MailSync, a: Args, environmentUrl: String): ServerProfile {
    var app = googleApp(a.clientId, a.clientSecret)
    app = appForEnvironment(app, environmentUrl, null) // redirect: <url>/_grid/cmds/dlg_gmailoauth.aspx
    app = appWithAudience(app, UserType.EXTERNAL, PublishingStatus.TESTING)
    app = appWithTestUsers(app, listOf(a.email))
    val wanted = gmailProfile(PROFILE_NAME, app) // imap.gmail.com:993 TLS, smtp.gmail.com:587 STARTTLS
    if (a.stack != null) {
        val imap = a.stack.getAsJsonObject("imap")
        val smtp = a.stack.getAsJsonObject("smtp")
        wanted.incoming = IncomingEndpoint(
            IncomingProtocol.IMAP,
            Endpoint(imap.get("host").asString, imap.get("tls_port").asInt.toUShort(), Security.TLS),
        )
        wanted.outgoing = Endpoint(smtp.get("host").asString, smtp.get("starttls_port").asInt.toUShort(), Security.START_TLS)
    }
    val d = sync.directory()
    val existing = d.listProfiles().firstOrNull { it.name == PROFILE_NAME }
        ?: return d.createProfile(wanted.apply { defaultForNewMailboxes = true })
    val auth = existing.authentication
    if (auth is Authentication.GmailOAuth && auth.app.clientId == a.clientId &&
        auth.app.redirectUris == app.redirectUris && existing.incoming == wanted.incoming &&
        existing.outgoing == wanted.outgoing
    ) {
        return existing
    }
    existing.authentication = wanted.authentication
    existing.incoming = wanted.incoming
    existing.outgoing = wanted.outgoing
    return d.updateProfile(existing)
}

suspend fun ensureMailbox(sync: MailSync, a: Args, profile: ServerProfile): Mailbox {
    val d = sync.directory()
    d.listMailboxes(profile.id).firstOrNull { it.email == a.email.lowercase() }?.let { return it }
    return d.createMailbox(userMailbox(a.email).apply { profileId = profile.id })
}

/** A one-shot HTTP listener on 127.0.0.1 that catches Google's redirect. */
class CallbackListener(port: Int) : AutoCloseable {
    private val server: HttpServer = try {
        HttpServer.create(InetSocketAddress("127.0.0.1", port), 0)
    } catch (e: java.io.IOException) {
        throw Failed("network", "cannot listen on 127.0.0.1:$port: ${e.message}", "Choose a free --port (and register its redirect URI on the client).")
    }
    private val arrived = CompletableFuture<String>()
    val port: Int get() = server.address.port

    init {
        server.createContext(CALLBACK_PATH) { exchange ->
            val query = exchange.requestURI.rawQuery
            val body = "<!doctype html><p>Thanks: you can close this window and go back to the terminal.</p>".toByteArray()
            exchange.responseHeaders.add("Content-Type", "text/html; charset=utf-8")
            exchange.sendResponseHeaders(if (query == null) 400 else 200, body.size.toLong())
            exchange.responseBody.use { it.write(body) }
            if (query != null) arrived.complete("http://127.0.0.1:${this.port}$CALLBACK_PATH?$query")
        }
        server.start()
    }

    fun await(timeoutSecs: Long): String = try {
        arrived.get(timeoutSecs, TimeUnit.SECONDS)
    } catch (e: TimeoutException) {
        throw Failed("timeout", "no redirect came back within $timeoutSecs s", "Open the consent link again and finish it in the browser.")
    }

    override fun close() = server.stop(0)
}

/** Opens [url] the way Python's `webbrowser` does: $BROWSER (`%s`: the URL), else the desktop's browser. */
fun openBrowser(url: String) {
    val command = System.getenv("BROWSER")
    if (!command.isNullOrBlank()) {
        val words = command.trim().split(Regex("\\s+"))
        val args = if (words.any { "%s" in it }) words.map { it.replace("%s", url) } else words + url
        ProcessBuilder(args).inheritIO().start()
    } else if (Desktop.isDesktopSupported() && Desktop.getDesktop().isSupported(Desktop.Action.BROWSE)) {
        Desktop.getDesktop().browse(URI(url))
    }
}

/** Consent in the browser, then complete with the URL the browser came back with. */
suspend fun connect(sync: MailSync, mailbox: Mailbox, listener: CallbackListener, timeoutSecs: Long) {
    val request = sync.connections().connect(mailbox.id) // ConsentRequest: url, expiresAt
    println("Opening the consent page for ${mailbox.email} (if no browser opens, visit):")
    println("  ${request.url}")
    System.out.flush()
    openBrowser(request.url)
    val callbackUrl = listener.await(timeoutSecs)
    val status = sync.connections().complete(callbackUrl) // throws ConsentDenied, StateInvalid, ...
    val grant = status.state.grant
    println("Connected as ${if (grant is GrantStatus.Connected) grant.account else mailbox.email}.")
}

fun printDirection(d: DirectionReport) {
    println("  ${d.direction.name.lowercase()} ${d.protocol} ${d.server}: ${if (d.success) "passed" else "FAILED"}")
    for (s in d.steps) {
        val detail = s.detail?.let { "  $it" } ?: ""
        println("    %-14s %-6s %5d ms%s".format(s.step, if (s.ok) "ok" else "FAILED", s.durationMs.toLong(), detail))
    }
}

/** Test & Enable, printed step by step; a failing direction ends the program with its code. */
suspend fun testAndEnable(sync: MailSync, mailbox: Mailbox) {
    val report = sync.checks().testAndEnable(mailbox.id, TestOptions(false))
    println(
        "Test & Enable ${report.email}: ${report.outcome.name.lowercase()} " +
            "(incoming ${if (report.incomingEnabled) "enabled" else "not enabled"}, " +
            "outgoing ${if (report.outgoingEnabled) "enabled" else "not enabled"})",
    )
    listOfNotNull(report.incoming, report.outgoing).forEach(::printDirection)
    val failed = listOfNotNull(report.incoming, report.outgoing).firstNotNullOfOrNull { d -> d.diagnosis?.let { d to it } }
    if (failed != null) {
        val (d, x) = failed
        throw Failed(x.code.code, "${d.direction.name.lowercase()} failed at step ${x.step}: ${x.message}", x.nextAction)
    }
    check(report.outcome != TestOutcome.FAILURE) { "Test & Enable failed without a diagnosis" }
}

fun run(a: Args) = runBlocking {
    openStore(a).use { sync ->
        try {
            // The listener's port is part of the redirect URI, so it is bound first (--port 0: any free port).
            val mailbox = CallbackListener(a.port).use { listener ->
                val profile = ensureProfile(sync, a, "http://127.0.0.1:${listener.port}")
                val mailbox = ensureMailbox(sync, a, profile)
                if (sync.directory().state(mailbox.id).grant !is GrantStatus.Connected) {
                    connect(sync, mailbox, listener, a.consentTimeoutSecs)
                }
                mailbox
            }
            testAndEnable(sync, mailbox)
        } finally {
            sync.closeStore()
        }
    }
}

fun fail(code: String, message: String, nextAction: String): Nothing {
    System.err.println("error: $code: $message")
    System.err.println("next: $nextAction")
    exitProcess(1)
}

fun main(argv: Array<String>) {
    val a = parseArgs(argv)
    try {
        run(a)
    } catch (e: MailsyncException) {
        fail(e.code, e.detail, e.nextAction)
    } catch (e: Failed) {
        fail(e.code, e.message ?: "", e.nextAction)
    }
    exitProcess(0)
}
