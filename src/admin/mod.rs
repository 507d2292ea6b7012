//! The admin API under `/api/`: tokens and groups over HTTP, in the shapes the `anaconda` CLI (anaconda-client)
//! expects, plus condagate's own endpoints.
//!
//! Authentication is a condagate token in `Authorization: token <T>` (or `Bearer`). Scopes gate each operation:
//! `api:read` lists, `api:write` creates and revokes tokens, `api:modify-group` changes groups; `api` and `all`
//! imply all three. A user administers their own tokens only; only a channel's owners change its groups.
//! Errors are `{"error": "…"}`, as anaconda-client reads them.
//!
//! | method and path | scope | what |
//! |---|---|---|
//! | `GET /api/authentication-type` | none | `{"authentication_type": "kerberos"}`: the CLI then posts with its `-t` token |
//! | `GET /api/scopes` | none | every scope and what it allows |
//! | `GET /api/user` | any | `{login, name, user_type, created_at}` of the token's user |
//! | `GET /api/authentication` | any | `{application, id}` of the token itself |
//! | `GET /api/authentications` | api:read | the user's tokens that are not revoked, never a secret |
//! | `POST /api/authentications` | api:write | creates a token for the user: `{"token": …}` |
//! | `DELETE /api/authentications/name/<N>` | api:write | revokes the user's token `N` (201; 404 if it has none) |
//! | `GET /api/channels` | api:read | channels the user owns, with their groups |
//! | `GET /api/explain` | api:read | what the token's user can reach, and why |
//! | `GET /api/downloads` | api:read | completed downloads per package of the channels the user owns |
//! | `PUT`/`DELETE /api/channels/<c>/groups/<g>/members/<user>` | api:modify-group, owner of `c` | group membership |
//! | `PUT`/`DELETE /api/channels/<c>/groups/<g>/packages/<glob>` | api:modify-group, owner of `c` | group packages |

pub mod groups;

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::app::{App, Snapshot};
use crate::auth::{check_token, header_scheme, header_token, Scheme};
use crate::clock::format_time;
use crate::config::Config;
use crate::error::Error;
use crate::http::body::{full, Body};
use crate::policy::{self, Denied};
use crate::tokens::issue::{self, NewToken};
use crate::tokens::StoreError;
use crate::tokens::{Scope, TokenRecord};

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;

/// An API refusal: a status and a message for `{"error": …}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

fn err(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError { status, message: message.into() }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Refused(m) => err(StatusCode::BAD_REQUEST, m),
            StoreError::NotFound(m) => err(StatusCode::NOT_FOUND, m),
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "admin API write while the token store is unavailable");
                err(StatusCode::SERVICE_UNAVAILABLE, "the token store is unavailable; try again later")
            }
            other => {
                tracing::error!(error = %other, "admin API storage failure");
                err(StatusCode::INTERNAL_SERVER_ERROR, "the server could not store the change")
            }
        }
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Handles an `/api/…` request. Always answers: refusals are `{"error": …}` bodies with their status.
pub async fn handle(
    app: &App,
    snap: &Snapshot,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
    segments: Vec<String>,
) -> (Response<Body>, Option<Arc<TokenRecord>>) {
    let mut who = None;
    let result = route(app, snap, req, peer, &segments, &mut who).await;
    let resp = match result {
        Ok((status, v)) => json_response(status, &v),
        Err(e) => json_response(e.status, &json!({ "error": e.message })),
    };
    (resp, who)
}

