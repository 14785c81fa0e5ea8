"""DATABASE_URL as users paste it, translated for asyncpg (request path) and
psycopg2 (Alembic); what neither can honour is refused with one line."""

import ssl
from urllib.parse import unquote

import pytest
from sqlalchemy import make_url
from sqlalchemy.dialects.postgresql.psycopg2 import dialect as psycopg2_dialect

from app.config import ConfigError, Settings, load_settings
from app.db.gateway import Database
from app.db.url import parse_database_url

dialect = psycopg2_dialect()  # type: ignore[no-untyped-call]
NEON = (
    "postgresql://alex:pw@ep-cool-1234-pooler.eu-central-1.aws.neon.tech/neondb"
    "?sslmode=require&channel_binding=require"
)


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:p@host:5433/db",
        "postgresql://u:p@host:5433/db",
        "postgresql+psycopg2://u:p@host:5433/db",
        "postgresql+asyncpg://u:p@host:5433/db",
    ],
)
def test_every_scheme_users_paste_works(url: str) -> None:
    parsed = parse_database_url(url)
    assert parsed.dsn == "postgresql://u:p@host:5433/db"
    assert parsed.sync_url == "postgresql+psycopg2://u:p@host:5433/db"


@pytest.mark.parametrize("mode", ["disable", "prefer"])
def test_gssencmode_that_asks_for_no_gss_encryption_is_honoured(mode: str) -> None:
    """asyncpg never encrypts with GSSAPI: `disable` (which tools add to skip a
    Kerberos lookup) and `prefer` are what it does anyway (a 'not supported'
    refusal until 2026-12-08, a scale-out trial). libpq still reads them."""
    parsed = parse_database_url(f"postgresql://u@h/db?gssencmode={mode}")
    assert "gssencmode" not in parsed.dsn
    assert parsed.sync_url.endswith(f"?gssencmode={mode}")


def test_neon_channel_binding_becomes_a_verified_certificate() -> None:
    parsed = parse_database_url(NEON)
    assert "channel_binding" not in parsed.dsn
    assert "sslmode" not in parsed.dsn  # the verifying context below decides
    context = parsed.connect_args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert parsed.sync_url.endswith("?sslmode=require&channel_binding=require")


def test_libpq_parameters_asyncpg_reads_are_passed_on() -> None:
    url = (
        "postgresql://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x"
    )
    parsed = parse_database_url(url)
    assert unquote(parsed.dsn) == url
    assert parsed.connect_args == {}
    assert parsed.application_name == "x"
    for spelling in ("UTF8", "utf-8", "UTF_8", "unicode"):
        url = f"postgresql://u@h/db?client_encoding={spelling}"
        assert f"client_encoding={spelling}" in parse_database_url(url).dsn


def test_connect_timeout_becomes_the_drivers_timeout() -> None:
    parsed = parse_database_url("postgresql://u@h/db?connect_timeout=7")
    assert parsed.connect_args == {"timeout": 7}
    assert "connect_timeout" not in parsed.dsn


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("postgresql://h1,h2/db", "h1,h2", ","),  # SQLAlchemy: the default ports
        ("postgresql:///db?host=/var/run/postgresql", "/var/run/postgresql", None),
        ("postgresql:///db?host=h1,h2&port=5432,5433", "h1,h2", "5432,5433"),
        ("postgresql://u@h1:5433,h2/db", "h1,h2", "5433,5432"),
        ("postgresql://u:p@h:5433/db", "h", 5433),
        # libpq's percent-encoded socket directory as the host, an IPv6 zone, any
        # encoded name: decoded, as asyncpg decodes them
        ("postgresql://%2Fvar%2Frun%2Fpostgresql/db", "/var/run/postgresql", None),
        ("postgresql://u@[fe80::1%25eth0]:5433/db", "fe80::1%eth0", "5433"),
        ("postgresql://u@my%2Dhost/db", "my-host", None),
    ],
)
def test_psycopg2_reads_the_same_hosts(url: str, host: str, port: object) -> None:
    """What SQLAlchemy hands psycopg2 (it could not parse a URL without an
    authority, `postgresql:///db`, nor a host list with ports)."""
    _, arguments = dialect.create_connect_args(  # type: ignore[no-untyped-call]
        make_url(parse_database_url(url).sync_url)
    )
    assert arguments["host"] == host
    assert arguments.get("port") == port
    assert arguments["dbname" if "dbname" in arguments else "database"] == "db"


def test_a_host_list_reaches_psycopg2_as_libpq_parameters() -> None:
    """SQLAlchemy reads one host and port from the URL (a list there was a
    traceback in the migrations); asyncpg reads the list itself."""
    url = "postgresql://u@h1:5433,[::1],h3:6000/db?sslmode=require"
    parsed = parse_database_url(url)
    assert parsed.dsn == "postgresql://u@h1:5433,[::1],h3:6000/db?sslmode=require"
    assert unquote(parsed.sync_url) == (
        "postgresql+psycopg2://u@/db?sslmode=require&host=h1,::1,h3&port=5433,5432,6000"
    )


