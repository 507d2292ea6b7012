//! PostgreSQL as the token store, for any number of replicas on one database.
//!
//! Each replica still answers every request from its in-memory table: the database is read only to fill it. A
//! listening connection (`LISTEN condagate`) hears every change of tokens or groups (a trigger notifies, whoever
//! wrote), and the replica loads the table again. Notifications sent while a replica is disconnected are lost, so it
//! loads again after every reconnect and every `tokens.resync_interval`; while connected it pings every few seconds,
//! and each successful ping or load marks the table fresh ([`Freshness`]). Usage counters are written in batches.
//!
//! Client: `tokio-postgres` directly, with one connection for writes and reads (re-opened when it breaks) and one for
//! listening. A pool would add a crate and buy nothing here: requests never touch the database, and the admin
//! API's writes are rare and short.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::{Mutex, Notify};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::file::StoreError;
use super::store::{Freshness, TokenStore};
use super::{Digest, Scope, TokenRecord};
use crate::config::{Group, Packages, PostgresConfig};

/// The schema version this condagate reads and writes.
pub const SCHEMA_VERSION: i32 = 1;

/// The migrations, in order: migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 1] = [include_str!("migrations/001_tokens_groups_usage.sql")];

/// How often a connected replica pings its listening connection; a ping that succeeds marks the table fresh.
const PING_EVERY: Duration = Duration::from_secs(2);

/// The longest wait between two attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A connection to the database, with TLS when the URL asks for it (`sslmode=require`).
#[derive(Clone)]
struct Connector {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    shown: String,
}

impl Connector {
    fn new(pg: &PostgresConfig) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = pg
            .url()
            .parse()
            .map_err(|e| StoreError::Schema(format!("tokens.postgres is not a PostgreSQL URL: {e}")))?;
        if let Some(path) = &pg.password_file {
            let password =
                std::fs::read_to_string(path).map_err(|e| StoreError::Io { path: path.clone(), source: e })?;
            config.password(password.trim_end_matches(['\n', '\r']));
        } else if config.get_password().is_none() {
            if let Ok(p) = std::env::var("PGPASSWORD") {
                config.password(p);
            }
        }
        config.connect_timeout(Duration::from_secs(5));
        let tls = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable | tokio_postgres::config::SslMode::Prefer => None,
            _ => {
                let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| StoreError::Schema(format!("TLS for PostgreSQL: {e}")))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            }
        };
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let shown = format!(
            "postgres {}@{}:{port}/{}",
            config.get_user().unwrap_or("?"),
            hosts.join(","),
            config.get_dbname().unwrap_or("?")
        );
        Ok(Connector { config, tls, shown })
    }

    /// Opens a connection; its messages (notifications) go to `on_message`, and the returned handle ends when the
    /// connection does.
    async fn connect(
        &self,
        on_message: impl FnMut(AsyncMessage) + Send + 'static,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), StoreError> {
        self.connect_as("condagate", on_message).await
    }

    /// [`Connector::connect`] under another `application_name` (what `pg_stat_activity` shows).
    async fn connect_as(
        &self,
        name: &str,
        on_message: impl FnMut(AsyncMessage) + Send + 'static,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), StoreError> {
        let mut config = self.config.clone();
        config.application_name(name);
        async fn drive<S, T>(mut conn: tokio_postgres::Connection<S, T>, mut on: impl FnMut(AsyncMessage))
        where
            S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
            T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = futures_util::StreamExt::next(&mut messages).await {
                match m {
                    Ok(m) => on(m),
                    Err(e) => {
                        tracing::debug!(error = %e, "PostgreSQL connection ended");
                        break;
                    }
                }
            }
        }
        let unavailable = |e: tokio_postgres::Error| StoreError::Unavailable(format!("{}: {e}", self.shown));
        match &self.tls {
            None => {
                let (client, conn) = config.connect(NoTls).await.map_err(unavailable)?;
                Ok((client, tokio::spawn(async move { drive(conn, on_message).await })))
            }
            Some(tls) => {
                let (client, conn) = config.connect(tls.clone()).await.map_err(unavailable)?;
                Ok((client, tokio::spawn(async move { drive(conn, on_message).await })))
            }
        }
    }
}

/// The PostgreSQL store.
pub struct PgStore {
    connector: Connector,
    /// The connection for reads and writes, opened again when it breaks.
    work: Mutex<Option<Client>>,
    changed: Arc<Notify>,
    freshness: Arc<Freshness>,
    resync: Duration,
    listener: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(l) = self.listener.get() {
            l.abort();
        }
    }
}

