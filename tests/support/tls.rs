//! TLS on the test side: a self-signed certificate, clients that trust exactly it, HTTP/1.1 and HTTP/2 over it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// A self-signed certificate for `localhost` and `127.0.0.1`: (certificate PEM, key PEM, certificate DER).
pub fn self_signed() -> (String, String, CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    (ck.cert.pem(), ck.key_pair.serialize_pem(), ck.cert.der().clone())
}

/// Writes `contents` to `path` atomically (a rename), as a deployment tool replacing a certificate would.
pub fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn tls_client_config(roots: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

pub async fn tls_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, name: &str) -> Tls {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap_or_else(|e| panic!("TLS handshake: {e}"))
}

pub fn leaf(tls: &Tls) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().expect("the server sent a certificate")[0].clone().into_owned()
}

pub fn alpn(tls: &Tls) -> Option<Vec<u8>> {
    tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// An HTTP/1.1 connection over `io`, driven in the background.
pub async fn h1<T>(io: T) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// GET `path` on an HTTP/1.1 connection: status, version and the whole body.
pub async fn h1_get(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (StatusCode, Version, Bytes) {
    send.ready().await.expect("the keep-alive connection is still usable");
    let req = Request::get(path).header("host", "localhost").body(Empty::new()).unwrap();
    let resp = send.send_request(req).await.expect("request on the keep-alive connection");
    let (parts, body) = resp.into_parts();
    (parts.status, parts.version, body.collect().await.unwrap().to_bytes())
}

pub async fn h2_get(
    send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    url: &str,
) -> (StatusCode, Version, Bytes) {
    send.ready().await.expect("the h2 connection is still usable");
    let resp = send.send_request(Request::get(url).body(Empty::new()).unwrap()).await.expect("h2 request");
    let (parts, body) = resp.into_parts();
    (parts.status, parts.version, body.collect().await.unwrap().to_bytes())
}
