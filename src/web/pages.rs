//! The HTML of the token pages. Every value is escaped by `maud` (names, channels and messages are user input); the
//! only script is the copy button's, served from `/admin/static/`.

use maud::{html, Markup, DOCTYPE};
use time::OffsetDateTime;

use crate::clock::format_time;
use crate::config::Config;
use crate::policy::Reach;
use crate::tokens::{Scope, TokenRecord};

/// What every page of a signed-in browser knows.
pub struct Frame<'a> {
    /// `<base_path>/admin`.
    pub base: &'a str,
    /// The signed-in user and the session's form token, when signed in.
    pub signed: Option<(&'a str, &'a str)>,
}

impl Frame<'_> {
    fn csrf(&self) -> Markup {
        html! { @if let Some((_, csrf)) = self.signed { input type="hidden" name="csrf" value=(csrf); } }
    }
}

/// The page around a body.
pub fn layout(f: &Frame<'_>, title: &str, body: Markup) -> String {
    let base = f.base;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · condagate" }
                link rel="stylesheet" href={ (base) "/static/style.css" };
                script src={ (base) "/static/copy.js" } defer {}
            }
            body {
                header {
                    a.brand href={ (base) "/tokens" } { "condagate" }
                    @if let Some((user, csrf)) = f.signed {
                        nav {
                            a href={ (base) "/tokens" } { "My tokens" }
                            a href={ (base) "/tokens/new" } { "Create a token" }
                            a href={ (base) "/channels" } { "Channels I own" }
                            a href={ (base) "/explain" } { "What I can reach" }
                        }
                        form.signout method="post" action={ (base) "/sign-out" } {
                            input type="hidden" name="csrf" value=(csrf);
                            span { "Signed in as " strong #user { (user) } }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
    .into_string()
}

/// A refusal shown as a page: what went wrong, and a way back.
pub fn problem(f: &Frame<'_>, message: &str, back: Option<&str>) -> String {
    layout(
        f,
        "Not done",
        html! {
            p.error role="alert" { (message) }
            @if let Some(back) = back { p { a href=(back) { "Back" } } }
        },
    )
}

/// The sign-in form; `form_token` is also in the browser's sign-in cookie.
pub fn sign_in(f: &Frame<'_>, form_token: &str, error: Option<&str>) -> String {
    layout(
        f,
        "Sign in",
        html! {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            p { "Paste a condagate token that holds an " code { "api" } " scope (" code { "api" } ", " code { "api:read" }
                ", " code { "api:write" } ", " code { "api:modify-group" } " or " code { "all" } "). It is checked, not kept: \
                the session remembers only its digest, and ends when the token does." }
            form method="post" action={ (f.base) "/sign-in" } {
                input type="hidden" name="csrf" value=(form_token);
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="off" required autofocus;
                button type="submit" { "Sign in" }
            }
        },
    )
}

fn when(t: Option<OffsetDateTime>, none: &str) -> String {
    t.map_or_else(|| none.to_owned(), format_time)
}

fn channels_text(c: &Option<Vec<String>>) -> String {
    c.as_ref().map_or_else(|| "all".to_owned(), |c| c.join(", "))
}

/// The user's tokens.
pub fn tokens(f: &Frame<'_>, list: &[&TokenRecord], now: OffsetDateTime, notice: Option<&str>) -> String {
    let base = f.base;
    layout(
        f,
        "My tokens",
        html! {
            @if let Some(n) = notice { p.notice role="status" { (n) } }
            p { a.button href={ (base) "/tokens/new" } { "Create a token" } }
            @if list.is_empty() {
                p { "You have no tokens yet." }
            } @else {
                table #tokens {
                    thead { tr { th { "Name" } th { "Scopes" } th { "Channels" } th { "Created" } th { "Expires" }
                        th { "Last used" } th { "Status" } th {} } }
                    tbody {
                        @for r in list {
                            @let status = r.status(now).to_string();
                            tr data-name=(r.name) {
                                td.name { (r.name) }
                                td { @for s in r.scopes.iter() { code { (s.name()) } " " } }
                                td { (channels_text(&r.channels)) }
                                td { (format_time(r.created)) }
                                td { (when(r.expires, "never")) }
                                td { (when(r.seen.last(), "not seen by this server")) }
                                td.status { (status) }
                                td {
                                    @if r.revoked.is_none() {
                                        a.revoke href={ (base) "/tokens/" (crate::admin::short_id(r)) "/revoke" } { "Revoke…" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// What the create form was filled with (to show it again after a refusal).
#[derive(Debug, Default)]
pub struct Filled {
    /// Token name.
    pub name: String,
    /// Scope names ticked.
    pub scopes: Vec<String>,
    /// Expiry preset: `7`, `30`, `90`, `365`, `max` (when the session's token expires), `date` or `never`.
    pub expires: String,
    /// The date, when the preset is `date`.
    pub date: String,
    /// `strong` or `weak`.
    pub strength: String,
    /// Channels ticked.
    pub channels: Vec<String>,
}

/// The create form: only what `who` may grant can be ticked.
pub fn new_token(
    f: &Frame<'_>,
    who: &TokenRecord,
    channels: &[String],
    filled: &Filled,
    error: Option<&str>,
    today: OffsetDateTime,
) -> String {
    // Presets past the session's token's own expiry are not offered (the API would refuse them); "when this token
    // expires" is, instead.
    let within = |days: i64| who.expires.is_none_or(|e| today + time::Duration::days(days) <= e);
    let preset = match filled.expires.as_str() {
        "" if within(365) => "365",
        "" => "max",
        chosen => chosen,
    };
    let strong = filled.strength != "weak";
    let may_never = who.expires.is_none();
    let min_date = (today + time::Duration::days(1)).date().to_string();
    layout(
        f,
        "Create a token",
        html! {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form #create method="post" action={ (f.base) "/tokens" } {
                (f.csrf())
                label for="name" { "Name" }
                input #name type="text" name="name" value=(filled.name) required maxlength="200";
                fieldset #scopes {
                    legend { "Scopes" }
                    @for (scope, name, what) in Scope::ALL.iter().filter(|(s, _, _)| !matches!(s, Scope::Pypi | Scope::PypiDownload)) {
                        @let grantable = who.scopes.iter().any(|mine| mine.covers(*scope));
                        label.check {
                            input type="checkbox" name="scopes" value=(name) checked[filled.scopes.iter().any(|s| s == name)] disabled[!grantable];
                            code { (name) } " " span.what { (what) }
                            @if !grantable { " " em { "(beyond this session's token)" } }
                        }
                    }
                }
                fieldset #expiry {
                    legend { "Expires" }
                    @for (days, value, label) in [(7, "7", "in 7 days"), (30, "30", "in 30 days"), (90, "90", "in 90 days"), (365, "365", "in one year")] {
                        @if within(days) {
                            label.check { input type="radio" name="expires" value=(value) checked[preset == value]; (label) }
                        }
                    }
                    @if let Some(e) = who.expires {
                        label.check { input type="radio" name="expires" value="max" checked[preset == "max"];
                            "when this session's token does (" (format_time(e)) ")" }
                    }
                    label.check {
                        input type="radio" name="expires" value="date" checked[preset == "date"];
                        "on "
                        input type="date" name="date" value=(filled.date) min=(min_date);
                    }
                    @if may_never {
                        label.check { input type="radio" name="expires" value="never" checked[preset == "never"]; "never" }
                    }
                }
                fieldset #strength {
                    legend { "Strength" }
                    label.check { input type="radio" name="strength" value="strong" checked[strong];
                        "strong: 160 random bits (recommended)" }
                    label.check { input type="radio" name="strength" value="weak" checked[!strong];
                        strong { "weak" } ": 80 random bits, shorter to type; not for tokens shared widely or kept for long" }
                }
                fieldset #channels {
                    legend { "Channels (none ticked: every channel " @if who.channels.is_some() { "this session's token reaches" } @else { "you can reach" } ")" }
                    @for c in channels {
                        label.check { input type="checkbox" name="channels" value=(c) checked[filled.channels.contains(c)]; (c) }
                    }
                }
                button type="submit" { "Create" }
            }
        },
    )
}

/// The one showing of a new token, with the lines to paste.
pub fn created(f: &Frame<'_>, name: &str, secret: &str, url: &str, channels: &[String]) -> String {
    let host = url.split_once("://").map_or(url, |(_, rest)| rest).split('/').next().unwrap_or_default();
    let lines: Vec<String> = channels
        .iter()
        .flat_map(|c| {
            [format!("conda config --add channels {url}/t/{secret}/{c}"), format!("pixi project channel add {url}/{c}")]
        })
        .collect();
    layout(
        f,
        "Your new token",
        html! {
            p.notice role="status" { "Token " strong { (name) } " was created. Copy it now: it is shown this once, \
                and condagate keeps only its digest." }
            div.secret {
                code #secret { (secret) }
                button.copy type="button" data-copy="secret" { "Copy" }
            }
            h2 { "Use it" }
            p { "pixi and rattler keep the token in their credential store, then use the channel URL without it:" }
            div.secret {
                pre #pixi-login { "pixi auth login " (host) " --conda-token " (secret) }
                button.copy type="button" data-copy="pixi-login" { "Copy" }
            }
            @for (i, line) in lines.iter().enumerate() {
                div.secret {
                    pre id={ "line-" (i) } { (line) }
                    button.copy type="button" data-copy={ "line-" (i) } { "Copy" }
                }
            }
            p { a href={ (f.base) "/tokens" } { "Done" } }
        },
    )
}

/// The page after a created token was shown: it is not shown again.
pub fn created_gone(f: &Frame<'_>) -> String {
    layout(
        f,
        "Your new token",
        html! {
            p.notice { "A new token is shown once only, and this one has been. If it was not copied, revoke it and \
                create another." }
            p { a href={ (f.base) "/tokens" } { "My tokens" } }
        },
    )
}

/// The confirmation step before a revocation.
pub fn confirm_revoke(f: &Frame<'_>, r: &TokenRecord) -> String {
    layout(
        f,
        "Revoke a token",
        html! {
            p { "Revoke " strong.name { (r.name) } " (" (channels_text(&r.channels)) ")? Every client using it is refused \
                from then on; this cannot be undone." }
            form #revoke method="post" action={ (f.base) "/tokens/" (crate::admin::short_id(r)) "/revoke" } {
                (f.csrf())
                button.danger type="submit" { "Revoke Token" }
                " "
                a href={ (f.base) "/tokens" } { "Cancel" }
            }
        },
    )
}

/// The channels the user owns, with their groups, editable.
pub fn channels(f: &Frame<'_>, config: &Config, owned: &[&str], error: Option<&str>) -> String {
    let base = f.base;
    layout(
        f,
        "Channels I own",
        html! {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            @if owned.is_empty() { p { "You own no channel this session's token reaches." } }
            @for c in owned {
                @let channel = config.channel(c);
                section.channel data-channel=(c) {
                    h2 { (c) " " @if let Some(ch) = channel { small { (ch.access.name()) } } }
                    @for g in config.groups.iter().filter(|g| g.channel == *c) {
                        article.group data-group=(g.name) {
                            h3 { "Group " (g.name) }
                            p { "Labels: " (g.labels.as_ref().map_or_else(|| "all".to_owned(), |l| l.join(", "))) }
                            @for (what, items) in [("members", &g.members), ("packages", &g.packages.patterns)] {
                                @let action = format!("{base}/channels/{}/groups/{}/{what}", segment(c), segment(&g.name));
                                h4 { (what) }
                                ul {
                                    @for item in items.iter() {
                                        li {
                                            span.item { (item) }
                                            form.inline method="post" action=(action) {
                                                (f.csrf())
                                                input type="hidden" name="item" value=(item);
                                                input type="hidden" name="action" value="remove";
                                                button type="submit" { "Remove" }
                                            }
                                        }
                                    }
                                }
                                form.inline.add method="post" action=(action) {
                                    (f.csrf())
                                    input type="text" name="item" required aria-label={ "add to " (what) }
                                        placeholder=(if what == "members" { "user name" } else { "package or glob" });
                                    input type="hidden" name="action" value="add";
                                    button type="submit" { "Add" }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// What the session's token can reach, and why.
pub fn explain(f: &Frame<'_>, reach: &[Reach]) -> String {
    layout(
        f,
        "What I can reach",
        html! {
            @if reach.is_empty() { p { "Nothing." } }
            table #reach {
                thead { tr { th { "Channel" } th { "Access" } th { "Why" } } }
                tbody {
                    @for r in reach {
                        tr { td { (r.channel) } td { (r.access.name()) }
                             td { ul { @for why in &r.reasons { li { (why) } } } } }
                    }
                }
            }
        },
    )
}

/// A path segment, percent-encoded (names may hold `/`, `?`, `#` or spaces).
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The inline style sheet's replacement: served as a file so the policy can forbid inline styles.
pub const STYLE: &str = include_str!("assets/style.css");
/// The copy button: the only script.
pub const SCRIPT: &str = include_str!("assets/copy.js");
