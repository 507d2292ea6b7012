//! Any `POST /api/authentications` body, from a token narrowed to one channel that expires in two hours: never
//! panics, and what it accepts reaches no further than the creating token.
#![no_main]
use condagate::internals::tokens::{Scope, TokenRecord};
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let who = TokenRecord {
        name: "maker".into(),
        user: "alice".into(),
        digest: condagate::internals::tokens::Token::generate().digest(),
        scopes: [Scope::CondaDownload, Scope::ApiWrite].into_iter().collect(),
        created: now,
        expires: Some(now + time::Duration::hours(2)),
        revoked: None,
        channels: Some(vec!["mychan".into()]),
        seen: Default::default(),
    };
    if let Ok(new) = condagate::internals::admin::new_token_from_body(&who, &body, now) {
        assert_eq!(new.user, "alice");
        assert!(new.expires.is_some_and(|e| e <= now + time::Duration::hours(2)), "{:?}", new.expires);
        assert!(new.channels.as_ref().is_some_and(|c| c.iter().all(|c| c == "mychan")), "{:?}", new.channels);
    }
});