fn db_error(shown: &str) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
    move |e| {
        // A broken connection or an unreachable server is worth retrying; anything the server refused is not.
        if e.is_closed() || e.as_db_error().is_none() {
            StoreError::Unavailable(format!("{shown}: {e}"))
        } else {
            StoreError::Schema(format!("{shown}: {e}"))
        }
    }
}

impl PgStore {
    /// Connects to the database of `pg`. With `check_schema`, refuses a database whose schema is not this
    /// condagate's (`serve` and the token commands); `store migrate` connects without.
    pub async fn connect(pg: &PostgresConfig, check_schema: bool) -> Result<Self, StoreError> {
        let connector = Connector::new(pg)?;
        let store = PgStore {
            connector,
            work: Mutex::new(None),
            changed: Arc::new(Notify::new()),
            freshness: Arc::new(Freshness::new(Some(pg.max_stale))),
            resync: pg.resync_interval,
            listener: std::sync::OnceLock::new(),
        };
        if check_schema {
            let version = store.schema_version().await?;
            if version != SCHEMA_VERSION {
                let what = if version < SCHEMA_VERSION { "older" } else { "newer" };
                return Err(StoreError::Schema(format!(
                    "{}: the database schema is version {version}, {what} than this condagate's {SCHEMA_VERSION}{}",
                    store.connector.shown,
                    if version < SCHEMA_VERSION { "; run `condagate store migrate --config …`" } else { "" }
                )));
            }
        }
        Ok(store)
    }

    /// Runs `work` on the work connection, opening it first if it is not open; a connection found broken is
    /// dropped, so the next call opens a new one.
    async fn with_client<T>(
        &self,
        work: impl for<'c> FnOnce(&'c mut Client) -> futures_util::future::BoxFuture<'c, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut slot = self.work.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            let (client, _driver) = self.connector.connect(|_| {}).await?;
            *slot = Some(client);
        }
        let client = slot.as_mut().ok_or_else(|| StoreError::Unavailable("no connection".into()))?;
        let result = work(client).await;
        if matches!(result, Err(StoreError::Unavailable(_))) {
            *slot = None;
        }
        result
    }

    /// The schema version of the database: 0 when it has none yet.
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        let shown = self.connector.shown.clone();
        self.with_client(move |c| {
            Box::pin(async move {
                let exists = c
                    .query_one("SELECT to_regclass('condagate_schema') IS NOT NULL", &[])
                    .await
                    .map_err(db_error(&shown))?;
                if !exists.get::<_, bool>(0) {
                    return Ok(0);
                }
                let row = c.query_one("SELECT version FROM condagate_schema", &[]).await.map_err(db_error(&shown))?;
                Ok(row.get(0))
            })
        })
        .await
    }

    /// Brings the schema to [`SCHEMA_VERSION`], one migration per transaction, under an advisory lock so that
    /// replicas started together migrate once. Returns the versions before and after.
    pub async fn migrate(&self) -> Result<(i32, i32), StoreError> {
        let shown = self.connector.shown.clone();
        self.with_client(move |c| {
            Box::pin(async move {
                let e = db_error(&shown);
                let tx = c.transaction().await.map_err(&e)?;
                tx.execute("SELECT pg_advisory_xact_lock(7355608)", &[]).await.map_err(&e)?;
                tx.batch_execute("CREATE TABLE IF NOT EXISTS condagate_schema (version integer NOT NULL)")
                    .await
                    .map_err(&e)?;
                let before: i32 = match tx.query_opt("SELECT version FROM condagate_schema", &[]).await.map_err(&e)? {
                    Some(r) => r.get(0),
                    None => {
                        tx.execute("INSERT INTO condagate_schema VALUES (0)", &[]).await.map_err(&e)?;
                        0
                    }
                };
                if before > SCHEMA_VERSION {
                    return Err(StoreError::Schema(format!(
                        "the database schema is version {before}, newer than this condagate's {SCHEMA_VERSION}"
                    )));
                }
                for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(before).unwrap_or(0)) {
                    tx.batch_execute(sql).await.map_err(&e)?;
                    let v = i32::try_from(i + 1).unwrap_or(i32::MAX);
                    tx.execute("UPDATE condagate_schema SET version = $1", &[&v]).await.map_err(&e)?;
                }
                tx.commit().await.map_err(&e)?;
                Ok((before, SCHEMA_VERSION))
            })
        })
        .await
    }

    /// Stores `records` and `groups` from a file set-up; a record or group already there is updated to match, so
    /// importing twice changes nothing. Returns how many of each were written.
    pub async fn import(&self, records: Vec<TokenRecord>, groups: Vec<Group>) -> Result<(usize, usize), StoreError> {
        let shown = self.connector.shown.clone();
        self.with_client(move |c| {
            Box::pin(async move {
                let e = db_error(&shown);
                let tx = c.transaction().await.map_err(&e)?;
                for r in &records {
                    let row = Row::of(r);
                    tx.execute(
                        "INSERT INTO condagate_tokens (digest, name, \"user\", scopes, created, expires, revoked, channels) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (digest) DO UPDATE SET \
                         name = EXCLUDED.name, \"user\" = EXCLUDED.\"user\", scopes = EXCLUDED.scopes, \
                         created = EXCLUDED.created, expires = EXCLUDED.expires, revoked = EXCLUDED.revoked, \
                         channels = EXCLUDED.channels",
                        &row.params(),
                    )
                    .await
                    .map_err(|err| unique_refused(err, r, &shown))?;
                }
                for g in &groups {
                    tx.execute(
                        "INSERT INTO condagate_groups (channel, name, members, packages, labels) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (channel, name) DO UPDATE SET \
                         members = EXCLUDED.members, packages = EXCLUDED.packages, labels = EXCLUDED.labels",
                        &[&g.channel, &g.name, &g.members, &g.packages.patterns, &g.labels],
                    )
                    .await
                    .map_err(&e)?;
                }
                tx.commit().await.map_err(&e)?;
                Ok((records.len(), groups.len()))
            })
        })
        .await
    }

    /// Starts the listening task, once.
    fn listen(&self) {
        self.listener.get_or_init(|| {
            let (connector, changed, freshness, resync) =
                (self.connector.clone(), Arc::clone(&self.changed), Arc::clone(&self.freshness), self.resync);
            tokio::spawn(listen_loop(connector, changed, freshness, resync))
        });
    }
}

