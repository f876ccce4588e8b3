//! An optional real Prometheus on loopback, scraping the demo's meter (`demo --prometheus`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::DemoError;

/// How often the demo's Prometheus scrapes: fast, so the final scrape follows the run closely.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
/// How long Prometheus may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A Prometheus child process, stopped (by its PID) when dropped.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    pub url: String,
}

/// The `prometheus` binary on the PATH, if any.
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
}

/// The project's recording rules and alerts (the Helm chart's), when run from the repository.
pub const RULES: &str = "deploy/helm/proxy-telemetry/files/prometheus-rules.yaml";

fn rule_files() -> Vec<PathBuf> {
    std::fs::canonicalize(RULES).into_iter().collect()
}

impl Prometheus {
    /// Starts Prometheus scraping `target`, with its data under `out`.
    pub async fn start(
        binary: &Path,
        target: SocketAddr,
        out: &Path,
    ) -> Result<Prometheus, DemoError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| DemoError::Prometheus(format!("no free port: {e}")))?
            .port();
        let rules: Vec<String> = rule_files()
            .iter()
            .map(|p| format!("  - {}\n", p.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: {}s\n  evaluation_interval: {}s\nrule_files:\n{}scrape_configs:\n  - job_name: proxy-telemetry\n    static_configs:\n      - targets: [\"{target}\"]\n",
            SCRAPE_INTERVAL.as_secs(),
            SCRAPE_INTERVAL.as_secs(),
            if rules.is_empty() {
                "  []\n".to_owned()
            } else {
                rules.concat()
            },
        );
        let config_path = out.join("prometheus.yml");
        std::fs::write(&config_path, config)
            .map_err(|e| DemoError::Write(config_path.clone(), e))?;
        let data = out.join("prometheus-data");
        let log_path = out.join("prometheus.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| DemoError::Write(log_path.clone(), e))?;
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                DemoError::Prometheus(format!("cannot start {}: {e}", binary.display()))
            })?;
        let prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if pt_check::source::http_get(&format!("{}/-/ready", prometheus.url))
                .await
                .is_ok()
            {
                return Ok(prometheus);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DemoError::Prometheus(format!(
                    "not ready after {READY_TIMEOUT:?}; see {}",
                    log_path.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
