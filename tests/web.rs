//! The token pages in a real browser (headless Chromium through chromedriver): sign in, create a token and see it
//! once, revoke it and see it refused, forms without their form token refused, names shown as text, a narrowed
//! token unable to create wider ones, owners editing their groups. The pages' screenshots land in
//! `target/web-screenshots/`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::time::Duration;

use support::browser::{path_of, Browser};
use support::{get, request, Demo, Proxy};

/// A token to sign in with, expiring in 400 days (so every preset of the form is within its reach).
fn login(demo: &Demo, name: &str, user: &str, scopes: &str) -> String {
    demo.token_with(name, user, scopes, Some(time::OffsetDateTime::now_utc() + time::Duration::days(400)), None)
}

fn admin(proxy: &Proxy) -> String {
    proxy.url("/admin")
}

/// A POST of a form body with the given cookies, outside the browser (as another site, or a script, would send it).
async fn post_form(url: &str, cookie: &str, body: &str, content_type: &str) -> support::Got {
    use http_body_util::{BodyExt, Full};
    let req = http::Request::post(url)
        .header("cookie", cookie)
        .header("content-type", content_type)
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    support::Got { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_created_shown_once_used_and_revoked() {
    let Some(browser) = Browser::start().await else { return };
    let demo = Demo::new();
    let login = login(&demo, "web", "bob", "api:read api:write conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let admin = admin(&proxy);

    browser.go(&format!("{admin}/")).await;
    assert_eq!(browser.path().await, path_of(&format!("{admin}/sign-in")), "not signed in: to the sign-in page");
    browser.screenshot("sign-in").await;
    browser.fill("#token", "cg-notatokenatall").await;
    browser.follow("form button[type=submit]").await;
    assert!(browser.text().await.contains("not a valid condagate token"), "{}", browser.text().await);
    let no_api = demo.token("downloads", "bob", "conda:download");
    browser.fill("#token", &no_api).await;
    browser.follow("form button[type=submit]").await;
    assert!(browser.text().await.contains("no api scope"), "{}", browser.text().await);

    browser.sign_in(&admin, &login).await;
    assert!(browser.has("tr[data-name=web]").await, "the list shows the signed-in token");
    let secret = browser.create_token(&admin, "laptop", &["conda:download"], "30", &[]).await;
    assert!(secret.starts_with("cg-") && secret.len() >= 30, "{secret:?}");
    let text = browser.text().await;
    assert!(text.contains(&format!("conda config --add channels {}/t/{secret}/mychan", proxy.url(""))), "{text}");
    assert!(
        text.contains(&format!("pixi auth login 127.0.0.1:{} --conda-token {secret}", proxy.addr.port())),
        "{text}"
    );
    browser.screenshot("token-created").await;
    let repodata = proxy.url(&format!("/t/{secret}/mychan/noarch/repodata.json"));
    assert_eq!(get(&repodata, &[]).await.status, 200, "the new token downloads");

    browser.client.refresh().await.unwrap();
    let again = browser.source().await;
    assert!(!again.contains(&secret), "a reload shows the token again");
    assert!(again.contains("shown once only"));

    browser.go(&format!("{admin}/tokens")).await;
    browser.screenshot("tokens").await;
    assert!(!browser.source().await.contains(&secret), "the list never holds a secret");
    let row = browser.text_of("tr[data-name=laptop]").await;
    assert!(row.contains("conda:download") && row.contains("active"), "{row}");
    browser.follow("tr[data-name=laptop] a.revoke").await;
    browser.screenshot("revoke").await;
    assert!(browser.text().await.contains("this cannot be undone"));
    browser.follow("#revoke button[type=submit]").await;
    let revoked_at = std::time::Instant::now();
    assert!(browser.text().await.contains("was revoked"), "{}", browser.text().await);
    assert!(browser.text_of("tr[data-name=laptop] td.status").await.contains("revoked"));
    support::eventually_async(Duration::from_secs(1), "the revoked token to be refused", || async {
        get(&repodata, &[]).await.status == 401
    })
    .await;
    eprintln!("refused {:?} after the revocation", revoked_at.elapsed());

    browser.go(&format!("{admin}/explain")).await;
    assert!(browser.text_of("#reach").await.contains("mychan"));
    browser.screenshot("explain").await;

    // Signing out ends the session: the pages send the browser back to the sign-in form.
    browser.follow("form.signout button").await;
    browser.go(&format!("{admin}/tokens")).await;
    assert_eq!(browser.path().await, path_of(&format!("{admin}/sign-in")));
    assert_eq!(proxy.app.sessions.len(), 0);
    browser.close().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_need_their_form_token_and_pages_their_headers() {
    let Some(browser) = Browser::start().await else { return };
    let demo = Demo::new();
    let login = login(&demo, "web", "bob", "api:read api:write conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let admin = admin(&proxy);
    browser.sign_in(&admin, &login).await;
    let cookie = browser.cookie_header().await;
    assert!(cookie.contains("condagate_session="), "{cookie}");
    assert!(!cookie.contains(&login), "the cookie never holds the token");
    let before = proxy.app.snapshot().tokens.records().len();

    let form = "name=forged&scopes=conda%3Adownload&expires=30&strength=strong";
    let forged = post_form(&format!("{admin}/tokens"), &cookie, form, "application/x-www-form-urlencoded").await;
    assert_eq!(forged.status, 403, "no form token: {}", forged.text());
    assert!(forged.text().contains("form&#39;s token is missing") || forged.text().contains("form's token is missing"));
    let wrong = format!("csrf={}&{form}", "0".repeat(64));
    let forged = post_form(&format!("{admin}/tokens"), &cookie, &wrong, "application/x-www-form-urlencoded").await;
    assert_eq!(forged.status, 403, "a wrong form token");
    let as_text = post_form(&format!("{admin}/tokens"), &cookie, form, "text/plain").await;
    assert_eq!(as_text.status, 415, "only form bodies");
    let no_session = post_form(&format!("{admin}/tokens"), "", form, "application/x-www-form-urlencoded").await;
    assert_eq!(no_session.status, 403);
    assert_eq!(proxy.app.snapshot().tokens.records().len(), before, "nothing was created");
    // The sign-in form's own token is a double-submit cookie: a sign-in posted from elsewhere is refused.
    let foreign = post_form(
        &format!("{admin}/sign-in"),
        "",
        &format!("csrf=x&token={login}"),
        "application/x-www-form-urlencoded",
    )
    .await;
    assert_eq!(foreign.status, 403);
    assert!(!foreign.text().contains(&login), "a refusal never shows the token");

    let page = request("GET", &format!("{admin}/sign-in"), &[]).await;
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let set = page.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert!(set.iter().all(|c| c.contains("HttpOnly") && c.contains("SameSite=Strict")), "{set:?}");
    // The page's own script and style work under that policy: the copy button is wired (no console errors).
    let logs = browser.run("return document.querySelectorAll('script[src]').length").await;
    assert_eq!(logs, 1);
    browser.close().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_shown_as_text() {
    let Some(browser) = Browser::start().await else { return };
    let demo = Demo::new();
    let login = login(&demo, "web", "bob", "api:read api:write conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let admin = admin(&proxy);
    browser.sign_in(&admin, &login).await;
    let name = "<script>window.pwned=1</script><b>bold</b>";
    browser.create_token(&admin, name, &["conda:download"], "7", &[]).await;
    let text = browser.text().await;
    assert!(text.contains(name), "the created page shows the name as text: {text}");
    browser.go(&format!("{admin}/tokens")).await;
    let shown = browser
        .run(
            "return { pwned: window.pwned === undefined ? null : window.pwned, \
                      bold: document.querySelectorAll('td.name b').length, \
                      names: Array.from(document.querySelectorAll('td.name')).map(e => e.textContent) }",
        )
        .await;
    assert_eq!(shown["pwned"], serde_json::Value::Null, "a name ran as script");
    assert_eq!(shown["bold"], 0, "a name became markup");
    assert!(shown["names"].as_array().unwrap().iter().any(|n| n == name), "{shown}");
    // Its revoke link works although the name holds `/`, `<` and `=` (pages name tokens by a public id).
    browser.follow(&format!("tr[data-name=\"{}\"] a.revoke", name.replace('"', "\\\""))).await;
    let text = browser.text().await;
    assert!(text.contains(name), "the confirmation names it: {text}");
    browser.close().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_token_cannot_create_wider_tokens() {
    let Some(browser) = Browser::start().await else { return };
    let demo = Demo::new();
    let expires = time::OffsetDateTime::now_utc() + time::Duration::days(20);
    let login = demo.token_with(
        "narrow",
        "bob",
        "api:write api:read conda:download",
        Some(expires),
        Some(vec!["mychan".into()]),
    );
    let proxy = Proxy::start(demo.config()).await;
    let admin = admin(&proxy);
    browser.sign_in(&admin, &login).await;
    browser.go(&format!("{admin}/tokens/new")).await;
    browser.screenshot("create").await;
    assert!(browser.has("input[name=scopes][value=all][disabled]").await, "scopes beyond the token cannot be ticked");
    assert!(!browser.has("input[name=channels][value=pubchan]").await, "only the token's channels are offered");
    assert!(!browser.has("input[name=expires][value=never]").await, "an expiring token offers no 'never'");
    assert!(!browser.has("input[name=expires][value=\"90\"]").await, "nor a preset past its own expiry");
    assert!(browser.has("input[name=expires][value=max][checked]").await, "but its own expiry, by default");

    // What the form does not offer, a crafted form asks for: the same rules as the API refuse it.
    let cases = [
        ("input.name='channels'; input.value='pubchan';", "cannot create a token for channel"),
        ("input.name='scopes'; input.value='all';", "cannot grant the all scope"),
        ("input.name='expires'; input.value='never';", "cannot create a token that never"),
    ];
    for (i, (craft, refusal)) in cases.iter().enumerate() {
        browser.go(&format!("{admin}/tokens/new")).await;
        browser.fill("#name", &format!("wider-{i}")).await;
        browser.click("input[name=scopes][value=\"conda:download\"]").await;
        let script = format!(
            "const form = document.getElementById('create'); \
             form.querySelectorAll('input[name=expires]').forEach(e => {{ if ('{i}' === '2') e.remove(); }}); \
             const input = document.createElement('input'); input.type = 'hidden'; {craft} \
             form.appendChild(input); form.submit(); return true;"
        );
        browser.run_to_next_page(&script).await;
        let text = browser.text().await;
        assert!(text.contains(refusal), "case {i}: {text}");
    }
    let list = proxy.app.snapshot().tokens.records().iter().filter(|r| r.name.starts_with("wider")).count();
    assert_eq!(list, 0, "no wider token was made");
    // Without a channel ticked, the new token inherits the session's.
    browser.create_token(&admin, "inherits", &["conda:download"], "max", &[]).await;
    let made = proxy.app.snapshot().tokens.records().iter().find(|r| &*r.name == "inherits").cloned().unwrap();
    assert_eq!(made.channels, Some(vec!["mychan".to_owned()]));
    assert!(made.expires.unwrap() <= expires);
    browser.close().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_edit_their_groups_and_sessions_end_with_their_token() {
    let Some(browser) = Browser::start().await else { return };
    let demo = Demo::new();
    let login = login(&demo, "owner", "alice", "api");
    let proxy = Proxy::start(demo.config()).await;
    let admin = admin(&proxy);
    browser.sign_in(&admin, &login).await;
    browser.go(&format!("{admin}/channels")).await;
    let group = "section[data-channel=mychan] article[data-group=eng]";
    assert!(browser.text_of(group).await.contains("bob"));
    browser.fill(&format!("{group} form.add input[aria-label='add to members']"), "carol").await;
    browser.follow(&format!("{group} form.add:has(input[aria-label='add to members']) button")).await;
    assert!(browser.text_of(group).await.contains("carol"), "{}", browser.text().await);
    let config = std::fs::read_to_string(demo.config_path()).unwrap();
    assert!(config.contains("\"carol\""), "the configuration file holds the new member:\n{config}");
    browser.screenshot("channels").await;
    let carol = "//section[@data-channel='mychan']//li[span[text()='carol']]//button";
    browser.follow_xpath(carol).await;
    assert!(!browser.text_of(group).await.contains("carol"));

    // The session's token revoked elsewhere (the CLI, the API): the next page asks to sign in again.
    let revoked = support::api_call("DELETE", &proxy.url("/api/authentications/name/owner"), &login, None).await;
    assert_eq!(revoked.status, 201);
    browser.go(&format!("{admin}/channels")).await;
    assert_eq!(browser.path().await, path_of(&format!("{admin}/sign-in")));

    // Someone who owns nothing sees nothing to edit, and cannot post an edit.
    let bob = demo.token("bob-web", "bob", "api");
    browser.sign_in(&admin, &bob).await;
    browser.go(&format!("{admin}/channels")).await;
    assert!(browser.text().await.contains("You own no channel"));
    browser.close().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_live_under_the_base_path() {
    let Some(browser) = Browser::start().await else { return };
    let demo = Demo::with("[upstream]\ndir = \"channels\"", "base_path = \"/conda\"");
    let login = login(&demo, "web", "bob", "api conda:download");
    let proxy = Proxy::start(demo.config()).await;
    let admin = proxy.url("/conda/admin");
    browser.go(&format!("{admin}/")).await;
    assert_eq!(browser.path().await, "/conda/admin/sign-in", "not signed in: the sign-in page under the base path");
    browser.sign_in(&admin, &login).await;
    let secret = browser.create_token(&admin, "under-base", &["conda:download"], "30", &[]).await;
    let text = browser.text().await;
    let channel = format!("{}/t/{secret}/mychan", proxy.url("/conda"));
    assert!(text.contains(&format!("conda config --add channels {channel}")), "{text}");
    let repodata = get(&format!("{channel}/noarch/repodata.json"), &[]).await;
    assert_eq!(repodata.status, 200, "the line shown works");
    // Outside the base path there are no pages.
    assert_eq!(get(&proxy.url("/admin/sign-in"), &[]).await.status, 404);
    browser.close().await;
    proxy.stop().await;
}