/// Keeps a listening connection open for as long as the store lives, reconnecting with backoff. Every notification,
/// every (re)connect and every `resync` wakes [`TokenStore::changed`]; every successful ping marks the table fresh.
async fn listen_loop(connector: Connector, changed: Arc<Notify>, freshness: Arc<Freshness>, resync: Duration) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let heard = Arc::clone(&changed);
        let opened = connector
            .connect_as("condagate-listen", move |m| {
                if let AsyncMessage::Notification(_) = m {
                    heard.notify_one();
                }
            })
            .await;
        let (client, driver) = match opened {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot reach PostgreSQL; serving the tokens held");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if let Err(e) = client.batch_execute("LISTEN condagate").await {
            tracing::warn!(error = %e, "LISTEN failed; reconnecting");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        tracing::info!(store = %connector.shown, "listening for token changes");
        // Anything may have changed while no one listened.
        changed.notify_one();
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut full = tokio::time::interval(resync);
        full.tick().await;
        loop {
            tokio::select! {
                _ = ping.tick() => {
                    if client.simple_query("SELECT 1").await.is_err() {
                        break;
                    }
                    freshness.touch();
                }
                _ = full.tick() => changed.notify_one(),
            }
            if driver.is_finished() {
                break;
            }
        }
        driver.abort();
        tracing::warn!("the PostgreSQL listening connection was lost; reconnecting");
    }
}

/// A token record as the database holds it.
struct Row {
    digest: Vec<u8>,
    name: String,
    user: String,
    scopes: Vec<String>,
    created: OffsetDateTime,
    expires: Option<OffsetDateTime>,
    revoked: Option<OffsetDateTime>,
    channels: Option<Vec<String>>,
}

impl Row {
    fn of(r: &TokenRecord) -> Self {
        Row {
            digest: r.digest.0.to_vec(),
            name: r.name.to_string(),
            user: r.user.to_string(),
            scopes: r.scopes.iter().map(|s| s.name().to_owned()).collect(),
            created: r.created,
            expires: r.expires,
            revoked: r.revoked,
            channels: r.channels.clone(),
        }
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 8] {
        [
            &self.digest,
            &self.name,
            &self.user,
            &self.scopes,
            &self.created,
            &self.expires,
            &self.revoked,
            &self.channels,
        ]
    }

