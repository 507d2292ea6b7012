//! An S3-compatible bucket as upstream. Requests are presigned with [`rusty_s3`] (signing only, no HTTP of its own)
//! and sent through the same pooled client, timeouts and relaying as an HTTP mirror, so that a bucket streams,
//! ranges and revalidates exactly as a mirror does.

use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::config::S3Source;

/// How long a signed URL stays valid: it is used at once, so only clock skew needs room.
const SIGNED_FOR: Duration = Duration::from_secs(300);

/// A channel's root in a bucket: where its objects are and how requests for them are signed.
pub struct Objects {
    bucket: Bucket,
    credentials: Option<Credentials>,
    /// The channel root's key prefix, ending in `/` unless empty.
    prefix: String,
    /// `s3://bucket/prefix`, for logs and errors.
    shown: String,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").field("at", &self.shown).finish_non_exhaustive()
    }
}

/// Why a key is not asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct BadKey;

impl Objects {
    /// The objects of `source`; `Err` with the reason when the endpoint cannot address a bucket.
    pub fn new(source: &S3Source) -> Result<Self, String> {
        let endpoint = source.endpoint.parse().map_err(|e| format!("{}: {e}", source.endpoint))?;
        let style = if source.path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let bucket = Bucket::new(endpoint, style, source.bucket.clone(), source.region.clone())
            .map_err(|e| format!("bucket {}: {e}", source.bucket))?;
        let credentials = source.credentials.as_ref().map(|c| match &c.session_token {
            Some(t) => Credentials::new_with_token(c.key_id.clone(), c.secret.clone(), t.clone()),
            None => Credentials::new(c.key_id.clone(), c.secret.clone()),
        });
        let prefix = if source.prefix.is_empty() { String::new() } else { format!("{}/", source.prefix) };
        let shown = format!("s3://{}/{prefix}", source.bucket);
        Ok(Objects { bucket, credentials, prefix, shown })
    }

    /// The object key of `rel`, a `/`-separated path below the channel root. The router keeps paths to conda's
    /// grammar; this is the second wall: a key never has an empty, `.` or `..` segment (which URL handling would
    /// resolve), so it never leaves the prefix. Any other byte goes into the key as itself, percent-encoded on the
    /// wire (a `%` as `%25`), so the store reads the very name that was authorized.
    pub fn key(&self, rel: &str) -> Result<String, BadKey> {
        if rel.split('/').any(|s| s.is_empty() || s == "." || s == ".." || s.contains('\\')) {
            return Err(BadKey);
        }
        Ok(format!("{}{rel}", self.prefix))
    }

    /// A signed URL to GET (or HEAD, with `head`) the object at `key`.
    pub fn object_url(&self, key: &str, head: bool) -> String {
        let creds = self.credentials.as_ref();
        if head {
            self.bucket.head_object(creds, key).sign(SIGNED_FOR).into()
        } else {
            self.bucket.get_object(creds, key).sign(SIGNED_FOR).into()
        }
    }

    /// A signed URL to HEAD the bucket: the probe.
    pub fn bucket_url(&self) -> String {
        self.bucket.head_bucket(self.credentials.as_ref()).sign(SIGNED_FOR).into()
    }

    /// `s3://bucket/prefix/rel`: how logs and errors name an object.
    pub fn shown(&self, rel: &str) -> String {
        format!("{}{rel}", self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(prefix: &str) -> Objects {
        Objects::new(&S3Source {
            endpoint: "http://127.0.0.1:9".into(),
            bucket: "conda".into(),
            prefix: prefix.into(),
            region: "us-east-1".into(),
            path_style: true,
            credentials: Some(crate::config::S3Credentials {
                key_id: "AKIDEXAMPLE".into(),
                secret: "wJalrXUtnFEMI".into(),
                session_token: None,
            }),
        })
        .unwrap()
    }

    #[test]
    fn keys_stay_below_the_prefix() {
        let o = objects("channels/c");
        assert_eq!(o.key("noarch/a-1-0.conda").unwrap(), "channels/c/noarch/a-1-0.conda");
        for bad in ["../x", "noarch/../../x", "./x", "a//b", "", "noarch/", "a\\..\\b"] {
            assert_eq!(o.key(bad), Err(BadKey), "{bad:?}");
        }
        assert_eq!(objects("").key("noarch/x.conda").unwrap(), "noarch/x.conda");
    }

    #[test]
    fn percent_and_slash_lookalikes_are_sent_as_themselves() {
        let o = objects("c");
        let url = o.object_url(&o.key("label/x%2F..%2F/noarch/a+b.conda").unwrap(), false);
        assert!(url.starts_with("http://127.0.0.1:9/conda/c/label/x%252F..%252F/noarch/a%2Bb.conda?"), "{url}");
        assert!(url.contains("X-Amz-Signature="), "{url}");
        assert!(!url.contains("wJalrXUtnFEMI"), "the secret never goes on the wire");
    }

    #[test]
    fn debug_shows_no_credentials() {
        let shown = format!("{:?}", objects("c"));
        assert!(!shown.contains("AKIDEXAMPLE") && !shown.contains("wJalr"), "{shown}");
    }
}
