//! What a call opens that must be closed: files, sockets, database connections and pools,
//! engines, HTTP clients and sessions, Redis clients, by the callee's full path through the
//! module's imports (the `unclosed_resource` pattern of `lifecycle` judges whether it is closed).

use tree_sitter::Node;

use super::{
    classify::Context,
    syntax::{callee_name, receiver},
};

/// What a call opens, its base confidence, and whether using it in one expression (without a
/// name) still leaks: CPython closes files and sockets when their last reference goes, but not
/// sessions, pools and engines with connections parked in them.
pub fn opens(cx: &Context<'_>, call: Node<'_>) -> Option<(&'static str, f64, bool)> {
    // The callee's full path through this module's imports: `ClientSession` after
    // `from aiohttp import ClientSession` is `aiohttp.ClientSession`; an unimported name is itself.
    let name = callee_name(call, cx.source)?;
    let (head, rest) = name.split_once('.').unwrap_or((&name, ""));
    let resolved = match cx.facts.imports.get(head) {
        Some(full) if rest.is_empty() => full.clone(),
        Some(full) => format!("{full}.{rest}"),
        None => name.clone(),
    };
    let top = resolved.split('.').next().unwrap_or("");
    let leaf = resolved.rsplit('.').next().unwrap_or("");
    let receiver_text = receiver(call).map(|r| cx.text(r).to_lowercase()).unwrap_or_default();
    const DB_MODULES: &[&str] = &[
        "sqlite3",
        "psycopg2",
        "psycopg",
        "pymysql",
        "MySQLdb",
        "mysql",
        "asyncpg",
        "aiomysql",
        "aiosqlite",
        "aiopg",
        "oracledb",
        "cx_Oracle",
        "pyodbc",
        "duckdb",
    ];
    let from_db = DB_MODULES.contains(&top);
    Some(match (top, leaf) {
        _ if matches!(
            resolved.as_str(),
            "open" | "io.open" | "gzip.open" | "bz2.open" | "lzma.open" | "codecs.open"
        ) =>
        {
            ("a file", 0.55, false)
        }
        ("tempfile", "NamedTemporaryFile" | "TemporaryFile" | "SpooledTemporaryFile") => {
            ("a temporary file", 0.55, false)
        }
        ("socket", "socket" | "create_connection") => ("a socket", 0.6, false),
        (_, "connect") if from_db => ("a database connection", 0.75, true),
        (_, "create_pool") if from_db => ("a connection pool", 0.85, true),
        (_, "create_engine" | "create_async_engine") => {
            ("an SQLAlchemy engine (a connection pool of its own)", 0.85, true)
        }
        (_, "connect" | "begin" | "raw_connection") if receiver_text.contains("engine") => {
            ("an engine connection", 0.7, true)
        }
        // The guide's `conn = await db.connect()`: an application's database wrapper or pool.
        (_, "connect") if is_database(&receiver_text) => ("a database connection", 0.65, true),
        ("aiohttp", "ClientSession") => ("an aiohttp ClientSession", 0.85, true),
        ("httpx", "Client" | "AsyncClient") => ("an httpx client", 0.8, true),
        ("requests", "Session" | "session") => ("a requests Session", 0.65, true),
        ("urllib3", "PoolManager") => ("a urllib3 PoolManager", 0.65, true),
        (_, "Redis" | "StrictRedis" | "from_url") if resolved.contains("redis") => {
            ("a Redis client (a connection pool)", 0.7, true)
        }
        ("sqlalchemy", "Session" | "AsyncSession") => ("an SQLAlchemy session", 0.7, true),
        // FastAPI's documented `SessionLocal = sessionmaker(...)`.
        (_, l) if l.ends_with("SessionLocal") => ("an SQLAlchemy session", 0.7, true),
        _ => return None,
    })
}

/// `db`, `self.database`, `app.state.pool`, `orders_db`: a receiver named for a database.
fn is_database(receiver: &str) -> bool {
    let last = receiver.rsplit('.').next().unwrap_or("").trim_matches('_');
    last == "db"
        || last.ends_with("_db")
        || last.starts_with("db_")
        || last.contains("database")
        || last.ends_with("pool")
}
