package com.mailsync.examples

import com.google.gson.JsonObject
import com.google.gson.JsonParser
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.MethodOrderer
import org.junit.jupiter.api.Order
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestMethodOrder
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.Paths
import java.time.Duration
import java.util.concurrent.TimeUnit

/**
 * Runs ConnectGmail against the local stack as a user would: a separate JVM (`java -cp
 * <the runtime classpath> com.mailsync.examples.ConnectGmailKt …`, no -Djna.library.path: the
 * native library comes out of the mailsync-kotlin jar), its exit status and output. This test
 * plays the browser: it reads the consent URL the program prints, walks the stack's login and
 * consent pages (tests/stack/bin/consent) and follows the redirect to the program's listener.
 *
 * 1. consent denied: exit 1, `error: consent_denied` and a next action on stderr;
 * 2. consent allowed: connected, Test & Enable passes, every step printed;
 * 3. a second run: no consent (the grant is in the store), Test & Enable again;
 * 4. an account with IMAP disabled: exit 1, `error: protocol_disabled` from Test & Enable.
 *
 * Account: $KOTLIN_EXAMPLE_ACCOUNT (default sync16@example.test) and dave@example.test.
 */
@TestMethodOrder(MethodOrderer.OrderAnnotation::class)
class ConnectGmailTest {
    class Run(val exit: Int, val stdout: String, val stderr: String)

    companion object {
        private val stackJson: Path = Paths.get(System.getProperty("mailsync.stack.json"))
        private val stackBin: Path = Paths.get(System.getProperty("mailsync.stack.bin"))
        private val stack: JsonObject = JsonParser.parseString(Files.readString(stackJson)).asJsonObject
        private val account: String = System.getenv("KOTLIN_EXAMPLE_ACCOUNT") ?: "sync16@example.test"
        private val work: Path = Files.createTempDirectory("kotlin-example-")
        private val http: HttpClient = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build()

        @JvmStatic
        @AfterAll
        fun cleanUp() {
            work.toFile().deleteRecursively()
        }

        private fun password(email: String): String = stack.getAsJsonArray("accounts").map { it.asJsonObject }
            .single { it.get("email").asString == email }.get("password").asString

        /** What a browser does: the consent pages (tests/stack/bin/consent), then the redirect to the listener. */
        private fun browse(url: String, email: String, deny: Boolean) {
            val args = mutableListOf(stackBin.resolve("consent").toString(), url, "--email", email, "--password", password(email))
            if (deny) args.add("--deny")
            val consent = ProcessBuilder(args).redirectError(ProcessBuilder.Redirect.INHERIT).start()
            val redirect = consent.inputStream.bufferedReader().readText().trim().lines().last()
            assertTrue(consent.waitFor(60, TimeUnit.SECONDS), "tests/stack/bin/consent timed out")
            assertEquals(0, consent.exitValue(), "tests/stack/bin/consent: $redirect")
            assertTrue(redirect.startsWith("http://127.0.0.1:"), "a redirect to the program's listener: $redirect")
            val response = http.send(HttpRequest.newBuilder(URI(redirect)).timeout(Duration.ofSeconds(30)).build(), HttpResponse.BodyHandlers.ofString())
            assertEquals(200, response.statusCode(), response.body())
        }

        /** Runs the program for [email] with its own store [db]; acts as the browser when it asks for consent. */
        fun run(email: String, db: String = "mailsync.db", deny: Boolean = false): Run {
            val java = Paths.get(System.getProperty("java.home"), "bin", "java").toString()
            val command = listOf(
                java, "-cp", System.getProperty("java.class.path"), "com.mailsync.examples.ConnectGmailKt",
                email, "--stack", stackJson.toString(), "--port", "0", "--db", work.resolve(db).toString(),
                "--consent-timeout", "60",
            )
            val builder = ProcessBuilder(command)
            builder.environment().apply {
                remove("BROWSER") // the test is the browser
                remove("LD_LIBRARY_PATH") // the native library comes from the jar
                remove("GOOGLE_CLIENT_SECRET")
            }
            val process = builder.start()
            val stderr = StringBuilder()
            val errReader = Thread { stderr.append(process.errorStream.bufferedReader().readText()) }.apply { start() }
            val stdout = StringBuilder()
            var browsed: Throwable? = null
            process.inputStream.bufferedReader().useLines { lines ->
                for (line in lines) {
                    stdout.appendLine(line)
                    val url = line.trim()
                    if (url.startsWith(stack.getAsJsonObject("oauth").get("authorization_endpoint").asString)) {
                        try {
                            browse(url, email, deny)
                        } catch (e: Throwable) {
                            browsed = e
                            process.destroy()
                        }
                    }
                }
            }
            val finished = process.waitFor(120, TimeUnit.SECONDS)
            if (!finished) process.destroyForcibly()
            errReader.join(10_000)
            println("  $ ConnectGmail $email${if (deny) " (deny)" else ""} -> exit ${if (finished) process.exitValue() else "timeout"}")
            (stdout.toString() + stderr).trim().lines().forEach { println("    | $it") }
            browsed?.let { throw AssertionError("the browser failed", it) }
            assertTrue(finished, "the program did not end")
            return Run(process.exitValue(), stdout.toString(), stderr.toString())
        }
    }

