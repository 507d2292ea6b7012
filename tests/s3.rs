//! An S3-compatible bucket as upstream, against a real SeaweedFS that each test starts (`support::seaweed`): signed
//! requests, streamed and ranged GETs, revalidation, refusals that name no secret, and object keys that never leave
//! the channel's prefix however the path is encoded.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::time::Duration;

use support::seaweed::{S3Server, KEY, SECRET};
use support::{assert_no_secret_in, assert_problem, get, raw_get, request, Demo, Proxy};

/// The demo channels in bucket `conda` under `channels/`, and a config reading them with `credentials` (key and
/// secret files), or anonymously.
async fn s3_demo(server: &S3Server, credentials: Option<(&str, &str)>) -> Demo {
    let demo = Demo::new();
    server.create_bucket("conda").await;
    server.put_tree("conda", "channels", &demo.path().join("channels")).await;
    let mut s3 = format!(r#"bucket = "conda", prefix = "channels", endpoint = "{}""#, server.endpoint);
    if let Some((key, secret)) = credentials {
        std::fs::write(demo.path().join("s3-key"), key).unwrap();
        std::fs::write(demo.path().join("s3-secret"), secret).unwrap();
        s3.push_str(r#", access_key_id_file = "s3-key", secret_access_key_file = "s3-secret""#);
    }
    let upstream = format!("[upstream]\ns3 = {{ {s3} }}\ntimeout = \"5s\"");
    std::fs::write(demo.config_path(), support::demo_config_text(&upstream, "")).unwrap();
    demo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_streams_ranges_and_revalidates_like_a_folder() {
    let Some(server) = S3Server::start().await else { return };
    let demo = s3_demo(&server, Some((KEY, SECRET))).await;
    let config = demo.config();
    assert!(!format!("{config:?}").contains(SECRET), "the configuration's Debug shows no secret");
    let bob = demo.token("bob", "bob", "conda:download");
    let proxy = Proxy::start(config).await;
    let local = demo.path().join("channels/mychan/noarch");
    let base = proxy.url(&format!("/t/{bob}/mychan/noarch"));

    let rd = get(&format!("{base}/repodata.json"), &[]).await;
    assert_eq!(rd.status, 200, "{}", rd.text());
    assert!(rd.text().contains("alpha-1.0-0.tar.bz2") && !rd.text().contains("secretpkg"), "bob's view");

    let want = std::fs::read(local.join("alpha-1.0-0.tar.bz2")).unwrap();
    let pkg = get(&format!("{base}/alpha-1.0-0.tar.bz2"), &[]).await;
    assert_eq!(pkg.status, 200);
    assert!(pkg.body == want, "the object's bytes");
    assert_eq!(pkg.header("content-type"), Some("application/x-bzip2"));

    let part = get(&format!("{base}/alpha-1.0-0.tar.bz2"), &[("range", "bytes=2-9")]).await;
    assert_eq!(part.status, 206);
    assert!(part.body == want[2..10]);
    assert_eq!(part.header("content-range"), Some(format!("bytes 2-9/{}", want.len()).as_str()));

    let etag = pkg.header("etag").expect("the bucket's ETag is relayed").to_owned();
    assert_eq!(get(&format!("{base}/alpha-1.0-0.tar.bz2"), &[("if-none-match", &etag)]).await.status, 304);
    let head = request("HEAD", &format!("{base}/alpha-1.0-0.tar.bz2"), &[]).await;
    assert_eq!((head.status.as_u16(), head.header("content-length")), (200, Some(want.len().to_string().as_str())));

    assert_problem(&get(&format!("{base}/secretpkg-1.0-0.conda"), &[]).await, 404, &[&bob], "hidden");
    assert_problem(&get(&format!("{base}/alpha-0.0-0.tar.bz2"), &[]).await, 404, &[&bob], "missing object");

    // A change in the bucket is seen at the next revalidation.
    let mut changed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(local.join("repodata.json")).unwrap()).unwrap();
    changed["info"]["note"] = "changed in the bucket".into();
    server.put("conda", "channels/mychan/noarch/repodata.json", serde_json::to_vec(&changed).unwrap()).await;
    support::eventually_async(Duration::from_secs(10), "the changed repodata", || async {
        get(&format!("{base}/repodata.json"), &[]).await.text().contains("changed in the bucket")
    })
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_or_wrongly_signed_requests_are_a_502_that_names_no_secret() {
    let Some(server) = S3Server::start().await else { return };
    for (what, creds) in [("anonymous", None), ("wrong secret", Some((KEY, "not-the-secret-d41d8cd9")))] {
        let demo = s3_demo(&server, creds).await;
        let proxy = Proxy::start(demo.config()).await;
        let g = get(&proxy.url("/pubchan/noarch/repodata.json"), &[]).await;
        assert_problem(&g, 502, &[SECRET, "not-the-secret-d41d8cd9", KEY], what);
        let health = get(&proxy.url("/healthz"), &[]).await;
        assert_no_secret_in(&health, &[SECRET, "not-the-secret-d41d8cd9"], what);
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_keys_never_leave_the_channel_prefix() {
    let Some(server) = S3Server::start().await else { return };
    let demo = s3_demo(&server, Some((KEY, SECRET))).await;
    let secret = b"BUCKET-SECRET-OUTSIDE-THE-PREFIX".to_vec();
    for key in ["alpha-6.6-0.conda", "channels/alpha-6.6-0.conda", "private/noarch/alpha-6.6-0.conda"] {
        server.put("conda", key, secret.clone()).await;
    }
    // A control inside the prefix, so the probes below could reach an object if the keys were built wrongly.
    server.put("conda", "channels/pubchan/noarch/alpha-6.6-0.conda", b"inside".to_vec()).await;
    let proxy = Proxy::start(demo.config()).await;
    let inside = get(&proxy.url("/pubchan/noarch/alpha-6.6-0.conda"), &[]).await;
    assert_eq!((inside.status.as_u16(), inside.text().as_str()), (200, "inside"), "the control object is reachable");
    let probes: [&[u8]; 12] = [
        b"/pubchan/noarch/..%2F..%2Falpha-6.6-0.conda",
        b"/pubchan/noarch/..%2F..%2F..%2Falpha-6.6-0.conda",
        b"/pubchan/noarch/%2e%2e/%2e%2e/alpha-6.6-0.conda",
        b"/pubchan/noarch/%252e%252e%252f%252e%252e%252falpha-6.6-0.conda",
        b"/pubchan/..%2F..%2Fprivate/noarch/alpha-6.6-0.conda",
        b"/pubchan/label/..%2F..%2Fprivate/noarch/alpha-6.6-0.conda",
        b"/pubchan/label/%2e%2e/noarch/alpha-6.6-0.conda",
        b"/pubchan/noarch/..\\..\\alpha-6.6-0.conda",
        b"/pubchan/noarch/%5C..%5C..%5Calpha-6.6-0.conda",
        b"/pubchan/noarch//../../alpha-6.6-0.conda",
        b"/pubchan/../alpha-6.6-0.conda",
        b"/pubchan/noarch/alpha-6.6-0.conda%00../../x",
    ];
    for probe in probes {
        let (status, bytes) = raw_get(proxy.addr, probe, "").await;
        let shown = String::from_utf8_lossy(probe);
        assert_ne!(status, Some(200), "{shown} must not be served");
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
            "{shown} reached an object outside the channel's prefix"
        );
    }
    proxy.stop().await;
}
