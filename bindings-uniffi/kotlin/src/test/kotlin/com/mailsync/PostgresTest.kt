package com.mailsync

import com.mailsync.api.MailSync
import com.mailsync.api.SealKey
import com.mailsync.api.StoreLocation
import com.mailsync.api.defaultOptions
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test
import java.util.UUID
import java.util.concurrent.TimeUnit

/**
 * A PostgreSQL store (`StoreLocation.Postgres(url, key, poolSize)`) against
 * the local stack's PostgreSQL, in a schema of the test's own (dropped at
 * the end): records survive a reopen, and another key is refused with the
 * same error as SQLite's.
 */
class PostgresTest {
    private fun psql(url: String, sql: String) {
        val p = ProcessBuilder("psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql)
            .redirectErrorStream(true).start()
        val out = p.inputStream.readBytes().decodeToString()
        check(p.waitFor(60, TimeUnit.SECONDS) && p.exitValue() == 0) { "psql failed: $out" }
    }

    @Test
    fun aPostgresStoreKeepsRecordsAndRefusesAnotherKey(): Unit = runBlocking {
        val server = Stack.json.getAsJsonObject("postgres").get("url").asString
        val schema = "kttest_" + UUID.randomUUID().toString().replace("-", "")
        psql(server, "CREATE SCHEMA \"$schema\"")
        try {
            val url = "$server?options[search_path]=$schema"
            val key = SealKey.generate()
            MailSync.open(StoreLocation.Postgres(url, key, 2u), defaultOptions()).use { sync ->
                sync.directory().createProfile(gmail("Shared"))
            }
            MailSync.open(StoreLocation.Postgres(url, key, null), defaultOptions()).use { sync ->
                assertEquals("Shared", sync.directory().findProfile("Shared").name)
            }
            val wrong = fails<MailsyncException.SealKeyMismatch> {
                MailSync.open(StoreLocation.Postgres(url, SealKey.generate(), null), defaultOptions()).use { }
            }
            assertEquals("seal_key_mismatch", wrong.code)
        } finally {
            psql(server, "DROP SCHEMA IF EXISTS \"$schema\" CASCADE")
        }
    }
}
