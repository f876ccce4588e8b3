//! One module per subcommand: its arguments (clap) and the glue from them to the library crates.

pub mod check;
pub mod demo;
pub mod fake;
pub mod iptables;
pub mod load;
pub mod meter;

use std::process::ExitCode;

/// Exit code for a bad configuration or bad arguments (sysexits `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

/// Reports a usage error and returns its exit code.
pub fn usage(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(EXIT_USAGE)
}

/// A multi-threaded runtime, or the failure to build one.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        result = tokio::signal::ctrl_c() => result,
    }
}

/// A cancellation token cancelled by the first SIGTERM or SIGINT.
pub fn cancel_on_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        if shutdown_signal().await.is_ok() {
            cancel.cancel();
        }
    });
    token
}

/// `http://host:port` (or `host:port`) to a socket address.
pub fn socket_address(url: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let authority = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/');
    authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("'{url}' is not a reachable http://host:port address"))
}
