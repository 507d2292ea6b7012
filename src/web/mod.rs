//! The token pages under `/admin/` (below `server.base_path`): anaconda.org's Settings → Access in a browser.
//!
//! Server-rendered HTML ([`pages`]), usable without JavaScript. Every action goes through the admin API's own
//! operations ([`crate::admin`]), so the pages grant exactly what the API would: a session acts with the scopes,
//! channels and expiry of the token that opened it, and never beyond.
//!
//! | method and path | what |
//! |---|---|
//! | `GET`/`POST /admin/sign-in` | paste a token with an `api` scope; failures count in the throttle |
//! | `POST /admin/sign-out` | ends the session |
//! | `GET /admin/tokens` | my tokens: name, scopes, channels, created, expires, last used, status |
//! | `GET /admin/tokens/new`, `POST /admin/tokens` | the create form; the new token is then shown once |
//! | `GET /admin/tokens/created` | the one showing of the token just created |
//! | `GET`/`POST /admin/tokens/<id>/revoke` | the confirmation step, then the revocation (`id`: a digest prefix) |
//! | `GET /admin/channels`, `POST /admin/channels/<c>/groups/<g>/<members\|packages>` | channels I own, editable |
//! | `GET /admin/explain` | what the session's token can reach, and why |
//!
//! Defences: a session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` under TLS, a random id kept only as its
//! digest, ending with its token), a form token on every form (the sign-in form's is a double-submit cookie), form
//! bodies only as `application/x-www-form-urlencoded`, a strict `Content-Security-Policy` (no inline script or style,
//! forms only to this site, no framing), `X-Frame-Options: DENY`, `Cache-Control: no-store`, and no secret in any
//! URL, log line or page but the one showing.

pub mod pages;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, COOKIE, HOST, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::admin;
use crate::app::{App, Snapshot};
use crate::auth::check_token;
use crate::auth::session::{self, same_secret, Created, Session};
use crate::clock::format_time;
use crate::error::Error;
use crate::http::body::{full, Body};
use crate::policy::{self, Denied, Policy};
use crate::tokens::{Scope, Token, TokenRecord};
use pages::{Filled, Frame};

/// The session cookie.
const SESSION_COOKIE: &str = "condagate_session";
/// The sign-in form's double-submit cookie.
const SIGN_IN_COOKIE: &str = "condagate_sign_in";
/// Largest form body read.
const MAX_FORM: usize = 16 * 1024;

/// The policy every page is served under.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'none'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A signed-in browser: its session and the token behind it, looked up again for this request.
struct Signed {
    id: String,
    session: Session,
    who: Arc<TokenRecord>,
}

/// What one request of the pages works with.
struct Cx<'a> {
    app: &'a App,
    snap: &'a Snapshot,
    /// `<base_path>/admin`.
    base: String,
    now: OffsetDateTime,
    /// Whether cookies get `Secure`.
    secure: bool,
}

/// A page refused: its status and what to say.
struct Refusal {
    status: StatusCode,
    message: String,
    back: Option<String>,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal { status, message: message.into(), back: None }
}

impl From<admin::ApiError> for Refusal {
    fn from(e: admin::ApiError) -> Self {
        refuse(e.status(), e.message())
    }
}