fn identify(
    app: &App,
    snap: &Snapshot,
    req: &Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Result<Arc<TokenRecord>, ApiError> {
    let unauthorized = |m: &str| err(StatusCode::UNAUTHORIZED, m);
    // Only credentials a script sends on purpose: a browser attaches Basic credentials (and cookies) to any request
    // a page on another site makes it send, so they could mint tokens cross-site.
    let basic = header_scheme(req.headers()) == Some(Scheme::Basic);
    if basic {
        return Err(unauthorized("the admin API takes Authorization: Bearer <TOKEN> or token <TOKEN>, not Basic"));
    }
    let token = header_token(req.headers())
        .map_err(|_| unauthorized("the token given is malformed"))?
        .ok_or_else(|| unauthorized("authentication required: send Authorization: token <TOKEN>"))?;
    let mut seen = None;
    check_token(app.checks(), &snap.tokens, &token.digest(), peer.ip(), std::time::Instant::now(), &mut seen)
        .map_err(|e| match e {
            Error::Throttled { retry_after } => {
                err(StatusCode::TOO_MANY_REQUESTS, format!("too many failed attempts; retry in {retry_after} s"))
            }
            Error::Denied(Denied::Expired(at)) => {
                unauthorized(&format!("the token given expired at {}", format_time(at)))
            }
            Error::Denied(Denied::Revoked) => unauthorized("the token given has been revoked"),
            _ => unauthorized("the token given is invalid"),
        })
        .cloned()
}

pub(crate) fn need(who: &TokenRecord, scope: Scope) -> Result<(), ApiError> {
    if who.can_api(scope) {
        Ok(())
    } else {
        Err(err(StatusCode::FORBIDDEN, format!("this token lacks the {} scope", scope.name())))
    }
}

pub(crate) fn token_json(r: &TokenRecord, now: OffsetDateTime) -> Value {
    json!({
        "id": short_id(r),
        "application": r.name,
        "name": r.name,
        "user": r.user,
        "remote_addr": Value::Null,
        "hostname": Value::Null,
        "created_at": format_time(r.created),
        "expires": r.expires.map(format_time),
        "revoked": r.revoked.map(format_time),
        "last_used": r.seen.last().map(format_time),
        "status": r.status(now).to_string(),
        "scopes": r.scopes.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "channels": r.channels,
    })
}

/// A short public identifier of a token record: the start of its digest (which is not secret).
pub(crate) fn short_id(r: &TokenRecord) -> String {
    hex::encode(&r.digest.0[..6])
}

async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let body: Bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| err(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {MAX_BODY} bytes")))?
        .to_bytes();
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&body).map_err(|e| err(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}")))
}

pub(crate) type Answer = Result<(StatusCode, Value), ApiError>;

async fn route(
    app: &App,
    snap: &Snapshot,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
    segs: &[String],
    who_out: &mut Option<Arc<TokenRecord>>,
) -> Answer {
    let method = req.method().clone();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    // Endpoints that need no token.
    match (&method, s.as_slice()) {
        (&Method::GET, ["authentication-type"]) => {
            return Ok((StatusCode::OK, json!({"authentication_type": "kerberos"})));
        }
        (&Method::GET, ["scopes"]) => {
            let m: serde_json::Map<String, Value> =
                Scope::ALL.iter().map(|(_, n, d)| ((*n).to_owned(), Value::from(*d))).collect();
            return Ok((StatusCode::OK, Value::Object(m)));
        }
        _ => {}
    }
    // A page on another site can make a browser send these content types without asking first (CORS "simple"
    // requests); refused before anything else, so no state changes and no token is checked for them.
    if method != Method::GET && method != Method::HEAD && browser_sendable(req.headers()) {
        return Err(err(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as Content-Type: application/json (text/plain and form bodies are refused)",
        ));
    }
    let who = identify(app, snap, &req, peer)?;
    *who_out = Some(Arc::clone(&who));
    let now = app.clock.now_utc();
    let config = &snap.config;
    match (&method, s.as_slice()) {
        (&Method::GET, ["user"]) => {
            // `anaconda whoami` prints `created_at` as "Member since": the user's oldest token is the best stand-in.
            let since = snap.tokens.records().iter().filter(|r| r.user == who.user).map(|r| r.created).min();
            let since = since.unwrap_or(who.created);
            Ok((
                StatusCode::OK,
                json!({"login": who.user, "name": who.user, "user_type": "user", "created_at": format_time(since)}),
            ))
        }
        (&Method::GET, ["authentication"]) => Ok((
            StatusCode::OK,
            json!({"application": who.name, "id": short_id(&who), "scopes": who.scopes.iter().map(|s| s.name()).collect::<Vec<_>>()}),
        )),
        (&Method::GET, ["authentications"]) => {
            need(&who, Scope::ApiRead)?;
            // Revoked tokens are gone, as on anaconda.org (`anaconda auth --list` would show them as still valid);
            // `condagate token list` still shows them.
            let list: Vec<Value> = snap
                .tokens
                .records()
                .iter()
                .filter(|r| r.user == who.user && r.revoked.is_none() && within_reach(&who, r))
                .map(|r| token_json(r, now))
                .collect();
            Ok((StatusCode::OK, Value::Array(list)))
        }
        (&Method::POST, ["authentications"]) => {
            need(&who, Scope::ApiWrite)?;
            let body = read_json(req).await?;
            create(app, config, &who, &body, now).await
        }
        (&Method::DELETE, ["authentications", "name", name]) => {
            need(&who, Scope::ApiWrite)?;
            revoke(app, snap, &who, name, now).await
        }
        (&Method::GET, ["channels"]) => {
            need(&who, Scope::ApiRead)?;
            Ok((StatusCode::OK, channels_json(config, &who)))
        }
        (&Method::GET, ["downloads"]) => {
            need(&who, Scope::ApiRead)?;
            let owned = |c: &str| {
                who.reaches_channel(c) && config.channel(c).is_some_and(|c| c.owners.iter().any(|o| **o == *who.user))
            };
            // Every replica's counts where the store keeps them; this process's otherwise.
            let counts = match app.store.downloads().await? {
                Some(all) => all.into_iter().filter(|(c, _, _)| owned(c)).collect(),
                None => app.metrics.downloads(owned),
            };
            let list: Vec<Value> = counts
                .into_iter()
                .map(|(channel, package, n)| json!({"channel": channel, "package": package, "downloads": n}))
                .collect();
            Ok((StatusCode::OK, Value::Array(list)))
        }
        (&Method::GET, ["explain"]) => {
            need(&who, Scope::ApiRead)?;
            let reach: Vec<Value> = policy::explain(config, &who.user, None, who.channels.as_deref())
                .into_iter()
                .map(|r| json!({"channel": r.channel, "access": r.access.name(), "reasons": r.reasons}))
                .collect();
            Ok((StatusCode::OK, json!({"user": who.user, "reach": reach})))
        }
        (m, ["channels", channel, "groups", group, what @ ("members" | "packages"), item])
            if *m == Method::PUT || *m == Method::DELETE =>
        {
            change_group(app, config, &who, [channel, group, what, item], *m == Method::PUT).await
        }
        (_, ["user" | "authentication" | "authentications" | "channels" | "explain"])
        | (_, ["authentications", "name", _]) => Err(err(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")),
        _ => Err(err(StatusCode::NOT_FOUND, "no such endpoint")),
    }
}

pub(crate) async fn reload_tokens(app: &App) {
    if let Err(e) = app.reload_tokens().await {
        tracing::error!(error = %e, "reload after an admin change failed");
    }
}

/// Revokes `who`'s token `name`, unless it reaches channels `who` does not. The API's and the web pages' way.
pub(crate) async fn revoke(app: &App, snap: &Snapshot, who: &TokenRecord, name: &str, now: OffsetDateTime) -> Answer {
    // A token narrowed to some channels cannot revoke a token that reaches further.
    let broader = snap
        .tokens
        .records()
        .iter()
        .any(|r| r.user == who.user && *r.name == *name && r.revoked.is_none() && !within_reach(who, r));
    if broader {
        return Err(err(StatusCode::FORBIDDEN, format!("the token {name:?} reaches channels this token does not")));
    }
    // With the user given, the only refusal is "no such token": 404, and no hint whether another user has one.
    let r = app.store.revoke(name, Some(&who.user), now).await.map_err(|e| match e {
        StoreError::Refused(m) => err(StatusCode::NOT_FOUND, m),
        other => ApiError::from(other),
    })?;
    reload_tokens(app).await;
    Ok((StatusCode::CREATED, json!({"revoked": r.name})))
}

/// Adds (`add`) or removes `item` in the `members` or `packages` (`what`) of a group of a channel `who` owns. The
/// API's and the web pages' way.
pub(crate) async fn change_group(
    app: &App,
    config: &Arc<Config>,
    who: &TokenRecord,
    [channel, group, what, item]: [&str; 4],
    add: bool,
) -> Answer {
    need(who, Scope::ApiModifyGroup)?;
    if !who.reaches_channel(channel) {
        return Err(err(StatusCode::FORBIDDEN, format!("this token does not reach channel {channel:?}")));
    }
    if !owns(config, who, channel) {
        return Err(err(StatusCode::FORBIDDEN, format!("only the owners of {channel:?} change its groups")));
    }
    if what != "members" && what != "packages" {
        return Err(err(StatusCode::NOT_FOUND, format!("a group has members and packages, not {what:?}")));
    }
    if app.store.is_shared() {
        app.store.change_group(channel, group, what, item, add).await?;
        reload_tokens(app).await;
    } else {
        let (cfg, edit) = (Arc::clone(config), [channel, group, what, item].map(str::to_owned));
        tokio::task::spawn_blocking(move || {
            let [channel, group, what, item] = edit;
            groups::change(&cfg, &channel, &group, &what, &item, add)
        })
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("the group edit failed: {e}")))?
        .map_err(|e| err(e.0, e.1))?;
        app.reload_all().await.map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("reload failed: {e}")))?;
    }
    Ok((StatusCode::OK, json!({"channel": channel, "group": group, what: item, "added": add})))
}