    fn read(row: &tokio_postgres::Row) -> Result<TokenRecord, StoreError> {
        let digest: Vec<u8> = row.get(0);
        let digest: [u8; 32] =
            digest.try_into().map_err(|_| StoreError::Schema("a token digest is not 32 bytes".into()))?;
        let scopes: Vec<String> = row.get(3);
        let scopes =
            scopes.iter().map(|s| s.parse::<Scope>().map_err(StoreError::Schema)).collect::<Result<Vec<_>, _>>()?;
        Ok(TokenRecord {
            digest: Digest(digest),
            name: row.get::<_, String>(1).into(),
            user: row.get::<_, String>(2).into(),
            scopes: scopes.into_iter().collect(),
            created: row.get(4),
            expires: row.get(5),
            revoked: row.get(6),
            channels: row.get(7),
            seen: Default::default(),
        })
    }
}

/// The refusal for a second active token of one name, or the database error as it is.
fn unique_refused(e: tokio_postgres::Error, r: &TokenRecord, shown: &str) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        StoreError::name_taken(r)
    } else {
        db_error(shown)(e)
    }
}

#[async_trait]
impl TokenStore for PgStore {
    fn describe(&self) -> String {
        self.connector.shown.clone()
    }

    async fn load(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let shown = self.connector.shown.clone();
        let records = self
            .with_client(move |c| {
                Box::pin(async move {
                    // Streamed, each row turned into a record as it arrives: a million rows are never held at once
                    // beside their records.
                    let e = db_error(&shown);
                    let rows = c
                        .query_raw(
                            "SELECT t.digest, name, \"user\", scopes, created, expires, revoked, channels, \
                             u.last_used FROM condagate_tokens t LEFT JOIN condagate_token_usage u USING (digest)",
                            std::iter::empty::<&str>(),
                        )
                        .await
                        .map_err(&e)?;
                    let mut rows = std::pin::pin!(rows);
                    let mut records = Vec::new();
                    while let Some(row) = futures_util::TryStreamExt::try_next(&mut rows).await.map_err(&e)? {
                        let mut record = Row::read(&row)?;
                        record.seen = super::Seen::at(row.get(8));
                        records.push(record);
                    }
                    Ok(records)
                })
            })
            .await?;
        self.freshness.touch();
        Ok(records)
    }

    async fn changed(&self) {
        self.listen();
        self.changed.notified().await;
    }

    async fn create(&self, record: TokenRecord) -> Result<(), StoreError> {
        let shown = self.connector.shown.clone();
        self.with_client(move |c| {
            Box::pin(async move {
                let row = Row::of(&record);
                c.execute(
                    "INSERT INTO condagate_tokens (digest, name, \"user\", scopes, created, expires, revoked, channels) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &row.params(),
                )
                .await
                .map_err(|e| unique_refused(e, &record, &shown))?;
                Ok(())
            })
        })
        .await
    }