/// Handles a request below `/admin/`. Always answers with a page (or a redirect); returns the token behind the
/// session, for the access log.
pub async fn handle(
    app: &App,
    snap: &Snapshot,
    req: Request<Incoming>,
    peer: SocketAddr,
    segments: Vec<String>,
) -> (Response<Body>, Option<Arc<TokenRecord>>) {
    let cx = Cx {
        app,
        snap,
        base: format!("{}/admin", snap.config.server.base_path),
        now: app.clock.now_utc(),
        secure: snap.config.server.tls.is_some(),
    };
    let mut who = None;
    let signed_in = signed(&cx, req.headers());
    if let Some(s) = &signed_in {
        who = Some(Arc::clone(&s.who));
    }
    let mut resp = match route(&cx, req, peer, &segments, signed_in).await {
        Ok(r) => r,
        Err(r) => {
            let frame = Frame { base: &cx.base, signed: None };
            html(r.status, pages::problem(&frame, &r.message, r.back.as_deref()))
        }
    };
    let h = resp.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.entry(http::header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    (resp, who)
}

fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut r = Response::new(full(page));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = Response::new(full(String::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::try_from(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut r = Response::new(full(body));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    r
}

/// A `Set-Cookie` value for this site's pages.
fn cookie(cx: &Cx<'_>, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = if cx.secure { "; Secure" } else { "" };
    let v = format!("{name}={value}; Path={}/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}", cx.base);
    HeaderValue::try_from(v).unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
}

/// The value of cookie `name`, if the request has one.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The session the request's cookie names, if it is open and its token still works.
fn signed(cx: &Cx<'_>, headers: &HeaderMap) -> Option<Signed> {
    let id = cookie_value(headers, SESSION_COOKIE)?;
    let session = cx.app.sessions.get(id, cx.now)?;
    let usable = cx.snap.tokens.by_digest(&session.token).filter(|r| Policy::check_token_lazily(r, || cx.now).is_ok());
    match usable {
        Some(who) => Some(Signed { id: id.to_owned(), session, who: Arc::clone(who) }),
        None => {
            // Revoked or expired since: the session ends with it.
            cx.app.sessions.close(id);
            None
        }
    }
}

/// Whether `who` holds any scope of the admin API.
fn has_api_scope(who: &TokenRecord) -> bool {
    [Scope::ApiRead, Scope::ApiWrite, Scope::ApiModifyGroup].into_iter().any(|s| who.can_api(s))
}

/// A form body: `application/x-www-form-urlencoded`, at most [`MAX_FORM`] bytes.
async fn read_form(req: Request<Incoming>) -> Result<Vec<(String, String)>, Refusal> {
    let media = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let media = media.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if media != "application/x-www-form-urlencoded" {
        return Err(refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "these pages take forms only"));
    }
    let body: Bytes = Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .map_err(|_| refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("the form is larger than {MAX_FORM} bytes")))?
        .to_bytes();
    Ok(form_urlencoded::parse(&body).into_owned().collect())
}

fn field<'f>(form: &'f [(String, String)], name: &str) -> Option<&'f str> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn fields(form: &[(String, String)], name: &str) -> Vec<String> {
    form.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
}

/// Refuses a form whose form token is not the session's.
fn check_csrf(signed: &Signed, form: &[(String, String)]) -> Result<(), Refusal> {
    match field(form, "csrf") {
        Some(t) if same_secret(t, &signed.session.csrf) => Ok(()),
        _ => Err(refuse(
            StatusCode::FORBIDDEN,
            "this form's token is missing or out of date: reload the page and try again",
        )),
    }
}