    @Test
    @Order(0)
    fun theNativeLibraryComesFromTheMailsyncJar() {
        assertNull(System.getProperty("jna.library.path"), "no -Djna.library.path")
        val lib = ClassLoader.getSystemResource("linux-x86-64/libmailsync_uniffi.so")
        assertNotNull(lib, "linux-x86-64/libmailsync_uniffi.so on the classpath")
        assertTrue(lib.toString().startsWith("jar:") && "mailsync-kotlin" in lib.toString(), "$lib")
    }

    @Test
    @Order(1)
    fun consentDeniedExitsWithItsCode() {
        val r = run(account, deny = true)
        assertEquals(1, r.exit, r.stderr)
        assertTrue("error: consent_denied:" in r.stderr, r.stderr)
        assertTrue("\nnext: " in r.stderr, r.stderr)
    }

    @Test
    @Order(2)
    fun consentAllowedThenTestAndEnablePasses() {
        val r = run(account)
        assertEquals(0, r.exit, r.stderr)
        assertTrue("Connected as $account." in r.stdout, r.stdout)
        assertTrue("Test & Enable $account: success (incoming enabled, outgoing enabled)" in r.stdout, r.stdout)
        assertTrue(Regex("incoming IMAP 127\\.0\\.0\\.1:\\d+: passed").containsMatchIn(r.stdout), r.stdout)
        assertTrue(Regex("outgoing SMTP 127\\.0\\.0\\.1:\\d+: passed").containsMatchIn(r.stdout), r.stdout)
        for (step in listOf("credentials", "connect", "tls", "authenticate", "select_inbox", "ehlo")) {
            assertTrue(Regex("^\\s+$step\\s+ok\\s", RegexOption.MULTILINE).containsMatchIn(r.stdout), "$step ok in:\n${r.stdout}")
        }
        assertFalse("FAILED" in r.stdout, r.stdout)
    }

    @Test
    @Order(3)
    fun aSecondRunKeepsTheGrant() {
        val r = run(account)
        assertEquals(0, r.exit, r.stderr)
        assertFalse("Opening the consent page" in r.stdout, "the grant is kept in the store:\n${r.stdout}")
        assertTrue("Test & Enable $account: success" in r.stdout, r.stdout)
    }

    @Test
    @Order(4)
    fun imapDisabledExitsWithProtocolDisabled() {
        val r = run("dave@example.test", db = "dave.db")
        assertEquals(1, r.exit, r.stderr)
        assertTrue("error: protocol_disabled:" in r.stderr, r.stderr)
        assertTrue(Regex("incoming IMAP .*: FAILED").containsMatchIn(r.stdout), r.stdout)
    }
}