    async fn revoke(&self, name: &str, user: Option<&str>, now: OffsetDateTime) -> Result<TokenRecord, StoreError> {
        let (shown, name, user) = (self.connector.shown.clone(), name.to_owned(), user.map(str::to_owned));
        self.with_client(move |c| {
            Box::pin(async move {
                let e = db_error(&shown);
                let tx = c.transaction().await.map_err(&e)?;
                let rows = tx
                    .query(
                        "SELECT digest, name, \"user\", scopes, created, expires, revoked, channels \
                         FROM condagate_tokens WHERE name = $1 AND revoked IS NULL \
                         AND ($2::text IS NULL OR \"user\" = $2) FOR UPDATE",
                        &[&name, &user],
                    )
                    .await
                    .map_err(&e)?;
                let mut records = rows.iter().map(Row::read).collect::<Result<Vec<_>, _>>()?;
                let revoked = super::file::revoke_in(&mut records, &name, user.as_deref(), now)?;
                tx.execute(
                    "UPDATE condagate_tokens SET revoked = $2 WHERE digest = $1",
                    &[&revoked.digest.0.as_slice(), &now],
                )
                .await
                .map_err(&e)?;
                tx.commit().await.map_err(&e)?;
                Ok(revoked)
            })
        })
        .await
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn groups(&self) -> Result<Option<Vec<Group>>, StoreError> {
        let shown = self.connector.shown.clone();
        self.with_client(move |c| {
            Box::pin(async move {
                let rows = c
                    .query("SELECT channel, name, members, packages, labels FROM condagate_groups", &[])
                    .await
                    .map_err(db_error(&shown))?;
                let mut groups = Vec::with_capacity(rows.len());
                for row in rows {
                    let (channel, name): (String, String) = (row.get(0), row.get(1));
                    let patterns: Vec<String> = row.get(3);
                    let packages = Packages::new(&patterns)
                        .map_err(|e| StoreError::Schema(format!("group {name:?} of {channel:?}: packages: {e}")))?;
                    groups.push(Group { channel, name, members: row.get(2), packages, labels: row.get(4) });
                }
                Ok(Some(groups))
            })
        })
        .await
    }

    async fn change_group(
        &self,
        channel: &str,
        group: &str,
        what: &str,
        item: &str,
        add: bool,
    ) -> Result<(), StoreError> {
        let column = match what {
            "members" => "members",
            "packages" => {
                if add {
                    Packages::new(&[item.to_owned()])
                        .map_err(|e| StoreError::Refused(format!("{item:?} is not a package pattern: {e}")))?;
                }
                "packages"
            }
            other => return Err(StoreError::Refused(format!("{other:?} is not members or packages"))),
        };
        let sql = if add {
            format!(
                "UPDATE condagate_groups SET {column} = CASE WHEN $3 = ANY({column}) THEN {column} \
                 ELSE array_append({column}, $3) END WHERE channel = $1 AND name = $2"
            )
        } else {
            format!(
                "UPDATE condagate_groups SET {column} = array_remove({column}, $3) WHERE channel = $1 AND name = $2"
            )
        };
        let (shown, channel, group, item) =
            (self.connector.shown.clone(), channel.to_owned(), group.to_owned(), item.to_owned());
        self.with_client(move |c| {
            Box::pin(async move {
                let n = c.execute(sql.as_str(), &[&channel, &group, &item]).await.map_err(db_error(&shown))?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!("channel {channel:?} has no group {group:?}")));
                }
                Ok(())
            })
        })
        .await
    }

    fn freshness(&self) -> Arc<Freshness> {
        Arc::clone(&self.freshness)
    }

    async fn add_downloads(&self, counts: Vec<(String, String, u64)>) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        let shown = self.connector.shown.clone();
        self.with_client(move |c| {
            Box::pin(async move {
                let e = db_error(&shown);
                let tx = c.transaction().await.map_err(&e)?;
                for (channel, package, n) in &counts {
                    let n = i64::try_from(*n).unwrap_or(i64::MAX);
                    tx.execute(
                        "INSERT INTO condagate_downloads (channel, package, count) VALUES ($1, $2, $3) \
                         ON CONFLICT (channel, package) DO UPDATE SET count = condagate_downloads.count + $3",
                        &[channel, package, &n],
                    )
                    .await
                    .map_err(&e)?;
                }
                tx.commit().await.map_err(&e)?;
                Ok(())
            })
        })
        .await
    }

    async fn add_last_used(&self, uses: Vec<(Digest, OffsetDateTime)>) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let shown = self.connector.shown.clone();
        self.with_client(move |c| {
            Box::pin(async move {
                let (digests, times): (Vec<Vec<u8>>, Vec<OffsetDateTime>) =
                    uses.iter().map(|(d, t)| (d.0.to_vec(), *t)).unzip();
                c.execute(
                    "INSERT INTO condagate_token_usage (digest, last_used) SELECT * FROM unnest($1::bytea[], \
                     $2::timestamptz[]) ON CONFLICT (digest) DO UPDATE SET \
                     last_used = GREATEST(condagate_token_usage.last_used, EXCLUDED.last_used)",
                    &[&digests, &times],
                )
                .await
                .map_err(db_error(&shown))?;
                Ok(())
            })
        })
        .await
    }

    async fn downloads(&self) -> Result<Option<Vec<(String, String, u64)>>, StoreError> {
        let shown = self.connector.shown.clone();
        self.with_client(move |c| {
            Box::pin(async move {
                let rows = c
                    .query("SELECT channel, package, count FROM condagate_downloads ORDER BY 1, 2", &[])
                    .await
                    .map_err(db_error(&shown))?;
                Ok(Some(
                    rows.iter().map(|r| (r.get(0), r.get(1), u64::try_from(r.get::<_, i64>(2)).unwrap_or(0))).collect(),
                ))
            })
        })
        .await
    }
}
