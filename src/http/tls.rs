//! TLS termination with rustls: ALPN `h2` and `http/1.1`, and a certificate that can be replaced while connections
//! stay up (SIGHUP, or the files changing on disk). A certificate or key that fails to load is refused with the file
//! named, and the one in use keeps serving.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::stamp::FileStamp;

/// Loads a PEM certificate chain and private key into a [`CertifiedKey`]; errors name the file at fault.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: cannot read the certificate: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: holds no certificate", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: cannot read a PEM private key: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key_der, &provider)
        .map_err(|e| format!("{} / {}: the key does not fit the certificate: {e}", cert.display(), key.display()))
}

/// The certificate in use, swappable.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    stamps: Mutex<(Option<FileStamp>, Option<FileStamp>)>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the pair; fails (naming the file) if it cannot.
    pub fn new(cert: &Path, key: &Path) -> Result<Self, String> {
        let stamps = (FileStamp::read(cert), FileStamp::read(key));
        let ck = load(cert, key)?;
        Ok(CertStore {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(ck),
            stamps: Mutex::new(stamps),
        })
    }

    /// Reloads the pair; on failure the current certificate stays.
    pub fn reload(&self) -> Result<(), String> {
        let stamps = (FileStamp::read(&self.cert), FileStamp::read(&self.key));
        let result = load(&self.cert, &self.key).map(|ck| self.current.store(Arc::new(ck)));
        if let Ok(mut s) = self.stamps.lock() {
            *s = stamps;
        }
        match &result {
            Ok(()) => tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded"),
            Err(e) => tracing::error!(error = %e, "TLS certificate reload refused; the previous one stays"),
        }
        result
    }

    /// Reloads if either file changed since the last load.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = (FileStamp::read(&self.cert), FileStamp::read(&self.key));
        let changed = self.stamps.lock().map(|s| *s != now).unwrap_or(false);
        if changed {
            self.reload().map(|()| true)
        } else {
            Ok(false)
        }
    }

    /// A rustls server configuration that always uses this store's current certificate.
    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
