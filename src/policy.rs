//! Stage 2: decide whether a (checked) token may read a channel and label, and which packages it sees there.
//!
//! Everything that can be worked out ahead of a request is, when the configuration is loaded: for every channel and
//! every group member, the set of visible packages per label, already compiled and fingerprinted. A decision is then
//! two hash lookups and no allocation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

// hashbrown's maps hash with foldhash: these are looked up several times per request, with keys from the config.
use hashbrown::{HashMap, HashSet};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use crate::config::{Access, Config, Packages};
use crate::tokens::{TokenRecord, TokenStatus};

/// The packages a token sees of one channel and label, when that is not everything.
#[derive(Debug)]
pub struct Visible {
    /// The compiled package globs.
    pub packages: Packages,
    /// Identifies the set: equal sets have equal fingerprints, so tokens with the same access share cached views.
    pub fingerprint: [u8; 16],
}

impl Visible {
    fn new(patterns: Vec<String>) -> Self {
        let packages =
            Packages::new(&patterns).expect("patterns were compiled once already when the config was checked");
        let mut h = Sha256::new();
        for p in &packages.patterns {
            h.update(p.as_bytes());
            h.update([0]);
        }
        let mut fingerprint = [0u8; 16];
        fingerprint.copy_from_slice(&h.finalize()[..16]);
        Visible { packages, fingerprint }
    }

    /// Whether package `name` is visible.
    pub fn allows(&self, name: &str) -> bool {
        self.packages.matches(name)
    }
}

/// What a token may see of a channel and label.
#[derive(Debug, Clone)]
pub enum Grant {
    /// Every package: upstream files are served as they are.
    Full,
    /// Only some packages: repodata is filtered and other packages are "not found".
    Restricted(Arc<Visible>),
}

impl Grant {
    /// Whether package `name` may be downloaded.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            Grant::Full => true,
            Grant::Restricted(v) => v.allows(name),
        }
    }
}

/// Why a request is refused by policy. Each maps to one status in `crate::error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credentials for a channel that needs them.
    NoCredentials,
    /// A credential that is not shaped like a token.
    Malformed,
    /// A token condagate does not know.
    Unknown,
    /// A revoked token.
    Revoked,
    /// An expired token, and when it expired.
    Expired(OffsetDateTime),
    /// A valid token without a download scope.
    NoDownloadScope,
    /// A valid token whose user may not read this channel or label.
    NotAllowed,
}

#[derive(Debug, Default)]
struct UserGrants {
    /// Labels named by at least one of the user's groups.
    by_label: HashMap<String, Option<Arc<Visible>>>,
    /// Every other label: only groups without a label list apply.
    other: Option<Arc<Visible>>,
    /// Whether some group grants `*` on each label (kept with the visible set as `Grant::Full`).
    full_by_label: HashSet<String>,
    full_other: bool,
}

#[derive(Debug)]
struct ChannelPolicy {
    access: Access,
    owners: HashSet<String>,
    members: HashMap<String, UserGrants>,
}

/// The compiled authorization rules of one configuration.
#[derive(Debug)]
pub struct Policy {
    channels: HashMap<String, ChannelPolicy>,
}

fn union(config: &Config, channel: &str, user: &str, label: Option<&str>) -> (bool, Vec<String>) {
    let mut patterns = BTreeSet::new();
    let mut everything = false;
    for g in config.groups.iter().filter(|g| g.channel == channel && g.members.iter().any(|m| m == user)) {
        let applies = match (&g.labels, label) {
            (None, _) => true,
            (Some(ls), Some(l)) => ls.iter().any(|x| x == l),
            (Some(_), None) => false,
        };
        if applies {
            everything |= g.packages.everything;
            patterns.extend(g.packages.patterns.iter().cloned());
        }
    }
    (everything, patterns.into_iter().collect())
}

impl Policy {
    /// Compiles the rules of a checked configuration.
    pub fn new(config: &Config) -> Self {
        let mut channels = HashMap::new();
        for c in &config.channels {
            let users: BTreeSet<&str> = config
                .groups
                .iter()
                .filter(|g| g.channel == c.name)
                .flat_map(|g| g.members.iter().map(String::as_str))
                .collect();
            let mut members = HashMap::new();
            for user in users {
                let labels: BTreeSet<&str> = config
                    .groups
                    .iter()
                    .filter(|g| g.channel == c.name && g.members.iter().any(|m| m == user))
                    .flat_map(|g| g.labels.iter().flatten().map(String::as_str))
                    .collect();
                let mut grants = UserGrants::default();
                let visible = |(everything, patterns): (bool, Vec<String>)| -> (bool, Option<Arc<Visible>>) {
                    if everything {
                        (true, None)
                    } else if patterns.is_empty() {
                        (false, None)
                    } else {
                        (false, Some(Arc::new(Visible::new(patterns))))
                    }
                };
                for l in labels {
                    let (full, v) = visible(union(config, &c.name, user, Some(l)));
                    if full {
                        grants.full_by_label.insert(l.to_owned());
                    }
                    grants.by_label.insert(l.to_owned(), v);
                }
                let (full, v) = visible(union(config, &c.name, user, None));
                grants.full_other = full;
                grants.other = v;
                members.insert(user.to_owned(), grants);
            }
            channels.insert(
                c.name.clone(),
                ChannelPolicy { access: c.access, owners: c.owners.iter().cloned().collect(), members },
            );
        }
        Policy { channels }
    }