async fn route(
    cx: &Cx<'_>,
    req: Request<Incoming>,
    peer: SocketAddr,
    segs: &[String],
    signed: Option<Signed>,
) -> Result<Response<Body>, Refusal> {
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let base = cx.base.as_str();
    match (get, s.as_slice()) {
        (true, ["static", "style.css"]) => return Ok(asset("text/css; charset=utf-8", pages::STYLE)),
        (true, ["static", "copy.js"]) => return Ok(asset("text/javascript; charset=utf-8", pages::SCRIPT)),
        (true, [] | [""]) => {
            return Ok(redirect(&format!("{base}/{}", if signed.is_some() { "tokens" } else { "sign-in" })))
        }
        (true, ["sign-in"]) if signed.is_some() => return Ok(redirect(&format!("{base}/tokens"))),
        (true, ["sign-in"]) => return Ok(sign_in_form(cx, StatusCode::OK, None)),
        (false, ["sign-in"]) if method == Method::POST => return sign_in(cx, req, peer).await,
        _ => {}
    }
    let Some(signed) = signed else {
        return if get {
            Ok(redirect(&format!("{base}/sign-in")))
        } else {
            Err(Refusal {
                back: Some(format!("{base}/sign-in")),
                ..refuse(StatusCode::FORBIDDEN, "you are not signed in, or your session has ended")
            })
        };
    };
    let who = &*signed.who;
    let frame = Frame { base, signed: Some((&who.user, &signed.session.csrf)) };
    if !get && method != Method::POST {
        return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "these pages take GET and POST only"));
    }
    if !get {
        let form = read_form(req).await?;
        check_csrf(&signed, &form)?;
        return match s.as_slice() {
            ["sign-out"] => {
                cx.app.sessions.close(&signed.id);
                let mut r = redirect(&format!("{base}/sign-in"));
                r.headers_mut().append(SET_COOKIE, cookie(cx, SESSION_COOKIE, "", 0));
                Ok(r)
            }
            ["tokens"] => create(cx, &signed, &frame, &form).await,
            ["tokens", id, "revoke"] => {
                admin::need(who, Scope::ApiWrite)?;
                let r = mine(cx, who, id)?;
                admin::revoke(cx.app, cx.snap, who, &r.name, cx.now).await?;
                Ok(redirect(&format!("{base}/tokens?revoked={id}")))
            }
            ["channels", channel, "groups", group, what @ ("members" | "packages")] => {
                let item = field(&form, "item").unwrap_or_default().trim();
                let add = match field(&form, "action") {
                    Some("add") => true,
                    Some("remove") => false,
                    _ => return Err(refuse(StatusCode::BAD_REQUEST, "the form says neither add nor remove")),
                };
                let changed =
                    admin::change_group(cx.app, &cx.snap.config, who, [channel, group, what, item], add).await;
                match changed {
                    Ok(_) => Ok(redirect(&format!("{base}/channels"))),
                    Err(e) => Ok(html(
                        e.status(),
                        pages::channels(&frame, &cx.snap.config, &owned(cx, who), Some(e.message())),
                    )),
                }
            }
            _ => Err(refuse(StatusCode::NOT_FOUND, "no such page")),
        };
    }
    let page = match s.as_slice() {
        ["tokens"] => {
            admin::need(who, Scope::ApiRead)?;
            let mut list: Vec<&TokenRecord> = cx
                .snap
                .tokens
                .records()
                .iter()
                .map(|r| &**r)
                .filter(|r| r.user == who.user && admin::within_reach(who, r))
                .collect();
            list.sort_by(|a, b| (a.revoked.is_some(), b.created).cmp(&(b.revoked.is_some(), a.created)));
            let query = req.uri().query().unwrap_or_default();
            let revoked = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "revoked").map(|(_, v)| v);
            let revoked = revoked.and_then(|id| list.iter().find(|r| admin::short_id(r) == id));
            let notice = revoked.map(|r| format!("Token {:?} was revoked.", r.name));
            pages::tokens(&frame, &list, cx.now, notice.as_deref())
        }
        ["tokens", "new"] => {
            admin::need(who, Scope::ApiWrite)?;
            pages::new_token(&frame, who, &reachable(cx, who), &Filled::default(), None, cx.now)
        }
        ["tokens", "created"] => match cx.app.sessions.take_created(&signed.id) {
            Some(c) => {
                let channels = c.channels.clone().unwrap_or_else(|| reachable(cx, who));
                pages::created(&frame, &c.name, c.token.reveal(), &site(cx, req.headers()), &channels)
            }
            None => pages::created_gone(&frame),
        },
        ["tokens", id, "revoke"] => {
            admin::need(who, Scope::ApiWrite)?;
            pages::confirm_revoke(&frame, mine(cx, who, id)?)
        }
        ["channels"] => {
            admin::need(who, Scope::ApiRead)?;
            pages::channels(&frame, &cx.snap.config, &owned(cx, who), None)
        }
        ["explain"] => {
            admin::need(who, Scope::ApiRead)?;
            pages::explain(&frame, &policy::explain(&cx.snap.config, &who.user, None, who.channels.as_deref()))
        }
        _ => return Err(refuse(StatusCode::NOT_FOUND, "no such page")),
    };
    Ok(html(StatusCode::OK, page))
}

/// `who`'s token with public id `id` (see [`admin::short_id`]), not revoked and within its reach. Pages name tokens
/// by id, never by name: names are free text, and stay out of URLs.
fn mine<'s>(cx: &'s Cx<'_>, who: &TokenRecord, id: &str) -> Result<&'s TokenRecord, Refusal> {
    cx.snap
        .tokens
        .records()
        .iter()
        .map(|r| &**r)
        .find(|r| r.user == who.user && admin::short_id(r) == id && r.revoked.is_none() && admin::within_reach(who, r))
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, "you have no such token to revoke"))
}

/// The channels `who` owns and reaches.
fn owned<'c>(cx: &'c Cx<'_>, who: &TokenRecord) -> Vec<&'c str> {
    cx.snap
        .config
        .channels
        .iter()
        .filter(|c| who.reaches_channel(&c.name) && admin::owns(&cx.snap.config, who, &c.name))
        .map(|c| c.name.as_str())
        .collect()
}

