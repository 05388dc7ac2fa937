"""A PostgreSQL store (`StoreLocation.postgres(url, key)`) against the local
stack's PostgreSQL, in a schema of the test's own (dropped at the end):
records survive a reopen, secrets stay sealed, and another key is refused
with the same error as SQLite's."""

import subprocess
import uuid

import pytest

import mailsync
from mailsync import SealKey, SealKeyMismatchError, StoreLocation
from mailsync.blocking import MailSync

from conftest import gmail


def psql(url, sql):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True,
                   stdout=subprocess.DEVNULL)


def test_a_postgres_store_keeps_records_and_refuses_another_key(stack):
    server = stack["postgres"]["url"]
    schema = "pytest_" + uuid.uuid4().hex
    psql(server, f'CREATE SCHEMA "{schema}"')
    try:
        url = f"{server}?options[search_path]={schema}"
        key = SealKey.generate()
        location = StoreLocation.postgres(url, key, pool_size=2)
        assert stack["postgres"]["password"] not in repr(location)
        sync = MailSync.open(location, mailsync.default_options())
        sync.directory.create_profile(gmail("Shared"))
        sync.close()

        again = MailSync.open(StoreLocation.postgres(url, key), mailsync.default_options())
        assert again.directory.find_profile("Shared").authentication.app.client_secret == "********"
        again.close()

        with pytest.raises(SealKeyMismatchError) as caught:
            MailSync.open(StoreLocation.postgres(url, SealKey.from_bytes(bytes(32))), mailsync.default_options())
        assert caught.value.code == "seal_key_mismatch"
    finally:
        psql(server, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