/// Whether `who`'s user is an owner of `channel`.
pub(crate) fn owns(config: &Config, who: &TokenRecord, channel: &str) -> bool {
    config.channel(channel).is_some_and(|c| c.owners.iter().any(|o| **o == *who.user))
}

/// Creates a token as `body` asks (the API's JSON, which the web pages build too), within `who`'s reach; the answer
/// holds the secret under `token`, the only time it is shown.
pub(crate) async fn create(app: &App, config: &Config, who: &TokenRecord, body: &Value, now: OffsetDateTime) -> Answer {
    let new = new_token_from_body(who, body, now)?;
    let (token, record) = issue::prepare(config, new, now)?;
    app.store.create(record.clone()).await?;
    reload_tokens(app).await;
    let mut v = token_json(&record, now);
    v["token"] = Value::from(token.reveal());
    Ok((StatusCode::OK, v))
}

impl ApiError {
    /// The status this refusal is answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Why, in words for the person who asked.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// What a `POST /api/authentications` body asks for, checked against the creating token `who`: scopes, channels and
/// expiry within its reach, `max-age` in range. Pure, so it can be fuzzed; the names are checked when stored.
pub fn new_token_from_body(who: &TokenRecord, body: &Value, now: OffsetDateTime) -> Result<NewToken, ApiError> {
    let scopes: Vec<String> = match body.get("scopes") {
        Some(Value::Array(a)) => {
            a.iter().filter_map(|v| v.as_str()).flat_map(|s| s.split_whitespace()).map(str::to_owned).collect()
        }
        Some(Value::String(s)) => s.split([' ', ',']).filter(|x| !x.is_empty()).map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    // anaconda-client sends `"user": null`, or an organization with `--org`: condagate has no organizations, and a
    // token only ever creates tokens for its own user.
    if let Some(u) = body.get("user").and_then(|v| v.as_str()).filter(|u| **u != *who.user) {
        return Err(err(
            StatusCode::FORBIDDEN,
            format!("this token can only create tokens for {:?}, not {u:?}", who.user),
        ));
    }
    let wanted = issue::parse_scopes(&scopes)?;
    if let Some(s) = wanted.iter().find(|w| !who.scopes.iter().any(|mine| mine.covers(**w))) {
        return Err(err(StatusCode::FORBIDDEN, format!("this token cannot grant the {} scope", s.name())));
    }
    let name = body
        .get("note")
        .or_else(|| body.get("name"))
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| err(StatusCode::BAD_REQUEST, "a token name (note) is required"))?;
    let max_age = match body.get("max-age").or_else(|| body.get("max_age")) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(secs) if (1..=MAX_AGE_LIMIT).contains(&secs) => Some(secs),
            _ => return Err(max_age_problem(n)),
        },
        Some(other) => return Err(max_age_problem(other)),
    };
    // Never later than the creating token's own expiry: asked for explicitly, that is refused; by default, the new
    // token's year is cut to it.
    let default = now + issue::DEFAULT_LIFETIME;
    let expires = match (max_age, who.expires) {
        (Some(secs), Some(mine)) if now + time::Duration::seconds(secs as i64) > mine => {
            return Err(err(
                StatusCode::FORBIDDEN,
                format!("this token expires at {}; it cannot create a token that outlives it", format_time(mine)),
            ));
        }
        (Some(secs), _) => now + time::Duration::seconds(secs as i64),
        (None, Some(mine)) => default.min(mine),
        (None, None) => default,
    };
    // The web pages' "never": only for a creating token that never expires itself.
    let never = match body.get("never_expires") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(err(StatusCode::BAD_REQUEST, "never_expires must be true or false")),
    };
    if never && max_age.is_some() {
        return Err(err(StatusCode::BAD_REQUEST, "max-age and never_expires contradict each other"));
    }
    if never && who.expires.is_some() {
        return Err(err(StatusCode::FORBIDDEN, "this token expires; it cannot create a token that never does"));
    }
    let expires = (!never).then_some(expires);
    let asked = match body.get("channels") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|c| c.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err(StatusCode::BAD_REQUEST, "channels must be a list of channel names"))?,
        ),
        Some(_) => return Err(err(StatusCode::BAD_REQUEST, "channels must be a list of channel names")),
    };
    let channels = match (asked, &who.channels) {
        (Some(asked), Some(mine)) => {
            if let Some(c) = asked.iter().find(|c| !mine.contains(c)) {
                return Err(err(
                    StatusCode::FORBIDDEN,
                    format!("this token reaches only {mine:?}; it cannot create a token for channel {c:?}"),
                ));
            }
            Some(asked)
        }
        (Some(asked), None) => Some(asked),
        (None, mine) => mine.clone(),
    };
    // anaconda-client's `--strength`: a weak token is shorter, for URLs typed by hand.
    let weak = match body.get("strength") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "strong" => false,
        Some(Value::String(s)) if s == "weak" => true,
        Some(other) => {
            return Err(err(StatusCode::BAD_REQUEST, format!("strength: {other} is neither \"strong\" nor \"weak\"")))
        }
    };
    Ok(NewToken { name: name.to_owned(), user: who.user.to_string(), scopes, expires, channels, weak })
}