    /// Checks a token record's own state: not revoked, not expired.
    pub fn check_token(record: &TokenRecord, now: OffsetDateTime) -> Result<(), Denied> {
        Self::check_status(record.status(now))
    }

    /// [`Policy::check_token`] at the time `now` gives, asked only for a token that can expire.
    pub fn check_token_lazily(record: &TokenRecord, now: impl FnOnce() -> OffsetDateTime) -> Result<(), Denied> {
        Self::check_status(record.status_lazily(now))
    }

    fn check_status(status: TokenStatus) -> Result<(), Denied> {
        match status {
            TokenStatus::Active => Ok(()),
            TokenStatus::Revoked => Err(Denied::Revoked),
            TokenStatus::Expired(at) => Err(Denied::Expired(at)),
        }
    }

    /// Decides what `who` (an already checked, active token, or `None` for anonymous) may see of `channel`'s `label`
    /// (`main` for the root).
    pub fn authorize(&self, channel: &str, label: &str, who: Option<&TokenRecord>) -> Result<Grant, Denied> {
        let Some(c) = self.channels.get(channel) else {
            // An unknown channel answers as a private channel the caller cannot reach, so nobody learns which
            // private channels exist: 401 without a token, 403 with one.
            let who = who.ok_or(Denied::NoCredentials)?;
            return Err(if who.can_download() { Denied::NotAllowed } else { Denied::NoDownloadScope });
        };
        if c.access == Access::Public {
            return Ok(Grant::Full);
        }
        let who = who.ok_or(Denied::NoCredentials)?;
        if !who.can_download() {
            return Err(Denied::NoDownloadScope);
        }
        if !who.reaches_channel(channel) {
            return Err(Denied::NotAllowed);
        }
        if c.access == Access::Authenticated || c.owners.contains(&*who.user) {
            return Ok(Grant::Full);
        }
        let grants = c.members.get(&*who.user).ok_or(Denied::NotAllowed)?;
        let (full, visible) = match grants.by_label.get(label) {
            Some(v) => (grants.full_by_label.contains(label), v.as_ref()),
            None => (grants.full_other, grants.other.as_ref()),
        };
        match (full, visible) {
            (true, _) => Ok(Grant::Full),
            (false, Some(v)) => Ok(Grant::Restricted(Arc::clone(v))),
            (false, None) => Err(Denied::NotAllowed),
        }
    }
}

/// One line of `condagate explain`: what a user can reach in one channel, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// The channel.
    pub channel: String,
    /// Its access level.
    pub access: Access,
    /// Why the user can reach it, and what: one entry per reason.
    pub reasons: Vec<String>,
}

