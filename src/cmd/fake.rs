//! `proxy-telemetry fake-vendor` and `fake-origin`: the demo's stand-ins for a proxy vendor and
//! the websites behind it, as processes, for the Helm chart's demo values (a cluster has no
//! vendor account to test against). They are the same code the tests and `demo` use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use pt_fakes::origin::Origin;
use pt_fakes::pki::TestPki;
use pt_fakes::vendor::FakeVendor;

#[derive(clap::Args, Debug)]
pub struct VendorArgs {
    #[arg(long, env = "PROXY_TELEMETRY_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Basic credentials the vendor requires (none when unset).
    #[arg(long, env = "PROXY_TELEMETRY_VENDOR_USERNAME")]
    username: Option<String>,
    #[arg(
        long,
        env = "PROXY_TELEMETRY_VENDOR_PASSWORD",
        hide_env_values = true,
        requires = "username"
    )]
    password: Option<String>,
    /// Where every destination's plain HTTP goes, `host:port` (an origin Service).
    #[arg(long, env = "PROXY_TELEMETRY_ORIGIN_HTTP")]
    origin_http: String,
    /// Where every destination's HTTPS (CONNECT to port 443) goes, `host:port`.
    #[arg(long, env = "PROXY_TELEMETRY_ORIGIN_HTTPS")]
    origin_https: String,
}

#[derive(clap::Args, Debug)]
pub struct OriginArgs {
    #[arg(
        long,
        env = "PROXY_TELEMETRY_HTTP_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    http: SocketAddr,
    #[arg(
        long,
        env = "PROXY_TELEMETRY_HTTPS_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    https: SocketAddr,
    /// Certificate chain (PEM) for HTTPS; a throw-away self-signed one when unset.
    #[arg(long, env = "PROXY_TELEMETRY_TLS_CERT", requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, env = "PROXY_TELEMETRY_TLS_KEY", requires = "cert")]
    key: Option<PathBuf>,
}

pub fn vendor(args: VendorArgs) -> ExitCode {
    serve(async move {
        let mut builder = FakeVendor::builder()
            .listen(args.listen)
            .upstream(&args.origin_http, &args.origin_https);
        if let (Some(user), Some(password)) = (&args.username, &args.password) {
            builder = builder.credentials(user, password);
        }
        let vendor = builder
            .start()
            .await
            .map_err(|e| format!("{}: {e}", args.listen))?;
        tracing::info!(address = %vendor.address, "fake vendor serving");
        Ok(())
    })
}

pub fn origin(args: OriginArgs) -> ExitCode {
    serve(async move {
        let tls = match (&args.cert, &args.key) {
            (Some(cert), Some(key)) => {
                let read =
                    |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
                TestPki::server_config_from_pem(&read(cert)?, &read(key)?, &["h2", "http/1.1"])?
            }
            _ => TestPki::new(&["localhost"]).server_config(&["h2", "http/1.1"]),
        };
        let http = tokio::net::TcpListener::bind(args.http)
            .await
            .map_err(|e| format!("{}: {e}", args.http))?;
        let https = tokio::net::TcpListener::bind(args.https)
            .await
            .map_err(|e| format!("{}: {e}", args.https))?;
        let origin = Origin::serve(http, https, tls).map_err(|e| e.to_string())?;
        tracing::info!(http = %origin.http, https = %origin.https, "fake origin serving");
        Ok(())
    })
}

/// Starts `start` on a runtime and serves until SIGTERM or Ctrl-C.
fn serve(start: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        if let Err(e) = start.await {
            eprintln!("error: {e}");
            return ExitCode::from(super::EXIT_USAGE);
        }
        let _ = super::shutdown_signal().await;
        ExitCode::SUCCESS
    })
}
