//! `condagate serve` and the file checks of `condagate check-config`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use condagate::config::{Config, LogFormat};
use condagate::Server;

use super::load_config;

/// What a configuration that passed its checks still cannot serve with, found without serving: upstream folders
/// that are not there, and TLS files that are missing or do not hold a certificate and key.
pub fn files_problems(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (i, ch) in c.channels.iter().enumerate() {
        if let condagate::config::Source::Dir(root) = &ch.source {
            if !root.is_dir() {
                out.push(format!(
                    "channels[{i}] ({}): the upstream folder {} does not exist (upstream.dir, or the channel's own \
                     upstream.dir); every file would be a 404",
                    ch.name,
                    root.display()
                ));
            }
        }
    }
    if let Some(tls) = &c.server.tls {
        if let Err(e) = condagate::internals::http::tls::CertStore::new(&tls.cert, &tls.key) {
            out.push(format!("server.tls: {e}"));
        }
    }
    out
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, never in files or journald.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

pub async fn serve(config_path: &Path, listen: Option<String>) -> anyhow::Result<()> {
    let mut config = load_config(config_path)?;
    init_logging(config.log_format);
    if let Some(l) = listen {
        config.server.listen = l.parse().with_context(|| format!("--listen: {l:?} is not an address"))?;
    }
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let server = Server::new(config).await?;
    let app = server.app();
    tracing::info!(%addr, "condagate listening");
    println!("condagate listening on http://{addr}");

    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let app = Arc::clone(&app);
                let _ = app.reload_all().await;
            }
        });
    }
    let shutdown = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = tokio::signal::ctrl_c() => {},
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    drop(app);
    Ok(server.run(listener, shutdown).await?)
}