/// Lists what `user` can reach, channel by channel (only `only_channel` when given). With `token_channels`, the
/// token's own channel list narrows the result.
pub fn explain(
    config: &Config,
    user: &str,
    only_channel: Option<&str>,
    token_channels: Option<&[String]>,
) -> Vec<Reach> {
    let mut out = Vec::new();
    for c in config.channels.iter().filter(|c| only_channel.is_none_or(|o| o == c.name)) {
        if c.access != Access::Public && token_channels.is_some_and(|tc| !tc.contains(&c.name)) {
            continue;
        }
        let mut reasons = Vec::new();
        match c.access {
            Access::Public => reasons.push("public channel: every package and label".to_owned()),
            Access::Authenticated => reasons.push("authenticated channel: every package and label".to_owned()),
            Access::Private if c.owners.iter().any(|o| o == user) => {
                reasons.push("owner: every package and label".to_owned())
            }
            Access::Private => {
                let mut by_group: BTreeMap<&str, String> = BTreeMap::new();
                for g in config.groups.iter().filter(|g| g.channel == c.name && g.members.iter().any(|m| m == user)) {
                    let labels = g.labels.as_ref().map(|l| l.join(", ")).unwrap_or_else(|| "all labels".to_owned());
                    by_group.insert(
                        &g.name,
                        format!("group {}: packages {} on {labels}", g.name, g.packages.patterns.join(", ")),
                    );
                }
                reasons.extend(by_group.into_values());
            }
        }
        if !reasons.is_empty() {
            out.push(Reach { channel: c.name.clone(), access: c.access, reasons });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{Digest, Scope};
    use std::path::Path;

    const CFG: &str = r#"
[upstream]
dir = "channels"
[[channels]]
name = "priv"
access = "private"
owners = ["alice"]
[[channels]]
name = "auth"
access = "authenticated"
[[channels]]
name = "pub"
access = "public"
[[groups]]
name = "eng"
channel = "priv"
members = ["bob", "carol"]
packages = ["alpha", "beta*"]
[[groups]]
name = "devs"
channel = "priv"
members = ["bob"]
packages = ["gamma"]
labels = ["dev"]
[[groups]]
name = "all-of-it"
channel = "priv"
members = ["dave"]
packages = ["*"]
labels = ["main"]
"#;

    fn token(user: &str, scopes: &[Scope]) -> TokenRecord {
        TokenRecord {
            name: "t".into(),
            user: user.into(),
            digest: Digest([0; 32]),
            scopes: scopes.iter().copied().collect(),
            created: OffsetDateTime::UNIX_EPOCH,
            expires: None,
            revoked: None,
            channels: None,
            seen: Default::default(),
        }
    }

    fn policy() -> (Config, Policy) {
        let cfg = Config::from_toml_str(CFG, Path::new(".")).unwrap();
        let p = Policy::new(&cfg);
        (cfg, p)
    }

    fn visible(v: &Result<Grant, Denied>) -> Vec<String> {
        match v {
            Ok(Grant::Restricted(v)) => v.packages.patterns.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_policy_table() {
        let (_, p) = policy();
        let dl = [Scope::CondaDownload];
        assert!(matches!(p.authorize("pub", "main", None), Ok(Grant::Full)));
        // An unknown channel looks like a private one the caller cannot reach.
        assert_eq!(p.authorize("nope", "main", None).unwrap_err(), Denied::NoCredentials);
        assert_eq!(p.authorize("nope", "main", Some(&token("zed", &dl))).unwrap_err(), Denied::NotAllowed);
        assert_eq!(p.authorize("auth", "main", None).unwrap_err(), Denied::NoCredentials);
        assert!(matches!(p.authorize("auth", "main", Some(&token("zed", &dl))), Ok(Grant::Full)));
        assert_eq!(
            p.authorize("auth", "main", Some(&token("zed", &[Scope::Api]))).unwrap_err(),
            Denied::NoDownloadScope
        );
        assert_eq!(p.authorize("priv", "main", Some(&token("zed", &dl))).unwrap_err(), Denied::NotAllowed);
        assert!(matches!(p.authorize("priv", "dev", Some(&token("alice", &dl))), Ok(Grant::Full)));
        assert_eq!(visible(&p.authorize("priv", "main", Some(&token("bob", &dl)))), ["alpha", "beta*"]);
        assert_eq!(visible(&p.authorize("priv", "dev", Some(&token("bob", &dl)))), ["alpha", "beta*", "gamma"]);
        assert!(matches!(p.authorize("priv", "main", Some(&token("dave", &dl))), Ok(Grant::Full)));
        assert_eq!(p.authorize("priv", "dev", Some(&token("dave", &dl))).unwrap_err(), Denied::NotAllowed);
    }

    #[test]
    fn same_access_means_same_fingerprint() {
        let (_, p) = policy();
        let dl = [Scope::Conda];
        let fp = |u: &str| match p.authorize("priv", "main", Some(&token(u, &dl))) {
            Ok(Grant::Restricted(v)) => v.fingerprint,
            other => panic!("{other:?}"),
        };
        assert_eq!(fp("bob"), fp("carol"));
        let dev = match p.authorize("priv", "dev", Some(&token("bob", &dl))) {
            Ok(Grant::Restricted(v)) => v.fingerprint,
            other => panic!("{other:?}"),
        };
        assert_ne!(fp("bob"), dev);
    }

    #[test]
    fn a_token_channel_list_narrows() {
        let (_, p) = policy();
        let mut t = token("alice", &[Scope::All]);
        t.channels = Some(vec!["auth".into()]);
        assert_eq!(p.authorize("priv", "main", Some(&t)).unwrap_err(), Denied::NotAllowed);
        assert!(p.authorize("auth", "main", Some(&t)).is_ok());
    }

    #[test]
    fn explain_says_why() {
        let (cfg, _) = policy();
        let r = explain(&cfg, "bob", None, None);
        let priv_reach = r.iter().find(|r| r.channel == "priv").unwrap();
        assert_eq!(
            priv_reach.reasons,
            ["group devs: packages gamma on dev", "group eng: packages alpha, beta* on all labels"]
        );
        assert!(explain(&cfg, "zed", Some("priv"), None).is_empty());
        assert_eq!(explain(&cfg, "alice", Some("priv"), None)[0].reasons, ["owner: every package and label"]);
    }
}