/// The channels a new token of `who` could be narrowed to: those it reaches.
fn reachable(cx: &Cx<'_>, who: &TokenRecord) -> Vec<String> {
    policy::explain(&cx.snap.config, &who.user, None, who.channels.as_deref())
        .into_iter()
        .map(|r| r.channel)
        .filter(|c| who.reaches_channel(c))
        .collect()
}

/// `scheme://host<base_path>` as the browser reached this server, for the lines to paste. The host is the request's
/// own, kept only when it is shaped like one.
fn site(cx: &Cx<'_>, headers: &HeaderMap) -> String {
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)))
        .unwrap_or("HOST");
    let forwarded_https = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes() == b"https");
    let scheme = if cx.secure || forwarded_https { "https" } else { "http" };
    format!("{scheme}://{host}{}", cx.snap.config.server.base_path)
}

fn sign_in_form(cx: &Cx<'_>, status: StatusCode, error: Option<&str>) -> Response<Body> {
    let form_token = session::secret();
    let frame = Frame { base: &cx.base, signed: None };
    let mut r = html(status, pages::sign_in(&frame, &form_token, error));
    r.headers_mut().append(SET_COOKIE, cookie(cx, SIGN_IN_COOKIE, &form_token, 3600));
    r
}

async fn sign_in(cx: &Cx<'_>, req: Request<Incoming>, peer: SocketAddr) -> Result<Response<Body>, Refusal> {
    let expected = cookie_value(req.headers(), SIGN_IN_COOKIE).map(str::to_owned);
    let form = read_form(req).await?;
    let fresh = matches!((&expected, field(&form, "csrf")), (Some(e), Some(t)) if same_secret(e, t));
    if !fresh {
        return Ok(sign_in_form(cx, StatusCode::FORBIDDEN, Some("the sign-in form was out of date: try again")));
    }
    let pasted = field(&form, "token").unwrap_or_default().trim();
    let (now, ip) = (Instant::now(), peer.ip());
    let checked = match Token::digest_of(pasted) {
        Ok(digest) => {
            let mut seen = None;
            check_token(cx.app.checks(), &cx.snap.tokens, &digest, ip, now, &mut seen).cloned()
        }
        Err(_) => {
            // Counted as any failed check is, so the form cannot be used to guess at leisure.
            if let Some(retry_after) = cx.app.throttle.blocked(ip, now) {
                Err(Error::Throttled { retry_after })
            } else {
                cx.app.throttle.failure(ip, now);
                Err(Error::Denied(Denied::Malformed))
            }
        }
    };
    let who = match checked {
        Ok(who) => who,
        Err(e) => {
            let (status, why) = match e {
                Error::Throttled { retry_after } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("too many failed attempts from your address; try again in {retry_after} s"),
                ),
                Error::Denied(Denied::Expired(at)) => {
                    (StatusCode::UNAUTHORIZED, format!("that token expired at {}", format_time(at)))
                }
                Error::Denied(Denied::Revoked) => (StatusCode::UNAUTHORIZED, "that token has been revoked".into()),
                Error::TokensStale => {
                    (StatusCode::SERVICE_UNAVAILABLE, "the token store cannot be reached; try again later".into())
                }
                _ => (StatusCode::UNAUTHORIZED, "that is not a valid condagate token".into()),
            };
            return Ok(sign_in_form(cx, status, Some(&why)));
        }
    };
    if !has_api_scope(&who) {
        let why = "that token has no api scope: sign in with one that has (create it with condagate token create \
                   --scopes api)";
        return Ok(sign_in_form(cx, StatusCode::FORBIDDEN, Some(why)));
    }
    let ends = who.expires.map_or(cx.now + session::LIFETIME, |e| e.min(cx.now + session::LIFETIME));
    let Some(id) = cx.app.sessions.open(who.digest, ends, cx.now) else {
        return Ok(sign_in_form(cx, StatusCode::SERVICE_UNAVAILABLE, Some("too many open sessions; try again later")));
    };
    let mut r = redirect(&format!("{}/tokens", cx.base));
    let max_age = (ends - cx.now).whole_seconds().max(1);
    r.headers_mut().append(SET_COOKIE, cookie(cx, SESSION_COOKIE, &id, max_age));
    r.headers_mut().append(SET_COOKIE, cookie(cx, SIGN_IN_COOKIE, "", 0));
    Ok(r)
}