def test_embedded_servers_socket_url_works() -> None:
    url = "postgresql://postgres:@/postgres?host=/tmp/pg"
    assert (
        parse_database_url(url).dsn
        == "postgresql://postgres:@/postgres?host=%2Ftmp%2Fpg"
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://u@h/db", "postgresql://"),
        ("postgresql://u@h:99999/db", "port"),
        ("postgresql://u@h:0/db", "port"),
        ("postgresql://u@h/db?port=99999", "port"),
        ("postgresql://u@h1:5432,h2:99999/db", "port"),
        ("postgresql://u@h:" + "9" * 5000 + "/db", "port"),
        ("postgresql://u@h/db?gssencmode=require", "gssencmode=require"),
        ("postgresql://u@h/db?gssencmode=maybe", "gssencmode must be"),
        ("postgresql://u@h/db?channel_binding=maybe", "channel_binding"),
        ("postgresql://u@h/db?sslmode=disable&channel_binding=require", "TLS"),
        ("postgresql://u@h/db?connect_timeout=soon", "connect_timeout"),
        # A password with a character that ends its part of the URL: the drivers
        # read part of it as the host, and quoted it in their errors.
        ("postgresql://app:Tr0ub@dor#3xK@127.0.0.1:5432/db", "percent-encode"),
        ("postgresql://app:p@ss@h/db", "percent-encode"),
        ("postgresql://app:pa/ss@h/db", "percent-encode"),
        # Supabase's template, `postgres:[YOUR-PASSWORD]@…`, with its brackets kept
        ("postgresql://postgres:[dor3xK]@db.x.supabase.co:5432/db", "percent-encode"),
        # libpq and asyncpg would each take another one of the two.
        ("postgresql://u@h/db?host=/tmp/pg", "not both"),
        ("postgresql://u@h:5432/db?port=5433", "not both"),
        ("postgresql://u@localhost/db?port=5433", "not both"),  # asyncpg: 5432
        ("postgresql://u@:5433/db?host=/tmp/pg", "not both"),
        ("postgresql://u@h1,h2/db?port=5433", "not both"),
        ("postgresql://u@%2Ftmp%2Cx/db", "comma"),  # asyncpg: one host; libpq: two
        # No database: the drivers would take the user's name (an operator trial:
        # `postgresql://` served from the socket's server, database `root`).
        ("postgresql://", "no database"),
        ("postgresql://u:p@db.example.com:5432", "no database"),
        ("postgresql://u@h/?sslmode=require", "no database"),
        # Refused by the drivers only when connecting, or quietly overridden.
        ("postgresql://u@h/db?sslmode=bogus", "sslmode must be one of"),
        ("postgresql://u@h/db?target_session_attrs=any-one", "target_session_attrs"),
        ("postgresql://u@h/db?client_encoding=latin1", "UTF8"),
        ("postgresql://u@h/db?options=-c%20statement_timeout%3D5000", "DB_STATEMENT"),
        ("postgresql://u@h/db?options=-c%20Statement-Timeout%3D0", "DB_STATEMENT"),
    ],
)
def test_what_cannot_be_honoured_is_one_line(
    url: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(ConfigError) as raised:
        load_settings(env_file=None)
    message = str(raised.value)
    assert message.startswith("configuration error: DATABASE_URL: ")
    assert says in message
    assert "\n" not in message
    assert "dor" not in message  # no part of a password
    assert "ss@" not in message


@pytest.mark.parametrize(
    ("url", "name", "setting", "value"),
    [
        # Neon's pooler: no named prepared statements, and no statement timeout
        # (its PgBouncer refuses the startup parameter)
        (NEON, "DB_STATEMENT_CACHE_SIZE", "", 0),
        (NEON, "DB_STATEMENT_TIMEOUT_MS", "", 0),
        ("postgresql://u@db.internal/app", "DB_STATEMENT_CACHE_SIZE", "", 100),
        ("postgresql://u@db.internal/app", "DB_STATEMENT_TIMEOUT_MS", "", 15_000),
        # an explicit setting wins (a pooler that keeps them, or ignores it)
        (NEON, "DB_STATEMENT_CACHE_SIZE", "50", 50),
        (NEON, "DB_STATEMENT_TIMEOUT_MS", "5000", 5000),
        ("postgresql://u@db.internal/app", "DB_STATEMENT_TIMEOUT_MS", "0", 0),
    ],
)
def test_neons_pooler_gets_what_its_pgbouncer_takes_unless_set(
    url: str, name: str, setting: str, value: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, setting)
    settings = Settings(_env_file=None, DATABASE_URL=url)
    database = Database(settings, parse_database_url(url))
    if name == "DB_STATEMENT_CACHE_SIZE":
        assert database._statement_cache_size() == value
    else:
        assert database._statement_timeout_ms() == value
        assert database._operation_timeout == (value or 15_000) / 1000 + 2