/// The longest `max-age` a token may be created with: ten years, in seconds.
pub const MAX_AGE_LIMIT: u64 = 10 * 366 * 24 * 3600;

fn max_age_problem(v: impl std::fmt::Display) -> ApiError {
    err(
        StatusCode::BAD_REQUEST,
        format!("max-age: {v} is not a whole number of seconds between 1 and {MAX_AGE_LIMIT} (ten years)"),
    )
}

/// Whether `content-type` is one a browser sends cross-site without a preflight.
fn browser_sendable(headers: &http::HeaderMap) -> bool {
    let Some(v) = headers.get(http::header::CONTENT_TYPE) else { return false };
    let media = String::from_utf8_lossy(v.as_bytes());
    let media = media.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    matches!(media.as_str(), "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data")
}

/// Whether everything `other` reaches, `who` reaches too: a token narrowed to some channels only sees and acts on
/// tokens narrowed within them.
pub(crate) fn within_reach(who: &TokenRecord, other: &TokenRecord) -> bool {
    match (&who.channels, &other.channels) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(mine), Some(theirs)) => theirs.iter().all(|c| mine.contains(c)),
    }
}

pub(crate) fn channels_json(config: &Config, who: &TokenRecord) -> Value {
    let user = &*who.user;
    let list: Vec<Value> = config
        .channels
        .iter()
        .filter(|c| c.owners.iter().any(|o| o == user) && who.reaches_channel(&c.name))
        .map(|c| {
            let groups: Vec<Value> = config
                .groups
                .iter()
                .filter(|g| g.channel == c.name)
                .map(|g| json!({"name": g.name, "members": g.members, "packages": g.packages.patterns, "labels": g.labels}))
                .collect();
            json!({"name": c.name, "access": c.access.name(), "owners": c.owners, "groups": groups})
        })
        .collect();
    Value::Array(list)
}