/// The create form's fields as the API's JSON body.
fn create_body(filled: &Filled, limit: Option<OffsetDateTime>, now: OffsetDateTime) -> Result<Value, String> {
    let mut body = json!({ "name": filled.name, "scopes": filled.scopes, "strength": filled.strength });
    let days = |d: i64| Value::from(d * 24 * 3600);
    match filled.expires.as_str() {
        "7" => body["max-age"] = days(7),
        "30" => body["max-age"] = days(30),
        "90" => body["max-age"] = days(90),
        "365" | "" => body["max-age"] = days(365),
        "never" => body["never_expires"] = Value::Bool(true),
        "max" => {
            let limit = limit.ok_or("this session's token never expires: choose when the new one does")?;
            body["max-age"] = Value::from((limit - now).whole_seconds().max(1));
        }
        "date" => {
            let format = time::macros::format_description!("[year]-[month]-[day]");
            let date = time::Date::parse(&filled.date, &format)
                .map_err(|_| format!("{:?} is not a date (YYYY-MM-DD)", filled.date))?;
            let secs = (date.midnight().assume_utc() - now).whole_seconds();
            if secs <= 0 {
                return Err(format!("the expiry date {} is not in the future", filled.date));
            }
            body["max-age"] = Value::from(secs);
        }
        other => return Err(format!("{other:?} is not an expiry choice")),
    }
    if !filled.channels.is_empty() {
        body["channels"] = json!(filled.channels);
    }
    Ok(body)
}

async fn create(
    cx: &Cx<'_>,
    signed: &Signed,
    frame: &Frame<'_>,
    form: &[(String, String)],
) -> Result<Response<Body>, Refusal> {
    let who = &*signed.who;
    admin::need(who, Scope::ApiWrite)?;
    let filled = Filled {
        name: field(form, "name").unwrap_or_default().trim().to_owned(),
        scopes: fields(form, "scopes"),
        expires: field(form, "expires").unwrap_or_default().to_owned(),
        date: field(form, "date").unwrap_or_default().to_owned(),
        strength: field(form, "strength").unwrap_or("strong").to_owned(),
        channels: fields(form, "channels"),
    };
    let refused = |status: StatusCode, why: &str| {
        html(status, pages::new_token(frame, who, &reachable(cx, who), &filled, Some(why), cx.now))
    };
    let body = match create_body(&filled, who.expires, cx.now) {
        Ok(b) => b,
        Err(why) => return Ok(refused(StatusCode::BAD_REQUEST, &why)),
    };
    let made = match admin::create(cx.app, &cx.snap.config, who, &body, cx.now).await {
        Ok((_, made)) => made,
        Err(e) => return Ok(refused(e.status(), e.message())),
    };
    let token = made.get("token").and_then(Value::as_str).and_then(|t| Token::parse(t).ok());
    let Some(token) = token else {
        return Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, "the token was created but could not be shown"));
    };
    let channels = made.get("channels").and_then(|c| serde_json::from_value(c.clone()).ok());
    cx.app.sessions.hold_created(&signed.id, Created { name: filled.name.clone(), token, channels });
    Ok(redirect(&format!("{}/tokens/created", cx.base)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; condagate_session=abc"));
        h.append(COOKIE, HeaderValue::from_static("condagate_sign_in=def"));
        assert_eq!(cookie_value(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie_value(&h, SIGN_IN_COOKIE), Some("def"));
        assert_eq!(cookie_value(&h, "a"), Some("1"));
        assert_eq!(cookie_value(&h, "condagate"), None);
    }

    #[test]
    fn the_form_becomes_the_apis_body() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let mut f =
            Filled { name: "n".into(), scopes: vec!["conda".into()], expires: "30".into(), ..Filled::default() };
        assert_eq!(create_body(&f, None, now).unwrap()["max-age"], 30 * 86400);
        f.expires = "never".into();
        assert_eq!(create_body(&f, None, now).unwrap()["never_expires"], true);
        f.expires = "max".into();
        assert!(create_body(&f, None, now).is_err());
        assert_eq!(create_body(&f, Some(now + time::Duration::hours(1)), now).unwrap()["max-age"], 3600);
        f.expires = "date".into();
        f.date = "1970-01-02".into();
        assert!(create_body(&f, None, now).unwrap_err().contains("not in the future"));
        f.date = "tomorrow".into();
        assert!(create_body(&f, None, now).is_err());
        f.expires = "forever".into();
        assert!(create_body(&f, None, now).is_err());
    }
}
